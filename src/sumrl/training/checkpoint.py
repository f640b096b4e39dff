"""Training-state checkpoints (shared by SFT and the RL trainers).

A checkpoint folder ``<root>/step-00000042/`` holds everything needed to continue *exactly* as
if the run had not stopped:

* ``trainable.pt``: the trainable parameters only (LoRA weights, or all weights for full
  fine-tuning; frozen base weights are reloaded from the base model),
* ``optimizer.pt`` / ``scheduler.pt``: AdamW moments and the LR schedule position,
* ``rng.pt``: Python, NumPy and torch (CPU and CUDA) generator states,
* ``state.json``: step, data position and any counters the trainer wants back (plus its config,
  so that a ``--resume`` with different settings can be refused).

Each folder is written through :func:`sumrl.utils.io.atomic_dir` (temporary sibling, then one
rename), and ``<root>/last`` (the name of the newest folder) is replaced atomically after it, so
a process killed at any moment leaves the previous checkpoint intact and ``last`` never points
to a half-written folder.
"""

from __future__ import annotations

import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sumrl.config import opt
from sumrl.errors import ConfigError, SumrlError
from sumrl.utils.io import atomic_dir, atomic_write_text, read_json_file, write_json


@dataclass
class RunOptions:
    """The options of a training run's logs and checkpoints, shared by every trainer's config (SFT,
    RL): what :func:`resume_point`, :func:`save_checkpoint` and the metric logger are told. A
    trainer may redeclare a field to change its default (RL checkpoints more often)."""

    log_every: int = opt(1, "log metrics every N steps")
    save_every: int = opt(50, "write a checkpoint every N steps (and at the end)")
    keep_checkpoints: int = opt(1, "checkpoints kept (the newest)")
    resume: bool = opt(False, "continue from the last checkpoint in --out")
    overwrite: bool = opt(False, "start over in an --out that already has checkpoints")
    progress: bool = opt(True, "show a progress bar with ETA")
    tensorboard: bool = opt(True, "also log to OUT/tensorboard")

    def check_run_options(self) -> None:
        for name in ("log_every", "save_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite exclude each other")


# RunOptions never change what a run computes: they may differ between a run and its --resume.
RUN_OPTIONS_RESUME_MUTABLE = frozenset({"log_every", "save_every", "keep_checkpoints", "resume", "overwrite",
                                        "progress", "tensorboard"})

LAST = "last"
_STEP_RE = re.compile(r"^step-(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def trainable_state_dict(model: Any) -> dict[str, Any]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _complete(d: Path) -> bool:
    return d.is_dir() and (d / "state.json").exists()


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), d) for d in root.iterdir() if (m := _STEP_RE.match(d.name)) and _complete(d)]
    return [d for _, d in sorted(found)]


def last_checkpoint(root: str | Path) -> Path | None:
    root = Path(root)
    ptr = root / LAST
    if ptr.exists():
        d = root / ptr.read_text(encoding="utf-8").strip()
        if _complete(d):
            return d
    found = list_checkpoints(root)  # pointer lost: the newest complete folder is still valid
    return found[-1] if found else None


def save_checkpoint(root: str | Path, step: int, *, model: Any, optimizer: Any | None, scheduler: Any | None = None,
                    state: dict | None = None, keep: int = 1) -> Path:
    """Write ``<root>/step-N`` atomically, point ``last`` at it, delete all but the ``keep`` newest."""
    import torch

    root = Path(root)
    target = root / checkpoint_name(step)
    from sumrl.utils.faults import kill_point

    with atomic_dir(target) as tmp:
        torch.save(trainable_state_dict(model), tmp / "trainable.pt")
        if optimizer is not None:  # None: weights only (e.g. the best-validation copy, never resumed from)
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        kill_point("checkpoint-mid-write")
        if scheduler is not None:
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        write_json(tmp / "state.json", {"step": step, **(state or {})})
    kill_point("checkpoint-before-last")
    atomic_write_text(root / LAST, target.name + "\n")
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        if old != target:
            shutil.rmtree(old, ignore_errors=True)
    return target


