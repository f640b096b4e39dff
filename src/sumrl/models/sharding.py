"""Models sharded with FSDP2 (``accelerate launch`` with recipes/accelerate/fsdp2.yaml) or DeepSpeed ZeRO-3
(recipes/accelerate/deepspeed_zero3.yaml): whole parameters gathered around a call or for saving, and LoRA
switched off for the reference pass without touching ``requires_grad``. Used by the trainers and the rollout engine; apart from
:func:`no_split_modules` (read by every module that wraps a model), nothing here runs without a
sharded model."""

from __future__ import annotations

from typing import Any

from torch import Tensor


def no_split_modules(model: Any) -> list[str] | None:
    """The model's transformer-layer classes (``_no_split_modules``, read through a peft wrapper), for a
    module that wraps it: Accelerate's FSDP transformer wrap policy reads them from the module it
    prepares, and without them the whole model would be one shard unit, gathered whole for every
    forward (recipes/accelerate/fsdp2.yaml asks for each layer its own unit)."""
    return list(getattr(model, "_no_split_modules", None) or []) or None


def _fsdp_units(model: Any) -> list:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def shard_units(model: Any) -> int:
    """How many FSDP units ``model`` is sharded into (the root and, with the transformer wrap policy,
    one per decoder layer): each is gathered whole only around its own forward and backward."""
    return len(_fsdp_units(model))


class full_weights:
    """``with full_weights(model, on):`` every FSDP unit of ``model`` gathers its parameters (a
    collective: every process enters it at the same point), so that ``named_parameters`` gives whole
    tensors -- for checkpoints, the published model, and generation on an inner module (whose calls
    skip the root unit's hooks). Off: nothing happens."""

    def __init__(self, model: Any, on: bool = True, *, root_only: bool = False):
        # root_only: the root unit's own parameters (the layers' units gather theirs in their hooks)
        self.units = ([model] if root_only else _fsdp_units(model)) if on else []
        self.root = model if on else None

    def __enter__(self):
        if self.root is not None:
            root_initialized(self.root)
        for m in self.units:
            m.unshard()
        return self

    def __exit__(self, *exc):
        for m in reversed(self.units):
            m.reshard()
        return False


def root_initialized(model: Any) -> None:
    """FSDP2 picks its root unit lazily, at the first forward, as the first unit to run one. Calls
    into the inner model (generation, validation) reach the decoder layers' units first, which would
    then each claim to be a root and the next forward through the real root fails ("requires
    running forward through the root module first"): initialise the root before any such call (a
    no-op once done; torch has no public call for it)."""
    state = model._get_fsdp_state()
    state._lazy_init()


def whole_tensor(t: Tensor) -> Tensor:
    """A sharded (DTensor) tensor gathered whole, or a plain one, as a detached CPU copy with its own
    storage (a gathered tensor may be a view of a collective's buffer)."""
    t = t.full_tensor() if hasattr(t, "full_tensor") else t
    return t.detach().cpu().clone().contiguous()


class lora_bypassed:
    """LoRA adapters off for the reference pass under FSDP, *without* touching ``requires_grad``:
    peft's ``disable_adapter`` freezes and re-enables the adapter weights, but FSDP2 keeps the
    gathered (unsharded) copies of parameters from one forward to the next, so the re-enabled flag
    never reaches them and the next update finds nothing to train. The adapter layers' own switch
    (``_disable_adapters``, read by every LoRA layer's forward) is flipped instead."""

    def __init__(self, model: Any):
        from peft.tuners.lora import LoraLayer

        self.layers = [m for m in model.modules() if isinstance(m, LoraLayer)]

    def __enter__(self):
        self.saved = [m._disable_adapters for m in self.layers]
        for m in self.layers:
            m._disable_adapters = True
        return self

    def __exit__(self, *exc):
        for m, s in zip(self.layers, self.saved):
            m._disable_adapters = s
        return False


class zero3_gathered:
    """``with zero3_gathered(params, on):`` the DeepSpeed ZeRO-3 partitioned ``params`` gathered whole on every
    process (``deepspeed.zero.GatheredParameters``, a collective: every process enters it at the same point), for
    code that reads weights outside a forward -- checkpoints, the published model, finiteness checks.
    ``modify``: what is written into them inside is kept (rank 0's copy is partitioned again on exit; every
    process writes the same values). Off, or no ZeRO-3 parameter among them: nothing happens."""

    def __init__(self, params: Any, on: bool = True, *, modify: bool = False):
        params = [p for p in params if hasattr(p, "ds_id")] if on else []
        self.ctx = None
        if params:
            import deepspeed

            self.ctx = deepspeed.zero.GatheredParameters(params, modifier_rank=0 if modify else None)

    def __enter__(self):
        if self.ctx is not None:
            self.ctx.__enter__()
        return self

    def __exit__(self, *exc):
        if self.ctx is not None:
            return self.ctx.__exit__(*exc)
        return False


def whole_numel(p: Any) -> int:
    """A parameter's whole number of elements (a ZeRO-3 placeholder's own ``numel()`` is 0)."""
    return int(getattr(p, "ds_numel", None) or p.numel())
