"""The stores' Redis round trips on the path of every uncached request, against a real redis-server."""

import time

import pytest
import redis

from common.jobs import JobStatus
from common.store import Stores
from common.store.keys import QUEUED_JOBS_KEY, job_key


class CountingConnection(redis.Connection):
    """Counts what it sends: redis-py sends each round trip (a command, or a whole pipeline) at once."""

    sends = 0

    def send_packed_command(self, command, check_health=True):
        CountingConnection.sends += 1
        super().send_packed_command(command, check_health)


@pytest.fixture
def stores(private_redis) -> Stores:
    return Stores.over(redis.Redis.from_url(private_redis.url, decode_responses=True, connection_class=CountingConnection))


def round_trips(action) -> int:
    before = CountingConnection.sends
    action()
    return CountingConnection.sends - before


def test_enqueueing_a_job_reserves_room_and_stores_its_record_in_one_round_trip(stores):
    # Once per Redis, the first enqueue loads the script (EVALSHA, NOSCRIPT, SCRIPT LOAD, EVALSHA).
    assert stores.enqueue_job("job-0", ["z"], [None], time.time() + 60, 1, 10)
    assert round_trips(lambda: stores.enqueue_job("job-1", ["a", "b", "a"], [None, None, None], time.time() + 60, 2, 10)) == 1
    record = stores.jobs.get("job-1")
    assert record.status == JobStatus.QUEUED and record.texts == ["a", "b", "a"]
    assert stores.main.ttl(job_key("job-1")) > 0
    assert stores.queue.queued_texts() == 3


def test_a_job_refused_for_want_of_room_writes_neither_record_nor_reservation(stores):
    assert stores.enqueue_job("job-1", ["a", "b"], [None, None], time.time() + 60, 2, 3)
    assert round_trips(lambda: stores.enqueue_job("job-2", ["c", "d"], [None, None], time.time() + 60, 2, 3)) == 1
    assert not stores.main.exists(job_key("job-2"))
    assert not stores.main.hexists(QUEUED_JOBS_KEY, "job-2")
    assert stores.queue.queued_texts() == 2


def test_a_job_enqueued_again_is_granted_again_and_counted_once(stores):
    # As when redis-py re-sends the script after losing its reply: the first run already reserved.
    for _ in range(2):
        assert stores.enqueue_job("job-1", ["a", "b"], [None, None], time.time() + 60, 2, 2)
    assert stores.queue.queued_texts() == 2


def test_starting_and_completing_jobs_take_one_round_trip_each_even_after_redis_forgets_its_scripts(stores):
    for job_id in ("job-1", "job-2"):
        assert stores.enqueue_job(job_id, [job_id], [None], time.time() + 60, 1, 10)
    # A restarted Redis has no scripts loaded; redis-py would ask (SCRIPT EXISTS) before each pipeline.
    stores.main.script_flush()
    assert round_trips(lambda: stores.start_jobs(["job-1", "job-2"])) == 1
    assert [record.status for record in map(stores.jobs.get, ["job-1", "job-2"])] == [JobStatus.RUNNING] * 2
    assert stores.queue.queued_texts() == 0
    prediction = [{"label": "POSITIVE", "score": 0.7}, {"label": "NEGATIVE", "score": 0.3}]
    assert (
        round_trips(lambda: stores.complete_jobs("model@1", {"job-1": {"job-1": prediction}, "job-2": {"job-2": prediction}}))
        == 1
    )
    assert [record.predictions for record in map(stores.jobs.get, ["job-1", "job-2"])] == [[prediction]] * 2
    assert stores.cache.lookup("model@1", ["job-1", "job-2"]) == [prediction, prediction]
