"""Bulk jobs over HTTP: POST /jobs, GET /jobs/<id>/results, POST /jobs/<id>/cancel, DELETE /jobs/<id>.

GET /jobs/<id> (web.predict) answers for bulk jobs too. The Redis side is ``common.store.bulk``;
the workers' side ``worker.bulk``.
"""

import contextlib
import json
import logging
import re
import threading

from flask import Response, request, stream_with_context
from marshmallow import ValidationError as MarshmallowValidationError

from common.celery_app import publish_bulk_chunks
from common.jobs import BulkStatus, is_job_id, new_job_id
from common.store.bulk import DELETED, STORING, BulkLimits, NewBulkJob, chunk_bounds, status_view
from common.store.idempotency import KeyUse, job_body_hash
from common.webhooks import CallbackRefused, check_callback_url
from web import metrics
from web.errors import (
    UNAVAILABLE_ERRORS,
    Conflict,
    IdempotencyConflict,
    NotFound,
    Overloaded,
    ValidationFailed,
)
from web.job_body import JobBody, check_utf8, parse_json_body, parse_ndjson_body
from web.keys import Owner
from web.parsing import ApiBlueprint, IdempotencyHeaderSchema, read_large_body
from web.predict import job_accepted, json_response
from web.schemas import (
    CALLBACK_URL_PATTERN,
    MAX_CALLBACK_URL_CHARS,
    MAX_METADATA_CHARS,
    MAX_METADATA_ENTRIES,
    BulkJobAcceptedSchema,
    BulkResultsSchema,
    ErrorSchema,
    JobListQuerySchema,
    JobListSchema,
    JobStatusSchema,
    ResultsQuerySchema,
    bulk_job_schema,
    reject_unsafe_characters,
)
from web.security import API_KEY_SCHEME, current_owner
from web.services import services

log = logging.getLogger(__name__)

NDJSON = "application/x-ndjson"
JOB_OPTIONS = ("callback_url", "metadata")
# How long a submission waits for one of its web process's JOB_SUBMISSIONS_PER_PROCESS slots before 429.
SUBMISSION_SLOT_WAIT_S = 10


def read_job_body(settings) -> JobBody:
    """The POST /jobs body, parsed within its bounds: JSON ({"text": [...], ...}) or NDJSON (a text per line)."""
    raw = read_large_body(request, ("application/json", NDJSON), settings.max_job_body_bytes, "MAX_JOB_BODY_BYTES")
    check_utf8(raw)
    parse = parse_json_body if request.mimetype == "application/json" else parse_ndjson_body
    return parse(raw, settings, JOB_OPTIONS)


def check_options(callback_url, metadata, settings) -> None:
    if metadata is not None:
        if (
            not isinstance(metadata, dict)
            or len(metadata) > MAX_METADATA_ENTRIES
            or not all(isinstance(value, str) and len(value) <= MAX_METADATA_CHARS for value in metadata.values())
            or not all(len(key) <= MAX_METADATA_CHARS for key in metadata)
        ):
            raise ValidationFailed(
                "request is invalid",
                details={
                    "metadata": [
                        f"A flat object of at most {MAX_METADATA_ENTRIES} string values"
                        f" of at most {MAX_METADATA_CHARS} characters."
                    ]
                },
            )
        # The texts' character rules: metadata is shown back in status views, webhooks and logs.
        problems = {}
        for key, value in metadata.items():
            for checked in (key, value):
                try:
                    reject_unsafe_characters(checked)
                except MarshmallowValidationError as error:
                    problems[key.encode("utf-8", "backslashreplace").decode()] = error.messages
        if problems:
            raise ValidationFailed("request is invalid", details={"metadata": problems})
    if callback_url is not None:
        if not isinstance(callback_url, str) or len(callback_url) > MAX_CALLBACK_URL_CHARS:
            raise ValidationFailed("request is invalid", details={"callback_url": ["Not a valid URL."]})
        if not re.fullmatch(CALLBACK_URL_PATTERN, callback_url):
            raise ValidationFailed(
                "request is invalid", details={"callback_url": [f"Not an http(s) URL of the form {CALLBACK_URL_PATTERN}."]}
            )
        if not settings.webhook_secret:
            raise ValidationFailed(
                "request is invalid", details={"callback_url": ["Webhooks are off: the service has no WEBHOOK_SECRET."]}
            )
        try:
            check_callback_url(callback_url, bool(settings.webhook_allow_private))
        except CallbackRefused as error:
            raise ValidationFailed("request is invalid", details={"callback_url": [str(error)]}) from None


def not_found(job_id: str) -> NotFound:
    return NotFound(f"no job {job_id!r}: unknown, deleted, or expired after {services().settings.job_ttl_s}s")


def found(job_id: str) -> dict:
    """The caller's job; another owner's answers 404 exactly as an unknown one."""
    record = services().stores.bulk.get(job_id, current_owner().name) if is_job_id(job_id) else None
    if record is None:
        raise not_found(job_id)
    return record


