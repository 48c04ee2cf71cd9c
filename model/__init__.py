"""What the worker serves: the classifier core, one module per backend, and the bundled SST-2 model.

Importing this package or ``model.core`` imports neither torch nor transformers; a backend module does.
Training, evaluation, benchmarks and export live apart, in ``model_tools``.
"""

from pathlib import Path

BUNDLED_MODEL_DIR = Path(__file__).resolve().parent / "sst2-minilm-l6"
