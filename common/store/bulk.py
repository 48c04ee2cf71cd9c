"""Bulk jobs in Redis: up to MAX_JOB_TEXTS texts, scored in chunks, followed, paged, cancelled, deleted.

Keys (``sentiment:`` prefix), all expiring JOB_TTL_S after the job's last activity:

- ``bulk:<id>``          hash: status, total, chunks, chunk_texts, done, failed, created_at,
                         finished_at, metadata (JSON), callback_url, webhook_delivered_at.
- ``bulk:<id>:texts``    list of the job's texts; deleted once every chunk is settled, or on cancel.
- ``bulk:<id>:results``  hash: chunk index -> JSON list of that chunk's predictions (null: failed).
- ``bulk:<id>:settled``  hash: chunk index -> done | failed | skipped. A chunk settles once, so a
                         redelivered chunk can neither count twice in progress nor release its
                         queue budget twice.
- ``bulk_queued_texts``  texts of all bulk jobs not yet settled, for MAX_QUEUED_BULK_TEXTS.

Every change of state is one Lua script, so concurrent workers and the web side never see half of one.
"""

import json
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

import redis

from common.store.keys import PREFIX

BULK_QUEUED_TEXTS_KEY = PREFIX + "bulk_queued_texts"
ACTIVE = ("queued", "running")
FINAL = ("done", "failed", "cancelled")
# Texts per RPUSH when a job is stored: a few MiB per round trip at most.
TEXTS_PER_PUSH = 2000


def bulk_key(job_id: str) -> str:
    return f"{PREFIX}bulk:{job_id}"


def job_keys(job_id: str) -> list[str]:
    base = bulk_key(job_id)
    return [base, f"{base}:texts", f"{base}:results", f"{base}:settled"]


def timestamp(seconds: float) -> str:
    """RFC 3339, UTC, to the second."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# KEYS: counter. ARGV: texts, limit. 1 if the texts fit under the limit (and are counted), else 0.
RESERVE = """
local queued = tonumber(redis.call('GET', KEYS[1]) or '0')
if queued + tonumber(ARGV[1]) > tonumber(ARGV[2]) then return 0 end
redis.call('INCRBY', KEYS[1], ARGV[1])
return 1
"""

# KEYS: job, texts, results, settled. ARGV: chunk.
# The job's status once this chunk may start (queued becomes running), or 'settled' for a chunk
# already settled, or false for a job that is gone.
START_CHUNK = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return false end
if redis.call('HEXISTS', KEYS[4], ARGV[1]) == 1 then return 'settled' end
if status == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'running')
  status = 'running'
end
return status
"""

# KEYS: job, texts, results, settled, counter.
# ARGV: chunk, outcome (done|failed|skipped), results JSON, chunk texts, texts done, texts failed, ttl, now.
# 0: already settled (a redelivery); 1: settled; 2: settled, and it ended the job.
SETTLE_CHUNK = """
if redis.call('HSETNX', KEYS[4], ARGV[1], ARGV[2]) == 0 then return 0 end
if redis.call('DECRBY', KEYS[5], ARGV[4]) < 0 then redis.call('SET', KEYS[5], 0) end
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  redis.call('DEL', KEYS[4])
  return 1
end
if ARGV[2] ~= 'skipped' and status ~= 'deleted' then
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
  redis.call('HINCRBY', KEYS[1], 'done', ARGV[5])
  redis.call('HINCRBY', KEYS[1], 'failed', ARGV[6])
end
local ended = 0
if redis.call('HLEN', KEYS[4]) >= tonumber(redis.call('HGET', KEYS[1], 'chunks')) then
  redis.call('DEL', KEYS[2])
  if status == 'queued' or status == 'running' then
    local final = 'done'
    if tonumber(redis.call('HGET', KEYS[1], 'failed')) > 0 then final = 'failed' end
    redis.call('HSET', KEYS[1], 'status', final, 'finished_at', ARGV[8])
    ended = 1
  end
end
for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ARGV[7]) end
return 1 + ended
"""

