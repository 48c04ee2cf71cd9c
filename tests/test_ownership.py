"""Jobs belong to the key that made them: ownership, named keys with quotas, GET /jobs, fair shares, lifetimes."""

import json
import time

import pytest
import redis
import requests

from common.store import Stores
from common.store.bulk import BulkLimits, NewBulkJob
from common.store.keys import WEBHOOKS_DUE_KEY
from stack import free_port, start_web, start_worker, wait_until
from web.keys import hash_api_key

KEYS = {"team-a": "key of team a", "team-b": "key of team b", "team-c": "key of team c"}


@pytest.fixture(scope="module")
def keyed_web(service_env, worker, tmp_path_factory) -> str:
    """gunicorn with three named keys on the session's Redis and worker: B's bulk texts capped at 100, C at 3 calls a minute."""
    keys_file = tmp_path_factory.mktemp("keys") / "keys.json"
    entries = [{"name": name, "sha256": hash_api_key(key)} for name, key in KEYS.items()]
    entries[1]["max_queued_bulk_texts"] = 100
    entries[2]["rate_limit"] = "3/minute"
    keys_file.write_text(json.dumps({"keys": entries}))
    port = free_port()
    web = start_web({**service_env, "API_KEYS_FILE": str(keys_file)}, port, processes=1)
    yield f"http://127.0.0.1:{port}"
    web.stop()


def as_owner(owner: str) -> dict:
    return {"X-API-Key": KEYS[owner]}


def post_job(url: str, owner: str, texts: list[str], **headers) -> requests.Response:
    return requests.post(f"{url}/jobs", json={"text": texts}, headers={**as_owner(owner), **headers}, timeout=60)


def view(url: str, owner: str, job_id: str) -> requests.Response:
    return requests.get(f"{url}/jobs/{job_id}", headers=as_owner(owner), timeout=30)


def test_another_owners_job_answers_404_on_every_route_as_an_unknown_one_does(keyed_web, unique):
    job_id = post_job(keyed_web, "team-a", [unique("team a's review")]).json()["job_id"]
    unknown = "00000000-0000-4000-8000-000000000000"
    for method, path in (("GET", ""), ("GET", "/results"), ("POST", "/cancel"), ("DELETE", "")):
        theirs = requests.request(method, f"{keyed_web}/jobs/{job_id}{path}", headers=as_owner("team-b"), timeout=30)
        none = requests.request(method, f"{keyed_web}/jobs/{unknown}{path}", headers=as_owner("team-b"), timeout=30)
        assert theirs.status_code == none.status_code == 404, (method, path, theirs.text)
        assert theirs.json()["error"] == none.json()["error"] == "not_found"
        assert theirs.json()["message"].replace(job_id, unknown) == none.json()["message"]  # no hint that it exists
    # Evidence it was there all along: its owner still sees it, neither cancelled nor deleted.
    assert view(keyed_web, "team-a", job_id).json()["status"] in ("queued", "running", "done")
    # /predict jobs too.
    answer = requests.post(
        f"{keyed_web}/predict?wait=0", json={"text": [unique("a new predict text")]}, headers=as_owner("team-a"), timeout=30
    )
    if answer.status_code == 202:
        assert view(keyed_web, "team-b", answer.json()["job_id"]).status_code == 404
        assert view(keyed_web, "team-a", answer.json()["job_id"]).status_code == 200


def test_idempotency_keys_are_scoped_per_owner(keyed_web, unique):
    key = {"Idempotency-Key": unique("shared idempotency key")}
    texts = [unique("the first body")]
    first_a = post_job(keyed_web, "team-a", texts, **key)
    again_a = post_job(keyed_web, "team-a", texts, **key)
    first_b = post_job(keyed_web, "team-b", texts, **key)
    assert first_a.status_code == again_a.status_code == first_b.status_code == 202
    assert first_a.json()["job_id"] == again_a.json()["job_id"] != first_b.json()["job_id"]  # one job per owner
    # Another body under B's key: B's own conflict, naming B's own job, never A's.
    conflict = post_job(keyed_web, "team-b", [unique("another body")], **key)
    assert conflict.status_code == 409 and conflict.json()["details"] == {"job_id": first_b.json()["job_id"]}


def test_get_jobs_lists_only_the_callers_jobs_newest_first_in_pages(keyed_web, unique):
    own = [post_job(keyed_web, "team-a", [unique(f"listed {number}")]).json()["job_id"] for number in range(3)]
    theirs = post_job(keyed_web, "team-b", [unique("not listed for a")]).json()["job_id"]
    listing = requests.get(f"{keyed_web}/jobs?limit=100", headers=as_owner("team-a"), timeout=30).json()
    listed = [job["job_id"] for job in listing["data"]]
    assert theirs not in listed
    assert [job_id for job_id in listed if job_id in own] == own[::-1]  # newest first
    first = requests.get(f"{keyed_web}/jobs?limit=2", headers=as_owner("team-a"), timeout=30).json()
    second = requests.get(f"{keyed_web}/jobs?limit=2&after={first['last_id']}", headers=as_owner("team-a"), timeout=30).json()
    assert first["has_more"] and [job["job_id"] for job in first["data"]] == listed[:2]
    assert [job["job_id"] for job in second["data"]] == listed[2:4]
    wait_until(lambda: view(keyed_web, "team-a", own[0]).json()["status"] == "done", 120, "the first job")
    done = requests.get(f"{keyed_web}/jobs?status=done&limit=100", headers=as_owner("team-a"), timeout=30).json()
    assert own[0] in {job["job_id"] for job in done["data"]} and all(job["status"] == "done" for job in done["data"])


