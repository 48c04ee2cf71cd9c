"""The stores' Redis round trips on the path of every uncached request, against a real redis-server."""

import time

import pytest
import redis

from common.jobs import JobStatus
from common.store import Stores
from common.store.jobs import new_job
from common.store.keys import QUEUED_JOB_BYTES_KEY, QUEUED_JOBS_KEY, job_key


class CountingConnection(redis.Connection):
    """Counts what it sends: redis-py sends each round trip (a command, or a whole pipeline) at once."""

    sends = 0

    def send_packed_command(self, command, check_health=True):
        CountingConnection.sends += 1
        super().send_packed_command(command, check_health)


@pytest.fixture
def stores(private_redis) -> Stores:
    return Stores.over(redis.Redis.from_url(private_redis.url, decode_responses=True, connection_class=CountingConnection))


def enqueue(stores: Stores, job_id: str, texts: list[str], max_texts: int = 10, max_bytes: int = 2**20):
    """Enqueue a job of uncached ``texts``; the Refusal, or None when granted."""
    return stores.jobs.enqueue(new_job(job_id, texts, [None] * len(texts), time.time() + 60), max_texts, max_bytes)


def round_trips(action) -> int:
    before = CountingConnection.sends
    action()
    return CountingConnection.sends - before


def test_enqueueing_a_job_reserves_room_and_stores_its_record_in_one_round_trip(stores):
    # Once per Redis, the first enqueue loads the script (EVALSHA, NOSCRIPT, SCRIPT LOAD, EVALSHA).
    assert enqueue(stores, "job-0", ["z"]) is None
    assert round_trips(lambda: enqueue(stores, "job-1", ["a", "b", "a"])) == 1
    record = stores.jobs.get("job-1")
    assert record.status == JobStatus.QUEUED and record.predictions == [None, None, None]
    assert stores.main.ttl(job_key("job-1")) > 0
    assert stores.queue.queued_texts() == 3  # "z", then "a" and "b": each distinct text once


def test_a_job_refused_for_want_of_room_writes_neither_record_nor_reservation(stores):
    assert enqueue(stores, "job-1", ["a", "b"], max_texts=3) is None
    refusals = []
    assert round_trips(lambda: refusals.append(enqueue(stores, "job-2", ["c", "d"], max_texts=3))) == 1
    assert refusals[0].limit == "MAX_QUEUED_TEXTS"
    assert not stores.main.exists(job_key("job-2"))
    assert not stores.main.hexists(QUEUED_JOBS_KEY, "job-2") and not stores.main.hexists(QUEUED_JOB_BYTES_KEY, "job-2")
    assert stores.queue.queued_texts() == 2


def test_a_job_enqueued_again_is_granted_again_and_counted_once(stores):
    # As when redis-py re-sends the script after losing its reply: the first run already reserved.
    for _ in range(2):
        assert enqueue(stores, "job-1", ["a", "b"], max_texts=2) is None
    assert stores.queue.queued_texts() == 2


def test_starting_and_completing_jobs_take_one_round_trip_each_even_after_redis_forgets_its_scripts(stores):
    for job_id in ("job-1", "job-2"):
        assert enqueue(stores, job_id, [job_id]) is None
    # A restarted Redis has no scripts loaded; redis-py would ask (SCRIPT EXISTS) before each pipeline.
    stores.main.script_flush()
    assert round_trips(lambda: stores.start_jobs(["job-1", "job-2"])) == 1
    assert [record.status for record in map(stores.jobs.get, ["job-1", "job-2"])] == [JobStatus.RUNNING] * 2
    assert stores.queue.queued_texts() == 0
    prediction = [{"label": "POSITIVE", "score": 0.7}, {"label": "NEGATIVE", "score": 0.3}]
    computed = {"job-1": prediction, "job-2": prediction}
    assert round_trips(lambda: stores.complete_jobs("model@1", computed, {"job-1": [prediction], "job-2": [prediction]})) == 1
    assert [record.predictions for record in map(stores.jobs.get, ["job-1", "job-2"])] == [[prediction]] * 2
    assert stores.cache.lookup("model@1", ["job-1", "job-2"]) == [prediction, prediction]
    assert (stores.queue.queued_texts(), stores.queue.queued_bytes()) == (0, 0)


def test_a_job_is_refused_past_its_byte_budget_and_its_bytes_come_back_when_it_ends(stores):
    assert enqueue(stores, "job-1", ["a" * 2000], max_bytes=10_000) is None
    held = stores.queue.queued_bytes()
    assert held > 2000 * 2  # the record's copy and the message's
    refusal = enqueue(stores, "job-2", ["b" * 2000] * 1 + ["c" * 2000], max_bytes=10_000)
    assert refusal.limit == "MAX_QUEUED_BYTES" and not stores.main.exists(job_key("job-2"))
    stores.start_jobs(["job-1"])
    assert (stores.queue.queued_texts(), stores.queue.queued_bytes()) == (0, held)  # its texts stay until it ends
    stores.jobs.fail("job-1", "expired")
    assert stores.queue.queued_bytes() == 0


def test_a_record_stores_each_text_once_unescaped_and_drops_its_texts_when_it_ends(stores):
    text = "Très bien, 很好 😀 " * 100
    assert enqueue(stores, "job-1", [text] * 128, max_texts=1, max_bytes=2**20) is None
    stored = stores.main.hget(job_key("job-1"), "texts")
    assert len(stored.encode()) < len(text.encode()) + 10  # once, as UTF-8: not 128 times, nor \u-escaped
    prediction = [{"label": "POSITIVE", "score": 0.7}, {"label": "NEGATIVE", "score": 0.3}]
    stores.complete_jobs("model@1", {text: prediction}, {"job-1": [prediction]})
    assert not stores.main.hexists(job_key("job-1"), "texts")
    assert stores.jobs.get("job-1").predictions == [prediction] * 128
