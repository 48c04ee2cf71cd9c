"""Bulk jobs in Redis: up to MAX_JOB_TEXTS texts, scored in chunks, followed, paged, cancelled, deleted.

Keys (``common.store.keys``), all expiring JOB_TTL_S after the job's last activity:

- ``bulk:<id>``          hash: status, total, chunks, chunk_texts, done, failed, created_at,
                         finished_at, metadata (JSON), callback_url, webhook_delivered_at.
- ``bulk:<id>:texts``    list of the job's texts; deleted once every chunk is settled, or on cancel.
- ``bulk:<id>:results``  hash: chunk index -> JSON list of that chunk's predictions (null: failed).
- ``bulk:<id>:settled``  hash: chunk index -> done | failed | skipped. A chunk settles once, so a
                         redelivered chunk can neither count twice in progress nor release its
                         budget twice.

A job's budgets (MAX_QUEUED_BULK_TEXTS, MAX_QUEUED_BULK_BYTES) are kept per job, in hashes beside
their totals: its texts come back chunk by chunk as they settle, its bytes when its texts are
deleted (it ended, was cancelled or deleted, or could not be stored). Storing a job takes several
round trips (a 32 MiB job is many pushes), so the reservation first writes a ``storing`` record
that expires within STORING_TTL_S; a submission that fails, or whose web process dies, leaves
nothing the API shows, and ``reclaim_orphans`` gives back what such a job reserved.

Every change of state is one Lua script, so concurrent workers and the web side never see half of one.
"""

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum

import redis

from common.jobs import ANONYMOUS, BulkStatus
from common.store.backpressure import Refusal, scan_hash_keys
from common.store.keys import (
    BULK_ACTIVE_KEY,
    BULK_OWNER_BY_JOB_KEY,
    BULK_OWNERS_KEY,
    BULK_QUEUED_BYTES_KEY,
    BULK_QUEUED_JOB_BYTES_KEY,
    BULK_QUEUED_JOB_TEXTS_KEY,
    BULK_QUEUED_OWNER_TEXTS_KEY,
    BULK_QUEUED_TEXTS_KEY,
    WEBHOOKS_DUE_KEY,
    bulk_job_keys,
    bulk_key,
    owner_bulk_jobs_key,
)
from common.store.memory import ALLOCATOR_SLACK
from common.store.scripts import ALLOW_OOM

ACTIVE_STATUSES = tuple(status.value for status in BulkStatus if not status.is_final)
FINAL_STATUSES = tuple(status.value for status in BulkStatus if status.is_final)
# Record statuses the API never shows: a job still being stored, and a deleted one (kept as a
# tombstone until it expires, so its redelivered chunks and retried submissions know it went).
STORING = "storing"
DELETED = "deleted"
# How long a submission may take to store its texts before its job counts as abandoned.
STORING_TTL_S = 300
# Most texts, and most bytes of text, per RPUSH round trip when a job is stored.
TEXTS_PER_PUSH = 2000
BYTES_PER_PUSH = 4 * 2**20
# Redis's cost per text beyond its UTF-8 bytes while its job is queued: its list entry, its share of
# the chunk messages and of the results it will leave (about 90 bytes of JSON). Per job: the record,
# hashes and budget entries (docs/deployment.md, "Sizing Redis").
TEXT_OVERHEAD_BYTES = 128
JOB_OVERHEAD_BYTES = 4096

# Job ids read from an owner's index per round trip when listing.
LIST_READ = 100
# The budgets' keys, in the order the scripts below take them after a job's own four keys.
BUDGET_KEYS = [BULK_QUEUED_JOB_TEXTS_KEY, BULK_QUEUED_TEXTS_KEY, BULK_QUEUED_JOB_BYTES_KEY, BULK_QUEUED_BYTES_KEY]


