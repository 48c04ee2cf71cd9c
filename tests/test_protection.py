"""Backpressure, deadlines, rate limits, API keys and fuzzing of the documented API."""

import subprocess
import sys
import time

import pytest
import redis

from common.settings import Settings
from common.store import Stores
from common.store.jobs import new_job
from common.store.keys import done_key
from stack import free_port, start_web, wait_until
from stack.front_door import FrontDoor
from web.keys import hash_api_key
from worker.batcher import Batcher, DeadlineExpired


def make_client(service_env, **overrides):
    from web import create_app

    return create_app(Settings.from_env(overrides, environ=service_env)).test_client()


def test_full_queue_answers_429_with_retry_after_and_ready_reports_overload(service_env, private_redis):
    client = make_client({**service_env, "REDIS_URL": private_redis.url}, max_queued_texts=3, queue_name="nobody-consumes")
    assert client.post("/predict?wait=0", json={"text": ["one", "two"]}).status_code == 202
    assert client.post("/predict?wait=0", json={"text": ["three"]}).status_code == 202
    refused = client.post("/predict?wait=0", json={"text": ["four"]})
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "1"
    assert refused.get_json()["error"] == "overloaded"
    # The rule is queued + new > MAX_QUEUED_TEXTS: 3 queued + 1 new passes 3.
    assert "this request's 1 would pass MAX_QUEUED_TEXTS (3)" in refused.get_json()["message"]
    # Answering from cache needs no queue room; nothing new was queued by the refusal.
    store = Stores.over(redis.Redis.from_url(private_redis.url, decode_responses=True), None, 60, 60)
    assert store.queue.queued_texts() == 3
    assert client.get("/backlog").get_json() == {"queued_texts": 3, "bulk_queued_texts": 0}  # what KEDA scales workers on
    store.workers.heartbeat("fake-worker", "model@x")
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.get_json()["status"] == "overloaded"


def test_ready_is_503_without_a_live_worker(service_env, private_redis):
    client = make_client({**service_env, "REDIS_URL": private_redis.url})
    response = client.get("/ready")
    assert response.status_code == 503
    assert response.get_json()["error"] == "no_workers"


class RecordingModel:
    """Stands in for the model to observe what the batcher computes."""

    def __init__(self):
        self.computed = 0

    pads = True
    identity = "recording-model@0"

    def encode(self, texts):
        return [[1] * (len(text) + 2) for text in texts]

    def computed_tokens(self, lengths):
        return len(lengths) * max(lengths)

    def predict_encoded(self, token_ids):
        self.computed += len(token_ids)
        return [[{"label": "POSITIVE", "score": 1.0}, {"label": "NEGATIVE", "score": 0.0}] for _ in token_ids]


def test_batcher_drops_expired_jobs_without_computing_them():
    model = RecordingModel()
    batcher = Batcher(model, max_texts=8, max_tokens=1000, max_wait_ms=50, gather_max_texts=64, bulk_max_tokens=1000)
    batcher.start()
    try:
        expired = batcher.submit("old", ["stale text"], deadline=time.time() - 1, enqueued_at=time.time() - 2)
        live = batcher.submit("new", ["fresh text"], deadline=time.time() + 30, enqueued_at=time.time())
        with pytest.raises(DeadlineExpired):
            expired.result(5)
        assert set(live.result(5)) == {"fresh text"}
        assert model.computed == 1
    finally:
        batcher.stop()


def test_job_past_its_deadline_reads_failed_expired(service_env, private_redis):
    from stack import start_worker

    env = {**service_env, "REDIS_URL": private_redis.url, "WORKER_METRICS_PORT": "0"}
    client = make_client(env)
    accepted = client.post("/predict?wait=0&deadline=1", json={"text": ["nobody computes this in time"]})
    assert accepted.status_code == 202
    job_url = accepted.get_json()["status_url"]
    store = Stores.over(redis.Redis.from_url(private_redis.url, decode_responses=True), None, 60, 60)
    deadline = store.jobs.get(accepted.get_json()["job_id"]).deadline
    wait_until(lambda: time.time() > deadline, 5, "the job's deadline to pass")
    worker = start_worker(env, redis.Redis.from_url(private_redis.url, decode_responses=True))
    try:
        job = wait_until(lambda: (j := client.get(job_url).get_json())["status"] == "failed" and j, 60, "the job to expire")
        assert job == {"job_id": accepted.get_json()["job_id"], "status": "failed", "error": "expired"}
        assert store.workers.recent_batches() == [] and store.queue.queued_texts() == 0
    finally:
        worker.stop()


