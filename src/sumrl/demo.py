"""`sumrl demo`: the main job, end to end on the embedded default model and built-in data.

Stages (each one's output folder doubles as its "done" marker, so rerunning the demo skips
finished stages and resumes an interrupted one):

  1. zero-shot   evaluate the base model on held-out long documents (raw and cleaned outputs)

Later stages (SFT, reward model, RL, report) plug into ``STAGES`` as they land.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from sumrl.config import add_dataclass_args, config_from_args, opt
from sumrl.errors import ConfigError

PRESETS = {
    # CPU-sized: the documents are truncated to a prompt budget that this machine decodes quickly
    "quick": dict(n_test=8, max_input_tokens=768, max_new_tokens=96, batch_size=4),
    "default": dict(n_test=24, max_input_tokens=1024, max_new_tokens=128, batch_size=4),
    # GPU-sized: the whole 8k context and the full test split
    "full": dict(n_test=100, max_input_tokens=7936, max_new_tokens=256, batch_size=16),
}


@dataclass
class DemoConfig:
    preset: str = opt("default", "size preset: quick (<5 min on a laptop CPU), default (<20 min), full (GPU)",
                      choices=list(PRESETS))
    out: str = opt("runs/demo", "output folder; finished stages found there are not redone")
    model: str = opt("default", "policy model to start from")
    data: str = opt("scisummnet", "built-in dataset or file with long documents")
    n_test: int | None = opt(None, "number of held-out test documents (default: from the preset)")
    max_input_tokens: int | None = opt(None, "prompt token budget; longer documents are truncated (default: preset)")
    max_new_tokens: int | None = opt(None, "summary token cap (default: preset)")
    batch_size: int | None = opt(None, "generation batch size (default: preset)")
    seed: int = opt(0, "random seed")
    force: bool = opt(False, "redo every stage even if its output exists")

    def resolved(self) -> "DemoConfig":
        base = PRESETS[self.preset]
        vals = dataclasses.asdict(self)
        for k, v in base.items():
            if vals.get(k) is None:
                vals[k] = v
        return DemoConfig(**vals)

    def validate(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown preset '{self.preset}'")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the main job end to end on the default model and built-in data",
                       description="Zero-shot baseline on held-out long documents (more stages as they land). "
                                   "Finished stages are skipped when rerun.")
    add_dataclass_args(p, DemoConfig)
    p.set_defaults(func=run)


def _eval_stage(cfg: DemoConfig, name: str, model: str, out: Path, *, cleanup: bool = False,
                predictions: str | None = None, model_and_tokenizer=None) -> dict:
    from sumrl.evaluation.cli import EvalConfig, evaluate
    from sumrl.utils.io import read_json

    if (out / "metrics.json").exists() and not cfg.force:
        print(f"[{name}] done already: {out}")
        return read_json(out / "metrics.json")
    ec = EvalConfig(model=None if predictions else model, predictions=predictions, data=cfg.data, split="test",
                    limit=cfg.n_test, out=str(out), system=name, cleanup=cleanup,
                    max_input_tokens=cfg.max_input_tokens, max_new_tokens=cfg.max_new_tokens,
                    batch_size=cfg.batch_size, seed=cfg.seed)
    t = time.perf_counter()
    m, _ = evaluate(ec, model_and_tokenizer=model_and_tokenizer)
    print(f"[{name}] {time.perf_counter() - t:.0f}s -> {out}")
    return m


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from sumrl.evaluation.harness import format_table

    cfg = config_from_args(DemoConfig, args).resolved()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = {}
    results["base"] = _eval_stage(cfg, "base", cfg.model, out / "eval_base")
    results["base-cleaned"] = _eval_stage(cfg, "base-cleaned", cfg.model, out / "eval_base_cleaned", cleanup=True,
                                          predictions=str(out / "eval_base" / "predictions.jsonl"))
    Console().print(format_table({k: v["metrics"] for k, v in results.items()},
                                 keys=["rouge1_f", "rouge2_f", "rougeL_f", "la_rougeL", "bleu", "sim_ref",
                                       "pred_words", "extra_words_pos", "cutoff", "hallucination_rate"],
                                 title=f"sumrl demo ({cfg.preset}, n={cfg.n_test} test documents)"))
    print(f"total {time.perf_counter() - t0:.0f}s; outputs in {out.resolve()}")
    return 0
