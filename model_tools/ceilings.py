"""The ceiling of every available backend: the model alone on the same texts, passes interleaved.

One pass scores every text once, in the worker's length-sorted batches (BATCH_MAX_TEXTS and
BATCH_MAX_TOKENS at their defaults), tokenising included. Each backend runs in a process of its
own, started with the worker's thread settings, and passes alternate between backends (A/B/A/B):
a backend's ceiling is the median of its passes, and since the passes of one round run back to
back, comparing them round by round cancels the shared machine's drift. ``bench.run`` and
``model_tools.benchmark --ceilings`` report these.
"""

import importlib.util
import multiprocessing
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from common.settings import Settings
from model import BUNDLED_MODEL_DIR
from model.core import apply_worker_thread_env

# The worker's batch bounds, at their defaults.
BATCH_MAX_TEXTS = Settings.batch_max_texts
BATCH_MAX_TOKENS = Settings.batch_max_tokens
# Fewest pairs of passes from which one backend counts as ahead of another.
MIN_PAIRS = 5
# Dev sentences plus three one-token tag words: shaped like the texts bench.run's k6 scripts send.
TAGS = ["table river green", "house window paper", "music stone light", "water garden chair"]


def tagged_texts(sentences: list[str], count: int) -> list[str]:
    """``count`` distinct texts shaped like the load test's: a dev sentence and three tag words."""
    return [f"{sentences[n % len(sentences)]} {TAGS[n // len(sentences) % len(TAGS)]}" for n in range(count)]


class CeilingError(RuntimeError):
    """A backend's model could not be loaded for its ceiling."""


@dataclass(frozen=True)
class Ceiling:
    """One backend's passes over the same texts, in sentences/s."""

    backend: str
    model: str
    passes: list[float]
    real_tokens: int
    computed_tokens: int

    @property
    def median(self) -> float:
        return statistics.median(self.passes)

    @property
    def real_to_computed_tokens(self) -> float | None:
        return self.real_tokens / self.computed_tokens if self.computed_tokens else None

    def as_dict(self) -> dict:
        return {
            **asdict(self),
            "median_sentences_per_s": self.median,
            "real_to_computed_tokens": self.real_to_computed_tokens,
        }


def available_backends(onnx_model: Path) -> dict[str, Path]:
    """Backend -> model folder: torch with the bundled model, and ONNX Runtime where installed and exported."""
    backends = {"torch": BUNDLED_MODEL_DIR}
    if importlib.util.find_spec("onnxruntime") and (Path(onnx_model) / "model.onnx").is_file():
        backends["onnx"] = Path(onnx_model)
    return backends


def clearly_ahead(ceilings: dict[str, Ceiling]) -> str | None:
    """The backend faster than every other in every pair of passes, if one is (at least 5 pairs).

    Pass n of every backend ran back to back, so a pair shares the machine's speed of the moment;
    by chance alone, one of two equal backends wins 5 pairs in a row 1 time in 32.
    """
    for name, ceiling in ceilings.items():
        others = [other for other_name, other in ceilings.items() if other_name != name]
        pairs = [list(zip(ceiling.passes, other.passes)) for other in others]
        if others and all(len(pair) >= MIN_PAIRS and all(ours > theirs for ours, theirs in pair) for pair in pairs):
            return name
    return None


def pair_ratios(ceiling: Ceiling, other: Ceiling) -> list[float]:
    """``ceiling``'s speed over ``other``'s in each pair of passes run back to back."""
    return [ours / theirs for ours, theirs in zip(ceiling.passes, other.passes)]


