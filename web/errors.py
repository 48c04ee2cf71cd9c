"""The one error hierarchy: every failure answers ``{"error": code, "message": text, "details": {...}}``.

Each error class names its HTTP status and stable code; ``APIError.response`` is the only place the
JSON shape is built, and ``register_error_handlers`` routes werkzeug's, Redis' and unexpected
exceptions into the hierarchy. No HTML pages, no stack traces to clients.
"""

import logging

import kombu.exceptions
import redis
from flask import Flask, g, json, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from common.jobs import JobError
from common.store.replication import NotReplicated
from web import metrics

log = logging.getLogger(__name__)


class APIError(Exception):
    """Base of the errors the API answers with; subclasses set status and code."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, details: dict | None = None, headers: dict | None = None):
        super().__init__(message)
        self.message = message
        self.details = details or {}
        self.headers = headers or {}

    def response(self):
        """The JSON error response for this error."""
        body = json.dumps({"error": self.code, "message": self.message, "details": self.details})
        return body, self.status, {"Content-Type": "application/json", **self.headers}


class BadRequest(APIError):
    status, code = 400, "bad_request"


class InvalidBody(APIError):
    status, code = 400, "invalid_body"


class Unauthorized(APIError):
    status, code = 401, "unauthorized"


class NotFound(APIError):
    status, code = 404, "not_found"


class MethodNotAllowed(APIError):
    status, code = 405, "method_not_allowed"


class PayloadTooLarge(APIError):
    status, code = 413, "payload_too_large"

    @classmethod
    def over(cls, limit_bytes: int, setting: str = "MAX_BODY_BYTES") -> "PayloadTooLarge":
        """The 413 for a body over ``limit_bytes``, whether it came with a Content-Length or chunked."""
        return cls(f"request body is over the limit of {limit_bytes} bytes ({setting})", details={"limit_bytes": limit_bytes})


class UnsupportedMediaType(APIError):
    status, code = 415, "unsupported_media_type"


class Conflict(APIError):
    """The job has already ended (cancel), or an Idempotency-Key was used with another body."""

    status, code = 409, "job_ended"


class IdempotencyConflict(Conflict):
    code = "idempotency_conflict"


class ValidationFailed(APIError):
    status, code = 422, "validation_error"


class Overloaded(APIError):
    status, code = 429, "overloaded"

    @classmethod
    def because(cls, refusal, retry_after_s: int) -> "Overloaded":
        """The 429 for a job a budget refused; ``details.limit`` names the setting that refused it."""
        return cls(
            f"{refusal.message}; retry later", details={"limit": refusal.limit}, headers={"Retry-After": str(retry_after_s)}
        )


class RateLimited(APIError):
    status, code = 429, "rate_limited"


class InternalError(APIError):
    """A bug: logged with its stack trace, answered without one."""


class Unavailable(APIError):
    """Redis (broker, jobs or cache) is away: the request cannot be served now, but nothing is broken."""

    status, code = 503, "unavailable"


class RedisUnavailable(Unavailable):
    """/ready: Redis does not answer."""

    code = "redis_unavailable"


class NotReplicatedError(Unavailable):
    """No Redis replica acknowledged a new job in time (REDIS_REPLICA_ACKS); the job was withdrawn."""

    code = "not_replicated"


class NoWorkers(Unavailable):
    """/ready: no worker has sent a heartbeat recently."""

    code = "no_workers"


class JobFailed(Unavailable):
    """The request's job failed while the request waited; the code is the job's JobError."""

    def __init__(self, job_id: str, reason: JobError):
        super().__init__(f"job {job_id} failed: {reason}", details={"job_id": job_id}, headers={"Retry-After": "1"})
        self.code = JobError(reason).value


class HttpError(APIError):
    """Any other HTTP error werkzeug raises; its status is the exception's."""

    status = None  # set per instance
    code = "http_error"

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message, headers=headers)
        self.status = status


# werkzeug's own errors (routing, size limit, malformed requests) -> the hierarchy.
HTTP_ERRORS: dict[int, type[APIError]] = {
    error.status: error for error in (BadRequest, NotFound, MethodNotAllowed, PayloadTooLarge, UnsupportedMediaType, RateLimited)
}

# Exceptions that mean Redis cannot take the request now rather than a bug: it is away, full
# (maxmemory reached under noeviction), or a replica that was the primary until a failover.
UNAVAILABLE_ERRORS = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ReadOnlyError,
    kombu.exceptions.OperationalError,
)


def subclasses(cls: type) -> list[type]:
    return [cls] + [sub for direct in cls.__subclasses__() for sub in subclasses(direct)]


def error_codes() -> dict[str, int | None]:
    """Every error code the API can answer, with its HTTP status (None: varies); docs/api.md's error table lists them."""
    codes = {cls.code: cls.status for cls in subclasses(APIError) if cls is not JobFailed}
    codes.update({reason.value: JobFailed.status for reason in JobError})
    return codes


def from_http_exception(error: HTTPException) -> APIError:
    """The hierarchy's error for a werkzeug exception, keeping headers such as Allow."""
    headers = {key: value for key, value in error.get_response().headers.items() if key not in ("Content-Type", "Content-Length")}
    if isinstance(error, RequestEntityTooLarge) and request.max_content_length is not None:
        return PayloadTooLarge.over(request.max_content_length, g.get("body_limit_setting", "MAX_BODY_BYTES"))
    message = error.description or error.name
    error_class = HTTP_ERRORS.get(error.code)
    if error_class is None:
        return HttpError(error.code, message, headers)
    return error_class(message, headers=headers)


def register_error_handlers(app: Flask) -> None:
    """Route every exception to the one error shape."""

    @app.errorhandler(APIError)
    def api_error(error: APIError):
        return error.response()

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        if error.response is not None:
            # Already answered in the one shape by whoever raised it (the rate limiter's RateLimited).
            return error.response
        return from_http_exception(error).response()

    def unavailable(error: Exception):
        log.warning("backing store unavailable: %s", error)
        if isinstance(error, redis.exceptions.OutOfMemoryError):
            return Unavailable("the job store is full; retry later", headers={"Retry-After": "5"}).response()
        return Unavailable("the job store is unavailable; retry shortly", headers={"Retry-After": "1"}).response()

    for error_class in UNAVAILABLE_ERRORS:
        app.register_error_handler(error_class, unavailable)

    @app.errorhandler(NotReplicated)
    def not_replicated(error: NotReplicated):
        log.warning("job withdrawn: %s", error)
        metrics.JOBS_NOT_REPLICATED.inc()
        message = "no Redis replica took the job in time, so it was not queued; retry shortly"
        return NotReplicatedError(message, headers={"Retry-After": "1"}).response()

    @app.errorhandler(Exception)
    def unexpected(error: Exception):
        log.exception("unhandled error")
        return InternalError("internal error").response()
