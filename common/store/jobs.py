"""Job records of /predict: a hash per job, so status changes are single-field writes that keep the key's TTL.

A record holds each text its job computes once (``texts``: the request's distinct uncached texts,
as UTF-8 JSON), and ``slots``: one per text of the request, in order, either the prediction the
cache already knew or the index of the text in ``texts``. The worker's ``results`` list the
predictions of ``texts`` in that order. Enqueueing is one script: it reserves the job's room in the
queue budgets (common.store.backpressure) and writes the record only when granted. Ending a job
(done or failed) is one script too: it records the outcome, deletes ``texts`` (a finished record
keeps only what answers it), gives back the job's budgets, and pushes the outcome to the job's
done list, so a waiting request wakes from BLPOP with the results in hand. A record that expired
is never recreated.
"""

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from common.jobs import ANONYMOUS, JobError, JobStatus
from common.store.backpressure import BUDGET_KEYS, BUDGET_LUA, Refusal, refusal
from common.store.keys import done_key, job_key
from common.store.memory import ALLOCATOR_SLACK
from common.store.scripts import ALLOW_OOM, run_script

# Redis's own cost of a job beyond its texts: the record's key and fields, its budget entries, its
# done list and its Celery message's envelope (measured: docs/deployment.md, "Sizing Redis").
JOB_OVERHEAD_BYTES = 3584

# Reserve the job's texts and bytes; only when granted, store its record (ARGV[7..]: field, value, ...).
_ENQUEUE_SCRIPT = (
    BUDGET_LUA
    + """
local record = KEYS[5]
local code = reserve(ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]))
if code < 0 then return code end
redis.call('HSET', record, unpack(ARGV, 7))
redis.call('EXPIRE', record, ARGV[6])
return 0
"""
)

# queued -> running, and nothing else: a redelivered job that already ended stays ended.
_MARK_RUNNING_SCRIPT = """
local record = KEYS[1]
local queued, running = ARGV[1], ARGV[2]
if redis.call('HGET', record, 'status') ~= queued then return 0 end
redis.call('HSET', record, 'status', running)
return 1
"""

# End a live job: give back its budgets, record the final status with the error code (failed) or
# the results (done), drop its texts, and hand the outcome (the results JSON, or '' when failed)
# to whoever waits on the done list. A job that already ended stays as it ended: a redelivered
# copy that ran alongside the first (its message came back after the visibility timeout) neither
# ends it again nor turns done into failed. It records the outcome of admitted work, so it runs
# even when Redis is full.
_END_SCRIPT = (
    ALLOW_OOM
    + BUDGET_LUA
    + """
local record, done_list = KEYS[5], KEYS[6]
local job_id, final_status, error_code, results, ttl_s = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local done, failed = ARGV[6], ARGV[7]
give_back(KEYS[1], KEYS[2], job_id)
give_back(KEYS[3], KEYS[4], job_id)
local status = redis.call('HGET', record, 'status')
if not status or status == done or status == failed then return 0 end
redis.call('HSET', record, 'status', final_status)
if error_code ~= '' then redis.call('HSET', record, 'error', error_code) end
if results ~= '' then redis.call('HSET', record, 'results', results) end
-- A record of the previous release's web (no slots) maps results by text, so keeps its texts.
if redis.call('HEXISTS', record, 'slots') == 1 then redis.call('HDEL', record, 'texts') end
redis.call('RPUSH', done_list, results)
redis.call('EXPIRE', done_list, ttl_s)
redis.call('EXPIRE', record, ttl_s)  -- a record lives JOB_TTL_S from its end, however long it queued
return 1
"""
)

# A job that will never run (its publish failed): its record goes, and its budgets come back.
_ABANDON_SCRIPT = (
    ALLOW_OOM
    + BUDGET_LUA
    + """
give_back(KEYS[1], KEYS[2], ARGV[1])
give_back(KEYS[3], KEYS[4], ARGV[1])
return redis.call('DEL', KEYS[5])
"""
)


@dataclass(frozen=True)
class JobRecord:
    """One job as stored: its status and the predictions known so far, in the request's order (None: not yet)."""

    job_id: str
    status: JobStatus
    predictions: list[list | None]
    deadline: float
    error: JobError | None
    # Who may see it: records written before jobs had owners belong to the anonymous owner.
    owner: str = ANONYMOUS


@dataclass(frozen=True)
class NewJob:
    """A queued job's record as it will be written, and the Redis bytes it will hold until it ends."""

    job_id: str
    texts: list[str]
    slots: list
    fields: dict
    bytes: int


