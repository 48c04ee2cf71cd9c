"""Webhooks in their own lane: pinned addresses, special ranges refused, one deadline per attempt, slow receivers."""

import socket
import time

import pytest
import redis
import requests

from bench.slow_webhooks import DrippingReceiver
from common.settings import Settings
from common.store import Stores
from common.store.bulk import BulkLimits, NewBulkJob
from common.store.keys import WEBHOOKS_DUE_KEY, bulk_key
from common.webhooks import CallbackRefused, DeliveryFailed, Target, check_callback_url, post, refusal_rule
from stack import free_port, start_web, start_worker, wait_until
from worker.webhooks import deliver

PUBLIC_ADDRESS = "93.184.215.14"  # never connected to: every test hands post() a connector of its own


def resolver(*answers: list[str]):
    """A getaddrinfo stand-in that gives each answer in turn (the last one from then on)."""
    calls = []

    def resolve(host, port, type=socket.SOCK_STREAM):
        answer = answers[min(len(calls), len(answers) - 1)]
        calls.append(host)
        return [(socket.AF_INET6 if ":" in address else socket.AF_INET, type, 6, "", (address, port)) for address in answer]

    resolve.calls = calls
    return resolve


@pytest.mark.parametrize(
    "address, rule",
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.7", "private"),
        ("169.254.169.254", "link-local"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("192.0.0.8", "IETF protocol assignment"),
        ("64:ff9b::7f00:1", "NAT64"),
        ("64:ff9b:1::a9fe:a9fe", "NAT64"),
        ("2002:7f00:1::1", "6to4"),
        ("2001::1", "Teredo"),
        ("::ffff:127.0.0.1", "IPv4-mapped"),
        ("::127.0.0.1", "IPv4-compatible"),
        ("224.0.0.1", "multicast"),
        ("fd00::1", "private"),
        ("fec0::1", "site-local"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "this network"),
    ],
)
def test_special_purpose_addresses_are_refused_by_name(address, rule):
    assert rule in refusal_rule(address)


def test_public_addresses_pass():
    for address in (PUBLIC_ADDRESS, "2606:4700:4700::1111", "8.8.8.8"):
        assert refusal_rule(address) is None, address


def test_every_resolved_address_is_checked_and_the_refusal_names_the_rule_not_the_address():
    with pytest.raises(CallbackRefused) as refused:
        check_callback_url("https://hooks.example/x", False, resolve=resolver([PUBLIC_ADDRESS, "169.254.169.254"]))
    assert "link-local" in str(refused.value) and "169.254" not in str(refused.value) and PUBLIC_ADDRESS not in str(refused.value)


@pytest.fixture
def stores(private_redis) -> Stores:
    return Stores.over(redis.Redis.from_url(private_redis.url, decode_responses=True))


def ended_job_with_callback(stores: Stores, callback_url: str, job_id: str = "11111111-1111-4111-8111-111111111111") -> str:
    assert stores.bulk.create(NewBulkJob(job_id, [b"a text"], 64, None, callback_url), BulkLimits(100, 2**20)) is None
    stores.bulk.start_chunk(job_id, 0)
    stores.bulk.settle_chunk(job_id, 0, "done", 1, [[{"label": "POSITIVE", "score": 0.9}, {"label": "NEGATIVE", "score": 0.1}]])
    return job_id


def test_a_delivery_connects_to_the_address_that_passed_the_check_never_to_a_rebound_one(stores, service_env):
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    # The name first resolves to a public address, then to loopback (a rebinding DNS server).
    rebinding = resolver([PUBLIC_ADDRESS], ["127.0.0.1"])
    connected_to = []

    def connect(address, timeout):
        connected_to.append(address)
        raise ConnectionRefusedError("no route in this test")

    settings = Settings.from_env({"webhook_allow_private": 0}, environ=service_env)
    job_id = ended_job_with_callback(stores, f"http://rebinding.test:{port}/hook")
    try:
        assert deliver(settings, stores, job_id, resolve=rebinding, connect=connect) == "retry"
        with pytest.raises(TimeoutError):
            listener.accept()
    finally:
        listener.close()
    assert rebinding.calls == ["rebinding.test"], "resolved once per attempt, and that answer is the one used"
    assert connected_to == [(PUBLIC_ADDRESS, port)]


