"""The contract end to end: gunicorn, a real Redis and a real Celery worker process."""

import math
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
import requests

from bench.run import scrape, total
from common.celery_app import PREDICT_JOBS_TASK, create_celery
from common.jobs import QueuedJob, new_job_id
from common.store import Stores
from common.store.jobs import new_job
from common.store.keys import PREFIX, done_key, job_key
from stack import RedisServer, child_pids, free_port, start_web, start_worker, wait_until, web_allocator_env


@pytest.fixture
def store(redis_client, settings) -> Stores:
    return Stores.over(redis_client, redis_client, settings.job_ttl_s, settings.cache_ttl_s)


def job_keys(redis_client) -> set[str]:
    return {key for key in redis_client.scan_iter(f"{PREFIX}job:*") if not key.endswith(":done")}


def wait_for_an_idle_worker(store, redis_client) -> float:
    """Wait until no job is queued or running (earlier tests may leave wait=0 jobs); the time it was so."""

    def idle():
        statuses = {redis_client.hget(key, "status") for key in job_keys(redis_client)}
        return store.queue.queued_texts() == 0 and not statuses & {"queued", "running"}

    wait_until(idle, 60, "the shared worker to finish earlier tests' jobs")
    return time.time()


def batches_since(store, since: float) -> list[dict]:
    # By time, not by position: the log keeps only the last 1,000 batches.
    return [batch for batch in store.workers.recent_batches() if batch["at"] >= since]


def worker_metrics_url(service_env) -> str:
    return f"http://127.0.0.1:{service_env['WORKER_METRICS_PORT']}/metrics"


@pytest.fixture
def texts_computed_since(store, service_env):
    """Texts computed since a time, counted in the batch log once the worker's bookkeeping has written it.

    The worker hands a batch's log entry to its bookkeeping thread before it hands out the batch's
    answers, and writes it a moment later; once nothing is pending there, the log is complete.
    """
    metrics_url = worker_metrics_url(service_env)

    def count(since: float) -> int:
        wait_until(
            lambda: total(scrape(metrics_url), "sentiment_worker_bookkeeping_pending") == 0,
            30,
            "the worker's bookkeeping to write the batch log",
        )
        return sum(batch["texts"] for batch in batches_since(store, since))

    return count


def post(web_url, texts, query="", timeout=60):
    return requests.post(f"{web_url}/predict{query}", json={"text": texts}, timeout=timeout)


def assert_prediction_shape(prediction):
    assert [item["label"] for item in prediction] in (["NEGATIVE", "POSITIVE"], ["POSITIVE", "NEGATIVE"])
    scores = [item["score"] for item in prediction]
    assert scores[0] >= scores[1]
    assert all(0.0 <= score <= 1.0 for score in scores)
    assert math.isclose(sum(scores), 1.0, abs_tol=1e-5)


def test_predict_answers_the_original_contract(web_url, unique):
    texts = [unique("I hate you."), unique("I love you."), unique("It was fine.")]
    response = post(web_url, texts)
    assert response.status_code == 200
    predictions = response.json()["predictions"]
    assert set(response.json()) == {"predictions"}
    assert len(predictions) == len(texts)
    for prediction in predictions:
        assert_prediction_shape(prediction)


def test_known_sentences_are_scored_right(web_url, model_is_bundled):
    predictions = post(web_url, ["I hate you.", "I love you."]).json()["predictions"]
    assert predictions[0][0]["label"] == "NEGATIVE" and predictions[0][0]["score"] >= 0.85
    assert predictions[1][0]["label"] == "POSITIVE" and predictions[1][0]["score"] >= 0.85


def test_full_cache_hit_enqueues_nothing(web_url, redis_client, store, unique, texts_computed_since):
    texts = [unique("a warm film"), unique("a cold film")]
    first = post(web_url, texts)
    assert first.status_code == 200
    since = wait_for_an_idle_worker(store, redis_client)
    jobs_before = job_keys(redis_client)
    second = post(web_url, texts)
    assert second.status_code == 200
    # Byte for byte: the cached answer joins the stored JSON of each prediction.
    assert second.content == first.content
    assert job_keys(redis_client) == jobs_before
    assert texts_computed_since(since) == 0


def test_partial_hit_computes_only_the_missing_texts(web_url, redis_client, store, unique, texts_computed_since):
    cached = unique("cached sentence")
    alone = post(web_url, [cached])
    since = wait_for_an_idle_worker(store, redis_client)
    response = post(web_url, [cached, unique("new sentence")])
    assert response.status_code == 200
    assert len(response.json()["predictions"]) == 2
    assert response.json()["predictions"][0] == alone.json()["predictions"][0]
    assert texts_computed_since(since) == 1


