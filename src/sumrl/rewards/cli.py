"""``sumrl rm``: train reward models and measure how rewards agree with people.

* ``sumrl rm train --kind synthetic --data scisummnet --out DIR`` (also ``sumrl rm --kind ...``
  without ``train``, kept for scripts written against the first version of the command);
* ``sumrl rm train --kind preference --pairs pairs.jsonl --out DIR``;
* ``sumrl rm eval-rewards --pairs pairs.jsonl [--rewards rouge,...] [--rm DIR] --out table.json``.
"""

from __future__ import annotations

import argparse
from typing import Any

from sumrl.config import add_dataclass_args, config_from_args
from sumrl.rewards.agreement import EvalRewardsConfig
from sumrl.training.config import RMTrainConfig


def cmd_train(args: argparse.Namespace) -> int:
    from sumrl.training.rm import format_rm_metrics, train_reward_model

    cfg = config_from_args(RMTrainConfig, args)
    metrics = train_reward_model(cfg)
    if not metrics.get("is_main", True):  # several processes: one report per run
        return 0
    print(format_rm_metrics(metrics))
    print(f"saved reward model to {cfg.out}")
    return 0


def cmd_eval_rewards(args: argparse.Namespace) -> int:
    from sumrl.rewards.agreement import eval_rewards, format_table
    from sumrl.rewards.validation import format_human_tables

    cfg = config_from_args(EvalRewardsConfig, args)
    result = eval_rewards(cfg)
    if "table" in result:
        print(format_table(result["table"]))
    if "human_scores" in result:
        print(format_human_tables(result["human_scores"]))
    if cfg.out:
        print(f"wrote {cfg.out}")
    return 0


def register(subparsers: Any) -> None:
    desc = ("Train reward models (synthetic negatives or human preference pairs) and measure how rewards agree with "
            "people. `sumrl rm --kind ...` is short for `sumrl rm train --kind ...`.")
    p = subparsers.add_parser("rm", help="train reward models; check rewards against human pairs", description=desc)
    add_dataclass_args(p, RMTrainConfig)
    p.set_defaults(func=cmd_train)
    sub = p.add_subparsers(dest="rm_command", metavar="SUBCOMMAND")
    t = sub.add_parser("train", help="train a reward model", description="Train a reward model (see docs/rewards.md).")
    add_dataclass_args(t, RMTrainConfig)
    t.set_defaults(func=cmd_train)
    e = sub.add_parser("eval-rewards", help="agreement of each reward with held-out human pairs",
                       description="Score chosen and rejected summaries of held-out human pairs with each reward; "
                                   "print how often each reward agrees with people.")
    add_dataclass_args(e, EvalRewardsConfig)
    e.set_defaults(func=cmd_eval_rewards)
    from sumrl.rewards.judge_cli import register_judges

    register_judges(sub)
