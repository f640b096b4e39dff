"""The report's figures, rendered with matplotlib into base64 PNG data URIs.

Figures are drawn on ``matplotlib.figure.Figure`` with an explicit Agg canvas instead of pyplot:
that needs no backend switch (``matplotlib.use`` would change global state for whoever imported
pyplot before us), keeps no global figure registry to leak, and works without a display.
A plot whose data is missing becomes a :class:`Plot` with ``png=None`` and a ``note`` saying why,
so the report still builds and tells the reader what was absent.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Sequence

from sumrl.evaluation.text import words
from sumrl.report.runs import EvalRun, TrainRun

__all__ = ["Plot", "rl_plots", "sft_plots", "length_plot", "RL_CURVES"]

#: (title, y label, candidate metrics.jsonl keys in order of preference, key drawn faintly behind a
#: held-out ``eval/*`` curve). The held-out curve (fixed documents, ``sumrl rl --eval-every``) is
#: preferred: a training step's reward mostly reflects which prompts it drew.
RL_CURVES = [
    ("Reward over RL steps", "mean reward", ("eval/reward", "objective/reward", "objective/scores"),
     "objective/reward"),
    ("KL to the reference policy over RL steps", "KL", ("objective/kl",), None),
    ("Mean completion length over RL steps", "tokens", ("eval/mean_length", "completions/mean_length"),
     "completions/mean_length"),
]

_DPI = 110


def _horizontal_kw() -> dict:
    # boxplot(vert=False) is deprecated from matplotlib 3.11 on; orientation= exists since 3.10.
    import matplotlib

    major, minor = (int(x) for x in matplotlib.__version__.split(".")[:2])
    return {"orientation": "horizontal"} if (major, minor) >= (3, 10) else {"vert": False}


@dataclass
class Plot:
    title: str
    png: str | None  # "data:image/png;base64,..." or None when skipped
    note: str | None = None  # why it was skipped, or what it shows
    alt: str = ""


def _figure(width: float = 6.4, height: float = 3.6):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _to_data_uri(fig) -> str:
    buf = io.BytesIO()
    # metadata={"Software": None}: no matplotlib version stamp, so the same inputs give the same
    # bytes (reports can be diffed).
    fig.savefig(buf, format="png", dpi=_DPI, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _line_plot(title: str, ylabel: str, series: list[tuple[str, list[float], list[float]]],
               faint: dict[str, tuple[list[float], list[float]]] | None = None) -> str:
    fig = _figure()
    ax = fig.add_subplot()
    for name, xs, ys in series:
        (line,) = ax.plot(xs, ys, marker="o" if len(xs) <= 30 else None, markersize=3, label=name)
        if faint and name in faint and faint[name][0]:
            fx, fy = faint[name]
            ax.plot(fx, fy, color=line.get_color(), alpha=0.35, linewidth=1, label=f"{name.removesuffix(' (held-out)')} (train)")
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _to_data_uri(fig)


def rl_plots(train_runs: Sequence[TrainRun]) -> list[Plot]:
    """Reward, KL and mean length over steps, one line per RL training run."""
    rl_runs = [r for r in train_runs if r.kind == "rl"]
    out = []
    for title, ylabel, keys, faint_key in RL_CURVES:
        series, used, faint = [], set(), {}
        for run in rl_runs:
            for k in keys:
                xs, ys = run.series(k)
                if xs:
                    held_out = k.startswith("eval/")
                    name = f"{run.name} (held-out)" if held_out else run.name
                    series.append((name, xs, ys))
                    used.add(k)
                    if held_out and faint_key:
                        faint[name] = run.series(faint_key)
                        used.add(f"{faint_key} faint")
                    break
        if series:
            out.append(Plot(title, _line_plot(title, ylabel, series, faint), note=f"from {', '.join(sorted(used))}",
                            alt=f"{title}: {', '.join(s[0] for s in series)}"))
        elif not rl_runs:
            out.append(Plot(title, None, note="skipped: no RL training run given (--train-runs with a "
                                              "metrics.jsonl that logs objective/*)"))
        else:
            out.append(Plot(title, None, note=f"skipped: no RL run logged {' or '.join(keys)}"))
    return out


def sft_plots(train_runs: Sequence[TrainRun]) -> list[Plot]:
    """Validation loss over SFT steps (training loss drawn faintly behind it, when logged)."""
    title = "Validation loss over SFT steps"
    sft_runs = [r for r in train_runs if r.kind == "sft"]
    series, faint = [], {}
    for run in sft_runs:
        xs, ys = run.series("val/loss")
        if xs:
            series.append((run.name, xs, ys))
            faint[run.name] = run.series("train/loss")
    if series:
        return [Plot(title, _line_plot(title, "loss", series, faint), note="from val/loss (train/loss faint)",
                     alt=f"{title}: {', '.join(s[0] for s in series)}")]
    if not sft_runs:
        return [Plot(title, None, note="skipped: no SFT training run given (--train-runs with a metrics.jsonl "
                                       "that logs val/loss)")]
    return [Plot(title, None, note="skipped: no SFT run logged val/loss")]


def length_plot(runs: Sequence[EvalRun]) -> Plot:
    """Box plot of summary lengths (words) per system next to the reference lengths."""
    title = "Summary length vs reference (words)"
    labels, data = [], []
    # References are the same documents for every system; take them from the first run that has
    # them so the "reference" box is not counted once per system.
    ref_lens = next(([len(words(r["references"][0])) for r in run.rows if r["references"]]
                     for run in runs if any(r["references"] for r in run.rows)), [])
    if ref_lens:
        labels.append("reference")
        data.append(ref_lens)
    for run in runs:
        labels.append(run.system)
        data.append([len(words(r["prediction"])) for r in run.rows])
    fig = _figure(6.4, 0.9 + 0.42 * len(labels))
    _HORIZONTAL = _horizontal_kw()
    ax = fig.add_subplot()
    # Reversed so the reference sits on top, in the table's reading order.
    bp = ax.boxplot(data[::-1], **_HORIZONTAL, patch_artist=True, widths=0.6, showmeans=True,
                    meanprops={"marker": "D", "markerfacecolor": "white", "markeredgecolor": "black",
                               "markersize": 4})
    ax.set_yticks(range(1, len(labels) + 1), labels[::-1], fontsize=8)
    for patch, label in zip(bp["boxes"], labels[::-1]):
        patch.set_facecolor("#f2c14e" if label == "reference" else "#8fb8de")
    ax.set_xlabel("words (whitespace tokens); diamond = mean")
    ax.set_title(title, fontsize=11)
    ax.grid(True, axis="x", alpha=0.3)
    return Plot(title, _to_data_uri(fig), note="box = quartiles, whiskers = 1.5 IQR, dots = outliers",
                alt=f"{title}: {', '.join(labels)}")
