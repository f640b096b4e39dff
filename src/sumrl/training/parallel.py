"""Process-level pieces every data-parallel trainer shares (SFT, the reward models, RL) under
``accelerate launch`` / ``torchrun``: the Accelerator's arguments, the process state, collectives
that gather or sum per-process values, FSDP2 checkpoints, and the DeepSpeed engine driven step by
step (ZeRO-2; what does not run under it stops with one line). RL's own parts
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


def deepspeed_requested() -> bool:
    """Whether the run was launched with a DeepSpeed config (``accelerate launch --config_file
    recipes/accelerate/deepspeed_zero*.yaml`` sets ``ACCELERATE_USE_DEEPSPEED``)."""
    import os

    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() in ("true", "1")


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


# --------------------------------------------------------------------------------- DeepSpeed
# sumrl drives the DeepSpeed engine itself instead of through ``accelerator.backward``: Accelerate's
# wrapper runs the engine's whole step (clip, AdamW, zero-grad) inside the last micro-batch's
# backward, while sumrl checks the loss and the gradient norm *before* the step, normalises by the
# exact token count of the step over a varying number of micro-batches, and steps its own LR
# scheduler. What is kept from DeepSpeed: its gradient reduction and partitioning (ZeRO-2), its
# clipping for SFT and RM (same formula as torch's, one global norm; RL clips policy and critic
# separately itself, :func:`deepspeed_clip_grad_norms`) and its optimizer step on the partitions.


def make_accelerator(**kwargs: Any) -> Any:
    """``Accelerator(**kwargs)`` (see :func:`accelerator_kwargs`), with DeepSpeed in place when the run
    was launched with a DeepSpeed config. Accelerate maps every run without a GPU to ``MULTI_CPU`` and
    silently drops a DeepSpeed config there (it only joins a DeepSpeed group on an accelerator); on
    the CPU this puts the DeepSpeed plugin Accelerate read from the launcher's environment in place
    on the gloo group, after which ``prepare`` calls ``deepspeed.initialize`` as it does on GPUs
    (DeepSpeed picks its CPU accelerator, gloo for communication). With one process nothing changes."""
    from accelerate import Accelerator, PartialState
    from accelerate.utils import DeepSpeedPlugin, DistributedType

    if deepspeed_requested():
        _require_deepspeed()  # one line, before Accelerate's own ImportError
    acc = Accelerator(**kwargs)
    if deepspeed_requested() and acc.num_processes > 1 and acc.distributed_type == DistributedType.MULTI_CPU:
        plugin = DeepSpeedPlugin()  # read from the environment accelerate launch set (zero stage, clipping...)
        plugin.set_mixed_precision(acc.state._mixed_precision)
        plugin.select(_from_accelerator_state=True)
        # both shared states, as Accelerate's own DeepSpeed launch leaves them (every later AcceleratorState()
        # copies the process state's distributed type over its own)
        PartialState().distributed_type = DistributedType.DEEPSPEED
        acc.state.distributed_type = DistributedType.DEEPSPEED
        acc.state.deepspeed_plugins = plugin
        acc.state._mixed_precision = "no"  # as AcceleratorState does under DeepSpeed (the engine casts, if asked)
    elif deepspeed_requested() and acc.num_processes == 1 and not is_deepspeed(acc) and acc.is_main_process:
        from sumrl.utils.console import get_logger

        get_logger(__name__).info("launched with a DeepSpeed config in one process without a GPU: nothing to "
                                  "partition, running without DeepSpeed")
    return acc


def _require_deepspeed() -> None:
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise ConfigError("launched with a DeepSpeed config, but DeepSpeed is not installed: see docs/scale.md "
                          "(\"DeepSpeed install\") for the install steps, or launch with recipes/accelerate/fsdp2.yaml")


def is_deepspeed(accelerator: Any) -> bool:
    """Whether ``prepare`` wraps models in a DeepSpeed engine (recipes/accelerate/deepspeed_zero*.yaml)."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def zero_stage(accelerator: Any) -> int:
    """The ZeRO stage of a DeepSpeed run (0 when not under DeepSpeed)."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None) if is_deepspeed(accelerator) else None
    return int(plugin.zero_stage) if plugin is not None else 0


def is_zero3(accelerator: Any) -> bool:
    """Whether the run is under DeepSpeed ZeRO-3 (recipes/accelerate/deepspeed_zero3.yaml): parameters partitioned,
    every forward and backward gathers them layer by layer (collectives), whole weights only inside
    :func:`sumrl.models.sharding.zero3_gathered`."""
    return zero_stage(accelerator) == 3


def check_deepspeed(accelerator: Any, command: str) -> None:
    """One line for what sumrl does not run under DeepSpeed: a ZeRO stage other than 1-3, DeepSpeed's own mixed
    precision, optimizer/scheduler sections and CPU offload. Call only when :func:`is_deepspeed`."""
    plugin = accelerator.state.deepspeed_plugin
    ds = plugin.deepspeed_config
    stage = int(plugin.zero_stage)
    where = "recipes/accelerate/deepspeed_zero2.yaml or deepspeed_zero3.yaml; see docs/scale.md"
    if stage not in (1, 2, 3):
        raise ConfigError(f"sumrl {command} runs under DeepSpeed ZeRO-1/2/3 only, not ZeRO-{stage}: use {where}")
    for key in ("fp16", "bf16"):
        if str(ds.get(key, {}).get("enabled", False)).lower() == "true":
            raise ConfigError(f"sumrl {command} under DeepSpeed needs mixed_precision: 'no' in the Accelerate config "
                              f"(DeepSpeed's {key} keeps {key} weights; sumrl keeps fp32 weights and casts its own "
                              f"compute with --bf16): {where}")
    for key in ("optimizer", "scheduler"):
        if key in ds:
            raise ConfigError(f"sumrl {command} under DeepSpeed uses its own AdamW and LR schedule: remove the "
                              f"'{key}' section from the DeepSpeed config ({where})")
    zero = ds.get("zero_optimization", {})
    for key in ("offload_optimizer", "offload_param"):
        if str(zero.get(key, {}).get("device", "none")).lower() not in ("none", ""):
            raise ConfigError(f"sumrl {command} under DeepSpeed does not offload ({key} must be none: its step runs "
                              f"DeepSpeed's own CPU Adam, not sumrl's AdamW): {where}")


def prepare_deepspeed(accelerator: Any, module: Any, optimizer: Any, *, max_grad_norm: float) -> tuple[Any, Any]:
    """``accelerator.prepare(module, optimizer)`` under DeepSpeed: the engine and its optimizer. The
    engine's settings that sumrl owns are set first: its clipping is sumrl's ``--max-grad-norm`` (0:
    none), one nominal micro-batch per process and no accumulation (sumrl marks the accumulation
    boundary itself and the engine does not divide the loss: :func:`deepspeed_backward`); the config's
    own values of these are not used. The LR scheduler stays sumrl's, built on the torch optimizer
    (DeepSpeed steps that optimizer on its partitions, keeping its ``param_groups``)."""
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    ds["gradient_clipping"] = float(max_grad_norm) if max_grad_norm > 0 else 0.0
    ds["train_micro_batch_size_per_gpu"] = 1
    ds["gradient_accumulation_steps"] = 1
    ds["train_batch_size"] = accelerator.num_processes
    ds["zero_allow_untested_optimizer"] = True  # a torch AdamW (DeepSpeed's fused Adam needs CUDA)
    return accelerator.prepare(module, optimizer)


def max_over_processes(accelerator: Any, n: int) -> int:
    """The largest ``n`` of all processes. Under ZeRO-2 every backward pass reduces gradients, under
    FSDP2 every forward and backward gathers or reduces (collectives), so every process must make as
    many as the busiest one: the others add idle passes (a forward and a backward of ``0 x`` a loss,
    which add exact zeros to the gradients)."""
    return max(gather_parts(accelerator, int(n)))


def lockstep(accelerator: Any, parts: list, *, collective: bool) -> list[tuple[Any, bool]]:
    """The passes of one step's micro-batches ``parts`` as ``(part, idle)`` pairs. When every forward or
    backward is a ``collective`` (FSDP2: each shard unit all-gathers its parameters in forward and
    reduce-scatters its gradients in backward, no-grad passes included; ZeRO-2: each backward reduces
    gradients), every process makes as many passes as the busiest (:func:`max_over_processes`), while
    packing and token budgets give each process its own count. The extra passes repeat the last part
    and are marked ``idle``: the caller runs them exactly like the others (the same modules and
    outputs, so the same parameters take part in every collective) and drops their results, or
    back-propagates ``0 x`` their loss (exact zeros added to the gradients). Otherwise ``(part, False)``
    for each part, without a collective."""
    if not parts:
        raise ValueError("lockstep needs at least one micro-batch per process (an idle pass repeats one)")
    n = max_over_processes(accelerator, len(parts)) if collective else len(parts)
    return [(parts[min(k, len(parts) - 1)], k >= len(parts)) for k in range(n)]


def deepspeed_backward(engine: Any, loss: Any, *, boundary: bool) -> None:
    """Back-propagate one micro-batch's ``loss`` through the engine, unscaled (``scale_wrt_gas=False``:
    sumrl's losses already carry the step's exact normaliser). ``boundary``: the last micro-batch
    before the optimizer step, where ZeRO finishes reducing the gradients into each process's
    partition (ZeRO-2 also reduces on the others; the sum is the same)."""
    engine.set_gradient_accumulation_boundary(boundary)
    engine.backward(loss, scale_wrt_gas=False)


def deepspeed_grad_norm(engine: Any) -> float:
    """The global gradient norm over every process's partition, before the step (a collective): what
    the engine's step clips by, and what sumrl checks before letting the step reach the weights.
    DeepSpeed reports a non-finite norm as -1 (``mask_nan_or_inf_with_val_inplace``); returned as
    ``inf`` here so that the divergence check sees it."""
    import math

    opt = engine.optimizer
    if hasattr(opt, "scaled_global_norm"):  # ZeRO-1/2
        norm = float(opt.scaled_global_norm())
    elif hasattr(opt, "_get_norm_groups"):  # ZeRO-3: what its step() computes, in the same two calls
        from deepspeed.runtime.utils import combine_grad_norm_groups

        norm = float(combine_grad_norm_groups(opt._get_norm_groups()))
    else:
        raise ConfigError("this DeepSpeed version's ZeRO optimizer has neither scaled_global_norm() (ZeRO-1/2) nor "
                          "_get_norm_groups() (ZeRO-3): see docs/scale.md for the DeepSpeed version sumrl was tested with")
    norm = norm / float(getattr(opt, "loss_scale", 1.0) or 1.0)
    return norm if norm >= 0 and math.isfinite(norm) else math.inf


def deepspeed_clip_grad_norms(engine: Any, groups: dict[str, list[Any]], max_norm: float) -> dict[str, float]:
    """Clip each group of parameters (``{"policy": [...], "critic": [...]}``) by its own gradient norm,
    as ``torch.nn.utils.clip_grad_norm_`` on each group does in one process, on a ZeRO engine whose
    own clipping is off (``prepare_deepspeed(max_grad_norm=0)``); call after the boundary backward,
    before :func:`deepspeed_step`. Returns each group's norm before clipping (``inf`` when not finite:
    nothing is then scaled, the caller stops the run). A collective: every process calls it.

    DeepSpeed clips one global norm. Here, each process holds the averaged gradients of its own
    partition (the ZeRO optimizer's ``averaged_gradients[i]``: one tensor per parameter of
    ``params_in_partition[i]`` -- the whole gradient or the slice that falls in the partition -- plus
    zero padding, the pairing DeepSpeed's own ``get_grad_norm_direct`` uses); every element belongs to
    exactly one parameter, so the per-group sums of squares over the partitions, summed over the
    processes (one all-reduce), are the groups' squared norms. Each slice is then multiplied in place by
    its group's factor ``min(1, max_norm / (norm + 1e-6))`` (torch's formula); the engine's step copies
    these slices into its flat fp32 gradient and steps AdamW on them (with clipping off and no loss
    scale it does not rescale them)."""
    import math

    zero = engine.optimizer
    if _is_zero3_optimizer(zero):
        # ZeRO-3: averaged_gradients[i] holds this process's partition of the gradient of each parameter of sub-group
        # i (fp16_groups[i]; zeros past a parameter's end), the pairing its own get_grad_norm_direct uses; the step
        # flattens them into the sub-group's fp32 gradient, so scaling them in place before the step is clipping
        pairs = [(params, zero.averaged_gradients.get(i)) for i, params in enumerate(zero.fp16_groups)]
    elif not all(hasattr(zero, a) for a in ("averaged_gradients", "params_in_partition", "dp_process_group")):
        raise ConfigError("this DeepSpeed version's ZeRO optimizer does not expose its partitioned gradients "
                          "(averaged_gradients, params_in_partition): see docs/scale.md for the DeepSpeed version "
                          "sumrl was tested with")
    else:
        pairs = [(params, zero.averaged_gradients.get(i) if isinstance(zero.averaged_gradients, dict)
                  else zero.averaged_gradients[i]) for i, params in enumerate(zero.params_in_partition)]
    names = list(groups)
    owner = {id(p): k for k, name in enumerate(names) for p in groups[name]}
    slices: list[list[Tensor]] = [[] for _ in names]
    for params, grads in pairs:
        if grads is None:
            continue
        for g, p in zip((g for g in grads if not getattr(g, "_zero_padding", False)), params):
            if id(p) not in owner:
                raise ValueError("a parameter the engine trains is in none of the clipping groups")
            slices[owner[id(p)]].append(g)
    sq = torch.tensor([sum(float(torch.linalg.vector_norm(g.detach().float())) ** 2 for g in s) for s in slices],
                      dtype=torch.float64)
    torch.distributed.all_reduce(sq, group=zero.dp_process_group)
    norms = {name: math.sqrt(float(v)) if math.isfinite(float(v)) else math.inf for name, v in zip(names, sq)}
    if all(math.isfinite(n) for n in norms.values()) and math.isfinite(max_norm):
        for name, s in zip(names, slices):
            coef = min(1.0, max_norm / (norms[name] + 1e-6))
            if coef < 1.0:
                for g in s:
                    g.mul_(coef)
    return norms


def deepspeed_step(engine: Any) -> None:
    """The engine's optimizer step at the boundary marked by the last :func:`deepspeed_backward`:
    clipping to ``--max-grad-norm`` (DeepSpeed divides by ``max(1, (norm + 1e-6) / max_norm)``, the
    same factor as ``torch.nn.utils.clip_grad_norm_``), AdamW on each process's partition, the
    updated partitions gathered into every process's whole parameters, gradients zeroed."""
    engine.step()


