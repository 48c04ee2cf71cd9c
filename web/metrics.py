"""Prometheus metrics of the web side, aggregated over gunicorn's processes.

With PROMETHEUS_MULTIPROC_DIR set (gunicorn_conf.py sets it), every process writes its
samples to files there and /metrics merges them; without it (tests, flask run) the process's
own registry is served.
"""

import os
import time

from flask import Flask, g, request
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

REQUESTS = Counter(
    "sentiment_http_requests_total", "HTTP requests, by endpoint, method and status.", ["endpoint", "method", "status"]
)
REQUEST_SECONDS = Histogram(
    "sentiment_http_request_seconds",
    "Request latency, by endpoint.",
    ["endpoint"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
# The method labels REQUESTS keeps; any other method token counts as "other".
STANDARD_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
CACHE_LOOKUPS = Counter("sentiment_cache_lookups_total", "Texts looked up in the cache, by result (hit, miss).", ["result"])
ANSWERS = Counter("sentiment_predict_answers_total", "POST /predict answers, by kind (cached, sync, async, failed).", ["kind"])
JOB_WAIT_SECONDS = Histogram(
    "sentiment_job_wait_seconds",
    "Seconds a request waited on its job before answering.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
# The children a /predict request touches, resolved once: labels() takes a lock and a lookup per call.
CACHE_HITS, CACHE_MISSES = CACHE_LOOKUPS.labels("hit"), CACHE_LOOKUPS.labels("miss")
ANSWERED_CACHED, ANSWERED_SYNC = ANSWERS.labels("cached"), ANSWERS.labels("sync")
ANSWERED_ASYNC, ANSWERED_FAILED = ANSWERS.labels("async"), ANSWERS.labels("failed")
BULK_TEXTS_QUEUED = Counter("sentiment_bulk_texts_queued_total", "Texts of bulk jobs accepted by POST /jobs.")
BULK_JOBS_CANCELLED = Counter("sentiment_bulk_jobs_cancelled_total", "Bulk jobs cancelled by POST /jobs/<id>/cancel.")
JOBS_NOT_REPLICATED = Counter(
    "sentiment_jobs_not_replicated_total",
    "Jobs withdrawn because no Redis replica acknowledged them in time (POST answered 503 not_replicated).",
)
# Owners are API keys' names (a configured, bounded set) or "anonymous", so the label stays bounded.
OWNER_TEXTS = Counter(
    "sentiment_owner_texts_total", "Texts submitted, by owner (API key name) and route (predict, jobs).", ["owner", "route"]
)
JOBS_PER_MESSAGE = Histogram(
    "sentiment_jobs_per_message",
    "Jobs of concurrent requests that left this web process in one Celery message.",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)


_owner_texts_children: dict[tuple[str, str], object] = {}


def owner_texts(owner: str, route: str):
    """The owner's texts counter on a route (its child resolved once: labels() takes a lock each call)."""
    child = _owner_texts_children.get((owner, route))
    if child is None:
        child = _owner_texts_children[(owner, route)] = OWNER_TEXTS.labels(owner, route)
    return child


def count_cache_lookups(hits: int, misses: int) -> None:
    """Count a request's cache hits and misses; a zero is not written (each write takes the process-wide metrics lock)."""
    if hits:
        CACHE_HITS.inc(hits)
    if misses:
        CACHE_MISSES.inc(misses)


class QueueCollector:
    """Reads queue depth and live workers from Redis at scrape time."""

    def __init__(self, services):
        self.services = services

    def collect(self):
        stores, queue_name = self.services.stores, self.services.settings.queue_name
        try:
            values = (
                stores.queue.celery_queue_length(queue_name),
                stores.queue.queued_texts(),
                stores.bulk.queued_texts(),
                stores.workers.live_workers(),
                1,
            )
        except Exception:  # a scrape must not fail because Redis is away; redis_up says so
            values = (float("nan"), float("nan"), float("nan"), float("nan"), 0)
        for (name, doc), value in zip(
            (
                ("sentiment_queue_jobs", "Celery messages waiting in the queue, each with one or more jobs (Redis list length)."),
                ("sentiment_queue_texts", "Texts waiting for a batch (backpressure counter)."),
                ("sentiment_bulk_queued_texts", "Texts of bulk jobs not yet scored (MAX_QUEUED_BULK_TEXTS bounds it)."),
                ("sentiment_workers_live", "Workers with a recent heartbeat."),
                ("sentiment_redis_up", "1 when the web side reached Redis at scrape time."),
            ),
            values,
        ):
            yield GaugeMetricFamily(name, doc, value=value)

    def describe(self):
        # Nothing at registration time: describing would mean calling Redis.
        return []


class ProcessRegistry:
    """This process's own metrics, for runs without PROMETHEUS_MULTIPROC_DIR."""

    def collect(self):
        yield from REGISTRY.collect()

    def describe(self):
        return []


def metrics_registry(services) -> CollectorRegistry:
    """The registry /metrics serves: all processes' samples plus the queue gauges."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
    else:
        registry.register(ProcessRegistry())
    registry.register(QueueCollector(services))
    return registry


def instrument(app: Flask, services) -> None:
    """Time and count every request, and serve /metrics."""
    registry = metrics_registry(services)

    @app.before_request
    def start_timer():
        g.request_started = time.perf_counter()

    # (endpoint, method, status) -> that request kind's REQUESTS child and REQUEST_SECONDS child,
    # resolved once. Routes and statuses are few, and methods are mapped onto the standard ones.
    series_of_kind: dict[tuple[str, str, int], tuple] = {}

    @app.after_request
    def record(response):
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        # A client can send any method token; a label per token would grow without bound.
        method = request.method if request.method in STANDARD_METHODS else "other"
        kind = (endpoint, method, response.status_code)
        series = series_of_kind.get(kind)
        if series is None:
            series = series_of_kind[kind] = (
                REQUESTS.labels(endpoint, method, str(response.status_code)),
                REQUEST_SECONDS.labels(endpoint),
            )
        requests_total, seconds = series
        started = g.get("request_started")
        if started is not None:
            seconds.observe(time.perf_counter() - started)
        requests_total.inc()
        return response

    @app.get("/metrics")
    def metrics():
        return generate_latest(registry), 200, {"Content-Type": CONTENT_TYPE_LATEST}