# KEYS: job, texts, results, settled. ARGV: now, delete (0|1).
# -1: no such job; 0: already ended (cancel only); 1: cancelled (or deleted) now; 2: deleted, had ended.
CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'deleted' then return -1 end
local active = status == 'queued' or status == 'running'
if ARGV[2] == '1' then
  redis.call('HSET', KEYS[1], 'status', 'deleted')
  redis.call('DEL', KEYS[2], KEYS[3])
  if active then return 1 end
  return 2
end
if not active then return 0 end
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[1])
redis.call('DEL', KEYS[2])
return 1
"""


# KEYS: job, texts, results, settled, counter. ARGV: chunks, chunk texts, total.
# Settles every chunk not yet settled as skipped and gives their texts back to the budget: for a
# job whose chunks could not all be published. Chunks already published then settle as redeliveries.
ABANDON = """
local released = 0
for chunk = 0, tonumber(ARGV[1]) - 1 do
  if redis.call('HSETNX', KEYS[4], chunk, 'skipped') == 1 then
    released = released + math.min(tonumber(ARGV[2]), tonumber(ARGV[3]) - chunk * tonumber(ARGV[2]))
  end
end
if redis.call('DECRBY', KEYS[5], released) < 0 then redis.call('SET', KEYS[5], 0) end
redis.call('HSET', KEYS[1], 'status', 'deleted')
redis.call('DEL', KEYS[2], KEYS[3])
return released
"""


class BulkJobs:
    """Bulk job records, texts and results in the main Redis."""

    def __init__(self, client: redis.Redis, ttl_s: int):
        self.client = client
        self.ttl_s = ttl_s
        self._reserve = client.register_script(RESERVE)
        self._start_chunk = client.register_script(START_CHUNK)
        self._settle_chunk = client.register_script(SETTLE_CHUNK)
        self._cancel = client.register_script(CANCEL)
        self._abandon = client.register_script(ABANDON)

    def create(
        self,
        job_id: str,
        texts: Sequence[str],
        chunk_texts: int,
        max_queued_texts: int,
        metadata: dict | None = None,
        callback_url: str | None = None,
    ) -> bool:
        """Store a queued job and count its texts in the bulk budget; False (nothing stored) when over it."""
        if not self._reserve(keys=[BULK_QUEUED_TEXTS_KEY], args=[len(texts), max_queued_texts]):
            return False
        job, texts_key, _, _ = job_keys(job_id)
        try:
            pipe = self.client.pipeline(transaction=False)
            for start in range(0, len(texts), TEXTS_PER_PUSH):
                pipe.rpush(texts_key, *texts[start : start + TEXTS_PER_PUSH])
            pipe.expire(texts_key, self.ttl_s)
            pipe.hset(
                job,
                mapping={
                    "status": "queued",
                    "total": len(texts),
                    "chunks": -(-len(texts) // chunk_texts),
                    "chunk_texts": chunk_texts,
                    "done": 0,
                    "failed": 0,
                    "created_at": timestamp(time.time()),
                    "finished_at": "",
                    "metadata": json.dumps(metadata or {}),
                    "callback_url": callback_url or "",
                },
            )
            pipe.expire(job, self.ttl_s)
            pipe.execute()
        except redis.RedisError:
            self.client.decrby(BULK_QUEUED_TEXTS_KEY, len(texts))
            raise
        return True

    def get(self, job_id: str) -> dict | None:
        """The job's record, or None when it is unknown, expired or deleted."""
        record = self.client.hgetall(bulk_key(job_id))
        if not record or record["status"] == "deleted":
            return None
        return record

    def status(self, job_id: str) -> str | None:
        """The job's status, 'deleted' included; None when unknown or expired."""
        return self.client.hget(bulk_key(job_id), "status")

    def start_chunk(self, job_id: str, chunk: int) -> str | None:
        """The job's status as the chunk starts ('settled' if it already was); None if the job is gone."""
        return self._start_chunk(keys=job_keys(job_id), args=[chunk])

    def chunk_texts(self, job_id: str, start: int, stop: int) -> list[str]:
        """The texts of one chunk: empty if the job was cancelled or has ended meanwhile."""
        return self.client.lrange(job_keys(job_id)[1], start, stop - 1)

    def settle_chunk(self, job_id: str, chunk: int, outcome: str, texts: int, predictions: Sequence | None = None) -> int:
        """Record a chunk's outcome once: 0 already settled, 1 settled, 2 settled and the job ended."""
        values = list(predictions) if predictions is not None else [None] * texts
        done = sum(prediction is not None for prediction in values)
        failed = texts - done if outcome != "skipped" else 0
        return self._settle_chunk(
            keys=[*job_keys(job_id), BULK_QUEUED_TEXTS_KEY],
            args=[chunk, outcome, json.dumps(values), texts, done, failed, self.ttl_s, timestamp(time.time())],
        )

    def cancel(self, job_id: str) -> int:
        """-1 unknown, 0 already ended, 1 cancelled now."""
        return self._cancel(keys=job_keys(job_id), args=[timestamp(time.time()), 0])

    def delete(self, job_id: str) -> int:
        """-1 unknown; 1 deleted while it ran (so also cancelled); 2 deleted after it ended."""
        return self._cancel(keys=job_keys(job_id), args=[timestamp(time.time()), 1])

    def abandon(self, job_id: str) -> None:
        """Give up a job whose chunks could not all be published: it disappears, its budget is released."""
        record = self.client.hgetall(bulk_key(job_id))
        if record:
            self._abandon(
                keys=[*job_keys(job_id), BULK_QUEUED_TEXTS_KEY], args=[record["chunks"], record["chunk_texts"], record["total"]]
            )

    def results(self, record: dict, job_id: str, offset: int, limit: int) -> list:
        """Predictions of texts offset..offset+limit-1 in input order; None where not scored (yet)."""
        stop = min(int(record["total"]), offset + limit)
        if stop <= offset:
            return []
        size = int(record["chunk_texts"])
        first, last = offset // size, (stop - 1) // size
        chunks = self.client.hmget(job_keys(job_id)[2], list(range(first, last + 1)))
        predictions = []
        for chunk, value in zip(range(first, last + 1), chunks):
            start, end = chunk * size, min(int(record["total"]), (chunk + 1) * size)
            predictions.extend(json.loads(value) if value else [None] * (end - start))
        return predictions[offset - first * size : stop - first * size]

    def iter_results(self, record: dict, job_id: str, chunks_per_read: int = 16) -> Iterator[tuple[int, list | None]]:
        """Every (index, prediction) in order, reading ``chunks_per_read`` chunks per round trip."""
        size, total = int(record["chunk_texts"]), int(record["total"])
        step = size * chunks_per_read
        for offset in range(0, total, step):
            yield from enumerate(self.results(record, job_id, offset, step), start=offset)

    def mark_webhook_delivered(self, job_id: str) -> None:
        self.client.hset(bulk_key(job_id), "webhook_delivered_at", timestamp(time.time()))

    def queued_texts(self) -> int:
        """Texts of bulk jobs not yet settled (what MAX_QUEUED_BULK_TEXTS bounds)."""
        return int(self.client.get(BULK_QUEUED_TEXTS_KEY) or 0)


def status_view(job_id: str, record: dict) -> dict:
    """A bulk job's public status: what GET /jobs/<id> answers and a webhook carries."""
    return {
        "job_id": job_id,
        "status": record["status"],
        "progress": {"total": int(record["total"]), "done": int(record["done"]), "failed": int(record["failed"])},
        "metadata": json.loads(record["metadata"]),
        "created_at": record["created_at"],
        "finished_at": record["finished_at"] or None,
    }
