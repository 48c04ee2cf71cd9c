"""Continuous batching: an idle model runs at once; texts arriving during a forward pass form the next one."""

import threading
import time

from model.core import length_sorted_batches
from worker.batcher import Batcher


class GatedModel:
    """A packed model stand-in whose forward passes block until the test lets them finish."""

    pads = False
    identity = "gated-model@0"

    def __init__(self):
        self.forward_started = threading.Event()
        self.release = threading.Event()
        self.batches: list[list[list[int]]] = []

    def encode(self, texts):
        return [[1] * len(text.split()) for text in texts]

    def computed_tokens(self, lengths):
        return sum(lengths)

    def predict_encoded(self, token_ids):
        self.batches.append(list(token_ids))
        self.forward_started.set()
        assert self.release.wait(10), "the test never released the forward pass"
        return [[{"label": "POSITIVE", "score": 1.0}, {"label": "NEGATIVE", "score": 0.0}] for _ in token_ids]


def start_batcher(model, **bounds) -> Batcher:
    batcher = Batcher(
        model,
        **({"max_texts": 64, "max_tokens": 8192, "max_wait_ms": 0, "gather_max_texts": 256, "bulk_max_tokens": 8192} | bounds),
    )
    batcher.start()
    return batcher


def test_idle_model_with_no_max_wait_runs_a_lone_text_at_once():
    model = GatedModel()
    model.release.set()
    batcher = start_batcher(model, max_wait_ms=0)
    try:
        started = time.monotonic()
        assert set(batcher.submit("only", ["a lone text"], time.time() + 30, time.time()).result(5)) == {"a lone text"}
        # The gather loop polls its queue every 0.2 s when empty; a fixed wait would add to that.
        assert time.monotonic() - started < 0.15
    finally:
        batcher.stop()


def test_texts_arriving_during_a_forward_pass_form_the_next_batch():
    model = GatedModel()
    batcher = start_batcher(model)
    try:
        first = batcher.submit("first", ["the first text"], time.time() + 30, time.time())
        assert model.forward_started.wait(5)
        # Evidence the forward pass is in flight: it holds the first text and has not returned.
        assert len(model.batches) == 1 and not first.done()
        later = [batcher.submit(f"job-{i}", [f"later text {i}"], time.time() + 30, time.time()) for i in range(5)]
        model.release.set()
        for future in [first, *later]:
            future.result(5)
        assert [len(batch) for batch in model.batches] == [1, 5]
    finally:
        batcher.stop()


def test_gathering_and_forward_pass_sizes_are_separate_knobs():
    model = GatedModel()
    batcher = start_batcher(model, max_texts=2, gather_max_texts=3)
    try:
        first = batcher.submit("first", ["the first text"], time.time() + 30, time.time())
        assert model.forward_started.wait(5)
        later = [batcher.submit(f"job-{i}", [f"later text {i}"], time.time() + 30, time.time()) for i in range(5)]
        model.release.set()
        for future in [first, *later]:
            future.result(5)
        # Gathers of at most 3 texts (3, then 2), each cut into forward passes of at most 2 texts.
        assert [len(batch) for batch in model.batches] == [1, 2, 1, 2]
    finally:
        batcher.stop()


def test_packed_forward_passes_are_sized_by_real_tokens():
    lengths = [10, 40, 10]
    # Padded, a pair with the 40-token text costs 80 tokens; packed, 10 + 10 + 40 = 60 fits.
    assert length_sorted_batches(lengths, max_texts=8, max_tokens=60, padded=True) == [[0, 2], [1]]
    assert length_sorted_batches(lengths, max_texts=8, max_tokens=60, padded=False) == [[0, 2, 1]]


def test_a_text_in_a_forward_pass_is_not_computed_again_by_the_next_batch():
    model = GatedModel()
    batcher = start_batcher(model)
    try:
        first = batcher.submit("first", ["the same words"], time.time() + 30, time.time())
        assert model.forward_started.wait(5)
        # Evidence the text is in flight: its forward pass holds it and has not returned.
        assert len(model.batches) == 1 and not first.done()
        again = batcher.submit("again", ["the same words", "other words here now"], time.time() + 30, time.time())
        model.release.set()
        assert again.result(5)["the same words"] == first.result(5)["the same words"]
        # The second batch computed only the new text (4 tokens), not the 3-token one again.
        assert [[len(ids) for ids in batch] for batch in model.batches] == [[3], [4]]
    finally:
        batcher.stop()


class SteppedModel(GatedModel):
    """Each forward pass waits for one step from the test."""

    def __init__(self):
        super().__init__()
        self.steps = threading.Semaphore(0)
        self.passes = threading.Semaphore(0)

    def predict_encoded(self, token_ids):
        self.batches.append(list(token_ids))
        self.passes.release()
        assert self.steps.acquire(timeout=10), "the test never stepped the forward pass"
        return [[{"label": "POSITIVE", "score": 1.0}, {"label": "NEGATIVE", "score": 0.0}] for _ in token_ids]


def test_an_interactive_job_waits_behind_at_most_one_bulk_forward_pass():
    model = SteppedModel()
    batcher = start_batcher(model, max_texts=2)
    try:
        # Six one-word bulk texts: three forward passes of two.
        chunk = batcher.submit_bulk("bulk", ["b1", "b2", "b3", "b4", "b5", "b6"])
        assert model.passes.acquire(timeout=5)  # the chunk's first pass is in flight
        interactive = batcher.submit("interactive", ["an interactive five-word text"], time.time() + 30, time.time())
        model.steps.release()  # the first bulk pass ends...
        assert model.passes.acquire(timeout=5)
        assert model.batches[1] == [[1] * 4], "the next pass must be the interactive job's"
        model.steps.release()
        assert set(interactive.result(5)) == {"an interactive five-word text"}
        for _ in range(2):  # then the rest of the chunk
            model.steps.release()
        assert len(chunk.result(5)) == 6 and len(model.batches) == 4
    finally:
        for _ in range(4):
            model.steps.release()
        batcher.stop()


def test_bulk_forward_passes_are_bounded_by_the_bulk_token_limit_and_interactive_ones_are_not():
    model = GatedModel()
    model.release.set()
    batcher = start_batcher(model, bulk_max_tokens=6)
    try:
        # Five bulk texts of two tokens: at most six tokens, so three texts, per pass.
        batcher.submit_bulk("bulk", [f"bulk text{n}" for n in range(5)]).result(5)
        assert [len(batch) for batch in model.batches] == [3, 2]
        model.batches.clear()
        batcher.submit("interactive", [f"interactive text{n}" for n in range(5)], time.time() + 30, time.time()).result(5)
        assert [len(batch) for batch in model.batches] == [5]
    finally:
        batcher.stop()


def test_bulk_chunks_wait_while_interactive_jobs_are_queued():
    model = SteppedModel()
    batcher = start_batcher(model)
    try:
        first = batcher.submit("first", ["the first"], time.time() + 30, time.time())
        assert model.passes.acquire(timeout=5)
        chunk = batcher.submit_bulk("bulk", ["bulk text"])  # queued before the next interactive job...
        later = batcher.submit("later", ["a later interactive text"], time.time() + 30, time.time())
        for _ in range(3):
            model.steps.release()
        first.result(5), later.result(5), chunk.result(5)
        # ...and still runs after it.
        assert model.batches[1] == [[1] * 4] and model.batches[2] == [[1] * 2]
    finally:
        batcher.stop()
