"""Process-level pieces every data-parallel trainer shares (SFT, the reward models, RL) under
``accelerate launch`` / ``torchrun``: the Accelerator's arguments, the process state, collectives
that gather or sum per-process values, and the refusal of sharded launch configs. RL's own parts
(which rows a process owns, putting a step back together) are :mod:`sumrl.rl.distributed`."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sumrl.errors import ConfigError


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


def full_optimizer_state(model: Any, optimizer: Any) -> dict:
    """The optimizer state of a sharded ``model`` gathered whole, in the one-process format
    (``optimizer.state_dict()``: parameters numbered in the optimizer's order), so that a checkpoint
    written under FSDP resumes with any number of processes, sharded or not. A collective: every
    process calls it; the state comes back on the main process (``{}`` on the others).

    The gathering is torch's (``torch.distributed.checkpoint.state_dict.get_optimizer_state_dict``,
    full state, offloaded to the CPU); its parameters are named by their FQNs in ``model``, which
    are numbered back in the order its ``param_groups`` list them (the optimizer's own order)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    sd = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not sd:
        return {}
    pid = {n: i for i, n in enumerate(n for g in sd["param_groups"] for n in g["params"])}
    return {"state": {pid[n]: v for n, v in sd["state"].items()},
            "param_groups": [{**g, "params": [pid[n] for n in g["params"]]} for g in sd["param_groups"]]}


def load_whole_state(model: Any, optimizer: Any | None, weights: dict[str, Tensor], opt_state: dict | None) -> None:
    """Load a one-process checkpoint (whole trainable ``weights`` named as in ``model``; the
    optimizer state numbered in the optimizer's order) into a model and optimizer sharded by FSDP2.
    Every process reads the same whole tensors and keeps its own shard of each
    (``torch.distributed.checkpoint.state_dict.set_model_state_dict`` /
    ``set_optimizer_state_dict`` with ``full_state_dict``: ``distribute_tensor`` onto each
    parameter's mesh and placement). A collective: every process calls it."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    # strict=False: the checkpoint holds the trainable parameters only (a frozen base is reloaded)
    set_model_state_dict(model, dict(weights), options=StateDictOptions(full_state_dict=True, strict=False))
    if optimizer is None or opt_state is None:
        return
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    fqn = dict(enumerate(order))
    state = {"state": {fqn[int(i)]: v for i, v in opt_state["state"].items()},
             "param_groups": [{**g, "params": [fqn[int(i)] for i in g["params"]]} for g in opt_state["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
