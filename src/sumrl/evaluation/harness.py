"""The evaluation harness behind ``sumrl eval``: (clean up) -> score -> aggregate -> write.

It scores prediction rows; producing them is :mod:`sumrl.generation.predict`'s part. Outputs of
one run folder (see docs/architecture.md): ``predictions.jsonl``, ``metrics.json``, ``config.json``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

# The columns of the printed table (all metrics are in metrics.json).
TABLE_METRICS = [
    "rouge1_f", "rouge2_f", "rougeL_f", "rougeLsum_f", "la_rouge1", "la_rougeL", "bleu",
    "sim_ref", "sim_src", "pred_words", "extra_words_pos", "compression_ratio", "novel_2", "copy_rate",
    "rep3", "cutoff", "fact_precision", "hallucination_rate", "unsupported_sent_rate", "coherence_score",
]


def score_rows(rows: list[dict], *, cleanup: bool = False, semantic: bool = True,
               judges: Callable[[list[dict]], list[dict]] | None = None) -> list[dict]:
    """Add per-example ``metrics`` to prediction rows (in place) and return them. ``judges`` (rows ->
    one dict of metrics per row) adds the learned judges' metrics: they live in the rewards layer
    (:func:`sumrl.rewards.judge_metrics.judge_metrics`), so the caller passes them in."""
    from sumrl.evaluation.metrics import score_example
    from sumrl.evaluation.text import cleanup as clean

    for r in rows:
        raw = r.get("raw_prediction", r["prediction"])
        r["raw_prediction"] = raw
        r["prediction"] = clean(raw) if cleanup else raw
    if semantic:
        sims = semantic_similarity(rows)
    for i, r in enumerate(rows):
        m = score_example(r["prediction"], r["references"], r.get("document", ""), finished=r.get("finished"))
        if semantic:
            m["sim_ref"], m["sim_src"] = sims[i]
        r["metrics"] = m
    if judges is not None:
        for r, jm in zip(rows, judges(rows)):
            r["metrics"].update(jm)
    return rows


SIM_SRC_WINDOWS = 16  # evenly spaced 180-word windows of the source used for sim_src


def semantic_similarity(rows: list[dict]) -> list[tuple[float, float]]:
    """Cosine similarity (all-MiniLM-L6-v2) of each prediction to its best reference and to its
    source (the document embedded window by window -- at most SIM_SRC_WINDOWS evenly spaced
    windows -- and the unit window embeddings averaged)."""
    from sumrl.models.encoder import get_encoder

    enc = get_encoder()
    preds = enc.encode_long([r["prediction"] for r in rows])
    srcs = enc.encode_long([r.get("document", "") for r in rows], max_windows=SIM_SRC_WINDOWS)
    refs_flat, owner = [], []
    for i, r in enumerate(rows):
        for ref in r["references"]:
            refs_flat.append(ref)
            owner.append(i)
    refs = enc.encode_long(refs_flat) if refs_flat else None
    out = []
    for i in range(len(rows)):
        best = -1.0
        for j, o in enumerate(owner):
            if o == i:
                best = max(best, float((preds[i] * refs[j]).sum()))
        out.append((best if refs_flat else float("nan"), float((preds[i] * srcs[i]).sum())))
    return out


def aggregate_metrics(rows: list[dict], *, n_bootstrap: int = 1000, seed: int = 0) -> dict[str, dict]:
    from sumrl.evaluation.bootstrap import bootstrap_ci

    keys: list[str] = []
    for r in rows:
        for k in r["metrics"]:
            if k not in keys:
                keys.append(k)
    agg: dict[str, dict] = {}
    for k in keys:
        vals = [r["metrics"].get(k, float("nan")) for r in rows]
        vals = [float(v) if v is not None and not (isinstance(v, float) and math.isinf(v)) else float("nan") for v in vals]
        agg[k] = bootstrap_ci(vals, n_resamples=n_bootstrap, seed=seed)
    # corpus BLEU (what papers report) with a bootstrap CI over resampled documents
    agg["bleu"] = corpus_bleu_ci([r["prediction"] for r in rows], [r["references"] for r in rows],
                                 n_resamples=min(n_bootstrap, 200), seed=seed)
    return agg


def corpus_bleu_ci(preds: list[str], refs: list[list[str]], n_resamples: int = 200, seed: int = 0) -> dict:
    import numpy as np

    from sumrl.evaluation.rouge import corpus_bleu

    full = corpus_bleu(preds, refs)
    if len(preds) < 2:
        return {"mean": full, "ci_low": full, "ci_high": full}
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n_resamples):
        idx = rng.integers(0, len(preds), len(preds))
        stats.append(corpus_bleu([preds[i] for i in idx], [refs[i] for i in idx]))
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return {"mean": full, "ci_low": float(lo), "ci_high": float(hi)}


def write_run(out_dir: str | Path, rows: list[dict], metrics: dict, config: dict, system: str, extra: dict | None = None) -> None:
    from sumrl.utils.io import write_json, write_jsonl

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for r in rows:
        r["system"] = system
    write_jsonl(out / "predictions.jsonl", rows)
    write_json(out / "metrics.json", {"system": system, "n": len(rows), "metrics": metrics, **(extra or {})})
    write_json(out / "config.json", config)


def format_table(metrics_by_system: dict[str, dict], keys: list[str] | None = None, title: str = "evaluation"):
    """A rich Table: one row per system, one column per metric, 'mean [lo, hi]'."""
    from rich.table import Table

    keys = keys or [k for k in TABLE_METRICS if any(k in m for m in metrics_by_system.values())]
    t = Table(title=title, show_lines=False)
    t.add_column("metric")
    for s in metrics_by_system:
        t.add_column(s, justify="right")
    for k in keys:
        cells = []
        for m in metrics_by_system.values():
            v = m.get(k)
            cells.append("-" if v is None else _fmt(v))
        t.add_row(k, *cells)
    return t


def _fmt(v: dict) -> str:
    def f(x):
        if x is None or (isinstance(x, float) and math.isnan(x)):
            return "nan"
        return f"{x:.1f}" if abs(x) >= 10 else f"{x:.3f}"

    return f"{f(v['mean'])} [{f(v['ci_low'])}, {f(v['ci_high'])}]"
