"""Optional API keys and rate limits; both off unless their settings are given.

Every request acts for an owner (web.keys): its API key's, or the one anonymous owner when keys
are off. ``current_owner()`` names it for the views; rate limits count per owner when keys are
on, per client address otherwise.
"""

import math
import time

import redis
from flask import Flask, g, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from common.store import SENTINEL_TIMEOUT_S, main_redis_auth, tls_options
from common.store.keys import auth_failures_key
from web.errors import RateLimited, Unauthorized
from web.keys import ANONYMOUS_OWNER, KeyRing, Owner

# Probes, scrapes, the backlog and the API description stay open: they carry no scores and some
# callers (kubelet, Prometheus, KEDA, a browser loading Swagger UI's assets) cannot send a key.
OPEN_PATHS = ("/health", "/ready", "/backlog", "/metrics", "/openapi.json", "/docs")
API_KEY_HEADER = "X-API-Key"
# The OpenAPI security scheme for that header, so Swagger UI's Authorize button can send it.
API_KEY_SCHEME = "ApiKey"


def current_owner() -> Owner:
    """The owner the current request acts for."""
    return g.get("owner", ANONYMOUS_OWNER)


def is_open_path(path: str) -> bool:
    return any(path == open_path or path.startswith(open_path + "/") for open_path in OPEN_PATHS)


class FailedKeyAttempts:
    """Failed X-API-Key attempts per client address, counted in Redis a minute at a time.

    Past the limit an address is refused (429) until its minute ends, before its key is even
    checked, so guessing costs a minute per API_KEY_FAILURES_PER_MINUTE tries. Each process also
    remembers the addresses it refused, so a refused client costs no Redis round trip, and a valid
    key (the common case) never costs one.
    """

    WINDOW_S = 60

    def __init__(self, client, limit: int):
        self.client = client
        self.limit = limit
        self._refused_until: dict[str, float] = {}

    def refused_for(self, address: str) -> int:
        """Seconds this address stays refused; 0 when it may try."""
        until = self._refused_until.get(address)
        if until is None:
            return 0
        left = math.ceil(until - time.time())
        if left <= 0:
            self._refused_until.pop(address, None)
            return 0
        return left

    def failed(self, address: str) -> int:
        """Count a failed attempt; seconds the address is refused from now (0 while under the limit)."""
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.incr(auth_failures_key(address))
            pipe.expire(auth_failures_key(address), self.WINDOW_S, nx=True)
            pipe.ttl(auth_failures_key(address))
            count, _, ttl = pipe.execute()
        except redis.RedisError:
            return 0  # Redis away: keys are still checked, only the count is lost
        if count <= self.limit:
            return 0
        if len(self._refused_until) > 100_000:  # a flood of addresses: forget the oldest view, not memory
            self._refused_until.clear()
        ttl = max(1, ttl)
        self._refused_until[address] = time.time() + ttl
        return ttl


def too_many_failures(seconds: int) -> RateLimited:
    return RateLimited(
        f"too many failed X-API-Key attempts from your address; retry in {seconds}s",
        details={"limit": "API_KEY_FAILURES_PER_MINUTE"},
        headers={"Retry-After": str(seconds)},
    )


def require_api_keys(app: Flask, ring: KeyRing, failures: FailedKeyAttempts | None = None) -> None:
    """Answer 401 to requests without a valid X-API-Key (429 past ``failures``' limit); note the key's owner."""

    @app.before_request
    def check_api_key():
        if is_open_path(request.path):
            return None
        address = request.remote_addr or ""
        if failures is not None and (seconds := failures.refused_for(address)):
            raise too_many_failures(seconds)
        key = ring.match(request.headers.get(API_KEY_HEADER, ""))
        if key is None:
            if failures is not None and (seconds := failures.failed(address)):
                raise too_many_failures(seconds)
            raise Unauthorized("a valid X-API-Key header is required")
        g.owner = key.owner
        return None


def rate_limit_breached(request_limit):
    """429 in the service's error shape, with Retry-After from the limit's window."""
    reset_at = request_limit.window.reset_time
    retry_after = max(1, math.ceil(reset_at - time.time()))
    return RateLimited(
        f"rate limit {request_limit.limit} exceeded; retry in {retry_after}s", headers={"Retry-After": str(retry_after)}
    ).response()


def rate_limit_storage(settings) -> tuple[str, dict]:
    """flask-limiter's storage URI and options: the main Redis, through its Sentinels when it has them."""
    if not settings.sentinel_addresses:
        return settings.redis_connection_url, {}
    auth = main_redis_auth(settings)
    tls = tls_options(auth)
    # Counts go to the primary only: a replica's may lag behind them.
    options = {"use_replicas": False, "db": auth["db"], "socket_timeout": 5.0, **tls}
    options.update({key: auth[key] for key in ("username", "password") if auth[key]})
    options["sentinel_kwargs"] = {"socket_timeout": SENTINEL_TIMEOUT_S, **tls}
    sentinels = ",".join(settings.sentinel_netlocs)
    return f"redis+sentinel://{sentinels}/{settings.redis_sentinel_master}", options


def limit_rate(app: Flask, limit: str, storage: tuple[str, dict], per_owner: bool) -> Limiter:
    """Apply a rate limit to every route but the open ones, counted in Redis.

    The limit is the owner's own (API_KEYS_FILE) or ``limit``; it counts per owner when
    ``per_owner`` (keys are on), else per client address.
    """

    def owners_limit() -> str:
        return current_owner().rate_limit or limit

    def counted_as() -> str:
        return f"owner:{current_owner().name}" if per_owner else get_remote_address()

    return Limiter(
        counted_as,
        app=app,
        default_limits=[owners_limit],
        storage_uri=storage[0],
        storage_options=storage[1],
        strategy="moving-window",
        # Redis away: serve without limits rather than refuse everyone.
        swallow_errors=True,
        default_limits_exempt_when=lambda: is_open_path(request.path) or not owners_limit(),
        on_breach=lambda request_limit: app.make_response(rate_limit_breached(request_limit)),
        headers_enabled=True,
    )
