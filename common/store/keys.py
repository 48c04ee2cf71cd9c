"""Every Redis key the service uses, in one place (``sentiment:`` prefix).

- ``job:<uuid4>``             job record (hash: status, texts, predictions, deadline, error), expires after JOB_TTL_S.
- ``job:<uuid4>:done``        list pushed once when the job ends, so the web side can BLPOP instead of polling.
- ``cache:<model>:<sha256>``  one text's prediction, expires after CACHE_TTL_S (in CACHE_REDIS_URL).
- ``model``                   identity (name@weights-hash) of the model the workers serve; part of every cache key.
- ``workers``                 sorted set: worker name -> last heartbeat time, for /ready.
- ``queued`` / ``queued_texts``  texts waiting for a batch, per job and in total, for backpressure.
- ``batches``                 the most recent batch records (texts, tokens, seconds), for tests and diagnostics.
"""

import hashlib

PREFIX = "sentiment:"
MODEL_KEY = PREFIX + "model"
WORKERS_KEY = PREFIX + "workers"
QUEUED_JOBS_KEY = PREFIX + "queued"
QUEUED_TEXTS_KEY = PREFIX + "queued_texts"
BATCHES_KEY = PREFIX + "batches"


def job_key(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}"


def done_key(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}:done"


def cache_key(model_identity: str, text: str) -> str:
    return f"{PREFIX}cache:{model_identity}:{hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()}"
