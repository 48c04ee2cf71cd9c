"""Offline tools around the served model: train, evaluate, benchmark, export to ONNX. In no image.

Each tool is a command (``python -m model_tools.<tool> --help``) that ends with a one-line reason,
not a traceback, when its model or a dependency is missing.
"""

import argparse
from pathlib import Path

from model import BUNDLED_MODEL_DIR
from model.core import ModelLoadError, TextClassifier, load_classifier

# Where `make export-onnx` (python -m model_tools.export_onnx) writes the bundled model's ONNX export.
EXPORTED_ONNX_DIR = Path(__file__).resolve().parent.parent / "build" / "onnx-sst2-minilm-l6"


def default_model(backend: str) -> Path:
    """The bundled model for torch; its ONNX export for onnx."""
    return EXPORTED_ONNX_DIR if backend == "onnx" else BUNDLED_MODEL_DIR


def model_parser(description: str) -> argparse.ArgumentParser:
    """The arguments every tool that scores SST-2 dev shares: data, model, backend and device."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="folder holding SST-2 dev.tsv")
    parser.add_argument(
        "--model", help="model folder or hub id; default: the bundled model, or its ONNX export (make export-onnx) for onnx"
    )
    parser.add_argument("--backend", choices=("torch", "onnx"), default="torch")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    return parser


def load_or_exit(source: str | Path | None, backend: str, device: str, threads: int | None) -> TextClassifier:
    """Load a classifier, or end the command with the one-line reason it could not be loaded."""
    try:
        return load_classifier(source or default_model(backend), backend, device, threads)
    except ModelLoadError as error:
        reason = str(error).strip().splitlines()[0]
        hint = " (make export-onnx writes the bundled model's export there)" if backend == "onnx" else ""
        raise SystemExit(f"error: {reason}{hint}") from None
