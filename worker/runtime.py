"""One worker process's state: settings, model, store and batcher, built once at start-up."""

import inspect
import logging
import os
import signal
import socket
import threading
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path

import redis

from common.jobs import JobError, JobStatus, QueuedJob
from common.store import stores_from_settings
from common.store.bulk import ACTIVE_STATUSES as ACTIVE_BULK_STATUSES
from common.store.bulk import ChunkSettlement
from common.store.workers import HEARTBEAT_INTERVAL_S
from model.core import default_threads, load_classifier
from worker import metrics
from worker.batcher import Batcher, BatchRecord, DeadlineExpired, PendingJob
from worker.bookkeeping import Bookkeeper
from worker.bulk import BulkConsumer
from worker.thread_names import FORWARD_THREAD_NAME, name_this_thread
from worker.webhooks import WebhookLane

log = logging.getLogger(__name__)

# How long shutdown waits for pending bookkeeping writes (a Redis that is away must not hold it up).
BOOKKEEPING_STOP_S = 5


def load_model(settings):
    """Load the configured model with the configured backend; raises ModelLoadError.

    It loads in a thread named like the batcher's: ONNX Runtime starts its compute threads as the
    model loads, and they take their creator's name, so their CPU counts as the forward pass's.
    """
    threads = settings.torch_threads or default_threads()
    outcome: dict = {}

    def load() -> None:
        name_this_thread(FORWARD_THREAD_NAME)
        try:
            outcome["model"] = load_classifier(settings.model, settings.model_backend, settings.device, threads)
        except BaseException as error:  # re-raised in the caller's thread
            outcome["error"] = error

    loader = threading.Thread(target=load, name="model-load")
    loader.start()
    loader.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["model"]


def resident_mib() -> float:
    """This process's resident memory in MiB (Linux)."""
    resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


# Redis away, full (it frees as finished work expires), or a replica until a failover completes.
RETRIED_ERRORS = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.OutOfMemoryError, redis.exceptions.ReadOnlyError)


