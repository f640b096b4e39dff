"""The evaluation harness behind ``sumrl eval``: generate -> (clean up) -> score -> aggregate.

Outputs of one run folder (see docs/architecture.md): ``predictions.jsonl``, ``metrics.json``,
``config.json``. Generation is checkpointed: finished predictions are appended to
``predictions.partial.jsonl`` as they are produced, so a killed evaluation resumes where it
stopped instead of regenerating.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from sumrl.data.schema import Example

# The columns of the printed table (all metrics are in metrics.json).
TABLE_METRICS = [
    "rouge1_f", "rouge2_f", "rougeL_f", "rougeLsum_f", "la_rouge1", "la_rougeL", "bleu",
    "sim_ref", "sim_src", "pred_words", "extra_words_pos", "compression_ratio", "novel_2", "copy_rate",
    "rep3", "cutoff", "fact_precision", "hallucination_rate", "unsupported_sent_rate", "coherence_score",
]


def generate_predictions(model_spec: str | Any, examples: list[Example], opts: Any, *, system: str | None = None,
                         partial_path: str | Path | None = None, model_and_tokenizer: tuple | None = None,
                         progress: bool = True) -> list[dict]:
    """Generate a summary per example. ``opts`` is any config with the GenerationOptions fields."""
    from sumrl.generation.summarize import summarize
    from sumrl.models.loading import load_model

    done: dict[str, dict] = {}
    if partial_path and Path(partial_path).exists():
        with open(partial_path, encoding="utf-8") as f:
            for line in f:
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:  # a line torn by a kill: regenerate that one
                    continue
                done[r["id"]] = r
    todo = [ex for ex in examples if ex.id not in done]
    if todo:
        model, tok = model_and_tokenizer or load_model(model_spec, dtype=opts.dtype)
        settings = opts.generation_settings(progress=progress)
        # generate in blocks so that progress is saved as it is made
        block = max(settings.batch_size * 2, 1)
        fh = open(partial_path, "a", encoding="utf-8") if partial_path else None
        try:
            for s in range(0, len(todo), block):
                part = todo[s:s + block]
                outs = summarize(model, tok, part, settings)
                for ex, o in zip(part, outs):
                    row = {
                        "id": ex.id, "system": system, "document": ex.document, "query": ex.query,
                        "references": ex.references, "raw_prediction": o.text, "prediction": o.text,
                        "strategy": o.strategy, "n_document_tokens": o.n_document_tokens,
                        "n_input_tokens": o.n_input_tokens, "n_output_tokens": o.n_output_tokens,
                        "finished": o.finished, "n_chunks": o.n_chunks, "depth": o.depth,
                    }
                    done[ex.id] = row
                    if fh:
                        fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                if fh:
                    fh.flush()
                    os.fsync(fh.fileno())
                from sumrl.utils.faults import kill_point

                kill_point("eval-after-block")
        except OSError as e:  # a full disk names no file: say which output it was
            if e.filename is None and partial_path:
                e.filename = str(partial_path)
            raise
        finally:
            if fh:
                fh.close()
    return [done[ex.id] for ex in examples]


def score_rows(rows: list[dict], *, cleanup: bool = False, semantic: bool = True, judges: bool = False,
               knowledge: str | None = None) -> list[dict]:
    """Add per-example ``metrics`` to prediction rows (in place) and return them."""
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
    if judges:
        for r, jm in zip(rows, judge_metrics(rows, knowledge)):
            r["metrics"].update(jm)
    return rows


def judge_metrics(rows: list[dict], knowledge: str | None = None, batch_size: int = 32) -> list[dict]:
    """The learned judges as metrics (docs/metrics.md): ``factual_support`` (mean calibrated support of
    the summary's sentences by the source), ``unsupported_sent_rate`` (share of sentences with
    support < 0.5), ``coherence_score`` (calibrated to SummEval's 1..5 expert scale) and, with a
    knowledge folder, ``knowledge_supported`` (share of source-unsupported sentences that the
    local corpus supports)."""
    from sumrl.rewards.base import RewardInput
    from sumrl.rewards.coherence_model import CoherenceModelReward
    from sumrl.rewards.factuality import FactualityReward

    fact = FactualityReward(knowledge=knowledge)
    coh = CoherenceModelReward()
    out = []
    for s in range(0, len(rows), batch_size):
        chunk = rows[s:s + batch_size]
        inp = RewardInput(documents=[r.get("document", "") for r in chunk], summaries=[r["prediction"] for r in chunk],
                          references=[r["references"] for r in chunk], queries=[r.get("query") for r in chunk])
        f, c = fact(inp).components, coh(inp).components
        for k in range(len(chunk)):
            m = {"factual_support": float(f["factuality/support"][k]),
                 "unsupported_sent_rate": float(f["factuality/unsupported_rate"][k]),
                 "coherence_score": float(c["coherence_model/expert_scale"][k])}
            if knowledge:
                m["knowledge_supported"] = float(f["factuality/knowledge_supported"][k])
            out.append(m)
    return out


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
    from sumrl.evaluation.metrics import corpus_bleu

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

    from sumrl.evaluation.metrics import corpus_bleu

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


def timed(fn, *a, **kw):
    t = time.perf_counter()
    r = fn(*a, **kw)
    return r, time.perf_counter() - t
