"""``build_report``: eval run folders (+ training logs) -> one self-contained HTML file.

Self-contained means the file makes no request of its own: CSS is inlined, figures are base64
PNG data URIs, there is no JavaScript and no web font, and a Content-Security-Policy meta tag
(``default-src 'none'``) makes the browser refuse any request a document's text could still
smuggle in. All text from the run folders is HTML-escaped (Jinja2 autoescape; the highlighted
summaries are escaped piece by piece in :func:`sumrl.report.analysis.highlight`).
"""

from __future__ import annotations

import json
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from sumrl.config import opt
from sumrl.errors import ConfigError, SumrlError
from sumrl.evaluation.facts import FactIndex
from sumrl.evaluation.harness import TABLE_METRICS
from sumrl.evaluation.metrics import METRIC_DOCS
from sumrl.evaluation.text import words
from sumrl.report import analysis, plots
from sumrl.report.runs import EvalRun, TrainRun, load_eval_runs, load_train_run
from sumrl.utils.io import atomic_write_text

__all__ = ["build_report", "render_report", "metric_doc"]

TEMPLATES = Path(__file__).with_name("templates")

# Descriptions that METRIC_DOCS (per-example keys of score_example) does not have, or where the
# aggregate in metrics.json differs from the per-example value: sumrl eval reports CORPUS BLEU in
# metrics.json but stores sentence BLEU per example (which is what the paired test compares).
_TABLE_DOCS = {
    "bleu": "corpus BLEU (sacrebleu, 0-100) over all documents; CI from resampled documents",
    "sim_ref": "cosine similarity (all-MiniLM-L6-v2) of the summary to its best reference",
    "sim_src": "cosine similarity (all-MiniLM-L6-v2) of the summary to the source (windows averaged)",
}
_PAIRED_DOCS = {**_TABLE_DOCS, "bleu": "sentence BLEU (sacrebleu, 0-100) per example"}


def metric_doc(name: str, *, paired: bool = False) -> str:
    docs = _PAIRED_DOCS if paired else _TABLE_DOCS
    return docs.get(name) or METRIC_DOCS.get(name) or "(no description)"


