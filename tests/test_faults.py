"""Faults: a worker killed or stopped mid-batch, Redis going away, the web process restarting.

Each test runs its own Redis and processes, so the shared stack of the other tests is untouched.
"""

import contextlib
import json
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
import requests

from common.settings import Settings
from common.store import Stores
from common.store.keys import WORKERS_KEY, done_key, job_key
from stack import RedisServer, free_port, start_web, start_worker, wait_until

# Long texts make a batch take long enough to interrupt it on purpose.
LONG_TEXT = "the film drags on and on , yet the final scenes are moving and the cast is wonderful . " * 22


@pytest.fixture
def stack(service_env):
    """A private Redis plus the environment for processes that use it."""
    server = RedisServer()
    server.start()
    env = {
        **service_env,
        "REDIS_URL": server.url,
        "QUEUE_NAME": "sentiment-faults",
        "VISIBILITY_TIMEOUT_S": "4",
        "BATCH_MAX_WAIT_MS": "300",
        "SYNC_WAIT_S": "5",
        "WORKER_METRICS_PORT": "0",
    }
    client = redis.Redis.from_url(server.url, decode_responses=True)
    processes = []
    yield server, env, client, processes
    for process in processes:
        process.stop()
    server.close()


def submit_long_jobs(web_url: str, jobs: int, texts_per_job: int) -> list[tuple[str, list[str]]]:
    """Queue jobs of distinct long texts with wait=0; return (job id, texts) pairs."""
    submitted = []
    for job in range(jobs):
        texts = [f"{LONG_TEXT} take {job}-{i}" for i in range(texts_per_job)]
        response = requests.post(f"{web_url}/predict?wait=0", json={"text": texts}, timeout=30)
        assert response.status_code == 202, response.text
        submitted.append((response.json()["job_id"], texts))
    return submitted


def job_status(web_url: str, job_id: str) -> dict:
    return requests.get(f"{web_url}/jobs/{job_id}", timeout=10).json()


def assert_all_done(web_url: str, submitted, timeout_s: float) -> None:
    for job_id, texts in submitted:
        job = wait_until(lambda job_id=job_id: finished(web_url, job_id), timeout_s, f"job {job_id}")
        assert len(job["predictions"]) == len(texts)


def finished(web_url: str, job_id: str) -> dict | None:
    job = job_status(web_url, job_id)
    return job if job["status"] == "done" else None


def job_statuses(client: redis.Redis, job_ids) -> dict[str, str | None]:
    """Each job's status as stored right now, read from Redis in one round trip."""
    return dict(zip(job_ids, Stores.over(client).jobs.statuses(job_ids)))


def all_job_ids(client: redis.Redis) -> list[str]:
    prefix = job_key("")
    return [key[len(prefix) :] for key in client.scan_iter(f"{prefix}*") if not key.endswith(":done")]


def times_ended(client: redis.Redis, job_id: str) -> int:
    """How often the job was ended: each end pushes to its done list, which nobody pops for wait=0 jobs."""
    return client.llen(done_key(job_id))


def assert_each_text_once(client: redis.Redis, job_id: str, texts: list[str]) -> None:
    # One prediction per distinct text, in the order the record holds its texts: none twice, none missing.
    results = json.loads(client.hget(job_key(job_id), "results"))
    assert len(results) == len(set(texts)), f"job {job_id}'s results do not hold each of its texts once"
    assert all(len(prediction) == 2 for prediction in results), results


def test_worker_sigkilled_mid_batch_its_jobs_complete_once_on_a_new_worker(stack):
    server, env, client, processes = stack
    web_port = free_port()
    processes.append(start_web(env, web_port, processes=1))
    web_url = f"http://127.0.0.1:{web_port}"
    doomed = start_worker(env, client, "doomed-worker")
    processes.append(doomed)
    doomed_names = set(client.zrange(WORKERS_KEY, 0, -1))
    submitted = submit_long_jobs(web_url, jobs=6, texts_per_job=8)
    texts_of = dict(submitted)
    wait_until(lambda: "running" in job_statuses(client, list(texts_of)).values(), 30, "a batch to start")
    doomed.signal(signal.SIGKILL)
    doomed.process.wait(10)
    at_kill = job_statuses(client, list(texts_of))
    interrupted = [job_id for job_id, status in at_kill.items() if status == "running"]
    assert interrupted, f"no job was running at the kill: {at_kill}"

    processes.append(start_worker(env, client, "rescue-worker"))
    assert_all_done(web_url, submitted, 120)
    for job_id in interrupted:
        ended = times_ended(client, job_id)
        assert ended == 1, f"job {job_id}, running at the kill (statuses then: {at_kill}), ended {ended} times"
        assert_each_text_once(client, job_id, texts_of[job_id])
    # The interrupted batch was redelivered: the rescue worker computed at least its jobs' texts.
    batch_log = Stores.over(client).workers

    def rescued() -> int:
        return sum(batch["texts"] for batch in batch_log.recent_batches() if batch["worker"] not in doomed_names)

    interrupted_texts = sum(len(texts_of[job_id]) for job_id in interrupted)
    # A worker's bookkeeping thread writes the batch log, possibly just after the batch's answers.
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: rescued() >= interrupted_texts, 10, "the rescue's batches in the log")
    assert rescued() >= interrupted_texts, f"{interrupted_texts} texts were running at the kill; the rescue computed {rescued()}"


