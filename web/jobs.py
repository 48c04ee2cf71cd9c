"""The /jobs routes over HTTP: a job's status (of /predict or bulk), and bulk jobs' submit, list, results, cancel, delete.

HTTP only: the protocols are ``web.scoring`` (/predict jobs) and ``web.bulk_jobs`` (bulk jobs).
"""

import threading

from flask import Response, request, stream_with_context

from common.jobs import JobStatus
from common.store import JobRecord
from web import bulk_jobs, scoring
from web.bulk_jobs import AlreadyEnded, JobList, KeyClash, Refused, ResultLines, ResultsPage, Status, Unknown
from web.errors import Conflict, IdempotencyConflict, Overloaded
from web.job_body import JobBody, check_utf8, parse_json_body, parse_ndjson_body
from web.parsing import ApiBlueprint, IdempotencyHeaderSchema, read_large_body
from web.responses import ERROR, JOB_LINK, RETRY_AFTER_HEADER, job_accepted, job_not_found, json_response, needs_key
from web.schemas import (
    BulkJobAcceptedSchema,
    BulkResultsSchema,
    JobListQuerySchema,
    JobListSchema,
    JobStatusSchema,
    ResultsQuerySchema,
    bulk_job_schema,
)
from web.security import current_owner
from web.services import services

NDJSON = "application/x-ndjson"
JOB_OPTIONS = ("callback_url", "metadata")
# How long a submission waits for one of its web process's JOB_SUBMISSIONS_PER_PROCESS slots before 429.
SUBMISSION_SLOT_WAIT_S = 10


def predict_job_view(record: JobRecord) -> dict:
    """The public fields of a /predict job record."""
    view = {"job_id": record.job_id, "status": record.status.value}
    if record.status == JobStatus.DONE:
        view["predictions"] = record.predictions
    elif record.status == JobStatus.FAILED:
        view["error"] = record.error.value
    return view


def read_job_body(settings, options_schema) -> JobBody:
    """The POST /jobs body, parsed within its bounds: JSON ({"text": [...], ...}) or NDJSON (a text per line)."""
    raw = read_large_body(request, ("application/json", NDJSON), settings.max_job_body_bytes, "MAX_JOB_BODY_BYTES")
    check_utf8(raw)
    parse = parse_json_body if request.mimetype == "application/json" else parse_ndjson_body
    return parse(raw, options_schema, JOB_OPTIONS)


