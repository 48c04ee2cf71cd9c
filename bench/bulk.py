"""Bulk jobs: throughput against the in-process ceiling, and what a running bulk job costs interactive traffic.

    python -m bench.bulk --data ../shared/data/sst2 [--texts 20000] [--duration 20s] [--out results]

Starts a private Redis, one worker and gunicorn (2 processes) on loopback, then, in this order:

1. interactive alone: k6 ``loadtest/uncached.js`` (8 clients, one new text per request) for --duration;
2. a bulk job of --texts texts (SST-2 dev sentences, each with a tag so none repeats) alone: its
   texts per second from submission to done, and the Redis memory it holds (texts after
   submission; results, record and settled chunks at the end) per 10,000 texts;
3. interactive again while a second bulk job of new texts runs (checked to run throughout), and
   bulk's share of the worker's forward-pass seconds meanwhile (BULK_MIN_SHARE is its floor);
4. the ceiling: the torch model alone, with the worker's thread settings, on 4,000 of the bulk job's
   texts in the worker's length-sorted batches, the median of 3 passes (after the stack is
   stopped, so nothing shares the cores).

Prints the figures and writes <out>/bulk.json.
"""

import argparse
import json
import time
import urllib.request
from pathlib import Path

import redis

from bench.run import k6_figures, run_k6, scrape, total
from common.settings import Settings
from common.store.keys import bulk_job_keys
from model.core import default_threads
from model_tools import default_model
from model_tools.ceilings import measure_ceilings
from model_tools.sst2 import read_split
from stack import RedisServer, free_port, start_web, start_worker
from stack.processes import wait_until

TAGS = ["(seen twice)", "(matinee)", "(director's cut)", "(on a plane)", "(with friends)", "(late night)"]


def tagged(sentences: list[str], count: int, run: int) -> list[str]:
    """``count`` distinct texts: each sentence with a tag and a run number, so no text repeats across jobs."""
    return [f"{sentences[n % len(sentences)]} {TAGS[n // len(sentences) % len(TAGS)]} #{run}.{n}" for n in range(count)]


def request(url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    with urllib.request.urlopen(urllib.request.Request(url, data, {"Content-Type": "application/json"}), timeout=120) as r:
        return json.loads(r.read())


def interactive(web: str, sentences_file: Path, duration: str, out: Path, name: str, offset: int) -> dict:
    env = {"SENTENCES": str(sentences_file), "DURATION": duration, "VUS": "8", "RUN_OFFSET": str(offset)}
    return k6_figures(run_k6("uncached.js", web, env, out / f"bulk-k6-{name}.json", []), texts_per_request=1)


def memory_usage(client: redis.Redis, keys: list[str]) -> int:
    return sum(client.memory_usage(key, samples=0) or 0 for key in keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="SST-2 folder")
    parser.add_argument("--texts", type=int, default=20_000, help="texts per bulk job")
    parser.add_argument("--duration", default="20s", help="k6 time per interactive run")
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    sentences = [example.sentence for example in read_split(args.data, "dev")]
    sentences_file = args.out / "sentences.json"
    sentences_file.write_text(json.dumps(sentences))

    server = RedisServer(appendfsync="everysec")
    server.start()
    client = redis.Redis.from_url(server.url, decode_responses=True)
    metrics_port = free_port()
    env = {"REDIS_URL": server.url, "WORKER_METRICS_PORT": str(metrics_port), "PYTHONUNBUFFERED": "1"}
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"

    def forward_seconds() -> dict[str, float]:
        samples = scrape(metrics_url)
        return {lane: total(samples, "sentiment_worker_forward_seconds_total", lane=lane) for lane in ("interactive", "bulk")}

    processes = []
    report: dict = {"texts": args.texts, "settings": {"bulk_chunk_texts": Settings().bulk_chunk_texts}}
    try:
        processes.append(start_worker(env, client))
        web_port = free_port()
        processes.append(start_web(env, web_port, processes=2))
        web = f"http://127.0.0.1:{web_port}"
        request(f"{web}/predict", {"text": ["warm up the model"]})

        report["interactive_alone"] = interactive(web, sentences_file, args.duration, args.out, "alone", 101)
        print("interactive alone:", report["interactive_alone"], flush=True)

        texts = tagged(sentences, args.texts, 1)
        started = time.perf_counter()
        job_id = request(f"{web}/jobs", {"text": texts})["job_id"]
        texts_bytes = memory_usage(client, [bulk_job_keys(job_id)[1]])

        def ended():
            view = request(f"{web}/jobs/{job_id}")
            return view if view["status"] not in ("queued", "running") else None

        final = wait_until(ended, 3600, "the bulk job", interval_s=0.2)
        seconds = time.perf_counter() - started
        results_bytes = memory_usage(client, bulk_job_keys(job_id))
        report["bulk_alone"] = {
            "status": final["status"],
            "seconds": seconds,
            "texts_per_s": args.texts / seconds,
            "redis_bytes_per_10000_texts_while_queued": texts_bytes * 10_000 / args.texts,
            "redis_bytes_per_10000_texts_when_done": results_bytes * 10_000 / args.texts,
        }
        print("bulk alone:", report["bulk_alone"], flush=True)

        second = request(f"{web}/jobs", {"text": tagged(sentences, args.texts, 2)})["job_id"]
        wait_until(lambda: request(f"{web}/jobs/{second}")["progress"]["done"] > 0, 60, "the second job to start")
        before = forward_seconds()
        report["interactive_during_bulk"] = interactive(web, sentences_file, args.duration, args.out, "during", 202)
        after = forward_seconds()
        spent = {lane: after[lane] - before[lane] for lane in after}
        report["forward_seconds_during_interactive"] = spent
        report["bulk_share_under_load"] = spent["bulk"] / (spent["bulk"] + spent["interactive"])
        report["bulk_min_share"] = Settings.from_env(environ={}).bulk_min_share
        during = request(f"{web}/jobs/{second}")
        report["bulk_ran_throughout"] = during["status"] == "running"
        report["bulk_done_during_interactive"] = during["progress"]["done"]
        print("interactive during bulk:", report["interactive_during_bulk"], "bulk still running:", during, flush=True)
        request(f"{web}/jobs/{second}/cancel", {})
    finally:
        for process in reversed(processes):
            process.close()
        server.close()

    # A 4,000-text sample of the job's texts: the same mix of lengths, a minute less of benchmark.
    torch_ceiling = measure_ceilings(texts[:4000], {"torch": default_model("torch")}, default_threads(), passes=3)["torch"]
    report["ceiling_texts_per_s"] = torch_ceiling.median
    report["bulk_over_ceiling"] = report["bulk_alone"]["texts_per_s"] / report["ceiling_texts_per_s"]
    report["interactive_p99_ratio"] = report["interactive_during_bulk"]["p99_ms"] / report["interactive_alone"]["p99_ms"]
    (args.out / "bulk.json").write_text(json.dumps(report, indent=1))
    headline = ("ceiling_texts_per_s", "bulk_over_ceiling", "interactive_p99_ratio", "bulk_share_under_load", "bulk_min_share")
    print(json.dumps({key: report[key] for key in headline}))


if __name__ == "__main__":
    main()
