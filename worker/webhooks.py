"""Delivering a bulk job's webhook: the job's status view, signed, retried with backoff, delivered once."""

import json
import logging
import time
import urllib.error
import urllib.request

from common.celery_app import WEBHOOK_TASK
from common.store.bulk import FINAL, status_view
from common.webhooks import CallbackRefused, check_callback_url, signed_headers
from worker import metrics

log = logging.getLogger(__name__)

# Longest a receiver may take to answer one delivery.
DELIVERY_TIMEOUT_S = 10
# Longest pause between two attempts.
MAX_RETRY_DELAY_S = 3600


class NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is a failed delivery: following it could lead to an address the URL check refused."""

    def redirect_request(self, *args, **kwargs):
        return None


OPENER = urllib.request.build_opener(NoRedirects)


def deliver(settings, stores, celery_app, job_id: str, attempt: int) -> str:
    """Attempt ``attempt`` (from 0) to POST an ended job's status view to its callback_url; the outcome."""
    record = stores.bulk.get(job_id)
    if record is None or not record.get("callback_url") or record["status"] not in FINAL or record.get("webhook_delivered_at"):
        return "skipped"  # deleted, no callback, or already delivered (a redelivered task)
    try:
        check_callback_url(record["callback_url"], bool(settings.webhook_allow_private))
    except CallbackRefused as error:
        log.warning("webhook of job %s not sent: %s", job_id, error)
        metrics.WEBHOOKS.labels("refused").inc()
        return "refused"
    body = json.dumps(status_view(job_id, record)).encode()
    # The same id on every attempt, so a receiver can drop a duplicate (Standard Webhooks).
    headers = signed_headers(settings.webhook_secret, f"msg_{job_id}_{record['status']}", int(time.time()), body)
    request = urllib.request.Request(record["callback_url"], data=body, headers=headers, method="POST")
    try:
        with OPENER.open(request, timeout=DELIVERY_TIMEOUT_S) as response:
            delivered = 200 <= response.status < 300
            problem = f"HTTP {response.status}"
    except urllib.error.HTTPError as error:
        delivered, problem = False, f"HTTP {error.code}"
    except (OSError, ValueError) as error:
        delivered, problem = False, str(error)
    if delivered:
        stores.bulk.mark_webhook_delivered(job_id)
        metrics.WEBHOOKS.labels("delivered").inc()
        return "delivered"
    if attempt + 1 >= settings.webhook_max_attempts:
        log.warning("webhook of job %s gave up after %d attempts (last: %s)", job_id, attempt + 1, problem)
        metrics.WEBHOOKS.labels("gave_up").inc()
        return "gave_up"
    delay = min(MAX_RETRY_DELAY_S, settings.webhook_retry_base_s * 2**attempt)
    log.info("webhook of job %s failed (%s); attempt %d in %.0fs", job_id, problem, attempt + 2, delay)
    celery_app.send_task(WEBHOOK_TASK, args=[job_id, attempt + 1], countdown=delay)
    metrics.WEBHOOKS.labels("retry").inc()
    return "retry"
