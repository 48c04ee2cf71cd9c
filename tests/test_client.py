"""python -m client: a file in, one bulk job, the file's rows out with label and score, resumable."""

import csv
import http.server
import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from client.__main__ import MAX_ANSWER_BYTES, Service, ServiceError, spreadsheet_safe
from stack import REPO, wait_until


def write_reviews(path: Path, unique, count: int) -> list[dict]:
    rows = [
        {"id": str(index), "review": unique(f"review {index}: {'great' if index % 2 else 'awful'} film")}
        for index in range(count)
    ]
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["id", "review"])
        writer.writeheader()
        writer.writerows(rows)
    return rows


def client(source: Path, out: Path, web_url: str) -> list[str]:
    return [sys.executable, "-m", "client", "score", str(source), "--column", "review", "--out", str(out), "--url", web_url]


def read_scored(path: Path) -> list[dict]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def test_client_scores_a_csv_in_input_order_keeping_its_columns(web_url, tmp_path, unique):
    rows = write_reviews(tmp_path / "reviews.csv", unique, 300)
    out = tmp_path / "scored.csv"
    result = subprocess.run(client(tmp_path / "reviews.csv", out, web_url), cwd=REPO, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    scored = read_scored(out)
    assert [(row["id"], row["review"]) for row in scored] == [(row["id"], row["review"]) for row in rows]
    assert {row["label"] for row in scored} <= {"POSITIVE", "NEGATIVE"} and all(0.5 <= float(row["score"]) <= 1 for row in scored)
    assert not Path(f"{out}.job.json").exists()


def test_client_resumes_after_ctrl_c_without_losing_or_repeating_a_row(web_url, tmp_path, unique):
    rows = write_reviews(tmp_path / "reviews.csv", unique, 6000)
    out = tmp_path / "scored.csv"
    state = Path(f"{out}.job.json")
    # Ctrl-C's default, even when this run inherits SIGINT ignored (a backgrounded CI shell), so the
    # client gets a KeyboardInterrupt as in a terminal.
    first = subprocess.Popen(
        client(tmp_path / "reviews.csv", out, web_url),
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )

    def part_written():
        assert first.poll() is None, first.stderr.read()
        return state.exists() and 0 < json.loads(state.read_text())["written"] < len(rows)

    wait_until(part_written, 120, "the client to write part of the rows", interval_s=0.1)
    first.send_signal(signal.SIGINT)
    assert first.wait(30) == 130
    job_id = json.loads(state.read_text())["job_id"]
    assert len(read_scored(out)) < len(rows)  # evidence: interrupted part way

    second = subprocess.run(client(tmp_path / "reviews.csv", out, web_url), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert f"resuming job {job_id}" in second.stderr
    assert [row["id"] for row in read_scored(out)] == [row["id"] for row in rows]


class RecordingServer:
    """A loopback HTTP server on ``host`` that answers every request with ``respond`` and records its headers."""

    def __init__(self, host: str, respond):
        self.requests: list[dict] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append({key.lower(): value for key, value in self.headers.items()})
                respond(self)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def test_the_api_key_never_follows_a_redirect_to_another_host():
    elsewhere = RecordingServer("127.0.0.2", lambda handler: handler.send_error(404))

    def redirect(handler):
        handler.send_response(302)
        handler.send_header("Location", f"{elsewhere.url}/jobs/x")
        handler.end_headers()

    service_host = RecordingServer("127.0.0.1", redirect)
    try:
        with pytest.raises(ServiceError, match="another host"):
            Service(service_host.url, "the-secret-key").call("GET", "/jobs/x")
    finally:
        service_host.close()
        elsewhere.close()
    assert service_host.requests[0]["x-api-key"] == "the-secret-key"  # evidence: the key went where it was meant to
    assert elsewhere.requests == []


def test_answers_are_read_within_a_bound():
    def endless(handler):
        handler.send_response(200)
        handler.end_headers()
        chunk = b" " * 2**20
        for _ in range(MAX_ANSWER_BYTES // len(chunk) + 2):
            handler.wfile.write(chunk)

    server = RecordingServer("127.0.0.1", endless)
    try:
        with pytest.raises(ServiceError, match="over"):
            Service(server.url, None).call("GET", "/jobs/x")
    finally:
        server.close()


def test_cells_a_spreadsheet_would_run_get_a_leading_apostrophe():
    assert spreadsheet_safe('=HYPERLINK("http://evil.example","click")') == '\'=HYPERLINK("http://evil.example","click")'
    assert [spreadsheet_safe(cell) for cell in ("+1+cmd|' /C calc'!A0", "@SUM(A1)", "-2+3", "\tx", "\rx")] == [
        "'+1+cmd|' /C calc'!A0",
        "'@SUM(A1)",
        "'-2+3",
        "'\tx",
        "'\rx",
    ]
    assert [spreadsheet_safe(cell) for cell in ("-0.5", "+3", "a fine film", 0.93, "")] == ["-0.5", "+3", "a fine film", 0.93, ""]
