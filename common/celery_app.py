"""The Celery application, built from settings; the web side uses it only to send tasks by name."""

import ssl
from urllib.parse import quote

from celery import Celery
from kombu import Exchange, Queue

from common.store import SENTINEL_TIMEOUT_S, main_redis_auth, tls_options

# One message carries the jobs of several concurrent requests of one web process (web.dispatch).
PREDICT_JOBS_TASK = "sentiment.predict_jobs"
# What processes of the previous release send when a bulk job ends; workers schedule its webhook (worker.tasks).
WEBHOOK_TASK = "sentiment.deliver_webhook"


def bulk_queue(settings, owner: str | None = None) -> Queue:
    """The queue of an owner's bulk chunks (or, without one, the shared queue of earlier releases).

    Each owner has a queue of its own on the same broker, beside the Celery queue. Workers read
    them all with consumers of their own (worker.bulk), not with Celery's thread pool, so chunks of
    a 100,000-text job never hold the threads interactive messages need; and kombu's Redis
    transport takes from non-empty queues in turn, so owners' chunks interleave.
    """
    name = settings.bulk_queue if owner is None else f"{settings.bulk_queue}.{owner}"
    return Queue(name, Exchange(settings.bulk_queue, type="direct"), routing_key=name)


def publish_bulk_chunks(app: Celery, settings, job_id: str, chunks: list[tuple[int, int]], owner: str) -> None:
    """Send one message per chunk ``(start, stop)`` of ``owner``'s stored bulk job, on one broker connection."""
    queue = bulk_queue(settings, owner)
    with app.producer_or_acquire() as producer:
        for index, (start, stop) in enumerate(chunks):
            producer.publish(
                {"job_id": job_id, "chunk": index, "start": start, "stop": stop},
                exchange=queue.exchange,
                routing_key=queue.routing_key,
                declare=[queue] if index == 0 else [],
                serializer="json",
                delivery_mode="persistent",
                retry=True,
                retry_policy=app.conf.task_publish_retry_policy,
            )


def broker(settings) -> tuple[str, dict, dict | None]:
    """The broker URL, the transport options that depend on it, and ``broker_use_ssl``.

    Through Sentinels it is kombu's ``sentinel://`` transport, one URL per Sentinel, which asks
    them for the primary on every new connection.
    """
    if not settings.sentinel_addresses:
        return settings.redis_connection_url, {}, None
    auth = main_redis_auth(settings)
    credentials = ""
    if auth["password"]:
        credentials = f"{quote(auth['username'] or '', safe='')}:{quote(auth['password'], safe='')}@"
    url = ";".join(f"sentinel://{credentials}{netloc}/{auth['db']}" for netloc in settings.sentinel_netlocs)
    sentinel_kwargs = {"socket_connect_timeout": SENTINEL_TIMEOUT_S, "socket_timeout": SENTINEL_TIMEOUT_S}
    if auth["password"]:
        sentinel_kwargs["password"] = auth["password"]
    tls = tls_options(auth) if auth["ssl"] else {}
    sentinel_kwargs.update(tls)
    options = {"master_name": settings.redis_sentinel_master, "sentinel_kwargs": sentinel_kwargs}
    # kombu turns TLS on for a non-empty dict, and hands it to the primary's connections.
    use_ssl = {"ssl_cert_reqs": ssl.CERT_REQUIRED, **{key: value for key, value in tls.items() if key != "ssl"}}
    return url, options, (use_ssl if tls else None)


def create_celery(settings) -> Celery:
    """Build a Celery app on the Redis broker with the service's reliability settings."""
    broker_url, sentinel_options, broker_use_ssl = broker(settings)
    app = Celery("sentiment", broker=broker_url, set_as_current=False)
    app.conf.update(
        # JSON only: a pickle payload from the broker would be code execution.
        task_serializer="json",
        accept_content=["json"],
        # Job records live in our own Redis keys; Celery's result backend is not used.
        task_ignore_result=True,
        # The one place the queue is named: the web side sends to it and the worker consumes it.
        task_default_queue=settings.queue_name,
        # Ack only after the job's results are stored, so a killed worker's jobs run again.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=settings.worker_concurrency,
        worker_hijack_root_logger=False,
        broker_transport_options={
            # Unacked jobs come back after this long; it must exceed the longest job (docs/reliability.md).
            "visibility_timeout": settings.visibility_timeout_s,
            # Look for a dead worker's unacked jobs every few seconds (kombu's default scans every 100 s).
            "unacked_restore_interval": max(1, min(10, settings.visibility_timeout_s // 2)),
            "unacked_restore_throttle": 1,
            "socket_connect_timeout": 2,
            "socket_timeout": 5,
            **sentinel_options,
        },
        broker_use_ssl=broker_use_ssl,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_connection_timeout=2,
        # The web side must answer 503 quickly when Redis is away, not retry for long.
        task_publish_retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2},
    )
    return app