def deepspeed_zero_grad(engine: Any) -> None:
    """Drop the accumulated gradients without stepping (a diverged step)."""
    engine.optimizer.zero_grad(set_to_none=True)


def deepspeed_optimizer_state(engine: Any, groups: list[list[Any]], torch_optimizer: Any) -> dict:
    """The AdamW state of a ZeRO engine gathered whole, in the one-process format
    (``optimizer.state_dict()``: parameters numbered in the order of ``groups``, the torch optimizer's
    param groups as built before ``prepare``), so that a checkpoint written under DeepSpeed resumes in
    one process, data-parallel or under FSDP2. Each parameter's moments come from DeepSpeed's own
    ``deepspeed.utils.safe_get_full_optimizer_state`` (a collective: every process calls it); the
    step count from the partition's state (one per group, the same for all its parameters).

    DeepSpeed 0.19.8 links each parameter to its slice of the partition's optimizer state once, right
    after the *first* group's first step, when the other groups have no state yet: their parameters
    then have no state to gather (``exp_avg not found in optimizer state fragment`` -- sumrl's AdamW
    has two groups, with and without weight decay). The links are made again here, for every group,
    with DeepSpeed's own ``lazy_init_hp_params_optimizer_state``."""
    from deepspeed.utils import safe_get_full_optimizer_state
    from deepspeed.utils.mixed_precision_linkage import lazy_init_hp_params_optimizer_state

    zero = engine.optimizer
    if _is_zero3_optimizer(zero):
        return _zero3_optimizer_state(zero, groups, torch_optimizer)
    for i, flat in enumerate(zero.single_partition_of_fp32_groups):
        if flat in zero.optimizer.state:
            lazy_init_hp_params_optimizer_state(zero.bit16_groups[i], flat, zero.optimizer.state)

    state: dict[int, dict] = {}
    out_groups = []
    i = 0
    for params, group in zip(groups, torch_optimizer.param_groups):
        flat = group["params"][0]  # ZeRO replaced the group's parameters by this process's flat partition
        part = torch_optimizer.state.get(flat, {})
        ids = []
        for p in params:
            if part:
                state[i] = {k: (safe_get_full_optimizer_state(p, k).detach().cpu().clone()
                                if torch.is_tensor(v) and v.shape == flat.shape else
                                (v.detach().cpu().clone() if torch.is_tensor(v) else v))
                            for k, v in part.items()}
            ids.append(i)
            i += 1
        out_groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": ids})
    return {"state": state, "param_groups": out_groups}


