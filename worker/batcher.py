"""Cross-request batching: texts from many concurrent jobs share one forward pass.

Celery threads each hand one job to ``Batcher.submit`` and wait on its future; a single
inference thread gathers jobs for up to BATCH_MAX_WAIT_MS (or until BATCH_MAX_TEXTS texts),
drops the ones whose deadline has passed, and runs the rest in length-sorted batches bounded
by BATCH_MAX_TEXTS and BATCH_MAX_TOKENS.
"""

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from model.core import length_sorted_batches

log = logging.getLogger(__name__)


class DeadlineExpired(Exception):
    """The job's deadline passed before its batch started; its texts were not computed."""


@dataclass
class PendingJob:
    """One job's texts waiting for a batch."""

    job_id: str
    texts: Sequence[str]
    deadline: float
    enqueued_at: float
    future: Future = field(default_factory=Future)


@dataclass(frozen=True)
class BatchRecord:
    """What one forward pass did."""

    texts: int
    jobs: int
    tokens: int
    padded_tokens: int
    seconds: float


class Batcher:
    """Gathers jobs from many threads and runs them through the model together."""

    def __init__(
        self,
        model,
        max_texts: int,
        max_tokens: int,
        max_wait_ms: float,
        on_jobs_started: Callable[[list[PendingJob], float], None] = lambda jobs, now: None,
        on_batch: Callable[[BatchRecord], None] = lambda record: None,
    ):
        self.model = model
        self.max_texts = max_texts
        self.max_tokens = max_tokens
        self.max_wait_s = max_wait_ms / 1000
        self.on_jobs_started = on_jobs_started
        self.on_batch = on_batch
        self._pending: queue.SimpleQueue[PendingJob] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 30) -> None:
        """Finish the jobs already handed in, then stop."""
        self._stopping.set()
        self._thread.join(timeout_s)

    def submit(self, job_id: str, texts: Sequence[str], deadline: float, enqueued_at: float) -> Future:
        """Queue a job's texts; the future resolves to {text: prediction} or raises DeadlineExpired."""
        job = PendingJob(job_id, list(texts), deadline, enqueued_at)
        self._pending.put(job)
        return job.future

    def _run(self) -> None:
        while not (self._stopping.is_set() and self._pending.empty()):
            jobs = self._gather()
            if jobs:
                self._process(jobs)

    def _gather(self) -> list[PendingJob]:
        """Wait for a first job, then for more until the batch is full or the wait bound passes."""
        try:
            jobs = [self._pending.get(timeout=0.2)]
        except queue.Empty:
            return []
        texts = len(jobs[0].texts)
        give_up_at = time.monotonic() + self.max_wait_s
        while texts < self.max_texts:
            # Jobs already waiting join at once; only an empty queue costs wait time.
            remaining = give_up_at - time.monotonic()
            try:
                job = self._pending.get_nowait() if remaining <= 0 else self._pending.get(timeout=remaining)
            except queue.Empty:
                break
            jobs.append(job)
            texts += len(job.texts)
        return jobs

    def _process(self, jobs: list[PendingJob]) -> None:
        now = time.time()
        live = []
        for job in jobs:
            if job.deadline < now:
                job.future.set_exception(DeadlineExpired(job.job_id))
            else:
                live.append(job)
        if not live:
            return
        try:
            self.on_jobs_started(live, now)
            results = self._infer(live)
        except Exception as error:  # a failed batch must fail its jobs, not hang their threads
            log.exception("batch of %d jobs failed", len(live))
            for job in live:
                job.future.set_exception(error)
            return
        for job in live:
            job.future.set_result({text: results[text] for text in job.texts})

    def _infer(self, jobs: list[PendingJob]) -> dict[str, list]:
        """Score the jobs' distinct texts in length-sorted batches bounded by text and token counts."""
        texts = list(dict.fromkeys(text for job in jobs for text in job.texts))
        token_ids = self.model.encode(texts)
        lengths = [len(ids) for ids in token_ids]
        results = {}
        for group in length_sorted_batches(lengths, self.max_texts, self.max_tokens):
            started = time.perf_counter()
            predictions = self.model.predict_encoded([token_ids[i] for i in group])
            seconds = time.perf_counter() - started
            for index, prediction in zip(group, predictions):
                results[texts[index]] = prediction
            in_group = {texts[i] for i in group}
            self.on_batch(
                BatchRecord(
                    texts=len(group),
                    jobs=sum(1 for job in jobs if not in_group.isdisjoint(job.texts)),
                    tokens=sum(lengths[i] for i in group),
                    padded_tokens=len(group) * max(lengths[i] for i in group),
                    seconds=seconds,
                )
            )
        return results
