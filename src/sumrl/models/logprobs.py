"""Per-token log-probabilities without materialising full-vocabulary logits.

Why: a causal LM's logits are ``(B, T, V)``. For Gemma 3 (V = 262,144) a batch of 4 x 2048
tokens is 4 * 2048 * 262144 * 4 bytes = 8.6 GB of float32 logits, plus as much again for the
softmax saved by autograd, while RL and SFT only need one number per position: ``log p(target)``.

How: the LM head is applied to ``chunk_size`` positions at a time. A custom
:class:`torch.autograd.Function` saves only its inputs (hidden states, head weight, targets and
one float per position) and *recomputes* each chunk's logits in backward, so the peak extra memory
is O(chunk_size * V) floats (a few chunk-sized buffers) instead of O(B * T * V) — e.g. 512 x 262k
x 4 B = 0.5 GB per buffer instead of 8.6 GB, and nothing of size T x V is kept between forward
and backward. Positions whose target is ``ignore_index`` (prompt, padding) are dropped before the
head is applied at all, which for long-document summarisation (long prompt, short summary)
removes most of the work.

Gradient (per position, ``g`` = incoming gradient of ``log p(y)``, ``z`` = raw logits,
``l`` = logits after optional soft-capping ``l = c * tanh(z / c)``, ``p = softmax(l)``)::

    d log p(y) / d l_v = [v == y] - p_v                 (log-softmax derivative)
    d l_v / d z_v     = 1 - tanh(z_v / c)^2             (soft-capping; 1 without it)
    grad_z            = g * ([v == y] - p) * (1 - tanh(z/c)^2)
    grad_hidden       = grad_z @ W                       (n, H)
    grad_W           += grad_z^T @ hidden                (V, H), summed over chunks

Conventions: ``targets[b, t]`` is the token predicted *from* position ``t`` (already shifted, see
:func:`next_token_targets`); log-probs and entropies are returned in float32 (at least).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "IGNORE_INDEX",
    "chunked_token_logprobs",
    "chunked_cross_entropy",
    "next_token_targets",
    "find_decoder",
    "output_head",
    "model_hidden_states",
    "model_token_logprobs",
]

IGNORE_INDEX = -100


# --------------------------------------------------------------------------------------------
# the autograd Function
# --------------------------------------------------------------------------------------------
def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # log-softmax in at least float32 (bf16 logsumexp over 262k entries is far too coarse);
    # float64 inputs stay float64, which lets gradcheck verify the hand-written backward.
    return torch.promote_types(dtype, torch.float32)


def _chunk_logits(h: Tensor, weight: Tensor, softcap: float | None) -> tuple[Tensor, Tensor | None]:
    """Logits of one chunk in the compute dtype, and ``tanh(z / c)`` when soft-capping.

    The matmul runs in the input dtype (as ``lm_head`` does in the model) and is then upcast.
    """
    z = (h @ weight.t()).to(_compute_dtype(h.dtype))
    if softcap is None:
        return z, None
    s = torch.tanh(z / softcap)
    return s * softcap, s


class _ChunkedTokenLogprob(torch.autograd.Function):
    """``log softmax(cap(hidden @ weight.T))[target]`` chunk by chunk; see the module docstring."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size, softcap, want_entropy):  # noqa: D401
        # hidden (N, H), weight (V, H), targets (N,) all valid (ignore positions already removed).
        n = hidden.shape[0]
        cdt = _compute_dtype(hidden.dtype)
        logp = torch.empty(n, dtype=cdt, device=hidden.device)
        lse_all = torch.empty(n, dtype=cdt, device=hidden.device)
        entropy = torch.empty(n if want_entropy else 0, dtype=cdt, device=hidden.device)
        with torch.autocast(hidden.device.type, enabled=False):  # backward runs without autocast
            for s in range(0, n, chunk_size):
                e = min(s + chunk_size, n)
                logits, _ = _chunk_logits(hidden[s:e], weight, softcap)
                lse = torch.logsumexp(logits, dim=-1)
                lse_all[s:e] = lse
                logp[s:e] = logits.gather(1, targets[s:e, None]).squeeze(1) - lse
                if want_entropy:
                    # H = -sum_v p_v (l_v - lse). Not lse - sum_v p_v l_v: with capped logits near
                    # 30 that difference cancels to ~1e-5 absolute error in float32.
                    logq = logits.sub_(lse[:, None])  # in place: only two (n, V) buffers
                    entropy[s:e] = -(torch.exp(logq).mul_(logq)).sum(dim=-1)
                del logits
        # Only O(N*H + V*H + N) is kept for backward; logits are recomputed there.
        ctx.save_for_backward(hidden, weight, targets, lse_all)
        ctx.chunk_size, ctx.softcap = chunk_size, softcap
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, targets, lse_all = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_h or need_w):
            return None, None, None, None, None, None
        chunk_size, softcap = ctx.chunk_size, ctx.softcap
        n = hidden.shape[0]
        cdt = _compute_dtype(hidden.dtype)
        g_all = grad_logp.to(cdt)
        grad_h = torch.empty_like(hidden) if need_h else None
        # Accumulate grad_W over chunks in the compute dtype (>= float32): summing many bf16
        # partial products would lose precision; one rounding at the end matches autograd.
        grad_w = torch.zeros(weight.shape, dtype=cdt, device=weight.device) if need_w else None
        with torch.autocast(hidden.device.type, enabled=False):
            for s in range(0, n, chunk_size):
                e = min(s + chunk_size, n)
                h = hidden[s:e]
                g = g_all[s:e]
                logits, tanh_z = _chunk_logits(h, weight, softcap)
                # grad_l = g * (onehot(y) - p), built in place in the logits buffer.
                grad = logits.sub_(lse_all[s:e, None]).exp_().mul_(-g[:, None])
                grad.scatter_add_(1, targets[s:e, None], g[:, None])
                if tanh_z is not None:
                    # chain rule through l = c * tanh(z / c): dl/dz = 1 - tanh(z / c)^2
                    grad.mul_(1.0 - tanh_z.square_())
                    del tanh_z
                grad_lp = grad.to(hidden.dtype)  # matmuls in the model dtype, like autograd would
                if need_h:
                    grad_h[s:e] = grad_lp @ weight
                if need_w:
                    if grad_lp.dtype == cdt:
                        grad_w.addmm_(grad_lp.t(), h)
                    else:
                        grad_w += (grad_lp.t() @ h).to(cdt)
                del grad, grad_lp, logits
        if need_w:
            grad_w = grad_w.to(weight.dtype)
        return grad_h, grad_w, None, None, None, None


