"""Redis writes a forward pass need not wait for: marking its jobs running and logging its batch.

The batcher hands them over and goes on (inline, their round trips held up each lone text's
answer); one thread writes whatever has gathered, in one pipeline. A late "running" mark never
undoes a job's end: it only moves queued jobs, and releasing a queue reservation twice does nothing.
Every RECLAIM_INTERVAL_S the same thread also gives back the queue budgets still held by jobs that
are gone (a web process died between reserving and publishing, or while storing a bulk job), and
ends bulk jobs still queued or running past BULK_JOB_DEADLINE_S.
"""

import logging
import threading
import time

import redis

from common.store.workers import BATCH_HISTORY
from worker import metrics

log = logging.getLogger(__name__)

RECLAIM_INTERVAL_S = 30


class Bookkeeper:
    """Marks jobs running and logs batches from a thread of its own, in the order they were handed over."""

    def __init__(self, stores):
        self.stores = stores
        self._lock = threading.Lock()
        self._started_job_ids: list[str] = []
        self._batches: list[dict] = []
        self._unwritten = 0  # handed over and not yet written (or given up on)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bookkeeping", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def jobs_started(self, job_ids: list[str]) -> None:
        """Mark these jobs running and release their queue reservations, soon."""
        with self._lock:
            self._started_job_ids.extend(job_ids)
            self._count(len(job_ids))
        self._wake.set()

    def batch_done(self, batch: dict) -> None:
        """Append this batch to the batch log, soon."""
        with self._lock:
            self._batches.append(batch)
            self._count(1)
            # The log keeps only its last BATCH_HISTORY batches, so while Redis is away hold no more.
            dropped = len(self._batches) - BATCH_HISTORY
            if dropped > 0:
                del self._batches[:dropped]
                self._count(-dropped)
        self._wake.set()

    def stop(self, timeout_s: float) -> None:
        """Write what is pending, then stop; give up after ``timeout_s`` (the writes are bookkeeping only)."""
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _count(self, change: int) -> None:
        self._unwritten += change
        metrics.BOOKKEEPING_PENDING.set(self._unwritten)

    def _run(self) -> None:
        next_reclaim = time.monotonic() + RECLAIM_INTERVAL_S
        while not self._stopping.is_set():
            self._wake.wait(max(0.0, next_reclaim - time.monotonic()))
            self._wake.clear()
            self._write_pending()
            if time.monotonic() >= next_reclaim:
                self._reclaim_orphans()
                next_reclaim = time.monotonic() + RECLAIM_INTERVAL_S
        self._write_pending()

    def _reclaim_orphans(self) -> None:
        try:
            reclaimed = self.stores.queue.reclaim_orphans() + self.stores.bulk.reclaim_orphans()
            expired = self.stores.bulk.expire_overdue()
        except redis.RedisError as error:
            log.warning("could not look for orphaned queue reservations or overdue bulk jobs: %s", error)
            return
        if reclaimed:
            log.warning("gave back the queue reservations of %d jobs that are gone", reclaimed)
        if expired:
            log.warning("ended %d bulk jobs failed (expired): not done within BULK_JOB_DEADLINE_S", expired)

    def _write_pending(self) -> None:
        with self._lock:
            job_ids, self._started_job_ids = self._started_job_ids, []
            batches, self._batches = self._batches, []
        if not job_ids and not batches:
            return
        try:
            pipe = self.stores.main.pipeline(transaction=False)
            self.stores.start_jobs(job_ids, pipe)
            self.stores.workers.record_batches(batches, pipe)
            pipe.execute()
        except redis.RedisError as error:
            # Bookkeeping only: the jobs still run, and completing them (with retries) releases their reservations.
            log.warning("could not mark %d jobs running or log %d batches: %s", len(job_ids), len(batches), error)
        except Exception:
            log.exception("bookkeeping write of %d jobs and %d batches failed", len(job_ids), len(batches))
        finally:
            with self._lock:
                self._count(-(len(job_ids) + len(batches)))
