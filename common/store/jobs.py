"""Job records: a hash per job, so status changes are single-field writes that keep the key's TTL.

A record holds the request's texts, the predictions the cache already knew, and, once the job is
done, the worker's ``results`` ({text: prediction} for the texts it computed); readers merge the
two. Ending a job (done or failed) is one script: it records the outcome and pushes it to the
job's done list, so a waiting request wakes from BLPOP with the results in hand, without reading
the record again. A record that expired is never recreated.
"""

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from common.jobs import JobError, JobStatus
from common.store.keys import done_key, job_key
from common.store.scripts import run_script

# queued -> running, and nothing else: a redelivered job that already ended stays ended.
_MARK_RUNNING_SCRIPT = """
local record = KEYS[1]
local queued, running = ARGV[1], ARGV[2]
if redis.call('HGET', record, 'status') ~= queued then return 0 end
redis.call('HSET', record, 'status', running)
return 1
"""

# End a live job: final status, the error code when failed or the results when done, then hand
# the outcome (the results JSON, or '' when failed) to whoever waits on the done list. A job that
# already ended stays as it ended: a redelivered copy that ran alongside the first (its message
# came back after the visibility timeout) neither ends it again nor turns done into failed.
_END_SCRIPT = """
local record, done_list = KEYS[1], KEYS[2]
local final_status, error_code, results, ttl_s = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local done, failed = ARGV[5], ARGV[6]
local status = redis.call('HGET', record, 'status')
if not status or status == done or status == failed then return 0 end
redis.call('HSET', record, 'status', final_status)
if error_code ~= '' then redis.call('HSET', record, 'error', error_code) end
if results ~= '' then redis.call('HSET', record, 'results', results) end
redis.call('RPUSH', done_list, results)
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


@dataclass(frozen=True)
class JobRecordWrite:
    """A job record to write: its key, its fields and its TTL."""

    key: str
    fields: dict
    ttl_s: int


class JobRecords:
    """Create, read, start, finish and fail job records, and wait for them to end."""

    def __init__(self, client: redis.Redis, ttl_s: int):
        self.client = client
        self.ttl_s = ttl_s
        self._mark_running = client.register_script(_MARK_RUNNING_SCRIPT)
        self._end = client.register_script(_END_SCRIPT)

    def create(self, job_id: str, texts: Sequence[str], known: Sequence[list | None], deadline: float) -> None:
        """Store a queued job: the request's texts in order, with the predictions already known."""
        record = self.new_record(job_id, texts, known, deadline)
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(record.key, mapping=record.fields)
        pipe.expire(record.key, record.ttl_s)
        pipe.execute()

    def new_record(self, job_id: str, texts: Sequence[str], known: Sequence[list | None], deadline: float) -> JobRecordWrite:
        """What ``create`` writes for a queued job, for a caller that writes it with other commands."""
        fields = {
            "status": JobStatus.QUEUED.value,
            "texts": json.dumps(list(texts)),
            "predictions": json.dumps(list(known)),
            "deadline": deadline,
            "created_at": time.time(),
        }
        return JobRecordWrite(job_key(job_id), fields, self.ttl_s)

    def get(self, job_id: str) -> JobRecord | None:
        """The job record, or None when unknown or expired."""
        fields = self.client.hgetall(job_key(job_id))
        if not fields:
            return None
        texts = json.loads(fields["texts"])
        predictions = json.loads(fields["predictions"])
        if "results" in fields:
            predictions = merge_results(texts, predictions, json.loads(fields["results"]))
        return JobRecord(
            job_id=job_id,
            status=JobStatus(fields["status"]),
            texts=texts,
            predictions=predictions,
            deadline=float(fields["deadline"]),
            error=JobError(fields["error"]) if fields.get("error") else None,
        )

    def statuses(self, job_ids: Sequence[str]) -> list[JobStatus | None]:
        """Just the jobs' statuses (None for unknown or expired), in one round trip, without reading texts."""
        pipe = self.client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(job_key(job_id), "status")
        return [JobStatus(status) if status is not None else None for status in pipe.execute()]

    def mark_running(self, job_id: str, pipeline: redis.client.Pipeline | None = None) -> None:
        """Move a queued job to running; with ``pipeline``, only queue the command there."""
        run_script(
            self._mark_running, [job_key(job_id)], [JobStatus.QUEUED.value, JobStatus.RUNNING.value], pipeline or self.client
        )

    def finish(self, job_id: str, results: dict[str, list], pipeline: redis.client.Pipeline | None = None) -> None:
        """Mark the job done with the predictions of the texts it computed, and hand them to any waiter."""
        self._end_job(job_id, JobStatus.DONE, "", json.dumps(results), pipeline)

    def fail(self, job_id: str, reason: JobError) -> None:
        """Mark the job failed with its reason and wake any waiter."""
        self._end_job(job_id, JobStatus.FAILED, JobError(reason).value, "")

    def _end_job(self, job_id: str, final_status: JobStatus, error_code: str, results: str, pipeline=None) -> None:
        run_script(
            self._end,
            [job_key(job_id), done_key(job_id)],
            [final_status.value, error_code, results, self.ttl_s, JobStatus.DONE.value, JobStatus.FAILED.value],
            pipeline or self.client,
        )

    def wait_for_results(self, blocking: redis.Redis, job_id: str, timeout_s: float) -> dict[str, list] | None:
        """Block (on a client whose read timeout exceeds ``timeout_s``) until the job ends.

        The computed texts' predictions when it ended done; None when it failed or the time ran out.
        """
        if timeout_s <= 0:
            return None
        # BLPOP takes a float timeout; 0 would mean forever.
        popped = blocking.blpop([done_key(job_id)], timeout=max(timeout_s, 0.001))
        return json.loads(popped[1]) if popped and popped[1] else None


def merge_results(texts: Sequence[str], known: Sequence[list | None], results: dict[str, list]) -> list[list]:
    """The request's predictions in order: those known at submission, the rest from the job's results."""
    return [prediction if prediction is not None else results[text] for text, prediction in zip(texts, known)]
