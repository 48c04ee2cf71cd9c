"""The worker's bookkeeping thread: the Redis writes a forward pass does not wait for."""

import logging

import pytest
import redis
from prometheus_client import REGISTRY

from common.jobs import JobStatus
from common.store import Stores
from common.store.jobs import new_job
from stack import wait_until
from worker.bookkeeping import Bookkeeper


def pending() -> float:
    return REGISTRY.get_sample_value("sentiment_worker_bookkeeping_pending")


@pytest.fixture
def stores(private_redis) -> Stores:
    return Stores.over(redis.Redis.from_url(private_redis.url, decode_responses=True))


def test_marks_jobs_running_releases_their_reservations_and_logs_batches(stores):
    assert stores.jobs.enqueue(new_job("job-1", ["a text"], [None], deadline=1e12), 100, 2**20) is None
    bookkeeper = Bookkeeper(stores)
    bookkeeper.start()
    try:
        bookkeeper.jobs_started(["job-1"])
        bookkeeper.batch_done({"texts": 1, "at": 1.0, "worker": "w"})
        wait_until(lambda: pending() == 0, 10, "the bookkeeping writes")
    finally:
        bookkeeper.stop(5)
    assert stores.jobs.get("job-1").status == JobStatus.RUNNING
    assert stores.queue.queued_texts() == 0
    assert stores.workers.recent_batches() == [{"texts": 1, "at": 1.0, "worker": "w"}]


def test_a_late_running_mark_does_not_undo_a_finished_job(stores):
    assert stores.jobs.enqueue(new_job("job-1", ["a text"], [None], deadline=1e12), 100, 2**20) is None
    stores.jobs.finish("job-1", [[{"label": "POSITIVE", "score": 0.9}, {"label": "NEGATIVE", "score": 0.1}]])
    bookkeeper = Bookkeeper(stores)
    bookkeeper.start()
    bookkeeper.jobs_started(["job-1"])
    bookkeeper.stop(5)  # writes what is pending first
    assert pending() == 0
    assert stores.jobs.get("job-1").status == JobStatus.DONE


def test_a_failed_write_is_logged_and_not_left_pending(stores, caplog):
    bookkeeper = Bookkeeper(stores)
    bookkeeper.start()
    with caplog.at_level(logging.ERROR, logger="worker.bookkeeping"):
        bookkeeper.batch_done({"texts": 1, "at": 1.0, "worker": object()})  # not JSON: a bug, not a Redis error
        bookkeeper.stop(5)
    assert pending() == 0
    assert "bookkeeping write of 0 jobs and 1 batches failed" in caplog.text
    assert "is not JSON serializable" in caplog.text
