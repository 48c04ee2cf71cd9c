"""Bulk jobs end to end: real Redis, real workers, real gunicorn (POST /jobs and what follows it)."""

import base64
import hashlib
import hmac
import http.server
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from common.settings import Settings
from common.store.keys import BATCHES_KEY, bulk_job_keys
from stack import free_port, start_web, start_worker, wait_until

WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"a test webhook key").decode()


def call(url: str, method: str = "GET", body=None, content_type: str = "application/json", headers: dict | None = None):
    """(status, parsed JSON or raw bytes) of one request."""
    data = json.dumps(body).encode() if isinstance(body, dict | list) else body
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": content_type, **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


def texts_of(unique, count: int) -> list[str]:
    words = ["great", "awful", "dull", "moving", "fine", "bad"]
    return [unique(f"review {index}: {words[index % len(words)]} film") for index in range(count)]


def submit(web_url: str, texts: list[str], **options) -> str:
    status, answer = call(f"{web_url}/jobs", "POST", {"text": texts, **options})
    assert status == 202, answer
    return answer["job_id"]


def follow(web_url: str, job_id: str, timeout_s: float = 300, until=lambda view: view["status"] not in ("queued", "running")):
    """Poll the job until ``until``; every view seen, in order."""
    views = []

    def reached():
        status, view = call(f"{web_url}/jobs/{job_id}")
        assert status == 200, view
        views.append(view)
        return until(view)

    wait_until(reached, timeout_s, f"job {job_id}", interval_s=0.2)
    return views


def all_results(web_url: str, job_id: str, page: int = 10_000) -> list:
    results, offset = [], 0
    while offset is not None:
        status, answer = call(f"{web_url}/jobs/{job_id}/results?offset={offset}&limit={page}")
        assert status == 200, answer
        results.extend(answer["predictions"])
        offset = answer["next"]
    return results


def metric_sum(metrics_url: str, name: str, **labels) -> float:
    """Sum of the samples called ``name`` (with these labels) on a /metrics page."""
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def worker_metric(service_env, name: str, **labels) -> float:
    return metric_sum(f"http://127.0.0.1:{service_env['WORKER_METRICS_PORT']}/metrics", name, **labels)


def web_metric(web_url: str, name: str) -> float:
    return metric_sum(f"{web_url}/metrics", name)


def test_a_5000_text_job_completes_with_monotone_progress_and_every_result_in_order(web_url, unique, service_env, redis_client):
    # 5,000 texts: three pushes when stored (TEXTS_PER_PUSH), 79 chunks, three pages of results below.
    texts = texts_of(unique, 5_000)
    job_id = submit(web_url, texts, metadata={"batch": "nightly"})
    views = follow(web_url, job_id)
    done = [view["progress"]["done"] for view in views]
    assert done == sorted(done), "progress went backwards"
    assert len(set(done)) > 2, "progress was never seen between start and end"
    final = views[-1]
    assert final["status"] == "done" and final["progress"] == {"total": 5_000, "done": 5_000, "failed": 0}
    assert final["metadata"] == {"batch": "nightly"} and final["finished_at"] >= final["created_at"]
    results = all_results(web_url, job_id, page=2_000)
    assert len(results) == 5_000 and all(result is not None for result in results)
    # In input order: /predict answers these texts from the cache the job filled, and must agree.
    sample = [0, 1, 1_999, 2_000, 4_998, 4_999]
    status, answer = call(f"{web_url}/predict", "POST", {"text": [texts[index] for index in sample]})
    assert status == 200 and answer["predictions"] == [results[index] for index in sample]
    # The worker's last forward passes were this job's, each within the bulk pass bound.
    last_passes = [json.loads(record) for record in redis_client.lrange(BATCHES_KEY, -50, -1)]
    bound = Settings.from_env(environ=service_env).bulk_pass_max_tokens
    assert last_passes and all(record["computed_tokens"] <= bound for record in last_passes), last_passes[-3:]


