"""Model-level throughput: sentences/s and per-batch latency on SST-2 dev sentences.

    python -m model_tools.benchmark --data ../shared/data/sst2 [--batch-sizes 1 8 32 64] [--device cuda] [--backend onnx]
    python -m model_tools.benchmark --data ../shared/data/sst2 --ceilings [--passes 6] [--backends torch onnx]

Each batch size runs twice: length-sorted (as the worker batches) and in the file's order.
--ceilings compares every available backend instead (torch, and ONNX Runtime once exported):
passes alternate between backends, each in its own process with the worker's thread settings,
and each backend's figure is the median of its passes (docs/performance.md, "Choosing MODEL_BACKEND").
"""

import statistics
import time

from model.core import default_threads, length_sorted_batches
from model_tools import EXPORTED_ONNX_DIR, load_or_exit, model_parser
from model_tools.ceilings import CeilingError, available_backends, describe, measure_ceilings
from model_tools.sst2 import read_split


def run(model, token_ids: list[list[int]], batch_size: int, sort_by_length: bool) -> dict:
    """Score every sentence once in batches of ``batch_size``; return throughput and latency figures."""
    if sort_by_length:
        # Batches of exactly batch_size in length order, whatever the backend: cut by count alone.
        batches = length_sorted_batches([len(ids) for ids in token_ids], batch_size, max_tokens=10**9, padded=False)
    else:
        batches = [list(range(i, min(i + batch_size, len(token_ids)))) for i in range(0, len(token_ids), batch_size)]
    model.predict_encoded([token_ids[i] for i in batches[len(batches) // 2]])  # warm-up
    latencies = []
    started = time.perf_counter()
    for batch in batches:
        batch_started = time.perf_counter()
        model.predict_encoded([token_ids[i] for i in batch])
        latencies.append(time.perf_counter() - batch_started)
    seconds = time.perf_counter() - started
    latencies.sort()
    # Padding the model really computes: none when it runs packed.
    computed = sum(model.computed_tokens([len(token_ids[i]) for i in batch]) for batch in batches)
    real = sum(len(ids) for ids in token_ids)
    return {
        "sentences_per_s": len(token_ids) / seconds,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "padding": 1 - real / computed,
    }


def main() -> None:
    parser = model_parser(__doc__)
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--repeat", type=int, default=1, help="score the dev set this many times per setting")
    parser.add_argument("--ceilings", action="store_true", help="compare every available backend, passes interleaved")
    parser.add_argument("--passes", type=int, default=6, help="with --ceilings: passes per backend")
    parser.add_argument(
        "--backends", nargs="+", choices=("torch", "onnx"), help="with --ceilings: these only (default: every available one)"
    )
    args = parser.parse_args()
    if args.ceilings:
        compare_backends(args)
        return

    model = load_or_exit(args.model, args.backend, args.device, args.threads)
    sentences = [example.sentence for example in read_split(args.data, "dev")] * args.repeat
    token_ids = model.encode(sentences)
    print(
        f"model {model.identity}, backend {args.backend}, device {model.device},"
        f" threads {args.threads}, {len(sentences)} sentences"
    )
    print(f"{'batch':>5} {'order':>7} {'sent/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'padding':>8}")
    for batch_size in args.batch_sizes:
        for sort_by_length in (True, False):
            figures = run(model, token_ids, batch_size, sort_by_length)
            order = "sorted" if sort_by_length else "given"
            print(
                f"{batch_size:>5} {order:>7} {figures['sentences_per_s']:>8.1f} {figures['p50_ms']:>8.1f}"
                f" {figures['p99_ms']:>8.1f} {figures['padding']:>7.0%}",
                flush=True,
            )


def compare_backends(args) -> None:
    """Print each available backend's ceiling on the dev sentences, passes interleaved."""
    sentences = [example.sentence for example in read_split(args.data, "dev")] * args.repeat
    backends = available_backends(EXPORTED_ONNX_DIR)
    if args.model:
        backends[args.backend] = args.model
    if args.backends:
        missing = set(args.backends) - set(backends)
        if missing:
            raise SystemExit(
                f"error: not available here: {', '.join(sorted(missing))} (onnx needs onnxruntime and make export-onnx)"
            )
        backends = {name: backends[name] for name in args.backends}
    print(f"{len(sentences)} sentences, threads {args.threads}, backends {', '.join(backends)}", flush=True)
    try:
        ceilings = measure_ceilings(sentences, backends, args.threads, args.passes)
    except CeilingError as error:
        raise SystemExit(f"error: {error}") from None
    print("\n".join(describe(ceilings)))


if __name__ == "__main__":
    main()
