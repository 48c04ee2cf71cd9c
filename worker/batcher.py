"""Continuous cross-request batching: texts from many concurrent jobs share forward passes.

Celery threads each hand one job to ``Batcher.submit`` and wait on its future. One inference
thread loops: it takes every job queued right now (up to GATHER_MAX_TEXTS texts; it waits for
more only if BATCH_MAX_WAIT_MS is set), drops the jobs whose deadline has passed, and runs the
rest in length-sorted forward passes bounded by BATCH_MAX_TEXTS and BATCH_MAX_TOKENS (tokens the
model really computes: real tokens when it runs packed). Jobs that arrive during a forward pass
form the next batch, so an idle model never waits and a busy one always has its next batch ready
(TEI's policy).

Interactive first: bulk jobs' chunks (``submit_bulk``) wait in a lane of their own. The loop takes
a bulk chunk only when no interactive job is waiting, and runs interactive jobs that arrive
meanwhile before each of the chunk's forward passes, so an interactive text waits behind at most
one bulk forward pass. Bulk passes are kept small (BULK_PASS_MAX_TOKENS, about 0.1 s on 2 cores):
that wait is what a bulk job adds to an interactive request, while a pass of 16 texts still runs
at 0.92-0.95x the texts/s of one of 64 on CPU (docs/architecture.md, "Bulk jobs").

A text is computed once even when concurrent requests send it in jobs that land in different
batches: the batcher keeps the predictions of its most recent texts (RECENT_RESULTS), so a job
gathered while, or soon after, the same text was in a forward pass takes that pass's result
instead of computing it again. (Its requests checked the cache before that result reached it.)
"""

import itertools
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


# The batcher's two lanes; the lower number goes first.
INTERACTIVE, BULK = 0, 1


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
    bulk: bool = False


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
        bulk_max_tokens: int,
        on_jobs_started: Callable[[list[PendingJob], float], None] = lambda jobs, now: None,
        on_batch: Callable[[BatchRecord], None] = lambda record: None,
    ):
        self.model = model
        self.max_texts = max_texts
        self.max_tokens = max_tokens
        self.max_wait_s = max_wait_ms / 1000
        self.gather_max_texts = gather_max_texts
        self.bulk_max_tokens = bulk_max_tokens
        self.on_jobs_started = on_jobs_started
        self.on_batch = on_batch
        # (lane, arrival, job): interactive (0) before bulk (1), each lane in arrival order.
        self._pending: queue.PriorityQueue[tuple[int, int, PendingJob]] = queue.PriorityQueue()
        self._arrivals = itertools.count()
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
        self._pending.put((INTERACTIVE, next(self._arrivals), job))
        return job.future

    def submit_bulk(self, job_id: str, texts: Sequence[str]) -> Future:
        """Queue a bulk chunk's texts behind every interactive job; the future resolves to {text: prediction}."""
        job = PendingJob(job_id, list(texts), float("inf"), time.time(), bulk=True)
        self._pending.put((BULK, next(self._arrivals), job))
        return job.future

    def _interactive_waiting(self) -> bool:
        with self._pending.mutex:  # PriorityQueue keeps a heap: its first item is the next out
            return bool(self._pending.queue) and self._pending.queue[0][0] == INTERACTIVE

    def _run(self) -> None:
        name_this_thread(FORWARD_THREAD_NAME)
        while not (self._stopping.is_set() and self._pending.empty()):
            jobs = self._gather()
            if jobs and jobs[0].bulk:
                self._process_bulk(jobs[0])
            elif jobs:
                self._process(jobs)

    def _gather(self) -> list[PendingJob]:
        """Wait for a first job, then take every interactive job already queued, up to gather_max_texts texts.

        A bulk chunk comes alone, and only when no interactive job waits. Only a non-zero
        max_wait_s waits for jobs that have not arrived yet.
        """
        try:
            lane, _, first = self._pending.get(timeout=0.2)
        except queue.Empty:
            return []
        if lane == BULK:
            return [first]
        jobs = [first]
        texts = len(first.texts)
        give_up_at = time.monotonic() + self.max_wait_s
        while texts < self.gather_max_texts:
            remaining = give_up_at - time.monotonic()
            try:
                item = self._pending.get_nowait() if remaining <= 0 else self._pending.get(timeout=remaining)
            except queue.Empty:
                break
            if item[0] == BULK:
                self._pending.put(item)  # keeps its place: the arrival number orders the lane
                break
            jobs.append(item[2])
            texts += len(item[2].texts)
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

    def _process_bulk(self, chunk: PendingJob) -> None:
        """One bulk chunk, pass by pass, serving waiting interactive jobs before each pass."""
        try:
            results = self._infer([chunk], self._serve_interactive_jobs, min(self.bulk_max_tokens, self.max_tokens))
        except Exception as error:
            log.exception("bulk chunk of job %s failed", chunk.job_id)
            chunk.future.set_exception(error)
            return
        chunk.future.set_result({text: results[text] for text in chunk.texts})

    def _serve_interactive_jobs(self) -> None:
        # Only this thread takes from the queue, so what the peek saw is what _gather takes.
        while self._interactive_waiting():
            self._process(self._gather())

    def _infer(
        self, jobs: list[PendingJob], before_each_pass: Callable[[], None] | None = None, max_tokens: int | None = None
    ) -> dict[str, list]:
        """Score the jobs' distinct texts not scored recently, in length-sorted batches bounded by text and token counts."""
        distinct = list(dict.fromkeys(text for job in jobs for text in job.texts))
        known = self._recent.lookup(self.model.identity, distinct)
        results = {text: prediction for text, prediction in zip(distinct, known) if prediction is not None}
        texts = [text for text, prediction in zip(distinct, known) if prediction is None]
        if not texts:
            return results
        token_ids = self.model.encode(texts)
        lengths = [len(ids) for ids in token_ids]
        for group in length_sorted_batches(
            lengths, self.max_texts, self.max_tokens if max_tokens is None else max_tokens, self.model.pads
        ):
            if before_each_pass:
                before_each_pass()
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
