"""What workers tell the web side: heartbeats for /ready, the served model's identity, recent batches."""

import json
import time
from collections.abc import Iterable

import redis

from common.store.keys import BATCHES_KEY, MODEL_KEY, WORKERS_KEY

HEARTBEAT_INTERVAL_S = 5
HEARTBEAT_STALE_S = 20
BATCH_HISTORY = 1000


class WorkerRegistry:
    """Live workers, the model they serve and the batches they ran."""

    def __init__(self, client: redis.Redis):
        self.client = client

    def heartbeat(self, worker_name: str, model_identity: str) -> None:
        """Record that a worker is alive and consuming, and which model it serves."""
        now = time.time()
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(WORKERS_KEY, {worker_name: now})
        pipe.zremrangebyscore(WORKERS_KEY, "-inf", now - 10 * HEARTBEAT_STALE_S)
        pipe.set(MODEL_KEY, model_identity)
        pipe.execute()

    def remove(self, worker_name: str) -> None:
        """Forget a worker that is shutting down."""
        self.client.zrem(WORKERS_KEY, worker_name)

    def live_workers(self) -> int:
        """Workers whose heartbeat is recent."""
        return int(self.client.zcount(WORKERS_KEY, time.time() - HEARTBEAT_STALE_S, "+inf"))

    def model_identity(self) -> str | None:
        """Identity of the served model, or None before any worker has started."""
        return self.client.get(MODEL_KEY)

    def record_batches(self, batches: Iterable[dict], pipeline: redis.client.Pipeline | None = None) -> None:
        """Append batch records, keeping the most recent ones; with ``pipeline``, only queue the commands there."""
        encoded = [json.dumps(batch) for batch in batches]
        if not encoded:
            return
        pipe = pipeline or self.client.pipeline(transaction=False)
        pipe.rpush(BATCHES_KEY, *encoded)
        pipe.ltrim(BATCHES_KEY, -BATCH_HISTORY, -1)
        if pipeline is None:
            pipe.execute()

    def recent_batches(self) -> list[dict]:
        """Recorded batches, oldest first (at most BATCH_HISTORY)."""
        return [json.loads(value) for value in self.client.lrange(BATCHES_KEY, 0, -1)]
