"""Bulk jobs over HTTP: POST /jobs, GET /jobs/<id>/results, POST /jobs/<id>/cancel, DELETE /jobs/<id>.

GET /jobs/<id> (web.predict) answers for bulk jobs too. The Redis side is ``common.store.bulk``;
the workers' side ``worker.bulk``.
"""

import json
import re

from flask import Response, g, request, stream_with_context
from marshmallow import ValidationError as MarshmallowValidationError

from common.celery_app import WEBHOOK_TASK, publish_bulk_chunks
from common.jobs import is_job_id, new_job_id
from common.store.bulk import status_view
from common.store.idempotency import body_hash
from common.webhooks import CallbackRefused, check_callback_url
from web import metrics
from web.errors import (
    Conflict,
    IdempotencyConflict,
    NotFound,
    Overloaded,
    ValidationFailed,
)
from web.parsing import ApiBlueprint, IdempotencyHeaderSchema, load_json, read_text_body
from web.predict import job_accepted, json_response
from web.schemas import (
    CALLBACK_URL_PATTERN,
    MAX_CALLBACK_URL_CHARS,
    MAX_METADATA_CHARS,
    MAX_METADATA_ENTRIES,
    BulkJobAcceptedSchema,
    BulkResultsSchema,
    ErrorSchema,
    JobStatusSchema,
    ResultsQuerySchema,
    bulk_job_schema,
    reject_unsafe_characters,
)
from web.security import API_KEY_SCHEME
from web.services import services

NDJSON = "application/x-ndjson"
# Per-text problems reported at once; past these, the client has a file to fix, not a typo.
MAX_REPORTED_PROBLEMS = 20


def read_body(settings) -> tuple[str, str]:
    """The body, decoded, and its media type; POST /jobs has a limit of its own, MAX_JOB_BODY_BYTES."""
    request.max_content_length = settings.max_job_body_bytes
    g.body_limit_setting = "MAX_JOB_BODY_BYTES"  # for werkzeug's own 413 (web.errors)
    return read_text_body(request, ("application/json", NDJSON), "MAX_JOB_BODY_BYTES"), request.mimetype


JOB_OPTIONS = ("callback_url", "metadata")


def refuse_unknown_or_null_fields(document: dict, allowed: set[str]) -> None:
    """422 for a field the job body does not know, or an option sent as null (omit it instead)."""
    unknown = set(document) - allowed
    if unknown:
        raise ValidationFailed("request is invalid", details={name: ["Unknown field."] for name in sorted(unknown)})
    for name in JOB_OPTIONS:
        if name in document and document[name] is None:
            raise ValidationFailed("request is invalid", details={name: ["Field may not be null."]})


def parse_json_job(body: str) -> tuple[list, object, object, list[int] | None]:
    """(texts, callback_url, metadata, None) of a JSON body: problems are named by index."""
    document = load_json(body)
    if not isinstance(document, dict):
        raise ValidationFailed("request is invalid", details={"_schema": ["Invalid input type."]})
    refuse_unknown_or_null_fields(document, {"text", *JOB_OPTIONS})
    if "text" not in document:
        raise ValidationFailed("request is invalid", details={"text": ["Missing data for required field."]})
    if not isinstance(document["text"], list):
        raise ValidationFailed("request is invalid", details={"text": ["Not a valid list."]})
    return document["text"], document.get("callback_url"), document.get("metadata"), None


def parse_ndjson_job(body: str) -> tuple[list, object, object, list[int]]:
    """(texts, callback_url, metadata, each text's line number) of an NDJSON body: one JSON string per line.

    A first line that holds an object instead of a string carries the job's options
    (``{"callback_url": ..., "metadata": ...}``), as a JSON body's fields would; it is not a text.
    """
    texts, line_numbers = [], []
    options: dict = {}
    first_line = True
    for number, line in enumerate(body.split("\n"), start=1):
        if not line.strip():
            continue
        value = load_json(line, f"line {number}", {"line": number})
        if first_line and isinstance(value, dict):
            refuse_unknown_or_null_fields(value, set(JOB_OPTIONS))
            options = value
        else:
            line_numbers.append(number)
            texts.append(value)
        first_line = False
    return texts, options.get("callback_url"), options.get("metadata"), line_numbers


