"""ONNX Runtime backend (fp32): the same tokenisation and post-processing, a faster forward pass on CPU.

The folder it loads is written by ``python -m model_tools.export_onnx``: model.onnx beside the
tokenizer and config of the model it was exported from.
"""

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime
from transformers import AutoConfig, AutoTokenizer

from model.core import ModelLoadError, TextClassifier, config_digest, pad_batch

ONNX_FILE = "model.onnx"
SPINNING_OPTION = "session.intra_op.allow_spinning"


class OnnxClassifier(TextClassifier):
    """A sequence classifier exported to ONNX, run by ONNX Runtime."""

    def __init__(self, session, tokenizer, config, name: str, device: str, file_digest: str):
        self.session = session
        digest = config_digest(config)
        digest.update(file_digest.encode())
        positions = getattr(config, "max_position_embeddings", None)
        super().__init__(tokenizer, config.id2label, positions, name, device, digest.hexdigest())

    @classmethod
    def load(cls, source: str | Path, device: str = "cpu", threads: int | None = None):
        """Load an exported folder; ``device`` cuda uses ONNX Runtime's CUDA provider when installed."""
        folder = Path(source)
        path = folder / ONNX_FILE
        if not path.is_file():
            raise ModelLoadError(f"no {ONNX_FILE} in {folder}; export one with python -m model_tools.export_onnx")
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        # Idle compute threads sleep instead of spinning: the worker shares its cores with Redis I/O
        # and Celery, and spinning took their CPU (docs/performance.md, "ONNX Runtime's threads").
        options.add_session_config_entry(SPINNING_OPTION, "0")
        available = onnxruntime.get_available_providers()
        wants_cuda = device in ("cuda", "auto") and "CUDAExecutionProvider" in available
        if device == "cuda" and not wants_cuda:
            raise ModelLoadError("DEVICE=cuda was asked for, but ONNX Runtime has no CUDA provider here")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if wants_cuda else ["CPUExecutionProvider"]
        try:
            session = onnxruntime.InferenceSession(str(path), options, providers=providers)
            tokenizer = AutoTokenizer.from_pretrained(folder)
            config = AutoConfig.from_pretrained(folder)
        except Exception as error:  # ORT raises its own exception types for a bad file
            raise ModelLoadError(f"cannot load ONNX model {folder}: {error}") from error
        file_digest = hashlib.sha256(path.read_bytes()).hexdigest()
        return cls(session, tokenizer, config, str(folder), "cuda" if wants_cuda else "cpu", file_digest)

    def infer(self, token_ids: Sequence[Sequence[int]]) -> list[list[float]]:
        input_ids, attention_mask = pad_batch(token_ids, self.pad_id)
        (logits,) = self.session.run(
            ["logits"],
            {"input_ids": np.asarray(input_ids, dtype=np.int64), "attention_mask": np.asarray(attention_mask, dtype=np.int64)},
        )
        logits = logits.astype(np.float64)
        exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return (exp / exp.sum(axis=-1, keepdims=True)).tolist()
