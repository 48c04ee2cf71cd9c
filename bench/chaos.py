"""Faults under load: 32 clients while a worker, Redis, a gunicorn process or the Redis primary dies.

    python -m bench.chaos                                  (all four faults, 60 s of load each)
    python -m bench.chaos --fault redis_restart --seconds 40
    python -m bench.chaos --fault redis_failover           (the --ha stack: bench/failover.py)

For each fault a fresh local stack (Redis with appendfsync always, one worker, gunicorn with two
processes) takes loadtest/chaos.js's load (12 cached, 14 uncached and 6 async clients); a third
of the way in, the fault hits:

- worker_kill9:   SIGKILL the worker mid-batch, then start a replacement (the orchestrator's part);
- redis_restart:  SIGKILL redis-server, start it again 2 s later on the same data;
- gunicorn_kill9: SIGKILL one of gunicorn's two worker processes (its master starts another).

Before each fault it records the jobs queued or running, as evidence that the fault hit in-flight
work. After the load it waits (up to the visibility timeout, 30 s here, plus a minute) for every
job record to end, then reports per fault: the clients' answers by class (ok, 503 JSON, 429 JSON,
bad, hung past the wait bound), seconds until a fresh uncached request succeeds again, the jobs
recorded and how they ended (done, failed, never: lost), and the done jobs whose results miss a
text or hold one twice. Writes results/chaos.json and results/chaos.md. Not part of CI: about
8 minutes.

redis_failover runs on a stack of its own, with its own load and report: see bench/failover.py.
"""

import argparse
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from bench.failover import RecoveryProbe, run_redis_failover
from bench.run import K6
from common.store import Stores
from common.store.keys import JOB_KEY_PREFIX, job_key
from stack import REPO, RedisServer, child_pids, free_port, start_web, start_worker

FAULTS = ("worker_kill9", "redis_restart", "gunicorn_kill9", "redis_failover")
SYNC_WAIT_S = 20
# A killed worker's unacked jobs come back after this long; the default (120 s) would only make the run longer.
VISIBILITY_TIMEOUT_S = 30
# What the clients saw (loadtest/chaos.js); how jobs ended is read from Redis afterwards.
COUNTERS = ("answers_ok", "answers_503_json", "answers_429_json", "answers_bad", "answers_hung", "jobs_accepted")


def job_ids(client: redis.Redis) -> list[str]:
    return [key[len(JOB_KEY_PREFIX) :] for key in client.scan_iter(f"{JOB_KEY_PREFIX}*", count=1000) if not key.endswith(":done")]


def jobs_in_flight(client: redis.Redis) -> dict[str, int]:
    """Job records queued or running right now."""
    statuses = Stores.over(client).jobs.statuses(job_ids(client))
    return {"queued": statuses.count("queued"), "running": statuses.count("running")}


def job_outcomes(client: redis.Redis) -> dict:
    """Every job record by final status, plus done jobs whose results miss a text or hold one twice."""
    outcomes = {"recorded": 0, "done": 0, "failed": 0, "unfinished": 0, "done_with_wrong_results": 0, "failed_by_error": {}}
    for job_id in job_ids(client):
        fields = client.hgetall(job_key(job_id))
        if not fields:
            continue
        outcomes["recorded"] += 1
        if fields["status"] == "done":
            outcomes["done"] += 1
            # The worker's results hold one prediction per text the cache did not know, each slot pointing at one.
            slots, results = json.loads(fields["slots"]), json.loads(fields.get("results", "[]"))
            pointed = {slot for slot in slots if isinstance(slot, int)}
            if pointed != set(range(len(results))) or not all(len(prediction) == 2 for prediction in results):
                outcomes["done_with_wrong_results"] += 1
        elif fields["status"] == "failed":
            outcomes["failed"] += 1
            error = fields.get("error", "")
            outcomes["failed_by_error"][error] = outcomes["failed_by_error"].get(error, 0) + 1
        else:
            outcomes["unfinished"] += 1
    return outcomes


