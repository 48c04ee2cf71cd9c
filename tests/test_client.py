"""python -m client: a file in, one bulk job, the file's rows out with label and score, resumable."""

import csv
import json
import signal
import subprocess
import sys
from pathlib import Path

from tests.support import REPO, wait_until


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
