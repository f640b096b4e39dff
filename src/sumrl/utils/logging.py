"""Metric logging: namespaced scalars (``train/loss``, ``objective/kl``) to JSONL, CSV and TensorBoard,
plus sample tables. Appends, so a resumed run continues the same files; rows with a step at or
beyond the resume point are dropped on resume so no step is logged twice."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

from sumrl.utils.io import atomic_write_text, iter_jsonl_file

# Every namespace a trainer logs, declared once: name -> (the trainers that log it, what it holds).
# MetricLogger refuses a key outside them; the report tells an RL log from an SFT log by them
# (docs/architecture.md, "Metric names").
NAMESPACES: dict[str, tuple[tuple[str, ...], str]] = {
    "train": (("sft", "rl"), "the optimizer step: loss (SFT), lr, grad_norm, tokens, epoch"),
    "time": (("sft", "rl"), "seconds per stage of a step"),
    "val": (("sft",), "SFT validation: loss on held-out references, generated ROUGE and lengths"),
    "objective": (("rl",), "RL objective: reward, scores, KL, entropy, RLHF reward"),
    "policy": (("rl",), "the policy update: losses, clip fraction, approximate KL, advantages"),
    "value": (("rl",), "the critic: loss, clip fraction, values, explained variance, grad_norm"),
    "rewards": (("rl",), "each reward component, and their total"),
    "completions": (("rl",), "sampled summaries: lengths, no-EOS rate, reference fraction"),
    "reference": (("rl",), "reference (guided) steps: log-ratio of the reference summaries"),
    "guide": (("rl",), "guided rollouts: roll-in / roll-out fractions, which critic"),
    "eval": (("rl",), "the held-out curve: reward and its components on val prompts"),
}


def namespace_of(key: str) -> str:
    return key.split("/", 1)[0] if "/" in key else ""


def trainer_of(keys: Any) -> str:
    """``"rl"`` when any key is in a namespace only RL logs, else ``"sft"`` when any key is in an
    SFT namespace, else ``"unknown"`` (read from :data:`NAMESPACES`, never from key names)."""
    owners = {NAMESPACES[ns][0] for ns in map(namespace_of, keys) if ns in NAMESPACES}
    if ("rl",) in owners:
        return "rl"
    if any("sft" in o for o in owners):
        return "sft"
    return "unknown"


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
        # A kill in the middle of an append leaves a torn last line: dropped with a notice (the
        # step it belonged to is redone after the checkpoint anyway).
        for p in (self.jsonl, self.samples):
            if p.exists():
                keep = [r for _, r in iter_jsonl_file(p, tolerate_torn_tail=True)
                        if not isinstance(r, dict) or _step_of(r) <= step]
                atomic_write_text(p, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in keep))
        if self.jsonl.exists():
            self._rewrite_csv()

    def _rewrite_csv(self) -> None:
        rows = [r for _, r in iter_jsonl_file(self.jsonl, tolerate_torn_tail=True) if isinstance(r, dict)]
        keys: list[str] = []
        for r in rows:
            keys += [k for k in r if k not in keys]
        with open(self.csv, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            for r in rows:
                w.writerow(r)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        undeclared = sorted({k for k in metrics if namespace_of(k) not in NAMESPACES})
        if undeclared:  # a programming error: every namespace is declared in NAMESPACES
            raise ValueError(f"metric key(s) outside the declared namespaces: {', '.join(undeclared)}")
        row = {"step": step}
        for k, v in metrics.items():
            if hasattr(v, "item"):
                v = v.item()
            row[k] = v
        _append_lines(self.jsonl, json.dumps(row) + "\n")
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
        _append_lines(self.samples,
                      "".join(json.dumps({"step": step, **r}, ensure_ascii=False) + "\n" for r in rows))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _step_of(row: dict) -> float:
    s = row.get("step", 0)
    return s if isinstance(s, (int, float)) and not isinstance(s, bool) else 0


def _append_lines(path: Path, text: str) -> None:
    """Append whole lines with one write, then flush and fsync: a kill leaves at most one torn
    last line (which readers drop), never a line interleaved with another."""
    from sumrl.utils import faults

    data = text.encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if faults.armed("log-mid-line"):  # what a kill in the middle of a write leaves
            os.write(fd, data[: len(data) // 2])
            os.fsync(fd)
            faults.die()
        view = memoryview(data)
        while view:  # os.write may write less than asked (signals, pipes)
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    except OSError as e:  # a full disk names no file: say which log it was
        if e.filename is None:
            e.filename = str(path)
        raise
    finally:
        os.close(fd)
