"""One error shape for every failure: ``{"error": code, "message": text, "details": {...}}``.

API errors map to HTTP status here and nowhere else; no HTML pages, no stack traces.
"""

import logging

import kombu.exceptions
import redis
from flask import Flask, json
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


class APIError(Exception):
    """Base of the errors the API answers with; subclasses set status and code."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, details: dict | None = None, headers: dict | None = None):
        super().__init__(message)
        self.message = message
        self.details = details or {}
        self.headers = headers or {}


class InvalidBody(APIError):
    status, code = 400, "invalid_body"


class Unauthorized(APIError):
    status, code = 401, "unauthorized"


class NotFound(APIError):
    status, code = 404, "not_found"


class UnsupportedMediaType(APIError):
    status, code = 415, "unsupported_media_type"


class ValidationFailed(APIError):
    status, code = 422, "validation_error"


class Overloaded(APIError):
    status, code = 429, "overloaded"


class Unavailable(APIError):
    status, code = 503, "unavailable"


class JobFailed(APIError):
    status = 503

    def __init__(self, job_id: str, reason: str):
        super().__init__(f"job {job_id} failed: {reason}", details={"job_id": job_id}, headers={"Retry-After": "1"})
        self.code = reason


# Codes for errors raised by Flask/werkzeug itself (routing, size limit, rate limiter).
HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}

# Redis (broker, jobs or cache) away: the request cannot be served now, but nothing is broken.
UNAVAILABLE_ERRORS = (redis.ConnectionError, redis.TimeoutError, kombu.exceptions.OperationalError)


def error_response(status: int, code: str, message: str, details: dict | None = None, headers: dict | None = None):
    """The JSON error response every failure uses."""
    body = json.dumps({"error": code, "message": message, "details": details or {}})
    return body, status, {"Content-Type": "application/json", **(headers or {})}


def register_error_handlers(app: Flask) -> None:
    """Route every exception to the one error shape."""

    @app.errorhandler(APIError)
    def api_error(error: APIError):
        return error_response(error.status, error.code, error.message, error.details, error.headers)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        headers = dict(error.get_response().headers)
        headers.pop("Content-Type", None)
        headers.pop("Content-Length", None)
        code = HTTP_CODES.get(error.code, "http_error")
        return error_response(error.code, code, error.description or error.name, headers=headers)

    def unavailable(error: Exception):
        log.warning("backing store unavailable: %s", error)
        return error_response(503, "unavailable", "the job store is unavailable; retry shortly", headers={"Retry-After": "1"})

    for error_class in UNAVAILABLE_ERRORS:
        app.register_error_handler(error_class, unavailable)

    @app.errorhandler(Exception)
    def unexpected(error: Exception):
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal error")
