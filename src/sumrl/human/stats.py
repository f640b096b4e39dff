"""Statistics of a study: counts, win rates with Wilson intervals, inter-rater agreement.

* Win rate of a system = (wins + 0.5 * ties) / comparisons, with a Wilson score interval
  (well-behaved for small n and rates near 0 or 1, unlike the normal approximation).
* Cohen's kappa on the overall choice ("a", "b", "tie", in the pair's canonical orientation,
  so a rater's left/right randomisation does not matter) for each pair of raters, over the
  pairs both judged.
* Krippendorff's alpha over all raters: nominal for the overall choice; ordinal and interval
  for each 1-7 criterion, where a unit is one summary within one pair.
"""

from __future__ import annotations

import itertools
import math
import sqlite3
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Hashable, Iterable, Sequence

from sumrl.config import opt
from sumrl.errors import ConfigError
from sumrl.human import db


@dataclass
class HumanStatsConfig:
    """``sumrl human stats``."""

    db: str = opt("", help="study database")
    json: str | None = opt(None, help="also write the statistics to this JSON file")

    def validate(self) -> None:
        if not self.db:
            raise ConfigError("--db is required")


@dataclass
class Judgment:
    judgment_id: int
    rater: str
    pair_id: int
    doc_id: str
    document: str
    query: str | None
    system_a: str
    system_b: str
    text_a: str
    text_b: str
    summary_a: int  # the database id of summary a (its ratings are keyed by summary id)
    choice: str  # "a", "b" or "tie"
    comment: str
    ratings: dict[str, dict[str, int]] = field(default_factory=dict)  # "a"/"b" -> criterion -> 1..7


def load_judgments(conn: sqlite3.Connection) -> list[Judgment]:
    out: dict[int, Judgment] = {}
    for r in conn.execute(
            "SELECT j.judgment_id, j.choice, j.comment, r.name AS rater, p.pair_id, d.id AS doc_id, d.document, "
            "d.query, sa.system AS system_a, sb.system AS system_b, sa.text AS text_a, sb.text AS text_b, "
            "sa.summary_id AS summary_a "
            "FROM judgments j JOIN assignments a ON a.assignment_id = j.assignment_id "
            "JOIN raters r ON r.rater_id = a.rater_id JOIN pairs p ON p.pair_id = a.pair_id "
            "JOIN documents d ON d.doc_key = p.doc_key "
            "JOIN summaries sa ON sa.summary_id = p.summary_a JOIN summaries sb ON sb.summary_id = p.summary_b "
            "ORDER BY j.judgment_id"):
        out[r["judgment_id"]] = Judgment(
            r["judgment_id"], r["rater"], r["pair_id"], r["doc_id"], r["document"], r["query"], r["system_a"],
            r["system_b"], r["text_a"], r["text_b"], r["summary_a"], r["choice"], r["comment"],
            {"a": {}, "b": {}})
    for r in conn.execute("SELECT judgment_id, summary_id, criterion, value FROM ratings"):
        j = out[r["judgment_id"]]
        j.ratings["a" if r["summary_id"] == j.summary_a else "b"][r["criterion"]] = r["value"]
    return list(out.values())


