"""The data options every command that reads a dataset shares (a command's config inherits them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

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


@dataclass
class DataSourceConfig:
    """Options shared by every ``sumrl data`` subcommand (where the data is and how to read it)."""

    data: str = opt("", "built-in dataset name (scisummnet, scisummnet:human, scitldr, qmsum) or a data file "
                        "(.jsonl, .jsonl.gz, .json, .csv, .parquet, Hugging Face save_to_disk folder)")
    split: str = opt("all", "train, val, test or all (files without a split column are split 80/10/10 by id hash)")
    seed: int = opt(0, "seed of the id-hash split for files without a split column")
    id_field: str = opt("id", "name of the id column/key (missing ids become the row number)")
    document_field: str = opt("document", "name of the document column/key")
    summary_field: str = opt("summary", "name of the reference summary column/key (string or list of strings)")
    query_field: str = opt("query", "name of the optional query column/key")
    skip_invalid: bool = opt(False, "skip (and count) invalid rows instead of stopping at the first")

    def validate(self) -> None:
        if not self.data:
            raise ConfigError("missing --data (a built-in dataset name or a path to a data file)")

    def fields(self) -> Any:
        from sumrl.data.loaders import FieldMap

        return FieldMap(id=self.id_field, document=self.document_field, summary=self.summary_field,
                        query=self.query_field)


def load_source(cfg: DataSourceConfig, *, require_summary: bool) -> tuple[list, int, list[str]]:
    """The examples of ``cfg``'s split, with the file's (n_skipped, problems) under --skip-invalid."""
    from sumrl.data.loaders import load_data_report

    return load_data_report(cfg.data, cfg.split, fields=cfg.fields(), skip_invalid=cfg.skip_invalid,
                            require_summary=require_summary, seed=cfg.seed)
