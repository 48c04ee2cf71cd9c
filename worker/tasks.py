"""The Celery tasks: deserialise, hand to the runtime, done. The web side sends them by name."""

from common.celery_app import PREDICT_JOBS_TASK, WEBHOOK_TASK
from common.jobs import QueuedJob


def redelivered(task) -> bool:
    """Whether the broker handed this message out before (kombu marks every message it restores)."""
    return bool((task.request.delivery_info or {}).get("redelivered"))


def register_tasks(celery_app, runtime) -> None:
    """Register the predict and webhook tasks on ``celery_app``, bound to this process's runtime."""

    # Processes of the previous release send this when a job ends; its delivery now belongs to the
    # webhook lane (worker.webhooks), so schedule it there. Remove once no such process runs.
    @celery_app.task(name=WEBHOOK_TASK)
    def deliver_webhook(job_id: str, attempt: int = 0) -> str:
        runtime.stores.webhooks.schedule(job_id)
        return "scheduled"

    @celery_app.task(name=PREDICT_JOBS_TASK, bind=True)
    def predict_jobs(task, jobs: list[dict]) -> dict[str, str]:
        try:
            return runtime.run_jobs([QueuedJob.from_message(job) for job in jobs], redelivered(task))
        finally:
            runtime.recycle_if_too_big()
