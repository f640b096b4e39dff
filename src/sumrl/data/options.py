"""The data options every command that reads a dataset shares (a command's config inherits them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from sumrl.config import opt
from sumrl.errors import ConfigError


@dataclass
class DataOptions:
    data: str = opt("scisummnet", "dataset: a built-in name (scisummnet, scisummnet:human, scitldr, qmsum) "
                                  "or a JSONL/CSV/Parquet file or Hugging Face save_to_disk folder")
    split: str = opt("test", "split to use: train, val, test or all")
    limit: Optional[int] = opt(None, "use only the first N examples of the split")
    id_field: str = opt("id", "name of the id field in the input file")
    document_field: str = opt("document", "name of the document field in the input file")
    summary_field: str = opt("summary", "name of the reference-summary field (a string or a list of strings)")
    query_field: str = opt("query", "name of the optional query field")
    skip_invalid: bool = opt(False, "skip invalid rows (and report how many) instead of failing")
    seed: int = opt(0, "random seed (data split of unsplit files, sampling, initialisation)")

    def __post_init__(self) -> None:
        # checked for every command at once (a `--limit -1` used to drop a row silently)
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be at least 1, got {self.limit}")
        if not 0 <= self.seed < 2**32:  # NumPy's and torch's seeding range
            raise ConfigError(f"--seed must be in [0, 2**32), got {self.seed}")
