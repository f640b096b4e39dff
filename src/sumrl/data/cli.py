"""``sumrl data``: inspect and check datasets (stats / validate / show).

Structure: :func:`register` creates the ``data`` parser and its sub-subparsers once
(:func:`add_data_parser`) and adds every subcommand (stats, validate, show, pairs). This module
only parses: the configs live next to the code they configure (``PairsConfig`` in
:mod:`sumrl.data.pairs`). Heavy imports (tokenizers, datasets) happen inside the command functions.
"""

from __future__ import annotations

import argparse
import json as _json
import sys
from dataclasses import dataclass
from typing import Any

from sumrl.config import add_dataclass_args, config_from_args, opt
from sumrl.errors import ConfigError

# --------------------------------------------------------------------------- configs


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


@dataclass
class DataStatsConfig(DataSourceConfig):
    model: str | None = opt(None, "also count lengths in this model's tokens and check its context length")
    context_length: int | None = opt(None, "context length to check against (default: the tokenizer's "
                                           "model_max_length)")
    max_input_tokens: int | None = opt(None, "count documents (+ query) longer than this many tokens (needs --model)")
    json: bool = opt(False, "print the statistics as JSON instead of a table")

    def validate(self) -> None:
        super().validate()
        if self.max_input_tokens is not None and self.max_input_tokens < 1:
            raise ConfigError("--max-input-tokens must be at least 1")
        if self.max_input_tokens is not None and not self.model:
            raise ConfigError("--max-input-tokens needs --model (token counts come from the model's tokenizer)")
        if self.context_length is not None and not self.model:
            raise ConfigError("--context-length needs --model")


@dataclass
class DataValidateConfig(DataSourceConfig):
    require_summary: bool = opt(True, "every row must have a reference summary (--no-require-summary for "
                                      "documents-only input to `sumrl summarize`)")


@dataclass
class DataShowConfig(DataSourceConfig):
    n: int = opt(3, "number of examples to print")
    max_chars: int = opt(300, "truncate document, query and references to this many characters")

    def validate(self) -> None:
        super().validate()
        if self.n < 1 or self.max_chars < 1:
            raise ConfigError("--n and --max-chars must be at least 1")


# --------------------------------------------------------------------------- parser wiring


def add_data_parser(subparsers: Any) -> Any:
    """Create ``sumrl data`` and return its sub-subparsers (for other modules' subcommands)."""
    parser = subparsers.add_parser("data", help="inspect, validate and convert datasets",
                                   description="Inspect, validate and convert datasets.")
    parser.set_defaults(func=lambda args: _no_subcommand(parser))
    return parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")


