"""Continuous cross-request batching: texts from many concurrent jobs share forward passes.

Celery threads each hand one job to ``Batcher.submit`` and wait on its future. One inference
thread loops: it takes every job queued right now (up to GATHER_MAX_TEXTS texts; it waits for
more only if BATCH_MAX_WAIT_MS is set), drops the jobs whose deadline has passed, and runs the
rest in length-sorted forward passes bounded by BATCH_MAX_TEXTS and BATCH_MAX_TOKENS (tokens the
model really computes: real tokens when it runs packed). Jobs that arrive during a forward pass
form the next batch, so an idle model never waits and a busy one always has its next batch ready
(TEI's policy).

A text is computed once even when concurrent requests send it in jobs that land in different
batches: the batcher keeps the predictions of its most recent texts (RECENT_RESULTS), so a job
gathered while, or soon after, the same text was in a forward pass takes that pass's result
instead of computing it again. (Its requests checked the cache before that result reached it.)
"""

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from common.hot_cache import HotCache
from model.core import length_sorted_batches
from worker.thread_names import FORWARD_THREAD_NAME, name_this_thread

log = logging.getLogger(__name__)

# Predictions kept for texts that arrive again before their first result reaches the cache: several
# gathers' worth (GATHER_MAX_TEXTS is 256), a few MiB at most.
RECENT_RESULTS = 4096


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
    """What one forward pass did: real tokens, and the tokens it computed (padding included, if any)."""

    texts: int
    jobs: int
    tokens: int
    computed_tokens: int
    seconds: float


class Batcher:
    """Gathers jobs from many threads and runs them through the model together."""

    def __init__(
        self,
        model,
        max_texts: int,
        max_tokens: int,
        max_wait_ms: float,
        gather_max_texts: int,
        on_jobs_started: Callable[[list[PendingJob], float], None] = lambda jobs, now: None,
        on_batch: Callable[[BatchRecord], None] = lambda record: None,
    ):
        self.model = model
        self.max_texts = max_texts
        self.max_tokens = max_tokens
        self.max_wait_s = max_wait_ms / 1000
        self.gather_max_texts = gather_max_texts
        self.on_jobs_started = on_jobs_started
        self.on_batch = on_batch
        self._pending: queue.SimpleQueue[PendingJob] = queue.SimpleQueue()
        self._recent = HotCache(RECENT_RESULTS)
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
        name_this_thread(FORWARD_THREAD_NAME)
        while not (self._stopping.is_set() and self._pending.empty()):
            jobs = self._gather()
            if jobs:
                self._process(jobs)

    def _gather(self) -> list[PendingJob]:
        """Wait for a first job, then take every job already queued, up to gather_max_texts texts.

        Only a non-zero max_wait_s waits for jobs that have not arrived yet.
        """
        try:
            jobs = [self._pending.get(timeout=0.2)]
        except queue.Empty:
            return []
        texts = len(jobs[0].texts)
        give_up_at = time.monotonic() + self.max_wait_s
        while texts < self.gather_max_texts:
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
        """Score the jobs' distinct texts not scored recently, in length-sorted batches bounded by text and token counts."""
        distinct = list(dict.fromkeys(text for job in jobs for text in job.texts))
        known = self._recent.lookup(self.model.identity, distinct)
        results = {text: prediction for text, prediction in zip(distinct, known) if prediction is not None}
        texts = [text for text, prediction in zip(distinct, known) if prediction is None]
        if not texts:
            return results
        token_ids = self.model.encode(texts)
        lengths = [len(ids) for ids in token_ids]
        for group in length_sorted_batches(lengths, self.max_texts, self.max_tokens, self.model.pads):
            started = time.perf_counter()
            predictions = self.model.predict_encoded([token_ids[i] for i in group])
            seconds = time.perf_counter() - started
            for index, prediction in zip(group, predictions):
                results[texts[index]] = prediction
            self._recent.store(self.model.identity, [texts[index] for index in group], predictions)
            in_group = {texts[i] for i in group}
            self.on_batch(
                BatchRecord(
                    texts=len(group),
                    jobs=sum(1 for job in jobs if not in_group.isdisjoint(job.texts)),
                    tokens=sum(lengths[i] for i in group),
                    computed_tokens=self.model.computed_tokens([lengths[i] for i in group]),
                    seconds=seconds,
                )
            )
        return results