def _serve_passes(connection, backend: str, model: str, threads: int, texts: list[str]) -> None:
    """Child process: load the model once, then run one timed pass per request until told to stop."""
    apply_worker_thread_env()  # before torch loads, as in the worker
    from model.core import ModelLoadError, length_sorted_batches, load_classifier

    try:
        classifier = load_classifier(model, backend, "cpu", threads)
    except ModelLoadError as error:
        connection.send({"error": str(error).strip().splitlines()[0]})
        return
    token_ids = classifier.encode(texts)
    lengths = [len(ids) for ids in token_ids]
    batches = length_sorted_batches(lengths, BATCH_MAX_TEXTS, BATCH_MAX_TOKENS, classifier.pads)
    classifier.predict_encoded([token_ids[i] for i in batches[len(batches) // 2]])  # warm-up
    real = sum(lengths)
    computed = sum(classifier.computed_tokens([lengths[i] for i in batch]) for batch in batches)
    connection.send({"real_tokens": real, "computed_tokens": computed})
    while connection.recv() == "pass":
        # Tokenising is part of the worker's forward thread, so it is part of the pass.
        started = time.perf_counter()
        token_ids = classifier.encode(texts)
        for batch in batches:
            classifier.predict_encoded([token_ids[i] for i in batch])
        connection.send(len(texts) / (time.perf_counter() - started))


class CeilingSampler:
    """Each backend loaded once in a process of its own, ready to run a pass whenever asked.

    ``sample()`` runs one pass of every backend, one after another; between samples the processes
    sit idle, so a benchmark can take samples between its other measurements.
    """

    def __init__(self, texts: list[str], backends: dict[str, Path], threads: int):
        self.texts, self.backends, self.threads = texts, backends, threads
        self.rates: dict[str, list[float]] = {backend: [] for backend in backends}
        self._children: dict[str, tuple] = {}
        self._tokens: dict[str, dict] = {}

    def __enter__(self) -> "CeilingSampler":
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: torch loads under the worker's settings
        try:
            for backend, model in self.backends.items():
                parent_end, child_end = context.Pipe()
                process = context.Process(target=_serve_passes, args=(child_end, backend, str(model), self.threads, self.texts))
                process.start()
                self._children[backend] = (process, parent_end)
            # Every child loads and warms up first; only then do passes start, one at a time.
            for backend, (_, connection) in self._children.items():
                try:
                    self._tokens[backend] = connection.recv()
                except EOFError:
                    raise CeilingError(f"{backend}: its process ended before the model was loaded") from None
                if "error" in self._tokens[backend]:
                    raise CeilingError(f"{backend}: {self._tokens[backend]['error']}")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def sample(self) -> dict[str, float]:
        """One pass of each backend, in turn; their sentences/s."""
        rates = {}
        for backend, (_, connection) in self._children.items():
            connection.send("pass")
            rates[backend] = connection.recv()
            self.rates[backend].append(rates[backend])
        return rates

    def ceilings(self) -> dict[str, Ceiling]:
        """Every backend's passes so far."""
        return {
            backend: Ceiling(backend, str(model), self.rates[backend], **self._tokens[backend])
            for backend, model in self.backends.items()
        }

    def close(self) -> None:
        for process, connection in self._children.values():
            try:
                connection.send("stop")
            except OSError:
                pass  # the child already ended
            process.join(30)
            if process.is_alive():
                process.kill()
        self._children = {}


def measure_ceilings(texts: list[str], backends: dict[str, Path], threads: int, passes: int) -> dict[str, Ceiling]:
    """Sentences/s of each backend on ``texts``: ``passes`` passes each, alternating between backends."""
    with CeilingSampler(texts, backends, threads) as sampler:
        for _ in range(passes):
            sampler.sample()
        return sampler.ceilings()


def describe(ceilings: dict[str, Ceiling], in_use: str | None = None) -> list[str]:
    """One line per backend (median, the spread of its passes, real/computed tokens), then how they compare pair by pair."""
    lines = []
    for name, ceiling in ceilings.items():
        marker = " (in use)" if name == in_use else ""
        lines.append(
            f"{name}{marker}: median {ceiling.median:.1f} sentences/s over {len(ceiling.passes)} passes"
            f" ({min(ceiling.passes):.1f} to {max(ceiling.passes):.1f}),"
            f" real/computed tokens {ceiling.real_to_computed_tokens:.2f}"
        )
    if len(ceilings) == 2:
        (first_name, first), (second_name, second) = ceilings.items()
        ratios = pair_ratios(second, first)
        lines.append(
            f"{second_name} / {first_name}, pass by pass: median {statistics.median(ratios):.2f}"
            f" ({min(ratios):.2f} to {max(ratios):.2f}), faster in {sum(ratio > 1 for ratio in ratios)} of {len(ratios)} pairs"
        )
    if len(ceilings) > 1:
        ahead = clearly_ahead(ceilings)
        lines.append(
            f"{ahead} is faster in every pair of passes"
            if ahead
            else "no backend is faster in every pair of passes: keep torch (packed)"
        )
    return lines