def chunk_count(total: int, chunk_texts: int) -> int:
    """Chunks of a job of ``total`` texts."""
    return -(-total // chunk_texts)


def chunk_range(chunk: int, total: int, chunk_texts: int) -> tuple[int, int]:
    """(start, stop) of chunk number ``chunk`` of a job of ``total`` texts."""
    start = chunk * chunk_texts
    return start, min(total, start + chunk_texts)


def chunk_bounds(total: int, chunk_texts: int) -> list[tuple[int, int]]:
    """(start, stop) of each chunk of a job of ``total`` texts, in order."""
    return [chunk_range(chunk, total, chunk_texts) for chunk in range(chunk_count(total, chunk_texts))]


def timestamp(seconds: float) -> str:
    """RFC 3339, UTC, to the second."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def job_bytes(texts: Sequence[bytes]) -> int:
    """The Redis bytes a job of ``texts`` (UTF-8) is charged while they are queued."""
    return int(ALLOCATOR_SLACK * sum(map(len, texts))) + len(texts) * TEXT_OVERHEAD_BYTES + JOB_OVERHEAD_BYTES


class ChunkSettlement(IntEnum):
    """What settling a chunk did."""

    ALREADY_SETTLED = 0  # a redelivered chunk: nothing changed
    SETTLED = 1
    ENDED_JOB = 2  # it was the job's last chunk, and the job ended (done or failed)


# Shared by the scripts below. KEYS: the job's record, texts, results and settled chunks (1-4), then
# BUDGET_KEYS (5-8), webhooks due (9), texts by owner (10), owner by job (11), active jobs (12).
# give_back(per_job, total, job_id, most): take up to `most` (all, if nil) of a job's entry back from the total.
_JOB_LUA = """
local function give_back(per_job, total, job_id, most)
  local held = tonumber(redis.call('HGET', per_job, job_id))
  if not held then return 0 end
  local amount = held
  if most and most < held then amount = most end
  if amount >= held then redis.call('HDEL', per_job, job_id) else redis.call('HINCRBY', per_job, job_id, -amount) end
  if redis.call('DECRBY', total, amount) < 0 then redis.call('SET', total, 0) end
  return amount
end
local function give_back_texts(job_id, most)
  local amount = give_back(KEYS[5], KEYS[6], job_id, most)
  local owner = redis.call('HGET', KEYS[11], job_id)
  if amount > 0 and owner and redis.call('HINCRBY', KEYS[10], owner, -amount) <= 0 then redis.call('HDEL', KEYS[10], owner) end
  return amount
end
-- Everything an ended (or vanished) job still holds: its texts and its budgets.
local function release(job_id)
  redis.call('DEL', KEYS[2])
  give_back_texts(job_id)
  give_back(KEYS[7], KEYS[8], job_id)
  redis.call('HDEL', KEYS[11], job_id)
  redis.call('ZREM', KEYS[12], job_id)
end
-- An ended job's keys live JOB_TTL_S from its end; while it is queued or running they never expire.
local function expire_from_now(ttl)
  for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ttl) end
end
local function schedule_webhook(job_id, now)
  if redis.call('HGET', KEYS[1], 'callback_url') ~= '' then redis.call('ZADD', KEYS[9], 'NX', now, job_id) end
end
local function is_active(status)
  return status == 'queued' or status == 'running'
end
"""

# KEYS: the common ones, then the owner's job index (13) and the owners with bulk queues (14).
# ARGV: job id, texts, max texts, bytes, max bytes, storing TTL, owner, owner's cap on texts (0: none),
# now, oldest creation time the index keeps. 0: reserved and a `storing` record written; -1: over
# the texts budget, -2: over the bytes budget, -3: over the owner's cap (nothing written).
_RESERVE = (
    _JOB_LUA
    + """
local job_id, texts, bytes, owner, owner_cap = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[4]), ARGV[7], tonumber(ARGV[8])
if tonumber(redis.call('GET', KEYS[6]) or '0') + texts > tonumber(ARGV[3]) then return -1 end
if owner_cap > 0 and tonumber(redis.call('HGET', KEYS[10], owner) or '0') + texts > owner_cap then return -3 end
if tonumber(redis.call('GET', KEYS[8]) or '0') + bytes > tonumber(ARGV[5]) then return -2 end
redis.call('HSET', KEYS[5], job_id, texts)
redis.call('INCRBY', KEYS[6], texts)
redis.call('HINCRBY', KEYS[10], owner, texts)
redis.call('HSET', KEYS[11], job_id, owner)
redis.call('HSET', KEYS[7], job_id, bytes)
redis.call('INCRBY', KEYS[8], bytes)
redis.call('HSET', KEYS[1], 'status', 'storing', 'owner', owner)
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('ZADD', KEYS[13], ARGV[9], job_id)
redis.call('ZREMRANGEBYSCORE', KEYS[13], '-inf', ARGV[10])
redis.call('SADD', KEYS[14], owner)
return 0
"""
)

# ARGV: when it must have ended (Unix seconds), then field, value, ... of the record. Turns a
# `storing` job into a queued one that never expires while it runs; 0 if its record expired meanwhile.
_STORED = (
    _JOB_LUA
    + """
