"""Readers of the files sumrl writes and reads back (docs/architecture.md lists each format once,
with its fields). One reader per format: every command that reads a format calls its reader here,
and every problem is one :class:`~sumrl.errors.DataError` naming the file, the line and the field.
All of them read lines through :func:`sumrl.utils.io.iter_jsonl_file` (the one strict JSONL line
reader: bad UTF-8, bad JSON, a folder, all one line; BOM accepted).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sumrl.errors import DataError
from sumrl.utils.io import iter_jsonl_file, read_json_file


def read_jsonl_objects(path: str | Path, *, what: str, tolerate_torn_tail: bool = False) -> list[tuple[int, dict]]:
    """``(line, object)`` of every non-empty line of a JSONL file whose lines must be JSON objects:
    the one strict line reader the typed readers build on. A missing file, a folder, bad UTF-8, bad
    JSON or a line that is not an object is one DataError naming the file (and line). ``what``
    names the file's kind in the not-found message. ``tolerate_torn_tail``: only for logs that a
    kill may leave with a torn last line (see :func:`sumrl.utils.io.iter_jsonl_file`)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{what} file not found", file=str(p))
    out = []
    for i, r in iter_jsonl_file(p, tolerate_torn_tail=tolerate_torn_tail):
        if not isinstance(r, dict):
            raise DataError("expected a JSON object", file=str(p), line=i)
        out.append((i, r))
    return out


def _number_or_null(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def read_predictions(path: str | Path, *, require_references: bool = True,
                     require_document: bool = False) -> list[dict]:
    """Read and check a predictions file (or the ``predictions.jsonl`` of a run folder); any problem
    is one DataError naming file, line and field.

    Checked here, before any scoring, so that nothing fails after minutes of work: types of every
    field that is read (``prediction``, ``raw_prediction``, ``document``, ``query``, ``system``,
    ``references``, ``metrics``), unique ids (pairing across systems is by id, in ``sumrl report``
    and ``sumrl human``), valid Unicode. Normalised on the way: ``references`` always a list
    (``summary`` is accepted for it, as in input data), ``document`` ``""`` when null or absent,
    ``id`` kept as written. ``require_references=False`` for rows of ``sumrl summarize`` (no
    references needed to rate them); ``require_document`` where the document is shown.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "predictions.jsonl"
    rows = []
    seen: dict[str, int] = {}
    for i, r in read_jsonl_objects(p, what="predictions"):
        for k in ("id", "prediction"):
            if k not in r:
                raise DataError("missing field", file=str(p), line=i, field=k)
        rid = r["id"]
        if isinstance(rid, bool) or not isinstance(rid, (str, int)):
            raise DataError(f"must be a string or an integer, got {type(rid).__name__}", file=str(p), line=i,
                            field="id")
        key = str(rid)
        if key in seen:
            raise DataError(f"duplicate id {key!r} (first on line {seen[key]})", file=str(p), line=i, field="id")
        seen[key] = i
        for k, required in (("prediction", True), ("raw_prediction", False), ("document", require_document),
                            ("query", False), ("system", False)):
            v = r.get(k)
            if (v is None and not required) or isinstance(v, str):
                continue
            raise DataError(f"must be a string{'' if required else ' or null'}, got "
                            f"{'null' if v is None else type(v).__name__}", file=str(p), line=i, field=k)
        refs = r.get("references", r.get("summary"))
        if isinstance(refs, str):
            refs = [refs]
        if refs is None and not require_references:
            refs = []
        if (require_references and not refs) or not isinstance(refs, list) or not all(isinstance(x, str) for x in refs):
            raise DataError("needs reference summaries (a string or a list of strings)", file=str(p), line=i,
                            field="references")
        r["references"] = refs
        m = r.get("metrics")
        if m is not None:
            if not isinstance(m, dict):
                raise DataError("must be an object of metric: number", file=str(p), line=i, field="metrics")
            for name, v in m.items():
                if not _number_or_null(v):
                    raise DataError(f"must be a number or null, got {type(v).__name__}", file=str(p), line=i,
                                    field=f"metrics.{name}")
        if r.get("document") is None:
            r["document"] = ""
        if r.get("raw_prediction") is None:
            r.pop("raw_prediction", None)
        rows.append(r)
    if not rows:
        raise DataError("empty file", file=str(p))
    return rows


def read_run_metrics(path: str | Path) -> dict[str, Any]:
    """``metrics.json`` of an eval run folder (or the file itself): ``{"system": str | null, "n":
    int, "metrics": {name: {"mean", "ci_low", "ci_high"}}, ...}``; each value a number or null.
    One DataError naming the file and field otherwise."""
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.json"
    if not p.exists():
        raise DataError("metrics file not found", file=str(p))
    mj = read_json_file(p)
    if not isinstance(mj, dict) or not isinstance(mj.get("metrics"), dict):
        raise DataError('expected {"system", "n", "metrics": {...}}', file=str(p), field="metrics")
    for name, v in mj["metrics"].items():
        if not isinstance(v, dict) or "mean" not in v or not all(_number_or_null(v.get(k))
                                                                  for k in ("mean", "ci_low", "ci_high")):
            raise DataError('expected {"mean", "ci_low", "ci_high"} with numbers or null', file=str(p),
                            field=f"metrics.{name}")
    if mj.get("system") is not None and not isinstance(mj["system"], str):
        raise DataError("must be a string or null", file=str(p), field="system")
    n = mj.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int)):
        raise DataError("must be an integer", file=str(p), field="n")
    return mj


def read_metrics_log(path: str | Path, *, missing_ok: bool = True) -> list[dict]:
    """The rows of a training run's ``metrics.jsonl`` (written by
    :class:`sumrl.utils.logging.MetricLogger`): one object per logged step, ``{"step": int,
    "<namespace>/<name>": value, ...}``. A run still going (or killed mid-append) may end in a torn
    line: dropped with a notice. Missing file: ``[]`` (``missing_ok``) or a DataError."""
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.jsonl"
    if not p.exists() and missing_ok:
        return []
    return [r for _, r in read_jsonl_objects(p, what="metrics log", tolerate_torn_tail=True)]
