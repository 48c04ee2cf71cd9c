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


class SteadyModel(GatedModel):
    """Every forward pass takes the same few milliseconds."""

    def predict_encoded(self, token_ids):
        time.sleep(0.005)
        return [[{"label": "POSITIVE", "score": 1.0}, {"label": "NEGATIVE", "score": 0.0}] for _ in token_ids]


def bulk_share_under_a_flood(min_share: float, seconds: float = 1.5) -> tuple[bool, float]:
    """Interactive jobs always waiting, one bulk chunk of many passes: (whether it finished in time, bulk's share)."""
    passes = []
    batcher = Batcher(SteadyModel(), 64, 8192, 0, 256, 2, on_batch=passes.append, bulk_min_share=min_share)
    batcher.start()
    stop = threading.Event()

    def flood():
        number = 0
        while not stop.is_set():
            number += 1
            batcher.submit(f"job-{number}", [f"text {number}"], time.time() + 30, time.time())
            time.sleep(0.001)

    feeder = threading.Thread(target=flood, daemon=True)
    feeder.start()
    try:
        time.sleep(0.1)  # the flood is under way before the chunk arrives
        chunk = batcher.submit_bulk("bulk", [f"b{n}" for n in range(40)])  # 40 passes of one one-token text
        deadline = time.monotonic() + seconds
        while not chunk.done() and time.monotonic() < deadline:
            time.sleep(0.01)
        finished = chunk.done()
    finally:
        stop.set()
        feeder.join()
        batcher.stop()
    bulk = sum(record.seconds for record in passes if record.lane == "bulk")
    return finished, bulk / sum(record.seconds for record in passes)


def test_bulk_keeps_its_minimum_share_of_forward_passes_under_a_flood_of_interactive_jobs():
    finished, share = bulk_share_under_a_flood(min_share=0.25)
    assert finished and share >= 0.2, share
    # Evidence the flood would otherwise starve it: without a minimum share, the chunk does not finish.
    finished, share = bulk_share_under_a_flood(min_share=0.0)
    assert not finished and share < 0.15, share


class TokenTimedModel(GatedModel):
    """A forward pass takes a millisecond per token, as a slow CPU might."""

    def predict_encoded(self, token_ids):
        time.sleep(0.001 * sum(len(ids) for ids in token_ids))
        return [[{"label": "POSITIVE", "score": 1.0}, {"label": "NEGATIVE", "score": 0.0}] for _ in token_ids]


def test_bulk_passes_are_cut_to_the_time_bound_on_a_slow_cpu():
    passes = []
    batcher = Batcher(TokenTimedModel(), 512, 8192, 0, 256, 512, on_batch=passes.append, bulk_pass_max_s=0.05)
    batcher.start()
    try:
        batcher.submit_bulk("first", [f"b{n}" for n in range(100)]).result(10)  # learns the speed: 100 tokens, 0.1 s
        alone = [record.computed_tokens for record in passes]
        batcher.submit("interactive", ["an interactive text"], time.time() + 30, time.time()).result(10)
        passes.clear()
        batcher.submit_bulk("second", [f"c{n}" for n in range(200)]).result(10)
    finally:
        batcher.stop()
    assert alone == [100]  # alone, one pass as large as the token bound allows
    # Beside interactive traffic, about 50 tokens a pass (0.05 s at a millisecond a token).
    assert passes and max(record.computed_tokens for record in passes) <= 60, [record.computed_tokens for record in passes]