def test_ndjson_submission_and_ndjson_results(web_url, unique):
    texts = texts_of(unique, 300)
    body = "".join(json.dumps(text) + "\n" for text in texts).encode()
    status, answer = call(f"{web_url}/jobs", "POST", body, "application/x-ndjson")
    assert status == 202 and answer["total"] == 300, answer
    follow(web_url, answer["job_id"])
    request = urllib.request.Request(f"{web_url}/jobs/{answer['job_id']}/results", headers={"Accept": "application/x-ndjson"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.headers["Content-Type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in response.read().decode().splitlines()]
    assert [line["index"] for line in lines] == list(range(300))
    assert lines == [
        {"index": index, "predictions": prediction} for index, prediction in enumerate(all_results(web_url, answer["job_id"]))
    ]


def test_an_ndjson_first_line_object_carries_the_jobs_options(web_url, unique):
    texts = texts_of(unique, 3)
    options = {"metadata": {"source": "reviews.ndjson"}}
    body = "".join(json.dumps(line) + "\n" for line in [options, *texts]).encode()
    status, answer = call(f"{web_url}/jobs", "POST", body, "application/x-ndjson")
    assert status == 202 and answer["total"] == 3, answer
    assert follow(web_url, answer["job_id"])[-1]["metadata"] == {"source": "reviews.ndjson"}
    # Only the first line may hold options; an unknown option is refused like a JSON body's.
    status, answer = call(f"{web_url}/jobs", "POST", b'"a text"\n{"metadata": {}}\n', "application/x-ndjson")
    assert status == 422 and set(answer["details"]["lines"]) == {"2"}, answer
    status, answer = call(f"{web_url}/jobs", "POST", b'{}\n{"metadata": {}}\n"a text"\n', "application/x-ndjson")
    assert status == 422 and set(answer["details"]["lines"]) == {"2"}, answer
    status, answer = call(f"{web_url}/jobs", "POST", b'{"callback": "x"}\n"a text"\n', "application/x-ndjson")
    assert status == 422 and answer["details"] == {"callback": ["Unknown field."]}, answer
    # The callback URL is read from that line too: one that is not http(s) is refused.
    status, answer = call(
        f"{web_url}/jobs", "POST", b'{"callback_url": "ftp://example.com/"}\n"a text"\n', "application/x-ndjson"
    )
    assert status == 422 and "callback_url" in answer["details"], answer


def test_a_bad_ndjson_line_is_named_by_its_line_number(web_url):
    status, answer = call(f"{web_url}/jobs", "POST", b'"fine"\n\n"also fine"\n{oops\n', "application/x-ndjson")
    assert status == 400 and answer["error"] == "invalid_body" and answer["details"] == {"line": 4}
    status, answer = call(f"{web_url}/jobs", "POST", b'"fine"\n42\n"bad \\u0000 char"\n', "application/x-ndjson")
    assert status == 422 and set(answer["details"]["lines"]) == {"2", "3"}, answer


def test_partial_results_while_the_job_runs(web_url, unique):
    texts = texts_of(unique, 2_000)
    job_id = submit(web_url, texts)
    follow(web_url, job_id, until=lambda view: 0 < view["progress"]["done"] < 1_500)
    status, page = call(f"{web_url}/jobs/{job_id}/results?offset=0&limit=2000")
    assert status == 200 and page["total"] == 2_000 and len(page["predictions"]) == 2_000
    scored = sum(prediction is not None for prediction in page["predictions"])
    assert 0 < scored < 2_000, "expected a mix of scored texts and nulls"
    assert call(f"{web_url}/jobs/{job_id}/cancel", "POST")[0] == 202  # the rest is not needed: free the bulk lane


def test_cancel_stops_computation_and_a_second_cancel_is_409(web_url, unique, service_env, redis_client):
    settings = Settings.from_env(environ=service_env)
    texts = texts_of(unique, 6_000)
    job_id = submit(web_url, texts)
    follow(web_url, job_id, until=lambda view: view["progress"]["done"] >= 2 * settings.bulk_chunk_texts)
    status, view = call(f"{web_url}/jobs/{job_id}/cancel", "POST")
    assert status == 202 and view["status"] == "cancelled", view
    computed_at_cancel = worker_metric(service_env, "sentiment_worker_batch_texts_sum")
    done_at_cancel = view["progress"]["done"]
    chunks = -(-6_000 // settings.bulk_chunk_texts)
    # Every chunk settles: in flight (scored), or skipped without computing anything.
    wait_until(lambda: redis_client.hlen(bulk_job_keys(job_id)[3]) == chunks, 60, "every chunk to settle")
    final = call(f"{web_url}/jobs/{job_id}")[1]
    assert final["status"] == "cancelled" and final["finished_at"]
    in_flight = settings.bulk_consumers * settings.bulk_chunk_texts
    assert final["progress"]["done"] <= done_at_cancel + in_flight < 6_000
    # Forward passes after the cancel ran only the chunks already in the batcher: count the texts they computed.
    assert worker_metric(service_env, "sentiment_worker_batch_texts_sum") - computed_at_cancel <= in_flight
    assert call(f"{web_url}/jobs/{job_id}/cancel", "POST")[0] == 409


def test_delete_removes_the_job_and_its_results(web_url, unique):
    job_id = submit(web_url, texts_of(unique, 100))
    follow(web_url, job_id)
    assert call(f"{web_url}/jobs/{job_id}", "DELETE")[0] == 204
    assert call(f"{web_url}/jobs/{job_id}")[0] == 404
    assert call(f"{web_url}/jobs/{job_id}/results")[0] == 404
    assert call(f"{web_url}/jobs/{job_id}", "DELETE")[0] == 404


class WebhookReceiver:
    """A loopback HTTP server that answers the statuses given, in turn, and records each request."""

    def __init__(self, statuses: list[int]):
        self.statuses = list(statuses)
        self.requests: list[tuple[dict, bytes]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append(({key.lower(): value for key, value in self.headers.items()}, body))
                self.send_response(receiver.statuses.pop(0) if receiver.statuses else 200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def test_webhook_is_signed_retried_after_a_500_and_delivered_once(web_url, unique, redis_client):
    receiver = WebhookReceiver([500, 200])
    try:
        job_id = submit(web_url, texts_of(unique, 50), callback_url=receiver.url, metadata={"k": "v"})
        follow(web_url, job_id)
        wait_until(lambda: redis_client.hget(bulk_job_keys(job_id)[0], "webhook_delivered_at"), 60, "the webhook's delivery")
    finally:
        receiver.close()
    assert len(receiver.requests) == 2, "one failed attempt (500), then one delivery; never a third"
    (first_headers, first_body), (headers, body) = receiver.requests
    assert first_headers["webhook-id"] == headers["webhook-id"]  # a retry carries the same id
    view = json.loads(body)
    assert view["job_id"] == job_id and view["status"] == "done" and view["metadata"] == {"k": "v"}
    key = base64.b64decode(WEBHOOK_SECRET.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == expected
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 120


def test_private_callback_urls_are_refused_by_default(service_env):
    from web import create_app

    settings = Settings.from_env({"webhook_allow_private": 0}, environ=service_env)
    client = create_app(settings).test_client()
    for url, rule in (
        ("http://127.0.0.1:9/hook", "a loopback address"),
        ("http://10.1.2.3/hook", "a private address"),
        ("http://169.254.169.254/latest", "a link-local address"),
        ("http://localhost:9/x", "a loopback address"),
    ):
        answer = client.post("/jobs", json={"text": ["a"], "callback_url": url})
        assert answer.status_code == 422, url
        message = answer.get_json()["details"]["callback_url"][0]
        assert rule in message, message  # the rule that refused it, never the addresses
        assert not any(address in message for address in ("127.0.0.1", "10.1.2.3", "169.254.169.254", "::1")), message
    assert client.post("/jobs", json={"text": ["a"], "callback_url": "ftp://example.com/x"}).status_code == 422


def test_idempotent_retries_return_one_job_and_one_computation(web_url, unique, redis_client):
    texts = texts_of(unique, 200)
    key = {"Idempotency-Key": unique("bulk-key")}
    first = call(f"{web_url}/jobs", "POST", {"text": texts}, headers=key)
    again = call(f"{web_url}/jobs", "POST", {"text": texts}, headers=key)
    assert first[0] == again[0] == 202 and first[1]["job_id"] == again[1]["job_id"]
    other = call(f"{web_url}/jobs", "POST", {"text": texts[:10]}, headers=key)
    assert other[0] == 409 and other[1]["error"] == "idempotency_conflict"
    follow(web_url, first[1]["job_id"])
    # One computation: the job's texts were settled once each, and /predict with a key is the same.
    assert call(f"{web_url}/jobs/{first[1]['job_id']}")[1]["progress"]["done"] == 200

    predict_key = {"Idempotency-Key": unique("predict-key")}
    fresh = [unique("an idempotent predict text")]
    one = call(f"{web_url}/predict?wait=0", "POST", {"text": fresh}, headers=predict_key)
    two = call(f"{web_url}/predict?wait=0", "POST", {"text": fresh}, headers=predict_key)
    assert one[0] == 202 and two[1].get("job_id", one[1]["job_id"]) == one[1]["job_id"], (one, two)
    assert call(f"{web_url}/predict", "POST", {"text": ["something else"]}, headers=predict_key)[0] == 409


def test_bulk_texts_past_max_queued_bulk_texts_answer_429(service_env, private_redis):
    from web import create_app

    settings = Settings.from_env(
        {"redis_url": private_redis.url, "max_queued_bulk_texts": 100, "bulk_queue_name": "nobody-consumes"},
        environ=service_env,
    )
    client = create_app(settings).test_client()
    assert client.post("/jobs", json={"text": ["x"] * 80}).status_code == 202
    refused = client.post("/jobs", json={"text": ["y"] * 30})
    assert refused.status_code == 429 and refused.get_json()["error"] == "overloaded"
    assert client.post("/jobs", json={"text": ["z"] * 20}).status_code == 202  # exactly at the limit


def test_jobs_have_their_own_body_limit(service_env):
    from web import create_app

    client = create_app(Settings.from_env({"max_job_body_bytes": 4096}, environ=service_env)).test_client()
    answer = client.post("/jobs", json={"text": ["a" * 1000] * 5})
    assert answer.status_code == 413 and "MAX_JOB_BODY_BYTES" in answer.get_json()["message"]
    # /predict keeps MAX_BODY_BYTES (1 MiB), bigger than the job limit here: 5 KB passes there.
    assert client.post("/predict?wait=0", json={"text": ["b" * 1000] * 5}).status_code in (200, 202)


def test_a_worker_killed_mid_job_loses_no_text_and_scores_none_twice(service_env, private_redis, unique):
    env = {**service_env, "REDIS_URL": private_redis.url, "WORKER_METRICS_PORT": "0"}
    client = redis.Redis.from_url(private_redis.url, decode_responses=True)
    web_port = free_port()
    web = start_web(env, web_port, processes=1)
    worker = start_worker(env, client, name="doomed-worker")
    url = f"http://127.0.0.1:{web_port}"
    try:
        job_id = submit(url, texts_of(unique, 3_000))
        # Evidence the kill hits work in flight: chunks are settled, and the job is still running.
        follow(url, job_id, until=lambda view: view["status"] == "running" and view["progress"]["done"] >= 128)
        os.kill(worker.pid, signal.SIGKILL)
        worker.process.wait(10)
        assert call(f"{url}/jobs/{job_id}")[1]["progress"]["done"] < 3_000
        # The dead worker held chunks: the broker's unacked messages (kombu's "unacked" hash).
        assert client.hlen("unacked") > 0
        survivor = start_worker(env, client, name="survivor-worker")
        try:
            final = follow(url, job_id, timeout_s=180)[-1]
            results = all_results(url, job_id)
        finally:
            survivor.stop()
    finally:
        worker.stop()
        web.stop()
    # Exactly the total: a chunk counted twice would push done past it; a lost one would leave it short.
    assert final["status"] == "done" and final["progress"] == {"total": 3_000, "done": 3_000, "failed": 0}
    chunks = -(-3_000 // Settings.from_env(environ=env).bulk_chunk_texts)
    assert client.hlen(bulk_job_keys(job_id)[3]) == chunks
    assert len(results) == 3_000 and all(result is not None for result in results)


@pytest.mark.parametrize("limit", [0, 10_001])
def test_results_page_size_is_bounded(web_url, limit):
    assert call(f"{web_url}/jobs/00000000-0000-4000-8000-000000000000/results?limit={limit}")[0] == 422


def test_k6_bulk_mix_scenario_finishes_bulk_jobs_beside_interactive_traffic(web_url, tmp_path):
    """loadtest/bulk_mix.js: its checks hold, its bulk jobs finish, and interactive requests are counted apart."""
    from bench.run import run_k6

    summary = run_k6(
        "bulk_mix.js",
        web_url,
        {"DURATION": "12s", "VUS": "2", "BULK_TEXTS": "128", "INTERACTIVE_P99_MS": "10000"},
        tmp_path / "summary.json",
        [],
    )
    metrics = summary["metrics"]
    assert metrics["checks"]["fails"] == 0 and metrics["checks"]["passes"] > 0
    assert metrics["bulk_jobs_done"]["count"] >= 1
    assert metrics["bulk_texts_scored"]["count"] >= 128
    assert metrics["http_req_duration{scenario:interactive}"]["p(99)"] > 0