def create_bulk_blueprint(settings) -> ApiBlueprint:
    blp = ApiBlueprint("bulk", __name__, description="Bulk jobs: up to MAX_JOB_TEXTS texts, followed, paged, cancelled.")
    request_schema = bulk_job_schema(settings)
    error = {"schema": ErrorSchema}
    needs_key = {"security": [{API_KEY_SCHEME: []}]} if settings.api_keys_enabled else {}
    job_link = {"operationId": "get_jobs_job_id", "parameters": {"job_id": "$response.body#/job_id"}}
    submission_slots = threading.BoundedSemaphore(settings.job_submissions_per_process)

    @blp.route("/jobs", methods=["GET"])
    @blp.doc(**needs_key)
    @blp.arguments(JobListQuerySchema, location="query", as_kwargs=True)
    @blp.alt_response(200, schema=JobListSchema, description="The caller's bulk jobs, newest first.", success=True)
    @blp.alt_response(503, description="Redis unavailable.", **error)
    def list_jobs(limit=20, after=None, status=None):
        """List your own bulk jobs, newest first; page with ``after`` (the last job_id of a page)."""
        page = services().stores.bulk.jobs_of(current_owner().name, after, limit, status)
        views = [status_view(job_id, record) for job_id, record in page.records]
        return json_response(
            {
                "data": views,
                "first_id": views[0]["job_id"] if views else None,
                "last_id": views[-1]["job_id"] if views else None,
                "has_more": page.has_more,
            }
        )

    @blp.route("/jobs", methods=["POST"])
    @blp.doc(
        requestBody={
            "required": True,
            "content": {
                "application/json": {"schema": request_schema},
                NDJSON: {
                    "schema": {
                        "type": "string",
                        "description": (
                            "One JSON string (a text) per line. The first line may instead be an object "
                            'with the job\'s options: {"callback_url": ..., "metadata": ...}.'
                        ),
                    }
                },
            },
        },
        responses={"202": {"links": {"GetJob": job_link}}},
        **needs_key,
    )
    @blp.arguments(IdempotencyHeaderSchema, location="headers", as_kwargs=True)
    @blp.alt_response(202, schema=BulkJobAcceptedSchema, description="Queued: follow status_url.", success=True)
    @blp.alt_response(400, description="Body not JSON/NDJSON (a bad line is named), or not UTF-8.", **error)
    @blp.alt_response(401, description="Missing or invalid X-API-Key (when keys are on).", **error)
    @blp.alt_response(409, description="Idempotency-Key used with another body.", **error)
    @blp.alt_response(413, description="Body over MAX_JOB_BODY_BYTES.", **error)
    @blp.alt_response(415, description="Content-Type neither application/json nor application/x-ndjson.", **error)
    @blp.alt_response(422, description="Texts, callback_url or metadata invalid.", **error)
    @blp.alt_response(429, description="Bulk texts queued plus these would pass MAX_QUEUED_BULK_TEXTS.", **error)
    @blp.alt_response(503, description="Redis unavailable.", **error)
    def submit(idempotency_key=None):
        """Submit a bulk job (JSON {"text": [...]}, or NDJSON: one JSON string per line)."""
        # Each body being parsed holds about its size in memory: a few at a time per process.
        if not submission_slots.acquire(timeout=SUBMISSION_SLOT_WAIT_S):
            raise Overloaded(
                f"this web process is parsing JOB_SUBMISSIONS_PER_PROCESS ({settings.job_submissions_per_process})"
                " job bodies already; retry later",
                details={"limit": "JOB_SUBMISSIONS_PER_PROCESS"},
                headers={"Retry-After": "5"},
            )
        try:
            return submit_job(services(), read_job_body(settings), idempotency_key)
        finally:
            submission_slots.release()

    @blp.route("/jobs/<job_id>/results", methods=["GET"])
    @blp.doc(**needs_key)
    @blp.arguments(ResultsQuerySchema, location="query", as_kwargs=True)
    @blp.alt_response(
        200,
        schema=BulkResultsSchema,
        description="A page of results; with Accept: application/x-ndjson, every result, one JSON line per text.",
        success=True,
    )
    @blp.alt_response(404, description="Unknown, deleted or expired job.", **error)
    @blp.alt_response(503, description="Redis unavailable.", **error)
    def results(job_id, offset=0, limit=1000):
        """A bulk job's results in input order, null where not scored yet."""
        store = services().stores.bulk
        record = found(job_id)
        if request.accept_mimetypes.best_match(["application/json", NDJSON]) == NDJSON:
            return stream_results(store, record, job_id)
        total = int(record["total"])
        page = store.results(record, job_id, offset, limit)
        following = offset + limit if offset + limit < total else None
        return json_response({"predictions": page, "offset": offset, "limit": limit, "total": total, "next": following})

    @blp.route("/jobs/<job_id>/cancel", methods=["POST"])
    @blp.doc(**needs_key)
    @blp.alt_response(202, schema=JobStatusSchema, description="Cancelled: chunks not started are never computed.", success=True)
    @blp.alt_response(404, description="Unknown, deleted or expired job.", **error)
    @blp.alt_response(409, description="The job has already ended (done, failed or cancelled).", **error)
    @blp.alt_response(503, description="Redis unavailable.", **error)
    def cancel(job_id):
        """Cancel a bulk job."""
        svc = services()
        outcome = svc.stores.bulk.cancel(job_id, current_owner().name) if is_job_id(job_id) else -1
        if outcome == -1:
            raise not_found(job_id)
        if outcome == 0:
            raise Conflict(f"job {job_id} has already ended", details={"job_id": job_id})
        record = found(job_id)
        metrics.BULK_JOBS_CANCELLED.inc()
        return json_response(status_view(job_id, record), 202)

    @blp.route("/jobs/<job_id>", methods=["DELETE"])
    @blp.doc(**needs_key)
    @blp.alt_response(204, description="Deleted (cancelled first if it ran): GET answers 404 from now on.", success=True)
    @blp.alt_response(404, description="Unknown, deleted or expired job.", **error)
    @blp.alt_response(503, description="Redis unavailable.", **error)
    def delete(job_id):
        """Delete a bulk job and its results."""
        if not is_job_id(job_id) or services().stores.bulk.delete(job_id, current_owner().name) == -1:
            raise not_found(job_id)
        return "", 204

    return blp