if redis.call('HGET', KEYS[1], 'status') ~= 'storing' then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('PERSIST', KEYS[1])
redis.call('PERSIST', KEYS[2])
redis.call('ZADD', KEYS[12], ARGV[1], ARGV[2])
return 1
"""
)

# ARGV: chunk. The job's status once this chunk may start (queued becomes running), or 'settled'
# for a chunk already settled, or false for a job that is gone.
_START_CHUNK = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return false end
if redis.call('HEXISTS', KEYS[4], ARGV[1]) == 1 then return 'settled' end
if status == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'running')
  status = 'running'
end
return status
"""

# ARGV: job id, chunk, outcome (done|failed|skipped), results JSON, chunk texts, texts done, texts failed, ttl,
# now (RFC 3339), now (Unix seconds).
# It records the outcome of admitted work, so it runs even when Redis is full.
_SETTLE_CHUNK = (
    ALLOW_OOM
    + _JOB_LUA
    + """
local job_id = ARGV[1]
if redis.call('HSETNX', KEYS[4], ARGV[2], ARGV[3]) == 0 then return 0 end
give_back_texts(job_id, tonumber(ARGV[5]))
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  redis.call('DEL', KEYS[4])
  return 1
end
if ARGV[3] ~= 'skipped' and status ~= 'deleted' then
  redis.call('HSET', KEYS[3], ARGV[2], ARGV[4])
  redis.call('HINCRBY', KEYS[1], 'done', ARGV[6])
  redis.call('HINCRBY', KEYS[1], 'failed', ARGV[7])
end
local ended = 0
if redis.call('HLEN', KEYS[4]) >= tonumber(redis.call('HGET', KEYS[1], 'chunks')) then
  if is_active(status) then
    local final = 'done'
    if tonumber(redis.call('HGET', KEYS[1], 'failed')) > 0 then final = 'failed' end
    redis.call('HSET', KEYS[1], 'status', final, 'finished_at', ARGV[9])
    schedule_webhook(job_id, ARGV[10])
    ended = 1
  end
  release(job_id)
  expire_from_now(ARGV[8])
elseif not is_active(status) then
  expire_from_now(ARGV[8])  -- a late chunk of an ended job: what it wrote expires with the rest
end
return 1 + ended
"""
)

# ARGV: job id, now (RFC 3339), delete (0|1), now (Unix seconds), ttl, owner. Its chunks not settled
# yet give their texts back at once; they settle as skipped when their messages come.
# -1: no such job (or another owner's); 0: already ended (cancel only); 1: cancelled (or deleted) now;
# 2: deleted, had ended.
_CANCEL = (
    ALLOW_OOM
    + _JOB_LUA
    + """
local job_id = ARGV[1]
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'deleted' or status == 'storing' then return -1 end
if (redis.call('HGET', KEYS[1], 'owner') or 'anonymous') ~= ARGV[6] then return -1 end
local active = is_active(status)
if active then release(job_id) end
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[1], 'status', 'deleted')
  redis.call('DEL', KEYS[3])
  expire_from_now(ARGV[5])
  if active then return 1 end
  return 2
end
if not active then return 0 end
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[2])
schedule_webhook(job_id, ARGV[4])
expire_from_now(ARGV[5])
return 1
"""
)

# ARGV: job id, now (RFC 3339), now (Unix seconds), ttl. A job past BULK_JOB_DEADLINE_S ends
# failed, error `expired`, and its webhook is scheduled; 1 if it did, 0 if it had ended already.
_EXPIRE_OVERDUE = (
    ALLOW_OOM
    + _JOB_LUA
    + """
local job_id = ARGV[1]
local status = redis.call('HGET', KEYS[1], 'status')
if not is_active(status) then
  redis.call('ZREM', KEYS[12], job_id)
  return 0
end
redis.call('HSET', KEYS[1], 'status', 'failed', 'error', 'expired', 'finished_at', ARGV[2])
schedule_webhook(job_id, ARGV[3])
release(job_id)
expire_from_now(ARGV[4])
return 1
"""
)

