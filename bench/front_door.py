"""The front door's cost and benefit, both measured in one run on one stack:

    python -m bench.front_door --data ../shared/data/sst2 [--duration 20s] [--rounds 2] [--slow-seconds 60]

Starts a private Redis, one worker, gunicorn (2 processes x 32 threads, as `make run`) on a loopback
port, and nginx from deploy/nginx/ in front of it, as `make run` does. Then:

1. the k6 seed scenario (loadtest/load.js: 10 clients, mostly cached texts) straight to gunicorn
   and through nginx, alternating, ``--rounds`` times each, so drift on a noisy machine hits both;
2. ``bench.slow_clients`` (500 connections trickling bodies, and one normal client) straight to
   gunicorn, then through nginx.

Prints a summary and writes <out>/front-door.json.
"""

import argparse
import json
import statistics
from pathlib import Path

import redis

from bench import slow_clients
from bench.run import k6_figures, run_k6
from common.settings import Settings
from model_tools.sst2 import read_split
from stack import RedisServer, free_port, start_web, start_worker
from stack.front_door import FrontDoor


def seed_scenario_rate(base_url: str, env: dict, summary: Path) -> dict:
    """One run of loadtest/load.js (one text per request): requests/s, latencies and failed checks."""
    return k6_figures(run_k6("load.js", base_url, env, summary, []), texts_per_request=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="SST-2 folder (the seed scenario's sentences)")
    parser.add_argument("--duration", default="20s", help="k6 hold time per seed-scenario run")
    parser.add_argument("--rounds", type=int, default=2, help="seed-scenario runs per path")
    parser.add_argument("--slow-connections", type=int, default=500)
    parser.add_argument("--slow-seconds", type=float, default=60)
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sentences_file = args.out / "sentences.json"
    sentences_file.write_text(json.dumps([example.sentence for example in read_split(args.data, "dev")]))

    redis_server = RedisServer(appendfsync="everysec")
    redis_server.start()
    gunicorn_port, door_port = free_port(), free_port()
    env = {
        "REDIS_URL": redis_server.url,
        "WORKER_METRICS_PORT": "0",
        "TRUST_PROXY_HOPS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    processes = []
    try:
        processes.append(start_worker(env, redis.Redis.from_url(redis_server.url)))
        processes.append(start_web(env, gunicorn_port, processes=2))
        door = FrontDoor(door_port, f"127.0.0.1:{gunicorn_port}", Settings.from_env(environ=env).max_body_bytes)
        processes.append(door)
        door.wait_until_listening()
        paths = {"gunicorn": f"http://127.0.0.1:{gunicorn_port}", "front_door": door.url}

        k6_env = {"SENTENCES": str(sentences_file), "DURATION": args.duration}
        seed_runs: dict[str, list[dict]] = {name: [] for name in paths}
        for round_number in range(args.rounds):
            for name, url in paths.items():
                run = seed_scenario_rate(url, k6_env, args.out / f"front-door-k6-{name}-{round_number}.json")
                seed_runs[name].append(run)
                print(f"seed scenario, {name}, round {round_number + 1}: {run}", flush=True)
        mean_rate = {name: statistics.mean(run["requests_per_s"] for run in runs) for name, runs in seed_runs.items()}

        slow = {}
        for name, url in paths.items():
            slow[name] = slow_clients.run(url, args.slow_connections, args.slow_seconds)
            print(f"slow clients, {name}: {json.dumps(slow[name])}", flush=True)
    finally:
        for process in reversed(processes):
            process.close()
        redis_server.close()

    report = {
        "seed_scenario": seed_runs,
        "seed_requests_per_s": mean_rate,
        "front_door_over_gunicorn": mean_rate["front_door"] / mean_rate["gunicorn"],
        "slow_clients": slow,
    }
    (args.out / "front-door.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({key: report[key] for key in ("seed_requests_per_s", "front_door_over_gunicorn")}, indent=1))


if __name__ == "__main__":
    main()
