"""``sumrl rm train-factuality`` / ``sumrl rm train-coherence``: train the learned judges
(docs/rewards.md, "Learned judges"). Hooked into ``sumrl rm`` by :func:`register_judges`."""

from __future__ import annotations

import argparse
from typing import Any

from sumrl.config import add_dataclass_args, config_from_args


def cmd_train_factuality(args: argparse.Namespace) -> int:
    from sumrl.rewards.factuality import FactualityTrainConfig, train_factuality

    cfg = config_from_args(FactualityTrainConfig, args)
    m = train_factuality(cfg)
    print(f"phase-1 loss {m['phase1_loss_first25']:.4f} -> {m['phase1_loss_last25']:.4f}; calibration MAE on "
          f"training summaries {m['calibration_mae_train']:.3f}")
    print(f"saved factuality judge to {cfg.out}")
    return 0


def cmd_train_coherence(args: argparse.Namespace) -> int:
    from sumrl.rewards.coherence_model import CoherenceTrainConfig, train_coherence

    cfg = config_from_args(CoherenceTrainConfig, args)
    m = train_coherence(cfg)
    print(f"synthetic held-out ranking accuracy {m['synthetic_heldout_accuracy']:.3f}; SummEval training-pair "
          f"accuracy {m['summeval_train_pair_accuracy']:.3f}")
    print(f"saved coherence judge to {cfg.out}")
    return 0


def register_judges(sub: Any) -> None:
    from sumrl.rewards.coherence_model import CoherenceTrainConfig
    from sumrl.rewards.factuality import FactualityTrainConfig

    f = sub.add_parser("train-factuality", help="train the learned factual-consistency judge",
                       description="Train the factual-consistency judge: MiniLM late-interaction cross-encoder on "
                                   "synthetic and weakly human-labelled (sentence, source window) pairs, calibrated on "
                                   "FRANK/SummEval training documents (never the held-out ones).")
    add_dataclass_args(f, FactualityTrainConfig)
    f.set_defaults(func=cmd_train_factuality)
    c = sub.add_parser("train-coherence", help="train the learned coherence judge",
                       description="Train the coherence judge: rank summaries above their shuffled, sentence-dropped, "
                                   "repeated and spliced versions, then calibrate on SummEval coherence (training "
                                   "documents only).")
    add_dataclass_args(c, CoherenceTrainConfig)
    c.set_defaults(func=cmd_train_coherence)