def test_duplicate_texts_are_computed_once_and_answered_in_place(web_url, redis_client, store, unique, texts_computed_since):
    x, y = unique("same words"), unique("other words")
    since = wait_for_an_idle_worker(store, redis_client)
    predictions = post(web_url, [x, y, x, x]).json()["predictions"]
    assert len(predictions) == 4
    assert predictions[0] == predictions[2] == predictions[3]
    assert texts_computed_since(since) == 2


def test_concurrent_requests_for_a_text_in_a_forward_pass_cost_one_computation(
    web_url, redis_client, store, unique, texts_computed_since
):
    shared = unique("a text several clients send at once")
    # A first batch long enough (about a second) for the later requests to arrive while it runs.
    long_texts = [unique(f"the film drags on , yet the final scenes are moving . take {i} " * 8) for i in range(31)]
    since = wait_for_an_idle_worker(store, redis_client)
    jobs_before = job_keys(redis_client)
    first = post(web_url, [shared, *long_texts], query="?wait=0").json()

    def running():
        return requests.get(f"{web_url}/jobs/{first['job_id']}", timeout=10).json()["status"] == "running"

    wait_until(running, 30, "the first job's batch to start")
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: post(web_url, [shared]), range(8)))
    assert [response.status_code for response in responses] == [200] * 8
    assert len({str(response.json()["predictions"]) for response in responses}) == 1
    # Evidence the later requests missed the cache (their text was still in the first job's batch),
    # so each made a job of its own.
    later_jobs = job_keys(redis_client) - jobs_before - {job_key(first["job_id"])}
    assert len(later_jobs) == 8, f"only {len(later_jobs)} of the 8 requests made a job"
    wait_until(lambda: requests.get(f"{web_url}/jobs/{first['job_id']}", timeout=10).json()["status"] == "done", 60, "job")
    computed = texts_computed_since(since)
    assert computed == 32, f"32 distinct texts, {computed} computed"


def test_wait_zero_answers_202_then_the_job_can_be_polled(web_url, unique):
    texts = [unique("polled one"), unique("polled two")]
    response = post(web_url, texts, "?wait=0")
    assert response.status_code == 202
    body = response.json()
    assert set(body) == {"job_id", "status", "status_url"}
    assert body["status_url"] == f"/jobs/{body['job_id']}" == response.headers["Location"]
    assert body["status"] in ("queued", "running")

    def finished():
        job = requests.get(f"{web_url}{body['status_url']}", timeout=10).json()
        return job if job["status"] == "done" else None

    job = wait_until(finished, 60, "the job to finish")
    assert set(job) == {"job_id", "status", "predictions"}
    assert job["predictions"] == post(web_url, texts).json()["predictions"]


def test_cross_request_batching_needs_far_fewer_forward_passes(web_url, redis_client, store, unique, texts_computed_since):
    texts = [unique(f"concurrent sentence number {i}") for i in range(32)]
    since = wait_for_an_idle_worker(store, redis_client)
    with ThreadPoolExecutor(32) as pool:
        responses = list(pool.map(lambda text: post(web_url, [text]), texts))
    assert all(response.status_code == 200 for response in responses)
    assert texts_computed_since(since) == 32
    batches = batches_since(store, since)
    assert len(batches) <= 16, f"32 single-text requests took {len(batches)} forward passes"
    assert max(batch["jobs"] for batch in batches) > 1


def test_health_and_ready(web_url):
    assert requests.get(f"{web_url}/health", timeout=5).json() == {"status": "ok"}
    ready = requests.get(f"{web_url}/ready", timeout=5)
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready" and ready.json()["workers"] >= 1


def test_gunicorn_processes_run_on_jemalloc(service_env):
    """As in Dockerfile.web (why: docs/reliability.md, "Soak and memory")."""
    if not web_allocator_env({}):
        if os.environ.get("CI"):
            pytest.fail("CI needs libjemalloc2 for the web's allocator (make jemalloc)")
        pytest.skip("libjemalloc2 is not installed (make jemalloc)")
    web = start_web(service_env, free_port(), processes=2)
    try:
        wait_until(lambda: len(child_pids(web.pid)) == 2, 10, "gunicorn to fork its two workers")
        for pid in [web.pid, *child_pids(web.pid)]:
            assert "libjemalloc" in Path(f"/proc/{pid}/maps").read_text(), f"gunicorn process {pid} has no jemalloc mapped"
    finally:
        web.stop()


