"""`sumrl rl`: RL fine-tuning (PPO with a critic and per-token rewards, GRPO, RLOO, and the guided
PPO++ / AggreVaTeD / D2LOLS)."""

from __future__ import annotations

import argparse

from sumrl.config import add_dataclass_args, config_from_args
from sumrl.rl.config import RLConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "rl", help="RL fine-tuning: ppo, grpo, rloo and guided ppo++ / aggrevated / d2lols (LoRA, per-token rewards)",
        description="Fine-tune a policy with reinforcement learning on the documents of --data, rewarded by --reward "
                    "(e.g. rouge,length:0.5,rm:DIR). Writes the adapter/model to --out (use it with --model OUT), "
                    "plus rl_config.json, metrics.jsonl/csv, samples.jsonl, tensorboard/ and checkpoints/. "
                    "Recipes: recipes/rl_*.yaml. Details: docs/rl.md.")
    add_dataclass_args(p, RLConfig)
    # `reward` is a spec string on the command line but may be a list of mappings in a recipe,
    # so add_dataclass_args (which only knows scalar fields) leaves it to us.
    p.add_argument("--reward", "--rewards", dest="reward", default=argparse.SUPPRESS, metavar="REWARDS",
                   help="comma-separated rewards name[:weight], e.g. rouge,length:0.5,rm:DIR (default: 'rouge,length'; "
                        "a recipe may give a list of {name, weight, options})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sumrl.rl.trainer import summary_line, train

    summary = train(config_from_args(RLConfig, args))
    if summary.get("is_main", True):  # one summary line per run, not per process
        print(summary_line(summary))
    return 0