def deepspeed_load_state(engine: Any, groups: list[list[Any]], model: Any, path: Any) -> None:
    """Put a one-process checkpoint (``path``: whole trainable weights, AdamW state numbered in the
    order of ``groups``) into a freshly prepared ZeRO-1/2 engine, after :func:`load_checkpoint` copied
    the weights into the module's parameters (and restored the scheduler and RNG): the fp32 master
    copy of each parameter (DeepSpeed's ``safe_set_full_fp32_param``) and its AdamW state
    (``safe_set_full_optimizer_state``). A fresh engine has no AdamW state before its first step:
    each group's partition gets it here first, shaped as torch's AdamW makes it at a first step
    (zeros, the step count from the checkpoint), linked to the parameters with DeepSpeed's own
    ``lazy_init_hp_params_optimizer_state``. Every process loads its own partition (no collective)."""
    from pathlib import Path

    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state
    from deepspeed.utils.mixed_precision_linkage import lazy_init_hp_params_optimizer_state

    path = Path(path)
    weights = torch.load(path / "trainable.pt", map_location="cpu", weights_only=True)
    opt_state = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    names = {id(p): n for n, p in model.named_parameters()}
    order = [p for g in groups for p in g]  # the checkpoint's numbering
    for p in order:
        safe_set_full_fp32_param(p, weights[names[id(p)]].to(torch.float32))
    zero = engine.optimizer
    if _is_zero3_optimizer(zero):
        _zero3_load_optimizer_state(zero, groups, opt_state)
        return
    # the groups' hyperparameters (lr as the scheduler left it, ...), as torch's load_state_dict restores them:
    # the scheduler's own state does not touch the optimizer's lr
    for group, saved in zip(zero.optimizer.param_groups, opt_state["param_groups"]):
        group.update({k: v for k, v in saved.items() if k != "params"})
    first = 0
    for i, (params, flat) in enumerate(zip(groups, zero.single_partition_of_fp32_groups)):
        saved = opt_state["state"].get(first)
        if saved is not None:
            zero.optimizer.state[flat] = {k: (torch.zeros_like(flat) if torch.is_tensor(v) and v.dim() > 0 else
                                              v.clone() if torch.is_tensor(v) else v) for k, v in saved.items()}
            lazy_init_hp_params_optimizer_state(zero.bit16_groups[i], flat, zero.optimizer.state)
        first += len(params)
    for idx, p in enumerate(order):
        for k, v in opt_state["state"].get(idx, {}).items():
            if torch.is_tensor(v) and v.dim() > 0:
                safe_set_full_optimizer_state(p, v.to(torch.float32), k)


