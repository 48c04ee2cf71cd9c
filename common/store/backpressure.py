"""The queued-text budget: POST answers 429 once the texts waiting for a batch would pass the bound.

Each job reserves its uncached texts when it is enqueued and releases them once: when its batch
starts, or, should Redis have been away at that moment, when the job ends (done, expired or
failed); also when it never got enqueued.
"""

import redis

from common.store.jobs import JobRecordWrite
from common.store.keys import QUEUED_JOBS_KEY, QUEUED_TEXTS_KEY
from common.store.scripts import run_script

# Reserve room for a job's texts only while the queue stays under its bound; -1 means full. Given
# a record key (KEYS[3]), also store the job's record (ARGV[5..]: field, value, ...; TTL ARGV[4]),
# only when the room was granted, so a refused job writes nothing. Reserving a job again (the
# script re-sent by redis-py after it lost the reply) grants it again without counting twice.
_RESERVE_SCRIPT = """
local reservations, queued_total, record = KEYS[1], KEYS[2], KEYS[3]
local job_id, texts, max_queued_texts = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local queued = tonumber(redis.call('GET', queued_total) or '0')
if redis.call('HEXISTS', reservations, job_id) == 0 then
  if queued + texts > max_queued_texts then return -1 end
  redis.call('HSET', reservations, job_id, texts)
  queued = redis.call('INCRBY', queued_total, texts)
end
if record then
  redis.call('HSET', record, unpack(ARGV, 5))
  redis.call('EXPIRE', record, ARGV[4])
end
return queued
"""

# Release a job's reservation once; redelivered or repeated releases change nothing.
_RELEASE_SCRIPT = """
local reservations, queued_total = KEYS[1], KEYS[2]
local job_id = ARGV[1]
local texts = redis.call('HGET', reservations, job_id)
if not texts then return 0 end
redis.call('HDEL', reservations, job_id)
local left = redis.call('DECRBY', queued_total, texts)
if left < 0 then redis.call('SET', queued_total, 0) end
return tonumber(texts)
"""


class QueueBudget:
    """Counts the texts of jobs that are queued but not yet in a batch."""

    def __init__(self, client: redis.Redis):
        self.client = client
        self._reserve = client.register_script(_RESERVE_SCRIPT)
        self._release = client.register_script(_RELEASE_SCRIPT)

    def reserve(self, job_id: str, texts: int, max_queued_texts: int, record: JobRecordWrite | None = None) -> bool:
        """Count a job's texts as queued unless that would pass the bound; then also store ``record``.

        One round trip either way; a refused job writes nothing.
        """
        keys, args = [QUEUED_JOBS_KEY, QUEUED_TEXTS_KEY], [job_id, texts, max_queued_texts]
        if record is not None:
            keys.append(record.key)
            args += [record.ttl_s, *(item for pair in record.fields.items() for item in pair)]
        return int(self._reserve(keys=keys, args=args)) >= 0

    def release(self, job_id: str, pipeline: redis.client.Pipeline | None = None) -> None:
        """Stop counting a job's texts as queued; with ``pipeline``, only queue the command there."""
        run_script(self._release, [QUEUED_JOBS_KEY, QUEUED_TEXTS_KEY], [job_id], pipeline or self.client)

    def queued_texts(self) -> int:
        """Texts waiting for a batch."""
        return int(self.client.get(QUEUED_TEXTS_KEY) or 0)

    def celery_queue_length(self, queue_name: str) -> int:
        """Jobs waiting in the Celery queue (a Redis list), not counting ones a worker has reserved."""
        return int(self.client.llen(queue_name))
