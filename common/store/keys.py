"""Every Redis key the service uses, in one place (``sentiment:`` prefix).

/predict jobs (JOB_TTL_S after they are created):
- ``job:<uuid4>``              job record (hash: status, texts, slots, results, deadline, error, ...).
- ``job:<uuid4>:done``         list pushed once when the job ends, so the web side can BLPOP instead of polling.
- ``queued`` / ``queued_texts``              texts waiting for a batch, per job and in total (MAX_QUEUED_TEXTS).
- ``queued_bytes_by_job`` / ``queued_bytes``  Redis bytes of jobs not yet ended, per job and in total (MAX_QUEUED_BYTES).

Bulk jobs (JOB_TTL_S after their last activity):
- ``bulk:<uuid4>``             job record (hash); ``:texts`` list, ``:results`` and ``:settled`` hashes (common.store.bulk).
- ``bulk_queued_texts_by_job`` / ``bulk_queued_texts``  texts of bulk jobs not yet settled, per job and in
                               total (MAX_QUEUED_BULK_TEXTS).
- ``bulk_queued_bytes_by_job`` / ``bulk_queued_bytes``  Redis bytes of bulk jobs' texts, per job and in total
                               (MAX_QUEUED_BULK_BYTES), given back when a job's texts are deleted.
- ``bulk_queued_texts_by_owner``  texts of bulk jobs not yet settled, per owner (an API key's own cap).
- ``bulk_owner_by_job``        the owner of each bulk job that still holds a budget.
- ``bulk_active``              sorted set: bulk job id -> when it must have ended (BULK_JOB_DEADLINE_S).
- ``bulk_jobs:<owner>``        sorted set: an owner's bulk job ids by creation time, for GET /jobs.
- ``bulk_owners``              set of owners that have a bulk queue of their own, for the workers to consume.
- ``webhooks_due``             sorted set: bulk job id -> when its next webhook attempt is due (common.store.webhooks).

Shared:
- ``cache:<model>:<sha256>``   one text's prediction, expires after CACHE_TTL_S (in CACHE_REDIS_URL).
- ``idempotency:<route>:<owner>:<sha256>``  an owner's Idempotency-Key claim: its body hash and job (JOB_TTL_S).
- ``model``                    identity (name@weights-hash) of the model the workers serve; part of every cache key.
- ``workers``                  sorted set: worker name -> last heartbeat time, for /ready.
- ``batches``                  the most recent batch records (texts, tokens, seconds), for tests and diagnostics.
- ``auth_failures:<address>``  failed X-API-Key attempts of one client address in the current minute.
- ``replication_fence``        a counter each new job's POST bumps, then WAITs on, so its writes reach a replica.
"""

import hashlib

PREFIX = "sentiment:"
MODEL_KEY = PREFIX + "model"
WORKERS_KEY = PREFIX + "workers"
QUEUED_JOBS_KEY = PREFIX + "queued"
QUEUED_TEXTS_KEY = PREFIX + "queued_texts"
QUEUED_JOB_BYTES_KEY = PREFIX + "queued_bytes_by_job"
QUEUED_BYTES_KEY = PREFIX + "queued_bytes"
BATCHES_KEY = PREFIX + "batches"
REPLICATION_FENCE_KEY = PREFIX + "replication_fence"
BULK_QUEUED_TEXTS_KEY = PREFIX + "bulk_queued_texts"
BULK_QUEUED_JOB_TEXTS_KEY = PREFIX + "bulk_queued_texts_by_job"
BULK_QUEUED_JOB_BYTES_KEY = PREFIX + "bulk_queued_bytes_by_job"
BULK_QUEUED_BYTES_KEY = PREFIX + "bulk_queued_bytes"
BULK_QUEUED_OWNER_TEXTS_KEY = PREFIX + "bulk_queued_texts_by_owner"
BULK_OWNER_BY_JOB_KEY = PREFIX + "bulk_owner_by_job"
BULK_ACTIVE_KEY = PREFIX + "bulk_active"
BULK_OWNERS_KEY = PREFIX + "bulk_owners"
WEBHOOKS_DUE_KEY = PREFIX + "webhooks_due"


JOB_KEY_PREFIX = PREFIX + "job:"


def job_key(job_id: str) -> str:
    return f"{JOB_KEY_PREFIX}{job_id}"


def done_key(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}:done"


def cache_key(model_identity: str, text: str) -> str:
    return f"{PREFIX}cache:{model_identity}:{hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()}"


def bulk_key(job_id: str) -> str:
    return f"{PREFIX}bulk:{job_id}"


def bulk_job_keys(job_id: str) -> list[str]:
    """A bulk job's record, texts, results and settled chunks."""
    base = bulk_key(job_id)
    return [base, f"{base}:texts", f"{base}:results", f"{base}:settled"]


def owner_bulk_jobs_key(owner: str) -> str:
    return f"{PREFIX}bulk_jobs:{owner}"


def idempotency_key(route: str, owner: str, key: str) -> str:
    """An owner's Idempotency-Key claim: the same key from two owners is two claims."""
    return f"{PREFIX}idempotency:{route}:{owner}:{hashlib.sha256(key.encode()).hexdigest()}"


def auth_failures_key(address: str) -> str:
    return f"{PREFIX}auth_failures:{address}"