def test_a_waiting_request_whose_job_expires_in_the_queue_gets_503_expired(service_env, private_redis):
    from stack import start_worker

    env = {**service_env, "REDIS_URL": private_redis.url, "WORKER_METRICS_PORT": "0"}
    client = make_client(env)
    store = Stores.over(redis.Redis.from_url(private_redis.url, decode_responses=True), None, 60, 60)
    worker = start_worker(env, store.main)
    try:
        # A long batch holds the worker, so a job with a 1 s deadline queued behind it expires there.
        long_texts = [f"{'a slow , sprawling and oddly moving film . ' * 12} take {i}" for i in range(96)]
        busy = client.post("/predict?wait=0", json={"text": long_texts}).get_json()["job_id"]
        wait_until(lambda: store.jobs.get(busy).status == "running", 30, "the long batch to start")
        answer = client.post("/predict?deadline=1", json={"text": ["queued behind a long batch"]})
        # The request was made while the long batch ran (waited for above); had that batch ended
        # within the 1 s deadline, the request's text would have been scored and answered 200.
        assert answer.status_code == 503, answer.get_json()
        assert answer.get_json()["error"] == "expired"
        assert answer.headers["Retry-After"] == "1"
        assert store.jobs.get(answer.get_json()["details"]["job_id"]).error == "expired"
    finally:
        worker.stop()


def test_a_waiting_request_whose_batch_fails_gets_503_inference_error(service_env, private_redis, tmp_path):
    from stack import start_worker
    from tests.made_up_models import make_tiny_distilbert

    # Its embedding table stops at token id 999: "zebra" (id 29145) breaks the forward pass, "!" (999) does not.
    broken = make_tiny_distilbert(tmp_path / "small-vocabulary", vocab_size=1000)
    env = {**service_env, "REDIS_URL": private_redis.url, "WORKER_METRICS_PORT": "0", "MODEL": str(broken)}
    client = make_client(env)
    worker = start_worker(env, redis.Redis.from_url(private_redis.url, decode_responses=True))
    try:
        answer = client.post("/predict", json={"text": ["zebra"]})
        assert answer.status_code == 503, answer.get_json()
        assert answer.get_json()["error"] == "inference_error"
        assert "IndexError" in worker.log() or "index out of range" in worker.log(), worker.tail()
        # The failed batch failed its jobs, not the worker.
        assert client.post("/predict", json={"text": ["!"]}).status_code == 200
    finally:
        worker.stop()


def test_a_new_model_identity_never_serves_the_old_models_cached_scores(service_env, private_redis):
    client = make_client({**service_env, "REDIS_URL": private_redis.url}, queue_name="nobody-consumes")
    store = Stores.over(redis.Redis.from_url(private_redis.url, decode_responses=True), None, 60, 60)
    text = "scored by the old model"
    store.cache.store("old-model@1", {text: [{"label": "POSITIVE", "score": 0.9}, {"label": "NEGATIVE", "score": 0.1}]})
    store.workers.heartbeat("old-worker", "old-model@1")
    assert client.post("/predict?wait=0", json={"text": [text]}).status_code == 200  # cached for the old model
    store.workers.heartbeat("new-worker", "new-model@2")  # a rollout: workers now serve another model
    # Within MODEL_IDENTITY_TTL_S the web side reads the new identity; from then on the text is unscored.
    answers = wait_until(
        lambda: (a := client.post("/predict?wait=0", json={"text": [text]})).status_code == 202 and a, 10, "a cache miss"
    )
    assert answers.get_json()["status"] == "queued"


