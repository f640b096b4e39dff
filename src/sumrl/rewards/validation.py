"""Rewards against human scores on held-out documents (``sumrl rm eval-rewards --human-scores``).

Per summary rather than per pair:

* **FRANK balanced accuracy**: label = the summary is fully factual (human factuality 1.0) or
  not; a reward's decision threshold is the one that maximises balanced accuracy on FRANK
  *training* summaries (so nothing is tuned on the held-out ones), then applied to the held-out
  summaries. Also Kendall's tau-b of the reward with the factuality score (pooled).
* **SummEval Kendall's tau** per expert dimension (coherence, consistency, fluency, relevance):
  summary-level, i.e. tau-b between the reward and the expert score over the 16 summaries of one
  document, averaged over held-out documents (the usual "summary-level" correlation of the
  SummEval paper; it ignores per-document offsets, which no within-document comparison sees). A
  reward constant over a document's summaries counts tau 0 there (it ranks nothing).

Every number comes with a 95% percentile bootstrap CI over held-out *documents* (clusters), seed
0; agreement on pairs uses the same document bootstrap (:func:`cluster_bootstrap`).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from sumrl.rewards import judges as J
from sumrl.rewards.base import RewardInput

SUMMEVAL_DIMS = ["coherence", "consistency", "fluency", "relevance"]


def cluster_bootstrap(clusters: Sequence[Any], stat: Callable[[list[int]], float], n: int = 1000,
                      seed: int = 0) -> tuple[float, float]:
    """95% percentile CI of ``stat(indices)`` when whole clusters (documents) are resampled.
    ``stat`` gets the item indices of the resample (with repeats). NaN resamples are dropped."""
    if n <= 0:
        return (math.nan, math.nan)
    groups: dict[Any, list[int]] = {}
    for i, c in enumerate(clusters):
        groups.setdefault(c, []).append(i)
    keys = list(groups)
    if len(keys) < 2:  # one document: resampling documents says nothing about the spread
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n):
        pick = rng.integers(0, len(keys), len(keys))
        idx = [i for k in pick for i in groups[keys[k]]]
        v = stat(idx)
        if not math.isnan(v):
            vals.append(v)
    if not vals:
        return (math.nan, math.nan)
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return float(lo), float(hi)


def agreement_ci(outcomes: Sequence[float], clusters: Sequence[Any], n: int = 1000, seed: int = 0) -> tuple[float, float]:
    """CI of the agreement (mean of 1 / 0.5 / 0 outcomes) with documents resampled."""
    arr = np.asarray(outcomes, dtype=float)
    return cluster_bootstrap(clusters, lambda idx: float(arr[idx].mean()), n, seed)


def balanced_accuracy(scores: Sequence[float], labels: Sequence[bool], threshold: float) -> float:
    """Mean of the recall of each class when ``score >= threshold`` predicts True (NaN if a class is absent)."""
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels, dtype=bool)
    if y.all() or (~y).all():
        return math.nan
    pred = s >= threshold
    return float(0.5 * ((pred & y).sum() / y.sum() + (~pred & ~y).sum() / (~y).sum()))


def best_threshold(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """The threshold (midpoint between consecutive distinct scores) of highest balanced accuracy."""
    u = np.unique(np.asarray(scores, dtype=float))
    if len(u) == 1:
        return float(u[0])
    cands = np.concatenate([[u[0] - 1.0], (u[:-1] + u[1:]) / 2, [u[-1] + 1.0]])
    accs = [balanced_accuracy(scores, labels, t) for t in cands]
    return float(cands[int(np.nanargmax(accs))])


def kendall(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b (scipy); NaN when either side is constant."""
    from scipy.stats import kendalltau

    if len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan
    return float(kendalltau(x, y).statistic)


def summary_level_tau(scores: Sequence[float], human: Sequence[float], docs: Sequence[str], idx: Sequence[int] | None = None) -> float:
    """Mean over documents of tau-b(reward, human) among that document's summaries."""
    idx = range(len(scores)) if idx is None else idx
    taus = []
    groups: dict[str, list[int]] = {}
    for i in idx:
        groups.setdefault(docs[i], []).append(i)
    for d, ii in groups.items():
        # repeated draws of one document repeat its items; tau of the repeated set equals the single
        # set's tau only up to ties, so use the distinct items and weight the document by its draws
        uniq = sorted(set(ii))
        reps = len(ii) // len(uniq)
        if len({human[i] for i in uniq}) < 2:
            continue  # people did not rank these summaries: nothing to agree with
        # a reward that scores every summary of a document alike ranks nothing: tau 0, not "skip"
        # (skipping would average a mostly-tied reward over the few documents where it moves)
        t = kendall([scores[i] for i in uniq], [human[i] for i in uniq])
        taus.extend([0.0 if math.isnan(t) else t] * reps)
    return float(np.mean(taus)) if taus else math.nan


