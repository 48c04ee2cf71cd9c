"""How much of the main Redis queued work may hold: byte budgets that follow the server's own maxmemory.

Queued work is bounded twice: by texts (MAX_QUEUED_TEXTS, MAX_QUEUED_BULK_TEXTS) and by the bytes it
holds in Redis until it ends (MAX_QUEUED_BYTES, MAX_QUEUED_BULK_BYTES). By default the byte budgets
are shares of the server's ``maxmemory``, read with INFO (which managed Redis services allow, unlike
CONFIG), and what they leave over is headroom for what finished work keeps for JOB_TTL_S (results,
done lists), heartbeats, idempotency records and the broker's bookkeeping. Past REDIS_MEMORY_HIGH_WATER
of ``maxmemory`` no new work is admitted at all until that headroom frees, so a full budget never
means a full Redis (docs/deployment.md, "Sizing Redis").
"""

import threading
import time
from dataclasses import dataclass

import redis

from common.store.backpressure import Refusal

# Shares of maxmemory the byte budgets take by default; the rest is headroom.
QUEUED_SHARE = 0.10
BULK_QUEUED_SHARE = 0.40
# Budgets when the server has no maxmemory (it then grows until the host runs out).
UNBOUNDED_QUEUED_BYTES = 64 * 2**20
UNBOUNDED_BULK_QUEUED_BYTES = 256 * 2**20
# How stale a web process's reading of the server's memory may be.
REFRESH_S = 1.0
# What Redis's allocator takes beyond a large value's bytes (its size classes), as a factor: the
# charges below are measured against used_memory with `python -m bench.redis_bytes`.
ALLOCATOR_SLACK = 1.15


@dataclass(frozen=True)
class MemoryReading:
    """The main Redis's ``used_memory`` and ``maxmemory`` (0: no limit), in bytes."""

    used_bytes: int
    maxmemory: int


@dataclass(frozen=True)
class ByteBudgets:
    """The byte budgets in force, and why no new work is admitted (None: the server is under its high-water mark)."""

    queued_bytes: int
    bulk_queued_bytes: int
    high_water_refusal: Refusal | None


def read_memory(client: redis.Redis) -> MemoryReading:
    info = client.info("memory")
    return MemoryReading(int(info["used_memory"]), int(info.get("maxmemory", 0)))


def byte_budgets(settings, reading: MemoryReading) -> ByteBudgets:
    """The budgets for ``settings`` (an explicit MAX_QUEUED_BYTES / MAX_QUEUED_BULK_BYTES wins) on a server as read."""
    limit = reading.maxmemory
    queued = settings.max_queued_bytes or (int(limit * QUEUED_SHARE) if limit else UNBOUNDED_QUEUED_BYTES)
    bulk = settings.max_queued_bulk_bytes or (int(limit * BULK_QUEUED_SHARE) if limit else UNBOUNDED_BULK_QUEUED_BYTES)
    high_water = settings.redis_memory_high_water
    refused = None
    if limit and high_water and reading.used_bytes >= limit * high_water:
        refused = Refusal(
            "REDIS_MEMORY_HIGH_WATER",
            f"Redis holds {reading.used_bytes} of its {limit} bytes, past REDIS_MEMORY_HIGH_WATER ({high_water}):"
            " no new work until finished work expires",
        )
    return ByteBudgets(queued, bulk, refused)


class RedisMemory:
    """One process's view of the main Redis's memory, read at most every REFRESH_S."""

    def __init__(self, client: redis.Redis, settings):
        self.client = client
        self.settings = settings
        self._lock = threading.Lock()
        self._budgets: ByteBudgets | None = None
        self._read_at = float("-inf")

    def budgets(self) -> ByteBudgets:
        """The byte budgets now; raises what redis-py raises when the server cannot be read."""
        now = time.monotonic()
        if self._budgets is None or now - self._read_at > REFRESH_S:
            with self._lock:
                if self._budgets is None or now - self._read_at > REFRESH_S:
                    self._budgets = byte_budgets(self.settings, read_memory(self.client))
                    self._read_at = now
        return self._budgets
