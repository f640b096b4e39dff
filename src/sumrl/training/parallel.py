"""Process-level pieces every data-parallel trainer shares (SFT, the reward models, RL) under
``accelerate launch`` / ``torchrun``: the Accelerator's arguments, the process state, collectives
that gather or sum per-process values, and the refusal of sharded launch configs. RL's own parts
(which rows a process owns, putting a step back together) are :mod:`sumrl.rl.distributed`."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sumrl.errors import ConfigError
from sumrl.models.sharding import whole_tensor


# --------------------------------------------------------------------------------- collectives
def gather_parts(accelerator: Any, obj: Any) -> list[Any]:
    """``obj`` of every process, in rank order (one process: ``[obj]``). Objects travel pickled
    (``torch.distributed.all_gather_object``); tensors in them must be on the CPU."""
    if accelerator.num_processes == 1:
        return [obj]
    from accelerate.utils import gather_object

    return list(gather_object([obj]))


def reduce_sums(accelerator: Any, values: dict[str, float]) -> dict[str, float]:
    """Per-key sums over processes (keys missing on a process count 0)."""
    if accelerator.num_processes == 1:
        return dict(values)
    parts = gather_parts(accelerator, dict(values))
    keys = sorted({k for p in parts for k in p})
    return {k: sum(p.get(k, 0.0) for p in parts) for k in keys}


def reduce_tensor_sum(accelerator: Any, t: Tensor) -> Tensor:
    """Element-wise sum over processes of a CPU tensor (each process filled its own rows, zeros
    elsewhere: the sum is exact)."""
    if accelerator.num_processes == 1:
        return t
    return sum(gather_parts(accelerator, t))


def accelerator_kwargs(*, find_unused: bool = False) -> dict[str, Any]:
    """``Accelerator(**kwargs)`` for the RL and reward-model trainers. Without a GPU, Accelerate
    joins the process group that ``torchrun`` / ``accelerate launch`` set up (gloo) only when told
    it runs on the CPU; otherwise every process would run the whole job alone into the same
    folder. ``find_unused``: some trainable parameters get no gradient in some steps (D2LOLS trains
    one of two value heads per step), which DDP must be told."""
    kw: dict[str, Any] = {"cpu": not _has_accelerator()}
    if find_unused:
        from accelerate.utils import DistributedDataParallelKwargs

        kw["kwargs_handlers"] = [DistributedDataParallelKwargs(find_unused_parameters=True)]
    return kw


def _has_accelerator() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return torch.cuda.is_available() or (mps is not None and mps.is_available())


def process_state() -> Any:
    """Accelerate's process state (rank, world size, main process), available before the models are
    built (the run folder is prepared by the main process only). The later ``Accelerator`` shares it."""
    from accelerate import PartialState

    return PartialState(cpu=not _has_accelerator())


def refuse_sharded(command: str) -> None:
    """One line instead of an Accelerate traceback when a run is launched with a DeepSpeed config
    (recipes/accelerate/deepspeed_zero*.yaml): no command runs under DeepSpeed yet (docs/scale.md says
    what was tried). FSDP2 (recipes/accelerate/fsdp2.yaml) runs in sft, rm and rl. On a CPU,
    Accelerate would even ignore the config silently and run data-parallel."""
    import os

    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() in ("true", "1"):
        raise ConfigError(f"sumrl {command} does not run under DeepSpeed yet (recipes/accelerate/deepspeed_zero*.yaml); "
                          f"launch it with recipes/accelerate/fsdp2.yaml (sharded) or recipes/accelerate/ddp.yaml "
                          f"(data-parallel) -- see docs/scale.md")


# ------------------------------------------------------------------------------------ FSDP2
def is_fsdp(accelerator: Any) -> bool:
    """Whether ``prepare`` shards models with FSDP (recipes/accelerate/fsdp2.yaml, N > 1)."""
    return accelerator.num_processes > 1 and getattr(accelerator.state, "fsdp_plugin", None) is not None


def full_optimizer_state(optimizer: Any) -> dict:
    """``optimizer.state_dict()`` with every sharded (DTensor) state gathered whole, in the same
    order on every process (a collective): the one-process format."""
    sd = optimizer.state_dict()
    state = {}
    for k in sorted(sd["state"]):
        state[k] = {n: whole_tensor(v) if isinstance(v, Tensor) else v for n, v in sorted(sd["state"][k].items())}
    return {**sd, "state": state}
