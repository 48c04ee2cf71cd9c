"""Prometheus metrics of one worker process, served on WORKER_METRICS_PORT.

A worker is one process (Celery's threads pool), so the default registry is exact; Prometheus
sums over worker targets.
"""

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

BATCH_TEXTS = Histogram(
    "sentiment_worker_batch_texts", "Texts per forward pass.", buckets=(1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 256)
)
BATCH_TOKENS = Histogram(
    "sentiment_worker_batch_tokens",
    "Tokens computed per forward pass (padding included when the model pads).",
    buckets=(16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384),
)
# real / computed is the share of a forward pass's work spent on real text (1.0 when packed).
REAL_TOKENS = Counter("sentiment_worker_real_tokens_total", "Real (non-padding) tokens run through the model.")
COMPUTED_TOKENS = Counter("sentiment_worker_computed_tokens_total", "Tokens the model computed, padding included.")
INFERENCE_SECONDS = Histogram(
    "sentiment_worker_inference_seconds",
    "Seconds per forward pass.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
FORWARD_SECONDS = Counter(
    "sentiment_worker_forward_seconds_total",
    "Seconds spent in forward passes, by lane (interactive, bulk): bulk's share is what BULK_MIN_SHARE bounds.",
    ["lane"],
)
QUEUE_WAIT_SECONDS = Histogram(
    "sentiment_worker_queue_wait_seconds",
    "Seconds from enqueue to batch start, per job.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
JOBS = Counter(
    "sentiment_worker_jobs_total",
    "Jobs handled, by outcome (done, expired, failed; skipped: already ended, such as a redelivered job).",
    ["outcome"],
)
BULK_TEXTS = Counter(
    "sentiment_worker_bulk_texts_total",
    "Texts of bulk jobs' chunks settled, by outcome (done, failed; skipped: cancelled, deleted or redelivered chunks).",
    ["outcome"],
)
WEBHOOKS = Counter(
    "sentiment_worker_webhooks_total",
    "Webhook delivery attempts, by outcome (delivered, retry, gave_up, refused).",
    ["outcome"],
)
# Every outcome exported from the start, at 0, so rate() and dashboards see a series before the first event.
for outcome in ("done", "failed", "skipped"):
    BULK_TEXTS.labels(outcome)
for outcome in ("delivered", "retry", "gave_up", "refused"):
    WEBHOOKS.labels(outcome)
for lane in ("interactive", "bulk"):
    FORWARD_SECONDS.labels(lane)
BOOKKEEPING_PENDING = Gauge(
    "sentiment_worker_bookkeeping_pending",
    "Jobs to mark running and batches to log, handed to the bookkeeping thread and not yet written to Redis.",
)
MODEL_LOAD_SECONDS = Gauge("sentiment_worker_model_load_seconds", "Seconds the model took to load.")


def serve(host: str, port: int) -> None:
    """Serve /metrics; a taken port is logged rather than fatal, since scoring matters more."""
    if not port:
        return
    try:
        start_http_server(port, addr=host)
    except OSError as error:
        log.error("worker metrics not served on %s:%d: %s", host, port, error)