def test_each_key_has_its_own_bulk_quota_and_rate_limit(keyed_web, unique):
    refused = post_job(keyed_web, "team-b", [unique(f"over b's cap {number}") for number in range(101)])
    assert refused.status_code == 429 and refused.json()["details"] == {"limit": "API_KEYS_FILE max_queued_bulk_texts"}
    assert post_job(keyed_web, "team-a", [unique(f"under a's {number}") for number in range(101)]).status_code == 202
    statuses = [requests.get(f"{keyed_web}/jobs", headers=as_owner("team-c"), timeout=30).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    assert requests.get(f"{keyed_web}/jobs", headers=as_owner("team-a"), timeout=30).status_code == 200  # counted per key


def test_a_small_job_submitted_after_another_owners_big_one_finishes_while_the_big_one_runs(keyed_web, unique):
    big = post_job(keyed_web, "team-a", [unique(f"big job review {number}: a long film") for number in range(3000)])
    big_id = big.json()["job_id"]
    # Evidence the big job holds the bulk lane: it is running when the small one arrives.
    wait_until(lambda: view(keyed_web, "team-a", big_id).json()["progress"]["done"] > 0, 120, "the big job to start")
    small_id = post_job(keyed_web, "team-b", [unique(f"small job {number}") for number in range(50)]).json()["job_id"]
    try:
        wait_until(lambda: view(keyed_web, "team-b", small_id).json()["status"] == "done", 120, "the small job")
        progress = view(keyed_web, "team-a", big_id).json()["progress"]
        assert progress["done"] < progress["total"], f"the big job finished first: {progress}"
    finally:
        requests.post(f"{keyed_web}/jobs/{big_id}/cancel", headers=as_owner("team-a"), timeout=30)


def test_a_job_queued_longer_than_job_ttl_still_completes(service_env, private_redis, unique):
    """A bulk job's TTL counts from its end: one that waits in the queue longer than JOB_TTL_S is still there to run."""
    env = {**service_env, "REDIS_URL": private_redis.url, "WORKER_METRICS_PORT": "0", "JOB_TTL_S": "2"}
    client = redis.Redis.from_url(private_redis.url, decode_responses=True)
    port = free_port()
    web = start_web(env, port, processes=1)
    url = f"http://127.0.0.1:{port}"
    worker = None
    try:
        # No worker yet: the job waits in the queue, as behind a backlog that takes longer than JOB_TTL_S.
        job_url = f"{url}/jobs/" + requests.post(f"{url}/jobs", json={"text": [unique("waits")] * 3}, timeout=60).json()["job_id"]
        submitted = time.monotonic()
        wait_until(lambda: time.monotonic() - submitted > 3, 10, "JOB_TTL_S to pass")
        assert requests.get(job_url, timeout=10).json()["status"] == "queued"  # evidence: still there, still queued
        worker = start_worker(env, client)
        final = wait_until(lambda: (answer := requests.get(job_url, timeout=10).json())["status"] == "done" and answer, 120, "it")
        assert final["progress"] == {"total": 3, "done": 3, "failed": 0}
    finally:
        web.stop()
        if worker is not None:
            worker.stop()


def test_a_job_not_done_by_its_deadline_ends_failed_expired_with_its_webhook(private_redis):
    stores = Stores.over(redis.Redis.from_url(private_redis.url, decode_responses=True))
    job_id = "33333333-3333-4333-8333-333333333333"
    job = NewBulkJob(job_id, [b"never scored"], 64, None, "http://hooks.example/x")
    assert stores.bulk.create(job, BulkLimits(100, 2**20, deadline_s=0.5)) is None
    assert stores.bulk.expire_overdue() == 0  # not yet overdue
    wait_until(lambda: stores.bulk.expire_overdue() == 1, 5, "the job to pass its deadline")
    record = stores.bulk.get(job_id)
    assert (record["status"], record["error"]) == ("failed", "expired")
    assert stores.main.zscore(WEBHOOKS_DUE_KEY, job_id) is not None
    assert (stores.bulk.queued_texts(), stores.bulk.queued_bytes()) == (0, 0)
    assert 0 < stores.main.ttl(f"sentiment:bulk:{job_id}") <= stores.bulk.ttl_s  # it expires from its end
