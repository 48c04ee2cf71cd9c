"""What every view answers with: JSON bodies, the 202 of a job to follow, and the OpenAPI pieces they share."""

from flask import json

from web.errors import NotFound
from web.schemas import ErrorSchema
from web.security import API_KEY_SCHEME

LOCATION_HEADER = {"Location": {"description": "Path of the job to follow.", "schema": {"type": "string"}}}
RETRY_AFTER_HEADER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "string"}}}
# Tells OpenAPI clients (and schemathesis' stateful phase) that a 202's job_id feeds GET /jobs/{job_id}.
JOB_LINK = {"operationId": "get_jobs_job_id", "parameters": {"job_id": "$response.body#/job_id"}}
ERROR = {"schema": ErrorSchema}


def json_response(payload: dict, status: int = 200, headers: dict | None = None):
    return json.dumps(payload), status, {"Content-Type": "application/json", **(headers or {})}


def predictions_response(predictions: list | None, encoded: list[str] | None = None):
    """200 with the predictions; ``encoded`` (each already JSON, as the cache holds it) are joined as they are."""
    if encoded is None:
        return json_response({"predictions": predictions})
    return '{"predictions": [' + ", ".join(encoded) + "]}", 200, {"Content-Type": "application/json"}


def job_accepted(job_id: str, status: str, **extra):
    """202 for a job still to compute: its id, status and where to follow it (body and Location)."""
    status_url = f"/jobs/{job_id}"
    return json_response({"job_id": job_id, "status": status, "status_url": status_url, **extra}, 202, {"Location": status_url})


def needs_key(settings) -> dict:
    """OpenAPI's security requirement of an operation: with keys on, Swagger UI's "Try it out" sends X-API-Key."""
    return {"security": [{API_KEY_SCHEME: []}]} if settings.api_keys_enabled else {}


def job_not_found(job_id: str, ttl_s: int) -> NotFound:
    """404 for a job that is unknown, deleted, expired, or another owner's: all worded alike."""
    return NotFound(f"no job {job_id!r}: unknown, deleted, or expired after {ttl_s}s")