def run_fault(fault: str, seconds: int) -> dict:
    server = RedisServer(appendfsync="always")
    server.start()
    client = redis.Redis.from_url(server.url, decode_responses=True)
    env = {
        "REDIS_URL": server.url,
        "TORCH_THREADS": "2",
        "SYNC_WAIT_S": str(SYNC_WAIT_S),
        "VISIBILITY_TIMEOUT_S": str(VISIBILITY_TIMEOUT_S),
        "WORKER_METRICS_PORT": "0",
        "PYTHONUNBUFFERED": "1",
    }
    workers = [start_worker(env, client)]
    port = free_port()
    web = start_web(env, port, processes=2)
    web_url = f"http://127.0.0.1:{port}"
    try:
        # Five seconds of the same load first: the cached clients' sentences get cached, the model warm.
        warm_up = [K6, "run", "--quiet", "-e", f"BASE_URL={web_url}", "-e", "DURATION=5s", str(REPO / "loadtest" / "chaos.js")]
        subprocess.run(warm_up, capture_output=True)
        summary_path = Path(tempfile.mkstemp(suffix=".json")[1])
        load = subprocess.Popen(
            [
                K6, "run", "--quiet", "--summary-export", str(summary_path),
                "-e", f"BASE_URL={web_url}", "-e", f"DURATION={seconds}s", "-e", f"SYNC_WAIT_S={SYNC_WAIT_S}",
                str(REPO / "loadtest" / "chaos.js"),
            ],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        probe = RecoveryProbe(web_url).start()
        time.sleep(seconds / 3)
        in_flight = jobs_in_flight(client)
        fault_at = time.time()
        if fault == "worker_kill9":
            workers[0].signal(signal.SIGKILL)
            workers[0].process.wait(10)
            workers.append(start_worker(env, client, "replacement"))
        elif fault == "redis_restart":
            os.kill(server.process.pid, signal.SIGKILL)
            server.process.wait(10)
            time.sleep(2)
            server.start()
        else:
            os.kill(child_pids(web.pid)[0], signal.SIGKILL)
        load.wait(seconds * 3 + 180)
        probe.stop()
        metrics = json.loads(summary_path.read_text())["metrics"]
        counts = {name: int(metrics.get(name, {}).get("count", 0)) for name in COUNTERS}
        # Wait for every job to end: a killed worker's unacked ones come back after the visibility timeout.
        give_up_at = time.time() + VISIBILITY_TIMEOUT_S + 60
        while jobs_in_flight(client) != {"queued": 0, "running": 0} and time.time() < give_up_at:
            time.sleep(1)
        jobs = job_outcomes(client)
        return {
            "fault": fault,
            "in_flight_at_fault": in_flight,
            **counts,
            "seconds_to_recover": probe.seconds_to_recover(fault_at),
            "jobs_recorded": jobs["recorded"],
            "jobs_recorded_done": jobs["done"],
            "jobs_recorded_failed": jobs["failed"],
            "jobs_failed_by_error": jobs["failed_by_error"],
            "jobs_lost": jobs["unfinished"],
            "done_with_wrong_results": jobs["done_with_wrong_results"],
            "queued_texts_left": Stores.over(client).queue.queued_texts(),
        }
    finally:
        web.stop()
        for worker in workers:
            worker.stop()
        server.close()


def markdown(rows: list[dict]) -> str:
    lines = [
        "| fault | in flight at the fault | ok | 503 JSON | 429 JSON | bad | hung | recovery s "
        "| jobs recorded | done | failed | lost | results wrong | texts still counted queued |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        flight = row["in_flight_at_fault"]
        lines.append(
            f"| {row['fault']} | {flight['queued']} queued, {flight['running']} running | {row['answers_ok']} "
            f"| {row['answers_503_json']} | {row['answers_429_json']} | {row['answers_bad']} | {row['answers_hung']} "
            f"| {row['seconds_to_recover']} | {row['jobs_recorded']} | {row['jobs_recorded_done']} "
            f"| {row['jobs_recorded_failed']} {row['jobs_failed_by_error'] or ''} | {row['jobs_lost']} "
            f"| {row['done_with_wrong_results']} "
            f"| {row['queued_texts_left']} |"
        )
    return "\n".join(lines)


def failover_markdown(row: dict) -> str:
    statuses = ", ".join(f"{status}: {count}" for status, count in row["client_statuses"].items())
    bulk = row["bulk_job"]
    return "\n".join(
        [
            "| fault | in flight at the kill | accepted | lost | failed | texts scored twice | failover s | recovery s "
            "| client answers | bulk job |",
            "|---|---|---|---|---|---|---|---|---|---|",
            f"| redis_failover | {row['in_flight_at_kill']} | {row['jobs_accepted']} | {row['jobs_lost']} | {row['jobs_failed']} "
            f"| {row['texts_scored_twice']} | {row['failover_s']} | {row['recovery_s']} | {statuses} "
            f"| {bulk['status']}, {bulk['texts_with_a_result']} of {bulk['texts']} texts with a result |",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fault", choices=FAULTS, action="append", help="a fault to run (default: all four)")
    parser.add_argument("--seconds", type=int, default=60, help="seconds of load per fault")
    parser.add_argument("--out", type=Path, default=REPO / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for fault in args.fault or FAULTS:
        row = run_redis_failover(args.seconds) if fault == "redis_failover" else run_fault(fault, args.seconds)
        print(json.dumps(row), flush=True)
        rows.append(row)
    (args.out / "chaos.json").write_text(json.dumps(rows, indent=1))
    single_stack_rows = [row for row in rows if row["fault"] != "redis_failover"]
    tables = [markdown(single_stack_rows)] if single_stack_rows else []
    tables += [failover_markdown(row) for row in rows if row["fault"] == "redis_failover"]
    report = "\n\n".join(tables)
    (args.out / "chaos.md").write_text(report + "\n")
    print(report)


if __name__ == "__main__":
    main()
