#!/usr/bin/env python
"""Is the `repair` class decidable from what the last-mile RM reads? A lexical baseline.

Run from the repository root:  python scripts/repair_overlap.py [--window 120] [--limit 30] [--seed 1]

For each of the first ``--limit`` ScisummNet test papers: the share of the reference's word types
(4+ letters, lower-cased) that occur in the document window the RM reads (the first ``--window``
SmolLM2 tokens of the document), against the same share for its `repair` negative (another paper's
reference, drawn exactly as `sumrl rm` draws held-out negatives: seed = training seed + 1). Prints
how often the reference overlaps more (ties count 1/2): a bound on how much of the RM's `repair`
error is for lack of information in its window rather than of training.
"""

from __future__ import annotations

import argparse
import re


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]{4,}", text.lower()))


def main() -> None:
    from sumrl.data import load_data
    from sumrl.models.loading import load_tokenizer
    from sumrl.rewards.negatives import make_negatives

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--window", type=int, default=120, help="document tokens the RM reads (rm_lastmile: 120)")
    ap.add_argument("--limit", type=int, default=30, help="test papers (rm_lastmile eval_limit: 30)")
    ap.add_argument("--seed", type=int, default=1, help="negative seed (sumrl rm uses its seed + 1 for held-out)")
    args = ap.parse_args()
    tok = load_tokenizer("default")
    test = load_data("scisummnet", "test", limit=args.limit)
    negs = make_negatives(test, ["repair"], seed=args.seed)["repair"]
    wins = 0.0
    for ex, neg in zip(test, negs):
        window = words(tok.decode(tok(ex.document, add_special_tokens=False)["input_ids"][:args.window]))
        share = lambda s: len(words(s) & window) / max(1, len(words(s)))  # noqa: E731
        a, b = share(ex.references[0]), share(neg)
        wins += 1.0 if a > b else 0.5 if a == b else 0.0
    print(f"window {args.window} tokens: the reference overlaps the window more than its repair negative in "
          f"{wins:g}/{len(test)} = {wins / len(test):.3f}")


if __name__ == "__main__":
    main()
