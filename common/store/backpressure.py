"""The budgets of queued /predict work: POST answers 429 once texts or bytes would pass their bound.

Each job reserves, when it is enqueued, its distinct uncached texts (MAX_QUEUED_TEXTS) and the
bytes it holds in Redis (MAX_QUEUED_BYTES: its record's texts and its Celery message). The texts
go back when its batch starts, the bytes when it ends, since its texts stay in Redis until then.
Reservations are kept per job, so giving one back twice changes nothing, and one whose job record
is gone (its web process died before it published the job) is given back by ``reclaim_orphans``.

The Lua pieces below are shared with the scripts that write job records (common.store.jobs), so a
job is reserved and recorded, or released and ended, in one step.
"""

from dataclasses import dataclass

import redis

from common.store.keys import QUEUED_BYTES_KEY, QUEUED_JOB_BYTES_KEY, QUEUED_JOBS_KEY, QUEUED_TEXTS_KEY, job_key
from common.store.scripts import ALLOW_OOM, run_script

# KEYS order of every script that takes or gives back a reservation.
BUDGET_KEYS = [QUEUED_JOBS_KEY, QUEUED_TEXTS_KEY, QUEUED_JOB_BYTES_KEY, QUEUED_BYTES_KEY]

# give_back(per_job, total, job_id): remove one job's entry from a per-job hash and its amount from the total.
# reserve(job_id, texts, max_texts, bytes, max_bytes): 0 when reserved (or already held: redis-py may
# re-send a script whose reply it lost), -1 when the texts would pass their bound, -2 the bytes.
BUDGET_LUA = """
local function give_back(per_job, total, job_id)
  local amount = redis.call('HGET', per_job, job_id)
  if not amount then return 0 end
  redis.call('HDEL', per_job, job_id)
  if redis.call('DECRBY', total, amount) < 0 then redis.call('SET', total, 0) end
  return tonumber(amount)
end
local function reserve(job_id, texts, max_texts, bytes, max_bytes)
  if redis.call('HEXISTS', KEYS[3], job_id) == 1 then return 0 end
  if tonumber(redis.call('GET', KEYS[2]) or '0') + texts > max_texts then return -1 end
  if tonumber(redis.call('GET', KEYS[4]) or '0') + bytes > max_bytes then return -2 end
  redis.call('HSET', KEYS[1], job_id, texts)
  redis.call('INCRBY', KEYS[2], texts)
  redis.call('HSET', KEYS[3], job_id, bytes)
  redis.call('INCRBY', KEYS[4], bytes)
  return 0
end
"""

# Giving back never adds to Redis's memory, so it runs even when Redis is full (allow-oom).
_RELEASE_TEXTS_SCRIPT = ALLOW_OOM + BUDGET_LUA + "return give_back(KEYS[1], KEYS[2], ARGV[1])"
_RELEASE_ALL_SCRIPT = (
    ALLOW_OOM + BUDGET_LUA + "return give_back(KEYS[1], KEYS[2], ARGV[1]) + give_back(KEYS[3], KEYS[4], ARGV[1])"
)


@dataclass(frozen=True)
class Refusal:
    """Why a job was not admitted: the limit it would have passed (a setting's name) and a message for the client."""

    limit: str
    message: str


def refusal(code: int, texts: int, bytes_: int, max_texts: int, max_bytes: int) -> Refusal | None:
    """The Refusal a reserve code stands for; None for 0 (reserved)."""
    if code == -1:
        return Refusal("MAX_QUEUED_TEXTS", f"queued texts plus this request's {texts} would pass MAX_QUEUED_TEXTS ({max_texts})")
    if code == -2:
        return Refusal("MAX_QUEUED_BYTES", f"queued bytes plus this request's {bytes_} would pass MAX_QUEUED_BYTES ({max_bytes})")
    return None


class QueueBudget:
    """Counts the texts of jobs not yet in a batch, and the Redis bytes of jobs not yet ended."""

    def __init__(self, client: redis.Redis):
        self.client = client
        self._release_texts = client.register_script(_RELEASE_TEXTS_SCRIPT)
        self._release_all = client.register_script(_RELEASE_ALL_SCRIPT)

    def release_texts(self, job_id: str, pipeline: redis.client.Pipeline | None = None) -> None:
        """Stop counting a job's texts as queued (its batch started); with ``pipeline``, only queue the command there."""
        run_script(self._release_texts, BUDGET_KEYS[:2], [job_id], pipeline or self.client)

    def release(self, job_id: str) -> None:
        """Give back all a job holds, texts and bytes (it ended, or never got enqueued)."""
        run_script(self._release_all, BUDGET_KEYS, [job_id], self.client)

    def queued_texts(self) -> int:
        """Texts waiting for a batch."""
        return int(self.client.get(QUEUED_TEXTS_KEY) or 0)

    def queued_bytes(self) -> int:
        """Redis bytes held by jobs not yet ended."""
        return int(self.client.get(QUEUED_BYTES_KEY) or 0)

    def celery_queue_length(self, queue_name: str) -> int:
        """Jobs waiting in the Celery queue (a Redis list), not counting ones a worker has reserved."""
        return int(self.client.llen(queue_name))

    def reclaim_orphans(self, scan_count: int = 500) -> int:
        """Give back the reservations of jobs whose record is gone (expired: never published); how many."""
        reclaimed = 0
        for job_ids in scan_hash_keys(self.client, QUEUED_JOB_BYTES_KEY, scan_count):
            pipe = self.client.pipeline(transaction=False)
            for job_id in job_ids:
                pipe.exists(job_key(job_id))
            for job_id, exists in zip(job_ids, pipe.execute()):
                if not exists:
                    self.release(job_id)
                    reclaimed += 1
        return reclaimed


def scan_hash_keys(client: redis.Redis, key: str, count: int):
    """The fields of hash ``key``, a slice at a time (HSCAN: never one long command)."""
    cursor = 0
    while True:
        cursor, entries = client.hscan(key, cursor, count=count)
        if entries:
            yield list(entries)
        if cursor == 0:
            return