class Retrying:
    """The stores as one job sees them: each call retried while Redis is away, all under one deadline.

    Redis may be restarting, so each step of a job (read, cache, complete) is retried; the steps
    share one deadline: the job's visibility timeout. Past it the broker hands the unacked job
    to a worker again, so retrying longer would only race that redelivery. ``Retrying(stores,
    budget_s).jobs.fail(job_id, reason)`` is ``stores.jobs.fail(job_id, reason)``, retried.
    """

    def __init__(self, target, budget_s: float = 0.0, give_up_at: float | None = None, path: str = "stores"):
        self._target = target
        self._give_up_at = time.monotonic() + budget_s if give_up_at is None else give_up_at
        self._path = path

    def __getattr__(self, name: str):
        value = getattr(self._target, name)
        path = f"{self._path}.{name}"
        if not inspect.ismethod(value):  # a store within the stores: its calls are retried too
            return Retrying(value, give_up_at=self._give_up_at, path=path)

        def retried(*args, **kwargs):
            delay = 0.2
            while True:
                try:
                    return value(*args, **kwargs)
                except RETRIED_ERRORS:
                    left = self._give_up_at - time.monotonic()
                    if left <= 0:
                        raise
                    log.warning("Redis unavailable in %s; retrying in %.1fs", path, min(delay, left))
                    time.sleep(min(delay, left))
                    delay = min(delay * 2, 5)

        return retried


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
            settings.bulk_pass_max_tokens,
            on_jobs_started=self._jobs_started,
            on_batch=self._batch_done,
            bulk_min_share=settings.bulk_min_share,
            bulk_pass_max_s=settings.bulk_pass_max_ms / 1000,
        )
        self._recycling = threading.Event()
        # Set while Celery's consumer runs; heartbeats only then.
        self._consuming = threading.Event()
        self._heartbeat_lock = threading.Lock()
        self._heartbeat_stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
        self.bookkeeper = Bookkeeper(self.stores)
        self.webhook_lane = WebhookLane(settings, self.stores)
        self.bulk_consumer: BulkConsumer | None = None

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
        runtime.bookkeeper.start()
        metrics.serve(settings.worker_metrics_host, settings.worker_metrics_port)
        return runtime

    def start_lanes(self, celery_app) -> None:
        """Start the lanes beside Celery's threads: bulk chunks' consumers and the webhook deliveries."""
        self.bulk_consumer = BulkConsumer(celery_app, self.settings, self._run_bulk_chunk_then_check_memory, self.stores.main)
        self.bulk_consumer.start()
        self.webhook_lane.start()

    def stop_taking(self) -> None:
        """A warm shutdown began: take no more bulk chunks (those under way finish)."""
        if self.bulk_consumer is not None:
            self.bulk_consumer.stop_taking()

    def _run_bulk_chunk_then_check_memory(self, job_id: str, chunk: int, start: int, stop: int) -> None:
        self.run_bulk_chunk(job_id, chunk, start, stop)
        self.recycle_if_too_big()

    def announce(self) -> None:
        """Start heartbeats (Celery's consumer is ready): from now on /ready counts this worker."""
        self._consuming.set()
        if not self._heartbeat.is_alive():
            self._heartbeat.start()

    def withdraw(self) -> None:
        """Stop heartbeats and leave the live-worker set: the consumer died and a new one is starting."""
        with self._heartbeat_lock:  # so no heartbeat already under way re-adds this worker afterwards
            self._consuming.clear()
            try:
                self.stores.workers.remove(self.name)
            except redis.RedisError as error:
                log.warning("could not leave the live-worker set: %s", error)

    def shutdown(self) -> None:
        """Finish held chunks, batches and webhook attempts, then leave the live-worker set."""
        if self.bulk_consumer is not None:
            self.bulk_consumer.stop()
        self.webhook_lane.stop()
        self.batcher.stop()
        self.bookkeeper.stop(BOOKKEEPING_STOP_S)
        self._heartbeat_stop.set()
        try:
            self.stores.workers.remove(self.name)
        except redis.RedisError:
            pass

    def _beat(self) -> None:
        while not self._heartbeat_stop.is_set():
            with self._heartbeat_lock:
                if self._consuming.is_set():
                    try:
                        self.stores.workers.heartbeat(self.name, self.model.identity)
                    except redis.RedisError as error:
                        log.warning("heartbeat failed: %s", error)
            self._heartbeat_stop.wait(HEARTBEAT_INTERVAL_S)

    def _jobs_started(self, jobs: list[PendingJob], now: float) -> None:
        for job in jobs:
            metrics.QUEUE_WAIT_SECONDS.observe(max(0.0, now - job.enqueued_at))
        self.bookkeeper.jobs_started([job.job_id for job in jobs])

    def _batch_done(self, record: BatchRecord) -> None:
        metrics.BATCH_TEXTS.observe(record.texts)
        metrics.BATCH_TOKENS.observe(record.computed_tokens)
        metrics.REAL_TOKENS.inc(record.tokens)
        metrics.COMPUTED_TOKENS.inc(record.computed_tokens)
        metrics.INFERENCE_SECONDS.observe(record.seconds)
        metrics.FORWARD_SECONDS.labels(record.lane).inc(record.seconds)
        self.bookkeeper.batch_done(record.__dict__ | {"at": time.time(), "worker": self.name})

    def run_jobs(self, jobs: list[QueuedJob], redelivered: bool = True) -> dict[str, str]:
        """Score one message's jobs in shared batches; cache and complete each as soon as its batch ends.

        Answers each job's outcome (done, expired, failed, skipped). If inference failed, the other
        jobs still end first, then the error is raised so Celery logs it.

        A ``redelivered`` message (a worker died between completing its jobs and acking, or it
        passed its visibility timeout) may hold jobs that already ended, so only then are their
        statuses read first, to skip those (a round trip no other message needs). An unmarked
        copy (a publish retried after its reply was lost) is computed again, but a job that
        ended is never ended twice: the end script leaves it alone.
        """
        stores = Retrying(self.stores, self.settings.visibility_timeout_s)
        if redelivered:
            statuses = stores.jobs.statuses([job.job_id for job in jobs])
        else:
            statuses = [JobStatus.QUEUED] * len(jobs)
        outcomes: dict[str, str] = {}
        running: dict[Future, QueuedJob] = {}
        now = time.time()
        for job, status in zip(jobs, statuses):
            if status is None or status.is_final:
                # Expired record, or a redelivery of a job a worker already finished.
                outcomes[job.job_id] = "skipped"
                metrics.JOBS.labels("skipped").inc()
            elif now > job.deadline:
                outcomes[job.job_id] = self._fail(job.job_id, JobError.EXPIRED, stores)
            else:
                running[self.batcher.submit(job.job_id, job.texts, job.deadline, job.enqueued_at)] = job
        inference_error = None
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            computed, results_by_job = {}, {}
            for future in finished:
                job = running.pop(future)
                try:
                    predictions = future.result()
                except DeadlineExpired:
                    outcomes[job.job_id] = self._fail(job.job_id, JobError.EXPIRED, stores)
                except Exception as error:
                    outcomes[job.job_id] = self._fail(job.job_id, JobError.INFERENCE_ERROR, stores)
                    inference_error = error
                else:
                    computed.update(predictions)
                    results_by_job[job.job_id] = job.record_results(predictions)
            if results_by_job:
                stores.complete_jobs(self.model.identity, computed, results_by_job)
                metrics.JOBS.labels("done").inc(len(results_by_job))
                outcomes.update(dict.fromkeys(results_by_job, "done"))
        if inference_error is not None:
            raise inference_error
        return outcomes

    def run_bulk_chunk(self, job_id: str, chunk: int, start: int, stop: int) -> str:
        """Score one chunk of a bulk job (texts start..stop-1) and settle it; the outcome's name.

        Cached texts are not computed again, and a chunk's repeated texts are computed once; what is
        computed fills the cache. A chunk of a cancelled, deleted or ended job, or one already
        settled (a redelivery), is settled as skipped without computing anything.
        """
        stores = Retrying(self.stores, self.settings.visibility_timeout_s)
        status = stores.bulk.start_chunk(job_id, chunk)
        texts = []
        if status in ACTIVE_BULK_STATUSES:
            texts = stores.bulk.chunk_texts(job_id, start, stop)
        if len(texts) != stop - start:  # gone, cancelled, ended or settled
            if status != "settled":
                stores.bulk.settle_chunk(job_id, chunk, "skipped", stop - start)
            metrics.BULK_TEXTS.labels("skipped").inc(stop - start)
            return "skipped"
        identity = self.model.identity
        known = stores.cache.lookup(identity, texts)
        missing = list(dict.fromkeys(text for text, prediction in zip(texts, known) if prediction is None))
        outcome = "done"
        computed: dict[str, list] = {}
        if missing:
            try:
                computed = self.batcher.submit_bulk(job_id, missing).result()
            except Exception:
                log.exception("bulk chunk %d of job %s failed", chunk, job_id)
                outcome = "failed"
            else:
                stores.cache.store(identity, computed)
        predictions = [prediction if prediction is not None else computed.get(text) for text, prediction in zip(texts, known)]
        settled = stores.bulk.settle_chunk(job_id, chunk, outcome, len(texts), predictions)
        metrics.BULK_TEXTS.labels(outcome).inc(len(texts))
        if settled == ChunkSettlement.ENDED_JOB:
            log.info("bulk job %s ended with chunk %d", job_id, chunk)
        return outcome

    def recycle_if_too_big(self) -> None:
        """Past WORKER_MAX_RSS_MB, begin Celery's warm shutdown: no more jobs, held ones finish, then exit.

        The orchestrator (Kubernetes, compose's restart policy) starts a fresh process, so memory
        that grew for any reason is given back before the pod's limit OOM-kills it mid-batch.
        Checked after each message (reading /proc costs microseconds): a worker that takes no
        messages does not grow.
        """
        limit = self.settings.worker_max_rss_mb
        if not limit or self._recycling.is_set():
            return
        rss = resident_mib()
        if rss > limit:
            self._recycling.set()
            log.warning(
                "resident memory %.0f MiB passed WORKER_MAX_RSS_MB=%d: taking no more jobs, finishing held ones, "
                "then exiting for a restart",
                rss,
                limit,
            )
            os.kill(os.getpid(), signal.SIGTERM)

    @staticmethod
    def _fail(job_id: str, reason: JobError, stores: "Retrying") -> str:
        """End a job failed (expired, or its batch broke), giving back its budgets; the outcome's name."""
        stores.jobs.fail(job_id, reason)
        outcome = "expired" if reason == JobError.EXPIRED else "failed"
        metrics.JOBS.labels(outcome).inc()
        return outcome
