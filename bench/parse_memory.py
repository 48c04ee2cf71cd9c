"""Peak memory of a web process parsing the largest POST /jobs bodies:

    python -m bench.parse_memory [--megabytes 32]

Starts a private Redis and, for each body, a fresh gunicorn (one process, as deployed otherwise),
then posts the body once and reads how far the process's peak resident memory (``VmHWM`` in
/proc/<pid>/status) rose over its level after a small warm-up submission. The bodies, each just
under MAX_JOB_BODY_BYTES:

- ``ndjson_short_lines``: ``"ok"`` lines (millions of them; refused at MAX_JOB_TEXTS + 1);
- ``ndjson_long_lines``: lines of 2,000-character texts (a valid job, stored in Redis);
- ``json_short_items``: ``{"text": ["ok", "ok", ...]}`` (refused at MAX_JOB_TEXTS + 1);
- ``json_long_items``: ``{"text": [<2,000 characters>, ...]}`` (a valid job).

Prints one JSON report: per body, its size, the answer's status and the rise in MiB, and the rise
as a multiple of the body's size.
"""

import argparse
import json
import urllib.error
import urllib.request
from pathlib import Path

from stack import RedisServer, child_pids, free_port, start_web, wait_until

CASES = ("ndjson_short_lines", "ndjson_long_lines", "json_short_items", "json_long_items")


def body(case: str, size: int) -> tuple[bytes, str]:
    """A body of ``case`` just under ``size`` bytes, and its content type."""
    text = json.dumps(("a film review that goes on " * 80)[:2000] if "long" in case else "ok")
    if case.startswith("ndjson"):
        line = text.encode() + b"\n"
        return line * ((size - 1) // len(line)), "application/x-ndjson"
    item = text.encode() + b","
    count = (size - 16) // len(item)
    return b'{"text": [' + item * (count - 1) + text.encode() + b"]}", "application/json"


def peak_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))


def post(url: str, data: bytes, content_type: str) -> int:
    request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def measure(env: dict, case: str, size: int) -> dict:
    """One fresh gunicorn process: its peak memory's rise while it parses one ``case`` body of ``size`` bytes."""
    port = free_port()
    web = start_web(env, port, processes=1)
    try:
        worker_pid = wait_until(lambda: child_pids(web.pid), 10, "gunicorn's worker process")[0]
        url = f"http://127.0.0.1:{port}/jobs"
        post(url, b'{"text": ["warm up the parser and the store"]}', "application/json")
        before = peak_kib(worker_pid)
        data, content_type = body(case, size)
        status = post(url, data, content_type)
        after = peak_kib(worker_pid)
    finally:
        web.stop()
    rise_mib = (after - before) / 1024
    return {
        "body_bytes": len(data),
        "status": status,
        "peak_before_mib": round(before / 1024, 1),
        "peak_rise_mib": round(rise_mib, 1),
        "rise_x_body": round(rise_mib * 2**20 / len(data), 2),
    }


def run(size: int, cases=CASES) -> dict:
    redis_server = RedisServer(appendfsync="no")
    redis_server.start()
    # No worker: the valid jobs stay queued; nothing here measures scoring.
    env = {"REDIS_URL": redis_server.url, "BULK_QUEUE_NAME": "parse-memory-bench", "PYTHONUNBUFFERED": "1"}
    try:
        return {case: measure(env, case, size) for case in cases}
    finally:
        redis_server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=float, default=32, help="body size in MiB (MAX_JOB_BODY_BYTES is 32)")
    args = parser.parse_args()
    print(json.dumps(run(int(args.megabytes * 2**20) - 1024), indent=2))


if __name__ == "__main__":
    main()
