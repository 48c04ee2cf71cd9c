"""One worker process's state: settings, model, store and batcher, built once at start-up."""

import logging
import os
import socket
import threading
import time
import uuid

import redis

from common.jobs import JobError
from common.store import stores_from_settings
from common.store.workers import HEARTBEAT_INTERVAL_S
from model.core import default_threads, load_classifier
from worker import metrics
from worker.batcher import Batcher, BatchRecord, DeadlineExpired, PendingJob

log = logging.getLogger(__name__)


def load_model(settings):
    """Load the configured model with the configured backend; raises ModelLoadError."""
    threads = settings.torch_threads or default_threads()
    return load_classifier(settings.model, settings.model_backend, settings.device, threads)


class RedisRetries:
    """One job's Redis retries, all under one deadline.

    Redis may be restarting, so each step of a job (read, cache, complete) is retried; the steps
    share one deadline: the job's visibility timeout. Past it the broker hands the unacked job
    to a worker again, so retrying longer would only race that redelivery.
    """

    def __init__(self, budget_s: float):
        self.give_up_at = time.monotonic() + budget_s

    def run(self, action, what: str):
        """Run ``action`` until Redis answers or the job's deadline passes."""
        delay = 0.2
        while True:
            try:
                return action()
            except (redis.ConnectionError, redis.TimeoutError):
                left = self.give_up_at - time.monotonic()
                if left <= 0:
                    raise
                log.warning("Redis unavailable while %s; retrying in %.1fs", what, min(delay, left))
                time.sleep(min(delay, left))
                delay = min(delay * 2, 5)


class WorkerRuntime:
    """The model, store and batcher of this process, and the job logic the Celery task calls."""

    def __init__(self, settings, model):
        self.settings = settings
        self.model = model
        self.stores = stores_from_settings(settings)
        # Containers on one host can share a hostname (host networking) and a pid (1), so add a nonce.
        self.name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.batcher = Batcher(
            model,
            settings.batch_max_texts,
            settings.batch_max_tokens,
            settings.batch_max_wait_ms,
            settings.gather_max_texts,
            on_jobs_started=self._jobs_started,
            on_batch=self._batch_done,
        )
        self._heartbeat_stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, name="heartbeat", daemon=True)

    @classmethod
    def start(cls, settings) -> "WorkerRuntime":
        """Load the model (raising ModelLoadError on failure), then start batching."""
        started = time.perf_counter()
        model = load_model(settings)
        seconds = time.perf_counter() - started
        metrics.MODEL_LOAD_SECONDS.set(seconds)
        log.info("loaded model %s on %s in %.1fs", model.identity, model.device, seconds)
        runtime = cls(settings, model)
        runtime.batcher.start()
        metrics.serve(settings.worker_metrics_host, settings.worker_metrics_port)
        return runtime

    def announce(self) -> None:
        """Start heartbeats: from now on /ready counts this worker as consuming."""
        if not self._heartbeat.is_alive():
            self._heartbeat.start()

    def shutdown(self) -> None:
        """Finish held batches, then leave the live-worker set."""
        self.batcher.stop()
        self._heartbeat_stop.set()
        try:
            self.stores.workers.remove(self.name)
        except redis.RedisError:
            pass

    def _beat(self) -> None:
        while not self._heartbeat_stop.is_set():
            try:
                self.stores.workers.heartbeat(self.name, self.model.identity)
            except redis.RedisError as error:
                log.warning("heartbeat failed: %s", error)
            self._heartbeat_stop.wait(HEARTBEAT_INTERVAL_S)

    def _jobs_started(self, jobs: list[PendingJob], now: float) -> None:
        for job in jobs:
            metrics.QUEUE_WAIT_SECONDS.observe(max(0.0, now - job.enqueued_at))
        try:
            self.stores.start_jobs([job.job_id for job in jobs])
        except redis.RedisError as error:
            # Bookkeeping only; the jobs still run and their results are stored with retries.
            log.warning("could not mark %d jobs running: %s", len(jobs), error)

    def _batch_done(self, record: BatchRecord) -> None:
        metrics.BATCH_TEXTS.observe(record.texts)
        metrics.BATCH_TOKENS.observe(record.computed_tokens)
        metrics.REAL_TOKENS.inc(record.tokens)
        metrics.COMPUTED_TOKENS.inc(record.computed_tokens)
        metrics.INFERENCE_SECONDS.observe(record.seconds)
        try:
            self.stores.workers.record_batches([record.__dict__ | {"at": time.time(), "worker": self.name}])
        except redis.RedisError as error:
            log.warning("could not record batch: %s", error)

    def run_job(self, job_id: str, texts: list[str], deadline: float, enqueued_at: float) -> str:
        """Score a job's texts in shared batches, cache them and complete the job record."""
        retries = RedisRetries(self.settings.visibility_timeout_s)
        status = retries.run(lambda: self.stores.jobs.status(job_id), "reading a job")
        if status is None or status.is_final:
            # Expired record, or a redelivery of a job another worker already finished.
            return "skipped"
        if time.time() > deadline:
            return self._expire(job_id, retries)
        try:
            results = self.batcher.submit(job_id, texts, deadline, enqueued_at).result()
        except DeadlineExpired:
            return self._expire(job_id, retries)
        except Exception:
            retries.run(lambda: self.stores.jobs.fail(job_id, JobError.INFERENCE_ERROR), "failing a job")
            metrics.JOBS.labels("failed").inc()
            raise
        retries.run(lambda: self.stores.complete_job(job_id, self.model.identity, results), "completing a job")
        metrics.JOBS.labels("done").inc()
        return "done"

    def _expire(self, job_id: str, retries: RedisRetries) -> str:
        retries.run(lambda: self.stores.queue.release(job_id), "releasing a job")
        retries.run(lambda: self.stores.jobs.fail(job_id, JobError.EXPIRED), "expiring a job")
        metrics.JOBS.labels("expired").inc()
        return "expired"
