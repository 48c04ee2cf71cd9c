"""GET /health (the process is up), GET /ready (Redis answers and a worker is consuming) and GET /backlog (work waiting)."""

from web.errors import UNAVAILABLE_ERRORS, NoWorkers, RedisUnavailable
from web.parsing import ApiBlueprint
from web.responses import json_response
from web.schemas import BacklogSchema, ErrorSchema, HealthSchema, ReadySchema
from web.services import services

RETRY_AFTER = {"Retry-After": "5"}

blp = ApiBlueprint("health", __name__, description="Probes for load balancers and Kubernetes.")


@blp.route("/health", methods=["GET"])
@blp.alt_response(200, schema=HealthSchema, description="The process is up.", success=True)
def health():
    """Liveness: answers while the process runs, whatever Redis does."""
    return json_response({"status": "ok"})


@blp.route("/ready", methods=["GET"])
@blp.alt_response(200, schema=ReadySchema, description="Ready to serve.", success=True)
@blp.alt_response(503, schema=ErrorSchema, description="Redis unreachable, or no live worker.")
def ready():
    """Readiness: Redis answers and at least one worker is consuming; reports overload in ``status``.

    A full queue is shared by every web pod, so answering 503 for it would take them all out of
    the Service at once and turn clean 429s into connection errors; it is reported, not failed.
    """
    current = services()
    stores = current.stores
    try:
        stores.main.ping()
        workers = stores.workers.live_workers()
        queued = stores.queue.queued_texts()
    except UNAVAILABLE_ERRORS:
        raise RedisUnavailable("Redis does not answer", headers=RETRY_AFTER) from None
    context = {"workers": workers, "queued_texts": queued}
    if workers == 0:
        raise NoWorkers("no worker has sent a heartbeat recently", context, RETRY_AFTER)
    status = "overloaded" if queued >= current.settings.max_queued_texts else "ready"
    return json_response({"status": status, **context})


@blp.route("/backlog", methods=["GET"])
@blp.alt_response(200, schema=BacklogSchema, description="The texts waiting for a worker.", success=True)
@blp.alt_response(503, schema=ErrorSchema, description="Redis unreachable.")
def backlog():
    """Texts waiting for a forward pass, interactive and bulk: what KEDA scales workers on.

    The Celery list alone leaves out the messages workers have reserved (up to WORKER_CONCURRENCY
    each), so scaling on it reacts late; this counter covers both (docs/deployment.md).
    """
    stores = services().stores
    try:
        queued, bulk_queued = stores.queue.queued_texts(), stores.bulk.queued_texts()
    except UNAVAILABLE_ERRORS:
        raise RedisUnavailable("Redis does not answer", headers=RETRY_AFTER) from None
    return json_response({"queued_texts": queued, "bulk_queued_texts": bulk_queued})
