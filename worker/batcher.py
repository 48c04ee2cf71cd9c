"""Continuous cross-request batching: texts from many concurrent jobs share forward passes.

Celery threads each hand one job to ``Batcher.submit`` and wait on its future. One inference
thread loops: it takes every job queued right now (up to GATHER_MAX_TEXTS texts; it waits for
more only if BATCH_MAX_WAIT_MS is set), drops the jobs whose deadline has passed, and runs the
rest in length-sorted forward passes bounded by BATCH_MAX_TEXTS and BATCH_MAX_TOKENS (tokens the
model really computes: real tokens when it runs packed). Jobs that arrive during a forward pass
form the next batch, so an idle model never waits and a busy one always has its next batch ready
(TEI's policy).

Interactive first: bulk jobs' chunks (``submit_bulk``) wait in a lane of their own. The loop takes
a bulk chunk when no interactive job is waiting, and runs interactive jobs that arrive meanwhile
before each of the chunk's forward passes, so an interactive text waits behind at most one bulk
forward pass. That wait is what a bulk job adds to an interactive request, so bulk passes are small:
at most BULK_PASS_MAX_TOKENS, and, while interactive traffic runs, at most BULK_PASS_MAX_MS by the
speed of the recent ones, so the wait stays short on a slow CPU too (docs/architecture.md, "Bulk
jobs"). Under constant interactive load bulk would never run, so it keeps a minimum share of
forward-pass time (BULK_MIN_SHARE, over the last LaneShare.WINDOW_S): while its share is below
that, a waiting bulk pass goes before interactive jobs.

A text is computed once even when concurrent requests send it in jobs that land in different
batches: the batcher keeps the predictions of its most recent texts (RECENT_RESULTS), so a job
gathered while, or soon after, the same text was in a forward pass takes that pass's result
instead of computing it again. (Its requests checked the cache before that result reached it.)
"""

import logging
import threading
import time
from collections import deque
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


# Fewest tokens a bulk pass is cut to, however slow the CPU: below it a pass is mostly fixed cost.
MIN_BULK_PASS_TOKENS = 32
# The batcher's two lanes.
INTERACTIVE, BULK = "interactive", "bulk"


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
    lane: str = INTERACTIVE


