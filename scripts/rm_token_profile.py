#!/usr/bin/env python
"""Where along a reference summary a reward model's per-token reward lands.

Run from the repository root:  python scripts/rm_token_profile.py RM_DIR [--limit 16]

Scores the first ``--limit`` ScisummNet val references (the ones `sumrl rm` takes its
normalisation statistics from) and prints the mean normalised token reward
``(v_t - mean_tok) / std_tok`` of each quarter of the summary, averaged over summaries. The
per-token reward removes one global mean; a trend along the summary is what is left of position.
"""

from __future__ import annotations

import argparse


def main() -> None:
    from sumrl.data import load_data
    from sumrl.rewards.reward_model import load_reward_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("rm", help="reward-model folder written by `sumrl rm`")
    ap.add_argument("--limit", type=int, default=16, help="val references (rm_lastmile norm_limit: 16)")
    args = ap.parse_args()
    rm = load_reward_model(args.rm)
    tn = rm.config["token_normalization"]
    val = load_data("scisummnet", "val", limit=args.limit)
    vals = rm.model.token_values([e.document for e in val], [e.references[0] for e in val])
    quarters: list[list[float]] = [[], [], [], []]
    for v in vals:
        r = (v - tn["mean"]) / tn["std"]
        for k in range(4):
            part = r[k * len(r) // 4:(k + 1) * len(r) // 4]
            if part.numel():
                quarters[k].append(part.mean().item())
    print(f"mean normalised token reward by quarter of the summary ({len(vals)} val references): "
          + ", ".join(f"{sum(q) / len(q):+.2f}" for q in quarters))


if __name__ == "__main__":
    main()