def _no_subcommand(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _add(sub: Any, name: str, cls: type, func: Any, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text)
    add_dataclass_args(p, cls)
    p.set_defaults(func=func)


def register(subparsers: Any) -> None:
    sub = add_data_parser(subparsers)
    _add(sub, "stats", DataStatsConfig, cmd_stats,
         "counts and length distributions (words; tokens with --model) and how many documents exceed the context")
    _add(sub, "validate", DataValidateConfig, cmd_validate,
         "check that a data file loads; prints OK with counts, or the one-line error")
    _add(sub, "show", DataShowConfig, cmd_show, "print a few examples, truncated")
    from sumrl.data.pairs import PairsConfig

    _add(sub, "pairs", PairsConfig, cmd_pairs,
         "convert human judgments (SummEval, FRANK, news pairwise, SQuALITY, sumrl human export) into preference "
         "pairs (rules: docs/rewards.md)")


# --------------------------------------------------------------------------- commands


def _load(cfg: DataSourceConfig, *, require_summary: bool) -> tuple[list, int, list[str]]:
    """Examples of the configured split plus (n_skipped, problems) of the file read."""
    from sumrl.data.loaders import load_data_report

    return load_data_report(cfg.data, cfg.split, fields=cfg.fields(), skip_invalid=cfg.skip_invalid,
                            require_summary=require_summary, seed=cfg.seed)


def _load_tokenizer(spec: str) -> Any:
    # Indirection so tests can supply a small tokenizer without a model download.
    from sumrl.models.loading import load_tokenizer

    return load_tokenizer(spec)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.1f}" if not v.is_integer() else f"{int(v):,}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def cmd_stats(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from sumrl.data.stats import compute_stats, context_length_of

    cfg = config_from_args(DataStatsConfig, args)
    examples, n_skipped, _ = _load(cfg, require_summary=False)
    tokenizer = _load_tokenizer(cfg.model) if cfg.model else None
    ctx = context_length_of(tokenizer, cfg.context_length) if tokenizer is not None else None
    if ctx is None and cfg.model:
        from sumrl.models.loading import context_length_of_spec

        ctx = context_length_of_spec(cfg.model)  # the tokenizer often sets no model_max_length
    stats = compute_stats(examples, tokenizer=tokenizer, context_length=ctx,
                          max_input_tokens=cfg.max_input_tokens)
    stats = {"data": cfg.data, "split": cfg.split, "model": cfg.model, "n_skipped": n_skipped, **stats}
    if cfg.json:
        print(_json.dumps(stats, indent=2))
        return 0
    console = Console(file=sys.stdout, highlight=False, markup=False, soft_wrap=False)
    splits = ", ".join(f"{k} {v:,}" for k, v in stats["splits"].items())
    console.print(f"{cfg.data} (split {cfg.split}): {stats['n_examples']:,} examples ({splits}); "
                  f"{stats['n_with_query']:,} with a query; {stats['n_references']:,} references"
                  + (f"; {n_skipped:,} invalid rows skipped" if n_skipped else ""))
    table = Table(show_header=True, header_style="bold")
    for col in ("length", "unit", "n", "mean", "median", "p90", "max"):
        table.add_column(col, justify="left" if col in ("length", "unit") else "right")
    for unit in ("words", "tokens"):
        for part in ("document", "summary", "query"):
            d = stats.get(unit, {}).get(part)
            if d:
                table.add_row(part, unit, *(_fmt(d[k]) for k in ("n", "mean", "median", "p90", "max")))
    console.print(table)
    if tokenizer is not None:
        n = stats["n_examples"]
        ctx = stats["context_length"]
        if ctx is None:
            console.print("context length: unknown (neither the model config nor the tokenizer declares it; pass --context-length)")
        else:
            console.print(f"inputs longer than the context ({ctx:,} tokens): {stats['n_exceed_context']:,} of {n:,}")
        if stats["max_input_tokens"] is not None:
            console.print(f"inputs longer than the budget ({stats['max_input_tokens']:,} tokens): "
                          f"{stats['n_exceed_budget']:,} of {n:,}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    cfg = config_from_args(DataValidateConfig, args)
    examples, n_skipped, problems = _load(cfg, require_summary=cfg.require_summary)
    splits = {}
    for ex in examples:
        splits[ex.meta["split"]] = splits.get(ex.meta["split"], 0) + 1
    split_text = ", ".join(f"{k} {v}" for k, v in sorted(splits.items()))
    print(f"OK {cfg.data}: {len(examples)} examples ({split_text}), "
          f"{sum(len(ex.references) for ex in examples)} references, "
          f"{sum(1 for ex in examples if ex.query)} with a query, {n_skipped} invalid rows skipped")
    for p in problems[:20]:
        print(f"skipped: {p}")
    if len(problems) > 20:
        print(f"... and {len(problems) - 20} more skipped rows")
    for w in ocr_warnings(cfg, examples):
        print(w)
    return 0


def ocr_warnings(cfg: DataSourceConfig, examples: list) -> list[str]:
    """One warning line per document whose text is OCR garbage (sumrl.data.quality), naming the
    file, line and field. A warning, not an error: the rule is calibrated on scientific papers,
    and the user decides whether such a document belongs in their data."""
    from sumrl.data.builtin import is_builtin
    from sumrl.data.quality import OCR_GARBAGE_MAX_SHARE, is_ocr_garbage, mangled_share

    bad = [ex for ex in examples if is_ocr_garbage(ex.document)]
    if not bad:
        return []
    lines: dict[str, int] = {}
    if not is_builtin(cfg.data):
        from pathlib import Path

        from sumrl.data.loaders import load_examples

        # line numbers of the rows (the split selection above drops them); only when there is
        # something to warn about, so a clean file is read once
        lines = load_examples(Path(cfg.data), fields=cfg.fields(), skip_invalid=True, require_summary=False,
                              split=cfg.split if Path(cfg.data).is_dir() else None).lines
    out = []
    for ex in bad:
        where = f"{cfg.data}, line {lines[ex.id]}" if ex.id in lines else f"{cfg.data}, id {ex.id}"
        out.append(f"warning: {where}, field '{cfg.document_field}': text looks like OCR garbage "
                   f"({mangled_share(ex.document):.0%} of its words are mangled, more than "
                   f"{OCR_GARBAGE_MAX_SHARE:.1%}; docs/data.md)")
    return out


def _cut(text: str, n: int) -> str:
    text = " ".join(text.split()) if len(text) > n else text
    return text if len(text) <= n else text[:n].rstrip() + f" ... [{len(text.split()):,} words]"


def cmd_show(args: argparse.Namespace) -> int:
    cfg = config_from_args(DataShowConfig, args)
    examples, _, _ = _load(cfg, require_summary=False)
    for ex in examples[:cfg.n]:
        print(f"== {ex.id} (split {ex.meta.get('split', '?')})")
        if ex.query:
            print(f"query: {_cut(ex.query, cfg.max_chars)}")
        print(f"document: {_cut(ex.document, cfg.max_chars)}")
        for i, ref in enumerate(ex.references, start=1):
            print(f"reference {i}: {_cut(ref, cfg.max_chars)}")
        print()
    print(f"({min(cfg.n, len(examples))} of {len(examples)} examples shown)")
    return 0


def cmd_pairs(args: argparse.Namespace) -> int:
    from sumrl.data.pairs import PairsConfig, convert
    from sumrl.errors import DataError
    from sumrl.utils.io import write_jsonl

    cfg = config_from_args(PairsConfig, args)
    rows = convert(cfg)
    if not rows:
        raise DataError("no pairs produced (every candidate pair was a tie or below --min-diff)", field="min_diff")
    write_jsonl(cfg.out, rows)
    counts: dict[str, list] = {}
    for r in rows:
        c = counts.setdefault(r["meta"]["split"], [0, set()])
        c[0] += 1
        c[1].add(r["id"])
    detail = ", ".join(f"{k} {v[0]} pairs / {len(v[1])} documents" for k, v in sorted(counts.items()))
    print(f"wrote {len(rows)} {cfg.source} pairs to {cfg.out} ({detail})")
    return 0
