"""The main Redis's primary SIGKILLed under load: ``python -m bench.chaos --fault redis_failover``.

A fresh local stack with the main Redis as ``python -m stack --ha`` runs it (a primary, a replica
and three Sentinels, appendfsync everysec), its own evicting cache Redis, one worker and gunicorn
with two processes. One bulk job of BULK_TEXTS texts is submitted; then 32 client threads send
uncached requests of two texts of two sentences each: half wait for their answer, half send wait=0
and poll each accepted job until it ends before they send the next. A third of the way in, the
primary is SIGKILLed; what Kubernetes does next (start the dead server again, as a replica of the
primary the Sentinels name) is played as ``python -m stack --ha`` plays it.

The report (JSON):
- ``jobs_accepted``: requests answered 200 or 202; ``jobs_lost``: those answered 202 whose job
  never ended; ``jobs_failed``: those that ended failed (expired);
- ``texts_scored_twice``: texts the worker computed beyond the distinct texts it computed (its
  forward passes' texts, less the cache's entries: each computed text, bulk ones too, fills one);
- ``recovery_s``: from the kill to the first 200 for a text nobody asked before (a probe every
  quarter second); ``probe_statuses``: the probes' answers after the kill;
- ``failover_s``: from the kill until the Sentinels name the replica;
- ``client_statuses``: answers by status (``503 not_replicated`` and ``503 unavailable`` apart),
  ``not_json`` and ``errors`` (no answer at all);
- ``in_flight_at_kill``: jobs answered 202 and still queued or running at the kill;
- ``bulk_job``: how the bulk job ended, and whether each of its texts has one result.
"""

import threading
import time
from collections import Counter

import requests
from prometheus_client.parser import text_string_to_metric_families

from common.settings import Settings
from common.store import Stores, connect, connect_main
from stack import RedisServer, free_port, start_web, start_worker, wait_until
from stack.redis_ha import RedisHa

CLIENTS = 32
BULK_TEXTS = 2000
SYNC_WAIT_S = 5
# A consumer's unacked messages come back after this long; the default (120 s) would only make the run longer.
VISIBILITY_TIMEOUT_S = 30
# How long every accepted job and the bulk job get to end after the load stops.
SETTLE_S = VISIBILITY_TIMEOUT_S + 90
SENTENCE = "the plot wanders , but the actors are good and the ending lands well . "
# The load's texts: two sentences, about SST-2's longer ones (tests pass longer ones, to keep jobs queued).
CLIENT_TEXT = SENTENCE * 2


class RecoveryProbe:
    """Posts a fresh uncached text every quarter second and records when each attempt succeeded."""

    def __init__(self, web_url: str):
        self.web_url = web_url
        # (started, answered, status or the exception's name) of every attempt
        self.answers: list[tuple[float, float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        number = 0
        while not self._stop.is_set():
            number += 1
            started = time.time()
            try:
                response = requests.post(
                    f"{self.web_url}/predict", json={"text": [f"a recovery probe , number {number} ."]}, timeout=30
                )
                status = str(response.status_code)
            except requests.RequestException as error:
                status = type(error).__name__
            self.answers.append((started, time.time(), status))
            self._stop.wait(0.25)

    def seconds_to_first_success(self, fault_at: float) -> float:
        """From the fault to the first 200 for a probe sent after it."""
        answered = [at for started, at, status in self.answers if started >= fault_at and status == "200"]
        return round(min(answered) - fault_at, 1) if answered else float("inf")

    def statuses_after(self, fault_at: float) -> dict[str, int]:
        return dict(Counter(status for started, _, status in self.answers if started >= fault_at))

    def start(self) -> "RecoveryProbe":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def seconds_to_recover(self, fault_at: float) -> float:
        """From the fault to the first success after the last failed probe (0 when none failed)."""
        after = [(at, status == "200") for at, _, status in self.answers if at >= fault_at]
        failures = [at for at, ok in after if not ok]
        if not failures:
            return 0.0
        successes = [at for at, ok in after if ok and at > failures[-1]]
        return round(successes[0] - fault_at, 1) if successes else float("inf")

    @property
    def count(self) -> int:
        return len(self.answers)


class UncachedClients:
    """Threads that post distinct uncached texts until stopped and keep every answer; the odd ones
    send wait=0 and poll each accepted job until it ends before they send the next."""

    def __init__(self, url: str, count: int, text: str = CLIENT_TEXT):
        self.url = url
        self.text = text
        # (status, content type, JSON body or {}, texts) per answer; a list append is atomic under the GIL.
        self.answers: list[tuple[int, str, dict, list[str]]] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(number,), daemon=True) for number in range(count)]

    def _run(self, number: int) -> None:
        sent = 0
        while not self._stop.is_set():
            sent += 1
            texts = [f"{self.text} client {number} , take {sent}-{i}" for i in range(2)]
            wait = "?wait=0" if number % 2 else ""
            try:
                response = requests.post(f"{self.url}/predict{wait}", json={"text": texts}, timeout=SYNC_WAIT_S + 35)
            except requests.RequestException as error:
                self.errors.append(error)
                continue
            content_type = response.headers.get("Content-Type", "").split(";")[0]
            body = response.json() if content_type == "application/json" else {}
            self.answers.append((response.status_code, content_type, body, texts))
            if response.status_code == 202:
                self._poll(body["job_id"])

    def _poll(self, job_id: str) -> None:
        give_up_at = time.monotonic() + 30
        while not self._stop.is_set() and time.monotonic() < give_up_at:
            try:
                if requests.get(f"{self.url}/jobs/{job_id}", timeout=10).json().get("status") in ("done", "failed"):
                    return
            except (requests.RequestException, ValueError):
                pass
            self._stop.wait(0.2)

    def start(self) -> "UncachedClients":
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def accepted(self) -> dict[str, list[str]]:
        """Texts of each job answered 202, by job id."""
        return {body["job_id"]: texts for status, _, body, texts in list(self.answers) if status == 202}

    def statuses(self) -> dict[str, int]:
        """Answers by status; 503s by error code, answers that are not JSON, and requests that got no answer."""
        counts = Counter()
        for status, content_type, body, _ in self.answers:
            if content_type != "application/json":
                counts["not_json"] += 1
            counts[f"{status} {body.get('error')}" if status >= 400 else str(status)] += 1
        counts["errors"] = len(self.errors)
        return dict(sorted(counts.items()))


