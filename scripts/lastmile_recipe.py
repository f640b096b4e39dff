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

with ``mean_tok`` / ``std_tok`` = the RM's ``token_normalization`` in its metrics.json (every token of
the validation references). Nothing else in the base recipe changes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PAPER_BEYOND_REFERENCE = -2.5  # the paper's reward per token beyond the reference length
PAPER_REFERENCE_TOKEN = 1.0    # ... and per reference-like token


def length_terms(mean_tok: float, std_tok: float) -> tuple[float, float]:
    """(per_token_penalty, short_penalty) of the paper's length rule in the RM's normalised units."""
    if not std_tok > 0:
        raise ValueError(f"token std must be positive, got {std_tok}")
    return (PAPER_BEYOND_REFERENCE + mean_tok) / std_tok, -PAPER_REFERENCE_TOKEN * mean_tok / std_tok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rm", required=True, help="the token-level RM folder (sumrl rm train --kind synthetic)")
    ap.add_argument("--base-recipe", required=True, help="the last-mile RL recipe to adapt (recipes/rl_lastmile.yaml)")
    ap.add_argument("--out", required=True, help="the RL recipe to write")
    args = ap.parse_args(argv)
    import yaml

    from sumrl.config import load_recipe
    from sumrl.errors import SumrlError
    from sumrl.utils.io import atomic_write_text, read_json_file

    try:
        raw = load_recipe(args.base_recipe)
        metrics_path = Path(args.rm) / "metrics.json"
        if not metrics_path.exists():
            raise SumrlError(f"{metrics_path}: no such file (train the RM first: sumrl rm train --out {args.rm})")
        metrics = read_json_file(metrics_path)  # sumrl's strict reader: a bad file is one DataError line
        stats = metrics.get("token_normalization") if isinstance(metrics, dict) else None
        if not isinstance(stats, dict) or not {"mean", "std"} <= stats.keys():
            raise SumrlError(f"{metrics_path}: field 'token_normalization' (mean, std) missing: not a token-level RM")
        per_token, short = length_terms(float(stats["mean"]), float(stats["std"]))
        entries = [dict(e) for e in raw.get("reward", [])]
        names = [e.get("name") for e in entries]
        if names.count("rm") != 1 or names.count("length") != 1:
            raise SumrlError(f"{args.base_recipe}: field 'reward' needs exactly one 'rm' and one 'length' entry, got {names}")
        for e in entries:
            if e["name"] == "rm":
                e["path"] = str(args.rm)
            else:
                e["per_token_penalty"], e["short_penalty"] = round(per_token, 4), round(short, 4)
    except (SumrlError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    header = (f"# Written by scripts/lastmile_recipe.py from {args.base_recipe} for the RM {args.rm}: its token\n"
              f"# statistics mean {stats['mean']:.4f}, std {stats['std']:.4f} give per_token_penalty = (-2.5 + mean) / std\n"
              f"# = {per_token:.4f} and short_penalty = -mean / std = {short:.4f} (the paper's length rule).\n")
    atomic_write_text(Path(args.out), header + yaml.safe_dump({**raw, "reward": entries}, sort_keys=False))
    print(f"wrote {args.out} (per_token_penalty {per_token:.4f}, short_penalty {short:.4f})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
