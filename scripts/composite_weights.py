"""Choose the weights of a composite RL reward on the validation split, and write the RL recipe.

    .venv/bin/python scripts/composite_weights.py --policy runs/rl_vs_sft/sft \
        --base-recipe recipes/rl_composite.yaml --out runs/rl_vs_sft/rl_composite.yaml

The rule, fixed before looking at any test paper: sample ``--samples`` summaries of each of
``--limit`` validation papers from the policy RL starts from (the SFT model), exactly as RL samples
them (same prompt budget, cap and temperature); score every summary with each reward term of the
base recipe on its own (weight 1); measure each term's **within-paper standard deviation** (pooled
over papers: the spread GRPO's group baselines act on); and set

    weight_i = prior_i / std_i

where ``prior_i`` is the term's ``weight`` in the base recipe (how much we want it to count: content
highest). After the division every term moves the group-normalised advantage by about its prior,
whatever its units (ROUGE is 0..1, the length term counts tokens, the judges have their own
scales). A term with no spread on validation keeps its prior (it cannot move advantages there).
The table of stds and weights is printed and written into the recipe's header, so the run records
how its weights were chosen.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path


def pooled_within_group_std(values: list[list[float]]) -> float:
    """sqrt(mean over groups of the population variance inside each group): the spread a group
    baseline leaves (the across-paper spread, which GRPO's baseline removes, is not counted)."""
    variances = []
    for g in values:
        if len(g) < 2:
            continue
        m = sum(g) / len(g)
        variances.append(sum((x - m) ** 2 for x in g) / len(g))
    return math.sqrt(sum(variances) / len(variances)) if variances else 0.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", required=True, help="the model RL starts from (e.g. the SFT adapter)")
    ap.add_argument("--base-recipe", required=True, help="RL recipe whose reward list gives the terms and priors")
    ap.add_argument("--out", required=True, help="the RL recipe to write, with the chosen weights")
    ap.add_argument("--split", default="val", help="held-out split the weights are chosen on (never test)")
    ap.add_argument("--limit", type=int, default=16, help="validation papers")
    ap.add_argument("--samples", type=int, default=4, help="summaries per paper")
    ap.add_argument("--max-prompt-tokens", type=int, default=None, help="default: the recipe's")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default: the recipe's")
    ap.add_argument("--seed", type=int, default=0, help="seed of the sampling and of the data split")
    args = ap.parse_args(argv)
    from sumrl.errors import SumrlError

    try:
        return _choose(args)
    except SumrlError as e:  # a bad recipe, model or data file: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


def _choose(args: argparse.Namespace) -> int:
    import torch
    import yaml

    from sumrl.config import build_config, load_recipe
    from sumrl.data import load_heldout
    from sumrl.generation.sampler import sample_groups
    from sumrl.models.loading import load_model
    from sumrl.rewards.base import RewardInput
    from sumrl.rewards.registry import build_reward
    from sumrl.rl.config import RLConfig
    from sumrl.rl.rollout import encode_prompt_ids
    from sumrl.utils.io import atomic_write_text

    raw = load_recipe(args.base_recipe)
    rc = build_config(RLConfig, raw, source=args.base_recipe)
    prompt_budget = args.max_prompt_tokens or rc.max_prompt_tokens
    cap = args.max_new_tokens or rc.max_new_tokens
    torch.manual_seed(args.seed)
    model, tok = load_model(args.policy)
    examples = load_heldout(rc.data, args.split, purpose="reward weights", limit=args.limit, seed=args.seed)
    prompts = [encode_prompt_ids(tok, ex.document, ex.query, max_prompt_tokens=prompt_budget) for ex in examples]
    stop = [tok.eos_token_id]
    print(f"sampling {args.samples} summaries of {len(examples)} {args.split} papers from {args.policy} "
          f"(prompt {prompt_budget} tokens, cap {cap}, temperature {rc.temperature})", file=sys.stderr)
    rows = sample_groups(model, prompts, group_size=args.samples, max_new_tokens=cap, temperature=rc.temperature,
                         stop_ids=stop, pad_id=tok.pad_token_id, merge_lora=True)
    finished = [bool(r) and r[-1] in stop for r in rows]
    ids = [r[:-1] if f else r for r, f in zip(rows, finished)]
    texts = [tok.decode(i, skip_special_tokens=True) for i in ids]
    rep = [ex for ex in examples for _ in range(args.samples)]
    inp = RewardInput(documents=[e.document for e in rep], summaries=texts, references=[e.references for e in rep],
                      queries=[e.query for e in rep], token_ids=ids, tokenizer=tok, finished=finished)

    entries = [dict(e) for e in raw["reward"]]
    table = []
    for e in entries:
        prior = float(e.get("weight", 1.0))
        term = build_reward([{**e, "weight": 1.0}])
        totals = term(inp).totals().tolist()
        groups = [totals[i:i + args.samples] for i in range(0, len(totals), args.samples)]
        std = pooled_within_group_std(groups)
        weight = prior / std if std > 1e-9 else prior
        e["weight"] = float(f"{weight:.4g}")
        table.append((e.get("label", e["name"]), prior, sum(totals) / len(totals), std, e["weight"]))

    lines = ["term        prior   mean      within-paper std   weight"]
    lines += [f"{n:11s} {p:5.2f}   {m:<9.4g} {s:<10.4g}         {w:.4g}" for n, p, m, s, w in table]
    mean_words = sum(len(t.split()) for t in texts) / len(texts)
    lines.append(f"({len(texts)} samples of {len(examples)} {args.split} papers from {args.policy}; mean "
                 f"{mean_words:.0f} words, {sum(finished)}/{len(finished)} ended with the end token)")
    print("\n".join(lines))
    recipe = {**raw, "reward": entries}
    header = ("# Written by scripts/composite_weights.py from " + args.base_recipe + ": weight = prior / within-paper\n"
              "# std of the term on the validation split (rule in the script's docstring).\n"
              + "".join(f"#   {line}\n" for line in lines))
    atomic_write_text(Path(args.out), header + yaml.safe_dump(recipe, sort_keys=False))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