def _fmt(x: Any) -> str:
    """Numbers as in `sumrl eval`'s table: 1 decimal from 10 up, else 3; missing -> en dash."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "\u2013"
    if isinstance(x, int):
        return str(x)
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.3f}"


def _fmt_signed(x: Any) -> str:
    """A difference with its sign always shown (+0.012 / -3.4)."""
    s = _fmt(x)
    return s if s == "\u2013" or s.startswith("-") else "+" + s


def _fmt_p(p: Any) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "\u2013"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _fmt_pct(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "\u2013"
    return f"{100 * x:.1f}%"


def _metric_order(runs: Sequence[EvalRun]) -> list[str]:
    """TABLE_METRICS first (the columns of `sumrl eval`), then every other metric in first-seen
    order, so no metric of any metrics.json is left out."""
    seen: list[str] = []
    for r in runs:
        seen += [k for k in r.metrics if k not in seen]
    return [k for k in TABLE_METRICS if k in seen] + [k for k in seen if k not in TABLE_METRICS]


def _best(runs: Sequence[EvalRun], metric: str) -> set[str]:
    direction = analysis.HIGHER_IS_BETTER.get(metric)
    vals = {r.system: r.metrics[metric]["mean"] for r in runs
            if metric in r.metrics and not math.isnan(r.metrics[metric]["mean"])}
    if direction is None or len(vals) < 2:
        return set()
    target = max(vals.values()) if direction else min(vals.values())
    return {s for s, v in vals.items() if v == target}


def _comparison(runs: Sequence[EvalRun], roles: analysis.Roles) -> dict:
    order = _metric_order(runs)
    rows = []
    for m in order:
        best = _best(runs, m)
        cells = []
        for r in runs:
            v = r.metrics.get(m)
            cells.append(None if v is None else {
                "mean": _fmt(v["mean"]), "ci": f"[{_fmt(v['ci_low'])}, {_fmt(v['ci_high'])}]",
                "best": r.system in best})
        direction = analysis.HIGHER_IS_BETTER.get(m)
        rows.append({"metric": m, "doc": metric_doc(m), "main": m in TABLE_METRICS, "cells": cells,
                     "arrow": "" if direction is None else ("\u2191" if direction else "\u2193")})
    if not any(r["main"] for r in rows):  # runs scored by another tool: no table metric at all
        for r in rows:
            r["main"] = True
    systems = [{"name": r.system, "role": roles.role(r.system), "n": r.n} for r in runs]
    return {"systems": systems, "rows": rows}


def _examples(runs: Sequence[EvalRun], roles: analysis.Roles, ids: Sequence[str], excerpt_words: int,
              copy_min_words: int) -> list[dict]:
    from markupsafe import Markup

    out = []
    for i in ids:
        have = [r for r in runs if i in r.by_id]
        doc = next((r.by_id[i]["document"] for r in have if r.by_id[i]["document"]), "")
        refs = next((r.by_id[i]["references"] for r in have if r.by_id[i]["references"]), [])
        query = next((r.by_id[i].get("query") for r in have if r.by_id[i].get("query")), None)
        # One FactIndex per document, shared by the reference and every system's summary.
        index = FactIndex(doc) if doc else None

        def marked(text: str) -> tuple[Markup, int, int]:
            if index is None:  # no source stored: every fact would look unsupported
                return Markup(analysis.highlight(text, [])), 0, 0
            spans = analysis.highlight_spans(text, doc, copy_min_words=copy_min_words, fact_index=index)
            return (Markup(analysis.highlight(text, spans)), sum(k == "hall" for *_, k in spans),
                    sum(k == "copy" for *_, k in spans))

        ref_html, ref_hall, ref_copy = marked(refs[0]) if refs else (Markup(""), 0, 0)
        summaries = []
        for r in have:
            row = r.by_id[i]
            h, n_hall, n_copy = marked(row["prediction"])
            m = row["metrics"]
            summaries.append({"system": r.system, "role": roles.role(r.system), "html": h,
                              "words": len(words(row["prediction"])), "n_hall": n_hall, "n_copy": n_copy,
                              "finished": row.get("finished"),
                              "rougeL": _fmt(m.get("rougeL_f")) if "rougeL_f" in m else None})
        text, cut = analysis.excerpt(doc, excerpt_words)
        out.append({"id": i, "excerpt": text, "cut": cut, "doc_words": len(words(doc)), "has_doc": bool(doc),
                    "query": query, "reference": ref_html, "ref_words": len(words(refs[0])) if refs else 0,
                    "ref_hall": ref_hall, "ref_copy": ref_copy, "n_refs": len(refs), "summaries": summaries})
    return out


def _config_json(cfg: Any) -> str:
    return json.dumps(cfg, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def _unique_train_names(train_runs: list[TrainRun]) -> None:
    """Two training folders with the same leaf name (runs/a/ppo, runs/b/ppo) would share a
    legend entry: name them parent/leaf instead."""
    counts: dict[str, int] = {}
    for t in train_runs:
        counts[t.name] = counts.get(t.name, 0) + 1
    for t in train_runs:
        if counts[t.name] > 1:
            t.name = f"{t.path.parent.name}/{t.path.name}"


def render_report(runs: Sequence[EvalRun], train_runs: Sequence[TrainRun] = (), *,
                  baselines: Iterable[str] | None = None, rl: Iterable[str] | None = None,
                  n_examples: int = 5, seed: int = 0, title: str | None = None, n_bootstrap: int = 1000,
                  excerpt_words: int = 250, copy_min_words: int = 8,
                  comparison: analysis.Comparison | None = None,
                  examples_by: tuple[str, str] | None = None) -> str:
    """The report's HTML for already-loaded runs (see :func:`build_report`); ``comparison``:
    the roles/tests/extra-length table if already computed (else computed here)."""
    import jinja2
    from markupsafe import Markup

    from sumrl import __version__

    cmp = comparison or analysis.compare(runs, baselines, rl, n_bootstrap=n_bootstrap, seed=seed)
    roles, tests = cmp.roles, cmp.tests
    for t in tests:
        for row in t["tests"]:
            row["doc"] = metric_doc(row["metric"], paired=True)
    figures = {
        "rl": plots.rl_plots(train_runs),
        "sft": plots.sft_plots(train_runs),
        "length": plots.length_plot(runs),
    }
    if examples_by is not None and n_examples > 0:  # (baseline, metric): quantiles of RL minus baseline
        ids, examples_note = analysis.quantile_ids(runs, roles.rl, examples_by[0], examples_by[1])
    else:
        ids = analysis.sample_ids(runs, n_examples, seed)
        examples_note = (f"{len(ids)} test document{'s' if len(ids) != 1 else ''} drawn with seed {seed} (asked for "
                         f"{n_examples}) among the ids every system has.")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        # autoescape for every template: run folders hold arbitrary text (documents with HTML).
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a misspelt variable must fail, not render as ""
        trim_blocks=True, lstrip_blocks=True,
    )
    env.filters.update(fmt=_fmt, fmt_p=_fmt_p, pct=_fmt_pct, signed=_fmt_signed)
    css = (TEMPLATES / "report.css").read_text(encoding="utf-8")
    return env.get_template("report.html.j2").render(
        title=title or "sumrl report: " + ", ".join(r.system for r in runs),
        version=__version__,
        css=Markup(css),
        runs=runs,
        roles=roles,
        comparison=_comparison(runs, roles),
        tests=tests,
        n_bootstrap=n_bootstrap,
        extra=cmp.extra,
        figures=figures,
        examples=_examples(runs, roles, ids, excerpt_words, copy_min_words),
        examples_note=examples_note,
        n_examples=n_examples,
        seed=seed,
        excerpt_words=excerpt_words,
        copy_min_words=copy_min_words,
        train_runs=train_runs,
        configs=[{"label": f"{r.system} (eval)", "path": str(r.path), "file": "config.json",
                  "json": None if r.config is None else _config_json(r.config)} for r in runs]
        + [{"label": f"{t.name} (training, {t.kind})", "path": str(t.path), "file": t.config_file or "config.json",
            "json": None if t.config is None else _config_json(t.config)} for t in train_runs],
    )


def build_report(run_dirs: Sequence[str | Path], out: str | Path, *, train_runs: Sequence[str | Path] = (),
                 baselines: Iterable[str] | None = None, rl: Iterable[str] | None = None, n_examples: int = 5,
                 seed: int = 0, title: str | None = None, n_bootstrap: int = 1000, excerpt_words: int = 250,
                 copy_min_words: int = 8, markdown_out: str | Path | None = None,
                 examples_by: tuple[str, str] | None = None) -> Path:
    """Write a self-contained HTML report comparing the systems of ``run_dirs`` to ``out``.

    ``run_dirs``: ``sumrl eval`` output folders (metrics.json + predictions.jsonl [+ config.json]).
    ``train_runs``: training folders whose ``metrics.jsonl`` feeds the RL/SFT curves.
    ``baselines`` / ``rl``: explicit system names for the paired tests (default rule in
    :func:`sumrl.report.analysis.assign_roles`). ``n_examples`` examples are drawn with ``seed``,
    or, with ``examples_by=(baseline, metric)``, chosen by :func:`sumrl.report.analysis.quantile_ids`.
    The file is written atomically; returns its path. ``markdown_out``: also write the tables as
    Markdown there (:func:`sumrl.report.markdown.markdown_summary`).
    """
    if n_examples < 0:
        raise SumrlError("--n-examples must be >= 0")
    if n_bootstrap < 1:
        raise SumrlError("--n-bootstrap must be >= 1")
    runs = load_eval_runs(list(run_dirs))
    trains = [load_train_run(p) for p in train_runs]
    _unique_train_names(trains)
    # computed once for the HTML and the Markdown (the paired bootstrap is the costly part)
    cmp = analysis.compare(runs, baselines, rl, n_bootstrap=n_bootstrap, seed=seed)
    text = render_report(runs, trains, comparison=cmp, n_examples=n_examples, seed=seed, title=title,
                         n_bootstrap=n_bootstrap, excerpt_words=excerpt_words, copy_min_words=copy_min_words,
                         examples_by=examples_by)
    out = Path(out)
    if out.is_dir():
        raise SumrlError(f"{out}: is a folder; give the report's file name (e.g. {out / 'report.html'})")
    atomic_write_text(out, text)
    if markdown_out:
        from sumrl.report.markdown import markdown_summary

        atomic_write_text(Path(markdown_out), markdown_summary(runs, cmp))
    return out


@dataclass
class ReportConfig:
    """``sumrl report``. The list options are registered by hand in report/cli.py (cli=False here):
    they must be repeatable (``--baseline sft --baseline sft-cleaned``), which the generic list flag
    (nargs="+", last one wins) is not. They stay fields so that YAML recipes can set them."""

    runs: list[str] = opt(default_factory=list, help="eval run folders (positional)", cli=False)
    out: str = opt("report.html", "output HTML file (written atomically)")
    train_runs: list[str] = opt(default_factory=list, cli=False,
                                help="training run folders whose metrics.jsonl feeds the RL/SFT plots")
    baseline: typing.Optional[list[str]] = opt(None, cli=False, help="baseline systems of the paired tests")
    rl: typing.Optional[list[str]] = opt(None, cli=False, help="RL variants of the paired tests")
    n_examples: int = opt(5, "number of test documents shown side by side (drawn with --seed)")
    seed: int = opt(0, "seed of the example sampling and of the bootstrap")
    title: typing.Optional[str] = opt(None, "report title (none: made from the system names)")
    n_bootstrap: int = opt(1000, "bootstrap resamples of the paired tests")
    excerpt_words: int = opt(250, "words of the source shown per example (facts are checked on the full source)")
    copy_min_words: int = opt(8, "shortest verbatim source copy highlighted, in words")
    markdown: typing.Optional[str] = opt(None, "also write the comparison, paired-test and extra-length tables "
                                               "as Markdown to this file (for docs and notes)")
    examples_by: typing.Optional[str] = opt(None, "BASELINE:METRIC: show instead the documents at the 25th/50th/75th "
                                                  "percentile of the per-document difference RL minus BASELINE in "
                                                  "METRIC (mean over the RL variants), e.g. sft:la_rougeL -- a rule "
                                                  "fixed in advance, stated in the report")

    def validate(self) -> None:
        if not self.runs:
            raise ConfigError("give at least one eval run folder: sumrl report RUN_DIR... --out report.html")
        for name in ("n_examples", "excerpt_words", "copy_min_words"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0")
        if self.n_bootstrap < 1:
            raise ConfigError("--n-bootstrap must be >= 1")
        if self.examples_by is not None and len([x for x in self.examples_by.split(":") if x]) != 2:
            raise ConfigError(f"--examples-by: expected BASELINE:METRIC (e.g. sft:la_rougeL), got {self.examples_by!r}")


def write_report(cfg: ReportConfig) -> Path:
    """``sumrl report``: :func:`build_report` with the options of ``cfg``; returns the HTML's path."""
    return build_report(cfg.runs, cfg.out, train_runs=cfg.train_runs, baselines=cfg.baseline, rl=cfg.rl,
                        n_examples=cfg.n_examples, seed=cfg.seed, title=cfg.title, n_bootstrap=cfg.n_bootstrap,
                        excerpt_words=cfg.excerpt_words, copy_min_words=cfg.copy_min_words, markdown_out=cfg.markdown,
                        examples_by=tuple(cfg.examples_by.split(":")) if cfg.examples_by else None)
