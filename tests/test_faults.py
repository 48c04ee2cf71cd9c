"""Faults: a worker killed or stopped mid-batch, Redis going away, the web process restarting.

Each test runs its own Redis and processes, so the shared stack of the other tests is untouched.
"""

import signal
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
import requests

from common.store import Stores
from tests.support import RedisServer, free_port, start_web, start_worker, wait_until

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


def test_worker_sigkilled_mid_batch_its_jobs_complete_on_a_new_worker(stack):
    server, env, client, processes = stack
    web_port = free_port()
    processes.append(start_web(env, web_port, processes=1))
    web_url = f"http://127.0.0.1:{web_port}"
    doomed = start_worker(env, client, "doomed-worker")
    processes.append(doomed)
    submitted = submit_long_jobs(web_url, jobs=6, texts_per_job=8)
    wait_until(lambda: any(job_status(web_url, job_id)["status"] == "running" for job_id, _ in submitted), 30, "a batch to start")
    doomed.signal(signal.SIGKILL)
    doomed.process.wait(10)
    assert any(job_status(web_url, job_id)["status"] != "done" for job_id, _ in submitted), "killed too late to test anything"

    processes.append(start_worker(env, client, "rescue-worker"))
    assert_all_done(web_url, submitted, 120)


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


def test_worker_sigterm_finishes_its_batch_before_exiting(stack):
    server, env, client, processes = stack
    web_port = free_port()
    processes.append(start_web(env, web_port, processes=1))
    web_url = f"http://127.0.0.1:{web_port}"
    worker = start_worker(env, client)
    processes.append(worker)
    submitted = submit_long_jobs(web_url, jobs=4, texts_per_job=8)
    wait_until(lambda: any(job_status(web_url, job_id)["status"] == "running" for job_id, _ in submitted), 30, "a batch to start")
    worker.signal(signal.SIGTERM)
    assert worker.process.wait(120) == 0, worker.log()[-3000:]
    # Jobs it held finished; jobs it had not taken stay queued for the next worker, none lost.
    unfinished = [(job_id, texts) for job_id, texts in submitted if job_status(web_url, job_id)["status"] != "done"]
    assert len(unfinished) < len(submitted)
    if unfinished:
        processes.append(start_worker(env, client, "next-worker"))
        assert_all_done(web_url, unfinished, 120)


def test_redis_outage_answers_503_json_and_recovers_without_restarts(stack):
    server, env, client, processes = stack
    web_port = free_port()
    processes.append(start_web(env, web_port))
    processes.append(start_worker(env, client))
    web_url = f"http://127.0.0.1:{web_port}"
    assert requests.post(f"{web_url}/predict", json={"text": ["before the outage"]}, timeout=30).status_code == 200

    def post(i):
        try:
            return requests.post(f"{web_url}/predict", json={"text": [f"during the outage {i}"]}, timeout=30)
        except requests.RequestException as error:  # a dropped connection would be a failure too
            return error

    with ThreadPoolExecutor(8) as pool:
        in_flight = [pool.submit(post, i) for i in range(8)]
        server.stop()
        answers = [future.result() for future in in_flight]
    for answer in answers:
        assert isinstance(answer, requests.Response), answer
        assert answer.status_code in (200, 202, 503), answer.text
        assert answer.headers["Content-Type"].startswith("application/json")

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
    # Jobs accepted before the outage were persisted (append-only file) and still finish.
    for answer in answers:
        if answer.status_code == 202:
            job_id = answer.json()["job_id"]
            wait_until(lambda job_id=job_id: finished(web_url, job_id), 90, f"job {job_id}")


def test_web_restart_keeps_jobs_pollable(stack):
    server, env, client, processes = stack
    web_port = free_port()
    web = start_web(env, web_port, processes=1)
    processes.append(start_worker(env, client))
    web_url = f"http://127.0.0.1:{web_port}"
    submitted = submit_long_jobs(web_url, jobs=3, texts_per_job=4)
    web.stop()
    processes.append(start_web(env, web_port, processes=1))
    assert_all_done(web_url, submitted, 120)
    store = Stores.over(client, client, 3600, 3600)
    assert store.queue.queued_texts() == 0