# --------------------------------------------------------------------------------------------
# public tensor API
# --------------------------------------------------------------------------------------------
def chunked_token_logprobs(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    chunk_size: int = 512,
    softcap: float | None = None,
    return_entropy: bool = False,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor | tuple[Tensor, Tensor]:
    """``log p(targets)`` per position from final hidden states and the LM head, chunk by chunk.

    ``logp[b, t] = log_softmax(cap(hidden[b, t] @ weight.T))[targets[b, t]]`` with
    ``cap(x) = c * tanh(x / c)`` when ``softcap = c`` (Gemma 2/3 final-logit soft-capping),
    identity otherwise. Differentiable w.r.t. ``hidden`` and ``weight`` (custom autograd Function
    with a recomputing backward; not twice differentiable).

    Memory: at most ``chunk_size`` positions' logits exist at any time (a few ``chunk_size x V``
    float32 buffers inside forward / backward, none kept in between), instead of ``B x T x V``
    for the whole batch plus the same again saved for backward. Backward also holds one
    ``V x H`` float32 accumulator for ``grad_weight`` when ``weight`` requires grad.

    Args:
        hidden: (B, T, H) final *normed* hidden states (the input of ``lm_head``). Cast to
            ``weight.dtype`` if different.
        weight: (V, H) LM-head weight (no bias).
        targets: (B, T) long; ``targets[b, t]`` is the token predicted from position ``t``;
            ``ignore_index`` marks positions to skip.
        chunk_size: positions per chunk (over the flattened ``B*T`` valid positions).
        softcap: final-logit soft-capping constant, or None.
        return_entropy: also return the entropy of the full next-token distribution (computed in
            the same chunk loop; it carries no gradient).
        ignore_index: target value meaning "skip".

    Returns:
        ``logp`` (B, T) in float32 (float64 for float64 inputs), exactly 0 at ignored positions,
        which receive no gradient; with ``return_entropy`` a tuple ``(logp, entropy)``, entropy
        (B, T) in nats, 0 at ignored positions.
    """
    if hidden.dim() != 3 or targets.shape != hidden.shape[:2]:
        raise ValueError(f"expected hidden (B, T, H) and targets (B, T); got {tuple(hidden.shape)} and {tuple(targets.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight must be (V, H={hidden.shape[-1]}), got {tuple(weight.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    B, T, H = hidden.shape
    V = weight.shape[0]
    if hidden.dtype != weight.dtype:
        hidden = hidden.to(weight.dtype)
    flat_t = targets.reshape(-1).to(device=hidden.device, dtype=torch.long)
    valid = flat_t != ignore_index
    bad = valid & ((flat_t < 0) | (flat_t >= V))
    if bool(bad.any()):
        raise ValueError(f"targets must be in [0, {V}) or {ignore_index}; got {flat_t[bad][:5].tolist()}")
    # Drop ignored positions before the head: no logits, no gradient (index_select's backward
    # scatters zeros there) and, for long prompts, most of the compute saved.
    idx = valid.nonzero().squeeze(1)
    h_sel = hidden.reshape(B * T, H).index_select(0, idx)
    logp_sel, ent_sel = _ChunkedTokenLogprob.apply(h_sel, weight, flat_t.index_select(0, idx), int(chunk_size), softcap, bool(return_entropy))
    out_dtype = logp_sel.dtype
    logp = torch.zeros(B * T, dtype=out_dtype, device=hidden.device).index_put((idx,), logp_sel).view(B, T)
    if not return_entropy:
        return logp
    ent = torch.zeros(B * T, dtype=out_dtype, device=hidden.device).index_put((idx,), ent_sel).view(B, T)
    return logp, ent


def chunked_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    *,
    chunk_size: int = 512,
    softcap: float | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[Tensor, Tensor]:
    """Summed next-token cross-entropy (the SFT loss) without full-vocabulary logits.

    ``loss_sum = - sum_{(b,t): labels[b,t] != ignore} log p(labels[b, t] | hidden[b, t])``.

    The caller divides by a *global* token count (over all micro-batches and processes of one
    optimiser step) so that gradient accumulation reproduces the full-batch gradient exactly.

    Args:
        hidden: (B, T, H) final normed hidden states.
        weight: (V, H) LM-head weight.
        labels: (B, T) long, already shifted (``labels[:, t]`` is predicted from position ``t``).
        chunk_size, softcap, ignore_index: see :func:`chunked_token_logprobs`.

    Returns:
        ``(loss_sum, n_tokens)``: 0-d float32 tensor with grad, 0-d long tensor.
    """
    logp = chunked_token_logprobs(hidden, weight, labels, chunk_size=chunk_size, softcap=softcap, ignore_index=ignore_index)
    n_tokens = (labels != ignore_index).sum()
    return -logp.sum(), n_tokens


def next_token_targets(input_ids: Tensor, mask: Tensor | None = None, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Shift ``input_ids`` to next-token targets aligned with positions.

    ``targets[:, t] = input_ids[:, t + 1]`` where ``mask[:, t + 1]`` is set, else ``ignore_index``;
    the last position is always ``ignore_index``. Use ``mask`` = response mask (1 on generated
    tokens) to get log-probs of the response only, or the attention mask for all real tokens.

    Args:
        input_ids: (B, T) long.
        mask: (B, T) 0/1 marking tokens whose log-prob is wanted, or None for all.

    Returns:
        (B, T) long.
    """
    out = torch.full_like(input_ids, ignore_index)
    nxt = input_ids[:, 1:]
    if mask is not None:
        nxt = torch.where(mask[:, 1:].to(torch.bool), nxt, torch.full_like(nxt, ignore_index))
    out[:, :-1] = nxt
    return out


# --------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------
def _unwrap_peft(model):
    """The transformers model inside a peft ``PeftModel`` (LoRA layers are injected in place, so
    running its modules runs the adapters)."""
    get_base = getattr(model, "get_base_model", None)
    if callable(get_base) and type(model).__module__.startswith("peft"):
        return get_base()
    return model


def find_decoder(model) -> torch.nn.Module:
    """The decoder trunk (embeddings -> layers -> final norm) of a causal LM, without the head.

    Works for ``*ForCausalLM`` models (Llama, Qwen2, Gemma 3 ...), Gemma 3 multimodal wrappers
    (their ``language_model``) and peft-wrapped models. transformers 5's
    ``PreTrainedModel.get_decoder()`` falls back to returning the model *itself* when it finds
    nothing, which would silently compute full logits again, so that case is rejected.
    """
    m = _unwrap_peft(model)
    candidates = []
    if hasattr(m, "get_decoder"):
        try:
            candidates.append(m.get_decoder())
        except (AttributeError, NotImplementedError, ValueError):
            pass
    prefix = getattr(m, "base_model_prefix", None)
    if prefix and isinstance(getattr(m, prefix, None), torch.nn.Module):
        candidates.append(getattr(m, prefix))
    for dec in candidates:
        if dec is None or dec is m:
            continue
        head = dec.get_output_embeddings() if hasattr(dec, "get_output_embeddings") else None
        if head is None:
            return dec
    raise ValueError(f"cannot find the decoder trunk of {type(m).__name__}")


def output_head(model) -> tuple[Tensor, float | None]:
    """``(weight (V, H), softcap)`` of a causal LM's output head.

    ``softcap`` is ``final_logit_softcapping`` of the (text) config, None when absent (Gemma 2/3
    set it). Raises ValueError for heads this chunked path would compute wrongly: a bias, a peft
    LoRA layer on the head (its ``.weight`` is the *base* weight, so the adapter would be
    silently dropped), or models that rescale logits (``logit_scale`` / ``logits_scaling``).
    """
    m = _unwrap_peft(model)
    head = m.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(m).__name__} has no output embeddings (LM head)")
    if hasattr(head, "get_base_layer") or hasattr(head, "lora_A"):
        raise ValueError(
            "a peft adapter layer on the LM head is not supported by chunked log-probs; "
            "exclude lm_head from target_modules (modules_to_save is fine)"
        )
    if getattr(head, "bias", None) is not None:
        raise ValueError("LM heads with a bias are not supported by chunked log-probs")
    flb = getattr(m, "final_logits_bias", None)  # BART/PEGASUS/LED: a buffer, zero in their checkpoints
    if flb is not None and bool(flb.any()):
        raise ValueError("a non-zero final_logits_bias is not supported by chunked log-probs")
    config = m.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for attr in ("logit_scale", "logits_scaling"):
        if getattr(text_config, attr, None) not in (None, 1, 1.0):
            raise ValueError(f"models with {attr} != 1 are not supported by chunked log-probs")
    softcap = getattr(text_config, "final_logit_softcapping", None)
    return head.weight, (float(softcap) if softcap else None)


def _default_position_ids(attention_mask: Tensor) -> Tensor:
    # Same rule as transformers' generate() (_prepare_position_ids_for_generation): positions count
    # real tokens only, so a left-padded prompt gets the positions it had at sampling time.
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 0)


def model_hidden_states(
    model,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    position_ids: Tensor | None = None,
) -> Tensor:
    """Final normed hidden states (B, T, H) of a causal LM, without applying the LM head.

    Args:
        model: a transformers causal LM or a peft model wrapping one.
        input_ids: (B, T) long.
        attention_mask: (B, T) 0/1 or None.
        position_ids: (B, T) long, or None to derive them from ``attention_mask`` like
            ``generate()`` does (``cumsum - 1``, 0 on padding).

    Returns:
        (B, T, H) in the model dtype.
    """
    decoder = find_decoder(model)
    if position_ids is None and attention_mask is not None:
        position_ids = _default_position_ids(attention_mask)
    out = decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False, return_dict=True)
    return out.last_hidden_state


def model_token_logprobs(
    model,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    targets: Tensor,
    *,
    chunk_size: int = 512,
    return_entropy: bool = False,
    position_ids: Tensor | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Per-token ``log p(targets)`` (and entropy) of a causal LM, never building (B, T, V) logits.

    Equivalent to ``log_softmax(model(...).logits.float(), -1).gather(-1, targets)`` (with 0 at
    ignored positions), including Gemma's final-logit soft-capping and peft LoRA adapters on the
    trunk, but with memory O(chunk_size x V) for the logits (see :func:`chunked_token_logprobs`).

    Args:
        model: transformers causal LM or peft model.
        input_ids: (B, T) long.
        attention_mask: (B, T) 0/1 or None.
        targets: (B, T) long, ``targets[:, t]`` predicted from position ``t`` (see
            :func:`next_token_targets`), -100 to skip.
        chunk_size: positions per chunk.
        return_entropy: also return per-position entropy (B, T), no gradient.
        position_ids: (B, T) or None (derived from ``attention_mask`` as in ``generate()``).

    Returns:
        (B, T) float32 log-probs, or ``(logp, entropy)``.
    """
    hidden = model_hidden_states(model, input_ids, attention_mask, position_ids=position_ids)
    weight, softcap = output_head(model)
    return chunked_token_logprobs(hidden, weight, targets, chunk_size=chunk_size, softcap=softcap, return_entropy=return_entropy)
