"""What one request costs the Redis servers, and where one broker tops out: the capacity model's inputs.

    python -m bench.capacity [--requests 400] [--out results]

For each case a fresh local stack (main Redis, cache Redis, workers, gunicorn with one process and
no in-process cache, so every lookup reaches Redis) takes ``--requests`` requests from 8 client
threads, and the script reads from each Redis server what those requests cost it: commands by
name (INFO commandstats), network bytes in and out (INFO stats) and CPU-seconds (its own process's
user + system time). Cases:

- cached, 1 text: texts the cache already holds;
- uncached, 1 text and 8 texts: each text new, with 1 worker, and (1 text) with 2 and 3 workers,
  which checks that more workers change nothing per text (on 2 cores they add no speed);
- uncached, 1 text, main Redis behind Sentinels (``python -m stack --ha``): the replica fence's cost.

Then redis-benchmark's ceiling for plain commands at 32 connections on this machine. Heartbeats and
other background commands during a case are counted with it. Writes results/capacity.json and .md.
"""

import argparse
import json
import shutil
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import redis
import requests

from stack import REPO, RedisServer, free_port, start_web, start_worker
from stack.redis_ha import RedisHa

CLIENT_THREADS = 8
TEXT = "the plot wanders , but the actors are good and the ending lands well"


