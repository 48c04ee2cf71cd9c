"""The Celery task: deserialise, hand to the runtime, done. The web side sends it by name."""

from common.celery_app import PREDICT_TASK


def register_tasks(celery_app, runtime) -> None:
    """Register the predict task on ``celery_app``, bound to this process's runtime."""

    @celery_app.task(name=PREDICT_TASK)
    def predict(job_id: str, texts: list[str], deadline: float, enqueued_at: float) -> str:
        return runtime.run_job(job_id, texts, deadline, enqueued_at)
