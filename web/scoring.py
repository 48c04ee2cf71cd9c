"""The job protocol behind POST /predict, free of HTTP: cache first, else a job the request waits on.

``score`` looks the texts up in the cache; if any is missing it reserves room in the queue, stores
a job record, hands the job to the process's dispatcher (which shares Celery messages between
concurrent requests; the reservation is rolled back if the publish fails) and waits up to the bound.
It answers one of the typed outcomes below; ``web.predict`` maps them to HTTP.
"""

import contextlib
import json
import time
from dataclasses import dataclass

from common.jobs import ANONYMOUS, JobError, JobStatus, QueuedJob, is_job_id, new_job_id
from common.store.backpressure import Refusal
from common.store.idempotency import KeyUse
from common.store.jobs import JobRecord, NewJob, merged_predictions, new_job
from web import metrics
from web.errors import UNAVAILABLE_ERRORS
from web.services import Services


@dataclass(frozen=True)
class Scored:
    """Every text has its prediction, from the cache or from a job that ended in time.

    When every one came from the cache they are ``encoded`` instead: each as the cache holds it,
    JSON, so the answer is their join, with nothing decoded or encoded again.
    """

    predictions: list | None
    encoded: list[str] | None = None


@dataclass(frozen=True)
class Pending:
    """The job is still queued or running; the client polls it."""

    job_id: str
    status: JobStatus


@dataclass(frozen=True)
class Failed:
    """The job failed (expired, or inference broke) while the request waited."""

    job_id: str
    reason: JobError


@dataclass(frozen=True)
class QueueFull:
    """The job would pass a queue budget, or Redis is past its high-water mark; nothing was enqueued.

    ``refusal.limit`` names which.
    """

    refusal: Refusal


@dataclass(frozen=True)
class IdempotencyClash:
    """The request's Idempotency-Key was used within JOB_TTL_S with another body; nothing was done."""

    job_id: str


@dataclass(frozen=True)
class Idempotency:
    """A request's Idempotency-Key, as its owner uses it on /predict, and the hash of its body."""

    use: KeyUse
    body_hash: str


Outcome = Scored | Pending | Failed | QueueFull | IdempotencyClash


def score(
    services: Services,
    texts: list[str],
    wait_s: float | None,
    deadline_s: float | None,
    owner: str = ANONYMOUS,
    idempotency: Idempotency | None = None,
) -> Outcome:
    """Answer from the cache, or enqueue the missing texts and wait up to ``wait_s`` (default SYNC_WAIT_S).

    With ``idempotency``, a retry of an earlier request (same key, same body) answers from that
    request's job instead of creating another: no second job, no second computation.
    """
    if not texts:
        return Scored([])
    settings = services.settings
    model_identity = services.model_identity()
    encoded = cached_predictions(services, model_identity, texts) if model_identity else [None] * len(texts)
    hits = sum(prediction is not None for prediction in encoded)
    metrics.count_cache_lookups(hits, len(texts) - hits)
    claims = services.stores.idempotency
    earlier = None
    if idempotency is not None:
        # Claimed before any job exists (job id empty), so two concurrent retries cannot both create one.
        earlier = claims.claim(idempotency.use, idempotency.body_hash, "")
        if earlier is not None and earlier.body_hash != idempotency.body_hash:
            return IdempotencyClash(earlier.job_id)
    if hits == len(texts):
        metrics.ANSWERED_CACHED.inc()
        return Scored(None, encoded)

    known = [json.loads(prediction) if prediction is not None else None for prediction in encoded]
    jobs = services.stores.jobs
    enqueued = None
    if earlier is not None and earlier.job_id:
        job_id = earlier.job_id
        record = jobs.get(job_id)
        if record is not None and record.status.is_final:
            return Scored(record.predictions) if record.status == JobStatus.DONE else Failed(job_id, record.error)
    else:
        enqueued = enqueue_job(services, texts, known, deadline_s, owner)
        if isinstance(enqueued, QueueFull):
            if idempotency is not None and earlier is None:
                claims.release(idempotency.use)
            return enqueued
        job_id = enqueued.job_id
        if idempotency is not None:
            claims.point_to(idempotency.use, idempotency.body_hash, job_id)
    started = time.perf_counter()
    results = jobs.wait_for_results(services.blocking_redis, job_id, settings.sync_wait_s if wait_s is None else wait_s)
    metrics.JOB_WAIT_SECONDS.observe(time.perf_counter() - started)
    if results is not None and enqueued is not None:
        metrics.ANSWERED_SYNC.inc()
        return Scored(merged_predictions(enqueued.slots, results, enqueued.texts))
    record = jobs.get(job_id)
    if record is not None and record.status == JobStatus.DONE:  # ended just after the wait, or another request's job
        metrics.ANSWERED_SYNC.inc()
        return Scored(record.predictions)
    if record is not None and record.status == JobStatus.FAILED:
        metrics.ANSWERED_FAILED.inc()
        return Failed(job_id, record.error)
    metrics.ANSWERED_ASYNC.inc()
    return Pending(job_id, record.status if record else JobStatus.QUEUED)


def cached_predictions(services: Services, model_identity: str, texts: list[str]) -> list[str | None]:
    """Each text's cached prediction, as JSON: from this process's hot cache, else from Redis (then kept hot)."""
    known = services.hot_cache.lookup(model_identity, texts)
    missing = [index for index, prediction in enumerate(known) if prediction is None]
    if missing:
        from_redis = services.stores.cache.lookup_encoded(model_identity, [texts[index] for index in missing])
        for index, prediction in zip(missing, from_redis):
            known[index] = prediction
        services.hot_cache.store(model_identity, [texts[index] for index in missing], from_redis)
    return known


def enqueue_job(services: Services, texts: list[str], known: list, deadline_s: float | None, owner: str) -> NewJob | QueueFull:
    """Record ``owner``'s job for the request and queue its distinct uncached texts; the job, or QueueFull.

    A job whose publish fails leaves nothing behind: its record goes and its budgets come back.
    """
    settings = services.settings
    budgets = services.memory.budgets()
    if budgets.high_water_refusal is not None:
        return QueueFull(budgets.high_water_refusal)
    now = time.time()
    deadline = now + (deadline_s or settings.job_deadline_s)
    job = new_job(new_job_id(), texts, known, deadline, owner)
    refused = services.stores.jobs.enqueue(job, settings.max_queued_texts, budgets.queued_bytes)
    if refused is not None:
        return QueueFull(refused)
    try:
        services.dispatcher.send(QueuedJob(job.job_id, job.texts, deadline, now, positional_results=True))
    except Exception:
        with contextlib.suppress(*UNAVAILABLE_ERRORS):
            services.stores.jobs.abandon(job.job_id)
        raise
    return job


def owned_job(services: Services, owner: str, job_id: str) -> JobRecord | None:
    """The owner's /predict job record; None when unknown, expired, or another owner's (all alike)."""
    record = services.stores.jobs.get(job_id) if is_job_id(job_id) else None
    return record if record is not None and record.owner == owner else None