class LaneShare:
    """Forward-pass seconds of each lane over the last WINDOW_S: whether bulk is owed a pass."""

    WINDOW_S = 10.0

    def __init__(self, min_bulk_share: float):
        self.min_bulk_share = min_bulk_share
        self._passes: deque[tuple[float, str, float]] = deque()  # (ended at, lane, seconds)

    def record(self, lane: str, seconds: float) -> None:
        now = time.monotonic()
        self._passes.append((now, lane, seconds))
        while self._passes and self._passes[0][0] < now - self.WINDOW_S:
            self._passes.popleft()

    def interactive_recently(self) -> bool:
        """Whether an interactive pass ran in the last WINDOW_S."""
        horizon = time.monotonic() - self.WINDOW_S
        return any(lane == INTERACTIVE and ended_at >= horizon for ended_at, lane, _ in self._passes)

    def bulk_owed(self) -> bool:
        """Whether bulk's share of recent forward time is under its minimum."""
        if not self.min_bulk_share:
            return False
        horizon = time.monotonic() - self.WINDOW_S
        total = bulk = 0.0
        for ended_at, lane, seconds in self._passes:
            if ended_at >= horizon:
                total += seconds
                bulk += seconds if lane == BULK else 0.0
        return total > 0 and bulk < self.min_bulk_share * total


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
        bulk_min_share: float = 0.0,
        bulk_pass_max_s: float = 0.0,
    ):
        self.model = model
        self.max_texts = max_texts
        self.max_tokens = max_tokens
        self.max_wait_s = max_wait_ms / 1000
        self.gather_max_texts = gather_max_texts
        self.bulk_max_tokens = bulk_max_tokens
        self.bulk_pass_max_s = bulk_pass_max_s
        # Seconds per computed token of recent bulk passes (a moving average): this CPU's speed.
        self._bulk_seconds_per_token: float | None = None
        self.on_jobs_started = on_jobs_started
        self.on_batch = on_batch
        # Each lane in arrival order; the condition wakes the loop when either gets work.
        self._interactive: deque[PendingJob] = deque()
        self._bulk: deque[PendingJob] = deque()
        self._arrived = threading.Condition()
        self.share = LaneShare(bulk_min_share)
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
        with self._arrived:
            self._interactive.append(job)
            self._arrived.notify()
        return job.future

    def submit_bulk(self, job_id: str, texts: Sequence[str]) -> Future:
        """Queue a bulk chunk's texts in the bulk lane; the future resolves to {text: prediction}."""
        job = PendingJob(job_id, list(texts), float("inf"), time.time(), bulk=True)
        with self._arrived:
            self._bulk.append(job)
            self._arrived.notify()
        return job.future

    def _run(self) -> None:
        name_this_thread(FORWARD_THREAD_NAME)
        while True:
            with self._arrived:
                if self._stopping.is_set() and not (self._interactive or self._bulk):
                    return
            jobs = self._gather()
            if jobs and jobs[0].bulk:
                self._process_bulk(jobs[0])
            elif jobs:
                self._process(jobs)

    def _gather(self) -> list[PendingJob]:
        """Wait for work; then a bulk chunk alone, or every interactive job queued, up to gather_max_texts texts.

        A bulk chunk comes when no interactive job waits, or when bulk is owed its share. Only a
        non-zero max_wait_s waits for interactive jobs that have not arrived yet.
        """
        with self._arrived:
            if not (self._interactive or self._bulk):
                self._arrived.wait(0.2)
            if self._bulk and (not self._interactive or self.share.bulk_owed()):
                return [self._bulk.popleft()]
            jobs = self._take_interactive()
            give_up_at = time.monotonic() + self.max_wait_s
            while jobs and sum(len(job.texts) for job in jobs) < self.gather_max_texts:
                remaining = give_up_at - time.monotonic()
                if remaining <= 0 or not self._arrived.wait(remaining):
                    break
                jobs += self._take_interactive(sum(len(job.texts) for job in jobs))
            return jobs

    def _take_interactive(self, texts: int = 0) -> list[PendingJob]:
        """The interactive jobs queued now, in arrival order, up to gather_max_texts texts (the lock held)."""
        jobs = []
        while self._interactive and texts < self.gather_max_texts:
            jobs.append(self._interactive.popleft())
            texts += len(jobs[-1].texts)
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
            results = self._infer([chunk], self._serve_interactive_jobs, self.bulk_pass_tokens())
        except Exception as error:
            log.exception("bulk chunk of job %s failed", chunk.job_id)
            chunk.future.set_exception(error)
            return
        chunk.future.set_result({text: results[text] for text in chunk.texts})

    def bulk_pass_tokens(self) -> int:
        """Tokens per bulk pass: BULK_PASS_MAX_TOKENS; while interactive traffic runs, fewer where this CPU
        would take longer than bulk_pass_max_s (alone, bulk keeps the larger, more efficient passes)."""
        tokens = min(self.bulk_max_tokens, self.max_tokens)
        if self.bulk_pass_max_s and self._bulk_seconds_per_token and self.share.interactive_recently():
            tokens = min(tokens, max(MIN_BULK_PASS_TOKENS, int(self.bulk_pass_max_s / self._bulk_seconds_per_token)))
        return tokens

    def _serve_interactive_jobs(self) -> None:
        """Before a bulk pass: run the interactive jobs waiting, unless bulk is owed its share of passes."""
        while True:
            with self._arrived:
                if not self._interactive or self.share.bulk_owed():
                    return
                jobs = self._take_interactive()
            self._process(jobs)

    def _infer(
        self, jobs: list[PendingJob], before_each_pass: Callable[[], None] | None = None, max_tokens: int | None = None
    ) -> dict[str, list]:
        """Score the jobs' distinct texts not scored recently, in length-sorted batches bounded by text and token counts."""
        lane = BULK if jobs[0].bulk else INTERACTIVE
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
            self.share.record(lane, seconds)
            computed = self.model.computed_tokens([lengths[i] for i in group])
            if lane == BULK and computed:
                rate = seconds / computed
                previous = self._bulk_seconds_per_token
                self._bulk_seconds_per_token = rate if previous is None else 0.8 * previous + 0.2 * rate
            for index, prediction in zip(group, predictions):
                results[texts[index]] = prediction
            self._recent.store(self.model.identity, [texts[index] for index in group], predictions)
            in_group = {texts[i] for i in group}
            self.on_batch(
                BatchRecord(
                    texts=len(group),
                    jobs=sum(1 for job in jobs if not in_group.isdisjoint(job.texts)),
                    tokens=sum(lengths[i] for i in group),
                    computed_tokens=computed,
                    seconds=seconds,
                    lane=lane,
                )
            )
        return results
