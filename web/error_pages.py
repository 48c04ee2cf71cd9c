"""The error pages of a proxy in front of the service, in the service's error shape.

ingress-nginx sends the errors it makes itself (custom-http-errors) to a default backend, with
the status in ``X-Code`` and the original path in ``X-Original-URI``; this is that backend:
``gunicorn 'web.error_pages:create_app()'`` (k8s/base/error-pages.yaml). The local front door
(deploy/nginx/front-door.conf.template) answers the same statuses with the same bodies itself;
``FRONT_DOOR_ERRORS`` is the one list of both, and a test holds the template to it.
"""

import json
from http import HTTPStatus

from common.settings import Settings

# status -> (error code, message) for what a proxy answers on its own.
FRONT_DOOR_ERRORS = {
    400: ("bad_request", "malformed request line, URI or headers"),
    404: ("not_found", "no such route"),
    405: ("method_not_allowed", "method not allowed"),
    408: ("request_timeout", "the request was not received in time"),
    411: ("length_required", "a body needs Content-Length or chunked Transfer-Encoding"),
    413: ("payload_too_large", "request body is over the limit"),
    414: ("uri_too_long", "request URI is over the limit of 8 KiB"),
    429: ("too_many_connections", "too many requests in progress from your address; retry later"),
    431: ("headers_too_large", "request headers are over the limit of 8 KiB per line, 32 KiB in all"),
    500: ("internal_error", "internal error"),
    501: ("not_implemented", "unsupported Transfer-Encoding: only chunked is accepted"),
    503: ("unavailable", "the web service is not reachable; retry later"),
    505: ("http_version_not_supported", "HTTP/1.0 and HTTP/1.1 only"),
}
# What ingress-nginx's own codes become: its 494 is a header too large; 502 and 504 mean the web
# pods cannot answer, which clients handle as 503.
SAME_AS = {494: 431, 502: 503, 504: 503}
RETRY_AFTER = {429: "1", 503: "1"}
ALLOWED_METHODS = "GET, HEAD, POST, DELETE, OPTIONS"


def error_page(code: int, original_uri: str, settings: Settings) -> tuple[int, dict, bytes]:
    """(status, headers, body) of the error page for a proxy's ``code`` on ``original_uri``."""
    status = SAME_AS.get(code, code)
    if status not in FRONT_DOOR_ERRORS:
        status = 500 if status >= 500 else 400
    error, message = FRONT_DOOR_ERRORS[status]
    details = {}
    if status == 413:
        jobs = original_uri.startswith("/jobs")
        limit, setting = (
            (settings.max_job_body_bytes, "MAX_JOB_BODY_BYTES") if jobs else (settings.max_body_bytes, "MAX_BODY_BYTES")
        )
        message = f"request body is over the limit of {limit} bytes ({setting})"
        details = {"limit_bytes": limit}
    headers = {"Content-Type": "application/json"}
    if status in RETRY_AFTER:
        headers["Retry-After"] = RETRY_AFTER[status]
    if status == 405:
        headers["Allow"] = ALLOWED_METHODS
    return status, headers, json.dumps({"error": error, "message": message, "details": details}).encode()


def create_app(settings: Settings | None = None):
    """A WSGI app answering every request with the error page its X-Code header names (404 without one).

    ``/healthz`` without an X-Code answers 200, for the pod's probes.
    """
    settings = settings or Settings.from_env()

    def app(environ, start_response):
        if environ.get("PATH_INFO") == "/healthz" and "HTTP_X_CODE" not in environ:  # the pod's probes
            start_response("200 OK", [("Content-Type", "application/json")])
            return [b'{"status": "ok"}']
        code = environ.get("HTTP_X_CODE", "")
        status, headers, body = error_page(int(code) if code.isdigit() else 404, environ.get("HTTP_X_ORIGINAL_URI", ""), settings)
        start_response(f"{status} {HTTPStatus(status).phrase}", list(headers.items()))
        return [body]

    return app
