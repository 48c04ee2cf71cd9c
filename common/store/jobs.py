"""Job records: a hash per job, so status changes are single-field writes that keep the key's TTL.

A job ends once (done or failed); ending it pushes to its done list, so a waiting request wakes
from BLPOP instead of polling. A record that expired is never recreated.
"""

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from common.jobs import JobError, JobStatus
from common.store.keys import done_key, job_key

# queued -> running, and nothing else: a redelivered job that already ended stays ended.
_MARK_RUNNING_SCRIPT = """
local record = KEYS[1]
local queued, running = ARGV[1], ARGV[2]
if redis.call('HGET', record, 'status') ~= queued then return 0 end
redis.call('HSET', record, 'status', running)
return 1
"""

# End a live job with a final status (and an error code when failed), then wake its waiters.
_END_SCRIPT = """
local record, done_list = KEYS[1], KEYS[2]
local final_status, error_code, ttl_s = ARGV[1], ARGV[2], tonumber(ARGV[3])
if redis.call('EXISTS', record) == 0 then return 0 end
redis.call('HSET', record, 'status', final_status)
if error_code ~= '' then redis.call('HSET', record, 'error', error_code) end
redis.call('RPUSH', done_list, 1)
redis.call('EXPIRE', done_list, ttl_s)
return 1
"""


@dataclass(frozen=True)
class JobRecord:
    """One job as stored: the request's texts in order and the predictions known so far."""

    job_id: str
    status: JobStatus
    texts: list[str]
    predictions: list[list | None]
    deadline: float
    error: JobError | None


class JobRecords:
    """Create, read, start, finish and fail job records, and wait for them to end."""

    def __init__(self, client: redis.Redis, ttl_s: int):
        self.client = client
        self.ttl_s = ttl_s
        self._mark_running = client.register_script(_MARK_RUNNING_SCRIPT)
        self._end = client.register_script(_END_SCRIPT)

    def create(self, job_id: str, texts: Sequence[str], known: Sequence[list | None], deadline: float) -> None:
        """Store a queued job: the request's texts in order, with the predictions already known."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(
            job_key(job_id),
            mapping={
                "status": JobStatus.QUEUED.value,
                "texts": json.dumps(list(texts)),
                "predictions": json.dumps(list(known)),
                "deadline": deadline,
                "created_at": time.time(),
            },
        )
        pipe.expire(job_key(job_id), self.ttl_s)
        pipe.execute()

    def get(self, job_id: str) -> JobRecord | None:
        """The job record, or None when unknown or expired."""
        fields = self.client.hgetall(job_key(job_id))
        if not fields:
            return None
        return JobRecord(
            job_id=job_id,
            status=JobStatus(fields["status"]),
            texts=json.loads(fields["texts"]),
            predictions=json.loads(fields["predictions"]),
            deadline=float(fields["deadline"]),
            error=JobError(fields["error"]) if fields.get("error") else None,
        )

    def status(self, job_id: str) -> JobStatus | None:
        """Just the status, without reading the texts."""
        status = self.client.hget(job_key(job_id), "status")
        return JobStatus(status) if status is not None else None

    def mark_running(self, job_id: str, pipeline: redis.client.Pipeline | None = None) -> None:
        """Move a queued job to running; with ``pipeline``, only queue the command there."""
        self._mark_running(
            keys=[job_key(job_id)], args=[JobStatus.QUEUED.value, JobStatus.RUNNING.value], client=pipeline or self.client
        )

    def finish(self, job_id: str, results: dict[str, list]) -> None:
        """Fill every missing prediction from ``results``, mark the job done and wake any waiter."""
        texts, known = self.client.hmget(job_key(job_id), "texts", "predictions")
        if texts is None:
            return  # expired meanwhile: nobody can read it any more
        predictions = [k if k is not None else results[text] for text, k in zip(json.loads(texts), json.loads(known))]
        self.client.hset(job_key(job_id), "predictions", json.dumps(predictions))
        self._end_job(job_id, JobStatus.DONE, "")

    def fail(self, job_id: str, reason: JobError) -> None:
        """Mark the job failed with its reason and wake any waiter."""
        self._end_job(job_id, JobStatus.FAILED, JobError(reason).value)

    def _end_job(self, job_id: str, final_status: JobStatus, error_code: str) -> None:
        self._end(keys=[job_key(job_id), done_key(job_id)], args=[final_status.value, error_code, self.ttl_s])

    def wait(self, blocking: redis.Redis, job_id: str, timeout_s: float) -> JobRecord | None:
        """Block (on a client whose read timeout exceeds ``timeout_s``) until the job ends; return the latest record."""
        if timeout_s > 0:
            # BLPOP takes a float timeout; 0 would mean forever.
            blocking.blpop([done_key(job_id)], timeout=max(timeout_s, 0.001))
        return self.get(job_id)
