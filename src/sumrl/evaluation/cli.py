"""`sumrl eval`: evaluate a model (or existing predictions) with every summary metric + 95% CIs.
Parsing only: the config and the job are :mod:`sumrl.evaluation.run`."""

from __future__ import annotations

import argparse

from sumrl.config import add_dataclass_args, config_from_args
from sumrl.evaluation.run import EvalConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate summaries: ROUGE, length-adjusted ROUGE, BLEU, similarity, "
                                    "length, copying, repetition, faithfulness (95%% CIs)",
                       description="Generate summaries for a dataset split with --model (or read --predictions) "
                                   "and score them. Writes predictions.jsonl, metrics.json and config.json.")
    add_dataclass_args(p, EvalConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from functools import partial

    from rich.console import Console

    from sumrl.evaluation.harness import format_table
    from sumrl.evaluation.run import evaluate

    cfg = config_from_args(EvalConfig, args)
    judges = None
    if cfg.judges:
        from sumrl.rewards.judge_metrics import judge_metrics

        judges = partial(judge_metrics, knowledge=cfg.knowledge)
    metrics, out = evaluate(cfg, judges=judges)

    Console().print(format_table({metrics["system"]: metrics["metrics"]}, title=f"sumrl eval (n={metrics['n']})"))
    print(f"outputs: {out}")
    return 0
