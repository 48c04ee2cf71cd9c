"""POST /predict and GET /jobs/<id>: HTTP only; the job protocol lives in ``web.scoring``."""

from flask import json

from common.jobs import JobStatus, is_job_id
from common.store import JobRecord
from common.store.bulk import status_view
from common.store.idempotency import KeyUse, body_hash
from web import metrics
from web.errors import IdempotencyConflict, JobFailed, NotFound, Overloaded
from web.parsing import ApiBlueprint, IdempotencyHeaderSchema
from web.schemas import ErrorSchema, JobAcceptedSchema, JobStatusSchema, PredictionsSchema, predict_schemas
from web.scoring import Failed, Idempotency, IdempotencyClash, Pending, QueueFull, Scored, score
from web.security import API_KEY_SCHEME, current_owner
from web.services import services

LOCATION_HEADER = {"Location": {"description": "Path of the job to poll.", "schema": {"type": "string"}}}
# Tells OpenAPI clients (and schemathesis' stateful phase) that a 202's job_id feeds GET /jobs/{job_id}.
JOB_LINK = {"operationId": "get_jobs_job_id", "parameters": {"job_id": "$response.body#/job_id"}}
IDEMPOTENCY_ROUTE = "predict"
RETRY_AFTER_HEADER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "string"}}}


def json_response(payload: dict, status: int = 200, headers: dict | None = None):
    return json.dumps(payload), status, {"Content-Type": "application/json", **(headers or {})}


def job_accepted(job_id: str, status: str, **extra):
    """202 for a job still to compute: its id, status and where to follow it (body and Location)."""
    status_url = f"/jobs/{job_id}"
    return json_response({"job_id": job_id, "status": status, "status_url": status_url, **extra}, 202, {"Location": status_url})


def job_view(record: JobRecord) -> dict:
    """The public fields of a job record."""
    view = {"job_id": record.job_id, "status": record.status.value}
    if record.status == JobStatus.DONE:
        view["predictions"] = record.predictions
    elif record.status == JobStatus.FAILED:
        view["error"] = record.error.value
    return view


def create_predict_blueprint(settings) -> ApiBlueprint:
    """Build the prediction endpoints, bounded by ``settings``."""
    blp = ApiBlueprint("predict", __name__, description="Sentiment scores, answered from cache or from a job.")
    request_schema, query_schema = predict_schemas(settings)
    error = {"schema": ErrorSchema}
    # With keys on, Swagger UI's "Try it out" must send X-API-Key (scheme declared in create_app).
    needs_key = {"security": [{API_KEY_SCHEME: []}]} if settings.api_keys_enabled else {}

    @blp.route("/predict", methods=["POST"])
    @blp.doc(responses={"202": {"links": {"GetJob": JOB_LINK}}}, **needs_key)
    @blp.arguments(IdempotencyHeaderSchema, location="headers", as_kwargs=True)
    @blp.arguments(query_schema, location="query", as_kwargs=True)
    @blp.arguments(request_schema, location="json")
    @blp.alt_response(200, schema=PredictionsSchema, description="Every text scored.", success=True)
    @blp.alt_response(
        202, schema=JobAcceptedSchema, headers=LOCATION_HEADER, description="Still computing: poll status_url.", success=True
    )
    @blp.alt_response(400, description="Body is not JSON, not UTF-8 or nested too deeply.", **error)
    @blp.alt_response(401, description="Missing or invalid X-API-Key (when keys are on).", **error)
    @blp.alt_response(409, description="Idempotency-Key used with another body.", **error)
    @blp.alt_response(413, description="Body over the size limit.", **error)
    @blp.alt_response(415, description="Content-Type is not application/json.", **error)
    @blp.alt_response(429, headers=RETRY_AFTER_HEADER, description="Queue full or rate limit passed.", **error)
    @blp.alt_response(503, headers=RETRY_AFTER_HEADER, description="Redis unavailable, or the job expired or failed.", **error)
    def predict(body, wait=None, deadline=None, idempotency_key=None):
        """Score texts as NEGATIVE/POSITIVE."""
        key = idempotency_key
        owner = current_owner().name
        if body["text"]:
            metrics.owner_texts(owner, "predict").inc(len(body["text"]))
        idempotency = None
        if key is not None:
            idempotency = Idempotency(KeyUse(IDEMPOTENCY_ROUTE, owner, key), body_hash({"text": body["text"]}))
        match score(services(), body["text"], wait, deadline, owner, idempotency):
            case Scored(predictions):
                return json_response({"predictions": predictions})
            case Pending(job_id, status):
                return job_accepted(job_id, status.value)
            case Failed(job_id, reason):
                raise JobFailed(job_id, reason)
            case IdempotencyClash(job_id):
                raise IdempotencyConflict("this Idempotency-Key was used with another body", details={"job_id": job_id})
            case QueueFull(refusal):
                raise Overloaded.because(refusal, retry_after_s=1)

    @blp.route("/jobs/<job_id>", methods=["GET"])
    @blp.doc(operationId="get_jobs_job_id", **needs_key)
    @blp.alt_response(200, schema=JobStatusSchema, description="The job's status, and its predictions when done.", success=True)
    @blp.alt_response(404, description="Unknown or expired job.", **error)
    @blp.alt_response(503, headers=RETRY_AFTER_HEADER, description="Redis unavailable.", **error)
    def job_status(job_id):
        """Poll a job: a /predict job's status and predictions, or a bulk job's progress."""
        owner = current_owner().name
        record = services().stores.jobs.get(job_id) if is_job_id(job_id) else None
        if record is not None and record.owner == owner:
            return json_response(job_view(record))
        bulk = services().stores.bulk.get(job_id, owner) if is_job_id(job_id) and record is None else None
        if bulk is None:  # another owner's job answers exactly as an unknown one
            raise NotFound(f"no job {job_id!r}: unknown, deleted, or expired after {settings.job_ttl_s}s")
        return json_response(status_view(job_id, bulk))

    return blp
