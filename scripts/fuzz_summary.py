"""Summarise a fuzz-suite log (SUMRL_FUZZ_LOG=FILE pytest tests/test_fuzz.py): outcomes by category.

    SUMRL_FUZZ_LOG=runs/fuzz.jsonl .venv/bin/python -m pytest -q tests/test_fuzz.py
    .venv/bin/python scripts/fuzz_summary.py runs/fuzz.jsonl

Prints a Markdown table (the one in docs/reliability.md): one row per category, one column per
outcome (one-line error, accepted, traceback, hang, exit 0 on bad input, ...).
"""

from __future__ import annotations

import collections
import sys


def main(path: str) -> None:
    from sumrl.utils.io import iter_jsonl_file

    rows = [r for _, r in iter_jsonl_file(path, tolerate_torn_tail=True)]  # the log of a suite still running
    last = {r["id"]: r for r in rows}  # a case logged twice (a rerun): its last outcome counts
    kinds = collections.Counter(r["outcome"] for r in last.values() if r["outcome"].startswith("traceback"))
    for r in last.values():  # one column for tracebacks; their exception types are listed below
        if r["outcome"].startswith("traceback"):
            r["outcome"] = "traceback"
    outcomes = sorted({r["outcome"] for r in last.values()}, key=lambda o: (o != "one-line error", o != "accepted", o))
    cats = collections.defaultdict(collections.Counter)
    for r in last.values():
        cats[r["category"]][r["outcome"]] += 1
    print("| category | cases | " + " | ".join(outcomes) + " |")
    print("|---|---:|" + "---:|" * len(outcomes))
    total = collections.Counter()
    for cat in sorted(cats):
        total.update(cats[cat])
        print(f"| {cat} | {sum(cats[cat].values())} | " + " | ".join(str(cats[cat][o]) for o in outcomes) + " |")
    print(f"| **all** | {sum(total.values())} | " + " | ".join(str(total[o]) for o in outcomes) + " |")
    if kinds:
        print("\ntracebacks: " + ", ".join(f"{k.split('(', 1)[-1].rstrip(')')} {n}" for k, n in kinds.most_common()))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/fuzz.jsonl")