def submit_job(svc, body: JobBody, key: str | None):
    """Store and queue a checked job body for the caller; the 202, or the earlier job of a retried Idempotency-Key.

    A submission that fails part way (Redis full or away, a publish failing) leaves nothing
    behind: no job, no budget held, no Idempotency-Key bound to a job that does not exist.
    """
    settings = svc.settings
    owner = current_owner()
    check_options(body.callback_url, body.metadata, settings)
    total = len(body.texts)
    job_id = new_job_id()
    claims = svc.stores.idempotency
    use = KeyUse("jobs", owner.name, key) if key is not None else None
    if use is not None:
        hashed = job_body_hash(body.texts, body.callback_url, body.metadata)
        claim = claims.claim(use, hashed, job_id)
        if claim is not None:
            if claim.body_hash != hashed:
                raise IdempotencyConflict("this Idempotency-Key was used with another body", details={"job_id": claim.job_id})
            state = svc.stores.bulk.status(claim.job_id)
            if state not in (None, DELETED):  # the first request's job, stored or still being stored
                return job_accepted(claim.job_id, BulkStatus.QUEUED if state == STORING else state, total=total)
            # Deleted since, or never stored (its submission failed): this retry makes a new job.
            claims.point_to(use, hashed, job_id)
    try:
        budgets = svc.memory.budgets()
        refusal = budgets.high_water_refusal or svc.stores.bulk.create(
            NewBulkJob(job_id, body.texts, settings.bulk_chunk_texts, body.metadata, body.callback_url, owner.name),
            bulk_limits(settings, budgets, owner),
        )
        if refusal is not None:
            raise Overloaded.because(refusal, retry_after_s=10)
        try:
            publish_bulk_chunks(svc.celery, settings, job_id, chunk_bounds(total, settings.bulk_chunk_texts), owner.name)
        except Exception:
            svc.stores.bulk.abandon(job_id)
            raise
    except Exception:
        if use is not None:
            with contextlib.suppress(*UNAVAILABLE_ERRORS):
                claims.release_if_bound_to(use, job_id)
        raise
    metrics.BULK_TEXTS_QUEUED.inc(total)
    metrics.owner_texts(owner.name, "jobs").inc(total)
    log.info("bulk job %s of %s: %d texts", job_id, owner.name, total)
    return job_accepted(job_id, BulkStatus.QUEUED, total=total)


def bulk_limits(settings, budgets, owner: Owner) -> BulkLimits:
    """What the owner's new bulk job may add: the totals, and the owner's own cap (its key's, else the default)."""
    own_cap = owner.max_queued_bulk_texts
    return BulkLimits(
        max_texts=settings.max_queued_bulk_texts,
        max_bytes=budgets.bulk_queued_bytes,
        owner_max_texts=own_cap or settings.max_queued_bulk_texts_per_key,
        owner_cap_setting="API_KEYS_FILE max_queued_bulk_texts" if own_cap else "MAX_QUEUED_BULK_TEXTS_PER_KEY",
        deadline_s=settings.bulk_job_deadline_s,
    )


def stream_results(store, record: dict, job_id: str) -> Response:
    """Every result as NDJSON ({"index", "predictions"} per line), read from Redis a few chunks at a time."""

    def lines():
        for index, prediction in store.iter_results(record, job_id):
            yield json.dumps({"index": index, "predictions": prediction}) + "\n"

    # X-Accel-Buffering: a proxy in front (nginx) passes lines on as they come.
    return Response(stream_with_context(lines()), mimetype=NDJSON, headers={"X-Accel-Buffering": "no"})
