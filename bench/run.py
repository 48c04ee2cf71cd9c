"""End-to-end benchmark: the service against the in-process ceiling and the naive design, in one run.

    python -m bench.run --data ../shared/data/sst2 [--duration 10s] [--out results]

It starts a private Redis (appendfsync everysec, as deployed), one worker and gunicorn on
loopback; runs k6 (loadtest/*.js) at each concurrency with 1 and then 8 texts per request,
uncached and cached; measures /health as the
trivial-endpoint yardstick; then runs the naive design (bench/naive_server.py) with the same k6
scripts and texts. The ceilings: every available backend alone on texts shaped like k6's, in the
worker's length-sorted batches, each in its own process (model_tools/ceilings.py), one pass of
each before the first row and after every row, so each row has passes on either side of it.
Results: <out>/results.md, results.json, throughput.png, p99.png.

On 2 cores the load generator competes with the service. --client-cpus pins k6 (taskset) and
GOMAXPROCS caps its threads; --service-cpus pins the service's processes.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import urllib.request
from pathlib import Path

import redis
from prometheus_client.parser import text_string_to_metric_families

from model import BUNDLED_MODEL_DIR
from model_tools import EXPORTED_ONNX_DIR, default_model
from model_tools.ceilings import Ceiling, CeilingSampler, available_backends, clearly_ahead, describe, tagged_texts
from model_tools.sst2 import read_split
from stack import REPO, RedisServer, child_pids, free_port, start_web, start_worker
from worker.thread_names import FORWARD_THREAD_NAME

K6 = shutil.which("k6") or str(Path(os.sys.executable).parent / "k6")


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Samples of a /metrics page keyed by (name, labels)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples, name: str, **labels) -> float:
    wanted = set(labels.items())
    return sum(value for (sample, sample_labels), value in samples.items() if sample == name and wanted <= set(sample_labels))


def run_k6(script: str, base_url: str, env: dict, summary: Path, client_prefix: list[str]) -> dict:
    """Run one k6 scenario and return its exported summary."""
    args = [*client_prefix, K6, "run", "--quiet", "--summary-export", str(summary)]
    for key, value in {"BASE_URL": base_url, **env}.items():
        args += ["-e", f"{key}={value}"]
    subprocess.run(
        [*args, str(REPO / "loadtest" / script)], check=False, capture_output=True, env={**os.environ, "GOMAXPROCS": "1"}
    )
    return json.loads(summary.read_text())


def k6_figures(summary: dict, texts_per_request: int) -> dict:
    metrics = summary["metrics"]
    duration = metrics["http_req_duration"]
    requests = metrics["http_reqs"]["rate"]
    checks = metrics.get("checks", {})
    return {
        "requests": metrics["http_reqs"]["count"],
        "requests_per_s": requests,
        "sentences_per_s": requests * texts_per_request,
        "p50_ms": duration["p(50)"],
        "p95_ms": duration["p(95)"],
        "p99_ms": duration["p(99)"],
        "errors": checks.get("fails", 0),
    }


CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
COMPONENTS = ("web", "worker_forward", "worker_other", "redis", "load_generator")


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds of each named thread group of a process (threads are named by the OS: /proc/PID/task/*/comm)."""
    seconds: dict[str, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return seconds
    for tid in tids:
        try:
            comm = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended between listing and reading
        # utime and stime: fields 14 and 15 of stat, 12 and 13 after the ")" that ends the name.
        seconds[comm] = seconds.get(comm, 0.0) + (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S
    return seconds


def process_tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its direct children (gunicorn's master and workers)."""
    return sum(sum(thread_cpu_seconds(each).values()) for each in [pid, *child_pids(pid)])


class CpuMeter:
    """CPU seconds per component over one load run: web, worker (forward-pass threads and the rest), Redis, k6."""

    def __init__(self, web_pid: int, worker_pid: int | None = None, redis_pid: int | None = None):
        self.web_pid, self.worker_pid, self.redis_pid = web_pid, worker_pid, redis_pid

    def read(self) -> dict[str, float]:
        worker = thread_cpu_seconds(self.worker_pid) if self.worker_pid else {}
        forward = worker.get(FORWARD_THREAD_NAME, 0.0)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)  # k6, once it has exited
        return {
            "web": process_tree_cpu_seconds(self.web_pid),
            "worker_forward": forward,
            "worker_other": sum(worker.values()) - forward,
            "redis": sum(thread_cpu_seconds(self.redis_pid).values()) if self.redis_pid else 0.0,
            "load_generator": children.ru_utime + children.ru_stime,
        }

    @staticmethod
    def per_1000_texts(before: dict[str, float], after: dict[str, float], texts: int) -> dict[str, float]:
        return {name: 1000 * (after[name] - before[name]) / texts if texts else 0.0 for name in COMPONENTS}


def plot(rows: list[dict], ceilings: dict[str, Ceiling], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for metric, ylabel, filename in (
        ("sentences_per_s", "sentences/s", "throughput.png"),
        ("p99_ms", "p99 latency (ms)", "p99.png"),
    ):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=(metric == "sentences_per_s"))
        for axis, texts in zip(axes, (1, 8)):
            for design in ("service uncached", "service cached", "naive"):
                points = sorted((r["concurrency"], r[metric]) for r in rows if r["design"] == design and r["texts"] == texts)
                if points:
                    axis.plot(*zip(*points), marker="o", label=design)
            if metric == "sentences_per_s":
                for (name, ceiling), style in zip(ceilings.items(), ("--", ":")):
                    axis.axhline(ceiling.median, linestyle=style, color="grey", label=f"ceiling, {name}")
            axis.set_xscale("log", base=2)
            axis.set_yscale("log")
            axis.set_xlabel("concurrent clients")
            axis.set_ylabel(ylabel)
            axis.set_title(f"{texts} text(s) per request")
            axis.grid(True, which="both", alpha=0.3)
            axis.legend()
        fig.tight_layout()
        fig.savefig(out / filename, dpi=110)
        plt.close(fig)


def ratios(rows: list[dict], best: Ceiling) -> list[str]:
    """The figures the service is held to: uncached against the best backend's ceiling and naive, cached against /health.

    Against the ceiling, a row is compared with the best backend's passes just before and after it.
    """
    by = {(r["design"], r["texts"], r["concurrency"]): r for r in rows}
    lines = []
    for (design, texts, clients), row in sorted(by.items(), key=lambda item: (item[0][1], item[0][2])):
        if design == "service uncached":
            naive = by.get(("naive", texts, clients))
            around = row["ceilings_around"][best.backend]
            line = (
                f"- uncached, {texts} text(s), {clients} client(s): {row['sentences_per_s'] / around:.2f}x the {best.backend}"
                f" ceiling around it ({around:.1f}; {row['sentences_per_s'] / best.median:.2f}x the run's median)"
            )
            if naive:
                line += f", {row['sentences_per_s'] / naive['sentences_per_s']:.2f}x naive"
                if clients == 1:
                    line += f", p50 {row['p50_ms'] - naive['p50_ms']:+.1f} ms against naive"
            lines.append(line)
        elif design == "service cached":
            health = by.get(("trivial /health", 0, clients))
            if health:
                lines.append(
                    f"- cached, {texts} text(s), {clients} client(s): {row['requests_per_s'] / health['requests_per_s']:.2f}x"
                    f" /health's requests/s, p99 {row['p99_ms'] / health['p99_ms']:.2f}x /health's"
                )
    return lines


def markdown(rows: list[dict], ceilings: dict[str, Ceiling], backend: str, settings: dict) -> str:
    best = max(ceilings.values(), key=lambda ceiling: ceiling.median)
    lines = [
        "Ceilings (the model alone, the worker's length-sorted batches; a pass of each backend before and after every row):",
        "",
        *(f"- {line}" for line in describe(ceilings, backend)),
        "",
        *ratios(rows, best),
        "",
        "| design | texts/req | clients | req/s | sentences/s | p50 ms | p95 ms | p99 ms | cache hits | mean batch | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        hit = "" if r.get("cache_hit_ratio") is None else f"{r['cache_hit_ratio']:.0%}"
        batch = "" if r.get("mean_batch") is None else f"{r['mean_batch']:.1f}"
        lines.append(
            f"| {r['design']} | {r['texts']} | {r['concurrency']} | {r['requests_per_s']:.1f} | {r['sentences_per_s']:.1f} |"
            f" {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {hit} | {batch} | {r['errors']} |"
        )
    lines += [
        "",
        "CPU seconds per 1,000 texts (worker forward: the batcher thread and torch's threads; tokenising included),"
        " and the share of the tokens the worker computed that were real text:",
        "",
        "| design | texts/req | clients | web | worker forward | worker other | Redis | load generator | real/computed tokens |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["texts"] and "cpu_s_per_1000_texts" in r:
            cpu = r["cpu_s_per_1000_texts"]
            ratio = "" if r.get("real_to_computed_tokens") is None else f"{r['real_to_computed_tokens']:.2f}"
            lines.append(
                f"| {r['design']} | {r['texts']} | {r['concurrency']} | "
                + " | ".join(f"{cpu[name]:.2f}" for name in COMPONENTS)
                + f" | {ratio} |"
            )
    lines += ["", "Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items())]
    return "\n".join(lines) + "\n"


class RowRecorder:
    """The run's rows in order, each bracketed by ceiling passes: one just before it and one just after.

    A shared machine's speed drifts over minutes; a row's ratio to the ceilings measured around it
    holds where a ratio to passes taken at another time would not.
    """

    def __init__(self, sampler: CeilingSampler):
        self.sampler = sampler
        self.rows: list[dict] = []
        self._before = sampler.sample()

    def add(self, row: dict) -> None:
        after = self.sampler.sample()
        row["ceilings_around"] = {backend: (self._before[backend] + rate) / 2 for backend, rate in after.items()}
        self._before = after
        self.rows.append(row)
        print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="folder holding SST-2 dev.tsv")
    parser.add_argument("--out", type=Path, default=REPO / "results")
    parser.add_argument("--duration", default="10s", help="k6 duration of each run")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--texts", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--backend", choices=("torch", "onnx"), default="torch")
    parser.add_argument(
        "--model", help="model folder; default: the bundled model, or its ONNX export (make export-onnx) for --backend onnx"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch/ORT threads for worker, naive server and ceilings")
    parser.add_argument("--ceiling-texts", type=int, default=500, help="texts in one ceiling pass")
    parser.add_argument("--web-processes", type=int, default=2)
    parser.add_argument("--client-cpus", default="", help="taskset CPU list for k6, e.g. 1")
    parser.add_argument("--service-cpus", default="", help="taskset CPU list for the service processes, e.g. 0")
    args = parser.parse_args()
    args.model = str(args.model or default_model(args.backend))
    args.out = args.out.resolve()  # k6 opens files relative to its script, so pass absolute paths
    args.out.mkdir(parents=True, exist_ok=True)
    sentences = [example.sentence for example in read_split(args.data, "dev")]
    backends = available_backends(EXPORTED_ONNX_DIR)
    backends[args.backend] = Path(args.model)
    # Loaded first, then idle in their own processes except for a pass before and after each row.
    with CeilingSampler(tagged_texts(sentences, args.ceiling_texts), backends, args.threads) as sampler:
        recorder = RowRecorder(sampler)
        measure(args, sentences, recorder)
        ceilings = sampler.ceilings()
    rows = recorder.rows
    ceiling_rate = ceilings[args.backend].median
    settings = {"backend": args.backend, "threads": args.threads, "web_processes": args.web_processes, "duration": args.duration,
                "client_cpus": args.client_cpus or "any", "service_cpus": args.service_cpus or "any"}  # fmt: skip
    results = {
        "ceiling_sentences_per_s": ceiling_rate,
        "ceilings": {name: ceiling.as_dict() for name, ceiling in ceilings.items()},
        "backend_ahead_in_every_pair": clearly_ahead(ceilings),
        "settings": settings,
        "rows": rows,
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    (args.out / "results.md").write_text(markdown(rows, ceilings, args.backend, settings))
    plot(rows, ceilings, args.out)
    print((args.out / "results.md").read_text())


def measure(args, sentences: list[str], recorder: RowRecorder) -> None:
    """The service's rows (uncached, cached, /health), then the naive design's."""
    sentences_file = args.out / "sentences.json"
    sentences_file.write_text(json.dumps(sentences))
    client_prefix = ["taskset", "-c", args.client_cpus] if args.client_cpus else []
    service_prefix = ["taskset", "-c", args.service_cpus] if args.service_cpus else []
    run_offsets = iter(range(1, 10_000))  # each uncached run gets texts no other run used
    common_env = {"SENTENCES": str(sentences_file), "DURATION": args.duration}

    # As deployed (k8s, compose, make run): fsync once a second. "always" (the tests' setting, so a
    # killed Redis loses nothing) fsyncs every write and added about 2.4 ms to a lone text's request.
    server = RedisServer(appendfsync="everysec")
    server.start()
    metrics_port = free_port()
    env = {
        "REDIS_URL": server.url,
        "MODEL": args.model,
        "MODEL_BACKEND": args.backend,
        "TORCH_THREADS": str(args.threads),
        "WORKER_METRICS_PORT": str(metrics_port),
        "PYTHONUNBUFFERED": "1",
    }
    web_port = free_port()
    processes = []
    try:
        worker = start_worker(env, redis.Redis.from_url(server.url, decode_responses=True), prefix=service_prefix)
        processes.append(worker)
        web_process = start_web(env, web_port, processes=args.web_processes, prefix=service_prefix)
        processes.append(web_process)
        meter = CpuMeter(web_process.pid, worker.pid, server.process.pid)
        web = f"http://127.0.0.1:{web_port}"
        worker_metrics = f"http://127.0.0.1:{metrics_port}/metrics"
        for texts in args.texts:
            for concurrency in args.concurrency:
                for design, script in (("service uncached", "uncached.js"), ("service cached", "cached.js")):
                    before_web, before_worker, before_cpu = scrape(f"{web}/metrics"), scrape(worker_metrics), meter.read()
                    label = f"{design.replace(' ', '-')}-{texts}-{concurrency}"
                    summary = run_k6(
                        script,
                        web,
                        {**common_env, "VUS": concurrency, "TEXTS_PER_REQUEST": texts, "RUN_OFFSET": next(run_offsets)},
                        args.out / f"k6-{label}.json",
                        client_prefix,
                    )
                    after_web, after_worker, after_cpu = scrape(f"{web}/metrics"), scrape(worker_metrics), meter.read()
                    tokens = {
                        name: total(after_worker, f"sentiment_worker_{name}_tokens_total")
                        - total(before_worker, f"sentiment_worker_{name}_tokens_total")
                        for name in ("real", "computed")
                    }
                    figures = k6_figures(summary, texts)
                    hits = total(after_web, "sentiment_cache_lookups_total", result="hit") - total(
                        before_web, "sentiment_cache_lookups_total", result="hit"
                    )
                    lookups = total(after_web, "sentiment_cache_lookups_total") - total(
                        before_web, "sentiment_cache_lookups_total"
                    )
                    batch_texts = total(after_worker, "sentiment_worker_batch_texts_sum") - total(
                        before_worker, "sentiment_worker_batch_texts_sum"
                    )
                    batches = total(after_worker, "sentiment_worker_batch_texts_count") - total(
                        before_worker, "sentiment_worker_batch_texts_count"
                    )
                    recorder.add(
                        {
                            "design": design,
                            "texts": texts,
                            "concurrency": concurrency,
                            **figures,
                            "cache_hit_ratio": hits / lookups if lookups else None,
                            "mean_batch": batch_texts / batches if batches else None,
                            "cpu_s_per_1000_texts": CpuMeter.per_1000_texts(before_cpu, after_cpu, figures["requests"] * texts),
                            "real_to_computed_tokens": tokens["real"] / tokens["computed"] if tokens["computed"] else None,
                        }
                    )
                if texts == args.texts[0]:
                    summary = run_k6(
                        "trivial.js",
                        web,
                        {**common_env, "VUS": concurrency},
                        args.out / f"k6-trivial-{concurrency}.json",
                        client_prefix,
                    )
                    recorder.add({"design": "trivial /health", "texts": 0, "concurrency": concurrency, **k6_figures(summary, 0)})
    finally:
        for process in processes:
            process.stop()
        server.close()

    naive_port = free_port()
    # The naive design is plain torch, whatever backend the service was given.
    naive_model = args.model if args.backend == "torch" else str(BUNDLED_MODEL_DIR)
    naive = start_web(
        {"MODEL": naive_model, "TORCH_THREADS": str(args.threads)},
        naive_port,
        prefix=service_prefix,
        app="bench.naive_server:create_app()",
        config="bench/naive_gunicorn_conf.py",
        allocator_env={},  # the plain server a user would write: glibc's malloc
    )
    naive_meter = CpuMeter(naive.pid)
    try:
        for texts in args.texts:
            for concurrency in args.concurrency:
                label = f"naive-{texts}-{concurrency}"
                before_cpu = naive_meter.read()
                summary = run_k6(
                    "uncached.js",
                    f"http://127.0.0.1:{naive_port}",
                    {**common_env, "VUS": concurrency, "TEXTS_PER_REQUEST": texts, "RUN_OFFSET": next(run_offsets)},
                    args.out / f"k6-{label}.json",
                    client_prefix,
                )
                figures = k6_figures(summary, texts)
                cpu = CpuMeter.per_1000_texts(before_cpu, naive_meter.read(), figures["requests"] * texts)
                recorder.add(
                    {"design": "naive", "texts": texts, "concurrency": concurrency, **figures, "cpu_s_per_1000_texts": cpu}
                )
    finally:
        naive.stop()


if __name__ == "__main__":
    main()
