"""`sumrl sft`: supervised fine-tuning (LoRA or full) on reference summaries."""

from __future__ import annotations

import argparse

from sumrl.config import add_dataclass_args, config_from_args
from sumrl.training.config import SFTConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sft", help="supervised fine-tuning on reference summaries (LoRA or full; packing, checkpoints, resume)",
        description="Fine-tune a model on (document, reference summary) pairs with the prompt `sumrl eval` uses; "
                    "the loss covers the summary tokens only. Writes the adapter/model to --out (use it with "
                    "--model OUT), plus sft_config.json, metrics.jsonl/csv, tensorboard/ and checkpoints/. "
                    "Multi-process: accelerate launch -m sumrl.cli sft ...")
    add_dataclass_args(p, SFTConfig)
    # The spelling: --full is --no-lora.
    p.add_argument("--full", dest="lora", action="store_false", default=argparse.SUPPRESS,
                   help="fine-tune all weights instead of a LoRA adapter (same as --no-lora)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sumrl.training.sft import summary_line, train

    summary = train(config_from_args(SFTConfig, args))
    if summary.get("is_main", True):  # one summary line per run, not per process
        print(summary_line(summary))
    return 0
