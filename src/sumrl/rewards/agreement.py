"""How often does each reward agree with people? (``sumrl rm eval-rewards``)

For every held-out human pair (document, chosen, rejected) each reward scores both summaries
(its total: sequence score plus per-token rewards; no token ids, so per-token penalties are in
the score). Agreement = (pairs where chosen scores higher + 0.5 * ties) / pairs, per reward and
per source. Reference-based rewards (rouge, length in reference mode) need ``meta.references``;
on pairs without references they are reported as not applicable rather than guessed. Numbers
are reported as they come: nothing is tuned on these pairs.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

from sumrl.rewards.base import RewardInput


def _inputs(rows: Sequence[dict]) -> RewardInput:
    docs, sums, refs, qs = [], [], [], []
    for r in rows:
        rr = list((r.get("meta") or {}).get("references") or [])
        for s in (r["chosen"], r["rejected"]):
            docs.append(r["document"])
            sums.append(s)
            refs.append(rr)
            qs.append(r.get("query"))
    return RewardInput(documents=docs, summaries=sums, references=refs, queries=qs)


def agreement_table(rows: Sequence[dict], rewards: Sequence[tuple[str, Any]], batch_size: int = 64,
                    progress: bool = False, n_bootstrap: int = 0, seed: int = 0) -> list[dict]:
    """``rewards``: (name, callable Reward). Returns rows ``{reward, source, n, agree, ties, accuracy}``,
    plus ``ci`` (95% bootstrap over documents, :func:`sumrl.rewards.validation.agreement_ci`) when
    ``n_bootstrap`` > 0."""
    by_source: dict[str, list[dict]] = {}
    for r in rows:
        # pairs of one source judged on different dimensions (SummEval consistency vs coherence) stay apart
        dim = (r.get("meta") or {}).get("dimension")
        key = str(r.get("source") or "?") + (f"/{dim}" if dim not in (None, "overall", "factuality") else "")
        by_source.setdefault(key, []).append(r)
    table = []
    for name, reward in rewards:
        for source, rs in sorted(by_source.items()):
            needs_refs = getattr(reward, "needs_references", False)
            usable = [r for r in rs if not needs_refs or (r.get("meta") or {}).get("references")]
            if not usable:
                table.append({"reward": name, "source": source, "n": 0, "agree": 0, "ties": 0, "accuracy": None,
                              "note": "no references in these pairs"})
                continue
            agree = ties = 0
            outcomes: list[float] = []
            # batches keep pairs of one document together, so per-document caches are reused
            for s in range(0, len(usable), batch_size):
                chunk = usable[s:s + batch_size]
                tot = reward(_inputs(chunk)).totals().tolist()
                for k in range(len(chunk)):
                    c, rj = tot[2 * k], tot[2 * k + 1]
                    if abs(c - rj) <= 1e-9:
                        ties += 1
                        outcomes.append(0.5)
                    elif c > rj:
                        agree += 1
                        outcomes.append(1.0)
                    else:
                        outcomes.append(0.0)
            n = len(usable)
            if progress:
                print(f"  {name} on {source}: {(agree + 0.5 * ties) / n:.3f} ({n} pairs)", file=sys.stderr, flush=True)
            extra = {}
            if n_bootstrap > 0:
                from sumrl.rewards.validation import agreement_ci

                extra["ci"] = list(agreement_ci(outcomes, [r["id"] for r in usable], n_bootstrap, seed))
            table.append({"reward": name, "source": source, "n": n, "agree": agree, "ties": ties,
                          "accuracy": (agree + 0.5 * ties) / n, **extra,
                          **({"note": f"{len(rs) - n} pairs without references skipped"} if n < len(rs) else {})})
    return table


def format_table(table: Sequence[dict]) -> str:
    """Markdown: one row per reward, one column per source (accuracy, n, ties)."""
    sources = sorted({t["source"] for t in table})
    rewards = list(dict.fromkeys(t["reward"] for t in table))
    cell = {(t["reward"], t["source"]): t for t in table}
    with_ci = any("ci" in t for t in table)
    what = "agree [95% CI] / n / ties" if with_ci else "agree / n / ties"
    head = "| reward | " + " | ".join(f"{s} ({what})" for s in sources) + " |"
    lines = [head, "|---|" + "---|" * len(sources)]
    for rw in rewards:
        cells = []
        for s in sources:
            t = cell.get((rw, s))
            if t is None or t["accuracy"] is None:
                cells.append("n/a")
            else:
                ci = ""
                if "ci" in t:
                    lo, hi = t["ci"]
                    ci = " [one document]" if lo != lo else f" [{lo:.3f}, {hi:.3f}]"  # NaN: a single cluster
                cells.append(f"{t['accuracy']:.3f}{ci} / {t['n']} / {t['ties']}")
        lines.append(f"| {rw} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