def test_a_failed_publish_leaves_no_job_and_no_reservation(service_env, private_redis):
    from common.celery_app import create_celery
    from web.services import services

    client = make_client({**service_env, "REDIS_URL": private_redis.url})
    store = Stores.over(redis.Redis.from_url(private_redis.url, decode_responses=True), None, 60, 60)
    store.workers.heartbeat("a-worker", "model@1")
    # Jobs and reservations stay on the live Redis; only the broker the job is published to is away.
    with client.application.app_context():
        dispatcher = services().dispatcher
    dead_broker = Settings.from_env({"redis_url": f"redis://127.0.0.1:{free_port()}/0"}, environ=service_env)
    dispatcher.celery = create_celery(dead_broker)
    handed_over = []
    publish = dispatcher.send

    def send(job):
        # Evidence the request got as far as publishing: its record was written and its room reserved.
        handed_over.append((job.job_id, store.main.exists(f"sentiment:job:{job.job_id}"), store.queue.queued_texts()))
        publish(job)

    dispatcher.send = send
    answer = client.post("/predict?wait=0", json={"text": ["one", "two", "three"]})
    assert answer.status_code == 503, answer.get_json()
    assert answer.get_json()["error"] == "unavailable"
    assert [(exists, queued) for _, exists, queued in handed_over] == [(1, 3)], "the request never reached the publish"
    assert not list(store.main.scan_iter("sentiment:job:*")), "the failed request left its job record"
    assert (store.queue.queued_texts(), store.queue.queued_bytes()) == (0, 0), "the failed request kept its reservation"


def test_rate_limit_answers_429_with_retry_after(service_env, private_redis):
    client = make_client({**service_env, "REDIS_URL": private_redis.url}, rate_limit="3/minute")
    answers = [client.post("/predict", json={"text": []}) for _ in range(4)]
    assert [answer.status_code for answer in answers] == [200, 200, 200, 429]
    assert answers[-1].get_json()["error"] == "rate_limited"
    # The service's own message, built when the limit broke, reaches the client.
    assert answers[-1].get_json()["message"].startswith("rate limit 3 per 1 minute exceeded; retry in ")
    assert 1 <= int(answers[-1].headers["Retry-After"]) <= 60
    assert client.get("/health").status_code == 200


def test_rate_limits_count_the_forwarded_client_only_behind_trusted_proxies(service_env, private_redis):
    def answers(trust_proxy_hops, forwarded_for):
        env = {**service_env, "REDIS_URL": private_redis.url}
        client = make_client(env, rate_limit="2/minute", trust_proxy_hops=trust_proxy_hops)
        redis.Redis.from_url(private_redis.url).flushall()
        statuses = []
        for address in forwarded_for:
            answer = client.post(
                "/predict", json={"text": []}, headers={"X-Forwarded-For": address}, environ_base={"REMOTE_ADDR": "10.0.0.1"}
            )
            statuses.append(answer.status_code)
        return statuses

    clients = ["203.0.113.7", "203.0.113.7", "198.51.100.9", "198.51.100.9", "203.0.113.7"]
    # Behind one trusted proxy, each forwarded client has its own budget of 2.
    assert answers(1, clients) == [200, 200, 200, 200, 429]
    # Without trust, X-Forwarded-For is ignored: everyone behind 10.0.0.1 shares one budget,
    # and a client cannot dodge its limit by forging the header.
    assert answers(0, clients) == [200, 200, 429, 429, 429]


