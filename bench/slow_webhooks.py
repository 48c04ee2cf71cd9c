"""What slow webhook receivers cost interactive traffic, measured with and without them in one run:

    python -m bench.slow_webhooks [--jobs 100] [--duration 20s] [--rounds 2]

Starts a private Redis, one worker (WEBHOOK_ALLOW_PRIVATE=1) and gunicorn (2 processes), and a
loopback receiver that answers each webhook one byte a second and never finishes. Then, alternating
``--rounds`` times: k6's uncached scenario (loadtest/uncached.js, 8 clients, every text new) alone
(the receiver first answers every delivery it holds, and the run waits until none is pending), and
the same while ``--jobs`` one-text bulk jobs with callbacks to that receiver hold the webhook lane.
Prints the /predict p50 and p99 of each run, the medians and the ratio of the p99s.
"""

import argparse
import json
import socket
import statistics
import threading
import time
from pathlib import Path

import redis
import requests

from bench.run import k6_figures, run_k6
from common.store import Stores
from stack import RedisServer, free_port, start_web, start_worker, wait_until


class DrippingReceiver:
    """A loopback server that accepts webhooks and answers one byte every ``interval_s``, never finishing.

    ``answer_at_once()`` makes it answer every delivery, those it holds included, with a plain 200.
    """

    ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self.dripping = threading.Event()
        self.dripping.set()
        self.server = socket.create_server(("127.0.0.1", 0), backlog=256)
        self.port = self.server.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.open = 0
        self.most_open = 0
        self.connections = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._drip, args=(connection,), daemon=True).start()

    def _drip(self, connection: socket.socket) -> None:
        with self._lock:
            self.open += 1
            self.connections += 1
            self.most_open = max(self.most_open, self.open)
        try:
            for byte in b"HTTP/1.1 200 OK\r\n" * 1000:
                if not self.dripping.is_set():
                    connection.sendall(self.ANSWER)
                    break
                connection.sendall(bytes([byte]))
                if self._stopping.wait(self.interval_s):
                    break
        except OSError:
            pass  # the sender gave up at its deadline
        finally:
            connection.close()
            with self._lock:
                self.open -= 1

    def answer_at_once(self) -> None:
        self.dripping.clear()

    def drip(self) -> None:
        self.dripping.set()

    def close(self) -> None:
        self._stopping.set()
        self.server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100, help="bulk jobs whose callbacks drip")
    parser.add_argument("--duration", default="20s", help="k6 hold time per run")
    parser.add_argument("--rounds", type=int, default=2, help="runs with and without the slow receivers, alternated")
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    redis_server = RedisServer(appendfsync="everysec")
    redis_server.start()
    env = {
        "REDIS_URL": redis_server.url,
        "WORKER_METRICS_PORT": "0",
        "WEBHOOK_SECRET": "bench-slow-webhooks",
        "WEBHOOK_ALLOW_PRIVATE": "1",
        "WEBHOOK_TIMEOUT_S": "120",  # each attempt holds a thread as long as it may
        "PYTHONUNBUFFERED": "1",
    }
    receiver = DrippingReceiver(interval_s=1.0)
    processes = []
    runs: dict[str, list[dict]] = {"alone": [], "with_slow_receivers": []}
    try:
        processes.append(start_worker(env, redis.Redis.from_url(redis_server.url)))
        port = free_port()
        processes.append(start_web(env, port, processes=2))
        url = f"http://127.0.0.1:{port}"
        requests.post(f"{url}/predict", json={"text": ["warm up the model"]}, timeout=60)
        schedule = Stores.over(redis.Redis.from_url(redis_server.url, decode_responses=True)).webhooks
        for round_number in range(args.rounds):
            for name in runs:
                if name == "alone":  # let every held delivery finish: nothing occupies the lane
                    receiver.answer_at_once()
                    wait_until(lambda: receiver.open == 0 and schedule.pending() == 0, 300, "every webhook to be delivered")
                else:
                    receiver.drip()
                    for number in range(args.jobs):
                        text = f"a bulk job whose webhook drips, round {round_number}, number {number}"
                        answer = requests.post(f"{url}/jobs", json={"text": [text], "callback_url": receiver.url}, timeout=30)
                        answer.raise_for_status()
                    wait_until(lambda: receiver.open > 0, 60, "the receiver to hold deliveries")
                summary = args.out / f"slow-webhooks-{name}-{round_number}.json"
                run = k6_figures(run_k6("uncached.js", url, {"VUS": "8", "DURATION": args.duration}, summary, []), 1)
                run["receiver_connections_open"] = receiver.open
                runs[name].append(run)
                print(f"{name}, round {round_number + 1}: {json.dumps(run)}", flush=True)
    finally:
        for process in reversed(processes):
            process.close()
        redis_server.close()
        receiver.close()
    p99 = {name: statistics.median(run["p99_ms"] for run in name_runs) for name, name_runs in runs.items()}
    report = {
        "runs": runs,
        "median_p99_ms": p99,
        "p99_with_over_without": p99["with_slow_receivers"] / p99["alone"],
        "receiver_connections_at_once": receiver.most_open,
        "receiver_connections": receiver.connections,
        "measured_at": time.strftime("%Y-%m-%d %H:%M"),
    }
    (args.out / "slow-webhooks.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({key: value for key, value in report.items() if key != "runs"}, indent=1))


if __name__ == "__main__":
    main()
