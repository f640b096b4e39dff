"""Pieces every training loop shares (SFT, RL): the seeded step sampler and the publishing of a
trained model into its run folder. The SFT engine (:mod:`sumrl.training.sft`) and the RL trainer
(:mod:`sumrl.rl.trainer`) both import them from here, never from each other."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sumrl.utils.seeds import EPOCH_ORDER, derive_seed


class StepSampler:
    """Sequence indices of each optimizer step: epoch ``e`` visits a permutation seeded by
    ``derive_seed(seed, purpose, e)``; step ``s`` takes global positions ``[s * B, (s + 1) * B)`` of
    the endless concatenation of epochs (a step may straddle two epochs)."""

    def __init__(self, n: int, batch_size: int, seed: int, purpose: str = EPOCH_ORDER):
        self.n, self.batch_size, self.seed, self.purpose = n, batch_size, seed, purpose
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        import torch

        if epoch not in self._perms:
            g = torch.Generator().manual_seed(derive_seed(self.seed, self.purpose, epoch))
            self._perms = {epoch: torch.randperm(self.n, generator=g).tolist()}  # keep one epoch
        return self._perms[epoch]

    def indices(self, step: int) -> list[int]:
        out = []
        for p in range(step * self.batch_size, (step + 1) * self.batch_size):
            out.append(self._perm(p // self.n)[p % self.n])
        return out

    def epoch_at(self, step: int) -> float:
        return step * self.batch_size / self.n



def publish_model(model: Any, tokenizer: Any, out: Path, *, base_spec: str, extra: dict,
                  state_dict: dict | None = None) -> None:
    """Save the model/adapter so that ``--model OUT`` loads it, next to the run's other files.

    ``save_model`` writes a whole folder atomically, but OUT also holds checkpoints and metrics,
    so the model is saved into a staging folder inside OUT and its files are then moved up one by
    one (each ``os.replace`` is atomic); ``sumrl_model.json`` goes last, listing the files.
    """
    import os
    import shutil

    from sumrl.models.loading import SUMRL_MODEL_FILE, read_model_meta, save_model

    staging = out / ".model-staging"
    save_model(model, tokenizer, staging, base_spec=base_spec, extra=extra, state_dict=state_dict)
    files = sorted(p.name for p in staging.iterdir() if p.is_file() and p.name != SUMRL_MODEL_FILE)
    meta = read_model_meta(staging)
    meta["files"] = files
    from sumrl.utils.faults import kill_point

    for i, name in enumerate(files):
        os.replace(staging / name, out / name)
        if i == 0:
            kill_point("publish-mid")
    from sumrl.utils.io import write_json

    write_json(out / SUMRL_MODEL_FILE, meta)
    shutil.rmtree(staging, ignore_errors=True)
