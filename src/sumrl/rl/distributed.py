"""Data-parallel RL: which rows each process owns, and how the per-process parts of one outer step
are put back together so that N processes compute what one process computes with the same global
batch.

The scheme (``sumrl.rl.trainer.train`` calls these at its stage boundaries):

* **# 1 generate, # 3 score, # 4 forward** are per process: rank ``r`` takes the ``r``-th of ``N``
  equal contiguous blocks of the step's prompts (:func:`shard`; a prompt's group of ``G`` samples
  stays whole on one process) and samples, scores and runs the no-grad passes on its own rows.
* The parts are then **gathered** (:func:`sumrl.training.parallel.gather_parts`: ``all_gather_object`` of CPU tensors, a
  few ``B x T`` floats per step) and **concatenated in rank order** (:func:`concat_rollouts`,
  :func:`concat_rows`) into exactly the tensors one process would have built (tested equal to
  ``collate`` of all episodes). Everything that spans the batch -- KL, reward/advantage whitening,
  group baselines, the advantage std kept for reference batches, the KL stop, every logged metric --
  is then computed by the unchanged pure functions of :mod:`sumrl.rl.rollout` on that global batch,
  identically on every process (a gather is exact: no floating-point reduction order to differ).
* **# 6 update**: every process holds the global :class:`~sumrl.rl.trajectory.TrainBatch`, draws the
  same group shuffle, cuts the same mini-batches and computes the mini-batch's exact loss normaliser
  (``batch_normalizer`` over the *global* mini-batch); it then runs the micro-batches of its own
  block of each mini-batch (:func:`shard`) and back-propagates ``loss * N``: Accelerate's DDP /
  FSDP / DeepSpeed *average* gradients over processes, so the optimizer sees the global mini-batch's
  gradient. Per-process metric sums are added up with :func:`sumrl.training.parallel.reduce_sums`.

Every process must run the same number of forward/backward passes (DDP all-reduces on each
backward; FSDP all-gathers on each forward): hence the equal blocks, checked once by
:func:`check_divisible`.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from sumrl.errors import ConfigError
from sumrl.training.parallel import gather_parts


def shard(items: Sequence[Any], rank: int, world: int) -> list[Any]:
    """The ``rank``-th of ``world`` equal contiguous blocks of ``items`` (in order, so concatenating
    the blocks of ranks ``0..world-1`` gives ``items`` back)."""
    n = len(items)
    if n % world:
        raise ValueError(f"{n} items do not split into {world} equal blocks")
    k = n // world
    return list(items[rank * k:(rank + 1) * k])


def check_divisible(*, batch_size: int, group_size: int, mini_batch_size: int | None, world: int) -> None:
    """One line naming the flag when the step does not split into equal per-process blocks."""
    if world <= 1:
        return
    if batch_size % world:
        raise ConfigError(f"--batch-size {batch_size} must be a multiple of the number of processes ({world}): "
                          f"each process samples an equal share of the step's prompts")
    n = batch_size * group_size
    mb = min(mini_batch_size or n, n)
    if mb % world:
        raise ConfigError(f"--mini-batch-size {mb} must be a multiple of the number of processes ({world}): "
                          f"each process trains on an equal share of every mini-batch")


def step_seed(seed: int, step: int, rank: int) -> int:
    """The sampling seed of ``rank`` at ``step`` when several processes run: different on every
    process (else all would draw the same samples for their different prompts... and the same
    decisions), a pure function of the run seed and the step, so a run is reproducible and
    ``--resume`` continues it with any number of processes."""
    from sumrl.utils.seeds import SAMPLING, derive_seed

    return derive_seed(seed, f"{SAMPLING}-rank{rank}", step)


# ------------------------------------------------------------------------------- concatenation
def _pad_to(t: Tensor, width: int, value: float | int, *, left: bool = False) -> Tensor:
    extra = width - t.shape[1]
    if extra <= 0:
        return t
    pad = torch.full((t.shape[0], extra), value, dtype=t.dtype)
    return torch.cat([pad, t] if left else [t, pad], dim=1)


def concat_rows(parts: Sequence[Tensor | None], *, value: float | int = 0) -> Tensor | None:
    """``(B_r, T_r)`` per process -> ``(sum B_r, max T_r)``, right-padded with ``value``; 1-D tensors
    are concatenated; ``None`` parts (a pass that was not run) give ``None``."""
    if any(p is None for p in parts):
        if not all(p is None for p in parts):
            raise ValueError("some processes ran a pass that others did not")
        return None
    if parts[0].dim() == 1:
        return torch.cat(list(parts), dim=0)
    width = max(p.shape[1] for p in parts)
    return torch.cat([_pad_to(p, width, value) for p in parts], dim=0)


def concat_rollouts(parts: Sequence[Any], pad_id: int) -> Any:
    """The :class:`~sumrl.rl.trajectory.Rollout` of all processes' episodes in rank order: prompts
    left-padded and responses right-padded to the widest, as ``collate`` of all episodes makes it."""
    from dataclasses import replace

    if len(parts) == 1:
        return parts[0]
    kinds = {(p.kind, p.critic) for p in parts}
    if len(kinds) != 1:
        raise ValueError(f"processes built different kinds of batch: {sorted(kinds)}")
    lq = max(p.query_ids.shape[1] for p in parts)
    t = max(p.response_ids.shape[1] for p in parts)
    first = parts[0]
    return replace(first,
                   query_ids=torch.cat([_pad_to(p.query_ids, lq, pad_id, left=True) for p in parts]),
                   query_mask=torch.cat([_pad_to(p.query_mask, lq, 0, left=True) for p in parts]),
                   response_ids=torch.cat([_pad_to(p.response_ids, t, pad_id) for p in parts]),
                   response_mask=torch.cat([_pad_to(p.response_mask, t, 0) for p in parts]),
                   action_mask=torch.cat([_pad_to(p.action_mask, t, 0) for p in parts]),
                   value_mask=torch.cat([_pad_to(p.value_mask, t, 0) for p in parts]),
                   finished=torch.cat([p.finished for p in parts]),
                   groups=torch.cat([p.groups for p in parts]),
                   prefix_len=concat_rows([p.prefix_len for p in parts]),
                   episodes=tuple(e for p in parts for e in p.episodes))


def concat_scored(parts: Sequence[Any]) -> Any:
    from sumrl.rl.trajectory import Scored

    if len(parts) == 1:
        return parts[0]
    names = list(parts[0].components)
    return Scored(scores=concat_rows([p.scores for p in parts]), token_scores=concat_rows([p.token_scores for p in parts]),
                  totals=concat_rows([p.totals for p in parts]),
                  components={k: concat_rows([p.components[k] for p in parts]) for k in names})


def concat_passes(parts: Sequence[Any]) -> Any:
    from sumrl.rl.trajectory import PolicyPass

    if len(parts) == 1:
        return parts[0]
    return PolicyPass(logprobs=concat_rows([p.logprobs for p in parts]), entropy=concat_rows([p.entropy for p in parts]),
                      values=concat_rows([p.values for p in parts]),
                      ref_logprobs=concat_rows([p.ref_logprobs for p in parts]))


# --------------------------------------------------------------------------------- step gathering
def gather_step(accelerator: Any, rollout: Any, scored: Any, fwd: Any, pad_id: int) -> tuple[Any, Any, Any]:
    """The global ``(rollout, scored, fwd)`` of the step from each process's own rows."""
    if accelerator.num_processes == 1:
        return rollout, scored, fwd
    parts = gather_parts(accelerator, (rollout, scored, fwd))
    return (concat_rollouts([p[0] for p in parts], pad_id), concat_scored([p[1] for p in parts]),
            concat_passes([p[2] for p in parts]))
