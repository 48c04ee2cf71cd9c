"""Backend-neutral classifier core: tokenise -> infer -> post-process, batching, and the backend factory.

Imports neither torch nor transformers, so the batcher and tools that only group texts stay light.
The worker, the evaluation and the benchmark all go through ``TextClassifier``, so a score
measured offline is the score the service serves. Each backend module holds one forward pass.
"""

import hashlib
import importlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from common.labels import ID2LABEL, NEGATIVE, POSITIVE

# One text's answer: both labels, highest score first.
Prediction = list[dict[str, float | str]]

# Thread settings the worker gives its process before torch loads; the ceiling runs under them too.
# A short spin of idle OpenMP threads: spinning for good starves the work that shares the cores,
# never spinning wakes a sleeping thread for every op (docs/performance.md). oneDNN would cache a
# kernel per input shape, and packed batches change shape with nearly every batch: memory grows
# with no gain (docs/reliability.md, "Soak and memory").
WORKER_THREAD_ENV = {"GOMP_SPINCOUNT": "10000", "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "0"}

# Backend name -> "module:class", imported only when chosen, so torch loads only for the torch backend.
BACKENDS = {"torch": "model.torch_backend:TorchClassifier", "onnx": "model.onnx_backend:OnnxClassifier"}


class ModelLoadError(RuntimeError):
    """The model could not be loaded or does not have the NEGATIVE/POSITIVE label set."""


def label_order(id2label: dict) -> list[str]:
    """Return the canonical label of each output index, or fail if the labels are not NEGATIVE/POSITIVE."""
    labels = [str(id2label[index]).upper() for index in sorted(id2label, key=int)]
    if sorted(labels) != sorted(ID2LABEL.values()):
        raise ModelLoadError(f"model labels {labels} are not exactly {NEGATIVE} and {POSITIVE}")
    return labels


def postprocess(probabilities: Sequence[Sequence[float]], labels: Sequence[str]) -> list[Prediction]:
    """Turn per-class probabilities into both labels with scores, highest first."""
    predictions = []
    for row in probabilities:
        scored = [{"label": label, "score": float(score)} for label, score in zip(labels, row)]
        scored.sort(key=lambda item: item["score"], reverse=True)
        predictions.append(scored)
    return predictions


def pad_batch(token_ids: Sequence[Sequence[int]], pad_id: int) -> tuple[list[list[int]], list[list[int]]]:
    """Pad to the longest sequence in this batch only (dynamic padding)."""
    width = max(len(ids) for ids in token_ids)
    input_ids = [list(ids) + [pad_id] * (width - len(ids)) for ids in token_ids]
    attention_mask = [[1] * len(ids) + [0] * (width - len(ids)) for ids in token_ids]
    return input_ids, attention_mask


# A forward pass's fixed cost, in tokens' worth of compute: on ONNX Runtime (CPU), one short text
# costs about as much again as its tokens (docs/performance.md, "Length buckets").
PASS_OVERHEAD_TOKENS = 32


def length_sorted_batches(
    lengths: Sequence[int], max_texts: int, max_tokens: int, padded: bool = True, pass_overhead_tokens: int = PASS_OVERHEAD_TOKENS
) -> list[list[int]]:
    """Group indices, shortest first, into batches bounded by text count and computed token count.

    ``padded``: a forward pass computes count x longest tokens, so texts of like length go together
    (length buckets, cut where the padding saved outweighs another pass's fixed cost); otherwise
    (packed) only the real tokens count and batches fill up in order.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    if padded:
        return _length_buckets(order, lengths, max_texts, max_tokens, pass_overhead_tokens)
    batches: list[list[int]] = []
    current: list[int] = []
    real_tokens = 0
    for index in order:
        if current and (len(current) >= max_texts or real_tokens + lengths[index] > max_tokens):
            batches.append(current)
            current, real_tokens = [], 0
        current.append(index)
        real_tokens += lengths[index]
    if current:
        batches.append(current)
    return batches


def _length_buckets(
    order: list[int], lengths: Sequence[int], max_texts: int, max_tokens: int, pass_overhead_tokens: int
) -> list[list[int]]:
    """Cut the length-sorted ``order`` into runs of least total cost: each run's count x longest, plus a pass's overhead.

    Exact (dynamic programming over the cut points), at most count x max_texts steps.
    """
    cost = [0] * (len(order) + 1)
    run_start = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        longest = lengths[order[end - 1]]
        best = None
        for start in range(end - 1, max(-1, end - 1 - max_texts), -1):
            count = end - start
            if count > 1 and count * longest > max_tokens:
                break
            candidate = cost[start] + pass_overhead_tokens + count * longest
            if best is None or candidate < best:
                best, run_start[end] = candidate, start
        cost[end] = best
    batches = []
    end = len(order)
    while end:
        batches.append(order[run_start[end] : end])
        end = run_start[end]
    return batches[::-1]


def config_digest(config) -> "hashlib._Hash":
    """A running hash seeded with the model config, to which each backend adds its weights."""
    return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True, default=str).encode())


class TextClassifier:
    """Tokenisation, batching and post-processing shared by every backend; subclasses run ``infer``."""

    def __init__(self, tokenizer, id2label: dict, max_positions: int | None, name: str, device: str, weights_digest: str):
        self.tokenizer = tokenizer
        self.name = name
        self.device = device
        self.labels = label_order(id2label)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.max_length = int(min(tokenizer.model_max_length, max_positions or tokenizer.model_max_length))
        self.identity = f"{Path(name).name}@{weights_digest[:16]}"

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Tokenise without padding, truncating at the model's maximum length."""
        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)
        return encoded["input_ids"]

    @property
    def pads(self) -> bool:
        """Whether a forward pass computes padding (pads every text to the batch's longest)."""
        return True

    def computed_tokens(self, lengths: Sequence[int]) -> int:
        """Tokens one forward pass over texts of these lengths computes: padded, or only the real ones."""
        return len(lengths) * max(lengths, default=0) if self.pads else sum(lengths)

    def infer(self, token_ids: Sequence[Sequence[int]]) -> list[list[float]]:
        """Run one forward pass over one batch and return per-class probabilities."""
        raise NotImplementedError

    def predict_encoded(self, token_ids: Sequence[Sequence[int]]) -> list[Prediction]:
        """Score one already-tokenised batch, in the given order."""
        return postprocess(self.infer(token_ids), self.labels)

    def predict(
        self, texts: Sequence[str], max_texts: int = 64, max_tokens: int = 8192, sort_by_length: bool = True
    ) -> list[Prediction]:
        """Score texts in batches (length-sorted unless told otherwise) and answer in input order."""
        if not texts:
            return []
        token_ids = self.encode(texts)
        if sort_by_length:
            batches = length_sorted_batches([len(ids) for ids in token_ids], max_texts, max_tokens, self.pads)
        else:
            batches = [list(range(start, min(start + max_texts, len(texts)))) for start in range(0, len(texts), max_texts)]
        predictions: list[Prediction | None] = [None] * len(texts)
        for batch in batches:
            for index, prediction in zip(batch, self.predict_encoded([token_ids[i] for i in batch])):
                predictions[index] = prediction
        return predictions


def apply_worker_thread_env() -> None:
    """Give this process the worker's thread settings, unless the environment sets them; before torch loads."""
    for name, value in WORKER_THREAD_ENV.items():
        os.environ.setdefault(name, value)


def default_threads() -> int:
    """Use every CPU this process may run on."""
    return len(os.sched_getaffinity(0))


def load_classifier(
    source: str | Path, backend: str = "torch", device: str = "auto", threads: int | None = None
) -> TextClassifier:
    """Load ``source`` with the named backend (torch or onnx); raises ModelLoadError."""
    if backend not in BACKENDS:
        raise ModelLoadError(f"unknown backend {backend!r}; use {' or '.join(BACKENDS)}")
    module_name, class_name = BACKENDS[backend].split(":")
    backend_class = getattr(importlib.import_module(module_name), class_name)
    return backend_class.load(source, device=device, threads=threads)