def score_items(items: Sequence[J.JudgedSummary], reward: Any, batch_size: int = 64) -> list[float]:
    """Each summary's reward total (no token ids: per-token parts are in the score)."""
    out: list[float] = []
    for s in range(0, len(items), batch_size):
        chunk = items[s:s + batch_size]
        inp = RewardInput(documents=[it.document for it in chunk], summaries=[it.summary for it in chunk],
                          references=[list(it.reference or []) for it in chunk], queries=[None] * len(chunk))
        out.extend(float(v) for v in reward(inp).totals().tolist())
    return out


def human_score_tables(root: str, rewards: Sequence[tuple[str, Any]], n_bootstrap: int = 1000, seed: int = 0,
                       threshold_limit: int | None = 600, progress: bool = True) -> dict[str, list[dict]]:
    """``{"frank": [...], "summeval": [...]}`` rows per reward (see the module docstring)."""
    import random

    frank = J.frank_items(root)
    summeval = J.summeval_items(root)
    f_test = [it for it in frank if it.split == "test"]
    f_train = [it for it in frank if it.split == "train"]
    if threshold_limit and len(f_train) > threshold_limit:
        f_train = random.Random(seed).sample(f_train, threshold_limit)
    s_test = [it for it in summeval if it.split == "test"]
    # group items by document so per-document caches (windows, embeddings) are reused
    for xs in (f_test, f_train, s_test):
        xs.sort(key=lambda it: (it.doc_id, it.system))
    out: dict[str, list[dict]] = {"frank": [], "summeval": []}
    y_test = [it.scores["factuality"] >= 1.0 for it in f_test]
    y_train = [it.scores["factuality"] >= 1.0 for it in f_train]
    fact = [it.scores["factuality"] for it in f_test]
    f_docs = [it.doc_id for it in f_test]
    s_docs = [it.doc_id for it in s_test]
    from tqdm.auto import tqdm

    bar = tqdm(rewards, desc="human scores", unit="reward", disable=not progress, leave=False)
    for name, reward in bar:
        if getattr(reward, "needs_references", False) and not all(it.reference for it in f_test + f_train + s_test):
            out["frank"].append({"reward": name, "note": "needs references"})
            continue
        tr = score_items(f_train, reward)
        te = score_items(f_test, reward)
        thr = best_threshold(tr, y_train)
        ba = balanced_accuracy(te, y_test, thr)
        te_a, yt = np.asarray(te), np.asarray(y_test)
        ba_ci = cluster_bootstrap(f_docs, lambda idx: balanced_accuracy(te_a[idx], yt[idx], thr), n_bootstrap, seed)
        tau = kendall(te, fact)
        fa = np.asarray(fact)
        tau_ci = cluster_bootstrap(f_docs, lambda idx: kendall(te_a[idx].tolist(), fa[idx].tolist()), n_bootstrap, seed)
        out["frank"].append({"reward": name, "n": len(f_test), "n_docs": len(set(f_docs)), "threshold": thr,
                             "balanced_accuracy": ba, "ba_ci": list(ba_ci), "kendall_tau": tau, "tau_ci": list(tau_ci),
                             "n_threshold_items": len(f_train), "positives": int(sum(y_test))})
        ss = score_items(s_test, reward)
        row: dict[str, Any] = {"reward": name, "n": len(s_test), "n_docs": len(set(s_docs))}
        for dim in SUMMEVAL_DIMS:
            h = [it.scores[dim] for it in s_test]
            row[dim] = summary_level_tau(ss, h, s_docs)
            row[f"{dim}_ci"] = list(cluster_bootstrap(s_docs, lambda idx: summary_level_tau(ss, h, s_docs, idx),
                                                      n_bootstrap, seed))
        out["summeval"].append(row)
        bar.set_postfix_str(f"{name}: FRANK balanced accuracy {ba:.3f}, tau {tau:.3f}; SummEval tau coherence "
                            f"{row['coherence']:.3f} consistency {row['consistency']:.3f}")
    bar.close()
    return out


def format_human_tables(tables: dict[str, list[dict]]) -> str:
    def ci(v, c):
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f} [{c[0]:.3f}, {c[1]:.3f}]"

    lines = ["FRANK held-out summaries: balanced accuracy (fully factual or not; threshold from training summaries) "
             "and Kendall tau-b with human factuality, 95% document-bootstrap CIs", "",
             "| reward | balanced accuracy | Kendall tau |", "|---|---|---|"]
    for r in tables.get("frank", []):
        if "balanced_accuracy" not in r:
            lines.append(f"| {r['reward']} | n/a | n/a |")
            continue
        lines.append(f"| {r['reward']} | {ci(r['balanced_accuracy'], r['ba_ci'])} | {ci(r['kendall_tau'], r['tau_ci'])} |")
    lines += ["", "SummEval held-out documents: summary-level Kendall tau-b with the expert scores (mean over "
              "documents), 95% document-bootstrap CIs", "",
              "| reward | " + " | ".join(SUMMEVAL_DIMS) + " |", "|---|" + "---|" * len(SUMMEVAL_DIMS)]
    for r in tables.get("summeval", []):
        lines.append(f"| {r['reward']} | " + " | ".join(ci(r[d], r[f'{d}_ci']) for d in SUMMEVAL_DIMS) + " |")
    return "\n".join(lines)