def test_worker_past_its_memory_limit_finishes_held_jobs_and_exits_for_a_restart(stack):
    server, env, client, processes = stack
    web_port = free_port()
    processes.append(start_web(env, web_port, processes=1))
    web_url = f"http://127.0.0.1:{web_port}"
    # Queued before the worker starts, one message each; the worker holds two messages at a time.
    submitted = submit_long_jobs(web_url, jobs=6, texts_per_job=8)
    # Any worker is past 1 MiB, so this one recycles once its first message is done.
    bloated = start_worker({**env, "WORKER_MAX_RSS_MB": "1", "WORKER_CONCURRENCY": "2"}, client, "bloated-worker")
    processes.append(bloated)
    exit_code = bloated.process.wait(90)
    assert "passed WORKER_MAX_RSS_MB=1" in bloated.log(), bloated.tail()
    assert exit_code == 0, bloated.tail()
    statuses = {job_id: job_status(web_url, job_id)["status"] for job_id, _ in submitted}
    assert "done" in statuses.values(), f"the worker finished no job before exiting: {statuses}"
    assert "failed" not in statuses.values(), statuses
    assert list(statuses.values()).count("done") < len(submitted), f"it kept taking jobs past its limit: {statuses}"
    # What it never took, or gave back unacked, waits for the next worker: nothing is lost.
    processes.append(start_worker(env, client, "fresh-worker"))
    assert_all_done(web_url, submitted, 120)


def test_worker_sigterm_finishes_its_batch_before_exiting_and_leaves_the_rest_queued(stack):
    server, env, client, processes = stack
    web_port = free_port()
    processes.append(start_web(env, web_port, processes=1))
    web_url = f"http://127.0.0.1:{web_port}"
    # One message at a time, so some jobs are certainly not taken when SIGTERM arrives.
    worker = start_worker({**env, "WORKER_CONCURRENCY": "1"}, client)
    processes.append(worker)
    submitted = submit_long_jobs(web_url, jobs=4, texts_per_job=8)
    job_ids = [job_id for job_id, _ in submitted]
    wait_until(lambda: "running" in job_statuses(client, job_ids).values(), 30, "a batch to start")
    worker.signal(signal.SIGTERM)
    at_term = job_statuses(client, job_ids)
    running_at_term = [job_id for job_id, status in at_term.items() if status == "running"]
    assert running_at_term, f"no job was running at SIGTERM: {at_term}"
    assert worker.process.wait(120) == 0, worker.tail()
    after_exit = job_statuses(client, job_ids)
    assert all(after_exit[job_id] == "done" for job_id in running_at_term), f"at SIGTERM {at_term}, after exit {after_exit}"
    untaken = [job_id for job_id, status in after_exit.items() if status == "queued"]
    assert untaken, f"every job was taken before SIGTERM, so nothing shows untaken ones stay queued: {after_exit}"

    processes.append(start_worker(env, client, "next-worker"))
    assert_all_done(web_url, submitted, 120)
    for job_id in job_ids:
        assert times_ended(client, job_id) == 1, f"job {job_id} ended {times_ended(client, job_id)} times"