def test_redis_unavailable_answers_503_json_with_retry_after(service_env):
    client = make_client({**service_env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    answer = client.post("/predict", json={"text": ["nobody can score this now"]})
    assert answer.status_code == 503
    assert answer.get_json()["error"] == "unavailable"
    assert int(answer.headers["Retry-After"]) >= 1


def test_rate_limits_are_off_by_default(client):
    assert all(client.post("/predict", json={"text": []}).status_code == 200 for _ in range(30))


def test_api_keys_when_on(service_env):
    client = make_client(service_env, api_key_hashes=f"{hash_api_key('other')},{hash_api_key('s3cret')}")
    missing = client.post("/predict", json={"text": []})
    assert missing.status_code == 401 and missing.get_json()["error"] == "unauthorized"
    assert client.post("/predict", json={"text": []}, headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.post("/predict", json={"text": []}, headers={"X-API-Key": "s3cret"}).status_code == 200
    assert client.get("/jobs/x").status_code == 401
    assert client.get("/health").status_code == 200
    spec = client.get("/openapi.json").get_json()
    assert spec["paths"]["/predict"]["post"]["security"] == [{"ApiKey": []}]
    assert spec["paths"]["/jobs/{job_id}"]["get"]["security"] == [{"ApiKey": []}]


def test_failed_api_key_attempts_are_limited_per_client_address(service_env, private_redis):
    client = make_client(
        {**service_env, "REDIS_URL": private_redis.url}, api_key_hashes=hash_api_key("s3cret"), api_key_failures_per_minute=3
    )
    guesser, other = {"REMOTE_ADDR": "192.0.2.7"}, {"REMOTE_ADDR": "192.0.2.8"}

    def predict(key: str, address: dict):
        return client.post("/predict", json={"text": []}, headers={"X-API-Key": key}, environ_base=address)

    assert [predict(f"guess {number}", guesser).status_code for number in range(3)] == [401, 401, 401]
    refused = predict("guess 4", guesser)
    assert refused.status_code == 429 and refused.get_json()["error"] == "rate_limited"
    assert refused.get_json()["details"] == {"limit": "API_KEY_FAILURES_PER_MINUTE"}
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    # Refused before its key is checked: even the right key waits out the minute, so guessing gains nothing.
    assert predict("s3cret", guesser).status_code == 429
    assert predict("s3cret", other).status_code == 200 and predict("wrong", other).status_code == 401


@pytest.fixture
def public_port_without_webhooks(service_env, worker):
    """gunicorn without a WEBHOOK_SECRET behind its front door: schemathesis meets the API as a client does, and
    the callback URLs it makes up are never called."""
    env = {key: value for key, value in service_env.items() if not key.startswith("WEBHOOK_")}
    web_port = free_port()
    web = start_web(env, web_port)
    settings = Settings.from_env(environ=env)
    door = FrontDoor(free_port(), f"127.0.0.1:{web_port}", settings.max_body_bytes, settings.max_job_body_bytes)
    try:
        door.wait_until_listening()
        yield door.port
    finally:
        door.close()
        web.stop()


# Longer than the subprocess's own 600 s, or pytest's default timeout (300 s) would cut it short first.
@pytest.mark.timeout(660)
def test_schemathesis_finds_no_server_error_and_no_schema_violation(public_port_without_webhooks, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", f"http://127.0.0.1:{public_port_without_webhooks}/openapi.json",
         "--checks", "all", "--max-examples", "50", "--generation-deterministic", "--request-timeout", "60",
         "--report", "junit", "--report-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    summary = result.stdout[result.stdout.rfind("SUMMARY") :]
    print(summary)
    assert result.returncode == 0, result.stdout[-6000:]


def test_ending_a_job_releases_its_reservation_when_its_batch_start_was_never_recorded(private_redis):
    # As when Redis is away the moment a batch starts: the worker cannot release the reservation
    # then, and the texts would count as queued forever, shrinking the queue and inflating /backlog.
    store = Stores.over(redis.Redis.from_url(private_redis.url, decode_responses=True), None, 60, 60)
    assert store.jobs.enqueue(new_job("job-a", ["a", "b"], [None, None], time.time() + 60), 10, 2**20) is None
    store.complete_jobs("model@1", {"a": [], "b": []}, {"job-a": [[], []]})
    assert (store.queue.queued_texts(), store.queue.queued_bytes()) == (0, 0)


def test_a_job_ends_once_even_when_a_redelivered_copy_ends_it_again(private_redis):
    # A message that outlives its visibility timeout is delivered again while the first copy runs;
    # both copies end the job. The second must change nothing: no second wake-up, no done -> failed.
    store = Stores.over(redis.Redis.from_url(private_redis.url, decode_responses=True), None, 60, 60)
    assert store.jobs.enqueue(new_job("job-a", ["a"], [None], time.time() + 60), 10, 2**20) is None
    store.jobs.finish("job-a", [[{"label": "POSITIVE", "score": 0.7}, {"label": "NEGATIVE", "score": 0.3}]])
    store.jobs.finish("job-a", [[{"label": "NEGATIVE", "score": 0.6}, {"label": "POSITIVE", "score": 0.4}]])
    store.jobs.fail("job-a", "expired")
    record = store.jobs.get("job-a")
    assert record.status == "done" and record.error is None
    assert record.predictions[0][0] == {"label": "POSITIVE", "score": 0.7}
    assert store.main.llen(done_key("job-a")) == 1
