"""One prompt, many completions: run each prompt once per group, not once per sample.

Why: GRPO / RLOO draw ``G`` completions of the same prompt. The plain path
(:func:`sumrl.models.logprobs.model_hidden_states` over ``[prompt, response]`` rows) recomputes
the prompt ``G`` times in every forward pass -- at 4,096-token prompts and 64-token summaries that
is ~98% of the work, done four times. Here each prompt runs once (chunked if asked), its per-layer
keys/values are expanded to the group's ``G`` rows, and only the completions run against them.

Exactness: attention is causal, so the prompt's keys/values do not depend on what follows them;
the completion tokens see exactly the keys/values they would see in the concatenated row, with the
same position ids (``cumsum(mask) - 1``, 0 on padding, as ``generate()`` and
:func:`~sumrl.models.logprobs.model_hidden_states` use) and the same padding mask. With gradient
enabled the prompt's keys/values keep their graph, so the prompt's backward runs once with the sum
of the ``G`` completions' gradients -- the same sum the unshared path accumulates over ``G`` copies.
The result equals the unshared path up to float reassociation (tests/test_grouped.py: log-probs,
values and LoRA gradients to 1e-5 in float32).

Gradient checkpointing: transformers drops the KV cache inside checkpointed layers (a replay
would write it twice). The caches used here never grow during a replay -- the prompt cache is
sealed after the prompt pass and the completion pass only *reads* the prompt's keys/values -- so
the layers are allowed to keep them (``_can_checkpoint_with_cache``) for the duration of the call.

Memory: the prompt's activations exist once per group instead of ``G`` times; ``prefill_chunk``
(no-grad passes only) runs the prompt ``C`` tokens at a time against the growing cache, so no pass
ever holds more than ``C`` positions' MLP activations or ``C x L`` attention scores.

Not supported (ValueError): models with sliding-window layers shorter than the sequence (Gemma 3's
local layers would need a windowed prefix here).
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor

from sumrl.models.logprobs import IGNORE_INDEX, chunked_token_logprobs, find_decoder, output_head

__all__ = [
    "split_groups",
    "consecutive_groups",
    "position_ids_from_mask",
    "prefill",
    "grouped_response_hidden",
    "grouped_token_logprobs",
    "activation_checkpointing",
    "grad_tokens",
    "micro_batches",
    "checkpointing_wanted",
]


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """``(ids, mask)`` (P, max_len), left padding, as :func:`sumrl.generation.engine.sample` builds them."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):
        if len(p):
            ids[r, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
            mask[r, width - len(p):] = 1
    return ids, mask


def position_ids_from_mask(mask: Tensor) -> Tensor:
    """``cumsum(mask) - 1`` with 0 on padding: the positions ``generate()`` gives a left-padded row."""
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 0)


def split_groups(query_ids: Tensor, query_mask: Tensor, group_size: int) -> tuple[Tensor, Tensor]:
    """``(prompt_ids (P, Lq), prompt_mask (P, Lq))`` from per-row queries whose ``group_size``
    consecutive rows share one prompt (the trajectory layout of GRPO / RLOO). Raises ValueError when
    the row count is not a multiple of ``group_size`` or a group's rows differ."""
    B = query_ids.shape[0]
    if group_size < 1 or B % group_size:
        raise ValueError(f"{B} rows cannot be split into groups of {group_size}")
    P = B // group_size
    ids = query_ids.view(P, group_size, -1)
    mask = query_mask.view(P, group_size, -1)
    if not (torch.equal(ids, ids[:, :1].expand_as(ids)) and torch.equal(mask, mask[:, :1].expand_as(mask))):
        raise ValueError(f"the {group_size} rows of each group must share one prompt (same ids and mask)")
    return ids[:, 0].contiguous(), mask[:, 0].contiguous()


