"""The protocol of bulk jobs, free of HTTP: submit, follow, page, stream, cancel, delete, list.

Like ``web.scoring`` for /predict, each function answers one of the typed outcomes below, and the
views (``web.jobs``) map them to HTTP. Every job belongs to its owner: another owner's job is
``Unknown``, exactly as one that never existed. The Redis side is ``common.store.bulk``; the
workers' side ``worker.bulk``.
"""

import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from marshmallow import ValidationError

from common.celery_app import publish_bulk_chunks
from common.jobs import BulkStatus, is_job_id, new_job_id
from common.store.backpressure import Refusal
from common.store.bulk import DELETED, STORING, BulkLimits, NewBulkJob, chunk_bounds, status_view
from common.store.idempotency import KeyUse, job_body_hash
from common.webhooks import CallbackRefused, check_callback_url
from web import metrics
from web.errors import UNAVAILABLE_ERRORS, ValidationFailed
from web.job_body import JobBody
from web.keys import Owner
from web.services import Services

log = logging.getLogger(__name__)

IDEMPOTENCY_ROUTE = "jobs"


@dataclass(frozen=True)
class Accepted:
    """The job is queued (or, for a retried Idempotency-Key, the earlier job is in this status)."""

    job_id: str
    status: BulkStatus
    total: int


@dataclass(frozen=True)
class Refused:
    """A budget refused the job; nothing was stored."""

    refusal: Refusal


@dataclass(frozen=True)
class KeyClash:
    """The owner used this Idempotency-Key with another body; ``job_id`` is that earlier job (the owner's own)."""

    job_id: str


@dataclass(frozen=True)
class Unknown:
    """No such job for this owner: unknown, deleted, expired, or someone else's."""

    job_id: str


@dataclass(frozen=True)
class AlreadyEnded:
    """Cancel of a job that is done, failed or cancelled."""

    job_id: str


@dataclass(frozen=True)
class Status:
    """A job's status view (what GET /jobs/<id> answers and its webhook carries)."""

    view: dict


@dataclass(frozen=True)
class ResultsPage:
    predictions: list
    offset: int
    limit: int
    total: int
    next: int | None


@dataclass(frozen=True)
class ResultLines:
    """Every result, one NDJSON line per text, read from Redis a few chunks at a time."""

    lines: Iterator[str]


@dataclass(frozen=True)
class Deleted:
    job_id: str


@dataclass(frozen=True)
class JobList:
    """A page of the owner's jobs, newest first."""

    views: list[dict]
    has_more: bool


def submit(services: Services, owner: Owner, body: JobBody, options_schema, key: str | None) -> Accepted | Refused | KeyClash:
    """Store and queue a job whose texts are checked; the options are checked here, by ``options_schema``.

    A submission that fails part way (Redis full or away, a publish failing) leaves nothing
    behind: no job, no budget held, no Idempotency-Key bound to a job that does not exist.
    """
    settings = services.settings
    check_options(body, options_schema, settings)
    total = len(body.texts)
    job_id = new_job_id()
    claims = services.stores.idempotency
    use = KeyUse(IDEMPOTENCY_ROUTE, owner.name, key) if key is not None else None
    if use is not None:
        hashed = job_body_hash(body.texts, body.callback_url, body.metadata)
        claim = claims.claim(use, hashed, job_id)
        if claim is not None:
            if claim.body_hash != hashed:
                return KeyClash(claim.job_id)
            state = services.stores.bulk.status(claim.job_id)
            if state not in (None, DELETED):  # the first request's job, stored or still being stored
                return Accepted(claim.job_id, BulkStatus.QUEUED if state == STORING else BulkStatus(state), total)
            # Deleted since, or never stored (its submission failed): this retry makes a new job.
            claims.point_to(use, hashed, job_id)
    try:
        budgets = services.memory.budgets()
        refusal = budgets.high_water_refusal or services.stores.bulk.create(
            NewBulkJob(job_id, body.texts, settings.bulk_chunk_texts, body.metadata, body.callback_url, owner.name),
            bulk_limits(settings, budgets.bulk_queued_bytes, owner),
        )
        if refusal is None:
            publish(services, job_id, total, owner)
    except Exception:
        if use is not None:
            with contextlib.suppress(*UNAVAILABLE_ERRORS):
                claims.release_if_bound_to(use, job_id)
        raise
    if refusal is not None:
        if use is not None:
            claims.release_if_bound_to(use, job_id)
        return Refused(refusal)
    metrics.BULK_TEXTS_QUEUED.inc(total)
    metrics.owner_texts(owner.name, "jobs").inc(total)
    log.info("bulk job %s of %s: %d texts", job_id, owner.name, total)
    return Accepted(job_id, BulkStatus.QUEUED, total)


