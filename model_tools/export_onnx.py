"""Export a sequence-classification model to ONNX (fp32) for MODEL_BACKEND=onnx.

python -m model_tools.export_onnx [--model model/sst2-minilm-l6] [--output build/onnx-sst2-minilm-l6]
"""

import argparse
import importlib.util
import os
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from model import BUNDLED_MODEL_DIR
from model.onnx_backend import ONNX_FILE
from model_tools import EXPORTED_ONNX_DIR


class LogitsOnly(torch.nn.Module):
    """Wrap the model so the exported graph takes ids and mask and returns logits alone."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def export(source: str, output: Path, opset: int = 18) -> Path:
    """Write model.onnx, the tokenizer and the config of ``source`` into ``output``."""
    output.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForSequenceClassification.from_pretrained(source, dtype=torch.float32).eval()
    sample = tokenizer(["a short one", "and a somewhat longer example sentence"], padding=True, return_tensors="pt")
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    path = output / ONNX_FILE
    torch.onnx.export(
        LogitsOnly(model),
        (sample["input_ids"], sample["attention_mask"]),
        str(path),
        input_names=["input_ids", "attention_mask"],
        output_names=["logits"],
        dynamic_shapes={"input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: sequence}},
        opset_version=opset,
        dynamo=True,
        external_data=False,
    )
    tokenizer.save_pretrained(output)
    model.config.save_pretrained(output)
    for item in output.iterdir():
        os.chmod(item, 0o644)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(BUNDLED_MODEL_DIR), help="model folder or hub id")
    parser.add_argument("--output", type=Path, default=EXPORTED_ONNX_DIR, help=f"folder to write (default {EXPORTED_ONNX_DIR})")
    args = parser.parse_args()
    if importlib.util.find_spec("onnxscript") is None:
        raise SystemExit(
            "error: exporting to ONNX needs onnxscript, a development dependency: run make export-onnx,"
            " or make install-dev and then this command with .venv/bin/python"
        )
    print(f"wrote {export(args.model, args.output)}")


if __name__ == "__main__":
    main()
