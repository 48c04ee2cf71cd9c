"""Redis layout shared by web and workers: job records, the prediction cache, heartbeats and batch records.

Keys (``sentiment:`` prefix):
- ``job:<uuid4>``           job record (hash: status, texts, predictions, deadline, error), expires after JOB_TTL_S.
- ``job:<uuid4>:done``      list pushed once when the job ends, so the web side can BLPOP instead of polling.
- ``cache:<model>:<sha256>`` one text's prediction, expires after CACHE_TTL_S (in CACHE_REDIS_URL).
- ``model``                 identity (name@weights-hash) of the model the workers serve; part of every cache key.
- ``workers``               sorted set: worker name -> last heartbeat time, for /ready.
- ``queued`` / ``queued_texts``  texts waiting for a batch, per job and in total, for backpressure.
- ``batches``               the most recent batch records (texts, tokens, seconds), for tests and diagnostics.
"""

import hashlib
import json
import time
import uuid
from collections.abc import Iterable, Sequence

import redis

PREFIX = "sentiment:"
MODEL_KEY = PREFIX + "model"
WORKERS_KEY = PREFIX + "workers"
QUEUED_JOBS_KEY = PREFIX + "queued"
QUEUED_TEXTS_KEY = PREFIX + "queued_texts"
BATCHES_KEY = PREFIX + "batches"
BATCH_HISTORY = 1000
HEARTBEAT_INTERVAL_S = 5
HEARTBEAT_STALE_S = 20

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"

# Reserve room for a job's texts only while the queue stays under its bound; -1 means full.
_RESERVE_SCRIPT = """
local queued = tonumber(redis.call('GET', KEYS[2]) or '0')
local texts = tonumber(ARGV[2])
if queued + texts > tonumber(ARGV[3]) then return -1 end
if redis.call('HSETNX', KEYS[1], ARGV[1], texts) == 1 then
  return redis.call('INCRBY', KEYS[2], texts)
end
return queued
"""

# Release a job's reservation once; redelivered or repeated releases change nothing.
_RELEASE_SCRIPT = """
local texts = redis.call('HGET', KEYS[1], ARGV[1])
if not texts then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
local left = redis.call('DECRBY', KEYS[2], texts)
if left < 0 then redis.call('SET', KEYS[2], 0) end
return tonumber(texts)
"""


