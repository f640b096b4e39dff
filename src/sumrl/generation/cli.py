"""`sumrl summarize`: summarise documents with any model, writing JSONL (parsing only; the job is
:func:`sumrl.generation.predict.summarize_to_file`)."""

from __future__ import annotations

import argparse

from sumrl.config import add_dataclass_args, config_from_args
from sumrl.generation.predict import SummarizeConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("summarize", help="summarize documents (long ones by truncation or map-reduce chunking)",
                       description="Summarize documents with a model. Long documents are truncated or summarized "
                                   "hierarchically (--strategy chunk). Reference summaries are not required.")
    add_dataclass_args(p, SummarizeConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sumrl.generation.predict import summarize_to_file

    cfg = config_from_args(SummarizeConfig, args)
    n = summarize_to_file(cfg)
    print(f"wrote {n} summaries to {cfg.out}")
    return 0