def publish(services: Services, job_id: str, total: int, owner: Owner) -> None:
    """Send a stored job's chunks to its owner's queue and wait for the replicas; if that fails, the job goes."""
    chunks = chunk_bounds(total, services.settings.bulk_chunk_texts)
    try:
        publish_bulk_chunks(services.celery, services.settings, job_id, chunks, owner.name)
        services.replication.wait()
    except Exception:
        services.stores.bulk.abandon(job_id)
        raise


def check_options(body: JobBody, options_schema, settings) -> None:
    """The job's options under POST /jobs's schema (what OpenAPI documents), then the callback's addresses."""
    given = {"callback_url": body.callback_url, "metadata": body.metadata}
    options = {name: value for name, value in given.items() if value is not None}
    try:
        options_schema.load(options, partial=("text",))
    except ValidationError as error:
        raise ValidationFailed("request is invalid", details=error.normalized_messages()) from None
    if body.callback_url is not None:
        try:
            check_callback_url(body.callback_url, bool(settings.webhook_allow_private))
        except CallbackRefused as error:
            raise ValidationFailed("request is invalid", details={"callback_url": [str(error)]}) from None


def bulk_limits(settings, max_bytes: int, owner: Owner) -> BulkLimits:
    """What the owner's new job may add: the totals, and the owner's own cap (its key's, else the default)."""
    own_cap = owner.max_queued_bulk_texts
    return BulkLimits(
        max_texts=settings.max_queued_bulk_texts,
        max_bytes=max_bytes,
        owner_max_texts=own_cap or settings.max_queued_bulk_texts_per_key,
        owner_cap_setting="API_KEYS_FILE max_queued_bulk_texts" if own_cap else "MAX_QUEUED_BULK_TEXTS_PER_KEY",
        deadline_s=settings.bulk_job_deadline_s,
    )


def owned(services: Services, owner: Owner, job_id: str) -> dict | None:
    """The owner's job record, or None (unknown, deleted, expired, or another owner's)."""
    return services.stores.bulk.get(job_id, owner.name) if is_job_id(job_id) else None


def status(services: Services, owner: Owner, job_id: str) -> Status | Unknown:
    record = owned(services, owner, job_id)
    return Status(status_view(job_id, record)) if record is not None else Unknown(job_id)


def results_page(services: Services, owner: Owner, job_id: str, offset: int, limit: int) -> ResultsPage | Unknown:
    """Predictions of texts offset..offset+limit-1, in input order, None where not scored yet."""
    record = owned(services, owner, job_id)
    if record is None:
        return Unknown(job_id)
    total = int(record["total"])
    predictions = services.stores.bulk.results(record, job_id, offset, limit)
    return ResultsPage(predictions, offset, limit, total, offset + limit if offset + limit < total else None)


def result_lines(services: Services, owner: Owner, job_id: str) -> ResultLines | Unknown:
    record = owned(services, owner, job_id)
    if record is None:
        return Unknown(job_id)
    pairs = services.stores.bulk.iter_results(record, job_id)
    return ResultLines(json.dumps({"index": index, "predictions": prediction}) + "\n" for index, prediction in pairs)


def cancel(services: Services, owner: Owner, job_id: str) -> Status | AlreadyEnded | Unknown:
    """Cancel the owner's job: chunks not started are never computed, and its webhook (if any) is scheduled."""
    outcome = services.stores.bulk.cancel(job_id, owner.name) if is_job_id(job_id) else -1
    if outcome == 0:
        return AlreadyEnded(job_id)
    record = owned(services, owner, job_id) if outcome == 1 else None
    if record is None:
        return Unknown(job_id)
    metrics.BULK_JOBS_CANCELLED.inc()
    return Status(status_view(job_id, record))


def delete(services: Services, owner: Owner, job_id: str) -> Deleted | Unknown:
    """Delete the owner's job and its results, cancelling it first if it runs."""
    if not is_job_id(job_id) or services.stores.bulk.delete(job_id, owner.name) == -1:
        return Unknown(job_id)
    return Deleted(job_id)


def list_jobs(services: Services, owner: Owner, after: str | None, limit: int, of_status: str | None) -> JobList:
    page = services.stores.bulk.jobs_of(owner.name, after, limit, of_status)
    return JobList([status_view(job_id, record) for job_id, record in page.records], page.has_more)
