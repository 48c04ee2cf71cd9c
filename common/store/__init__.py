"""Redis state shared by web and workers, one module per concern (keys in ``common.store.keys``).

- ``cache``:        predictions by model identity and text (CACHE_REDIS_URL, may be its own server)
- ``jobs``:         job records and the done lists that wake waiting requests
- ``backpressure``: the queued-text and queued-byte budgets behind 429 overloaded
- ``memory``:       the byte budgets' sizes, from the main Redis's maxmemory
- ``workers``:      heartbeats, the served model's identity, recent batch records
- ``bulk``:         bulk jobs: records, texts, chunk results, the bulk queue budget
- ``idempotency``:  Idempotency-Key claims of POST /predict and POST /jobs
- ``webhooks``:     when each bulk job's next webhook attempt is due
"""

from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from common.store.backpressure import QueueBudget
from common.store.bulk import BulkJobs
from common.store.cache import PredictionCache
from common.store.idempotency import IdempotencyKeys
from common.store.jobs import JobRecord, JobRecords
from common.store.webhooks import WebhookSchedule
from common.store.workers import WorkerRegistry

__all__ = ["JobRecord", "Stores", "connect", "connect_main", "stores_from_settings"]

# A Sentinel that does not answer must not hold up finding the primary through the others.
SENTINEL_TIMEOUT_S = 0.5
# A rediss:// REDIS_URL's query options that Sentinel clients carry over, as redis-py reads them from a plain URL.
TLS_URL_OPTIONS = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


def connect(url: str, socket_timeout: float | None = 5.0, retries: bool = True) -> redis.Redis:
    """A Redis client that fails fast when the server is away, rather than hanging a request.

    Without ``retries`` a broken connection raises at once instead of redis-py retrying the command.
    """
    return redis.Redis.from_url(url, **_client_options(socket_timeout, retries))


def _client_options(socket_timeout: float | None, retries: bool) -> dict:
    options = {
        "socket_connect_timeout": 2.0,
        "socket_timeout": socket_timeout,
        "health_check_interval": 30,
        "decode_responses": True,
    }
    # What redis-py gives a client built from a URL, spelled out: a client of Sentinels' pool gets no retries otherwise.
    options["retry"] = Retry(ExponentialWithJitterBackoff(base=0.01, cap=1), 10) if retries else Retry(NoBackoff(), 0)
    return options


def main_redis_auth(settings) -> dict:
    """What REDIS_URL says of the main Redis beyond its address: TLS and its options, database, user and password."""
    parts = urlsplit(settings.redis_url)
    database = parts.path.strip("/") or "0"
    query = dict(parse_qsl(parts.query))
    tls = parts.scheme == "rediss"
    return {
        "ssl": tls,
        **({option: query[option] for option in TLS_URL_OPTIONS if option in query} if tls else {}),
        "db": int(database),
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password is not None else settings.effective_redis_password() or None,
    }


def tls_options(auth: dict) -> dict:
    """The TLS options among ``main_redis_auth``'s, for the Sentinels' own connections too."""
    return {key: value for key, value in auth.items() if key == "ssl" or key in TLS_URL_OPTIONS}


def connect_main(settings, socket_timeout: float | None = 5.0, retries: bool = True) -> redis.Redis:
    """A client of the main Redis: REDIS_URL's server, or the primary the Sentinels name now.

    Through Sentinels, each new connection asks them for the primary, and a connection that finds
    its server demoted (READONLY) drops itself; the command's retries then reach the new primary.
    """
    if not settings.sentinel_addresses:
        return connect(settings.redis_connection_url, socket_timeout, retries)
    auth = main_redis_auth(settings)
    sentinel = Sentinel(
        settings.sentinel_addresses,
        sentinel_kwargs={
            "password": auth["password"],
            **tls_options(auth),
            "socket_connect_timeout": SENTINEL_TIMEOUT_S,
            "socket_timeout": SENTINEL_TIMEOUT_S,
        },
    )
    return sentinel.master_for(settings.redis_sentinel_master, **_client_options(socket_timeout, retries), **auth)


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
    webhooks: WebhookSchedule

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
            webhooks=WebhookSchedule(main),
        )

    def complete_jobs(self, model_identity: str, computed: dict[str, list], results_by_job: dict[str, list | dict]) -> None:
        """Cache the ``computed`` predictions, then end each job done with its results, giving back its budgets.

        Cached before anyone sees the answer, so a client that repeats its texts finds them in the
        cache; one round trip when the cache is the main Redis.
        """
        if self.cache.client is self.main:
            pipe = self.main.pipeline(transaction=False)
            self.cache.store(model_identity, computed, pipe)
        else:
            self.cache.store(model_identity, computed)
            pipe = self.main.pipeline(transaction=False)
        for job_id, results in results_by_job.items():
            self.jobs.finish(job_id, results, pipe)
        pipe.execute()

    def start_jobs(self, job_ids: list[str], pipeline: redis.client.Pipeline | None = None) -> None:
        """Jobs whose batch starts: give back their queued texts and mark them running, in one round trip.

        With ``pipeline``, only queue the commands there.
        """
        pipe = pipeline or self.main.pipeline(transaction=False)
        for job_id in job_ids:
            self.queue.release_texts(job_id, pipe)
            self.jobs.mark_running(job_id, pipe)
        if pipeline is None:
            pipe.execute()


def stores_from_settings(settings) -> Stores:
    """Build the Stores for these settings."""
    main = connect_main(settings)
    cache = main if settings.cache_url == settings.redis_url else connect(settings.cache_connection_url)
    return Stores.over(main, cache, settings.job_ttl_s, settings.cache_ttl_s)
