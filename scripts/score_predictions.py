"""Score `sumrl eval` predictions with an RL recipe's reward: did RL raise the reward it was trained on,
on held-out documents and with greedy decoding?

    .venv/bin/python scripts/score_predictions.py --recipe recipes/rl_ppo.yaml \
        runs/results/eval_base runs/results/eval_ppo ...

The per-step training reward (`objective/reward` in metrics.jsonl) mixes a few sampled prompts per
step, whose reference lengths differ a lot, so its trend over a short run is mostly noise. This
scores one fixed set of documents instead: for each eval folder, every prediction gets the recipe's
composite reward (sequence score + per-token rewards, the summary re-tokenised with the policy's
tokenizer) plus the recipe's `no_eos_penalty` when the summary was cut off; printed as the mean with a
95% bootstrap CI, the paired difference from the FIRST folder (the "before" system; documents paired
by id) with its CI and p-value, and the mean of each component, as a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="sumrl eval output folders (predictions.jsonl)")
    ap.add_argument("--recipe", required=True, help="RL recipe whose `reward` and `no_eos_penalty` are used")
    ap.add_argument("--tokenizer", default="default", help="model whose tokenizer counts summary tokens")
    args = ap.parse_args(argv)

    import torch

    from sumrl.config import build_config, load_recipe
    from sumrl.data.formats import read_predictions
    from sumrl.evaluation.bootstrap import bootstrap_ci, paired_bootstrap
    from sumrl.models.loading import load_tokenizer
    from sumrl.rewards.base import RewardInput
    from sumrl.rewards.registry import build_reward
    from sumrl.rl.config import RLConfig

    rc = build_config(RLConfig, load_recipe(args.recipe), source=args.recipe)  # the recipe as `sumrl rl` reads it
    reward = build_reward(rc.reward)
    no_eos = float(rc.no_eos_penalty)
    tok = load_tokenizer(args.tokenizer)
    print(f"reward of {args.recipe}: {rc.reward}, no_eos_penalty {no_eos}\n")
    header, first = None, None
    for folder in map(Path, args.runs):
        rows = read_predictions(folder)
        summaries = [r["prediction"] for r in rows]
        ids = [tok(s, add_special_tokens=False)["input_ids"] for s in summaries]
        inp = RewardInput(documents=[r["document"] for r in rows],
                          summaries=[tok.decode(i, skip_special_tokens=True) for i in ids],
                          references=[r["references"] for r in rows], queries=[r.get("query") for r in rows],
                          token_ids=ids, tokenizer=tok, finished=[bool(r.get("finished", True)) for r in rows])
        out = reward(inp)
        finished = torch.tensor([float(f) for f in inp.finished])
        total = out.totals() + no_eos * (1.0 - finished)
        comps = {k.split("/", 1)[1]: v for k, v in out.components.items() if k != "rewards/total"}
        if header is None:
            header = list(comps)
            print("| system | n | reward (mean [95% CI]) | minus the first system (paired) | "
                  + " | ".join(header) + " | cut off |")
            print("|---|---|---|---|" + "---|" * len(header) + "---|")
        ci = bootstrap_ci(total.tolist(), seed=0)
        system = rows[0].get("system", folder.name) if rows else folder.name
        by_id = {str(r["id"]): float(t) for r, t in zip(rows, total)}
        if first is None:
            first, diff = by_id, "-"
        else:
            common = [i for i in by_id if i in first]
            d = paired_bootstrap([by_id[i] for i in common], [first[i] for i in common], seed=0)
            diff = f"{d['delta']:+.2f} [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}] p={d['p_value']:.2f} (n={len(common)})"
        cells = " | ".join(f"{float(comps[k].float().mean()):.3f}" if k in comps else "-" for k in header)
        print(f"| {system} | {len(rows)} | {ci['mean']:.2f} [{ci['ci_low']:.2f}, {ci['ci_high']:.2f}] | {diff} | {cells} | "
              f"{float(1 - finished.mean()):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
