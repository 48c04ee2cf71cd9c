"""The front door (nginx, deploy/nginx/): slow clients, its refusals, its per-address limit, forwarded addresses."""

import asyncio
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from bench import slow_clients
from common.settings import Settings
from stack import REPO, free_port, http_status, start_web, wait_until
from stack.front_door import FrontDoor
from web.error_pages import FRONT_DOOR_ERRORS, error_page

# From the template: requests in progress per client address, client_header_timeout and client_body_timeout.
PER_ADDRESS_LIMIT = 128
HEADER_TIMEOUT_S = 10
BODY_TIMEOUT_S = 10


def call(url_port: int, method: str, path: str, source: str = "127.0.0.1", body=None, headers=None, timeout_s: float = 10):
    """One request from ``source`` (a loopback address); (status, headers, parsed JSON body or raw bytes)."""
    connection = http.client.HTTPConnection("127.0.0.1", url_port, timeout=timeout_s, source_address=(source, 0))
    try:
        connection.request(method, path, body, headers or {})
        response = connection.getresponse()
        raw = response.read()
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = raw
        return response.status, response.headers, payload
    finally:
        connection.close()


@pytest.fixture
def front_door(web_url, settings):
    """nginx in front of the session's gunicorn."""
    door = FrontDoor(free_port(), web_url.removeprefix("http://"), settings.max_body_bytes)
    door.wait_until_listening()
    yield door
    door.close()


def model_override(service_env) -> dict:
    return {"MODEL": service_env["MODEL"]} if "MODEL" in service_env else {}


def test_slow_clients_do_not_starve_a_normal_client_through_make_runs_port(service_env):
    """500 connections trickle bodies for 25 s into `make run`'s stack; a normal client stays fast and error-free."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key not in ("REDIS_URL", "MAKEFLAGS")}
    env.update({"PORT": str(port), "REDIS_PORT": str(free_port()), "WORKER_METRICS_PORT": "0", **model_override(service_env)})
    stack = subprocess.Popen(
        [sys.executable, "-m", "stack"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    output: list[bytes] = []
    threading.Thread(target=lambda: output.extend(stack.stdout), daemon=True).start()
    try:

        def ready():
            assert stack.poll() is None, b"".join(output)[-3000:].decode(errors="replace")
            return http_status(f"http://127.0.0.1:{port}/ready") == 200

        wait_until(ready, 180, "the stack's /ready", interval_s=0.5)
        # 25 s: well past nginx's 10 s read timeouts, which a byte every 2 s never trips.
        report = slow_clients.run(f"http://127.0.0.1:{port}", connections=500, seconds=25)
    finally:
        os.killpg(stack.pid, signal.SIGTERM)
        stack.wait(60)

    # Evidence first: the slow clients held their connections open for the whole run.
    assert report["slow_outcomes"].get("held", 0) >= 450, report
    normal = report["normal_client"]
    assert normal["errors"] == 0, report
    for name in ("health", "predict"):
        assert normal[name]["calls"] >= 40, report  # it kept calling all along
        assert normal[name]["p99_ms"] < 1000, report


def test_front_door_refusals_use_the_service_error_shape(web_url):
    # nginx's limit below gunicorn's, so the 413 can only be nginx's: in the service's JSON shape.
    door = FrontDoor(free_port(), web_url.removeprefix("http://"), max_body_bytes=4096)
    try:
        door.wait_until_listening()
        headers = {"Content-Type": "application/json"}
        fits = json.dumps({"text": ["a" * 1900, "b" * 1900]})  # just under 4096 bytes
        assert call(door.port, "POST", "/predict", body=fits, headers=headers)[0] in (200, 202)
        too_big = json.dumps({"text": ["a" * 1900, "b" * 1900, "c" * 1900]})
        status, answer_headers, body = call(door.port, "POST", "/predict", body=too_big, headers=headers)
    finally:
        door.close()
    assert status == 413 and answer_headers["Content-Type"] == "application/json"
    assert answer_headers["Server"] == "nginx"
    assert body == {
        "error": "payload_too_large",
        "message": "request body is over the limit of 4096 bytes (MAX_BODY_BYTES)",
        "details": {"limit_bytes": 4096},
    }


def raw_exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` as bytes, exactly as written; (status, headers, body) of the answer, read until nginx closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer_complete(answer):
            chunk = connection.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), headers, body


def answer_complete(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


HOST = b"Host: sentiment.test\r\n"
# What nginx answers itself, before any route: a malformed or unsupported request, each with its status.
MALFORMED_REQUESTS = {
    "encoded dots above the root": (b"GET /%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\n" + HOST + b"\r\n", 400, "bad_request"),
    "a bad percent escape": (b"GET /predict%zz HTTP/1.1\r\n" + HOST + b"\r\n", 400, "bad_request"),
    "plain dots above the root": (b"GET /../../etc/passwd HTTP/1.1\r\n" + HOST + b"\r\n", 400, "bad_request"),
    "a garbage request line": (b"\x01\x02garbage\r\n\r\n", 400, "bad_request"),
    "a lower-case method": (b"get /health HTTP/1.1\r\n" + HOST + b"\r\n", 400, "bad_request"),
    "CONNECT": (b"CONNECT sentiment.test:443 HTTP/1.1\r\n" + HOST + b"\r\n", 400, "bad_request"),
    "TRACE": (b"TRACE /predict HTTP/1.1\r\n" + HOST + b"\r\n", 405, "method_not_allowed"),
    "a 20,000-byte URI": (b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n" + HOST + b"\r\n", 414, "uri_too_long"),
    "a 40 KB header": (b"GET /health HTTP/1.1\r\n" + HOST + b"X-Big: " + b"a" * 40_000 + b"\r\n\r\n", 431, "headers_too_large"),
    "an HTTP/2.0 request line": (b"GET /health HTTP/2.0\r\n" + HOST + b"\r\n", 505, "http_version_not_supported"),
    "Transfer-Encoding: gzip": (
        b"POST /predict HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: gzip\r\n\r\n",
        501,
        "not_implemented",
    ),
    "/metrics on the public port": (b"GET /metrics HTTP/1.1\r\n" + HOST + b"\r\n", 404, "not_found"),
    "the error pages' own path": (b"GET /__front_door/400 HTTP/1.1\r\n" + HOST + b"\r\n", 404, "not_found"),
}


@pytest.mark.parametrize("name", MALFORMED_REQUESTS)
def test_every_refusal_the_front_door_makes_itself_is_json(public_port, name):
    request, expected_status, expected_code = MALFORMED_REQUESTS[name]
    status, headers, body = raw_exchange(public_port, request)
    assert (status, headers.get("Content-Type")) == (expected_status, "application/json"), (headers, body[:300])
    assert headers["Server"] == "nginx"  # answered by the front door, not passed on
    payload = json.loads(body)
    assert set(payload) == {"error", "message", "details"} and payload["error"] == expected_code, payload
    if status == 405:
        assert "GET" in headers["Allow"] and "TRACE" not in headers["Allow"]


def test_requests_nginx_accepts_never_meet_gunicorns_own_html_limits(public_port):
    """150 headers, or a 7,000-byte request line: under nginx's limits, so gunicorn must take them too (not its HTML 431/400)."""
    many_headers = b"".join(b"X-Header-%d: v\r\n" % number for number in range(150))
    status, headers, body = raw_exchange(public_port, b"GET /health HTTP/1.1\r\n" + HOST + many_headers + b"\r\n")
    assert (status, json.loads(body)) == (200, {"status": "ok"}), body[:300]
    long_path = b"/jobs/" + b"0" * 7000
    status, headers, body = raw_exchange(public_port, b"GET " + long_path + b" HTTP/1.1\r\n" + HOST + b"\r\n")
    assert (status, json.loads(body)["error"]) == (404, "not_found"), body[:300]