def test_one_deadline_bounds_an_attempt_whose_receiver_drips_its_answer():
    receiver = DrippingReceiver(interval_s=0.5)
    try:
        target = Target("http", "127.0.0.1", receiver.port, "/hook", "127.0.0.1")
        started = time.monotonic()
        with pytest.raises(DeliveryFailed):
            post(target, b"{}", {"Content-Type": "application/json"}, timeout_s=2)
        elapsed = time.monotonic() - started
    finally:
        receiver.close()
    # Evidence the receiver was dripping (each byte in time for a per-read timeout), and the deadline held.
    assert 1.9 <= elapsed < 3, elapsed


def test_only_jobs_with_a_callback_are_scheduled(stores):
    assert stores.bulk.create(NewBulkJob("22222222-2222-4222-8222-222222222222", [b"x"], 64), BulkLimits(100, 2**20)) is None
    stores.bulk.settle_chunk("22222222-2222-4222-8222-222222222222", 0, "done", 1, [[{"label": "POSITIVE", "score": 1.0}]])
    assert stores.main.zcard(WEBHOOKS_DUE_KEY) == 0
    ended_job_with_callback(stores, "http://hooks.example/x")
    assert stores.main.zcard(WEBHOOKS_DUE_KEY) == 1


def test_a_claimed_attempt_is_not_claimed_again_until_its_lease_passes(stores):
    job_id = ended_job_with_callback(stores, "http://hooks.example/x")
    assert stores.webhooks.claim(lease_s=0.5) == job_id
    assert stores.webhooks.claim(lease_s=0.5) is None  # another thread: nothing due while the first attempt runs
    wait_until(lambda: stores.webhooks.claim(lease_s=0.5) == job_id, 5, "the lease to pass")


def test_retries_wait_in_redis_and_give_up_after_the_last_attempt(stores, service_env):
    settings = Settings.from_env({"webhook_max_attempts": 2, "webhook_retry_base_s": 600}, environ=service_env)
    job_id = ended_job_with_callback(stores, "http://hooks.example/x")
    refused = [0]

    def connect(address, timeout):
        refused[0] += 1
        raise ConnectionRefusedError

    network = {"resolve": resolver([PUBLIC_ADDRESS]), "connect": connect}
    assert stores.webhooks.claim(60) == job_id
    assert deliver(settings, stores, job_id, **network) == "retry"
    due_at = stores.main.zscore(WEBHOOKS_DUE_KEY, job_id)
    assert 590 < due_at - time.time() <= 600  # the retry waits as a score in Redis, however long (no broker message)
    assert deliver(settings, stores, job_id, **network) == "gave_up"
    assert stores.main.zscore(WEBHOOKS_DUE_KEY, job_id) is None
    assert refused[0] == 2 and stores.main.hget(bulk_key(job_id), "webhook_attempts") == "2"


def test_slow_receivers_hold_only_the_webhook_lane_never_the_threads_that_score(service_env, private_redis, unique):
    """100 jobs' callbacks drip their answers a byte a second; new texts sent meanwhile are still scored at once."""
    receiver = DrippingReceiver(interval_s=1.0)
    env = {
        **service_env,
        "REDIS_URL": private_redis.url,
        "WORKER_METRICS_PORT": "0",
        "WEBHOOK_THREADS": "4",
        "WEBHOOK_TIMEOUT_S": "60",
        "WORKER_CONCURRENCY": "8",  # fewer threads than callbacks: webhooks on them would starve scoring
    }
    client = redis.Redis.from_url(private_redis.url, decode_responses=True)
    worker = start_worker(env, client)
    port = free_port()
    web = start_web(env, port, processes=1)
    url = f"http://127.0.0.1:{port}"
    try:
        for number in range(100):
            body = {"text": [unique(f"bulk {number}")], "callback_url": receiver.url}
            answer = requests.post(f"{url}/jobs", json=body, timeout=30)
            assert answer.status_code == 202, answer.text
        # Evidence the slow receiver holds deliveries: every lane thread is stuck in one.
        wait_until(lambda: receiver.open >= 4, 60, "the webhook lane to fill with dripping receivers")
        statuses = [
            requests.post(f"{url}/predict", json={"text": [unique(f"new text {number}")]}, timeout=30).status_code
            for number in range(20)
        ]
        assert statuses == [200] * 20, statuses
        assert receiver.most_open <= 4  # the lane's threads, and no others
    finally:
        receiver.close()
        web.stop()
        worker.stop()
