"""``sumrl data``: inspect, check and convert datasets (stats / validate / show / pairs).

Parsing only: :func:`register` creates the ``data`` parser and its sub-subparsers once
(:func:`add_data_parser`) and adds every subcommand; each one's config and job live next to the
code they configure (:mod:`sumrl.data.stats`, :mod:`sumrl.data.inspect`, :mod:`sumrl.data.pairs`).
Heavy imports (tokenizers, datasets) happen inside the command functions.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from sumrl.config import add_dataclass_args, config_from_args
from sumrl.data.inspect import DataShowConfig, DataValidateConfig
from sumrl.data.pairs import PairsConfig
from sumrl.data.stats import DataStatsConfig

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
    _add(sub, "pairs", PairsConfig, cmd_pairs,
         "convert human judgments (SummEval, FRANK, news pairwise, SQuALITY, sumrl human export) into preference "
         "pairs (rules: docs/rewards.md)")


# --------------------------------------------------------------------------- commands


def cmd_stats(args: argparse.Namespace) -> int:
    from sumrl.data.stats import dataset_stats, print_stats

    cfg = config_from_args(DataStatsConfig, args)
    tokenizer, ctx = None, None
    if cfg.model:
        from sumrl.models.loading import tokenizer_and_context

        tokenizer, ctx = tokenizer_and_context(cfg.model, cfg.context_length)
    stats = dataset_stats(cfg, tokenizer=tokenizer, context_length=ctx)
    if cfg.json:
        print(json.dumps(stats, indent=2))
    else:
        print_stats(stats)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from sumrl.data.inspect import validation_report

    print("\n".join(validation_report(config_from_args(DataValidateConfig, args))))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from sumrl.data.inspect import show_lines

    print("\n".join(show_lines(config_from_args(DataShowConfig, args))))
    return 0


def cmd_pairs(args: argparse.Namespace) -> int:
    from sumrl.data.pairs import write_pairs

    cfg = config_from_args(PairsConfig, args)
    n, detail = write_pairs(cfg)
    print(f"wrote {n} {cfg.source} pairs to {cfg.out} ({detail})")
    return 0
