"""Markdown tables of one or more ``sumrl rm eval-rewards --out`` JSON files, merged (docs/rewards.md).

    .venv/bin/python scripts/agreement_tables.py runs/agreement-metrics.json runs/agreement-judges.json

Rows are taken in file order; a reward present in two files keeps its first occurrence (separately
for the pair table and the human-score tables). Useful to
add a new reward's rows to a table without rescoring every existing reward.
"""

from __future__ import annotations

import json
import sys


def main(paths: list[str]) -> int:
    from sumrl.rewards.agreement import format_table
    from sumrl.rewards.validation import format_human_tables

    table, human = [], {"frank": [], "summeval": []}
    seen_table: set[str] = set()
    seen_human: set[str] = set()
    for p in paths:
        with open(p, encoding="utf-8") as f:
            d = json.load(f)
        for t in d.get("table", []):
            if t["reward"] not in seen_table:
                table.append(t)
        seen_table |= {t["reward"] for t in d.get("table", [])}
        hs = d.get("human_scores") or {}
        for k in ("frank", "summeval"):
            human[k].extend(r for r in hs.get(k, []) if r["reward"] not in seen_human)
        seen_human |= {r["reward"] for r in hs.get("frank", [])}
    if table:
        print(format_table(table))
        print()
    if human["frank"] or human["summeval"]:
        print(format_human_tables(human))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
