"""Group sampler: ``G`` completions per prompt with the prompt prefilled once.

What :func:`sumrl.generation.engine.sample` does with ``model.generate`` over ``P * G`` repeated prompts,
minus the repeated work:

* each prompt is prefilled **once** (optionally in chunks of ``prefill_chunk`` tokens, so an 8k
  prompt never needs its full attention or MLP activations at once) and its KV cache is expanded to
  the group's ``G`` rows (``repeat_interleave``);
* rows that emitted an end token (or reached their own limit) are **removed** from the batch and
  from the cache (``compact=True``), so late steps only pay for the rows still writing;
* tokens are drawn from the full distribution after temperature (``top_k = 0``; nucleus only when
  ``top_p < 1``, with transformers' own warper), as ``generate`` does with the settings
  ``generation.engine.sample`` passes; ``temperature == 0`` is greedy;
* ``merge_lora=True`` merges the LoRA adapters into the base weights for the duration (one matmul
  per projection instead of three) and restores the base weights *bit for bit* afterwards from a
  snapshot -- peft's ``unmerge`` alone subtracts ``B @ A`` again, which drifts by rounding every
  step. The snapshot costs one copy of the adapted weights.

Equivalence (tests/test_sampler.py): greedy tokens equal ``generation.engine.sample``'s; with ``compact=False``
and the same seed, sampled tokens equal too (the random stream is consumed exactly as ``generate``
consumes it: one ``multinomial`` over all ``P * G`` rows per step). With ``compact=True`` the
distribution is the same but the random stream is not (fewer rows draw), so seeded samples differ.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor

from sumrl.models.grouped import cache_kwarg, left_pad, position_ids_from_mask, prefill
from sumrl.models.logprobs import find_decoder, output_head

__all__ = ["sample_groups", "merged_lora", "consecutive_prompt_groups"]


def consecutive_prompt_groups(prompts: Sequence[Sequence[int]]) -> tuple[list[list[int]], list[int]]:
    """``(unique prompts, sizes)``: runs of consecutive identical prompts collapsed, so that
    ``sample_groups(model, unique, group_size=sizes, ...)`` returns one row per input prompt, in order
    (the trainer's layout: G rows per example, fewer where a reference trajectory took a slot)."""
    uniq: list[list[int]] = []
    sizes: list[int] = []
    for p in prompts:
        p = [int(x) for x in p]
        if uniq and uniq[-1] == p:
            sizes[-1] += 1
        else:
            uniq.append(p)
            sizes.append(1)
    return uniq, sizes


@contextmanager
def merged_lora(model: Any) -> Iterator[None]:
    """LoRA adapters merged into the base weights inside the block; base weights restored exactly.

    No-op for a model without peft LoRA layers (or with adapters disabled/none active)."""
    base_layers = [m for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "get_base_layer")]
    if not base_layers or not hasattr(model, "merge_adapter"):
        yield
        return
    # Outside inference mode on purpose: a weight replaced inside it would become an inference
    # tensor, which autograd refuses to save for the next training step.
    with torch.inference_mode(False), torch.no_grad():
        snap = [(m.get_base_layer(), m.get_base_layer().weight.detach().clone()) for m in base_layers]
        model.merge_adapter()
    try:
        yield
    finally:
        with torch.inference_mode(False), torch.no_grad():
            model.unmerge_adapter()
            for layer, w in snap:
                layer.weight.copy_(w)


def _logits(hidden: Tensor, weight: Tensor, softcap: float | None) -> Tensor:
    # float32 logits as generate() uses for sampling (``outputs.logits[:, -1].float()``); the head
    # runs outside bf16 autocast so that sampling probabilities are not rounded to 8 bits.
    with torch.autocast(hidden.device.type, enabled=False):
        z = (hidden.to(weight.dtype) @ weight.t()).float()
    if softcap:
        z = softcap * torch.tanh(z / softcap)
    return z


