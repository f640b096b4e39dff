"""Pure tensor RL math: masking, KL estimators, reward shaping, GAE, PPO / GRPO / RLOO losses.

Every function here is tensor-in / tensor-out: no models, no config objects, no global state,
so each one can be checked against hand-derived numbers (see ``tests/test_rl_functional.py``).
The style follows torchtune's ``rlhf/`` package and cleanRL.

Conventions
-----------
* ``B`` = batch (sequences), ``T`` = response length (padded), ``V`` = vocabulary size.
* ``mask`` is a 0/1 tensor (bool, int or float) marking valid response tokens. Padding may be on
  either side; positions where ``mask == 0`` never influence a result (they are selected away with
  :func:`torch.where` rather than multiplied by 0, so NaN/inf garbage in padding cannot leak).
* Log-probabilities ``logp`` are ``log pi(a_t | s_t)`` of the *sampled* token at each position.
* Losses return ``(loss, stats)`` where ``stats`` holds detached scalar tensors for logging.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "masked_sum",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "kl_estimate",
    "shape_rewards",
    "gae",
    "discounted_returns",
    "aggregate",
    "ppo_policy_loss",
    "value_loss",
    "entropy_from_logits",
    "grpo_advantages",
    "rloo_advantages",
    "explained_variance",
    "AGG_MODES",
    "KL_KINDS",
]

KL_KINDS = ("k1", "k2", "k3")
AGG_MODES = ("token_mean", "seq_mean_token_sum", "seq_mean_token_mean", "constant")


# --------------------------------------------------------------------------------------------
# masking helpers
# --------------------------------------------------------------------------------------------
def _bool_mask(x: Tensor, mask: Tensor) -> Tensor:
    """``mask`` as a bool tensor broadcast to ``x.shape``."""
    return mask.to(torch.bool).expand_as(x)


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of ``x`` over valid entries.

    ``sum_i x_i * [mask_i]`` over all entries (``dim=None``, returns a 0-d tensor) or along ``dim``.

    Args:
        x: any shape, e.g. (B, T).
        mask: broadcastable to ``x`` (usually the same shape), 0/1.
        dim: reduce dimension, or None for all.
    """
    m = _bool_mask(x, mask)
    # where, not x * mask: 0 * inf = nan would poison the sum if padding holds inf.
    xm = torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))
    return xm.sum() if dim is None else xm.sum(dim=dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over valid entries: ``sum(x * mask) / sum(mask)``.

    Args:
        x: any shape, e.g. (B, T).
        mask: broadcastable to ``x``, 0/1.
        dim: reduce dimension (e.g. ``dim=1`` gives per-sequence means, shape (B,)), or None.

    Returns:
        0-d tensor (``dim=None``) or ``x`` reduced along ``dim``. Where there is no valid entry the
        mean is defined as 0 (the count is clamped to 1) rather than NaN, so an empty row or an
        empty micro-batch contributes nothing instead of poisoning a loss.
    """
    m = _bool_mask(x, mask)
    count = m.sum() if dim is None else m.sum(dim=dim)
    return masked_sum(x, m, dim) / count.clamp(min=1).to(x.dtype)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over all valid entries (one scalar for the whole tensor).

    ``var = sum(mask * (x - mean)^2) / n``, times the Bessel factor ``n / (n - 1)`` if ``unbiased``,
    where ``n = sum(mask)`` and ``mean = masked_mean(x, mask)``.

    Args:
        x: any shape, e.g. (B, T).
        mask: broadcastable to ``x``, 0/1.
        unbiased: apply Bessel's correction (as TRL / the N+ implementation do for whitening).

    Returns:
        0-d tensor. With ``n <= 1`` (``unbiased``) or ``n == 0`` the variance is 0: a single
        sample carries no spread information, and whitening then just centres it instead of
        crashing a training step.
    """
    m = _bool_mask(x, mask)
    mean = masked_mean(x, m)
    centered_sq = (x - mean) ** 2
    n = m.sum().to(x.dtype)
    ss = masked_sum(centered_sq, m)
    denom = (n - 1.0) if unbiased else n
    # With n <= 1 the sum of squares is exactly 0, so clamping the denominator to 1 gives 0
    # instead of 0/0 = nan.
    return ss / denom.clamp(min=1.0)


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Normalise ``x`` to unit variance (and zero mean) over the valid entries of the whole tensor.

    ``y = (x - mean) / sqrt(var + eps)``; with ``shift_mean=False`` the mean is added back,
    ``y = (x - mean) / sqrt(var + eps) + mean``, i.e. only the scale changes. The N+ implementation
    details paper (Huang et al., 2024) whitens *rewards* with ``shift_mean=False`` (rescale only:
    the reward level, e.g. how bad a penalised response is on average, is kept) and *advantages*
    with ``shift_mean=True``. Mean and (unbiased) variance are global over all valid entries, not per row.

    Args:
        x: (B, T) (any shape works).
        mask: broadcastable to ``x``, 0/1.
        shift_mean: if False keep the original mean.
        eps: added to the variance before the square root.

    Returns:
        Same shape as ``x``; padding positions are set to 0.
    """
    m = _bool_mask(x, mask)
    mean = masked_mean(x, m)
    var = masked_var(x, m, unbiased=True)
    y = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        y = y + mean
    return torch.where(m, y, torch.zeros((), dtype=y.dtype, device=y.device))


# --------------------------------------------------------------------------------------------
# KL and reward shaping
# --------------------------------------------------------------------------------------------
def kl_estimate(logp: Tensor, ref_logp: Tensor, kind: str = "k1") -> Tensor:
    """Per-token single-sample estimators of ``KL(pi || pi_ref)`` (Schulman, "Approximating KL
    divergence", 2020), for tokens sampled from ``pi``.

    With ``d = logp - ref_logp`` (so ``log r = -d`` for ``r = pi_ref / pi``):

    * ``k1 = d`` — unbiased, high variance, can be negative per token;
    * ``k2 = d^2 / 2`` — biased, low variance, always >= 0;
    * ``k3 = (r - 1) - log r = exp(-d) - 1 + d`` — unbiased, low variance, always >= 0.

    Args:
        logp: (B, T) log-probabilities of the sampled tokens under the policy.
        ref_logp: (B, T) the same tokens under the reference policy.
        kind: "k1", "k2" or "k3".

    Returns:
        (B, T) estimates (padding is not masked here; callers mask).
    """
    d = logp - ref_logp
    if kind == "k1":
        return d
    if kind == "k2":
        return 0.5 * d * d
    if kind == "k3":
        # exp(-d) - 1 + d cancels catastrophically for small |d| (the common case early in
        # training: in float32 at d = 1e-6 the direct formula is ~10% off even with expm1), so
        # small |d| uses the Taylor series d^2 (1/2 - d/6 + d^2/24 - d^3/120 + d^4/720), whose
        # truncation error at |d| < 0.1 is below 1e-8 relative.
        direct = torch.expm1(-d) + d
        series = d * d * (0.5 + d * (-1.0 / 6.0 + d * (1.0 / 24.0 + d * (-1.0 / 120.0 + d * (1.0 / 720.0)))))
        return torch.where(d.abs() < 0.1, series, direct)
    raise ValueError(f"unknown KL estimator {kind!r}; expected one of {KL_KINDS}")


def _last_valid_index(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Index of the last valid position of each row of a (B, T) mask, and whether the row has any.

    Works for right padding, left padding and holes: it is the largest ``t`` with ``mask[b, t]``.
    Rows with no valid position get index 0 and ``has_any = False``.
    """
    m = mask.to(torch.bool)
    t = torch.arange(m.shape[-1], device=m.device)
    idx = torch.where(m, t, torch.zeros_like(t)).amax(dim=-1)
    return idx, m.any(dim=-1)


def shape_rewards(
    scores: Tensor,
    token_rewards: Tensor | None,
    logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    kl_coef: float | Tensor,
    kl_kind: str = "k1",
) -> tuple[Tensor, Tensor]:
    """Per-token RLHF rewards with a KL penalty (Ziegler et al. 2019; N+ implementation details).

    ``rewards[b, t] = token_rewards[b, t] - kl_coef * KL[b, t] + [t == last_b] * scores[b]``

    where ``KL`` is :func:`kl_estimate` of ``kl_kind`` and ``last_b`` is the last valid token of
    row ``b`` (the EOS or the cut-off token): the sequence-level score is a reward for the whole
    response, delivered when the episode ends. Everything is 0 on padding. A row with no valid
    token gets no score (and no crash).

    Call under ``torch.no_grad()`` in a PPO rollout: rewards are constants for the update.

    Args:
        scores: (B,) sequence-level scores (reward model / metric).
        token_rewards: (B, T) dense per-token rewards, or None.
        logp: (B, T) policy log-probs of the sampled tokens.
        ref_logp: (B, T) reference log-probs of the same tokens.
        mask: (B, T) 0/1 valid-token mask (right padding typical, any layout accepted).
        kl_coef: the KL coefficient beta (float or 0-d / (B, 1) tensor).
        kl_kind: "k1", "k2" or "k3".

    Returns:
        ``(rewards, kl)``, both (B, T), zero on padding; ``kl`` is the unscaled estimate.
    """
    m = mask.to(torch.bool)
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    kl = torch.where(m, kl_estimate(logp, ref_logp, kl_kind), zero)
    rewards = -kl_coef * kl
    if token_rewards is not None:
        rewards = rewards + torch.where(m, token_rewards.to(rewards.dtype), zero)
    idx, has_any = _last_valid_index(m)
    # Empty rows: idx is 0 there but the score is zeroed, so nothing is added to padding.
    add = torch.where(has_any, scores.to(rewards.dtype), zero)
    rewards = rewards.scatter_add(1, idx.unsqueeze(1), add.unsqueeze(1))
    return rewards, kl


# --------------------------------------------------------------------------------------------
# advantages and returns
# --------------------------------------------------------------------------------------------
def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016), vectorised over the batch.

    Right to left over ``t``, with ``c_{t+1} = mask[:, t+1]`` (0 past the end of the row)::

        delta_t = r_t + gamma * c_{t+1} * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * c_{t+1} * A_{t+1}
        R_t     = A_t + V_t

    i.e. the value after the last valid token is bootstrapped with 0: the episode ends at EOS or
    at the generation cut-off. A response truncated at ``max_new_tokens`` without EOS is *also*
    treated as terminal, as in the N+ implementation (Huang et al., 2024) and TRL: the task is
    defined as "write at most N tokens", the reward model scores the response exactly as cut and
    that score is paid on the cut token, so no reward follows it and 0 is the exact value of what
    comes next; bootstrapping with ``V(s_T)`` would credit the policy for text it never wrote
    (the usual remedy for cut responses is a score penalty for missing EOS, not bootstrapping).

    The continuation flag is ``mask[:, t+1]``, so right and left padding both work; a hole in the
    middle of a row splits it into two episodes.

    Args:
        rewards: (B, T) per-token rewards (e.g. from :func:`shape_rewards`).
        values: (B, T) value estimates ``V(s_t)``.
        mask: (B, T) 0/1 valid-token mask.
        gamma: discount factor.
        lam: GAE lambda.

    Returns:
        ``(advantages, returns)``, both (B, T), zero on padding. Not whitened.
    """
    m = mask.to(torch.bool)
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    r = torch.where(m, rewards.to(values.dtype), zero)
    v = torch.where(m, values, zero)
    B, T = v.shape
    mf = m.to(v.dtype)
    adv = torch.zeros_like(v)
    last = torch.zeros(B, dtype=v.dtype, device=v.device)  # A_{t+1}
    next_v = torch.zeros(B, dtype=v.dtype, device=v.device)  # V_{t+1}
    next_c = torch.zeros(B, dtype=v.dtype, device=v.device)  # c_{t+1}
    for t in range(T - 1, -1, -1):
        delta = r[:, t] + gamma * next_c * next_v - v[:, t]
        last = delta + gamma * lam * next_c * last
        adv[:, t] = last
        next_v, next_c = v[:, t], mf[:, t]
    adv = torch.where(m, adv, zero)
    returns = torch.where(m, adv + v, zero)
    return adv, returns


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """Discounted reward-to-go ``G_t = r_t + gamma * c_{t+1} * G_{t+1}`` with ``c_{t+1} = mask[:, t+1]``.

    Equals :func:`gae` with ``lam = 1`` and ``values = 0``; episodes end after the last valid token.

    Args:
        rewards: (B, T).
        mask: (B, T) 0/1.
        gamma: discount factor.

    Returns:
        (B, T), zero on padding.
    """
    m = mask.to(torch.bool)
    zero = torch.zeros((), dtype=rewards.dtype, device=rewards.device)
    r = torch.where(m, rewards, zero)
    mf = m.to(r.dtype)
    out = torch.zeros_like(r)
    running = torch.zeros(r.shape[0], dtype=r.dtype, device=r.device)
    next_c = torch.zeros_like(running)
    for t in range(r.shape[1] - 1, -1, -1):
        running = r[:, t] + gamma * next_c * running
        out[:, t] = running
        next_c = mf[:, t]
    return torch.where(m, out, zero)


# --------------------------------------------------------------------------------------------
# loss aggregation
# --------------------------------------------------------------------------------------------
def aggregate(
    loss_mat: Tensor, mask: Tensor, mode: str = "token_mean", normalizer: float | int | Tensor | None = None
) -> Tensor:
    """Reduce a (B, T) per-token loss to a scalar.

    Modes (``n_b`` = valid tokens of row ``b``, ``S = sum`` of the loss over valid tokens):

    * ``"token_mean"``: ``S / sum_b n_b`` — every token weighs the same. With gradient accumulation
      pass ``normalizer`` = the *global* number of valid tokens over all micro-batches of the
      optimiser step; then the micro-batch losses sum exactly to the full-batch loss (dividing each
      micro-batch by its own count would over-weight micro-batches with short responses).
    * ``"seq_mean_token_sum"``: ``(1/B) sum_b sum_t loss[b, t]`` — per-sequence sum, mean over
      sequences (long responses weigh more). ``normalizer`` replaces ``B`` (global sequence count).
    * ``"seq_mean_token_mean"``: ``(1/B) sum_b (1/n_b) sum_t loss[b, t]`` — original GRPO: each
      sequence weighs the same whatever its length (introduces a length bias, see Dr. GRPO).
      ``normalizer`` replaces ``B``. A row with no valid token contributes 0 but still counts in B.
    * ``"constant"``: ``S / normalizer`` with a fixed constant, e.g. ``n_sequences * max_new_tokens``
      (Dr. GRPO, Liu et al. 2025): no length bias and a scale independent of the batch contents.
      ``normalizer`` is required.

    Args:
        loss_mat: (B, T) per-token loss.
        mask: (B, T) 0/1.
        mode: one of :data:`AGG_MODES`.
        normalizer: optional global denominator (see above).

    Returns:
        0-d tensor.
    """
    m = _bool_mask(loss_mat, mask)
    if mode not in AGG_MODES:
        raise ValueError(f"unknown aggregation mode {mode!r}; expected one of {AGG_MODES}")
    if mode == "constant" and normalizer is None:
        raise ValueError("aggregate mode 'constant' needs a normalizer (e.g. n_sequences * max_new_tokens)")
    if normalizer is not None and not isinstance(normalizer, Tensor) and normalizer <= 0:
        raise ValueError(f"normalizer must be positive, got {normalizer}")
    if mode == "token_mean" or mode == "constant":
        num = masked_sum(loss_mat, m)
        # Default token count clamped at 1: an all-padding micro-batch gives 0, not 0/0 = nan.
        denom = m.sum().clamp(min=1) if normalizer is None else normalizer
    else:
        per_seq = masked_sum(loss_mat, m, dim=-1) if mode == "seq_mean_token_sum" else masked_mean(loss_mat, m, dim=-1)
        num = per_seq.sum()
        denom = max(per_seq.shape[0], 1) if normalizer is None else normalizer
    return num / torch.as_tensor(denom, device=loss_mat.device).to(loss_mat.dtype)


def batch_normalizer(mode: str, n_rows: int, n_tokens: int, tokens_per_row: int | None = None) -> float:
    """The ``normalizer`` :func:`aggregate` needs so that micro-batch losses sum to the loss of the
    whole mini-batch: its valid tokens (``token_mean``), its rows (``seq_mean_*``), or rows x a
    constant number of tokens per row (``constant``; Dr. GRPO uses the generation budget)."""
    if mode not in AGG_MODES:
        raise ValueError(f"unknown aggregation mode {mode!r}; expected one of {AGG_MODES}")
    if mode == "token_mean":
        return float(n_tokens)
    if mode == "constant":
        if not tokens_per_row:
            raise ValueError("aggregate mode 'constant' needs tokens_per_row (e.g. max_new_tokens)")
        return float(n_rows * tokens_per_row)
    return float(n_rows)


# --------------------------------------------------------------------------------------------
# PPO losses
# --------------------------------------------------------------------------------------------
def ppo_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float,
    agg: str = "token_mean",
    normalizer: float | int | Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate loss (Schulman et al. 2017).

    With ``r_t = exp(logp_t - old_logp_t)``::

        loss_t = max(-A_t * r_t, -A_t * clip(r_t, 1 - eps, 1 + eps))

    reduced with :func:`aggregate` (``agg``, ``normalizer``). ``old_logp`` and ``advantages`` are
    treated as constants (detached).

    Args:
        logp: (B, T) current policy log-probs of the sampled tokens (requires grad).
        old_logp: (B, T) log-probs at rollout time.
        advantages: (B, T).
        mask: (B, T) 0/1.
        clip_eps: the clip range eps.
        agg: aggregation mode, see :func:`aggregate`.
        normalizer: global denominator for gradient accumulation, see :func:`aggregate`.

    Returns:
        ``(loss, stats)``: loss 0-d; stats (detached, means over this call's valid tokens):
        ``clipfrac`` — fraction of tokens where the clipped branch is strictly larger, i.e. the
        gradient is zeroed by clipping (TRL's definition); ``approx_kl`` — ``mean((r - 1) - log r)``
        (k3 estimate of ``KL(old || new)``); ``ratio_mean`` — ``mean(r)``.
    """
    m = _bool_mask(logp, mask)
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    # Zero the log-ratio on padding *before* exp: exp(garbage) could be inf, and although the
    # loss would select it away, its backward would compute 0 * inf = nan.
    log_ratio = torch.where(m, logp - old_logp.detach(), zero)
    ratio = torch.exp(log_ratio)
    adv = torch.where(m, advantages.detach().to(logp.dtype), zero)
    pg1 = -adv * ratio
    pg2 = -adv * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss_mat = torch.maximum(pg1, pg2)
    loss = aggregate(loss_mat, m, agg, normalizer)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((pg2 > pg1).to(logp.dtype), m),
            "approx_kl": masked_mean((ratio - 1.0) - log_ratio, m),
            "ratio_mean": masked_mean(ratio, m),
        }
    return loss, stats


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip_eps: float | None = None,
    agg: str = "token_mean",
    normalizer: float | int | Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Value-function loss, optionally with PPO-style value clipping.

    Without clipping: ``loss_t = 1/2 (V_t - R_t)^2``. With ``clip_eps``::

        V_clip = old_V + clip(V - old_V, -eps, +eps)
        loss_t = 1/2 max((V_t - R_t)^2, (V_clip_t - R_t)^2)

    reduced with :func:`aggregate`. ``old_values`` and ``returns`` are constants (detached).

    Args:
        values: (B, T) current value predictions (requires grad).
        old_values: (B, T) predictions at rollout time.
        returns: (B, T) targets (e.g. GAE returns).
        mask: (B, T) 0/1.
        clip_eps: value clip range, or None for no clipping.
        agg, normalizer: see :func:`aggregate`.

    Returns:
        ``(loss, stats)`` with ``vf_clipfrac``: fraction of valid tokens where the clipped term is
        strictly larger (0 without clipping).
    """
    m = _bool_mask(values, mask)
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    ret = returns.detach().to(values.dtype)
    # Residuals are zeroed on padding *before* squaring: the backward of x^2 is 2x * grad, and
    # 2 * nan * 0 = nan would reach the value head from a garbage padded prediction.
    vf1 = torch.where(m, values - ret, zero) ** 2
    if clip_eps is None:
        loss_mat = 0.5 * vf1
        clipfrac = zero
    else:
        old = old_values.detach().to(values.dtype)
        v_clip = old + torch.clamp(values - old, -clip_eps, clip_eps)
        vf2 = torch.where(m, v_clip - ret, zero) ** 2
        loss_mat = 0.5 * torch.maximum(vf1, vf2)
        with torch.no_grad():
            clipfrac = masked_mean((vf2 > vf1).to(values.dtype), m)
    loss = aggregate(loss_mat, m, agg, normalizer)
    return loss, {"vf_clipfrac": clipfrac.detach()}


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the categorical distribution at each position.

    ``H = -sum_v p_v log p_v`` with ``log p = z - logsumexp(z)`` (never ``log`` of a probability
    that underflowed to 0, and no ``lse - sum p z`` form, which cancels badly for large logits).
    Computed in at least float32 (bf16 logits lose too much precision in the sum); ``-inf``
    logits (banned tokens) contribute 0.

    Args:
        logits: (B, T, V) (any leading shape).

    Returns:
        (B, T) entropies in nats, dtype ``promote(logits.dtype, float32)``.
    """
    z = logits.to(torch.promote_types(logits.dtype, torch.float32))
    logq = z - torch.logsumexp(z, dim=-1, keepdim=True)
    p = torch.exp(logq)
    # p * log p is 0 * -inf = nan for banned tokens; their contribution is 0 (limit p log p -> 0).
    plogp = torch.where(p > 0, p * logq, torch.zeros((), dtype=z.dtype, device=z.device))
    return -plogp.sum(dim=-1)