# Change a live job's status (only from ARGV[1] when given), record an error, and when ARGV[4]
# is a TTL push to the job's done list so a waiting request wakes. Never recreates an expired record.
_SET_STATUS_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'status') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[3]) end
if tonumber(ARGV[4]) > 0 then
  redis.call('RPUSH', KEYS[2], 1)
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
return 1
"""


def new_job_id() -> str:
    """An unguessable job id."""
    return str(uuid.uuid4())


def is_job_id(value: str) -> bool:
    """Whether ``value`` is a canonical uuid4 string, so junk never reaches Redis."""
    try:
        return str(uuid.UUID(value, version=4)) == value
    except ValueError:
        return False


def job_key(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}"


def done_key(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}:done"


def cache_key(model_identity: str, text: str) -> str:
    return f"{PREFIX}cache:{model_identity}:{hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()}"


def connect(url: str, socket_timeout: float | None = 5.0) -> redis.Redis:
    """A Redis client that fails fast when the server is away, rather than hanging a request."""
    return redis.Redis.from_url(
        url, socket_connect_timeout=2.0, socket_timeout=socket_timeout, health_check_interval=30, decode_responses=True
    )


class Store:
    """Job records, cache and bookkeeping, over a main Redis and a (possibly separate) cache Redis."""

    def __init__(self, main: redis.Redis, cache: redis.Redis, job_ttl_s: int, cache_ttl_s: int):
        self.main = main
        self.cache = cache
        self.job_ttl_s = job_ttl_s
        self.cache_ttl_s = cache_ttl_s
        self._reserve = main.register_script(_RESERVE_SCRIPT)
        self._release = main.register_script(_RELEASE_SCRIPT)
        self._set_status = main.register_script(_SET_STATUS_SCRIPT)

    # Cache -----------------------------------------------------------------

    def cached_predictions(self, model_identity: str, texts: Sequence[str]) -> list[list | None]:
        """Cached prediction of each text, or None where it is not cached."""
        if not texts:
            return []
        values = self.cache.mget([cache_key(model_identity, text) for text in texts])
        return [json.loads(value) if value is not None else None for value in values]

    def cache_predictions(self, model_identity: str, predictions: dict[str, list]) -> None:
        """Cache each text's prediction with the cache TTL."""
        pipe = self.cache.pipeline(transaction=False)
        for text, prediction in predictions.items():
            pipe.set(cache_key(model_identity, text), json.dumps(prediction), ex=self.cache_ttl_s)
        pipe.execute()

    # Jobs ------------------------------------------------------------------
    # A job record is a hash, so status changes are single-field writes that keep the key's TTL.

    def create_job(self, job_id: str, texts: Sequence[str], known: Sequence[list | None], deadline: float) -> None:
        """Store a queued job: the request's texts in order, with the predictions already known."""
        pipe = self.main.pipeline(transaction=True)
        pipe.hset(
            job_key(job_id),
            mapping={
                "status": QUEUED,
                "texts": json.dumps(list(texts)),
                "predictions": json.dumps(list(known)),
                "deadline": deadline,
                "created_at": time.time(),
            },
        )
        pipe.expire(job_key(job_id), self.job_ttl_s)
        pipe.execute()

    def get_job(self, job_id: str) -> dict | None:
        """The job record, or None when unknown or expired."""
        fields = self.main.hgetall(job_key(job_id))
        if not fields:
            return None
        return {
            "job_id": job_id,
            "status": fields["status"],
            "texts": json.loads(fields["texts"]),
            "predictions": json.loads(fields["predictions"]),
            "deadline": float(fields["deadline"]),
            "error": fields.get("error"),
        }

    def job_status(self, job_id: str) -> str | None:
        """Just the status, without reading the texts."""
        return self.main.hget(job_key(job_id), "status")

    def start_jobs(self, job_ids: Sequence[str]) -> None:
        """Jobs whose batch starts: no longer queued for backpressure, and running. One round trip."""
        pipe = self.main.pipeline(transaction=False)
        for job_id in job_ids:
            self._release(keys=[QUEUED_JOBS_KEY, QUEUED_TEXTS_KEY], args=[job_id], client=pipe)
            self._set_status(keys=[job_key(job_id), done_key(job_id)], args=[QUEUED, RUNNING, "", 0], client=pipe)
        pipe.execute()

    def finish_job(self, job_id: str, results: dict[str, list]) -> None:
        """Fill every missing prediction from ``results``, mark the job done and wake any waiter."""
        texts, known = self.main.hmget(job_key(job_id), "texts", "predictions")
        if texts is None:
            return  # expired meanwhile: nobody can read it any more
        predictions = [k if k is not None else results[text] for text, k in zip(json.loads(texts), json.loads(known))]
        self.main.hset(job_key(job_id), "predictions", json.dumps(predictions))
        self._set_status(keys=[job_key(job_id), done_key(job_id)], args=["", DONE, "", self.job_ttl_s])

    def fail_job(self, job_id: str, error: str) -> None:
        """Mark the job failed with an error code and wake any waiter."""
        self._set_status(keys=[job_key(job_id), done_key(job_id)], args=["", FAILED, error, self.job_ttl_s])

    def wait_for_job(self, blocking: redis.Redis, job_id: str, timeout_s: float) -> dict | None:
        """Block until the job ends or ``timeout_s`` passes; return the latest record."""
        if timeout_s > 0:
            # BLPOP takes a float timeout; 0 would mean forever.
            blocking.blpop([done_key(job_id)], timeout=max(timeout_s, 0.001))
        return self.get_job(job_id)

    # Backpressure ------------------------------------------------------------

    def reserve_queue(self, job_id: str, texts: int, max_queued_texts: int) -> bool:
        """Count a job's texts as queued unless that would pass the bound."""
        return int(self._reserve(keys=[QUEUED_JOBS_KEY, QUEUED_TEXTS_KEY], args=[job_id, texts, max_queued_texts])) >= 0

    def release_queue(self, job_id: str) -> None:
        """Stop counting a job's texts as queued (its batch started, or it never got enqueued)."""
        self._release(keys=[QUEUED_JOBS_KEY, QUEUED_TEXTS_KEY], args=[job_id])

    def queued_texts(self) -> int:
        """Texts waiting for a batch."""
        return int(self.main.get(QUEUED_TEXTS_KEY) or 0)

    def queue_length(self, queue_name: str) -> int:
        """Jobs waiting in the Celery queue (a Redis list), not counting ones a worker has reserved."""
        return int(self.main.llen(queue_name))

    # Workers -----------------------------------------------------------------

    def heartbeat(self, worker_name: str, model_identity: str) -> None:
        """Record that a worker is alive and consuming, and which model it serves."""
        now = time.time()
        pipe = self.main.pipeline(transaction=False)
        pipe.zadd(WORKERS_KEY, {worker_name: now})
        pipe.zremrangebyscore(WORKERS_KEY, "-inf", now - 10 * HEARTBEAT_STALE_S)
        pipe.set(MODEL_KEY, model_identity)
        pipe.execute()

    def remove_worker(self, worker_name: str) -> None:
        """Forget a worker that is shutting down."""
        self.main.zrem(WORKERS_KEY, worker_name)

    def live_workers(self) -> int:
        """Workers whose heartbeat is recent."""
        return int(self.main.zcount(WORKERS_KEY, time.time() - HEARTBEAT_STALE_S, "+inf"))

    def model_identity(self) -> str | None:
        """Identity of the served model, or None before any worker has started."""
        return self.main.get(MODEL_KEY)

    def record_batches(self, batches: Iterable[dict]) -> None:
        """Append batch records, keeping the most recent ones."""
        encoded = [json.dumps(batch) for batch in batches]
        if not encoded:
            return
        pipe = self.main.pipeline(transaction=False)
        pipe.rpush(BATCHES_KEY, *encoded)
        pipe.ltrim(BATCHES_KEY, -BATCH_HISTORY, -1)
        pipe.execute()

    def recent_batches(self) -> list[dict]:
        """Recorded batches, oldest first."""
        return [json.loads(value) for value in self.main.lrange(BATCHES_KEY, 0, -1)]


def store_from_settings(settings) -> Store:
    """Build the Store for these settings."""
    main = connect(settings.redis_url)
    cache = main if settings.cache_url == settings.redis_url else connect(settings.cache_url)
    return Store(main, cache, settings.job_ttl_s, settings.cache_ttl_s)