def create_jobs_blueprint(settings) -> ApiBlueprint:
    blp = ApiBlueprint("jobs", __name__, description="Jobs: following /predict's, and bulk jobs of up to MAX_JOB_TEXTS texts.")
    options_schema = bulk_job_schema(settings)()
    keyed = needs_key(settings)
    submission_slots = threading.BoundedSemaphore(settings.job_submissions_per_process)

    def unknown(job_id: str):
        return job_not_found(job_id, settings.job_ttl_s)

    @blp.route("/jobs/<job_id>", methods=["GET"])
    @blp.doc(operationId="get_jobs_job_id", **keyed)
    @blp.alt_response(200, schema=JobStatusSchema, description="The job's status, and its predictions when done.", success=True)
    @blp.alt_response(404, description="Unknown or expired job, or another key's.", **ERROR)
    @blp.alt_response(503, headers=RETRY_AFTER_HEADER, description="Redis unavailable.", **ERROR)
    def job_status(job_id):
        """Poll a job: a /predict job's status and predictions, or a bulk job's progress."""
        owner = current_owner()
        record = scoring.owned_job(services(), owner.name, job_id)
        if record is not None:
            return json_response(predict_job_view(record))
        match bulk_jobs.status(services(), owner, job_id):  # another owner's job answers exactly as an unknown one
            case Status(view):
                return json_response(view)
            case Unknown():
                raise unknown(job_id)

    @blp.route("/jobs", methods=["GET"])
    @blp.doc(**keyed)
    @blp.arguments(JobListQuerySchema, location="query", as_kwargs=True)
    @blp.alt_response(200, schema=JobListSchema, description="The caller's bulk jobs, newest first.", success=True)
    @blp.alt_response(503, description="Redis unavailable.", **ERROR)
    def list_jobs(limit=20, after=None, status=None):
        """List your own bulk jobs, newest first; page with ``after`` (the last job_id of a page)."""
        page: JobList = bulk_jobs.list_jobs(services(), current_owner(), after, limit, status)
        first, last = (page.views[0]["job_id"], page.views[-1]["job_id"]) if page.views else (None, None)
        return json_response({"data": page.views, "first_id": first, "last_id": last, "has_more": page.has_more})

    @blp.route("/jobs", methods=["POST"])
    @blp.doc(
        requestBody={
            "required": True,
            "content": {
                "application/json": {"schema": bulk_job_schema(settings)},
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
        responses={"202": {"links": {"GetJob": JOB_LINK}}},
        **keyed,
    )
    @blp.arguments(IdempotencyHeaderSchema, location="headers", as_kwargs=True)
    @blp.alt_response(202, schema=BulkJobAcceptedSchema, description="Queued: follow status_url.", success=True)
    @blp.alt_response(400, description="Body not JSON/NDJSON (a bad line is named), or not UTF-8.", **ERROR)
    @blp.alt_response(401, description="Missing or invalid X-API-Key (when keys are on).", **ERROR)
    @blp.alt_response(409, description="Idempotency-Key used with another body.", **ERROR)
    @blp.alt_response(413, description="Body over MAX_JOB_BODY_BYTES.", **ERROR)
    @blp.alt_response(415, description="Content-Type neither application/json nor application/x-ndjson.", **ERROR)
    @blp.alt_response(422, description="Texts, callback_url or metadata invalid.", **ERROR)
    @blp.alt_response(429, headers=RETRY_AFTER_HEADER, description="A queue budget is full; details.limit names it.", **ERROR)
    @blp.alt_response(503, headers=RETRY_AFTER_HEADER, description="Redis unavailable or full.", **ERROR)
    def submit(idempotency_key=None):
        """Submit a bulk job (JSON {"text": [...]}, or NDJSON: one JSON string per line)."""
        # Each body being parsed holds about twice its size in memory: a few at a time per process.
        if not submission_slots.acquire(timeout=SUBMISSION_SLOT_WAIT_S):
            raise Overloaded(
                f"this web process is parsing JOB_SUBMISSIONS_PER_PROCESS ({settings.job_submissions_per_process})"
                " job bodies already; retry later",
                details={"limit": "JOB_SUBMISSIONS_PER_PROCESS"},
                headers={"Retry-After": "5"},
            )
        try:
            body = read_job_body(settings, options_schema)
            outcome = bulk_jobs.submit(services(), current_owner(), body, options_schema, idempotency_key)
        finally:
            submission_slots.release()
        match outcome:
            case bulk_jobs.Accepted(job_id, status, total):
                return job_accepted(job_id, status.value, total=total)
            case KeyClash(job_id):
                raise IdempotencyConflict("this Idempotency-Key was used with another body", details={"job_id": job_id})
            case Refused(refusal):
                raise Overloaded.because(refusal, retry_after_s=10)

    @blp.route("/jobs/<job_id>/results", methods=["GET"])
    @blp.doc(**keyed)
    @blp.arguments(ResultsQuerySchema, location="query", as_kwargs=True)
    @blp.alt_response(
        200,
        schema=BulkResultsSchema,
        description="A page of results; with Accept: application/x-ndjson, every result, one JSON line per text.",
        success=True,
    )
    @blp.alt_response(404, description="Unknown, deleted or expired job, or another key's.", **ERROR)
    @blp.alt_response(503, description="Redis unavailable.", **ERROR)
    def results(job_id, offset=0, limit=1000):
        """A bulk job's results in input order, null where not scored yet."""
        if request.accept_mimetypes.best_match(["application/json", NDJSON]) == NDJSON:
            outcome = bulk_jobs.result_lines(services(), current_owner(), job_id)
        else:
            outcome = bulk_jobs.results_page(services(), current_owner(), job_id, offset, limit)
        match outcome:
            case ResultsPage(predictions, offset, limit, total, following):
                page = {"predictions": predictions, "offset": offset, "limit": limit, "total": total, "next": following}
                return json_response(page)
            case ResultLines(lines):
                # X-Accel-Buffering: a proxy in front (nginx) passes lines on as they come.
                return Response(stream_with_context(lines), mimetype=NDJSON, headers={"X-Accel-Buffering": "no"})
            case Unknown():
                raise unknown(job_id)

    @blp.route("/jobs/<job_id>/cancel", methods=["POST"])
    @blp.doc(**keyed)
    @blp.alt_response(202, schema=JobStatusSchema, description="Cancelled: chunks not started are never computed.", success=True)
    @blp.alt_response(404, description="Unknown, deleted or expired job, or another key's.", **ERROR)
    @blp.alt_response(409, description="The job has already ended (done, failed or cancelled).", **ERROR)
    @blp.alt_response(503, description="Redis unavailable.", **ERROR)
    def cancel(job_id):
        """Cancel a bulk job."""
        match bulk_jobs.cancel(services(), current_owner(), job_id):
            case Status(view):
                return json_response(view, 202)
            case AlreadyEnded():
                raise Conflict(f"job {job_id} has already ended", details={"job_id": job_id})
            case Unknown():
                raise unknown(job_id)

    @blp.route("/jobs/<job_id>", methods=["DELETE"])
    @blp.doc(**keyed)
    @blp.alt_response(204, description="Deleted (cancelled first if it ran): GET answers 404 from now on.", success=True)
    @blp.alt_response(404, description="Unknown, deleted or expired job, or another key's.", **ERROR)
    @blp.alt_response(503, description="Redis unavailable.", **ERROR)
    def delete(job_id):
        """Delete a bulk job and its results."""
        match bulk_jobs.delete(services(), current_owner(), job_id):
            case bulk_jobs.Deleted():
                return "", 204
            case Unknown():
                raise unknown(job_id)

    return blp
