"""Soak run: N minutes of mixed cached, uncached and async load (loadtest/soak.js) on a local stack.

    python -m bench.soak --minutes 5          (python -m bench.soak --minutes 30 for the long run)
    python -m bench.soak --minutes 6 --worker-env MALLOC_ARENA_MAX=2   (try a setting on the worker)
    python -m bench.soak --minutes 10 --web-env LD_PRELOAD=            (gunicorn on glibc's malloc, not jemalloc)

Reports requests, errors, async jobs done and lost, and the RSS of the web (all gunicorn
processes) and the worker at the start, every minute and at the end, and where each one's
resident memory lies by the end (``rss_*_by_kind``): glibc's per-thread malloc arenas, the main
heap, other anonymous memory (Python's own arenas, large allocations; all of jemalloc's, which
gunicorn runs on where libjemalloc2 is installed) and mapped files. Not part of CI.
"""

import argparse
import json
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import redis

from bench.run import K6
from common.store import Stores
from stack import REPO, RedisServer, child_pids, free_port, start_web, start_worker


def process_and_children(root_pid: int) -> list[int]:
    return [root_pid, *child_pids(root_pid)]


def rss_mib(root_pid: int) -> float:
    """Resident memory of a process and all its descendants, in MiB."""
    total_kib = 0
    for pid in process_and_children(root_pid):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total_kib / 1024


# glibc reserves each extra malloc arena (one per thread, up to 8 per core) as a region of
# HEAP_MAX_SIZE, 64 MiB on 64-bit, aligned to its size; nothing else maps at that alignment here.
MALLOC_ARENA_ALIGNMENT = 64 * 1024 * 1024


def rss_mib_by_kind(root_pid: int) -> dict[str, float]:
    """Resident memory of a process and its children, by what the memory is (from /proc/PID/smaps)."""
    kinds = {"malloc_thread_arenas": 0, "main_heap": 0, "other_anonymous": 0, "files": 0}
    for pid in process_and_children(root_pid):
        try:
            lines = Path(f"/proc/{pid}/smaps").read_text().splitlines()
        except FileNotFoundError:
            continue
        kind = "files"
        for line in lines:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
                start = int(fields[0].split("-")[0], 16)
                path = fields[5] if len(fields) > 5 else ""
                if path == "[heap]":
                    kind = "main_heap"
                elif path.startswith("/"):
                    kind = "files"
                elif start % MALLOC_ARENA_ALIGNMENT == 0 and not path:
                    kind = "malloc_thread_arenas"
                else:
                    kind = "other_anonymous"
            elif fields[0] == "Rss:":
                kinds[kind] += int(fields[1])
    return {kind: round(kib / 1024, 1) for kind, kib in kinds.items()}


class RssSampler:
    """Samples the web's and the worker's RSS once a minute while the load runs."""

    def __init__(self, web_pid: int, worker_pid: int, interval_s: float = 60):
        self.pids = {"web": web_pid, "worker": worker_pid}
        self.interval_s = interval_s
        self.samples: dict[str, list[int]] = {"web": [], "worker": []}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        for name, pid in self.pids.items():
            self.samples[name].append(round(rss_mib(pid)))

    def _run(self) -> None:
        self._sample()
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()
        self._sample()


def growth_over_last(samples: list[int], minutes: int) -> str:
    """Growth over the last ``minutes`` samples, as a percentage of where that window started."""
    window = samples[-(minutes + 1) :]
    return f"{100 * (window[-1] - window[0]) / window[0]:+.1f}% over the last {len(window) - 1} min"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5)
    parser.add_argument("--sentences", default="", help="JSON list of sentences (bench.run writes results/sentences.json)")
    parser.add_argument(
        "--worker-env", action="append", default=[], metavar="NAME=VALUE", help="an extra environment variable for the worker"
    )
    parser.add_argument(
        "--web-env", action="append", default=[], metavar="NAME=VALUE", help="an extra environment variable for gunicorn"
    )
    parser.add_argument(
        "--web-config", default="web/gunicorn_conf.py", help="gunicorn config (bench/web_tracemalloc_conf.py traces)"
    )
    args = parser.parse_args()

    server = RedisServer()
    server.start()
    client = redis.Redis.from_url(server.url, decode_responses=True)
    env = {"REDIS_URL": server.url, "WORKER_METRICS_PORT": "0", "TORCH_THREADS": "2", "PYTHONUNBUFFERED": "1"}
    port = free_port()
    worker = start_worker({**env, **dict(item.split("=", 1) for item in args.worker_env)}, client)
    web_env = dict(item.split("=", 1) for item in args.web_env)
    web = start_web({**env, **web_env}, port, config=args.web_config)
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
        start_by_kind = {"web": rss_mib_by_kind(web.pid), "worker": rss_mib_by_kind(worker.pid)}
        summary_path = Path(tempfile.mkstemp(suffix=".json")[1])
        k6_env = ["-e", f"BASE_URL=http://127.0.0.1:{port}", "-e", f"DURATION={int(args.minutes * 60)}s"]
        if args.sentences:
            k6_env += ["-e", f"SENTENCES={Path(args.sentences).resolve()}"]
        started = time.time()
        with RssSampler(web.pid, worker.pid) as rss:
            load = [K6, "run", "--quiet", "--summary-export", str(summary_path), *k6_env, str(REPO / "loadtest" / "soak.js")]
            subprocess.run(load)
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
            "rss_worker_mib_by_minute": rss.samples["worker"],
            "rss_web_mib_by_minute": rss.samples["web"],
            "rss_worker_growth": growth_over_last(rss.samples["worker"], 20),
            "rss_web_growth": growth_over_last(rss.samples["web"], 20),
            "rss_web_mib_by_kind": {"start": start_by_kind["web"], "end": rss_mib_by_kind(web.pid)},
            "rss_worker_mib_by_kind": {"start": start_by_kind["worker"], "end": rss_mib_by_kind(worker.pid)},
            "worker_env": args.worker_env,
            "web_env": args.web_env,
            "web_ld_preload": web.env.get("LD_PRELOAD", ""),
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
