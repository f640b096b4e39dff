"""``sumrl rm``: train reward models and measure how rewards agree with people.

* ``sumrl rm train --kind synthetic --data scisummnet --out DIR`` (also ``sumrl rm --kind ...``
  without ``train``, kept for scripts written against the first version of the command);
* ``sumrl rm train --kind preference --pairs pairs.jsonl --out DIR``;
* ``sumrl rm eval-rewards --pairs pairs.jsonl [--rewards rouge,...] [--rm DIR] --out table.json``.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from typing import Any

from sumrl.config import add_dataclass_args, config_from_args, opt
from sumrl.errors import ConfigError
from sumrl.training.config import RMTrainConfig

METRIC_REWARD_NAMES = "rouge,length,eos,repetition,copy,faithfulness,relevance,coverage,coherence"
JUDGE_REWARD_NAMES = "factuality,coherence_model"  # learned judges, shipped weights (docs/rewards.md)


@dataclass
class EvalRewardsConfig:
    pairs: list[str] = opt(None, "pairs.jsonl file(s) with human judgments", default_factory=list)
    rewards: str = opt(f"{METRIC_REWARD_NAMES},{JUDGE_REWARD_NAMES}", "comma-separated reward names (each evaluated "
                                                                      "on its own)")
    rm: list[str] = opt(None, "reward-model folder(s) to evaluate too", default_factory=list)
    split: str = opt("test", "which pairs: test (held-out documents), train, val or all")
    limit: int | None = opt(None, "at most N pairs per source (taken in file order)")
    test_fraction: float = opt(0.2, "held-out share of documents for pairs without meta.split")
    seed: int = opt(0, "seed of the document split for pairs without meta.split")
    out: str | None = opt(None, "write the table as JSON here")
    bootstrap: int = opt(1000, "bootstrap resamples (over documents) for the 95% CIs; 0 = no CIs")
    human_scores: bool = opt(False, "also score the held-out FRANK and SummEval summaries themselves: balanced "
                                    "accuracy on FRANK's factuality labels and Kendall tau with SummEval's expert "
                                    "scores per dimension (needs --shared-dir or ../shared/data)")
    shared_dir: str | None = opt(None, "folder with FRANK and SummEval for --human-scores")

    def validate(self) -> None:
        if not self.pairs and not self.human_scores:
            raise ConfigError("missing --pairs FILE [FILE ...] (or --human-scores)")
        if self.split not in ("test", "train", "val", "all"):
            raise ConfigError("--split must be test, train, val or all")


def cmd_train(args: argparse.Namespace) -> int:
    from sumrl.training.rm import train_preference_rm, train_synthetic_rm

    cfg = config_from_args(RMTrainConfig, args)
    metrics = train_synthetic_rm(cfg) if cfg.kind == "synthetic" else train_preference_rm(cfg)
    if not metrics.get("is_main", True):  # several processes: one report per run
        return 0
    if cfg.kind == "synthetic":
        print(f"held-out accuracy per negative class ({metrics['eval_split']} split: reference scored above its "
              f"negative; documents never trained on):")
        for c, v in metrics["heldout_accuracy_per_class"].items():
            acc = "n/a" if v["accuracy"] is None else f"{v['accuracy']:.3f}"
            margin = "" if v.get("mean_margin") is None else f"  mean margin {v['mean_margin']:+.3f}"
            print(f"  {c:16s} {acc:>6s}  (n={v['n']}){margin}")
        tn = metrics["token_normalization"]
        pe = metrics["paper_equivalent_length"]
        print(f"token values on val references: mean {tn['mean']:.4f}, std {tn['std']:.4f} (n={tn['n']}); the paper's "
              f"-2.5 length penalty in these units: length reward per_token_penalty {pe['per_token_penalty']:.2f}, "
              f"short_penalty {pe['short_penalty']:.2f}")
    else:
        acc = metrics["heldout_pairwise_accuracy"]
        print(f"held-out pairwise accuracy: {'n/a' if acc is None else f'{acc:.3f}'} (n={metrics['n_test_pairs']})")
    print(f"saved reward model to {cfg.out}")
    return 0


def cmd_eval_rewards(args: argparse.Namespace) -> int:
    from sumrl.data.pairs import pair_split, read_pairs
    from sumrl.rewards.agreement import agreement_table, format_table
    from sumrl.utils.io import write_json

    cfg = config_from_args(EvalRewardsConfig, args)
    rows: list[dict] = []
    if not cfg.pairs:  # --human-scores alone
        return _human_scores(cfg, _build_rewards(cfg))
    for path in cfg.pairs:
        rs = read_pairs(path)
        if cfg.split != "all":
            rs = [r for r in rs if pair_split(r, cfg.seed, cfg.test_fraction) == cfg.split]
        rows.extend(rs)
    if cfg.limit:
        kept, count = [], {}
        for r in rows:
            s = str(r.get("source"))
            if count.get(s, 0) < cfg.limit:
                kept.append(r)
                count[s] = count.get(s, 0) + 1
        rows = kept
    if not rows:
        raise ConfigError(f"no pairs in split {cfg.split!r} of {', '.join(cfg.pairs)}")
    rewards = _build_rewards(cfg)
    table = agreement_table(rows, rewards, progress=True, n_bootstrap=cfg.bootstrap, seed=cfg.seed)
    print(format_table(table))
    human = None
    if cfg.human_scores:
        human = _human_scores(cfg, rewards, write=False)
    if cfg.out:
        write_json(cfg.out, {"split": cfg.split, "pairs": cfg.pairs, "n_pairs": len(rows), "table": table,
                             **({"human_scores": human} if human is not None else {}), "config": asdict(cfg)})
        print(f"wrote {cfg.out}")
    return 0


def _build_rewards(cfg: EvalRewardsConfig) -> list[tuple[str, Any]]:
    from sumrl.rewards.registry import build_reward

    rewards: list[tuple[str, Any]] = []
    for name in [n.strip() for n in cfg.rewards.split(",") if n.strip()]:
        rewards.append((name, build_reward(name)))
    for d in cfg.rm:
        rewards.append((f"rm:{d}", build_reward([{"name": "rm", "path": d}])))
    return rewards


def _human_scores(cfg: EvalRewardsConfig, rewards: list[tuple[str, Any]], write: bool = True) -> Any:
    from sumrl.data.pairs import shared_data_dir
    from sumrl.rewards.validation import format_human_tables, human_score_tables
    from sumrl.utils.io import write_json

    tables = human_score_tables(str(shared_data_dir(cfg.shared_dir)), rewards, n_bootstrap=cfg.bootstrap,
                                seed=cfg.seed)
    print(format_human_tables(tables))
    if not write:
        return tables
    if cfg.out:
        write_json(cfg.out, {"human_scores": tables, "config": asdict(cfg)})
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
