"""The webhook lane's schedule: a sorted set of bulk jobs whose next webhook attempt is due, by when.

A job is added (by the scripts that end or cancel it, common.store.bulk) only when it has a
callback_url. A delivery thread claims the earliest due job by moving it a lease into the future
in one script, so two threads never run the same attempt; a thread that dies mid-attempt leaves
the job to be claimed again once its lease passes. A retry is the job's score set to a later time,
so retries wait in Redis, not in a broker message that its visibility timeout could hand out twice.
"""

import time

import redis

from common.store.keys import WEBHOOKS_DUE_KEY, bulk_key

# ARGV: now, lease end. The earliest job due by now, claimed until the lease ends; nil when none is due.
_CLAIM_SCRIPT = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1)
if #due == 0 then return false end
redis.call('ZADD', KEYS[1], 'XX', ARGV[2], due[1])
return due[1]
"""


class WebhookSchedule:
    """When each bulk job's next webhook attempt is due."""

    def __init__(self, client: redis.Redis):
        self.client = client
        self._claim = client.register_script(_CLAIM_SCRIPT)

    def claim(self, lease_s: float) -> str | None:
        """The id of a job whose attempt is due, now claimed for ``lease_s``; None when nothing is due."""
        now = time.time()
        return self._claim(keys=[WEBHOOKS_DUE_KEY], args=[now, now + lease_s])

    def count_attempt(self, job_id: str) -> int:
        """Count one more attempt for the job's webhook; the attempt's number, from 1."""
        return int(self.client.hincrby(bulk_key(job_id), "webhook_attempts", 1))

    def retry_at(self, job_id: str, due_at: float) -> None:
        """Make the job's next attempt due at ``due_at`` (Unix time)."""
        self.client.zadd(WEBHOOKS_DUE_KEY, {job_id: due_at}, xx=True)

    def forget(self, job_id: str) -> None:
        """No more attempts for this job: delivered, given up, or nothing to deliver."""
        self.client.zrem(WEBHOOKS_DUE_KEY, job_id)

    def schedule(self, job_id: str, due_at: float | None = None) -> None:
        """Make the job's webhook due (now by default), unless it already is: for callers outside the end scripts."""
        self.client.zadd(WEBHOOKS_DUE_KEY, {job_id: due_at or time.time()}, nx=True)

    def pending(self) -> int:
        """Jobs with a webhook still to deliver."""
        return int(self.client.zcard(WEBHOOKS_DUE_KEY))
