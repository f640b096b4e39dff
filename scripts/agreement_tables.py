"""Markdown tables of one or more ``sumrl rm eval-rewards --out`` JSON files, merged (docs/rewards.md).

    .venv/bin/python scripts/agreement_tables.py runs/agreement-metrics.json runs/agreement-judges.json

Rows are taken in file order; a reward present in two files keeps its first occurrence. Useful to
add a new reward's rows to a table without rescoring every existing reward.
"""

from __future__ import annotations

import json
import sys


def main(paths: list[str]) -> int:
    from sumrl.rewards.agreement import format_table
    from sumrl.rewards.validation import format_human_tables

    table, human, seen = [], {"frank": [], "summeval": []}, set()
    for p in paths:
        with open(p, encoding="utf-8") as f:
            d = json.load(f)
        new = {t["reward"] for t in d.get("table", [])} | {r["reward"] for r in d.get("human_scores", {}).get("frank", [])}
        for t in d.get("table", []):
            if t["reward"] not in seen:
                table.append(t)
        for k in ("frank", "summeval"):
            for r in d.get("human_scores", {}).get(k, []):
                if r["reward"] not in seen:
                    human[k].append(r)
        seen |= new
    if table:
        print(format_table(table))
        print()
    if human["frank"] or human["summeval"]:
        print(format_human_tables(human))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