def check_texts(texts: list, settings, line_numbers: list[int] | None) -> None:
    """Every text under /predict's rules; problems named by index (JSON: details.text) or line (NDJSON: details.lines)."""
    if not 1 <= len(texts) <= settings.max_job_texts:
        raise ValidationFailed(
            "request is invalid", details={"text": [f"Length must be between 1 and {settings.max_job_texts}."]}
        )
    problems: dict[str, list[str]] = {}
    for index, text in enumerate(texts):
        if len(problems) >= MAX_REPORTED_PROBLEMS:
            break
        if not isinstance(text, str):
            problem = "Not a valid string."
        elif len(text) > settings.max_text_chars:
            problem = f"Longer than maximum length {settings.max_text_chars}."
        else:
            try:
                reject_unsafe_characters(text)
                continue
            except MarshmallowValidationError as error:
                problem = error.messages[0]
        problems[str(line_numbers[index] if line_numbers else index)] = [problem]
    if problems:
        raise ValidationFailed("request is invalid", details={"lines" if line_numbers else "text": problems})


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
    record = services().stores.bulk.get(job_id) if is_job_id(job_id) else None
    if record is None:
        raise not_found(job_id)
    return record


def create_bulk_blueprint(settings) -> ApiBlueprint:
    blp = ApiBlueprint("bulk", __name__, description="Bulk jobs: up to MAX_JOB_TEXTS texts, followed, paged, cancelled.")
    request_schema = bulk_job_schema(settings)
    error = {"schema": ErrorSchema}
    needs_key = {"security": [{API_KEY_SCHEME: []}]} if settings.api_keys_enabled else {}
    job_link = {"operationId": "get_jobs_job_id", "parameters": {"job_id": "$response.body#/job_id"}}

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
        svc = services()
        key = idempotency_key
        body, media_type = read_body(settings)
        texts, callback_url, metadata, line_numbers = (
            parse_json_job(body) if media_type == "application/json" else parse_ndjson_job(body)
        )
        check_texts(texts, settings, line_numbers)
        check_options(callback_url, metadata, settings)
        job_id = new_job_id()
        if key is not None:
            hashed = body_hash({"text": texts, "callback_url": callback_url, "metadata": metadata})
            claim = svc.stores.idempotency.claim("jobs", key, hashed, job_id)
            if claim is not None:
                if claim.body_hash != hashed:
                    raise IdempotencyConflict("this Idempotency-Key was used with another body", details={"job_id": claim.job_id})
                state = svc.stores.bulk.status(claim.job_id)
                if state != "deleted":  # None: the first request is still storing it
                    return job_accepted(claim.job_id, state or "queued", total=len(texts))
                # Deleted since: there is no job to return, so this retry makes a new one.
                svc.stores.idempotency.point_to("jobs", key, hashed, job_id)
        if not svc.stores.bulk.create(
            job_id, texts, settings.bulk_chunk_texts, settings.max_queued_bulk_texts, metadata, callback_url
        ):
            if key is not None:
                svc.stores.idempotency.release("jobs", key)
            raise Overloaded(
                f"bulk texts queued plus this job's {len(texts)} would pass MAX_QUEUED_BULK_TEXTS"
                f" ({settings.max_queued_bulk_texts}); retry later",
                headers={"Retry-After": "10"},
            )
        size = settings.bulk_chunk_texts
        chunks = [(start, min(len(texts), start + size)) for start in range(0, len(texts), size)]
        try:
            publish_bulk_chunks(svc.celery, settings, job_id, chunks)
        except Exception:
            svc.stores.bulk.abandon(job_id)
            if key is not None:
                svc.stores.idempotency.release("jobs", key)
            raise
        metrics.BULK_TEXTS_QUEUED.inc(len(texts))
        return job_accepted(job_id, "queued", total=len(texts))

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
        outcome = svc.stores.bulk.cancel(job_id) if is_job_id(job_id) else -1
        if outcome == -1:
            raise not_found(job_id)
        if outcome == 0:
            raise Conflict(f"job {job_id} has already ended", details={"job_id": job_id})
        record = found(job_id)
        metrics.BULK_JOBS_CANCELLED.inc()
        if record.get("callback_url"):
            svc.celery.send_task(WEBHOOK_TASK, args=[job_id, 0])
        return json_response(status_view(job_id, record), 202)

    @blp.route("/jobs/<job_id>", methods=["DELETE"])
    @blp.doc(**needs_key)
    @blp.alt_response(204, description="Deleted (cancelled first if it ran): GET answers 404 from now on.", success=True)
    @blp.alt_response(404, description="Unknown, deleted or expired job.", **error)
    @blp.alt_response(503, description="Redis unavailable.", **error)
    def delete(job_id):
        """Delete a bulk job and its results."""
        if not is_job_id(job_id) or services().stores.bulk.delete(job_id) == -1:
            raise not_found(job_id)
        return "", 204

    return blp


def stream_results(store, record: dict, job_id: str) -> Response:
    """Every result as NDJSON ({"index", "predictions"} per line), read from Redis a few chunks at a time."""

    def lines():
        for index, prediction in store.iter_results(record, job_id):
            yield json.dumps({"index": index, "predictions": prediction}) + "\n"

    # X-Accel-Buffering: a proxy in front (nginx) passes lines on as they come.
    return Response(stream_with_context(lines()), mimetype=NDJSON, headers={"X-Accel-Buffering": "no"})
