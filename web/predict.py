"""POST /predict and GET /jobs/<id>: cache first, then a Celery job the request waits on up to a bound."""

import contextlib
import time

from flask import current_app, json

from common.celery_app import PREDICT_TASK
from common.store import DONE, FAILED, is_job_id, new_job_id
from web import metrics
from web.errors import UNAVAILABLE_ERRORS, JobFailed, NotFound, Overloaded
from web.parsing import ApiBlueprint
from web.schemas import ErrorSchema, JobAcceptedSchema, JobStatusSchema, PredictionsSchema, predict_schemas

LOCATION_HEADER = {"Location": {"description": "Path of the job to poll.", "schema": {"type": "string"}}}
# Tells OpenAPI clients (and schemathesis' stateful phase) that a 202's job_id feeds GET /jobs/{job_id}.
JOB_LINK = {"operationId": "get_jobs_job_id", "parameters": {"job_id": "$response.body#/job_id"}}
RETRY_AFTER_HEADER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "string"}}}


def json_response(payload: dict, status: int = 200, headers: dict | None = None):
    return json.dumps(payload), status, {"Content-Type": "application/json", **(headers or {})}


def job_view(record: dict) -> dict:
    """The public fields of a job record."""
    view = {"job_id": record["job_id"], "status": record["status"]}
    if record["status"] == DONE:
        view["predictions"] = record["predictions"]
    elif record["status"] == FAILED:
        view["error"] = record["error"]
    return view


def create_predict_blueprint(settings) -> ApiBlueprint:
    """Build the prediction endpoints, bounded by ``settings``."""
    blp = ApiBlueprint("predict", __name__, description="Sentiment scores, answered from cache or from a job.")
    request_schema, query_schema = predict_schemas(settings)
    error = {"schema": ErrorSchema}

    @blp.route("/predict", methods=["POST"])
    @blp.doc(responses={"202": {"links": {"GetJob": JOB_LINK}}})
    @blp.arguments(query_schema, location="query", as_kwargs=True)
    @blp.arguments(request_schema, location="json")
    @blp.alt_response(200, schema=PredictionsSchema, description="Every text scored.", success=True)
    @blp.alt_response(
        202, schema=JobAcceptedSchema, headers=LOCATION_HEADER, description="Still computing: poll status_url.", success=True
    )
    @blp.alt_response(400, description="Body is not JSON, not UTF-8 or nested too deeply.", **error)
    @blp.alt_response(401, description="Missing or invalid X-API-Key (when keys are on).", **error)
    @blp.alt_response(413, description="Body over the size limit.", **error)
    @blp.alt_response(415, description="Content-Type is not application/json.", **error)
    @blp.alt_response(429, headers=RETRY_AFTER_HEADER, description="Queue full or rate limit passed.", **error)
    @blp.alt_response(503, headers=RETRY_AFTER_HEADER, description="Redis unavailable, or the job expired or failed.", **error)
    def predict(body, wait=None, deadline=None):
        """Score texts as NEGATIVE/POSITIVE."""
        services = current_app.extensions["sentiment"]
        texts = body["text"]
        if not texts:
            return json_response({"predictions": []})
        model_identity = services.model_identity()
        known = services.store.cached_predictions(model_identity, texts) if model_identity else [None] * len(texts)
        hits = sum(prediction is not None for prediction in known)
        metrics.CACHE_LOOKUPS.labels("hit").inc(hits)
        metrics.CACHE_LOOKUPS.labels("miss").inc(len(texts) - hits)
        if hits == len(texts):
            metrics.ANSWERS.labels("cached").inc()
            return json_response({"predictions": known})

        job_id = enqueue_job(services, texts, known, deadline)
        wait_s = settings.sync_wait_s if wait is None else wait
        started = time.perf_counter()
        record = services.store.wait_for_job(services.blocking_redis, job_id, wait_s)
        metrics.JOB_WAIT_SECONDS.observe(time.perf_counter() - started)
        if record is not None and record["status"] == DONE:
            metrics.ANSWERS.labels("sync").inc()
            return json_response({"predictions": record["predictions"]})
        if record is not None and record["status"] == FAILED:
            metrics.ANSWERS.labels("failed").inc()
            raise JobFailed(job_id, record["error"])
        metrics.ANSWERS.labels("async").inc()
        status_url = f"/jobs/{job_id}"
        status = record["status"] if record else "queued"
        return json_response({"job_id": job_id, "status": status, "status_url": status_url}, 202, {"Location": status_url})

    @blp.route("/jobs/<job_id>", methods=["GET"])
    @blp.doc(operationId="get_jobs_job_id")
    @blp.alt_response(200, schema=JobStatusSchema, description="The job's status, and its predictions when done.", success=True)
    @blp.alt_response(404, description="Unknown or expired job.", **error)
    @blp.alt_response(503, headers=RETRY_AFTER_HEADER, description="Redis unavailable.", **error)
    def job_status(job_id):
        """Poll a job."""
        record = current_app.extensions["sentiment"].store.get_job(job_id) if is_job_id(job_id) else None
        if record is None:
            raise NotFound(f"no job {job_id!r}: unknown, or expired after {settings.job_ttl_s}s")
        return json_response(job_view(record))

    return blp


def enqueue_job(services, texts: list[str], known: list, deadline_s: float | None) -> str:
    """Record a job for the request and queue its distinct uncached texts; 429 when the queue is full."""
    settings = services.settings
    missing = list(dict.fromkeys(text for text, prediction in zip(texts, known) if prediction is None))
    job_id = new_job_id()
    if not services.store.reserve_queue(job_id, len(missing), settings.max_queued_texts):
        raise Overloaded(f"queue holds more than {settings.max_queued_texts} texts; retry later", headers={"Retry-After": "1"})
    now = time.time()
    deadline = now + (deadline_s or settings.job_deadline_s)
    try:
        services.store.create_job(job_id, texts, known, deadline)
        services.celery.send_task(PREDICT_TASK, args=[job_id, missing, deadline, now], queue=settings.queue_name)
    except Exception:
        with contextlib.suppress(*UNAVAILABLE_ERRORS):
            services.store.release_queue(job_id)
        raise
    return job_id
