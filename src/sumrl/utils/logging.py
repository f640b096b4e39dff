"""Metric logging: namespaced scalars (``train/loss``, ``objective/kl``) to JSONL, CSV and
TensorBoard, plus sample tables. Appends, so a resumed run continues the same files; rows with a
step at or beyond the resume point are dropped on resume so no step is logged twice."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any


class MetricLogger:
    def __init__(self, out_dir: str | Path, *, tensorboard: bool = True, resume_step: int | None = None):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.dir / "metrics.jsonl"
        self.csv = self.dir / "metrics.csv"
        self.samples = self.dir / "samples.jsonl"
        if resume_step is not None:
            self._truncate_after(resume_step)
        elif self.jsonl.exists():  # fresh run into an old folder: start clean
            for p in (self.jsonl, self.csv, self.samples):
                if p.exists():
                    p.unlink()
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.dir / "tensorboard"))
            except Exception:  # noqa: BLE001 - tensorboard is optional
                self._tb = None

    def _truncate_after(self, step: int) -> None:
        for p in (self.jsonl, self.samples):
            if p.exists():
                keep = [l for l in p.read_text(encoding="utf-8").splitlines() if l.strip() and json.loads(l).get("step", 0) <= step]
                p.write_text("".join(l + "\n" for l in keep), encoding="utf-8")
        if self.jsonl.exists():
            self._rewrite_csv()

    def _rewrite_csv(self) -> None:
        rows = [json.loads(l) for l in self.jsonl.read_text(encoding="utf-8").splitlines() if l.strip()]
        keys: list[str] = []
        for r in rows:
            keys += [k for k in r if k not in keys]
        with open(self.csv, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            for r in rows:
                w.writerow(r)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        row = {"step": step}
        for k, v in metrics.items():
            if hasattr(v, "item"):
                v = v.item()
            row[k] = v
        with open(self.jsonl, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        # CSV columns can grow (new metrics appear later): rewrite when the header changes
        header = None
        if self.csv.exists():
            with open(self.csv, encoding="utf-8") as f:
                header = next(csv.reader(f), None)
        if header is None or any(k not in header for k in row):
            self._rewrite_csv()
        else:
            with open(self.csv, "a", newline="", encoding="utf-8") as f:
                csv.DictWriter(f, fieldnames=header).writerow(row)
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()

    def log_samples(self, rows: list[dict], step: int) -> None:
        with open(self.samples, "a", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps({"step": step, **r}, ensure_ascii=False) + "\n")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | Path) -> list[dict]:
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.jsonl"
    if not p.exists():
        return []
    return [json.loads(l) for l in p.read_text(encoding="utf-8").splitlines() if l.strip()]
