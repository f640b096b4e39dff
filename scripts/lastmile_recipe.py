"""Write the last-mile RL recipe for a given token-level reward model: its ``rm`` reward entry points at
that RM, and the length terms are the paper's, expressed in that RM's normalised units.

    .venv/bin/python scripts/lastmile_recipe.py --rm runs/rl_vs_sft/rm_lastmile \
        --base-recipe recipes/rl_lastmile.yaml --out runs/rl_vs_sft/rl_lastmile.yaml

Why a script: recipes/rl_lastmile.yaml's length terms are computed from runs/rm_lastmile's token
statistics (its comment: "recompute them for another RM"). The RM's per-token reward is normalised,
``(v_t - mean_tok) / std_tok``; the paper rewards a reference-like token with +1 and gives -2.5 per
token beyond the reference length. In normalised units that is

    per_token_penalty = (-2.5 + mean_tok) / std_tok      on each token beyond the reference length
    short_penalty     = -mean_tok / std_tok              per missing reference token (the +1 the
                                                         normalisation took away)

with ``mean_tok`` / ``std_tok`` = the RM's ``token_normalization`` (its config.json: every token of
the validation references). The rule is ``sumrl.rewards.reward_model.paper_length_penalties`` (the
one ``sumrl demo`` uses); this script only writes it into a recipe. Nothing else in the base recipe
changes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rm", required=True, help="the token-level RM folder (sumrl rm train --kind synthetic)")
    ap.add_argument("--base-recipe", required=True, help="the last-mile RL recipe to adapt (recipes/rl_lastmile.yaml)")
    ap.add_argument("--out", required=True, help="the RL recipe to write")
    args = ap.parse_args(argv)
    import yaml

    from sumrl.config import load_recipe
    from sumrl.errors import SumrlError
    from sumrl.rewards.reward_model import paper_length_penalties, read_reward_model_config
    from sumrl.utils.io import atomic_write_text

    try:
        raw = load_recipe(args.base_recipe)
        rm_config = Path(args.rm) / "config.json"
        stats = read_reward_model_config(args.rm).get("token_normalization")  # the one reader of an RM folder
        if not isinstance(stats, dict) or not {"mean", "std"} <= stats.keys():
            raise SumrlError(f"{rm_config}: field 'token_normalization' (mean, std) missing: not a token-level RM")
        pen = paper_length_penalties(stats)
        entries = [dict(e) for e in raw.get("reward", [])]
        names = [e.get("name") for e in entries]
        if names.count("rm") != 1 or names.count("length") != 1:
            raise SumrlError(f"{args.base_recipe}: field 'reward' needs exactly one 'rm' and one 'length' entry, got {names}")
        for e in entries:
            if e["name"] == "rm":
                e["path"] = str(args.rm)
            else:
                e.update({k: round(v, 4) for k, v in pen.items()})
    except SumrlError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    per_token, short = pen["per_token_penalty"], pen["short_penalty"]
    header = (f"# Written by scripts/lastmile_recipe.py from {args.base_recipe} for the RM {args.rm}: its token\n"
              f"# statistics mean {stats['mean']:.4f}, std {stats['std']:.4f} give per_token_penalty = (-2.5 + mean) / std\n"
              f"# = {per_token:.4f} and short_penalty = -mean / std = {short:.4f} (the paper's length rule).\n")
    atomic_write_text(Path(args.out), header + yaml.safe_dump({**raw, "reward": entries}, sort_keys=False))
    print(f"wrote {args.out} (per_token_penalty {per_token:.4f}, short_penalty {short:.4f})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
