"""Small randomly initialised models, saved beside the bundled model's real tokenizer, for tests
of other architectures and of a model that breaks at inference time."""

from pathlib import Path

import torch
from transformers import AutoTokenizer, DistilBertConfig, DistilBertForSequenceClassification

from common.labels import ID2LABEL, LABEL2ID
from model_tools.train import packaged_minilm_dir


def save_with_tokenizer(model, folder: Path) -> Path:
    """Save a made-up model beside a real tokenizer."""
    model.save_pretrained(folder)
    # all-MiniLM-L6-v2 uses the same uncased WordPiece vocabulary as DistilBERT.
    AutoTokenizer.from_pretrained(packaged_minilm_dir()).save_pretrained(folder)
    return folder


def make_tiny_distilbert(folder: Path, **config) -> Path:
    """A tiny randomly initialised DistilBERT with the SST-2 label set, saved in ``folder``."""
    torch.manual_seed(0)
    config = {"vocab_size": 30522, **config}
    config = DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64, id2label=ID2LABEL, label2id=LABEL2ID, **config)
    return save_with_tokenizer(DistilBertForSequenceClassification(config), folder)
