"""The backend ceilings: passes counted per backend, the rule for a backend clearly ahead, and the command."""

import subprocess
import sys

import pytest

from model_tools.ceilings import Ceiling, clearly_ahead, describe
from stack import REPO
from tests.made_up_models import make_tiny_distilbert


def ceiling(backend: str, passes: list[float]) -> Ceiling:
    return Ceiling(backend, f"{backend}-model", passes, real_tokens=90, computed_tokens=100)


def test_a_backend_is_ahead_only_when_it_wins_every_pair_of_passes_run_back_to_back():
    # The machine's speed drifts: the spreads overlap, yet onnx wins each pair.
    drifting = {"torch": ceiling("torch", [60, 70, 80, 90, 100]), "onnx": ceiling("onnx", [66, 77, 88, 99, 110])}
    assert clearly_ahead(drifting) == "onnx"
    assert "onnx / torch, pass by pass: median 1.10 (1.10 to 1.10), faster in 5 of 5 pairs" in describe(drifting)
    assert "onnx is faster in every pair of passes" in describe(drifting)
    one_pair_lost = {"torch": ceiling("torch", [60, 70, 80, 90, 100]), "onnx": ceiling("onnx", [66, 77, 88, 99, 99])}
    assert clearly_ahead(one_pair_lost) is None
    assert "no backend is faster in every pair of passes: keep torch (packed)" in describe(one_pair_lost)
    too_few = {"torch": ceiling("torch", [60, 70]), "onnx": ceiling("onnx", [90, 99])}
    assert clearly_ahead(too_few) is None
    assert clearly_ahead({"torch": ceiling("torch", [60] * 5)}) is None


def test_results_give_each_backend_its_median_passes_and_token_ratio():
    figures = ceiling("onnx", [75, 90, 85]).as_dict()
    assert figures["median_sentences_per_s"] == 85
    assert figures["passes"] == [75, 90, 85]
    assert figures["real_to_computed_tokens"] == pytest.approx(0.9)


def test_the_benchmark_measures_a_backend_pass_by_pass(tmp_path):
    model = make_tiny_distilbert(tmp_path / "model", max_position_embeddings=64)
    data = tmp_path / "sst2"
    data.mkdir()
    sentences = ["a fine film .", "dull and slow , with nothing to say .", "it works .", "never again ."]
    (data / "dev.tsv").write_text("sentence\tlabel\n" + "".join(f"{text}\t{n % 2}\n" for n, text in enumerate(sentences)))
    result = subprocess.run(
        [sys.executable, "-m", "model_tools.benchmark", "--data", str(data), "--model", str(model)]
        + ["--ceilings", "--passes", "3", "--backends", "torch"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    # Packed torch computes no padding.
    assert "torch: median" in result.stdout and "over 3 passes" in result.stdout, result.stdout
    assert "real/computed tokens 1.00" in result.stdout


def test_the_benchmark_ends_with_the_reason_a_backend_cannot_load(tmp_path):
    data = tmp_path / "sst2"
    data.mkdir()
    (data / "dev.tsv").write_text("sentence\tlabel\nfine .\t1\n")
    result = subprocess.run(
        [sys.executable, "-m", "model_tools.benchmark", "--data", str(data), "--ceilings", "--backends", "onnx"]
        + ["--backend", "onnx", "--model", str(tmp_path / "no-export")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: onnx: "), result.stderr


class CountingSampler:
    """A ceiling sampler whose passes measure 100, 200, 300... sentences/s, in turn."""

    def __init__(self):
        self.passes = 0

    def sample(self) -> dict[str, float]:
        self.passes += 1
        return {"torch": 100.0 * self.passes}


def test_each_bench_row_is_compared_with_the_ceiling_passes_on_either_side_of_it(capsys):
    from bench.run import RowRecorder, ratios

    recorder = RowRecorder(CountingSampler())
    recorder.add({"design": "service uncached", "texts": 1, "concurrency": 32, "sentences_per_s": 150.0, "p50_ms": 9.0})
    recorder.add({"design": "naive", "texts": 1, "concurrency": 32, "sentences_per_s": 50.0, "p50_ms": 8.0})
    # Passes of 100 and 200 around the first row, 200 and 300 around the second.
    assert [row["ceilings_around"] for row in recorder.rows] == [{"torch": 150.0}, {"torch": 250.0}]
    (line,) = ratios(recorder.rows, ceiling("torch", [100, 200, 300]))
    assert "1.00x the torch ceiling around it (150.0; 0.75x the run's median), 3.00x naive" in line