# ARGV: job id. A job that could not be stored or published: every key goes, every budget comes back.
# Chunks already published settle as skipped when they come (their job is gone).
_ABANDON = (
    ALLOW_OOM
    + _JOB_LUA
    + """
redis.call('DEL', KEYS[1], KEYS[3], KEYS[4])
release(ARGV[1])
return 1
"""
)

# ARGV: job id. Gives back what a job still holds if its record is gone or it has ended; 1 if it did.
_RECLAIM = (
    ALLOW_OOM
    + _JOB_LUA
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'storing' or is_active(status) then return 0 end
release(ARGV[1])
return 1
"""
)


@dataclass(frozen=True)
class NewBulkJob:
    """A bulk job to store: its texts as UTF-8, and who it belongs to."""

    job_id: str
    texts: Sequence[bytes]
    chunk_texts: int
    metadata: dict | None = None
    callback_url: str | None = None
    owner: str = ANONYMOUS


@dataclass(frozen=True)
class BulkLimits:
    """What a new bulk job may add to the queue: the totals, and its owner's own cap on texts (0: none).

    ``owner_cap_setting`` names where that cap comes from, for the 429.
    """

    max_texts: int
    max_bytes: int
    owner_max_texts: int = 0
    owner_cap_setting: str = "MAX_QUEUED_BULK_TEXTS_PER_KEY"
    # Longest a job may stay queued or running before it ends failed (expired).
    deadline_s: float = 86400


@dataclass(frozen=True)
class JobPage:
    """A page of an owner's bulk jobs, newest first: their records by id, and whether older ones follow."""

    records: list[tuple[str, dict]]
    has_more: bool


class BulkJobs:
    """Bulk job records, texts and results in the main Redis."""

    def __init__(self, client: redis.Redis, ttl_s: int):
        self.client = client
        self.ttl_s = ttl_s
        self._reserve = client.register_script(_RESERVE)
        self._stored = client.register_script(_STORED)
        self._start_chunk = client.register_script(_START_CHUNK)
        self._settle_chunk = client.register_script(_SETTLE_CHUNK)
        self._cancel = client.register_script(_CANCEL)
        self._expire_overdue = client.register_script(_EXPIRE_OVERDUE)
        self._abandon = client.register_script(_ABANDON)
        self._reclaim = client.register_script(_RECLAIM)

    def _keys(self, job_id: str) -> list[str]:
        return [
            *bulk_job_keys(job_id),
            *BUDGET_KEYS,
            WEBHOOKS_DUE_KEY,
            BULK_QUEUED_OWNER_TEXTS_KEY,
            BULK_OWNER_BY_JOB_KEY,
            BULK_ACTIVE_KEY,
        ]

    def create(self, job: NewBulkJob, limits: BulkLimits) -> Refusal | None:
        """Reserve the job's budgets, then store it queued; the Refusal, with nothing stored, when over a budget.

        If storing fails part way (Redis full or away), what was stored goes and the budgets come
        back before the error is raised.
        """
        total, size, now = len(job.texts), job_bytes(job.texts), time.time()
        keys = self._keys(job.job_id)
        # A job listed in its owner's index lives at most its deadline, then JOB_TTL_S after its end.
        oldest_listed = now - limits.deadline_s - self.ttl_s
        code = int(
            self._reserve(
                keys=[*keys, owner_bulk_jobs_key(job.owner), BULK_OWNERS_KEY],
                args=[job.job_id, total, limits.max_texts, size, limits.max_bytes, STORING_TTL_S]
                + [job.owner, limits.owner_max_texts, now, oldest_listed],
            )
        )
        refusal = self._refusal(code, job, size, limits)
        if refusal is not None:
            return refusal
        try:
            self._push_texts(keys[1], job.texts)
            record = {
                "status": BulkStatus.QUEUED.value,
                "total": total,
                "chunks": chunk_count(total, job.chunk_texts),
                "chunk_texts": job.chunk_texts,
                "done": 0,
                "failed": 0,
                "created_at": timestamp(now),
                "finished_at": "",
                "metadata": json.dumps(job.metadata or {}),
                "callback_url": job.callback_url or "",
            }
            fields = [item for pair in record.items() for item in pair]
            if not self._stored(keys=keys, args=[now + limits.deadline_s, job.job_id, *fields]):
                raise redis.TimeoutError(f"bulk job {job.job_id} took over {STORING_TTL_S}s to store")
        except BaseException:
            self.abandon(job.job_id)
            raise
        return None

    @staticmethod
    def _refusal(code: int, job: NewBulkJob, size: int, limits: BulkLimits) -> Refusal | None:
        total = len(job.texts)
        if code == -1:
            return Refusal(
                "MAX_QUEUED_BULK_TEXTS",
                f"bulk texts queued plus this job's {total} would pass MAX_QUEUED_BULK_TEXTS ({limits.max_texts})",
            )
        if code == -2:
            return Refusal(
                "MAX_QUEUED_BULK_BYTES",
                f"bulk bytes queued plus this job's {size} would pass MAX_QUEUED_BULK_BYTES ({limits.max_bytes})",
            )
        if code == -3:
            return Refusal(
                limits.owner_cap_setting,
                f"bulk texts queued for {job.owner} plus this job's {total} would pass its cap of {limits.owner_max_texts}",
            )
        return None

    def _push_texts(self, texts_key: str, texts: Sequence[bytes]) -> None:
        """RPUSH the texts a few MiB per round trip, each push keeping the list's short storing TTL."""
        batch, batch_bytes = [], 0
        for text in texts:
            batch.append(text)
            batch_bytes += len(text)
            if len(batch) >= TEXTS_PER_PUSH or batch_bytes >= BYTES_PER_PUSH:
                self._push(texts_key, batch)
                batch, batch_bytes = [], 0
        if batch:
            self._push(texts_key, batch)

    def _push(self, texts_key: str, batch: list[bytes]) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.rpush(texts_key, *batch)
        pipe.expire(texts_key, STORING_TTL_S)
        pipe.execute()

    def abandon(self, job_id: str) -> None:
        """Forget a job that could not be stored or published: its keys go, its budgets come back."""
        self._abandon(keys=self._keys(job_id), args=[job_id])

    def get(self, job_id: str, owner: str | None = None) -> dict | None:
        """The job's record; None when it is unknown, expired, deleted, still being stored, or (given
        ``owner``) someone else's. Records written before jobs had owners belong to the anonymous owner."""
        record = self.client.hgetall(bulk_key(job_id))
        if not record or record["status"] in (DELETED, STORING):
            return None
        if owner is not None and record.get("owner", ANONYMOUS) != owner:
            return None
        return record

    def status(self, job_id: str) -> str | None:
        """The job's status, 'deleted' and 'storing' included; None when unknown or expired."""
        return self.client.hget(bulk_key(job_id), "status")

    def start_chunk(self, job_id: str, chunk: int) -> str | None:
        """The job's status as the chunk starts ('settled' if it already was); None if the job is gone."""
        return self._start_chunk(keys=bulk_job_keys(job_id), args=[chunk])

    def chunk_texts(self, job_id: str, start: int, stop: int) -> list[str]:
        """The texts of one chunk: empty if the job was cancelled or has ended meanwhile."""
        return self.client.lrange(bulk_job_keys(job_id)[1], start, stop - 1)

    def settle_chunk(
        self, job_id: str, chunk: int, outcome: str, texts: int, predictions: Sequence | None = None
    ) -> ChunkSettlement:
        """Record a chunk's outcome once; the job's webhook is scheduled when its last chunk ends it."""
        values = list(predictions) if predictions is not None else [None] * texts
        done = sum(prediction is not None for prediction in values)
        failed = texts - done if outcome != "skipped" else 0
        now = time.time()
        return ChunkSettlement(
            self._settle_chunk(
                keys=self._keys(job_id),
                args=[job_id, chunk, outcome, json.dumps(values), texts, done, failed, self.ttl_s, timestamp(now), now],
            )
        )

    def cancel(self, job_id: str, owner: str) -> int:
        """-1 unknown (or another owner's), 0 already ended, 1 cancelled now (its webhook, if any, is scheduled)."""
        now = time.time()
        return self._cancel(keys=self._keys(job_id), args=[job_id, timestamp(now), 0, now, self.ttl_s, owner])

    def delete(self, job_id: str, owner: str) -> int:
        """-1 unknown (or another owner's); 1 deleted while it ran (so also cancelled); 2 deleted after it ended."""
        now = time.time()
        return self._cancel(keys=self._keys(job_id), args=[job_id, timestamp(now), 1, now, self.ttl_s, owner])

    def expire_overdue(self, most: int = 100) -> int:
        """End, failed and ``expired``, the jobs still queued or running past their deadline; how many."""
        now = time.time()
        overdue = self.client.zrangebyscore(BULK_ACTIVE_KEY, "-inf", now, start=0, num=most)
        return sum(
            int(self._expire_overdue(keys=self._keys(job_id), args=[job_id, timestamp(now), now, self.ttl_s]))
            for job_id in overdue
        )

    def reclaim_orphans(self, scan_count: int = 500) -> int:
        """Give back the budgets still held by jobs that are gone or ended (a web process died storing one); how many."""
        reclaimed = 0
        for key in (BULK_QUEUED_JOB_BYTES_KEY, BULK_QUEUED_JOB_TEXTS_KEY, BULK_OWNER_BY_JOB_KEY):
            for job_ids in scan_hash_keys(self.client, key, scan_count):
                for job_id in job_ids:
                    reclaimed += int(self._reclaim(keys=self._keys(job_id), args=[job_id]))
        return reclaimed

    def jobs_of(self, owner: str, after: str | None, limit: int, status: str | None = None) -> JobPage:
        """``owner``'s jobs newest first, those after job ``after`` (a cursor), ``limit`` at most, of ``status`` if given.

        Ids whose records are gone are dropped from the owner's index as they are met.
        """
        index = owner_bulk_jobs_key(owner)
        start = 0
        if after is not None:
            rank = self.client.zrevrank(index, after)
            if rank is None:
                return JobPage([], False)
            start = rank + 1
        records: list[tuple[str, dict]] = []
        while len(records) <= limit:
            job_ids = self.client.zrevrange(index, start, start + LIST_READ - 1)
            if not job_ids:
                break
            pipe = self.client.pipeline(transaction=False)
            for job_id in job_ids:
                pipe.hgetall(bulk_key(job_id))
            gone = []
            for job_id, record in zip(job_ids, pipe.execute()):
                if not record or record["status"] == DELETED:
                    gone.append(job_id)
                elif record["status"] != STORING and (status is None or record["status"] == status):
                    records.append((job_id, record))
            if gone:
                self.client.zrem(index, *gone)
            start += len(job_ids) - len(gone)
        return JobPage(records[:limit], len(records) > limit)

    def results(self, record: dict, job_id: str, offset: int, limit: int) -> list:
        """Predictions of texts offset..offset+limit-1 in input order; None where not scored (yet)."""
        total, size = int(record["total"]), int(record["chunk_texts"])
        stop = min(total, offset + limit)
        if stop <= offset:
            return []
        first, last = offset // size, (stop - 1) // size
        chunks = self.client.hmget(bulk_job_keys(job_id)[2], list(range(first, last + 1)))
        predictions = []
        for chunk, value in zip(range(first, last + 1), chunks):
            start, end = chunk_range(chunk, total, size)
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

    def queued_bytes(self) -> int:
        """Redis bytes of bulk jobs' texts not yet deleted (what MAX_QUEUED_BULK_BYTES bounds)."""
        return int(self.client.get(BULK_QUEUED_BYTES_KEY) or 0)


def status_view(job_id: str, record: dict) -> dict:
    """A bulk job's public status: what GET /jobs/<id> answers and a webhook carries."""
    view = {
        "job_id": job_id,
        "status": record["status"],
        "progress": {"total": int(record["total"]), "done": int(record["done"]), "failed": int(record["failed"])},
        "metadata": json.loads(record["metadata"]),
        "created_at": record["created_at"],
        "finished_at": record["finished_at"] or None,
    }
    if record.get("error"):  # failed, not for its texts: it could not run within BULK_JOB_DEADLINE_S
        view["error"] = record["error"]
    return view
