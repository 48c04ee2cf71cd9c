"""The model layer: the bundled model's quality, batch-independent scores, and other architectures."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from common.labels import ID2LABEL, LABEL2ID
from model import BUNDLED_MODEL_DIR
from model.core import ModelLoadError, length_sorted_batches, postprocess
from model.torch_backend import TorchClassifier
from model_tools.sst2 import read_split
from model_tools.train import packaged_minilm_dir
from stack import REPO
from tests.made_up_models import make_tiny_distilbert, save_with_tokenizer

SST2_DIR = Path(os.environ.get("SST2_DIR", REPO.parent / "shared" / "data" / "sst2"))
# Texts of very different lengths, so batches differ in padding as well as in company.
BATCH_MATES = ["ok", "I love you.", "a long , winding and ultimately rewarding film about grief , memory and family " * 3]


@pytest.fixture(scope="module")
def bundled() -> TorchClassifier:
    return TorchClassifier.load(BUNDLED_MODEL_DIR, device="cpu")


@pytest.fixture(scope="module")
def tiny_distilbert(tmp_path_factory) -> Path:
    return make_tiny_distilbert(tmp_path_factory.mktemp("tiny-distilbert"), max_position_embeddings=64)


def dev_slice(count: int = 200):
    if not (SST2_DIR / "dev.tsv").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"SST-2 data not found at {SST2_DIR}")
        pytest.skip(f"SST-2 data not found at {SST2_DIR}; set SST2_DIR")
    return read_split(SST2_DIR, "dev")[:count]


def assert_batch_independent(model: TorchClassifier, probe: str) -> None:
    alone = model.predict([probe])[0]
    for mates in ([BATCH_MATES[0]], BATCH_MATES, BATCH_MATES * 5):
        in_company = model.predict([*mates, probe, *mates], sort_by_length=False)[len(mates)]
        for a, b in zip(alone, in_company):
            assert a["label"] == b["label"]
            assert abs(a["score"] - b["score"]) <= 1e-5


def test_bundled_model_scores_the_reference_sentences(bundled):
    hate, love = bundled.predict(["I hate you.", "I love you."])
    assert hate[0]["label"] == "NEGATIVE" and hate[0]["score"] >= 0.85
    assert love[0]["label"] == "POSITIVE" and love[0]["score"] >= 0.85


def test_bundled_model_accuracy_on_a_fixed_dev_slice(bundled):
    examples = dev_slice()
    predictions = bundled.predict([example.sentence for example in examples])
    correct = sum(p[0]["label"] == ID2LABEL[e.label] for p, e in zip(predictions, examples))
    # The committed model scores 175/200 on this slice (0.8956 on all 872 dev sentences, by
    # python -m model_tools.evaluate); a drop below 0.86 means the model or the inference code changed.
    assert correct / len(examples) >= 0.86


def test_bundled_model_files_are_world_readable():
    for path in BUNDLED_MODEL_DIR.iterdir():
        assert path.stat().st_mode & 0o004, f"{path} is not readable by a non-root container user"


def test_bundled_model_runs_in_float32_though_stored_in_float16(bundled):
    assert {parameter.dtype for parameter in bundled.model.parameters()} == {torch.float32}


def test_scores_do_not_depend_on_batch_mates(bundled):
    assert_batch_independent(bundled, "the plot is thin , but the acting is superb .")


def test_predictions_list_both_labels_highest_first_in_input_order(bundled):
    texts = ["I love you.", "I hate you.", "a dull , lifeless film"]
    predictions = bundled.predict(texts)
    assert [p[0]["label"] for p in predictions] == ["POSITIVE", "NEGATIVE", "NEGATIVE"]
    for prediction in predictions:
        assert {item["label"] for item in prediction} == {"NEGATIVE", "POSITIVE"}
        assert prediction[0]["score"] >= prediction[1]["score"]
        assert abs(sum(item["score"] for item in prediction) - 1) < 1e-6


def test_distilbert_code_path_runs_scores_and_truncates(tiny_distilbert):
    model = TorchClassifier.load(tiny_distilbert, device="cpu")
    assert model.max_length == 64
    long_text = "word " * 500
    assert max(len(ids) for ids in model.encode([long_text])) == 64
    predictions = model.predict(["I love you.", long_text, ""])
    assert len(predictions) == 3
    assert all({item["label"] for item in p} == {"NEGATIVE", "POSITIVE"} for p in predictions)
    assert_batch_independent(model, "I hate you.")


def test_model_without_the_sentiment_labels_is_refused(tmp_path):
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, num_labels=2
    )
    BertForSequenceClassification(config).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(packaged_minilm_dir()).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="NEGATIVE"):
        TorchClassifier.load(tmp_path, device="cpu")


def test_missing_model_is_a_clear_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="cannot load model"):
        TorchClassifier.load(tmp_path / "absent", device="cpu")


def test_worker_exits_with_a_clear_message_when_the_model_cannot_load(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "worker"],
        cwd=REPO,
        env={**os.environ, "MODEL": str(tmp_path / "absent"), "REDIS_URL": "redis://127.0.0.1:1/0", "WORKER_METRICS_PORT": "0"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "cannot start worker: model" in result.stderr


def test_length_sorted_batches_respect_both_bounds():
    lengths = [5, 50, 3, 40, 7, 45, 2, 60]
    batches = length_sorted_batches(lengths, max_texts=3, max_tokens=100)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 3
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 100


def test_padded_batches_put_texts_of_like_length_together():
    # Padding the short texts to the long ones would cost more than a second forward pass.
    lengths = [8, 60, 9, 58, 10, 59]
    batches = length_sorted_batches(lengths, max_texts=64, max_tokens=8192, padded=True, pass_overhead_tokens=32)
    assert [[lengths[i] for i in batch] for batch in batches] == [[8, 9, 10], [58, 59, 60]]
    # Lengths too close to be worth another pass stay in one.
    assert len(length_sorted_batches([20, 21, 22, 23], max_texts=64, max_tokens=8192, padded=True)) == 1


def padded_cost(batches: list[list[int]], lengths: list[int], overhead: int) -> int:
    return sum(overhead + len(batch) * max(lengths[i] for i in batch) for batch in batches)


def every_cut(count: int):
    """Every way to cut a sorted run of ``count`` texts into consecutive batches, as lists of sizes."""
    if count == 0:
        yield []
        return
    for first in range(1, count + 1):
        for rest in every_cut(count - first):
            yield [first, *rest]


@pytest.mark.parametrize("seed", range(20))
def test_padded_batches_cost_no_more_than_any_other_cut_within_the_bounds(seed):
    generator = random.Random(seed)
    lengths = [generator.randint(3, 60) for _ in range(generator.randint(1, 9))]
    max_texts, max_tokens, overhead = generator.randint(1, 6), generator.choice([60, 120, 8192]), generator.choice([0, 16, 64])
    batches = length_sorted_batches(lengths, max_texts, max_tokens, padded=True, pass_overhead_tokens=overhead)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    allowed = []
    for sizes in every_cut(len(lengths)):
        starts = [sum(sizes[:n]) for n in range(len(sizes))]
        cut = [order[start : start + size] for start, size in zip(starts, sizes)]
        if all(len(b) == 1 or (len(b) <= max_texts and len(b) * max(lengths[i] for i in b) <= max_tokens) for b in cut):
            allowed.append(padded_cost(cut, lengths, overhead))
    for batch in batches:
        assert len(batch) == 1 or (len(batch) <= max_texts and len(batch) * max(lengths[i] for i in batch) <= max_tokens)
    assert padded_cost(batches, lengths, overhead) == min(allowed)


def test_postprocess_orders_labels_by_score():
    assert postprocess([[0.2, 0.8]], ["NEGATIVE", "POSITIVE"]) == [
        [{"label": "POSITIVE", "score": 0.8}, {"label": "NEGATIVE", "score": 0.2}]
    ]


def test_onnx_export_scores_like_torch_and_independently_of_batch_mates(tiny_distilbert, tmp_path):
    from model.onnx_backend import SPINNING_OPTION, OnnxClassifier
    from model_tools.export_onnx import export

    export(str(tiny_distilbert), tmp_path)
    onnx_model = OnnxClassifier.load(tmp_path, threads=1)
    torch_model = TorchClassifier.load(tiny_distilbert, device="cpu")
    texts = ["I love you.", "I hate you.", *BATCH_MATES]
    for ours, reference in zip(onnx_model.predict(texts), torch_model.predict(texts)):
        assert [item["label"] for item in ours] == [item["label"] for item in reference]
        assert all(abs(a["score"] - b["score"]) <= 1e-4 for a, b in zip(ours, reference))
    assert_batch_independent(onnx_model, "the plot is thin , but the acting is superb .")
    assert onnx_model.identity != torch_model.identity
    # Idle compute threads sleep rather than spin on the cores the worker shares.
    assert onnx_model.session.get_session_options().get_session_config_entry(SPINNING_OPTION) == "0"


def test_onnx_runtime_compute_threads_count_as_the_forward_pass(tiny_distilbert, tmp_path):
    """bench.run reads the forward pass's CPU from threads named "forward"; ORT's own threads must be among them."""
    from model_tools.export_onnx import export

    export(str(tiny_distilbert), tmp_path)
    program = (
        "import json, os; from common.settings import Settings; from worker.runtime import load_model\n"
        f"load_model(Settings.from_env({{'model': {str(tmp_path)!r}, 'model_backend': 'onnx', 'torch_threads': 2}}))\n"
        "print(json.dumps([open(f'/proc/self/task/{tid}/comm').read().strip() for tid in os.listdir('/proc/self/task')]))"
    )
    result = subprocess.run([sys.executable, "-c", program], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    names = json.loads(result.stdout.strip().splitlines()[-1])
    assert "forward" in names, names


def assert_packed_equals_padded(model: TorchClassifier, texts: list[str]) -> None:
    """The packed forward's probabilities equal transformers' padded forward's to 1e-5."""
    assert not model.pads, "this architecture should run packed"
    token_ids = model.encode(texts)
    packed, padded = model.infer(token_ids), model.infer_padded(token_ids)
    assert max(abs(a - b) for row_a, row_b in zip(packed, padded) for a, b in zip(row_a, row_b)) <= 1e-5