def seconds_until_dropped(port: int, stalled_request: bytes, give_up_s: float) -> float:
    """Send a request that stalls part way; seconds until nginx drops it, having answered nothing."""
    with socket.create_connection(("127.0.0.1", port), timeout=give_up_s) as stalled:
        stalled.sendall(stalled_request)
        started = time.monotonic()
        try:
            answer = stalled.recv(4096)
        except ConnectionResetError:
            answer = b""
    assert answer == b"", answer
    return time.monotonic() - started


def test_front_door_drops_clients_that_stall_their_headers_or_body(front_door):
    # A body that stalls past client_body_timeout.
    body = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{"
    assert BODY_TIMEOUT_S - 1 <= seconds_until_dropped(front_door.port, body, BODY_TIMEOUT_S + 5) < BODY_TIMEOUT_S + 5
    # Headers that never end (no blank line): dropped after client_header_timeout, not 60 s.
    headers = b"GET /health HTTP/1.1\r\nHost: x\r\n"
    assert HEADER_TIMEOUT_S - 1 <= seconds_until_dropped(front_door.port, headers, HEADER_TIMEOUT_S + 5) < HEADER_TIMEOUT_S + 5


def test_front_door_answers_503_json_while_gunicorn_is_unreachable(settings):
    door = FrontDoor(free_port(), f"127.0.0.1:{free_port()}", settings.max_body_bytes)
    try:
        door.wait_until_listening()
        status, headers, body = call(door.port, "GET", "/health")
    finally:
        door.close()
    assert status == 503 and headers["Retry-After"] == "1"
    assert body["error"] == "unavailable"


def test_one_address_holds_at_most_128_requests_in_progress(front_door):
    """Past the per-address limit, an address gets 429 JSON; other addresses are served as before."""
    outcome: dict = {}
    # 128 slow requests from 127.0.0.2, held open until the checks below are done.
    holder = threading.Thread(
        target=lambda: outcome.update(
            asyncio.run(slow_clients.slow_clients("127.0.0.1", front_door.port, PER_ADDRESS_LIMIT, 1, 10, 1.0))
        )
    )
    holder.start()

    def refused_from_the_busy_address():
        status, headers, body = call(front_door.port, "GET", "/health", source="127.0.0.2")
        return (status, headers, body) if status == 429 else None

    status, headers, body = wait_until(refused_from_the_busy_address, 15, "127.0.0.2 to reach its limit", interval_s=0.2)
    assert headers["Retry-After"] == "1" and body["error"] == "too_many_connections"
    assert call(front_door.port, "GET", "/health", source="127.0.0.3")[0] == 200
    holder.join(30)
    # Evidence the limit was what refused: all 128 were held to the end, none was turned away.
    assert outcome == {"held": PER_ADDRESS_LIMIT}


def test_rate_limits_see_each_client_through_the_front_door(service_env, private_redis):
    """nginx forwards the client's address, gunicorn trusts one hop: each address has its own budget, unforgeably."""
    env = {**service_env, "REDIS_URL": private_redis.url, "RATE_LIMIT": "2/minute", "TRUST_PROXY_HOPS": "1"}
    web_port = free_port()
    web = start_web(env, web_port, processes=1)
    door = FrontDoor(free_port(), f"127.0.0.1:{web_port}", 1024 * 1024)
    try:
        door.wait_until_listening()

        def predict(source, forged=None):
            headers = {"Content-Type": "application/json", **({"X-Forwarded-For": forged} if forged else {})}
            return call(door.port, "POST", "/predict", source, json.dumps({"text": []}), headers)[0]

        assert [predict("127.0.0.2"), predict("127.0.0.2"), predict("127.0.0.2")] == [200, 200, 429]
        assert predict("127.0.0.2", forged="203.0.113.7") == 429  # a forged header does not buy a new budget
        assert predict("127.0.0.3") == 200
    finally:
        door.close()
        web.stop()


def test_the_front_door_and_the_ingress_error_backend_answer_alike():
    """Every error page of the nginx template is web.error_pages' own, so make run, compose and k8s agree."""
    template = (REPO / "deploy" / "nginx" / "front-door.conf.template").read_text()
    pages = re.findall(r"location = /__front_door/(\d+)(-jobs)? \{[^}]*?return \d+ '(\{.*?\})';", template, re.DOTALL)
    assert {int(status) for status, _, _ in pages} == set(FRONT_DOOR_ERRORS)
    settings = Settings()
    for status, jobs, body in pages:
        rendered = body.replace("${MAX_BODY_BYTES}", str(settings.max_body_bytes))
        rendered = rendered.replace("${MAX_JOB_BODY_BYTES}", str(settings.max_job_body_bytes))
        expected_status, headers, expected = error_page(int(status), "/jobs" if jobs else "/predict", settings)
        assert (expected_status, json.loads(rendered)) == (int(status), json.loads(expected)), status + jobs
    status, headers, body = error_page(494, "/jobs", settings)
    assert status == 431 and headers["Content-Type"] == "application/json"
    assert error_page(413, "/jobs", settings)[2] == json.dumps(
        {"error": "payload_too_large", "message": f"request body is over the limit of {settings.max_job_body_bytes} bytes"
         " (MAX_JOB_BODY_BYTES)", "details": {"limit_bytes": settings.max_job_body_bytes}}
    ).encode()  # fmt: skip
    assert error_page(405, "/predict", settings)[1]["Allow"] == "GET, HEAD, POST, DELETE, OPTIONS"


def test_the_ingress_error_backend_answers_the_code_it_is_handed_in_json():
    from werkzeug.test import Client

    from web.error_pages import create_app

    client = Client(create_app(Settings()))
    unreachable = client.get("/", headers={"X-Code": "502", "X-Original-URI": "/predict"})
    assert (unreachable.status_code, unreachable.headers["Retry-After"]) == (503, "1")
    assert unreachable.json["error"] == "unavailable" and unreachable.content_type == "application/json"
    too_big = client.get("/", headers={"X-Code": "413", "X-Original-URI": "/jobs"})
    assert too_big.status_code == 413 and too_big.json["details"] == {"limit_bytes": Settings().max_job_body_bytes}
    assert client.get("/", headers={"X-Code": "418"}).status_code == 400  # an unknown 4xx: a generic 400
    assert client.get("/healthz").status_code == 200