def new_job(job_id: str, texts: Sequence[str], known: Sequence[list | None], deadline: float, owner: str = ANONYMOUS) -> NewJob:
    """The record of ``owner``'s job for a request's ``texts``, of which ``known`` already have predictions.

    Each distinct unknown text is stored once, unescaped; the bytes count it twice, for the record
    and for the Celery message that carries it to a worker (JSON with \\u escapes, then base64).
    """
    missing = list(dict.fromkeys(text for text, prediction in zip(texts, known) if prediction is None))
    position = {text: index for index, text in enumerate(missing)}
    slots = [prediction if prediction is not None else position[text] for text, prediction in zip(texts, known)]
    texts_json = json.dumps(missing, ensure_ascii=False)
    slots_json = json.dumps(slots)
    escaped_length = len(texts_json) if texts_json.isascii() else len(json.dumps(missing))
    fields = {
        "status": JobStatus.QUEUED.value,
        "texts": texts_json,
        "slots": slots_json,
        "deadline": deadline,
        "created_at": time.time(),
        "owner": owner,
    }
    message_bytes = 4 * math.ceil(escaped_length / 3)
    size = int(ALLOCATOR_SLACK * (len(texts_json.encode("utf-8")) + len(slots_json) + message_bytes)) + JOB_OVERHEAD_BYTES
    return NewJob(job_id, missing, slots, fields, size)


def merged_predictions(slots: Sequence, results: Sequence | dict, texts: Sequence[str] = ()) -> list[list]:
    """The request's predictions in order: known ones from ``slots``, the rest from the job's ``results``.

    ``results`` is a list in the order of the job's texts; a dict by text (with the job's ``texts``)
    is what workers of the previous release write, until none runs any more.
    """
    by_index = results if isinstance(results, list) else [results[text] for text in texts]
    return [slot if isinstance(slot, list) else by_index[slot] for slot in slots]


class JobRecords:
    """Enqueue, read, start, finish, fail and abandon job records, and wait for them to end."""

    def __init__(self, client: redis.Redis, ttl_s: int):
        self.client = client
        self.ttl_s = ttl_s
        self._enqueue = client.register_script(_ENQUEUE_SCRIPT)
        self._mark_running = client.register_script(_MARK_RUNNING_SCRIPT)
        self._end = client.register_script(_END_SCRIPT)
        self._abandon = client.register_script(_ABANDON_SCRIPT)

    def enqueue(self, job: NewJob, max_texts: int, max_bytes: int) -> Refusal | None:
        """Reserve the job's new texts and bytes and, only when granted, store its record: one round trip.

        The Refusal, with nothing written, when the queue has no room.
        """
        new_texts = len(job.texts)
        args = [job.job_id, new_texts, max_texts, job.bytes, max_bytes, self.ttl_s]
        args += [item for pair in job.fields.items() for item in pair]
        code = int(self._enqueue(keys=[*BUDGET_KEYS, job_key(job.job_id)], args=args))
        return refusal(code, new_texts, job.bytes, max_texts, max_bytes)

    def abandon(self, job_id: str) -> None:
        """Forget a job that will never run (its publish failed): its record goes, its budgets come back."""
        self._abandon(keys=[*BUDGET_KEYS, job_key(job_id)], args=[job_id])

    def get(self, job_id: str) -> JobRecord | None:
        """The job record, or None when unknown or expired."""
        fields = self.client.hgetall(job_key(job_id))
        if not fields:
            return None
        results = json.loads(fields["results"]) if "results" in fields else None
        if "slots" in fields:
            slots = json.loads(fields["slots"])
            if results is None:
                predictions = [slot if isinstance(slot, list) else None for slot in slots]
            else:
                predictions = merged_predictions(slots, results, json.loads(fields.get("texts", "[]")))
        else:  # written by a web process of the previous release (every text, results by text), until none runs
            known, texts = json.loads(fields["predictions"]), json.loads(fields["texts"])
            predictions = [prediction or (results or {}).get(text) for prediction, text in zip(known, texts)]
        return JobRecord(
            job_id=job_id,
            status=JobStatus(fields["status"]),
            predictions=predictions,
            deadline=float(fields["deadline"]),
            error=JobError(fields["error"]) if fields.get("error") else None,
            owner=fields.get("owner", ANONYMOUS),
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

    def finish(self, job_id: str, results: list | dict, pipeline: redis.client.Pipeline | None = None) -> None:
        """Mark the job done with the predictions of the texts it computed, and hand them to any waiter."""
        self._end_job(job_id, JobStatus.DONE, "", json.dumps(results), pipeline)

    def fail(self, job_id: str, reason: JobError, pipeline: redis.client.Pipeline | None = None) -> None:
        """Mark the job failed with its reason and wake any waiter."""
        self._end_job(job_id, JobStatus.FAILED, JobError(reason).value, "", pipeline)

    def _end_job(self, job_id: str, final_status: JobStatus, error_code: str, results: str, pipeline=None) -> None:
        run_script(
            self._end,
            [*BUDGET_KEYS, job_key(job_id), done_key(job_id)],
            [job_id, final_status.value, error_code, results, self.ttl_s, JobStatus.DONE.value, JobStatus.FAILED.value],
            pipeline or self.client,
        )

    def wait_for_results(self, blocking: redis.Redis, job_id: str, timeout_s: float) -> list | dict | None:
        """Block (on a client whose read timeout exceeds ``timeout_s``) until the job ends.

        The computed texts' predictions when it ended done; None when it failed or the time ran out.
        """
        if timeout_s <= 0:
            return None
        # BLPOP takes a float timeout; 0 would mean forever.
        popped = blocking.blpop([done_key(job_id)], timeout=max(timeout_s, 0.001))
        return json.loads(popped[1]) if popped and popped[1] else None