def jobs_by_status(stores: Stores, job_ids) -> dict[str, str | None]:
    job_ids = list(job_ids)
    return dict(zip(job_ids, stores.jobs.statuses(job_ids)))


def worker_texts_computed(metrics_port: int) -> int:
    """Texts the worker has run through its forward passes, both lanes, from its /metrics."""
    text = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "sentiment_worker_batch_texts_sum":
                return int(sample.value)
    raise RuntimeError("the worker's /metrics has no sentiment_worker_batch_texts_sum")


def run_redis_failover(seconds: int) -> dict:
    """SIGKILL the primary a third of the way into ``seconds`` of load; the report described above."""
    ha = RedisHa()
    cache = RedisServer(maxmemory="256mb", maxmemory_policy="allkeys-lru", appendonly=False)
    processes = []
    try:
        ha.start()
        cache.start()
        metrics_port = free_port()
        env = {
            "REDIS_URL": ha.url,
            "REDIS_SENTINELS": ha.sentinel_setting,
            "CACHE_REDIS_URL": cache.url,
            "TORCH_THREADS": "2",
            "SYNC_WAIT_S": str(SYNC_WAIT_S),
            "VISIBILITY_TIMEOUT_S": str(VISIBILITY_TIMEOUT_S),
            "WORKER_METRICS_PORT": str(metrics_port),
            "PYTHONUNBUFFERED": "1",
        }
        # Through the Sentinels, so it reads the new primary after the failover.
        main = connect_main(Settings.from_env(environ=env))
        stores = Stores.over(main)
        processes.append(start_worker(env, main))
        port = free_port()
        processes.append(start_web(env, port, processes=2))
        url = f"http://127.0.0.1:{port}"
        bulk_texts = [f"bulk text {index} : the film is fine , the end is weak ." for index in range(BULK_TEXTS)]
        bulk = requests.post(f"{url}/jobs", json={"text": bulk_texts}, timeout=60)
        bulk.raise_for_status()
        bulk_id = bulk.json()["job_id"]

        clients = UncachedClients(url, CLIENTS).start()
        probe = RecoveryProbe(url).start()
        time.sleep(seconds / 3)
        accepted_now = clients.accepted()
        in_flight = [job_id for job_id, status in jobs_by_status(stores, accepted_now).items() if status in ("queued", "running")]
        killed = ha.primary()
        killed_at, killed_monotonic = time.time(), time.monotonic()
        killed.process.kill()
        killed.process.wait(10)
        wait_until(lambda: ha.primary_port() not in (None, killed.port), 60, "the Sentinels to name a new primary", 0.05)
        failover_s = time.monotonic() - killed_monotonic
        wait_until(ha.heal, 60, "the killed server to come back as a replica", 0.2)
        time.sleep(max(0.0, killed_monotonic + seconds * 2 / 3 - time.monotonic()))
        clients.stop()
        probe.stop()

        accepted = clients.accepted()
        give_up_at = time.monotonic() + SETTLE_S
        while time.monotonic() < give_up_at:
            statuses = jobs_by_status(stores, accepted)
            bulk_status = stores.bulk.status(bulk_id)
            if all(status in ("done", "failed") for status in statuses.values()) and bulk_status in ("done", "failed"):
                break
            time.sleep(1)
        bulk_job = requests.get(f"{url}/jobs/{bulk_id}", timeout=10).json()
        results = requests.get(f"{url}/jobs/{bulk_id}/results?limit={BULK_TEXTS}", timeout=60)
        bulk_predictions = results.json().get("predictions", []) if results.status_code == 200 else []
        with connect(cache.url) as cache_client:
            distinct_texts_computed = cache_client.dbsize()
        return {
            "fault": "redis_failover",
            "seconds": seconds,
            "jobs_accepted": sum(status in (200, 202) for status, _, _, _ in clients.answers),
            "jobs_lost": sum(status not in ("done", "failed") for status in statuses.values()),
            "jobs_failed": sum(status == "failed" for status in statuses.values()),
            "texts_scored_twice": worker_texts_computed(metrics_port) - distinct_texts_computed,
            "recovery_s": probe.seconds_to_first_success(killed_at),
            # From the kill to the first 200 after the probe's last failure: later refusals (a 202 when
            # the backlog outlasts SYNC_WAIT_S, a 503) show up here and in probe_statuses.
            "recovery_s_after_last_probe_failure": probe.seconds_to_recover(killed_at),
            "probe_statuses": probe.statuses_after(killed_at),
            "failover_s": round(failover_s, 1),
            "client_statuses": clients.statuses(),
            "in_flight_at_kill": len(in_flight),
            "bulk_job": {
                "status": bulk_job.get("status"),
                "texts": BULK_TEXTS,
                "texts_with_a_result": sum(
                    isinstance(prediction, list) and len(prediction) == 2 for prediction in bulk_predictions
                ),
            },
        }
    finally:
        for process in reversed(processes):
            process.stop()
        cache.close()
        ha.close()