def test_redis_outage_answers_503_json_and_recovers_without_restarts(stack):
    server, env, client, processes = stack
    web_port = free_port()
    processes.append(start_web(env, web_port))
    processes.append(start_worker(env, client))
    web_url = f"http://127.0.0.1:{web_port}"
    assert requests.post(f"{web_url}/predict", json={"text": ["before the outage"]}, timeout=30).status_code == 200
    sync_wait_s = float(env["SYNC_WAIT_S"])

    def post(i):
        texts = [f"{LONG_TEXT} during the outage {i}-{j}" for j in range(8)]
        try:
            return requests.post(f"{web_url}/predict", json={"text": texts}, timeout=sync_wait_s + 25)
        except requests.RequestException as error:  # a dropped connection or a hang would be a failure too
            return error

    with ThreadPoolExecutor(8) as pool:
        requests_in_flight = [pool.submit(post, i) for i in range(8)]
        wait_until(lambda: "running" in job_statuses(client, all_job_ids(client)).values(), 30, "a batch to start")
        at_outage = job_statuses(client, all_job_ids(client))
        waiting = sum(not future.done() for future in requests_in_flight)
        server.stop()
        answers = [future.result() for future in requests_in_flight]
    unfinished = {job_id: status for job_id, status in at_outage.items() if status in ("queued", "running")}
    assert waiting and unfinished, f"nothing was in flight when Redis stopped: {waiting} requests waiting, jobs {at_outage}"
    for answer in answers:
        assert isinstance(answer, requests.Response), f"{answer} (in flight at the outage: {unfinished})"
        assert answer.status_code in (200, 202, 503), answer.text
        assert answer.headers["Content-Type"].startswith("application/json")
        assert answer.elapsed.total_seconds() < sync_wait_s + 5, f"answered after {answer.elapsed}, past the wait bound"

    down = requests.post(f"{web_url}/predict", json={"text": ["while redis is down"]}, timeout=30)
    assert down.status_code == 503
    assert down.json()["error"] == "unavailable"
    assert requests.get(f"{web_url}/ready", timeout=30).status_code == 503
    assert requests.get(f"{web_url}/health", timeout=5).status_code == 200

    server.start()
    wait_until(
        lambda: requests.post(f"{web_url}/predict", json={"text": ["after the outage"]}, timeout=30).status_code == 200,
        90,
        "the service to recover",
        interval_s=1,
    )
    assert all(process.alive() for process in processes)
    # Every job accepted before the outage, queued or mid-batch, was persisted and still finishes.
    for job_id, status in unfinished.items():
        wait_until(lambda job_id=job_id: finished(web_url, job_id), 90, f"job {job_id} ({status} at the outage)")


def test_web_restart_keeps_jobs_pollable(stack):
    server, env, client, processes = stack
    web_port = free_port()
    web = start_web(env, web_port, processes=1)
    processes.append(start_worker(env, client))
    web_url = f"http://127.0.0.1:{web_port}"
    submitted = submit_long_jobs(web_url, jobs=4, texts_per_job=8)
    at_restart = job_statuses(client, [job_id for job_id, _ in submitted])
    web.stop()
    assert set(at_restart.values()) - {"done"}, f"every job was done before web stopped: {at_restart}"
    processes.append(start_web(env, web_port, processes=1))
    assert_all_done(web_url, submitted, 120)
    store = Stores.over(client, client, 3600, 3600)
    assert store.queue.queued_texts() == 0


class IdleModel:
    """Just enough of a model for a WorkerRuntime that never runs a batch."""

    identity = "idle-model@0"
    device = "cpu"
    pads = False


def test_a_dead_consumer_is_restarted_and_not_counted_ready_meanwhile(service_env, stack):
    from web import create_app
    from worker.__main__ import consume_until_shutdown
    from worker.runtime import WorkerRuntime

    server, env, client, processes = stack
    settings = Settings.from_env(environ=env)
    web = create_app(settings).test_client()
    runtime = WorkerRuntime(settings, IdleModel())
    runtime.batcher.start()
    shutdown_requested = threading.Event()
    seen = []

    def consumer():
        seen.append(web.get("/ready").status_code)
        if len(seen) == 1:
            runtime.announce()  # Celery's worker_ready: the first consumer is up ...
            wait_until(lambda: web.get("/ready").status_code == 200, 10, "/ready to count the worker")
            return 1  # ... then dies without a shutdown request, as on kombu's restore error
        runtime.announce()  # the restarted consumer is ready
        seen.append(wait_until(lambda: (code := web.get("/ready").status_code) == 200 and code, 10, "/ready again"))
        shutdown_requested.set()  # a SIGTERM later
        return 0

    try:
        assert consume_until_shutdown(consumer, shutdown_requested, runtime, restart_delay_s=0) == 0
    finally:
        runtime.shutdown()
    # Before the first consumer, between the death and the restart, and after the restart.
    assert seen == [503, 503, 200], f"/ready answered {seen}"
