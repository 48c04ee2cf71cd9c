"""Soak run: N minutes of mixed cached, uncached and async load (loadtest/soak.js) on a local stack.

    python -m bench.soak --minutes 5          (python -m bench.soak --minutes 30 for the long run)

Reports requests, errors, async jobs done and lost, and the RSS of the web (all gunicorn
processes) and the worker at the start and the end. Not part of CI.
"""

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from bench.run import K6
from common.store import Stores
from stack import REPO, RedisServer, free_port, start_web, start_worker


def rss_mib(root_pid: int) -> float:
    """Resident memory of a process and all its descendants, in MiB."""
    pids = [root_pid]
    children = subprocess.run(["pgrep", "-P", str(root_pid)], capture_output=True, text=True).stdout.split()
    pids += [int(pid) for pid in children]
    total_kib = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total_kib / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5)
    parser.add_argument("--sentences", default="", help="JSON list of sentences (bench.run writes results/sentences.json)")
    args = parser.parse_args()

    server = RedisServer()
    server.start()
    client = redis.Redis.from_url(server.url, decode_responses=True)
    env = {"REDIS_URL": server.url, "WORKER_METRICS_PORT": "0", "TORCH_THREADS": "2", "PYTHONUNBUFFERED": "1"}
    port = free_port()
    worker = start_worker(env, client)
    web = start_web(env, port)
    try:
        # Warm up so the start figures include the loaded model and imported code, not just boot.
        subprocess.run(
            [
                K6,
                "run",
                "--quiet",
                "-e",
                f"BASE_URL=http://127.0.0.1:{port}",
                "-e",
                "DURATION=10s",
                str(REPO / "loadtest" / "soak.js"),
            ],
            capture_output=True,
        )
        start = {"web_mib": rss_mib(web.pid), "worker_mib": rss_mib(worker.pid)}
        summary_path = Path(tempfile.mkstemp(suffix=".json")[1])
        k6_env = ["-e", f"BASE_URL=http://127.0.0.1:{port}", "-e", f"DURATION={int(args.minutes * 60)}s"]
        if args.sentences:
            k6_env += ["-e", f"SENTENCES={Path(args.sentences).resolve()}"]
        started = time.time()
        subprocess.run([K6, "run", "--quiet", "--summary-export", str(summary_path), *k6_env, str(REPO / "loadtest" / "soak.js")])
        end = {"web_mib": rss_mib(web.pid), "worker_mib": rss_mib(worker.pid)}
        metrics = json.loads(summary_path.read_text())["metrics"]
        store = Stores.over(client, client, 60, 60)
        report = {
            "minutes": round((time.time() - started) / 60, 1),
            "requests": int(metrics["http_reqs"]["count"]),
            "requests_per_s": round(metrics["http_reqs"]["rate"], 1),
            "failed_checks": int(metrics["checks"]["fails"]),
            "http_failures": int(metrics["http_req_failed"]["passes"]),
            "async_jobs_done": int(metrics.get("jobs_done", {}).get("count", 0)),
            "async_jobs_lost": int(metrics.get("jobs_lost", {}).get("count", 0)),
            "p99_ms": round(metrics["http_req_duration"]["p(99)"], 1),
            "queued_texts_left": store.queue.queued_texts(),
            "rss_web_mib": f"{start['web_mib']:.0f} -> {end['web_mib']:.0f}",
            "rss_worker_mib": f"{start['worker_mib']:.0f} -> {end['worker_mib']:.0f}",
            "web_alive": web.alive(),
            "worker_alive": worker.alive(),
        }
        print(json.dumps(report, indent=1))
    finally:
        web.stop()
        worker.stop()
        server.close()


if __name__ == "__main__":
    main()
