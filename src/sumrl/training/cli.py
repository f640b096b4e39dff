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
    from sumrl.training.sft import train

    cfg = config_from_args(SFTConfig, args)
    summary = train(cfg)
    if not summary.get("is_main", True):  # one summary line per run, not per process
        return 0
    val = summary.get("val") or {}
    tr = summary.get("train") or {}
    parts = [f"steps {summary['steps']}"]
    if "train/loss" in tr:
        parts.append(f"train/loss {tr['train/loss']:.4f}")
    for k in ("val/loss", "val/rougeL", "val/pred_words", "val/ref_words"):
        if k in val:
            parts.append(f"{k} {val[k]:.4g}")
    if summary.get("tokens_per_s"):
        parts.append(f"{summary['tokens_per_s']:.0f} tokens/s (training steps of this run)")
    print("sft done: " + ", ".join(parts))
    return 0