# --------------------------------------------------------------------------------------------
# group-relative advantages
# --------------------------------------------------------------------------------------------
def _grouped(rewards: Tensor, group_size: int) -> Tensor:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (N,), got shape {tuple(rewards.shape)}")
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 for group-relative advantages, got {group_size}")
    if rewards.numel() % group_size != 0:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    return rewards.view(-1, group_size)


def grpo_advantages(rewards: Tensor, group_size: int, scale_by_std: bool = True, eps: float = 1e-6) -> Tensor:
    """GRPO advantages (Shao et al. 2024): reward relative to its group.

    ``A_i = (r_i - mean_g) / (std_g + eps)`` (or ``r_i - mean_g`` if not ``scale_by_std``, the Dr.
    GRPO variant), where ``std_g`` is the *unbiased* (Bessel-corrected, ``N - 1``) standard
    deviation of the group — what TRL's ``GRPOTrainer`` uses (``rewards.view(-1, G).std(dim=1)``,
    torch's default ``correction=1``).

    Args:
        rewards: (N,) with the ``group_size`` completions of each prompt contiguous,
            ``N = n_groups * group_size``.
        group_size: completions per prompt (>= 2).
        scale_by_std: divide by the group std.
        eps: added to the std (a group with identical rewards gets advantage 0, not NaN).

    Returns:
        (N,) advantages, one per completion (broadcast over its tokens by the caller).
    """
    g = _grouped(rewards, group_size)
    adv = g - g.mean(dim=1, keepdim=True)
    if scale_by_std:
        adv = adv / (g.std(dim=1, keepdim=True, unbiased=True) + eps)
    return adv.reshape(-1)