def sample_groups(model: Any, prompts: Sequence[Sequence[int]], *, group_size: int | Sequence[int] = 1,
                  max_new_tokens: int | Sequence[int], temperature: float, top_p: float = 1.0,
                  stop_ids: Sequence[int], pad_id: int, prefill_chunk: int | None = None, compact: bool = True,
                  merge_lora: bool = False, bf16: bool = False) -> list[list[int]]:
    """Sample ``group_size`` continuations of each prompt.

    Args:
        model: causal LM or peft model (the active adapter is used; ``merge_lora`` merges it).
        prompts: P prompts (token ids).
        group_size: completions per prompt (G), or one count per prompt; rows come out grouped
            (prompt ``p``'s completions consecutive, in prompt order).
        max_new_tokens: an int, or one limit per output row.
        temperature: > 0 samples from ``softmax(logits / temperature)``; 0 = greedy.
        top_p: nucleus threshold (1.0 = the full distribution, what RL log-probs assume).
        stop_ids: end tokens; a row stops after emitting one (it is kept in the output).
        pad_id: padding id for the prompts.
        prefill_chunk: prefill the prompts this many tokens at a time (None = one pass).
        compact: drop finished rows from the batch (faster; seeded samples then differ from
            ``generate``'s, see the module docstring).
        merge_lora: merge LoRA adapters for generation (base weights restored exactly).
        bf16: run the trunk under bfloat16 autocast (logits and sampling stay float32).

    Returns:
        P * G lists of new token ids, each cut after its first end token or at its limit -- what
        ``truncate_at_eos(engine.sample(...))`` returns for the same prompts repeated G times.
    """
    if not prompts:
        return []
    sizes = [int(group_size)] * len(prompts) if isinstance(group_size, int) else [int(g) for g in group_size]
    if len(sizes) != len(prompts) or any(g < 1 for g in sizes):
        raise ValueError(f"group_size must be >= 1 per prompt ({len(prompts)} prompts), got {group_size}")
    B = sum(sizes)
    limits = [int(max_new_tokens)] * B if isinstance(max_new_tokens, int) else [int(x) for x in max_new_tokens]
    if len(limits) != B:
        raise ValueError(f"{len(limits)} limits for {B} rows")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    stops = torch.tensor(sorted({int(s) for s in stop_ids}), dtype=torch.long)
    decoder = find_decoder(model)
    weight, softcap = output_head(model)
    device = weight.device
    warpers = []
    if temperature > 0:
        from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

        if temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(temperature))
        if top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p))
    ids, mask = left_pad(prompts, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    stops = stops.to(device)
    kw = cache_kwarg(decoder)
    was_training = model.training
    model.eval()
    out: list[list[int]] = [[] for _ in range(B)]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    try:
        with (merged_lora(model) if merge_lora else nullcontext()), torch.inference_mode(), autocast:
            from transformers.cache_utils import DynamicCache

            cache = DynamicCache()
            last, cache = prefill(model, ids, mask, chunk=prefill_chunk, cache=cache)
            if B > len(prompts):
                index = torch.repeat_interleave(torch.arange(len(prompts), device=device),
                                                torch.tensor(sizes, device=device))
                cache.batch_select_indices(index)
                last, mask = last.index_select(0, index), mask.index_select(0, index)
            rows = torch.arange(B, device=device)  # output row of each batch row
            lim = torch.tensor(limits, device=device)
            done = lim <= 0
            hidden = last
            for t in range(int(lim.max()) if B else 0):
                scores = _logits(hidden, weight, softcap)
                if temperature > 0:
                    for w in warpers:
                        scores = w(None, scores)
                    nxt = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
                else:
                    nxt = scores.argmax(dim=-1)
                live = ~done
                for r, tok in zip(rows[live].tolist(), nxt[live].tolist()):
                    out[r].append(tok)
                done = done | torch.isin(nxt, stops) | (lim <= t + 1)
                if bool(done.all()):
                    break
                if compact and bool(done.any()):
                    keep = (~done).nonzero().squeeze(1)
                    cache.batch_select_indices(keep)
                    rows, lim, done, nxt, mask = rows[keep], lim[keep], done[keep], nxt[keep], mask[keep]
                # generate() keeps finished rows running on the pad token (their output is ignored)
                step_ids = torch.where(done, torch.full_like(nxt, int(pad_id)), nxt)
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                pos = position_ids_from_mask(mask)[:, -1:]
                o = decoder(input_ids=step_ids[:, None], attention_mask=mask, position_ids=pos, use_cache=True,
                            return_dict=True, **{kw: cache})
                hidden = o.last_hidden_state[:, -1]
    finally:
        model.train(was_training)
    return out