def consecutive_groups(query_ids: Tensor, query_mask: Tensor) -> tuple[Tensor, Tensor, list[int]]:
    """``(prompt_ids (P, Lq), prompt_mask (P, Lq), sizes)``: runs of consecutive identical rows
    (same ids and mask) collapsed to one prompt each, with the length of each run. Works for any
    layout (GRPO groups, a group with its reference row removed, PPO's one row per prompt)."""
    B = query_ids.shape[0]
    if B == 0:
        return query_ids, query_mask, []
    same = ((query_ids[1:] == query_ids[:-1]) & (query_mask[1:] == query_mask[:-1])).all(dim=1)
    starts = [0] + [i + 1 for i in (~same).nonzero().squeeze(1).tolist()]
    sizes = [b - a for a, b in zip(starts, starts[1:] + [B])]
    idx = torch.tensor(starts, dtype=torch.long, device=query_ids.device)
    return query_ids.index_select(0, idx), query_mask.index_select(0, idx), sizes


def _expand_index(P: int, B: int, group_sizes, device) -> Tensor:
    """Row ``i`` of the output reads prompt ``index[i]``."""
    if group_sizes is None:
        if P == 0 or B % P:
            raise ValueError(f"{B} responses cannot be split over {P} prompts")
        sizes = torch.full((P,), B // P, dtype=torch.long)
    else:
        sizes = torch.as_tensor(list(group_sizes), dtype=torch.long)
        if sizes.numel() != P or int(sizes.sum()) != B or bool((sizes < 1).any()):
            raise ValueError(f"group_sizes {sizes.tolist()} must give each of the {P} prompts >= 1 of the {B} rows")
    return torch.repeat_interleave(torch.arange(P), sizes).to(device)


# --------------------------------------------------------------------------------- cache layers
def _make_layer_classes():
    # built on first use: transformers is imported lazily (sumrl --help stays fast)
    from transformers.cache_utils import DynamicLayer

    class PromptLayer(DynamicLayer):
        """Appends like a DynamicLayer while the prompt runs (chunk after chunk); once ``sealed``
        (after the prompt pass) an update returns its input unchanged: that is what a gradient-
        checkpointing replay of the single-pass prompt must see, and it writes nothing."""

        sealed = False

        def update(self, key_states, value_states, *args, **kwargs):
            if self.sealed:
                return key_states, value_states
            return super().update(key_states, value_states, *args, **kwargs)

    class PrefixLayer(DynamicLayer):
        """Read-only prefix: an update returns ``cat(prefix[index], new)`` and stores nothing, so the
        completion pass (and any replay of it) sees the prompt's keys/values and only those. The
        prompt's keys/values are kept once per *prompt* and expanded to the group's rows inside
        ``update`` -- a transient of one layer -- rather than held expanded (G copies) for every
        layer during the whole pass."""

        def __init__(self, keys: Tensor, values: Tensor, index: Tensor):
            super().__init__()
            self.lazy_initialization(keys, values)
            self.keys, self.values, self.index = keys, values, index

        def update(self, key_states, value_states, *args, **kwargs):
            return (torch.cat([self.keys.index_select(0, self.index), key_states], dim=-2),
                    torch.cat([self.values.index_select(0, self.index), value_states], dim=-2))

    return PromptLayer, PrefixLayer


_LAYER_CLASSES: tuple | None = None


def _layer_classes():
    global _LAYER_CLASSES
    if _LAYER_CLASSES is None:
        _LAYER_CLASSES = _make_layer_classes()
    return _LAYER_CLASSES


def _new_cache(layers: list) -> Any:
    from transformers.cache_utils import DynamicCache

    cache = DynamicCache()
    cache.layers = layers
    return cache


def _n_layers(decoder) -> int:
    cfg = decoder.config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return int(cfg.num_hidden_layers)


def cache_kwarg(decoder) -> str:
    # transformers 5 renamed ``past_key_values`` to ``cache`` (the old name is deprecated)
    try:
        params = inspect.signature(decoder.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def _check_no_sliding(decoder, total_len: int) -> None:
    cfg = decoder.config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    window = getattr(cfg, "sliding_window", None)
    types_ = getattr(cfg, "layer_types", None) or []
    sliding = any("sliding" in str(t) for t in types_) or bool(getattr(cfg, "use_sliding_window", False))
    if sliding and window is not None and int(window) < total_len:
        raise ValueError(f"{type(decoder).__name__}: sliding-window layers (window {window} < {total_len} tokens) "
                         "are not supported by the shared-prompt forward; use the plain path")


@contextmanager
def _keep_cache_under_checkpointing(decoder) -> Iterator[None]:
    """Let checkpointed layers keep the (replay-safe) caches of this module; see the docstring."""
    layers = [m for m in decoder.modules() if hasattr(m, "_can_checkpoint_with_cache")]
    saved = [m.__dict__.get("_can_checkpoint_with_cache") for m in layers]
    for m in layers:
        m._can_checkpoint_with_cache = True
    try:
        yield
    finally:
        for m, s in zip(layers, saved):
            if s is None:
                del m._can_checkpoint_with_cache
            else:
                m._can_checkpoint_with_cache = s


@contextmanager
def activation_checkpointing(model: Any, enabled: bool, *, context_fn: Any = None) -> Iterator[None]:
    """Turn transformers' per-layer activation checkpointing on or off for the block (restored
    afterwards), so the choice can follow each micro-batch's size (see
    :func:`checkpointing_wanted`). Non-reentrant ``torch.utils.checkpoint`` is installed where no
    checkpointing function was set. Checkpointing only acts on layers in training mode with
    gradient enabled (transformers' rule); the arithmetic is the same either way (a replay
    recomputes the same values; tests/test_grouped.py).

    ``context_fn`` (torch's, non-reentrant only): called at each layer's forward, it returns the
    contexts of that forward and of its replay in backward. Given, it replaces any checkpointing
    function for the block: state that changes between the forward and the backward (which peft
    adapter is active) must be put back for the replay, or backward differentiates another function."""
    from functools import partial

    from torch.utils.checkpoint import checkpoint
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    saved = [(m.__dict__.get("gradient_checkpointing"), m.__dict__.get("_gradient_checkpointing_func"))
             for m in layers]
    for m in layers:
        if enabled and context_fn is not None:
            m._gradient_checkpointing_func = partial(checkpoint, use_reentrant=False, context_fn=context_fn)
        elif enabled and getattr(m, "_gradient_checkpointing_func", None) is None:
            m._gradient_checkpointing_func = partial(checkpoint, use_reentrant=False)
        m.gradient_checkpointing = bool(enabled)
    try:
        yield
    finally:
        for m, (flag, fn) in zip(layers, saved):
            for name, v in (("gradient_checkpointing", flag), ("_gradient_checkpointing_func", fn)):
                if v is None:
                    m.__dict__.pop(name, None)
                else:
                    setattr(m, name, v)


def grad_tokens(query_ids: Tensor, query_mask: Tensor, response_mask: Tensor, *, shared: bool) -> int:
    """Positions a forward pass over these rows runs (padded widths: what the trunk computes):
    ``prompts x Lq + rows x T`` with the shared-prompt path (each run of consecutive identical
    prompts once, as :func:`consecutive_groups` finds them), ``rows x (Lq + T)`` without."""
    B, Lq = query_ids.shape
    T = response_mask.shape[1]
    if not shared or B == 0:
        return B * (Lq + T)
    return len(consecutive_groups(query_ids, query_mask)[2]) * Lq + B * T


def micro_batches(query_ids: Tensor, query_mask: Tensor, response_mask: Tensor, *, max_rows: int,
                  max_tokens: int | None, shared: bool) -> list[list[int]]:
    """Row positions of each micro-batch, in order: at most ``max_rows`` rows and -- unless one group
    alone is larger -- at most ``max_tokens`` positions each, counted as the pass over the trimmed
    micro-batch runs them (:func:`grad_tokens`: longest prompt and response of the micro-batch, a
    shared prompt once per group). Runs of consecutive identical prompts (a group) are never split
    for the token budget (splitting a group costs its prompt again and saves nothing); a group
    larger than ``max_rows`` is split by rows, as a plain row count would."""
    B = query_ids.shape[0]
    if B == 0:
        return []
    q_len = query_mask.sum(dim=1).tolist()
    r_len = response_mask.sum(dim=1).tolist()
    _, _, sizes = consecutive_groups(query_ids, query_mask) if shared else (None, None, [1] * B)
    units: list[list[int]] = []  # whole groups, cut to max_rows
    start = 0
    for g in sizes:
        units += [list(range(a, min(a + max_rows, start + g))) for a in range(start, start + g, max_rows)]
        start += g

    def cost(n_prompts: int, rows: list[int]) -> int:
        lq, lr = max(q_len[i] for i in rows), max(max(r_len[i] for i in rows), 1)
        return n_prompts * lq + len(rows) * lr if shared else len(rows) * (lq + lr)

    out: list[list[int]] = []
    cur: list[int] = []
    n_units = 0
    for u in units:
        cand = cur + u
        if cur and (len(cand) > max_rows or (max_tokens is not None and cost(n_units + 1, cand) > max_tokens)):
            out.append(cur)
            cur, n_units = list(u), 1
        else:
            cur, n_units = cand, n_units + 1
    out.append(cur)
    return out


def checkpointing_wanted(setting: Any, tokens: int, threshold: int) -> bool:
    """``--gradient-checkpointing``: True / False as set; ``"auto"`` = on when a pass under gradient
    runs more than ``threshold`` positions (its activations grow with the positions kept for
    backward; docs/benchmarks.md has the measurement behind the default)."""
    if setting == "auto":
        return tokens > threshold
    return bool(setting)


# --------------------------------------------------------------------------------------- passes
def prefill(model: Any, prompt_ids: Tensor, prompt_mask: Tensor, *, chunk: int | None = None,
            cache: Any | None = None) -> tuple[Tensor, Any]:
    """Run left-padded prompts through the decoder trunk, filling a KV cache.

    Args:
        model: causal LM or peft model (LoRA layers run as injected).
        prompt_ids, prompt_mask: (P, Lq), left padding.
        chunk: process ``chunk`` positions at a time against the growing cache (memory O(chunk) in
            activations, O(chunk x Lq) in attention scores); None = one pass.
        cache: a transformers ``Cache`` to fill (e.g. a ``DynamicCache`` that generation continues
            from); None = a fresh cache whose layers can be sealed (see :func:`grouped_response_hidden`).

    Returns:
        ``(last_hidden (P, H), cache)``: the final normed hidden state at the last prompt position
        (it predicts the first response token) and the filled cache.
    """
    decoder = find_decoder(model)
    P, Lq = prompt_ids.shape
    if cache is None:
        PromptLayer, _ = _layer_classes()
        cache = _new_cache([PromptLayer() for _ in range(_n_layers(decoder))])
    pos = position_ids_from_mask(prompt_mask)
    step = Lq if not chunk or chunk >= Lq else int(chunk)
    if step < 1:
        raise ValueError(f"prefill chunk must be >= 1, got {chunk}")
    kw = cache_kwarg(decoder)
    last = None
    for s in range(0, Lq, step):
        e = min(s + step, Lq)
        out = decoder(input_ids=prompt_ids[:, s:e], attention_mask=prompt_mask[:, :e], position_ids=pos[:, s:e],
                      use_cache=True, return_dict=True, **{kw: cache})
        last = out.last_hidden_state[:, -1]
        del out
    return last, cache


def grouped_response_hidden(model: Any, prompt_ids: Tensor, prompt_mask: Tensor, response_ids: Tensor,
                            response_mask: Tensor, *, group_sizes: Sequence[int] | None = None,
                            prefill_chunk: int | None = None) -> Tensor:
    """Final hidden states at the response positions, each prompt computed once per group.

    Equal to ``model_hidden_states(model, cat([q, r]), cat([qm, rm]))[:, Lq - 1 : Lq - 1 + T]``
    with ``q`` = each prompt repeated ``G`` times -- the positions
    :class:`sumrl.rl.value.PolicyValueModule` reads (``h[:, t]`` predicts response token ``t``
    and is where the critic evaluates ``V(s_t)``).

    Args:
        model: causal LM or peft model; differentiable when grad is enabled (LoRA gradients flow
            through the shared prompt once, with the group's gradients summed).
        prompt_ids, prompt_mask: (P, Lq), left padding, one row per group.
        response_ids, response_mask: (B, T), right padding; the completions of each prompt in
            consecutive rows (``G = B / P`` each, or ``group_sizes``; see :func:`split_groups` and
            :func:`consecutive_groups`).
        group_sizes: completions per prompt when they differ (None: ``B / P`` each).
        prefill_chunk: run the prompt in chunks of this many tokens (no-grad passes only: under
            gradient the activations are kept for backward anyway; ValueError otherwise).

    Returns:
        (P * G, T, H) in the model (or autocast) dtype.
    """
    P, Lq = prompt_ids.shape
    B, T = response_ids.shape
    if response_mask.shape != response_ids.shape or prompt_mask.shape != prompt_ids.shape:
        raise ValueError("ids and masks must have the same shapes")
    index = _expand_index(P, B, group_sizes, prompt_ids.device)
    grad = torch.is_grad_enabled()
    if prefill_chunk and grad and prefill_chunk < Lq:
        raise ValueError("prefill_chunk is for no-grad passes (old/reference log-probs, values)")
    decoder = find_decoder(model)
    _check_no_sliding(decoder, Lq + T)
    with _keep_cache_under_checkpointing(decoder):
        last, pcache = prefill(model, prompt_ids, prompt_mask, chunk=prefill_chunk)
        for layer in pcache.layers:
            layer.sealed = True
        first = last.index_select(0, index)[:, None]  # h at Lq - 1: predicts response token 0
        if T == 1:
            return first
        _, PrefixLayer = _layer_classes()
        # Expanded to the B rows inside each layer's update (index_select's backward sums the rows
        # of a group back onto their prompt).
        ccache = _new_cache([PrefixLayer(layer.keys, layer.values, index) for layer in pcache.layers])
        del pcache
        full_mask = torch.cat([prompt_mask.index_select(0, index), response_mask], dim=1)
        pos = position_ids_from_mask(full_mask)[:, Lq:Lq + T - 1]
        # The last response token predicts nothing we need: run T - 1 positions.
        out = decoder(input_ids=response_ids[:, :T - 1], attention_mask=full_mask[:, :Lq + T - 1], position_ids=pos,
                      use_cache=True, return_dict=True, **{cache_kwarg(decoder): ccache})
        rest = out.last_hidden_state
    return torch.cat([first.to(rest.dtype), rest], dim=1)


def grouped_token_logprobs(model: Any, prompt_ids: Tensor, prompt_mask: Tensor, response_ids: Tensor,
                           response_mask: Tensor, *, group_sizes: Sequence[int] | None = None,
                           temperature: float = 1.0, chunk_size: int = 512,
                           prefill_chunk: int | None = None, return_entropy: bool = False,
                           return_hidden: bool = False) -> dict[str, Tensor]:
    """Per-token log-probs of the responses (and optionally entropy and the hidden states, for a
    value head), as :class:`~sumrl.rl.value.PolicyValueModule` computes them, with each prompt
    computed once per group. ``temperature`` divides the logits (via the hidden states: the head
    is linear). Returns a dict with ``logprobs`` (B, T) float32 (0 where ``response_mask`` is 0),
    ``entropy`` and ``hidden`` when asked."""
    h = grouped_response_hidden(model, prompt_ids, prompt_mask, response_ids, response_mask,
                                group_sizes=group_sizes, prefill_chunk=prefill_chunk)
    weight, softcap = output_head(model)
    targets = torch.where(response_mask.bool(), response_ids, torch.full_like(response_ids, IGNORE_INDEX))
    hs = h if temperature == 1.0 else h / temperature
    out: dict[str, Tensor] = {}
    if return_entropy:
        out["logprobs"], out["entropy"] = chunked_token_logprobs(hs, weight, targets, chunk_size=chunk_size,
                                                                 softcap=softcap, return_entropy=True)
    else:
        out["logprobs"] = chunked_token_logprobs(hs, weight, targets, chunk_size=chunk_size, softcap=softcap)
    if return_hidden:
        out["hidden"] = h
    return out