def rloo_advantages(rewards: Tensor, group_size: int) -> Tensor:
    """REINFORCE leave-one-out advantages (Kool et al. 2019; Ahmadian et al. 2024).

    ``A_i = r_i - (1/(G-1)) sum_{j != i} r_j = G/(G-1) * (r_i - mean_g)``: the baseline of each
    sample is the mean of the *other* samples of its group, so it does not depend on ``r_i``.

    Args:
        rewards: (N,) groups contiguous, ``N = n_groups * group_size``.
        group_size: G >= 2.

    Returns:
        (N,) advantages.
    """
    g = _grouped(rewards, group_size)
    others = (g.sum(dim=1, keepdim=True) - g) / (group_size - 1)
    return (g - others).reshape(-1)


def group_token_advantages(scores: Tensor, token_rewards: Tensor, mask: Tensor, group_size: int, *,
                           kind: str = "grpo", scale_by_std: bool = True, eps: float = 1e-6) -> Tensor:
    """Per-token GRPO / RLOO advantages for a sequence score plus per-token rewards.

    The quantity compared within a group at response position ``t`` is what is still to come there:

        Y[i, t] = scores[i] + sum_{s >= t} token_rewards[i, s]      (past the end of i: scores[i])

    and each token's baseline is the group at the *same position*:

        grpo:  A[i, t] = (Y[i, t] - mean_j Y[j, t]) / (std_g(R) + eps)   (/ 1 without scale_by_std)
        rloo:  A[i, t] =  Y[i, t] - mean_{j != i} Y[j, t]

    with ``R_i = scores_i + sum_t token_rewards[i, t]`` the total return and ``std_g`` the unbiased
    group std of :func:`grpo_advantages`. Without per-token rewards ``Y[i, t] = scores[i]`` and this
    is exactly :func:`grpo_advantages` / :func:`rloo_advantages` broadcast over the tokens.

    Why a per-position baseline: a per-token penalty (e.g. -2.5 per token beyond the reference length)
    has then no effect on tokens of a completion unless the other completions, at that same position,
    have less (or more) of it still to come. With one constant baseline per group (``reward-to-go
    minus mean total return``), every late token gets a large positive advantage merely because the
    penalties already paid before it are gone from its reward-to-go: measured on the default model,
    that made the first GRPO step's policy loss -30 with a gradient norm of 29, pushing up whatever
    tokens came late -- the opposite of stopping.

    Args:
        scores: (N,) sequence-level scores (delivered at the end), groups contiguous.
        token_rewards: (N, T) per-token rewards (e.g. length penalties, a -beta*KL term), 0 on padding.
        mask: (N, T) 0/1 valid response tokens (right padding).
        group_size: G >= 2 completions per prompt.
        kind: "grpo" or "rloo".
        scale_by_std: grpo: divide by the group std of the total return.
        eps: added to the std.

    Returns:
        (N, T) advantages, zero on padding.
    """
    if kind not in ("grpo", "rloo"):
        raise ValueError(f"kind must be 'grpo' or 'rloo', got {kind!r}")
    m = mask.to(torch.bool)
    zero = torch.zeros((), dtype=token_rewards.dtype, device=token_rewards.device)
    togo = discounted_returns(token_rewards, mask, 1.0)  # 0 past the end
    y = scores[:, None].to(togo.dtype) + togo
    n, T = y.shape
    _grouped(scores, group_size)  # validates N and G with the same messages as the scalar versions
    g = y.view(n // group_size, group_size, T)
    if kind == "grpo":
        adv = g - g.mean(dim=1, keepdim=True)
        if scale_by_std:
            total = scores.to(togo.dtype) + torch.where(m, token_rewards, zero).sum(dim=1)
            std = _grouped(total, group_size).std(dim=1, keepdim=True, unbiased=True)  # (n_groups, 1)
            adv = adv / (std[:, :, None] + eps)
    else:
        adv = g - (g.sum(dim=1, keepdim=True) - g) / (group_size - 1)
    return torch.where(m, adv.reshape(n, T), zero)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """Explained variance of the value predictions: ``1 - Var[R - V] / Var[R]`` over valid tokens.

    1 is perfect, 0 is no better than predicting the mean, negative is worse. Both variances are
    computed with the same (biased) normaliser, so the ratio does not depend on the choice.

    Args:
        values: (B, T) predictions.
        returns: (B, T) targets.
        mask: (B, T) 0/1.

    Returns:
        0-d tensor; NaN if ``Var[R] == 0`` (undefined, as in cleanRL / stable-baselines).
    """
    m = _bool_mask(values, mask)
    var_r = masked_var(returns, m, unbiased=False)
    var_res = masked_var(returns - values, m, unbiased=False)
    nan = torch.full((), float("nan"), dtype=var_r.dtype, device=var_r.device)
    return torch.where(var_r > 0, 1.0 - var_res / torch.where(var_r > 0, var_r, torch.ones_like(var_r)), nan)