def load_checkpoint(path: str | Path, *, model: Any, optimizer: Any | None = None, scheduler: Any | None = None,
                    restore_rng: bool = True, sharded: bool = False, zero3: bool = False) -> dict:
    """Load a checkpoint into already-built objects; returns its ``state.json``.

    The trainable parameter names must match exactly (a LoRA checkpoint cannot be loaded into a
    fully trainable model, or one with another rank / other target modules). ``sharded``: ``model``
    and ``optimizer`` are sharded by FSDP2 and every process calls this (a collective): each keeps
    its shard of the whole tensors the checkpoint holds (:func:`sumrl.training.parallel.load_whole_state`),
    so a checkpoint resumes with any number of processes, sharded or not. ``zero3``: ``model``'s parameters are
    partitioned by DeepSpeed ZeRO-3 and every process calls this (a collective): the whole weights are written
    into the gathered parameters and partitioned again; the engine's fp32 master copy and AdamW state are
    :func:`sumrl.training.parallel.deepspeed_load_state`'s (``optimizer`` must be None).
    """
    import torch

    path = Path(path)
    if not _complete(path):
        raise SumrlError(f"{path}: not a complete checkpoint")
    saved = torch.load(path / "trainable.pt", map_location="cpu", weights_only=True)
    params = dict((n, p) for n, p in model.named_parameters() if p.requires_grad)
    if set(saved) != set(params):
        missing, extra = sorted(set(params) - set(saved)), sorted(set(saved) - set(params))
        raise SumrlError(f"{path}: checkpoint does not match the model's trainable parameters "
                         f"({len(missing)} missing, e.g. {missing[:2]}; {len(extra)} unexpected, e.g. {extra[:2]})")
    for n, p in params.items():  # a sharded parameter's shape is its whole shape (ZeRO-3: ds_shape)
        shape = getattr(p, "ds_shape", p.shape)
        if saved[n].shape != shape:
            raise SumrlError(f"{path}: parameter {n} has shape {tuple(saved[n].shape)}, model has {tuple(shape)}")
    opt_state = (torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
                 if optimizer is not None else None)
    if zero3:
        if optimizer is not None:
            raise ValueError("under ZeRO-3 the optimizer state is loaded by parallel.deepspeed_load_state")
        from sumrl.models.sharding import zero3_gathered

        with zero3_gathered(params.values(), modify=True), torch.no_grad():
            for n, p in params.items():
                p.copy_(saved[n].to(p.device, p.dtype))
    elif sharded:
        from sumrl.training.parallel import load_whole_state

        load_whole_state(model, optimizer, {n: saved[n].to(params[n].dtype) for n in params}, opt_state)
    else:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(saved[n].to(p.device, p.dtype))
        if optimizer is not None:
            optimizer.load_state_dict(opt_state)
    if scheduler is not None and (path / "scheduler.pt").exists():
        # LambdaLR pickles its (object) lambdas: our own file, so a full unpickle is fine.
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", map_location="cpu", weights_only=False))
    if restore_rng:
        set_rng_state(torch.load(path / "rng.pt", map_location="cpu", weights_only=False))
    return read_checkpoint_state(path)


def read_checkpoint_state(path: str | Path) -> dict[str, Any]:
    """A checkpoint's ``state.json`` (step, the run's config, the trainer's counters)."""
    return read_json_file(Path(path) / "state.json")


def resume_mismatches(saved_config: dict, cfg: Any, mutable: Any) -> list[str]:
    """The options of ``cfg`` (a dataclass) that differ from the checkpoint's saved config, except
    those in ``mutable`` (options that do not change what the steps already run computed); one
    "name: checkpoint X, now Y" per option. Options the checkpoint does not have are new: not compared."""
    import dataclasses

    now = dataclasses.asdict(cfg)
    return [f"{k}: checkpoint {saved_config.get(k)!r}, now {now[k]!r}" for k in now
            if k not in mutable and k in saved_config and saved_config[k] != now[k]]


# ---------------------------------------------------------------------------------------------
# Output-folder handling shared by the SFT and RL trainers.


def resume_point(out: Path, *, resume: bool, overwrite: bool, checkpoint_dir: str = "checkpoints",
                 clean: bool = True) -> Path | None:
    """The checkpoint to resume from (or None); refuses to clobber an earlier run silently.
    ``clean``: remove what killed writes left (only the process that writes the folder may: with
    several processes another one would delete the main process's writes in flight)."""
    from sumrl.errors import SumrlError

    ckpt = last_checkpoint(out / checkpoint_dir)
    if resume:
        if clean:
            _clean_killed_writes(out, checkpoint_dir)
        if ckpt is None:
            raise SumrlError(f"{out}: no checkpoint to resume from (run without --resume to start)")
        return ckpt
    if ckpt is not None and not overwrite:
        raise SumrlError(f"{out} has checkpoints of an earlier run: use --resume to continue it or --overwrite "
                         f"to start over")
    return None


def _clean_killed_writes(out: Path, checkpoint_dir: str) -> None:
    """Temporary folders of checkpoint writes that a kill interrupted (tens of MB each for a LoRA
    run) are never completed or read: remove them before resuming, and say so."""
    from sumrl.utils.io import clean_stale_tmp

    removed = clean_stale_tmp(out / checkpoint_dir) + clean_stale_tmp(out)
    if removed:
        from sumrl.utils.console import get_logger

        get_logger(__name__).warning(f"note: removed {len(removed)} unfinished temporary file(s)/folder(s) left by "
                                     f"an interrupted write in {out}")


def clear_previous_run(out: Path, run_files: tuple[str, ...], checkpoint_dir: str = "checkpoints") -> None:
    """Remove an earlier run's checkpoints, logs and published model files from ``out``
    (only files the earlier run listed in its sumrl_model.json, never anything else)."""
    import shutil

    from sumrl.models.loading import SUMRL_MODEL_FILE, read_model_meta

    shutil.rmtree(out / checkpoint_dir, ignore_errors=True)
    shutil.rmtree(out / "tensorboard", ignore_errors=True)
    meta = out / SUMRL_MODEL_FILE
    if meta.exists():
        try:
            files = read_model_meta(out).get("files", [])
        except SumrlError:  # unreadable: only the meta file itself is removed
            files = []
        for name in [*files, SUMRL_MODEL_FILE]:
            if "/" not in name and (out / name).is_file():
                (out / name).unlink()
    for name in run_files:
        if (out / name).exists():
            (out / name).unlink()