def process_cpu_s(pid: int) -> float:
    """User + system CPU-seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime, stime in clock ticks (USER_HZ = 100 on Linux)


def snapshot(client: redis.Redis) -> dict:
    """Commands by name, network bytes and CPU-seconds of one Redis server so far."""
    stats = client.info("stats")
    commands = {name.removeprefix("cmdstat_"): value["calls"] for name, value in client.info("commandstats").items()}
    pid = int(client.info("server")["process_id"])
    return {
        "commands": commands,
        "bytes_in": stats["total_net_input_bytes"],
        "bytes_out": stats["total_net_output_bytes"],
        "cpu_s": process_cpu_s(pid),
    }


def difference(before: dict, after: dict, requests_sent: int) -> dict:
    """Per request: commands by name (and in all), bytes in and out, CPU-milliseconds."""
    commands = Counter(after["commands"])
    commands.subtract(before["commands"])
    by_name = {name: round(count / requests_sent, 2) for name, count in sorted(commands.items()) if count > 0}
    return {
        "commands": round(sum(count for count in commands.values() if count > 0) / requests_sent, 2),
        "commands_by_name": by_name,
        "bytes_in": round((after["bytes_in"] - before["bytes_in"]) / requests_sent),
        "bytes_out": round((after["bytes_out"] - before["bytes_out"]) / requests_sent),
        "cpu_ms": round((after["cpu_s"] - before["cpu_s"]) * 1000 / requests_sent, 3),
    }


def post_all(url: str, bodies: list[list[str]]) -> Counter:
    """POST each body to /predict from CLIENT_THREADS threads; the answers' statuses."""
    statuses = Counter()
    lock = threading.Lock()
    pending = iter(bodies)

    def client() -> None:
        session = requests.Session()
        while True:
            with lock:
                texts = next(pending, None)
            if texts is None:
                return
            status = session.post(f"{url}/predict", json={"text": texts}, timeout=60).status_code
            with lock:
                statuses[status] += 1

    threads = [threading.Thread(target=client) for _ in range(CLIENT_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def run_case(name: str, texts_per_request: int, request_count: int, workers: int = 1, ha: bool = False, cached: bool = False):
    """One case on a fresh stack: the per-request cost on the main and the cache Redis."""
    redis_ha = RedisHa() if ha else None
    main_server = None if ha else RedisServer(appendfsync="everysec")
    cache_server = RedisServer(maxmemory="256mb", maxmemory_policy="allkeys-lru", appendonly=False)
    processes = []
    try:
        if redis_ha:
            redis_ha.start()
        else:
            main_server.start()
        cache_server.start()
        env = {
            "REDIS_URL": redis_ha.url if redis_ha else main_server.url,
            "CACHE_REDIS_URL": cache_server.url,
            "WEB_CACHE_ENTRIES": "0",
            "TORCH_THREADS": "1" if workers > 1 else "2",
            "WORKER_METRICS_PORT": "0",
            "PYTHONUNBUFFERED": "1",
        }
        if redis_ha:
            env["REDIS_SENTINELS"] = redis_ha.sentinel_setting
        main_port = redis_ha.primary_port() if redis_ha else main_server.port
        main = redis.Redis(port=main_port, decode_responses=True)
        cache = redis.Redis(port=cache_server.port, decode_responses=True)
        for number in range(workers):
            processes.append(start_worker(env, main, f"worker-{number}"))
        port = free_port()
        processes.append(start_web(env, port, processes=1))
        url = f"http://127.0.0.1:{port}"
        bodies = [
            [f"{TEXT} , request {index} text {text}" for text in range(texts_per_request)] for index in range(request_count)
        ]
        warm_up = post_all(url, [[f"{TEXT} , warm-up {index}"] for index in range(20)])
        if cached:
            post_all(url, bodies)
        main.config_resetstat()
        cache.config_resetstat()
        before = {"main": snapshot(main), "cache": snapshot(cache)}
        started = time.perf_counter()
        statuses = post_all(url, bodies)
        seconds = time.perf_counter() - started
        after = {"main": snapshot(main), "cache": snapshot(cache)}
        return {
            "case": name,
            "texts_per_request": texts_per_request,
            "workers": workers,
            "sentinels": ha,
            "requests": request_count,
            "statuses": {str(status): count for status, count in sorted((warm_up + statuses).items())},
            "requests_per_s": round(request_count / seconds, 1),
            "main": difference(before["main"], after["main"], request_count),
            "cache": difference(before["cache"], after["cache"], request_count),
        }
    finally:
        for process in reversed(processes):
            process.stop()
        cache_server.close()
        if redis_ha:
            redis_ha.close()
        else:
            main_server.close()


def broker_ceiling() -> dict:
    """redis-benchmark's requests/s for plain commands at 32 connections, no pipelining, on a fresh server."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return {}
    server = RedisServer(appendfsync="everysec")
    server.start()
    try:
        output = subprocess.run(
            [binary, "-p", str(server.port), "-q", "-n", "200000", "-c", "32", "-t", "set,get,lpush,rpop,incr"],
            capture_output=True,
            text=True,
            timeout=300,
        ).stdout
    finally:
        server.close()
    ceiling = {}
    for line in output.replace("\r", "\n").splitlines():
        name, _, rest = line.partition(":")
        if "requests per second" in rest:
            ceiling[name.strip()] = float(rest.split()[0])
    return ceiling


def markdown(rows: list[dict], ceiling: dict) -> str:
    lines = [
        "| case | workers | answers | main Redis commands / request | main bytes in / out | main CPU ms | cache commands"
        " | cache bytes in / out | cache CPU ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        main, cache = row["main"], row["cache"]
        lines.append(
            f"| {row['case']} | {row['workers']} | {row['statuses']} | {main['commands']} "
            f"| {main['bytes_in']} / {main['bytes_out']} "
            f"| {main['cpu_ms']} | {cache['commands']} | {cache['bytes_in']} / {cache['bytes_out']} | {cache['cpu_ms']} |"
        )
    lines.append("")
    lines.append("redis-benchmark, 32 connections: " + ", ".join(f"{name} {value:,.0f}/s" for name, value in ceiling.items()))
    return "\n".join(lines)


CASES = [
    ("cached, 1 text", 1, {"cached": True}),
    ("uncached, 1 text", 1, {}),
    ("uncached, 8 texts", 8, {}),
    ("uncached, 1 text, 2 workers", 1, {"workers": 2}),
    ("uncached, 1 text, 3 workers", 1, {"workers": 3}),
    ("uncached, 1 text, Sentinels", 1, {"ha": True}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400, help="requests per case")
    parser.add_argument("--out", type=Path, default=REPO / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, texts, options in CASES:
        row = run_case(name, texts, args.requests, **options)
        print(json.dumps(row), flush=True)
        rows.append(row)
    ceiling = broker_ceiling()
    (args.out / "capacity.json").write_text(json.dumps({"cases": rows, "redis_benchmark": ceiling}, indent=1))
    report = markdown(rows, ceiling)
    (args.out / "capacity.md").write_text(report + "\n")
    print(report)


if __name__ == "__main__":
    main()
