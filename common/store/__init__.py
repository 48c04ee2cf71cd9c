"""Redis state shared by web and workers, one module per concern (keys in ``common.store.keys``).

- ``cache``:        predictions by model identity and text (CACHE_REDIS_URL, may be its own server)
- ``jobs``:         job records and the done lists that wake waiting requests
- ``backpressure``: the queued-text budget behind 429 overloaded
- ``workers``:      heartbeats, the served model's identity, recent batch records
- ``bulk``:         bulk jobs: records, texts, chunk results, the bulk queue budget
- ``idempotency``:  Idempotency-Key claims of POST /predict and POST /jobs
"""

from collections.abc import Sequence
from dataclasses import dataclass

import redis

from common.store.backpressure import QueueBudget
from common.store.bulk import BulkJobs
from common.store.cache import PredictionCache
from common.store.idempotency import IdempotencyKeys
from common.store.jobs import JobRecord, JobRecords
from common.store.workers import WorkerRegistry

__all__ = ["JobRecord", "Stores", "connect", "stores_from_settings"]


def connect(url: str, socket_timeout: float | None = 5.0) -> redis.Redis:
    """A Redis client that fails fast when the server is away, rather than hanging a request."""
    return redis.Redis.from_url(
        url, socket_connect_timeout=2.0, socket_timeout=socket_timeout, health_check_interval=30, decode_responses=True
    )


@dataclass(frozen=True)
class Stores:
    """One process's view of Redis: the main server (broker, jobs, bookkeeping) and the cache."""

    main: redis.Redis
    cache: PredictionCache
    jobs: JobRecords
    queue: QueueBudget
    workers: WorkerRegistry
    bulk: BulkJobs
    idempotency: IdempotencyKeys

    @classmethod
    def over(cls, main: redis.Redis, cache: redis.Redis | None = None, job_ttl_s: int = 3600, cache_ttl_s: int = 3600):
        """Stores on these clients; ``cache`` defaults to ``main``."""
        return cls(
            main=main,
            cache=PredictionCache(cache or main, cache_ttl_s),
            jobs=JobRecords(main, job_ttl_s),
            queue=QueueBudget(main),
            workers=WorkerRegistry(main),
            bulk=BulkJobs(main, job_ttl_s),
            idempotency=IdempotencyKeys(main, job_ttl_s),
        )

    def enqueue_job(
        self,
        job_id: str,
        texts: Sequence[str],
        known: Sequence[list | None],
        deadline: float,
        new_texts: int,
        max_queued_texts: int,
    ) -> bool:
        """Reserve room for a job's ``new_texts`` and, only when granted, store its record: one round trip.

        False, with nothing written, when the queue has no room.
        """
        return self.queue.reserve(job_id, new_texts, max_queued_texts, self.jobs.new_record(job_id, texts, known, deadline))

    def complete_jobs(self, model_identity: str, results_by_job: dict[str, dict[str, list]]) -> None:
        """Cache the jobs' results, then mark each done, release its queue reservation and wake its waiter.

        Cached before anyone sees the answer, so a client that repeats its texts finds them in the
        cache; one round trip when the cache is the main Redis. The reservation was normally released
        when the job's batch started; releasing again is a no-op, and it frees the room when Redis was
        away at that moment.
        """
        computed = {text: prediction for results in results_by_job.values() for text, prediction in results.items()}
        if self.cache.client is self.main:
            pipe = self.main.pipeline(transaction=False)
            self.cache.store(model_identity, computed, pipe)
        else:
            self.cache.store(model_identity, computed)
            pipe = self.main.pipeline(transaction=False)
        for job_id, results in results_by_job.items():
            self.queue.release(job_id, pipe)
            self.jobs.finish(job_id, results, pipe)
        pipe.execute()

    def start_jobs(self, job_ids: list[str], pipeline: redis.client.Pipeline | None = None) -> None:
        """Jobs whose batch starts: release their queue reservation and mark them running, in one round trip.

        With ``pipeline``, only queue the commands there.
        """
        pipe = pipeline or self.main.pipeline(transaction=False)
        for job_id in job_ids:
            self.queue.release(job_id, pipe)
            self.jobs.mark_running(job_id, pipe)
        if pipeline is None:
            pipe.execute()


def stores_from_settings(settings) -> Stores:
    """Build the Stores for these settings."""
    main = connect(settings.redis_connection_url)
    cache = main if settings.cache_url == settings.redis_url else connect(settings.cache_connection_url)
    return Stores.over(main, cache, settings.job_ttl_s, settings.cache_ttl_s)
