"""torch backend: a transformers sequence-classification model, computed in float32.

BERT-family and DistilBERT models run packed (model/packed.py): no padding is computed. Other
architectures run the padded transformers forward.
"""

from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from transformers.utils import logging as transformers_logging

from model import BUNDLED_MODEL_DIR
from model.core import ModelLoadError, TextClassifier, config_digest, pad_batch
from model.packed import PackedBatch, packed_forward


def resolve_device(requested: str) -> str:
    """Map ``auto`` to ``cuda`` when a GPU is visible, else ``cpu``; check explicit choices."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("DEVICE=cuda was asked for, but torch sees no CUDA device")
    if requested not in ("cpu", "cuda"):
        raise ModelLoadError(f"unknown device {requested!r}; use auto, cpu or cuda")
    return requested


class TorchClassifier(TextClassifier):
    """A transformers sequence-classification model run with torch."""

    def __init__(self, model, tokenizer, name: str, device: str):
        if device == "cpu":
            # Process-wide. oneDNN builds a kernel per input shape, and packed batches change shape
            # with nearly every batch: faster and flatter in memory on MKL's BLAS (docs/performance.md).
            torch.backends.mkldnn.enabled = False
        self.model = model.eval()
        digest = config_digest(model.config)
        for key, tensor in sorted(model.state_dict().items()):
            # Every weight counts, so a changed model never reads another model's cache.
            digest.update(key.encode())
            digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        positions = getattr(model.config, "max_position_embeddings", None)
        super().__init__(tokenizer, model.config.id2label, positions, name, device, digest.hexdigest())
        self.packed = packed_forward(self.model)

    @classmethod
    def load(cls, source: str | Path = BUNDLED_MODEL_DIR, device: str = "auto", threads: int | None = None):
        """Load a local model folder or a hub id, computing in float32 whatever dtype it was stored in."""
        if threads:
            torch.set_num_threads(threads)
        transformers_logging.disable_progress_bar()
        resolved = resolve_device(device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(source))
            # transformers 5 keeps the stored dtype; fp16 matmuls are slow on CPU, so compute in fp32.
            model = AutoModelForSequenceClassification.from_pretrained(str(source), dtype=torch.float32)
        except (OSError, ValueError) as error:
            raise ModelLoadError(f"cannot load model {source!r}: {error}") from error
        return cls(model.to(resolved), tokenizer, str(source), resolved)

    @property
    def pads(self) -> bool:
        return self.packed is None

    def infer(self, token_ids: Sequence[Sequence[int]]) -> list[list[float]]:
        if self.packed is None:
            return self.infer_padded(token_ids)
        with torch.inference_mode():
            logits = self.packed(PackedBatch(token_ids, self.device))
            return torch.softmax(logits.float(), dim=-1).cpu().tolist()

    def infer_padded(self, token_ids: Sequence[Sequence[int]]) -> list[list[float]]:
        """The transformers forward on a padded batch: the reference the packed path is tested against."""
        input_ids, attention_mask = pad_batch(token_ids, self.pad_id)
        with torch.inference_mode():
            logits = self.model(
                input_ids=torch.tensor(input_ids, device=self.device),
                attention_mask=torch.tensor(attention_mask, device=self.device),
            ).logits
            return torch.softmax(logits.float(), dim=-1).cpu().tolist()
