"""Model layer: the bundled SST-2 classifier, its trainer, evaluation and benchmark.

Importing this package does not import torch; ``model.inference`` does.
"""

from pathlib import Path

BUNDLED_MODEL_DIR = Path(__file__).resolve().parent / "sst2-minilm-l6"
