"""Reading GLUE SST-2 TSV files (header ``sentence<TAB>label``)."""

import csv
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Example:
    """One labelled sentence; label 0 is negative, 1 is positive."""

    sentence: str
    label: int


def read_split(data_dir: str | Path, split: str) -> list[Example]:
    """Read ``<data_dir>/<split>.tsv`` into examples, in file order."""
    path = Path(data_dir) / f"{split}.tsv"
    if not path.is_file():
        raise FileNotFoundError(f"SST-2 file not found: {path} (pass the folder holding train.tsv and dev.tsv)")
    with path.open(encoding="utf-8", newline="") as handle:
        # SST-2 sentences contain quote characters that are data, not CSV quoting.
        reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [Example(row["sentence"].strip(), int(row["label"])) for row in reader]