def wilson_interval(successes: float, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a proportion (95% by default). ``successes`` may be fractional
    (ties count one half)."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, center - half), min(1.0, center + half))


def win_rates(judgments: Iterable[Judgment]) -> dict[str, dict]:
    tally: dict[str, Counter] = defaultdict(Counter)
    for j in judgments:
        if j.choice == "tie":
            tally[j.system_a]["ties"] += 1
            tally[j.system_b]["ties"] += 1
        else:
            winner, loser = (j.system_a, j.system_b) if j.choice == "a" else (j.system_b, j.system_a)
            tally[winner]["wins"] += 1
            tally[loser]["losses"] += 1
    out = {}
    for system in sorted(tally):
        t = tally[system]
        n = t["wins"] + t["losses"] + t["ties"]
        score = t["wins"] + 0.5 * t["ties"]
        lo, hi = wilson_interval(score, n)
        out[system] = {"wins": t["wins"], "losses": t["losses"], "ties": t["ties"], "n": n,
                       "win_rate": score / n, "ci_low": lo, "ci_high": hi}
    return out


def head_to_head(judgments: Iterable[Judgment]) -> list[dict]:
    tally: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for j in judgments:
        tally[(j.system_a, j.system_b)][j.choice] += 1
    return [{"system_a": a, "system_b": b, "a_wins": c["a"], "b_wins": c["b"], "ties": c["tie"]}
            for (a, b), c in sorted(tally.items())]


def mean_ratings(judgments: Iterable[Judgment]) -> dict[str, dict[str, dict]]:
    vals: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for j in judgments:
        for side, system in (("a", j.system_a), ("b", j.system_b)):
            for crit, v in j.ratings[side].items():
                vals[system][crit].append(v)
    out: dict[str, dict[str, dict]] = {}
    for system in sorted(vals):
        out[system] = {}
        for crit in db.CRITERIA:
            xs = vals[system].get(crit, [])
            mean = sum(xs) / len(xs) if xs else float("nan")
            sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else float("nan")
            out[system][crit] = {"mean": mean, "sd": sd, "n": len(xs)}
    return out


def cohen_kappa(labels_1: Sequence[Hashable], labels_2: Sequence[Hashable]) -> float | None:
    """Cohen's kappa of two raters' labels of the same items; None when undefined (no items, or
    chance agreement is 1 because both always used one and the same label)."""
    if len(labels_1) != len(labels_2):
        raise ValueError("both raters must label the same items")
    n = len(labels_1)
    if n == 0:
        return None
    p_o = sum(a == b for a, b in zip(labels_1, labels_2)) / n
    c1, c2 = Counter(labels_1), Counter(labels_2)
    p_e = sum(c1[k] * c2[k] for k in set(c1) | set(c2)) / (n * n)
    if math.isclose(p_e, 1.0):
        return None
    return (p_o - p_e) / (1 - p_e)


def pairwise_kappa(judgments: Iterable[Judgment]) -> list[dict]:
    by_rater: dict[str, dict[int, str]] = defaultdict(dict)
    for j in judgments:
        by_rater[j.rater][j.pair_id] = j.choice
    out = []
    for r1, r2 in itertools.combinations(sorted(by_rater), 2):
        common = sorted(set(by_rater[r1]) & set(by_rater[r2]))
        k = cohen_kappa([by_rater[r1][p] for p in common], [by_rater[r2][p] for p in common])
        agree = sum(by_rater[r1][p] == by_rater[r2][p] for p in common)
        out.append({"rater_1": r1, "rater_2": r2, "n": len(common), "kappa": k,
                    "agreement": agree / len(common) if common else None})
    return out


def krippendorff_alpha(units: dict[Hashable, dict[str, float]], level: str,
                       value_domain: Sequence[float] | None = None) -> float | None:
    """Krippendorff's alpha of ``units[unit][rater] = value`` (missing values allowed).

    Uses the ``krippendorff`` package; returns None when alpha is undefined (fewer than two
    pairable values, or a single value in the whole data, so there is no expected disagreement)."""
    import numpy as np
    import krippendorff

    raters = sorted({r for vals in units.values() for r in vals})
    unit_keys = [u for u, vals in units.items() if len(vals) >= 2]  # only pairable units count
    if len(raters) < 2 or not unit_keys:
        return None
    data = np.full((len(raters), len(unit_keys)), np.nan)
    for k, u in enumerate(unit_keys):
        for i, r in enumerate(raters):
            if r in units[u]:
                data[i, k] = units[u][r]
    if len(np.unique(data[~np.isnan(data)])) < 2:
        return None
    kw = {"value_domain": list(value_domain)} if value_domain is not None and level != "interval" else {}
    alpha = float(krippendorff.alpha(reliability_data=data, level_of_measurement=level, **kw))
    return None if math.isnan(alpha) else alpha


CHOICE_CODES = {"a": 0.0, "b": 1.0, "tie": 2.0}


def agreement(judgments: Sequence[Judgment]) -> dict:
    choice_units: dict[Hashable, dict[str, float]] = defaultdict(dict)
    rating_units: dict[str, dict[Hashable, dict[str, float]]] = {c: defaultdict(dict) for c in db.CRITERIA}
    for j in judgments:
        choice_units[j.pair_id][j.rater] = CHOICE_CODES[j.choice]
        for side in ("a", "b"):
            for crit, v in j.ratings[side].items():
                rating_units[crit][(j.pair_id, side)][j.rater] = float(v)
    alpha_ratings = {
        crit: {level: krippendorff_alpha(rating_units[crit], level, value_domain=range(1, 8))
               for level in ("ordinal", "interval")}
        for crit in db.CRITERIA}
    return {"cohen_kappa": pairwise_kappa(judgments),
            "krippendorff_alpha": {"choice_nominal": krippendorff_alpha(choice_units, "nominal",
                                                                        value_domain=[0.0, 1.0, 2.0]),
                                   "ratings": alpha_ratings}}


def compute_stats(conn: sqlite3.Connection) -> dict:
    judgments = load_judgments(conn)
    counts = {name: conn.execute(f"SELECT COUNT(*) FROM {name}").fetchone()[0]  # fixed table names only
              for name in ("documents", "pairs", "raters", "assignments", "judgments")}
    counts["ties"] = sum(j.choice == "tie" for j in judgments)
    per_rater = [dict(r) for r in conn.execute(
        "SELECT r.name AS rater, COUNT(a.assignment_id) AS assigned, COUNT(j.judgment_id) AS judged "
        "FROM raters r LEFT JOIN assignments a ON a.rater_id = r.rater_id "
        "LEFT JOIN judgments j ON j.assignment_id = a.assignment_id GROUP BY r.rater_id ORDER BY r.name")]
    return {"counts": counts, "raters": per_rater, "win_rates": win_rates(judgments),
            "head_to_head": head_to_head(judgments), "mean_ratings": mean_ratings(judgments),
            "agreement": agreement(judgments)}


def study_stats(cfg: HumanStatsConfig) -> dict:
    """``sumrl human stats``: the statistics of the study ``cfg.db`` (also written to ``cfg.json``,
    NaN as null)."""
    conn = db.open_study(cfg.db)
    try:
        s = compute_stats(conn)
    finally:
        conn.close()
    if cfg.json:
        from sumrl.utils.io import write_json

        write_json(cfg.json, nan_to_none(s))
    return s


def nan_to_none(obj):
    """NaN is not valid JSON: undefined statistics are written as null."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nan_to_none(v) for v in obj]
    return obj


def _f(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def format_stats(s: dict) -> str:
    c = s["counts"]
    lines = [f"documents {c['documents']}  pairs {c['pairs']}  raters {c['raters']}  "
             f"judgments {c['judgments']}/{c['assignments']} assigned  ties {c['ties']}", "", "Raters:"]
    lines += [f"  {r['rater']:<20} {r['judged']}/{r['assigned']}" for r in s["raters"]]
    lines += ["", "Win rates (wins + ties/2, 95% Wilson CI):",
              f"  {'system':<24} {'n':>4} {'win':>4} {'loss':>4} {'tie':>4} {'rate':>6}  CI"]
    for system, w in s["win_rates"].items():
        lines.append(f"  {system:<24} {w['n']:>4} {w['wins']:>4} {w['losses']:>4} {w['ties']:>4} "
                     f"{_f(w['win_rate']):>6}  [{_f(w['ci_low'])}, {_f(w['ci_high'])}]")
    if s["mean_ratings"]:
        lines += ["", "Mean ratings (1-7):", f"  {'system':<24} " + " ".join(f"{k:>11}" for k in db.CRITERIA)]
        for system, m in s["mean_ratings"].items():
            lines.append(f"  {system:<24} " + " ".join(f"{_f(m[k]['mean'], 2):>11}" for k in db.CRITERIA))
    a = s["agreement"]
    lines += ["", "Agreement on the overall choice:"]
    if not a["cohen_kappa"]:
        lines.append("  (needs at least two raters)")
    for k in a["cohen_kappa"]:
        lines.append(f"  Cohen's kappa {k['rater_1']} vs {k['rater_2']}: {_f(k['kappa'])} "
                     f"(raw agreement {_f(k['agreement'])}, n={k['n']})")
    ka = a["krippendorff_alpha"]
    lines.append(f"  Krippendorff's alpha (nominal): {_f(ka['choice_nominal'])}")
    lines.append("Krippendorff's alpha on ratings (ordinal / interval):")
    for crit, v in ka["ratings"].items():
        lines.append(f"  {crit:<12} {_f(v['ordinal'])} / {_f(v['interval'])}")
    return "\n".join(lines)
