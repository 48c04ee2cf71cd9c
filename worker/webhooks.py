"""The webhook lane: threads of their own that deliver bulk jobs' webhooks, retried with backoff, delivered once.

The threads that score texts (Celery's, the bulk consumers) never wait on a receiver: deliveries
run on WEBHOOK_THREADS threads of their own, claim due jobs from the schedule in Redis
(common.store.webhooks), and give each attempt one deadline, WEBHOOK_TIMEOUT_S, for connecting,
sending and reading the answer's status line. A receiver that answers slowly, or drips its answer,
holds one of these threads for that long at most.
"""

import json
import logging
import random
import threading
import time

import redis

from common.store.bulk import FINAL_STATUSES, status_view
from common.webhooks import CallbackRefused, DeliveryFailed, check_callback_url, post, signed_headers
from worker import metrics

log = logging.getLogger(__name__)

# Longest pause between two attempts.
MAX_RETRY_DELAY_S = 3600
# How often an idle delivery thread looks for due webhooks (with jitter, so threads spread out).
POLL_INTERVAL_S = 1.0
# How long past an attempt's deadline its claim lasts: a thread that died mid-attempt is covered
# then, and a live one has long finished.
LEASE_MARGIN_S = 60


def deliver(settings, stores, job_id: str, **network) -> str:
    """Make one attempt at a claimed job's webhook and schedule what follows; the outcome's name.

    ``network`` (``resolve``, ``connect``) replaces how addresses are resolved and connected to, for tests.
    """
    schedule = stores.webhooks
    record = stores.bulk.get(job_id)
    if (
        record is None
        or not record.get("callback_url")
        or record["status"] not in FINAL_STATUSES
        or record.get("webhook_delivered_at")
    ):
        schedule.forget(job_id)
        return "skipped"  # deleted, no callback, or already delivered
    attempt = schedule.count_attempt(job_id)
    body = json.dumps(status_view(job_id, record)).encode()
    # The same id on every attempt, so a receiver can drop a duplicate (Standard Webhooks).
    headers = signed_headers(settings.webhook_secret, f"msg_{job_id}_{record['status']}", int(time.time()), body)
    resolve = {"resolve": network["resolve"]} if "resolve" in network else {}
    connect = {"connect": network["connect"]} if "connect" in network else {}
    try:
        target = check_callback_url(record["callback_url"], bool(settings.webhook_allow_private), **resolve)
    except CallbackRefused as error:
        log.warning("webhook of job %s not sent: %s", job_id, error)
        schedule.forget(job_id)
        metrics.WEBHOOKS.labels("refused").inc()
        return "refused"
    try:
        status = post(target, body, headers, settings.webhook_timeout_s, **connect)
        delivered, problem = 200 <= status < 300, f"HTTP {status}"  # a redirect is a failure: never followed
    except DeliveryFailed as error:
        delivered, problem = False, str(error)
    if delivered:
        stores.bulk.mark_webhook_delivered(job_id)
        schedule.forget(job_id)
        metrics.WEBHOOKS.labels("delivered").inc()
        return "delivered"
    if attempt >= settings.webhook_max_attempts:
        log.warning("webhook of job %s gave up after %d attempts (last: %s)", job_id, attempt, problem)
        schedule.forget(job_id)
        metrics.WEBHOOKS.labels("gave_up").inc()
        return "gave_up"
    delay = min(MAX_RETRY_DELAY_S, settings.webhook_retry_base_s * 2 ** (attempt - 1))
    log.info("webhook of job %s failed (%s); attempt %d in %.1fs", job_id, problem, attempt + 1, delay)
    schedule.retry_at(job_id, time.time() + delay)
    metrics.WEBHOOKS.labels("retry").inc()
    return "retry"


class WebhookLane:
    """WEBHOOK_THREADS threads that claim due webhooks and deliver them."""

    def __init__(self, settings, stores):
        self.settings = settings
        self.stores = stores
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, name=f"webhooks-{index}", daemon=True) for index in range(settings.webhook_threads)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, timeout_s: float | None = None) -> None:
        """Claim no more; wait for attempts under way (each ends by its deadline)."""
        self._stopping.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout_s if timeout_s is not None else self.settings.webhook_timeout_s + 5)

    def _run(self) -> None:
        lease_s = self.settings.webhook_timeout_s + LEASE_MARGIN_S
        while not self._stopping.is_set():
            try:
                job_id = self.stores.webhooks.claim(lease_s)
                if job_id is not None:
                    deliver(self.settings, self.stores, job_id)
                    continue
            except redis.RedisError as error:
                log.warning("webhook lane cannot reach Redis: %s", error)
            except Exception:
                log.exception("webhook delivery failed unexpectedly")
            self._stopping.wait(POLL_INTERVAL_S * random.uniform(0.5, 1.5))