# ------------------------------------------------------------------------------------ ZeRO-3
# Under ZeRO-3 each parameter is a placeholder (``p.data`` empty) plus this process's partition (``p.ds_tensor``);
# the engine's hooks gather a module's parameters around its forward and backward (collectives: every process
# makes the same calls in the same order, hence :func:`lockstep` for no-grad passes too), and
# ``deepspeed.zero.GatheredParameters`` gathers them whole for code that reads weights outside a forward
# (checkpoints, the published model: :func:`sumrl.models.sharding.zero3_gathered`). The optimizer keeps an fp32
# master partition per param group (``fp32_partitioned_groups_flat``, a copy of the module's partitions: with
# ``mixed_precision: 'no'`` both are fp32, so gathered weights are exactly the master's).


class whole_model_construction:
    """``with whole_model_construction(accelerator):`` models built inside are built whole on every process, as in
    one process, also under ZeRO-3. Accelerate's DeepSpeed plugin registers its config with transformers, which then
    builds every ``from_pretrained`` model inside ``deepspeed.zero.Init`` under ZeRO-3 (partitioned at
    construction); that path runs transformers' weight initialisation, which draws from torch's generator, so
    the LoRA adapters created next (from the same seed) came out different from one process's (found by the
    2-process test: equal first loss, LoRA A off by 0.17 after 2 steps). Built whole, the model is partitioned by
    ``deepspeed.initialize`` (rank 0's values broadcast); the cost is one whole fp32 copy per process until then
    (docs/scale.md, "DeepSpeed ZeRO-3"). Outside ZeRO-3 nothing changes."""

    def __init__(self, accelerator: Any):
        self.plugin = accelerator.state.deepspeed_plugin if is_zero3(accelerator) else None

    def __enter__(self):
        if self.plugin is not None:
            forget_deepspeed_config()
        return self

    def __exit__(self, *exc):
        if self.plugin is not None:  # registered again: transformers' generate keeps ZeRO-3 processes in step
            self.plugin.set_deepspeed_weakref()
        return False


