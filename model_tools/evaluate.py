"""SST-2 dev accuracy and confusion matrix of any model folder or hub id.

python -m model_tools.evaluate --data ../shared/data/sst2 [--model model/sst2-minilm-l6] [--backend onnx]
"""

import time

from common.labels import ID2LABEL, NEGATIVE, POSITIVE
from model_tools import load_or_exit, model_parser
from model_tools.sst2 import read_split


def confusion_matrix(gold: list[str], predicted: list[str]) -> dict[tuple[str, str], int]:
    """Counts of (gold, predicted) label pairs."""
    counts = {(g, p): 0 for g in (NEGATIVE, POSITIVE) for p in (NEGATIVE, POSITIVE)}
    for pair in zip(gold, predicted):
        counts[pair] += 1
    return counts


def main() -> None:
    parser = model_parser(__doc__)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--limit", type=int, default=0, help="only the first N dev sentences")
    args = parser.parse_args()

    examples = read_split(args.data, "dev")
    if args.limit:
        examples = examples[: args.limit]
    model = load_or_exit(args.model, args.backend, args.device, args.threads)
    started = time.perf_counter()
    predictions = model.predict([example.sentence for example in examples])
    seconds = time.perf_counter() - started
    gold = [ID2LABEL[example.label] for example in examples]
    predicted = [prediction[0]["label"] for prediction in predictions]
    correct = sum(g == p for g, p in zip(gold, predicted))
    matrix = confusion_matrix(gold, predicted)

    print(f"model: {model.name} ({model.identity}, backend {args.backend}, device {model.device})")
    print(f"SST-2 dev sentences: {len(examples)}, scored in {seconds:.1f}s")
    print(f"accuracy: {correct / len(examples):.4f} ({correct}/{len(examples)})")
    print("confusion matrix (rows gold, columns predicted):")
    print(f"{'':>10} {NEGATIVE:>9} {POSITIVE:>9}")
    for g in (NEGATIVE, POSITIVE):
        print(f"{g:>10} {matrix[(g, NEGATIVE)]:>9} {matrix[(g, POSITIVE)]:>9}")


if __name__ == "__main__":
    main()
