"""A Redis that fills up: byte budgets refuse work before it is full, and a full one answers 503, never 500."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
import requests

from common.settings import Settings
from common.store import Stores
from common.store.keys import (
    BULK_QUEUED_BYTES_KEY,
    BULK_QUEUED_JOB_BYTES_KEY,
    BULK_QUEUED_JOB_TEXTS_KEY,
    BULK_QUEUED_TEXTS_KEY,
    PREFIX,
    QUEUED_BYTES_KEY,
    QUEUED_JOB_BYTES_KEY,
    QUEUED_JOBS_KEY,
    QUEUED_TEXTS_KEY,
    WORKERS_KEY,
)
from stack import RedisServer, free_port, start_web, start_worker, wait_until

BUDGET_COUNTERS = (QUEUED_TEXTS_KEY, QUEUED_BYTES_KEY, BULK_QUEUED_TEXTS_KEY, BULK_QUEUED_BYTES_KEY)
PER_JOB_BUDGETS = (QUEUED_JOBS_KEY, QUEUED_JOB_BYTES_KEY, BULK_QUEUED_JOB_TEXTS_KEY, BULK_QUEUED_JOB_BYTES_KEY)


@pytest.fixture
def small_redis():
    """A Redis of 32 MiB that refuses writes when full, as compose and k8s run theirs (at 512 MiB)."""
    server = RedisServer(maxmemory="32mb")
    server.start()
    yield server
    server.close()


def budgets_held(client: redis.Redis) -> dict:
    held = {key: int(client.get(key) or 0) for key in BUDGET_COUNTERS}
    held.update({key: client.hlen(key) for key in PER_JOB_BUDGETS})
    return {key: value for key, value in held.items() if value}


def half_written_jobs(client: redis.Redis) -> list[str]:
    """Bulk texts without a queued or ended record, and records still being stored."""
    leftovers = []
    for key in client.scan_iter(f"{PREFIX}bulk:*"):
        if key.endswith(":texts") and client.hget(key.removesuffix(":texts"), "status") not in ("queued", "running"):
            leftovers.append(key)
        elif key.count(":") == 2 and client.hget(key, "status") == "storing":
            leftovers.append(key)
    return leftovers


def long_texts(tag: str, count: int, chars: int) -> list[str]:
    return [(f"{tag} {index} " + "a rather long review of a film " * (chars // 31 + 1))[:chars] for index in range(count)]


def test_filling_redis_through_jobs_and_predict_answers_only_200_202_429_and_leaves_nothing_behind(service_env, small_redis):
    # Bulk chunks are not consumed (BULK_CONSUMERS=0), so bulk jobs stay queued and fill their budget.
    env = {**service_env, "REDIS_URL": small_redis.url, "WORKER_METRICS_PORT": "0", "BULK_CONSUMERS": "0"}
    client = redis.Redis.from_url(small_redis.url, decode_responses=True)
    worker = start_worker(env, client)
    port = free_port()
    web = start_web(env, port, processes=1)
    url = f"http://127.0.0.1:{port}"
    answers, peak_used = [], 0
    try:
        requests.post(f"{url}/predict", json={"text": ["warm up the model"]}, timeout=60)

        def record(response) -> dict:
            nonlocal peak_used
            peak_used = max(peak_used, int(client.info("memory")["used_memory"]))
            body = response.json()  # every answer is JSON, refusals included
            answers.append((response.status_code, body.get("details", {}).get("limit"), body.get("error")))
            return body

        bulk_jobs = []
        for number in range(16):  # 16 jobs of 2 MiB against 32 MiB: far more than fits
            body = record(requests.post(f"{url}/jobs", json={"text": long_texts(f"bulk {number}", 1000, 2000)}, timeout=60))
            if "job_id" in body:
                bulk_jobs.append(body["job_id"])

        def predict(number: int) -> None:
            # A short deadline: what the worker cannot start at once expires, so the test need not wait for it.
            texts = long_texts(f"predict {number}", 128, 1900)
            record(requests.post(f"{url}/predict?wait=0&deadline=1", json={"text": texts}, timeout=60))

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(predict, range(24)))
        statuses = {status for status, _, _ in answers}
        refused_by = {limit for status, limit, _ in answers if status == 429}
        # Evidence the budgets were reached: some submissions were refused for a byte budget or the high-water mark.
        assert refused_by & {"MAX_QUEUED_BULK_BYTES", "REDIS_MEMORY_HIGH_WATER"}, answers
        assert refused_by & {"MAX_QUEUED_BYTES", "REDIS_MEMORY_HIGH_WATER"}, answers
        assert statuses <= {200, 202, 429}, answers  # never a 500; not even a 503, since Redis never filled
        assert peak_used < 32 * 2**20, f"Redis reached {peak_used} bytes"

        for job_id in bulk_jobs:
            assert requests.delete(f"{url}/jobs/{job_id}", timeout=30).status_code == 204
        wait_until(lambda: not budgets_held(client), 180, "every budget to come back as the /predict jobs end")
        assert half_written_jobs(client) == []
        # Still serving: a cached text, a new text, and /ready.
        cached = requests.post(f"{url}/predict", json={"text": ["warm up the model"]}, timeout=30)
        fresh = requests.post(f"{url}/predict", json={"text": ["a new text after the flood"]}, timeout=30)
        assert (cached.status_code, fresh.status_code) == (200, 200), (cached.text, fresh.text)
        assert requests.get(f"{url}/ready", timeout=10).status_code == 200
    finally:
        web.stop()
        worker.stop()


def make_client(service_env, redis_url: str, **overrides):
    from web import create_app

    return create_app(Settings.from_env({"redis_url": redis_url, **overrides}, environ=service_env)).test_client()


def test_a_job_that_fills_redis_mid_write_answers_503_and_leaves_no_job_budget_or_idempotency_key(service_env, small_redis):
    # Budgets far above the server, so the 24 MiB job really meets a full Redis part way through storing.
    client = make_client(
        service_env,
        small_redis.url,
        max_queued_bulk_bytes=2**31,
        redis_memory_high_water=0,
        bulk_queue_name="nobody-consumes",
    )
    store = redis.Redis.from_url(small_redis.url, decode_responses=True)
    store.config_set("maxmemory", "16mb")
    texts = long_texts("fills redis", 12_000, 2000)
    key = {"Idempotency-Key": "fills-redis-1"}
    answer = client.post("/jobs", json={"text": texts}, headers=key)
    assert answer.status_code == 503 and answer.get_json()["error"] == "unavailable", answer.get_data(as_text=True)[:500]
    assert answer.headers["Retry-After"]
    # Evidence the write was cut part way, not refused up front: Redis refused a push for want of memory.
    assert int(store.info("errorstats").get("errorstat_OOM", {}).get("count", 0)) > 0, store.info("errorstats")
    assert half_written_jobs(store) == [] and not list(store.scan_iter(f"{PREFIX}bulk:*"))
    assert budgets_held(store) == {}
    assert not list(store.scan_iter(f"{PREFIX}idempotency:*")), "the key stayed bound to a job that does not exist"
    # With room again, the same key makes a real job.
    store.config_set("maxmemory", "256mb")
    retried = client.post("/jobs", json={"text": texts[:100]}, headers=key)
    assert retried.status_code == 202
    assert client.get(f"/jobs/{retried.get_json()['job_id']}").status_code == 200


def test_a_full_redis_answers_predict_and_jobs_with_503_json_not_500(service_env, small_redis):
    client = make_client(service_env, small_redis.url, redis_memory_high_water=0, queue_name="nobody-consumes")
    store = redis.Redis.from_url(small_redis.url, decode_responses=True)
    Stores.over(store).workers.heartbeat("a-worker", "model@x")
    number = 0
    for size in (2**20, 2**14, 2**10):  # fill it to the brim, as something else sharing the server might
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            while True:
                store.set(f"filler:{number}", "x" * size)
                number += 1
    for method, path, body in (
        ("POST", "/predict?wait=0", {"text": ["a text Redis has no room for"]}),
        ("POST", "/jobs", {"text": ["a job Redis has no room for"]}),
    ):
        answer = client.open(path, method=method, json=body)
        assert answer.status_code == 503, (path, answer.get_data(as_text=True))
        assert answer.content_type == "application/json" and answer.get_json()["error"] == "unavailable"
        assert answer.headers["Retry-After"] == "5"
    assert budgets_held(store) == {} and not list(store.scan_iter(f"{PREFIX}job:*"))


def test_budgets_follow_the_servers_maxmemory(service_env, small_redis):
    from common.store.memory import BULK_QUEUED_SHARE, QUEUED_SHARE, RedisMemory

    settings = Settings.from_env({"redis_url": small_redis.url}, environ=service_env)
    budgets = RedisMemory(redis.Redis.from_url(small_redis.url, decode_responses=True), settings).budgets()
    assert budgets.queued_bytes == int(32 * 2**20 * QUEUED_SHARE)
    assert budgets.bulk_queued_bytes == int(32 * 2**20 * BULK_QUEUED_SHARE)
    assert budgets.high_water_refusal is None
    explicit = Settings.from_env({"max_queued_bytes": 1000, "max_queued_bulk_bytes": 2000}, environ=service_env)
    budgets = RedisMemory(redis.Redis.from_url(small_redis.url, decode_responses=True), explicit).budgets()
    assert (budgets.queued_bytes, budgets.bulk_queued_bytes) == (1000, 2000)


def test_workers_write_results_while_the_budgets_sit_at_their_limit(service_env, small_redis):
    """Past the high-water mark no new work is admitted, but what was admitted still ends: its scripts may write."""
    env = {**service_env, "REDIS_URL": small_redis.url, "WORKER_METRICS_PORT": "0", "REDIS_MEMORY_HIGH_WATER": "0.5"}
    client = redis.Redis.from_url(small_redis.url, decode_responses=True)
    worker = start_worker(env, client)
    port = free_port()
    web = start_web(env, port, processes=1)
    url = f"http://127.0.0.1:{port}"
    try:
        accepted = requests.post(f"{url}/predict?wait=0", json={"text": long_texts("admitted", 64, 1900)}, timeout=30)
        assert accepted.status_code in (200, 202)
        filler = "y" * 2**20
        for number in range(20):  # past half of 32 MiB: the high-water mark
            client.set(f"filler:{number}", filler)

        attempts = iter(range(1000))

        def refused():  # the web process reads the server's memory at most once a second
            text = f"past the high-water mark, attempt {next(attempts)}"  # new each time, so never answered from cache
            answer = requests.post(f"{url}/predict?wait=0", json={"text": [text]}, timeout=30)
            return answer.json() if answer.status_code == 429 else None

        refusal = wait_until(refused, 10, "a 429 past the high-water mark", interval_s=0.2)
        assert refusal["details"]["limit"] == "REDIS_MEMORY_HIGH_WATER", refusal
        if accepted.status_code == 202:
            job_url = f"{url}/jobs/{accepted.json()['job_id']}"
            wait_until(lambda: requests.get(job_url, timeout=10).json()["status"] == "done", 120, "the admitted job")
        # Every job admitted before the mark ends, and gives its budgets back, above the mark.
        wait_until(lambda: not budgets_held(client), 60, "the budgets to come back")
        last_beat = client.zrange(WORKERS_KEY, 0, 0, withscores=True)[0][1]
        wait_until(lambda: client.zrange(WORKERS_KEY, 0, 0, withscores=True)[0][1] > last_beat, 15, "a heartbeat")
        assert requests.get(f"{url}/ready", timeout=10).status_code == 200
    finally:
        web.stop()
        worker.stop()
