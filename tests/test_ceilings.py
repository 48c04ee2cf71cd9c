"""The backend ceilings: passes counted per backend, the rule for a backend clearly ahead, and the command."""

import subprocess
import sys

import pytest

from model_tools.ceilings import Ceiling, clearly_ahead, describe
from stack import REPO
from tests.made_up_models import make_tiny_distilbert


def ceiling(backend: str, passes: list[float]) -> Ceiling:
    return Ceiling(backend, f"{backend}-model", passes, real_tokens=90, computed_tokens=100)


def test_a_backend_is_ahead_only_when_its_slowest_pass_beats_the_others_fastest():
    overlapping = {"torch": ceiling("torch", [60, 70, 80]), "onnx": ceiling("onnx", [75, 85, 90])}
    assert clearly_ahead(overlapping) is None
    assert "no backend is ahead on every pass: keep torch (packed)" in describe(overlapping)
    apart = {"torch": ceiling("torch", [60, 70, 74]), "onnx": ceiling("onnx", [75, 85, 90])}
    assert clearly_ahead(apart) == "onnx"
    assert "onnx is ahead on every pass" in describe(apart)
    assert clearly_ahead({"torch": ceiling("torch", [60])}) is None


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
