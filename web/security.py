"""Optional API keys and per-client rate limits; both off unless their settings are given."""

import hashlib
import hmac
import math
import time

from flask import Flask, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from web.errors import RateLimited, Unauthorized

# Probes, scrapes, the backlog and the API description stay open: they carry no scores and some
# callers (kubelet, Prometheus, KEDA, a browser loading Swagger UI's assets) cannot send a key.
OPEN_PATHS = ("/health", "/ready", "/backlog", "/metrics", "/openapi.json", "/docs")
API_KEY_HEADER = "X-API-Key"
# The OpenAPI security scheme for that header, so Swagger UI's Authorize button can send it.
API_KEY_SCHEME = "ApiKey"


def hash_api_key(key: str) -> str:
    """The SHA-256 hex digest that API_KEY_HASHES stores for ``key``."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def is_open_path(path: str) -> bool:
    return any(path == open_path or path.startswith(open_path + "/") for open_path in OPEN_PATHS)


def require_api_keys(app: Flask, key_hashes: str) -> None:
    """Answer 401 to requests without a valid X-API-Key, comparing digests in constant time."""
    accepted = [digest.strip().lower() for digest in key_hashes.split(",") if digest.strip()]

    @app.before_request
    def check_api_key():
        if is_open_path(request.path):
            return None
        presented = hash_api_key(request.headers.get(API_KEY_HEADER, ""))
        # Compare against every stored digest, so timing does not reveal which one matched.
        valid = False
        for digest in accepted:
            valid |= hmac.compare_digest(presented, digest)
        if not valid:
            raise Unauthorized("a valid X-API-Key header is required")
        return None


def rate_limit_breached(request_limit):
    """429 in the service's error shape, with Retry-After from the limit's window."""
    reset_at = request_limit.window.reset_time
    retry_after = max(1, math.ceil(reset_at - time.time()))
    return RateLimited(
        f"rate limit {request_limit.limit} exceeded; retry in {retry_after}s", headers={"Retry-After": str(retry_after)}
    ).response()


def limit_rate(app: Flask, limit: str, storage_uri: str) -> Limiter:
    """Apply ``limit`` per client address to every route but the open ones, counted in Redis."""
    return Limiter(
        get_remote_address,
        app=app,
        default_limits=[limit],
        storage_uri=storage_uri,
        strategy="moving-window",
        # Redis away: serve without limits rather than refuse everyone.
        swallow_errors=True,
        default_limits_exempt_when=lambda: is_open_path(request.path),
        on_breach=lambda request_limit: app.make_response(rate_limit_breached(request_limit)),
        headers_enabled=True,
    )