def test_a_separate_cache_server_holds_the_predictions_and_answers_repeats(service_env):
    main, cache = RedisServer(), RedisServer()
    main.start()
    cache.start()
    env = {
        **service_env,
        "REDIS_URL": main.url,
        "CACHE_REDIS_URL": cache.url,
        "QUEUE_NAME": "sentiment-cache-server-test",
        "WORKER_METRICS_PORT": str(free_port()),
    }
    main_client = redis.Redis.from_url(main.url, decode_responses=True)
    cache_client = redis.Redis.from_url(cache.url, decode_responses=True)
    worker = start_worker(env, main_client)
    port = free_port()
    web = start_web(env, port, processes=1)
    try:
        web_url = f"http://127.0.0.1:{port}"
        texts = ["a review whose score lives on the cache server"]
        first = post(web_url, texts)
        assert first.status_code == 200, first.text
        assert len(list(cache_client.scan_iter(f"{PREFIX}cache:*"))) == 1
        assert not list(main_client.scan_iter(f"{PREFIX}cache:*")), "a prediction was cached on the main server"
        assert len(job_keys(main_client)) == 1 and not job_keys(cache_client)
        # A fresh web process (no hot cache) answers the repeat from the cache server, with no new job.
        web.stop()
        web = start_web(env, port, processes=1)
        assert post(web_url, texts).json() == first.json()
        assert len(job_keys(main_client)) == 1
    finally:
        web.close()
        worker.close()
        main.close()
        cache.close()


def redeliver(settings, redis_client, task_name: str, args: list) -> None:
    """Hand the worker a message as the broker hands one out again, marked redelivered.

    The message is published to a queue no worker reads, taken without an ack and rejected with
    requeue, which puts it back the way kombu restores every unacked message (a dead worker's,
    or one past its visibility timeout); then it is moved to the worker's queue.
    """
    parking = f"redelivery-{uuid.uuid4().hex}"
    app = create_celery(settings)
    app.send_task(task_name, args=args, queue=parking)
    with app.connection_for_read() as connection, connection.SimpleQueue(parking) as queue:
        queue.get(timeout=10).reject(requeue=True)
    assert redis_client.rpoplpush(parking, settings.queue_name) is not None


def test_a_redelivered_job_that_already_ended_is_skipped(
    worker, redis_client, store, settings, service_env, unique, texts_computed_since
):
    # As after a worker died between completing a job and acking its message: the record is done,
    # and the broker hands the message out again.
    texts = [unique("scored before the redelivery")]
    job_id, now = new_job_id(), time.time()
    store.jobs.enqueue(new_job(job_id, texts, [None], now + 60), 1000, 2**30)
    store.jobs.finish(job_id, [[{"label": "POSITIVE", "score": 0.6}, {"label": "NEGATIVE", "score": 0.4}]])
    metrics_url = worker_metrics_url(service_env)
    skipped_before = total(scrape(metrics_url), "sentiment_worker_jobs_total", outcome="skipped")
    since = wait_for_an_idle_worker(store, redis_client)
    redeliver(settings, redis_client, PREDICT_JOBS_TASK, [[QueuedJob(job_id, texts, now + 60, now).to_message()]])
    wait_until(
        lambda: total(scrape(metrics_url), "sentiment_worker_jobs_total", outcome="skipped") > skipped_before,
        30,
        "the worker to take the redelivered message",
    )
    assert texts_computed_since(since) == 0
    assert redis_client.llen(done_key(job_id)) == 1, "the job was ended a second time"
    assert store.jobs.get(job_id).predictions[0][0] == {"label": "POSITIVE", "score": 0.6}


def test_a_job_that_already_ended_is_never_ended_twice_even_from_an_unmarked_message(
    worker, redis_client, store, settings, service_env, unique
):
    # As when a publish is retried after its reply was lost: a second, unmarked message for the
    # same job. The worker computes it (it reads statuses only for redelivered messages), but
    # ending the job again changes nothing: no second wake-up, the first results stay.
    texts = [unique("ended before its duplicate message")]
    job_id, now = new_job_id(), time.time()
    first = [{"label": "POSITIVE", "score": 0.6}, {"label": "NEGATIVE", "score": 0.4}]
    store.jobs.enqueue(new_job(job_id, texts, [None], now + 60), 1000, 2**30)
    store.jobs.finish(job_id, [first])
    metrics_url = worker_metrics_url(service_env)
    done_before = total(scrape(metrics_url), "sentiment_worker_jobs_total", outcome="done")
    create_celery(settings).send_task(PREDICT_JOBS_TASK, args=[[QueuedJob(job_id, texts, now + 60, now).to_message()]])
    wait_until(
        lambda: total(scrape(metrics_url), "sentiment_worker_jobs_total", outcome="done") > done_before,
        30,
        "the worker to run the duplicate message",
    )
    assert redis_client.llen(done_key(job_id)) == 1, "the job was ended a second time"
    assert store.jobs.get(job_id).predictions[0][0] == first[0]
