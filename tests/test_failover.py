"""The main Redis behind Sentinels: a killed primary loses no accepted job, and no job is answered before a replica holds it."""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
import redis
import requests
from limits import parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from bench.failover import SENTENCE, UncachedClients
from common.celery_app import create_celery
from common.settings import Settings
from common.store import Stores, connect_main
from common.store.keys import done_key, job_key
from stack import REPO, free_port, http_status, start_web, wait_until
from stack.redis_ha import MASTER_NAME, RedisHa
from web.security import rate_limit_storage

# The bar for a failover: from the kill to the first 200 for a text nobody asked before.
RECOVERY_BOUND_S = 15


def stored_jobs(client: redis.Redis) -> dict[str, str]:
    """Every /predict job record on this server, by id, with its status."""
    ids = [key.removeprefix(job_key("")) for key in client.scan_iter(job_key("*")) if not key.endswith(":done")]
    return dict(zip(ids, Stores.over(client).jobs.statuses(ids)))


def launcher_log_value(log_path, pattern: str) -> str:
    match = re.search(pattern, log_path.read_text())
    return match.group(1) if match else ""


def test_ha_stack_loses_no_accepted_job_when_its_primary_is_killed_under_load(tmp_path):
    web_port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("REDIS_", "CACHE_REDIS"))}
    env.update({"PORT": str(web_port), "WORKER_METRICS_PORT": "0", "SYNC_WAIT_S": "5", "VISIBILITY_TIMEOUT_S": "10"})
    log_path = tmp_path / "stack.log"
    with log_path.open("wb") as log:
        command = [sys.executable, "-m", "stack", "--ha"]
        launcher = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{web_port}"
    clients = None
    try:

        def ready():
            assert launcher.poll() is None, f"python -m stack --ha exited:\n{log_path.read_text()[-3000:]}"
            return http_status(f"{url}/ready") == 200

        wait_until(ready, 240, "the --ha stack's /ready", interval_s=0.5)
        assert requests.post(f"{url}/predict", json={"text": ["the --ha stack serves"]}, timeout=30).status_code == 200
        sentinel_port = int(launcher_log_value(log_path, r"Sentinels on 127\.0\.0\.1:(\d+)"))
        with redis.Redis(port=sentinel_port, decode_responses=True) as sentinel:
            primary_port = int(sentinel.sentinel_get_master_addr_by_name(MASTER_NAME)[1])
        primary = redis.Redis(port=primary_port, decode_responses=True)
        primary_pid = int(primary.info("server")["process_id"])

        # Long texts, so jobs queue behind the worker and the kill finds accepted ones in flight.
        clients = UncachedClients(url, 8, text=SENTENCE * 8).start()

        def accepted_in_flight() -> set[str]:
            accepted = {body["job_id"] for status, _, body, _ in list(clients.answers) if status == 202}
            in_flight = {job_id for job_id, status in stored_jobs(primary).items() if status in ("queued", "running")}
            return in_flight & accepted

        in_flight = wait_until(accepted_in_flight, 30, "jobs answered 202 and still queued or running")
        os.kill(primary_pid, signal.SIGKILL)
        killed_at = time.monotonic()

        def fresh_text_scored() -> bool:
            probe = requests.post(f"{url}/predict", json={"text": [f"a fresh text after the kill {time.time()}"]}, timeout=30)
            return probe.status_code == 200

        wait_until(fresh_text_scored, 60, "a 200 for a fresh text after the kill", interval_s=0.25)
        recovery_s = time.monotonic() - killed_at
        clients.stop()
        with redis.Redis(port=sentinel_port, decode_responses=True) as sentinel:
            new_primary_port = int(sentinel.sentinel_get_master_addr_by_name(MASTER_NAME)[1])
        assert new_primary_port != primary_port
        assert "restarted on port" in log_path.read_text(), "the launcher did not bring the killed server back as a replica"
        new_primary = redis.Redis(port=new_primary_port, decode_responses=True)

        assert not clients.errors, clients.errors[:3]
        statuses = Counter((status, content_type.split(";")[0]) for status, content_type, _, _ in clients.answers)
        assert set(statuses) <= {(200, "application/json"), (202, "application/json"), (503, "application/json")}, statuses
        assert statuses[(202, "application/json")] and statuses[(503, "application/json")], statuses
        # Every job a client was told was accepted ends done, exactly once, with each of its texts.
        accepted = {body["job_id"]: texts for status, _, body, texts in clients.answers if status == 202}

        def done_job(job_id: str) -> dict | None:
            job = requests.get(f"{url}/jobs/{job_id}", timeout=10).json()
            return job if job["status"] == "done" else None

        for job_id, texts in accepted.items():
            job = wait_until(lambda job_id=job_id: done_job(job_id), 60, f"job {job_id}")
            assert len(job["predictions"]) == len(texts)
            assert new_primary.llen(done_key(job_id)) == 1, f"job {job_id} ended {new_primary.llen(done_key(job_id))} times"
        assert in_flight <= set(accepted)
        assert recovery_s <= RECOVERY_BOUND_S, f"a fresh text first scored {recovery_s:.1f} s after the kill"
    finally:
        if clients is not None:
            clients.stop()
        if launcher.poll() is None:
            launcher.send_signal(signal.SIGTERM)
            try:
                launcher.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(launcher.pid, signal.SIGKILL)
                launcher.wait(10)


