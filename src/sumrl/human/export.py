"""Export human judgments as preference pairs (``pairs.jsonl``; see docs/architecture.md).

One row per judgment that prefers one summary: ``id`` (the document id; several rows may share
it, so splits should group by id), ``document``, ``query``, ``chosen``, ``rejected``, ``margin``,
``source`` ("human") and ``meta`` (rater, systems, the 1-7 ratings, judgment/pair ids, comment).

Ties are not exported: a tie says nothing about which summary to prefer, and a preference loss
needs a chosen and a rejected side. Each rater's judgment is its own row (no majority vote), so
disagreement between raters stays visible to the reward model as conflicting pairs.

Margin (``--margin ratings``): the mean over the four criteria of (chosen rating - rejected
rating), divided by 6 (the largest possible difference) and clipped below at 0, so it lies in
[0, 1]; 0 when the rater picked a summary overall but did not rate it higher. ``--margin none``
writes null.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from sumrl.config import opt
from sumrl.errors import ConfigError
from sumrl.human import db
from sumrl.human.stats import Judgment, load_judgments
from sumrl.utils.io import write_jsonl


@dataclass
class HumanExportConfig:
    """``sumrl human export``."""

    db: str = opt("", help="study database")
    out: str = opt("", help="output preference pairs (JSONL) for `sumrl rm --kind preference` / DPO")
    margin: str = opt("ratings", help="margin: from the 1-7 rating difference, or null",
                      choices=["ratings", "none"])

    def validate(self) -> None:
        if not self.db or not self.out:
            raise ConfigError("--db and --out are required")


def margin_from_ratings(chosen: dict[str, int], rejected: dict[str, int]) -> float | None:
    crits = [c for c in db.CRITERIA if c in chosen and c in rejected]
    if not crits:
        return None
    diff = sum(chosen[c] - rejected[c] for c in crits) / len(crits)
    return round(max(0.0, diff) / 6.0, 6)


def pair_row(j: Judgment, margin: str = "ratings") -> dict | None:
    if j.choice == "tie":
        return None
    win, lose = ("a", "b") if j.choice == "a" else ("b", "a")
    text = {"a": j.text_a, "b": j.text_b}
    system = {"a": j.system_a, "b": j.system_b}
    return {
        "id": j.doc_id,
        "document": j.document,
        "query": j.query,
        "chosen": text[win],
        "rejected": text[lose],
        "margin": margin_from_ratings(j.ratings[win], j.ratings[lose]) if margin == "ratings" else None,
        "source": "human",
        "meta": {
            "rater": j.rater,
            "systems": {"chosen": system[win], "rejected": system[lose]},
            "ratings": {"chosen": dict(j.ratings[win]), "rejected": dict(j.ratings[lose])},
            "judgment_id": j.judgment_id,
            "pair_id": j.pair_id,
            "comment": j.comment,
        },
    }


def export_pairs(conn: sqlite3.Connection, out: str | Path, margin: str = "ratings") -> dict:
    """Write the pairs file atomically; returns counts (exported, ties skipped)."""
    if margin not in ("ratings", "none"):
        raise ValueError(f"margin must be 'ratings' or 'none', got {margin!r}")
    judgments = load_judgments(conn)
    rows = [r for r in (pair_row(j, margin) for j in judgments) if r is not None]
    write_jsonl(out, rows)
    return {"judgments": len(judgments), "exported": len(rows), "ties_skipped": len(judgments) - len(rows)}


def export_study(cfg: HumanExportConfig) -> dict:
    """``sumrl human export``: the study ``cfg.db``'s judgments -> ``cfg.out``; returns the counts."""
    conn = db.open_study(cfg.db)
    try:
        return export_pairs(conn, cfg.out, margin=cfg.margin)
    finally:
        conn.close()
