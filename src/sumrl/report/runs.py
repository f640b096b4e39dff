"""Reading the folders a report is built from: eval run folders and training run folders.

An *eval run folder* is what ``sumrl eval`` writes (docs/architecture.md): ``metrics.json``,
``predictions.jsonl`` and, usually, ``config.json``. A *training run folder* is what ``sumrl sft``
or an RL trainer writes: a ``metrics.jsonl`` log (``sumrl.utils.logging``) and a config file.
Every problem a user can fix (missing file, malformed JSON, duplicate system name) is raised as a
one-line :class:`SumrlError` that names the folder or file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sumrl.errors import SumrlError

__all__ = ["EvalRun", "TrainRun", "load_eval_run", "load_eval_runs", "load_train_run"]


@dataclass
class EvalRun:
    """One evaluated system: its aggregate metrics, per-example rows and effective config."""

    path: Path
    system: str
    n: int
    metrics: dict[str, dict[str, float]]
    rows: list[dict]
    config: dict[str, Any] | None
    by_id: dict[str, dict] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.by_id = {str(r["id"]): r for r in self.rows}


@dataclass
class TrainRun:
    """One training run folder: its ``metrics.jsonl`` rows and config (if any)."""

    path: Path
    name: str
    rows: list[dict]
    config: dict[str, Any] | None
    config_file: str | None

    @property
    def kind(self) -> str:
        """``"rl"``, ``"sft"`` or ``"unknown"``: which trainer logs the namespaces found
        (:data:`sumrl.utils.logging.NAMESPACES`)."""
        from sumrl.utils.logging import trainer_of

        return trainer_of({k for r in self.rows for k in r})

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """(steps, values) of the rows that logged ``key`` with a finite number.

        Logs are sparse (validation runs every few steps only), so rows without the key are
        skipped rather than plotted as gaps.
        """
        xs, ys = [], []
        for i, r in enumerate(self.rows):
            v = r.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                continue
            step = r.get("step", i)
            xs.append(float(step) if isinstance(step, (int, float)) else float(i))
            ys.append(float(v))
        return xs, ys


def _read_json_file(path: Path) -> Any:
    from sumrl.utils.io import read_json_file

    return read_json_file(path)  # one DataError for bad UTF-8/JSON, huge integers, deep nesting; BOM accepted


def _metric_value(v: Any) -> float:
    """A per-example metric as a float; anything unusable (None, text) becomes NaN so that the
    paired test drops that pair instead of crashing on one odd row."""
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return float(v)
    return math.nan


def load_eval_run(path: str | Path) -> EvalRun:
    """Load one ``sumrl eval`` run folder (SumrlError naming the folder if it is not one)."""
    p = Path(path)
    if not p.is_dir():
        raise SumrlError(f"{p}: not a run folder (no such directory)")
    missing = [n for n in ("metrics.json", "predictions.jsonl") if not (p / n).is_file()]
    if missing:
        raise SumrlError(f"{p}: not an eval run folder (missing {' and '.join(missing)}; "
                         "run `sumrl eval --out` to make one)")
    from sumrl.data.formats import read_predictions, read_run_metrics

    mj = read_run_metrics(p / "metrics.json")
    metrics = {name: {k: _metric_value(v.get(k)) for k in ("mean", "ci_low", "ci_high")}
               for name, v in mj["metrics"].items()}
    # pairing is by id: the reader refuses duplicate ids (they would silently pair the wrong rows);
    # a row without references is shown but left out of the reference-based tables
    rows = read_predictions(p / "predictions.jsonl", require_references=False)
    for r in rows:
        r["metrics"] = {k: _metric_value(v) for k, v in (r.get("metrics") or {}).items()}
    system = mj.get("system") or rows[0].get("system") or p.name
    config = _read_json_file(p / "config.json") if (p / "config.json").is_file() else None
    n = mj.get("n")
    n = n if isinstance(n, int) and not isinstance(n, bool) else len(rows)
    return EvalRun(path=p, system=str(system), n=n, metrics=metrics, rows=rows, config=config)


def load_eval_runs(paths: list[str | Path]) -> list[EvalRun]:
    if not paths:
        raise SumrlError("give at least one eval run folder")
    runs = [load_eval_run(p) for p in paths]
    by_name: dict[str, Path] = {}
    for r in runs:
        if r.system in by_name:
            # Systems are addressed by name (--baseline/--rl, the paired tests): two folders with
            # one name would make every later choice ambiguous.
            raise SumrlError(f"{r.path}: system name {r.system!r} is also used by {by_name[r.system]}; "
                             "re-run one of them with `sumrl eval --system NAME`")
        by_name[r.system] = r.path
    return runs


def load_train_run(path: str | Path) -> TrainRun:
    """Load a training run folder (or a metrics.jsonl file directly)."""
    p = Path(path)
    log = p if p.is_file() else p / "metrics.jsonl"
    folder = log.parent
    if not log.is_file():
        raise SumrlError(f"{p}: not a training run folder (no metrics.jsonl)")
    from sumrl.data.formats import read_metrics_log

    # a run still going (or killed mid-append) may end in a torn line: dropped with a notice
    rows = read_metrics_log(log, missing_ok=False)
    config, config_file = None, None
    # sumrl sft writes sft_config.json; other trainers config.json or <name>_config.json.
    candidates = [folder / "config.json"] + sorted(folder.glob("*_config.json"))
    for c in candidates:
        if c.is_file():
            config, config_file = _read_json_file(c), c.name
            break
    return TrainRun(path=folder, name=folder.name or str(folder), rows=rows, config=config, config_file=config_file)