@pytest.fixture
def redis_ha():
    ha = RedisHa(down_after_ms=1000)
    ha.start()
    yield ha
    for server in ha.servers:
        if server.process is not None and server.process.poll() is None:
            os.kill(server.process.pid, signal.SIGCONT)
    ha.close()


def test_a_job_is_answered_only_once_a_replica_holds_it_else_503_and_withdrawn(redis_ha, service_env):
    web_port = free_port()
    env = {
        **service_env,
        "REDIS_URL": redis_ha.url,
        "REDIS_SENTINELS": redis_ha.sentinel_setting,
        "QUEUE_NAME": "sentiment-replicas",
        "REDIS_REPLICA_ACK_TIMEOUT_MS": "3000",
    }
    web = start_web(env, web_port, processes=1)
    url = f"http://127.0.0.1:{web_port}"
    primary, replica = redis_ha.servers
    primary_client = redis.Redis(port=primary.port, decode_responses=True)
    replica_client = redis.Redis(port=replica.port, decode_responses=True)
    try:
        answers = []

        def post(text: str) -> threading.Thread:
            thread = threading.Thread(
                target=lambda: answers.append(requests.post(f"{url}/predict?wait=0", json={"text": [text]}, timeout=30))
            )
            thread.start()
            return thread

        # The replica stalls: a job is written to the primary, but its POST does not answer yet.
        replica.process.send_signal(signal.SIGSTOP)
        waiting = post("held until the replica has it")
        job_id = wait_until(lambda: next(iter(stored_jobs(primary_client)), None), 10, "the job's record on the primary")
        waiting.join(0.5)
        assert waiting.is_alive(), f"answered {answers[0].status_code} while the replica could not hold the job"
        replica.process.send_signal(signal.SIGCONT)
        waiting.join(10)
        assert answers[0].status_code == 202, answers[0].text
        assert answers[0].json()["job_id"] == job_id
        assert replica_client.exists(job_key(job_id)), "answered 202 before the replica held the job"

        # The replica stays away past REDIS_REPLICA_ACK_TIMEOUT_MS: 503, and the job is withdrawn.
        replica.process.send_signal(signal.SIGSTOP)
        refused_at = time.monotonic()
        post("refused while the replica is away").join(15)
        replica.process.send_signal(signal.SIGCONT)
        refused = answers[1]
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"] == "not_replicated"
        assert refused.headers["Retry-After"] == "1"
        assert 2.5 <= time.monotonic() - refused_at < 10
        assert set(stored_jobs(primary_client)) == {job_id}, "the refused job's record stayed"
        assert Stores.over(primary_client).queue.queued_texts() == 1, "the refused job's budget was not given back"
        assert "sentiment_jobs_not_replicated_total 1.0" in requests.get(f"{url}/metrics", timeout=10).text
    finally:
        web.stop()


def test_every_client_reaches_a_password_protected_primary_through_password_protected_sentinels():
    password = 'a p@ss "with" quotes'
    ha = RedisHa(password=password)
    ha.start()
    try:
        settings = Settings.from_env(
            environ={"REDIS_SENTINELS": ha.sentinel_setting, "REDIS_PASSWORD": password, "REDIS_URL": "redis://ignored/0"}
        )
        primary = redis.Redis(port=ha.primary_port(), password=password, decode_responses=True)
        connect_main(settings).set("sentiment:test:store", "1")
        celery = create_celery(settings)
        try:
            celery.send_task("sentiment.test", args=[1], queue="sentiment-test-auth")
        finally:
            celery.close()
        uri, options = rate_limit_storage(settings)
        storage = storage_from_string(uri, **options)
        MovingWindowRateLimiter(storage).hit(parse("5/minute"), "a client")
        assert primary.get("sentiment:test:store") == "1"
        assert primary.llen("sentiment-test-auth") == 1
        assert any("LIMITER" in key for key in primary.keys())
    finally:
        ha.close()
