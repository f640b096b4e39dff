"""The report's numbers as Markdown: for docs pages and pull-request notes.

``sumrl report RUN_DIR... --markdown results.md`` writes, next to the HTML, the same comparison
table (mean and 95% bootstrap CI of each metric, per system), the paired bootstrap tests of each
RL variant against each baseline, and the extra-length table -- computed by the same functions
as the HTML (:mod:`sumrl.report.analysis`), so the two can never disagree.
"""

from __future__ import annotations

import math
from typing import Sequence

from sumrl.report import analysis
from sumrl.report.runs import EvalRun

__all__ = ["MARKDOWN_METRICS", "markdown_summary"]

#: Columns of the comparison table (the ones present in at least one run are shown).
MARKDOWN_METRICS = ["rouge1_f", "rouge2_f", "rougeL_f", "la_rougeL", "bleu", "sim_ref", "pred_words",
                    "extra_words_pos", "cutoff", "hallucination_rate", "unsupported_sent_rate", "coherence_score"]


def _num(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}" if abs(x) < 100 else f"{x:.1f}"


def _digits(metric: str) -> int:
    return 1 if metric in ("pred_words", "extra_words_pos", "bleu", "ref_words") else 3


def markdown_summary(runs: Sequence[EvalRun], comparison: analysis.Comparison,
                     metrics: Sequence[str] = MARKDOWN_METRICS) -> str:
    """Markdown with three tables: metrics with CIs, paired tests, extra length
    (``comparison`` from :func:`sumrl.report.analysis.compare`, shared with the HTML)."""
    keys = [k for k in metrics if any(k in r.metrics for r in runs)]
    n = sorted({r.n for r in runs})
    lines = [f"Systems evaluated on {', '.join(map(str, n))} documents; mean [95% bootstrap CI].", "",
             "| system | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for r in runs:
        cells = []
        for k in keys:
            m = r.metrics.get(k)
            d = _digits(k)
            cells.append("-" if m is None else
                         f"{_num(m.get('mean'), d)} [{_num(m.get('ci_low'), d)}, {_num(m.get('ci_high'), d)}]")
        lines.append(f"| {r.system} | " + " | ".join(cells) + " |")

    if comparison.tests:
        paired = [k for k in keys if k in analysis.PAIRED_METRICS]
        lines += ["", f"Paired bootstrap ({comparison.n_bootstrap} resamples, same documents): RL variant minus "
                      "baseline, delta [95% CI], p; **better**/**worse** where p < 0.05 and the metric has a "
                      "direction.", "",
                  "| RL variant | baseline | n | " + " | ".join(paired) + " |", "|---|---|---|" + "---|" * len(paired)]
        for t in comparison.tests:
            by_metric = {row["metric"]: row for row in t["tests"]}
            cells = []
            for k in paired:
                row = by_metric.get(k)
                if row is None:
                    cells.append("-")
                    continue
                d = _digits(k)
                mark = f" **{row['better']}**" if row.get("better") else ""
                cells.append(f"{row['delta']:+.{d}f} [{_num(row['ci_low'], d)}, {_num(row['ci_high'], d)}] "
                             f"p={row['p_value']:.2f}{mark}")
            lines.append(f"| {t['rl']} | {t['baseline']} | {t['n']} | " + " | ".join(cells) + " |")

    lines += ["", "Extra length (the seed paper's Table 1; words of the first reference):", "",
              "| system | mean words beyond the reference | median | share longer than the reference | "
              "mean \\|words - reference\\| | mean words | mean reference words (min-max) |",
              "|---|---|---|---|---|---|---|"]
    for row in comparison.extra:
        lines.append(f"| {row['system']} | {_num(row['mean_extra'], 1)} | {_num(row['median_extra'], 1)} | "
                     f"{_num(row['share_longer'], 2)} | {_num(row['mean_abs_diff'], 1)} | "
                     f"{_num(row['mean_pred_words'], 1)} | {_num(row['mean_ref_words'], 1)} "
                     f"({row['min_ref_words']}-{row['max_ref_words']}) |")
    return "\n".join(lines) + "\n"