def test_packed_bert_forward_equals_the_padded_one_on_mixed_lengths(bundled):
    texts = [example.sentence for example in dev_slice(64)] + ["", "I love you.", "word " * 600]
    assert_packed_equals_padded(bundled, texts)


def test_packed_distilbert_forward_equals_the_padded_one(tmp_path):
    # Large initial weights, so that a text attending to its batch-mates would move its scores
    # far past 1e-5 (the shared tiny model's near-uniform outputs would hide that).
    model = TorchClassifier.load(make_tiny_distilbert(tmp_path, initializer_range=0.5), device="cpu")
    assert_packed_equals_padded(model, ["I love you.", "I hate you.", "word " * 300, *BATCH_MATES])
    assert_batch_independent(model, "the plot is thin , but the acting is superb .")


def test_unknown_architectures_fall_back_to_the_padded_forward(tmp_path):
    config = RobertaConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        id2label=ID2LABEL,
        label2id=LABEL2ID,
    )
    model = TorchClassifier.load(save_with_tokenizer(RobertaForSequenceClassification(config), tmp_path), device="cpu")
    assert model.pads and model.computed_tokens([3, 5]) == 10
    predictions = model.predict(["I love you.", "I hate you."])
    assert [{item["label"] for item in prediction} for prediction in predictions] == [{"NEGATIVE", "POSITIVE"}] * 2