def deepspeed_inference_engine(accelerator: Any, module: Any) -> Any:
    """A frozen ``module`` (RL's full-weight reference) partitioned like the policy under ZeRO-3: a DeepSpeed engine of
    its own without optimizer, from a copy of the run's DeepSpeed config (TRL's ``prepare_deepspeed`` does the same;
    its bucket-size tuning is left out: it changes speed, not results). Each process keeps 1/N of the parameters;
    every forward gathers them layer by layer (a collective). Built whole first, on every process
    (:class:`whole_model_construction`)."""
    import copy

    import deepspeed

    cfg = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
    for key in ("optimizer", "scheduler"):
        cfg.pop(key, None)
    cfg.update(train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1,
               train_batch_size=accelerator.num_processes, gradient_clipping=0.0)
    engine, *_ = deepspeed.initialize(model=module, config=cfg)
    engine.eval()
    return engine


def forget_deepspeed_config() -> None:
    """Drop the DeepSpeed config an earlier run in this process registered with transformers (Accelerate's plugin
    does so; transformers then builds every model inside ``deepspeed.zero.Init`` under ZeRO-3), for a model built
    before this run's Accelerator: the reward model. Found by the 2-process test: an RM trained after a ZeRO-3 SFT
    run in the same launch scored its held-out data differently from one process (normalisation mean 0.144 vs
    0.245), alone in its launch it did not. The run's own Accelerator registers its config again."""
    try:
        from transformers.integrations import unset_hf_deepspeed_config
    except ImportError:  # pragma: no cover - transformers without its DeepSpeed integration
        return
    unset_hf_deepspeed_config()


def _is_zero3_optimizer(zero: Any) -> bool:
    return hasattr(zero, "fp32_partitioned_groups_flat") and hasattr(zero, "sub_group_to_group_id")


def _zero3_sub_groups(zero: Any, group: int) -> list[int]:
    """The ZeRO-3 sub-groups (each with its own flat fp32 partition and AdamW state) of torch param group ``group``."""
    return [sg for sg in range(len(zero.fp32_partitioned_groups_flat)) if zero.sub_group_to_group_id[sg] == group]


def _zero3_optimizer_state(zero: Any, groups: list[list[Any]], torch_optimizer: Any) -> dict:
    """:func:`deepspeed_optimizer_state` under ZeRO-3: each parameter's moments gathered with
    ``safe_get_full_optimizer_state`` (a collective), the step count from its sub-group's partition state (ZeRO-3
    empties the torch groups' ``params`` between steps, so the partitions are found through the optimizer's own
    sub-group table)."""
    from deepspeed.utils import safe_get_full_optimizer_state

    state: dict[int, dict] = {}
    out_groups = []
    i = 0
    for g, (params, group) in enumerate(zip(groups, torch_optimizer.param_groups)):
        subs = _zero3_sub_groups(zero, g)
        part = zero.optimizer.state.get(zero.fp32_partitioned_groups_flat[subs[0]], {}) if subs else {}
        ids = []
        for p in params:
            if part:
                state[i] = {k: (safe_get_full_optimizer_state(p, k).detach().cpu().clone()
                                if torch.is_tensor(v) and v.dim() > 0 else
                                (v.detach().cpu().clone() if torch.is_tensor(v) else v))
                            for k, v in part.items()}
            ids.append(i)
            i += 1
        out_groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": ids})
    return {"state": state, "param_groups": out_groups}


def _zero3_load_optimizer_state(zero: Any, groups: list[list[Any]], opt_state: dict) -> None:
    """The AdamW half of :func:`deepspeed_load_state` under ZeRO-3 (the fp32 master partitions are already set):
    the groups' hyperparameters, then each sub-group's partition state created as torch's AdamW makes it at a first
    step (zeros, the saved step count) and each parameter's slice of the moments set with
    ``safe_set_full_optimizer_state``."""
    from deepspeed.utils import safe_set_full_optimizer_state

    for group, saved in zip(zero.optimizer.param_groups, opt_state["param_groups"]):
        group.update({k: v for k, v in saved.items() if k != "params"})
    first = 0
    for g, params in enumerate(groups):
        saved = opt_state["state"].get(first)
        if saved is not None:
            for sg in _zero3_sub_groups(zero, g):
                flat = zero.fp32_partitioned_groups_flat[sg]
                zero.optimizer.state[flat] = {k: (torch.zeros_like(flat) if torch.is_tensor(v) and v.dim() > 0 else
                                                  v.clone() if torch.is_tensor(v) else v) for k, v in saved.items()}
        first += len(params)
    order = [p for g in groups for p in g]
    for idx, p in enumerate(order):
        for k, v in opt_state["state"].get(idx, {}).items():
            if torch.is_tensor(v) and v.dim() > 0:
                safe_set_full_optimizer_state(p, v.to(torch.float32), k)
