"""Tests for sumrl.rl.functional against hand-derived numbers and independent references."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor
from torch.testing import assert_close

from sumrl.rl import functional as F

NAN = float("nan")


def gae_reference_loop(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Slow reference GAE (the test oracle): plain Python loops over rows and positions, using the
    *direct-sum* definition ``A_t = sum_{k=t}^{end} (gamma*lam)^(k-t) * delta_k`` instead of the
    recursion, so it is an independent check of :func:`sumrl.rl.functional.gae`. ``end`` is the last index of the
    contiguous valid run containing ``t``; ``delta_k`` bootstraps 0 after ``end``.

    Shapes as in ``gae``; returns float64 tensors.
    """
    r = rewards.detach().double().tolist()
    v = values.detach().double().tolist()
    m = [[bool(x) for x in row] for row in mask.tolist()]
    B = len(m)
    T = len(m[0]) if B else 0
    adv = [[0.0] * T for _ in range(B)]
    ret = [[0.0] * T for _ in range(B)]
    for b in range(B):
        for t in range(T):
            if not m[b][t]:
                continue
            total, k, w = 0.0, t, 1.0
            while k < T and m[b][k]:
                nxt = v[b][k + 1] if (k + 1 < T and m[b][k + 1]) else 0.0
                delta = r[b][k] + gamma * nxt - v[b][k]
                total += w * delta
                w *= gamma * lam
                k += 1
            adv[b][t] = total
            ret[b][t] = total + v[b][t]
    return torch.tensor(adv, dtype=torch.float64), torch.tensor(ret, dtype=torch.float64)


def t(x, dtype=torch.float64):
    return torch.tensor(x, dtype=dtype)


# --------------------------------------------------------------------------------------------
# masking
# --------------------------------------------------------------------------------------------
def test_masked_sum_mean_var_by_hand():
    x = t([[1.0, 3.0, 5.0, NAN]])  # NaN in padding must not leak
    m = t([[1, 1, 1, 0]])
    assert masked_item(F.masked_sum(x, m)) == 9.0
    assert masked_item(F.masked_mean(x, m)) == 3.0
    # deviations -2, 0, 2 -> sum of squares 8; unbiased 8/2 = 4, biased 8/3
    assert_close(F.masked_var(x, m), t(4.0))
    assert_close(F.masked_var(x, m, unbiased=False), t(8.0 / 3.0))
    # per-row means along dim=1; an empty row has mean 0, not NaN
    x2 = t([[1.0, 2.0, 9.0], [7.0, 7.0, 7.0]])
    m2 = t([[1, 1, 0], [0, 0, 0]])
    assert_close(F.masked_mean(x2, m2, dim=1), t([1.5, 0.0]))
    assert_close(F.masked_sum(x2, m2, dim=1), t([3.0, 0.0]))


def masked_item(v):
    return float(v.item())


def test_masked_var_single_element_is_zero_not_nan():
    x = t([[2.0, 5.0]])
    m = t([[1, 0]])
    assert F.masked_var(x, m).item() == 0.0
    assert F.masked_whiten(x, m).tolist() == [[0.0, 0.0]]


def test_whiten_by_hand():
    x = t([[1.0, 3.0, 99.0], [5.0, -50.0, 0.0]])
    m = t([[1, 1, 0], [1, 0, 0]])
    # valid 1, 3, 5: mean 3, unbiased var (4+0+4)/2 = 4, std 2
    assert_close(F.masked_whiten(x, m, eps=0.0), t([[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))
    # shift_mean=False: (x - 3)/2 + 3 -> 2, 3, 4
    assert_close(F.masked_whiten(x, m, shift_mean=False, eps=0.0), t([[2.0, 3.0, 0.0], [4.0, 0.0, 0.0]]))


def test_whiten_random_gives_mean0_var1_over_masked_entries():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 8, generator=g, dtype=torch.float64) * 3.0 + 2.0
    m = (torch.rand(5, 8, generator=g) > 0.3).to(torch.float64)
    x_pad = torch.where(m.bool(), x, torch.full_like(x, 1e6))  # padding must not matter
    w = F.masked_whiten(x_pad, m)
    vals = w[m.bool()]
    assert_close(vals.mean(), t(0.0), atol=1e-10, rtol=0)
    assert_close(vals.var(unbiased=True), t(1.0), atol=1e-6, rtol=0)
    assert (w[~m.bool()] == 0).all()
    w2 = F.masked_whiten(x_pad, m, shift_mean=False)
    vals2 = w2[m.bool()]
    assert_close(vals2.mean(), x[m.bool()].mean())
    assert_close(vals2.var(unbiased=True), t(1.0), atol=1e-6, rtol=0)


# --------------------------------------------------------------------------------------------
# KL
# --------------------------------------------------------------------------------------------
def test_kl_estimators_by_hand():
    logp = t([-1.0, -2.0, -0.5])
    ref = t([-1.5, -1.0, -0.5])
    # d = logp - ref = [0.5, -1.0, 0.0]
    assert_close(F.kl_estimate(logp, ref, "k1"), t([0.5, -1.0, 0.0]))
    # k2 = d^2/2 = [0.125, 0.5, 0]
    assert_close(F.kl_estimate(logp, ref, "k2"), t([0.125, 0.5, 0.0]))
    # k3 = exp(-d) - 1 + d: exp(-0.5) - 0.5 = 0.6065306597 - 0.5 = 0.1065306597
    #                       exp(1) - 2 = 0.7182818285 ; d = 0 -> 0
    assert_close(F.kl_estimate(logp, ref, "k3"), t([0.1065306597, 0.7182818285, 0.0]), atol=1e-9, rtol=0)
    with pytest.raises(ValueError):
        F.kl_estimate(logp, ref, "k4")


def test_kl_k3_small_difference_keeps_precision():
    # float32 k3 must match a float64 evaluation of exp(-d) - 1 + d to float32 relative precision,
    # including tiny d where the direct float32 formula cancels (d = 1e-6: k3 = 5e-13) and values
    # around the series/direct switch at |d| = 0.1.
    d64 = t([1e-6, -1e-6, 3e-4, -0.02, 0.0999, 0.1, -0.1001, 0.3, -2.0, 5.0])
    ref = torch.expm1(-d64) + d64
    out = F.kl_estimate(d64.float(), torch.zeros_like(d64, dtype=torch.float32), "k3")
    assert out.dtype == torch.float32
    assert_close(out.double(), ref, rtol=2e-6, atol=0)


# --------------------------------------------------------------------------------------------
# reward shaping
# --------------------------------------------------------------------------------------------
def test_shape_rewards_score_on_last_valid_token_right_padding():
    mask = t([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
    ref = torch.zeros(3, 4, dtype=torch.float64)
    logp = t([[0.5, -0.2, 1.0, 7.0], [0.3, 0.1, 4.0, 4.0], [1.0, 1.0, 1.0, 1.0]])  # d = logp
    token_rewards = t([[0.1, 0.0, 0.0, 9.0], [0.0, 0.2, 9.0, 9.0], [9.0, 9.0, 9.0, 9.0]])
    scores = t([2.0, -1.0, 5.0])
    rewards, kl = F.shape_rewards(scores, token_rewards, logp, ref, mask, kl_coef=0.1, kl_kind="k1")
    # row0: [0.1 - 0.1*0.5, 0 + 0.1*0.2, 0 - 0.1*1.0 + 2.0, pad] = [0.05, 0.02, 1.9, 0]
    # row1: [-0.1*0.3, 0.2 - 0.1*0.1 - 1.0, pad, pad] = [-0.03, -0.81, 0, 0]
    # row2: no valid token -> all 0, the score 5.0 goes nowhere
    assert_close(rewards, t([[0.05, 0.02, 1.9, 0.0], [-0.03, -0.81, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    assert_close(kl, t([[0.5, -0.2, 1.0, 0.0], [0.3, 0.1, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))


def test_shape_rewards_without_token_rewards_and_k2_left_padding():
    mask = t([[0, 1, 1]])
    logp = t([[3.0, 1.0, -1.0]])
    ref = torch.zeros(1, 3, dtype=torch.float64)
    rewards, kl = F.shape_rewards(t([4.0]), None, logp, ref, mask, kl_coef=0.5, kl_kind="k2")
    # k2 = d^2/2 = [pad, 0.5, 0.5]; rewards = -0.5*kl + score on last (index 2)
    assert_close(kl, t([[0.0, 0.5, 0.5]]))
    assert_close(rewards, t([[0.0, -0.25, -0.25 + 4.0]]))


# --------------------------------------------------------------------------------------------
# GAE / returns
# --------------------------------------------------------------------------------------------
def test_gae_by_hand():
    gamma, lam = 0.9, 0.8
    rewards = t([[1.0, 0.0, 2.0], [1.0, 0.0, 123.0]])
    values = t([[0.5, 1.0, 1.5], [0.5, 1.0, 456.0]])
    mask = t([[1, 1, 1], [1, 1, 0]])
    adv, ret = F.gae(rewards, values, mask, gamma, lam)
    # row0: delta2 = 2 + 0 - 1.5 = 0.5 (bootstrap 0 after the last token)
    #       delta1 = 0 + 0.9*1.5 - 1.0 = 0.35
    #       delta0 = 1 + 0.9*1.0 - 0.5 = 1.4
    #       A2 = 0.5; A1 = 0.35 + 0.72*0.5 = 0.71; A0 = 1.4 + 0.72*0.71 = 1.9112
    # row1 (length 2): delta1 = 0 + 0 - 1.0 = -1.0; delta0 = 1.4; A1 = -1.0; A0 = 1.4 - 0.72 = 0.68
    assert_close(adv, t([[1.9112, 0.71, 0.5], [0.68, -1.0, 0.0]]))
    # returns = A + V
    assert_close(ret, t([[2.4112, 1.71, 2.0], [1.18, 0.0, 0.0]]))
    ref_adv, ref_ret = gae_reference_loop(rewards, values, mask, gamma, lam)
    assert_close(ref_adv, adv)
    assert_close(ref_ret, ret)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gae_vectorised_equals_loop_ragged(seed):
    g = torch.Generator().manual_seed(seed)
    B, T = 7, 9
    rewards = torch.randn(B, T, generator=g, dtype=torch.float64)
    values = torch.randn(B, T, generator=g, dtype=torch.float64)
    lengths = torch.randint(0, T + 1, (B,), generator=g)
    lengths[0], lengths[1] = 0, T  # always include an empty and a full row
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(torch.float64)
    # NaN in the padding must not leak into the result
    rewards = torch.where(mask.bool(), rewards, torch.full_like(rewards, NAN))
    values = torch.where(mask.bool(), values, torch.full_like(values, NAN))
    gamma = 0.5 + 0.5 * torch.rand((), generator=g).item()
    lam = torch.rand((), generator=g).item()
    adv, ret = F.gae(rewards, values, mask, gamma, lam)
    ref_adv, ref_ret = gae_reference_loop(rewards, values, mask, gamma, lam)
    assert_close(adv, ref_adv)
    assert_close(ret, ref_ret)
    # left padding (flip each row's layout) works the same
    left = torch.flip(mask, dims=[1])
    r_l = torch.zeros_like(rewards)
    v_l = torch.zeros_like(values)
    for b in range(B):
        n = int(lengths[b])
        r_l[b, T - n :] = rewards[b, :n]
        v_l[b, T - n :] = values[b, :n]
    adv_l, _ = F.gae(r_l, v_l, left, gamma, lam)
    for b in range(B):
        n = int(lengths[b])
        assert_close(adv_l[b, T - n :], adv[b, :n])


def test_discounted_returns_by_hand_and_equals_gae_lambda1():
    rewards = t([[1.0, 0.0, 2.0], [1.0, 0.0, 77.0]])
    mask = t([[1, 1, 1], [1, 1, 0]])
    # row0: G2 = 2, G1 = 0 + 0.9*2 = 1.8, G0 = 1 + 0.9*1.8 = 2.62 ; row1: G1 = 0, G0 = 1
    g = F.discounted_returns(rewards, mask, 0.9)
    assert_close(g, t([[2.62, 1.8, 2.0], [1.0, 0.0, 0.0]]))
    adv, _ = F.gae(rewards, torch.zeros_like(rewards), mask, 0.9, 1.0)
    assert_close(adv, g)


# --------------------------------------------------------------------------------------------
# aggregation
# --------------------------------------------------------------------------------------------
def test_aggregate_modes_by_hand():
    loss = t([[1.0, 2.0, 3.0], [4.0, 100.0, NAN]])
    mask = t([[1, 1, 1], [1, 0, 0]])
    # token_mean: (1+2+3+4)/4 = 2.5 ; with global normalizer 8 -> 10/8
    assert_close(F.aggregate(loss, mask, "token_mean"), t(2.5))
    assert_close(F.aggregate(loss, mask, "token_mean", normalizer=8), t(1.25))
    # seq_mean_token_sum: (6 + 4)/2 = 5 ; normalizer 4 sequences -> 10/4
    assert_close(F.aggregate(loss, mask, "seq_mean_token_sum"), t(5.0))
    assert_close(F.aggregate(loss, mask, "seq_mean_token_sum", normalizer=4), t(2.5))
    # seq_mean_token_mean: (6/3 + 4/1)/2 = 3
    assert_close(F.aggregate(loss, mask, "seq_mean_token_mean"), t(3.0))
    # constant: 10/6
    assert_close(F.aggregate(loss, mask, "constant", normalizer=6), t(10.0 / 6.0))
    with pytest.raises(ValueError):
        F.aggregate(loss, mask, "constant")
    with pytest.raises(ValueError):
        F.aggregate(loss, mask, "bogus")
    # an all-padding micro-batch contributes 0, not NaN
    assert F.aggregate(loss, torch.zeros_like(mask), "token_mean").item() == 0.0


# --------------------------------------------------------------------------------------------
# PPO losses
# --------------------------------------------------------------------------------------------
def test_ppo_policy_loss_by_hand():
    # tokens (ratio, A): (1.5, 1) clipped; (0.5, 1) not; (0.5, -2) clipped; (1.1, -2) not; + padding
    old = torch.zeros(2, 3, dtype=torch.float64)
    logp = t([[math.log(1.5), math.log(0.5), 50.0], [math.log(0.5), math.log(1.1), 50.0]]).requires_grad_()
    adv = t([[1.0, 1.0, 1.0], [-2.0, -2.0, 1.0]])
    mask = t([[1, 1, 0], [1, 1, 0]])
    loss, stats = F.ppo_policy_loss(logp, old, adv, mask, clip_eps=0.2)
    # t0: max(-1.5, -1.2) = -1.2 (clipped) ; t1: max(-0.5, -0.8) = -0.5
    # t2: max(1.0, 1.6) = 1.6 (clipped)    ; t3: max(2.2, 2.2) = 2.2 (tie: not counted as clipped)
    # token_mean = (-1.2 - 0.5 + 1.6 + 2.2)/4 = 0.525
    assert_close(loss, t(0.525))
    assert_close(stats["clipfrac"], t(0.5))
    assert_close(stats["ratio_mean"], t((1.5 + 0.5 + 0.5 + 1.1) / 4))
    # approx_kl = mean((r-1) - ln r) = (0.0945348919 + 2*0.1931471806 + 0.0046898202)/4
    assert_close(stats["approx_kl"], t(0.4855190733 / 4), atol=1e-9, rtol=0)
    loss.backward()
    # d/dlogp of -A*r is -A*r; clipped tokens get 0; /4 tokens
    # t1: -1*0.5/4 = -0.125 ; t3: 2*1.1/4 = 0.55 ; padding gets exactly 0 (no NaN from exp(50))
    assert_close(logp.grad, t([[0.0, -0.125, 0.0], [0.0, 0.55, 0.0]]))


def test_ppo_policy_loss_unclipped_equals_plain_pg_at_ratio_one():
    # at ratio 1 the surrogate equals -mean(A) and the gradient is -A/n (vanilla policy gradient)
    g = torch.Generator().manual_seed(3)
    logp = torch.randn(3, 4, generator=g, dtype=torch.float64).requires_grad_()
    adv = torch.randn(3, 4, generator=g, dtype=torch.float64)
    mask = torch.ones(3, 4, dtype=torch.float64)
    loss, stats = F.ppo_policy_loss(logp, logp.detach(), adv, mask, clip_eps=0.2)
    assert_close(loss, -adv.mean())
    assert stats["clipfrac"].item() == 0.0
    assert_close(stats["approx_kl"], t(0.0))
    loss.backward()
    assert_close(logp.grad, -adv / 12)


def test_value_loss_by_hand():
    values = t([[1.0, 1.0, 0.0, 9.0]]).requires_grad_()
    old = t([[0.5, 0.9, 0.5, 0.0]])
    ret = t([[2.0, 0.0, 0.4, 0.0]])
    mask = t([[1, 1, 1, 0]])
    # t0: vf1 = (1-2)^2 = 1; V_clip = 0.5+0.2 = 0.7, vf2 = 1.69 -> 1.69 (clipped)
    # t1: vf1 = 1; V_clip = 1.0 (inside the band), vf2 = 1 -> 1 (tie)
    # t2: vf1 = 0.16; V_clip = 0.3, vf2 = 0.01 -> 0.16
    # loss = 0.5 * (1.69 + 1 + 0.16)/3 = 0.475
    loss, stats = F.value_loss(values, old, ret, mask, clip_eps=0.2)
    assert_close(loss, t(0.475))
    assert_close(stats["vf_clipfrac"], t(1.0 / 3.0))
    loss.backward()
    # t0 clipped branch active -> 0 grad; t1: (1-0)/3 ; t2: (0-0.4)/3
    assert_close(values.grad, t([[0.0, 1.0 / 3.0, -0.4 / 3.0, 0.0]]))
    # no clipping: 0.5 * (1 + 1 + 0.16)/3 = 0.36
    loss2, stats2 = F.value_loss(values, old, ret, mask)
    assert_close(loss2, t(0.36))
    assert stats2["vf_clipfrac"].item() == 0.0


def test_losses_ignore_nan_in_padding():
    # garbage (NaN) in padded positions of any input must give a finite loss and finite gradients
    mask = t([[1, 1, 0]])
    logp = t([[-0.1, -0.2, NAN]]).requires_grad_()
    loss, stats = F.ppo_policy_loss(logp, t([[-0.3, -0.1, NAN]]), t([[1.0, -1.0, NAN]]), mask, 0.2)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all() and logp.grad[0, 2] == 0
    assert all(torch.isfinite(v) for v in stats.values())
    for clip in (None, 0.2):
        values = t([[0.1, 0.2, NAN]]).requires_grad_()
        vloss, vstats = F.value_loss(values, t([[0.0, 0.0, NAN]]), t([[1.0, 1.0, NAN]]), mask, clip)
        vloss.backward()
        assert torch.isfinite(vloss) and torch.isfinite(values.grad).all() and values.grad[0, 2] == 0


# --------------------------------------------------------------------------------------------
# entropy
# --------------------------------------------------------------------------------------------
def test_entropy_from_logits():
    logits = t([[[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, -math.inf, -math.inf], [1000.0, 0.0, 0.0, 0.0]]])
    h = F.entropy_from_logits(logits)
    # uniform over 4 -> ln 4 ; uniform over 2 (2 banned) -> ln 2 ; near-one-hot -> ~0 (not NaN)
    assert_close(h, t([[math.log(4), math.log(2), 0.0]]), atol=1e-12, rtol=0)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 5, 13, generator=g) * 4
    ref = torch.distributions.Categorical(logits=z).entropy()
    assert_close(F.entropy_from_logits(z), ref)
    # bf16 input is computed in float32
    assert F.entropy_from_logits(z.to(torch.bfloat16)).dtype == torch.float32


# --------------------------------------------------------------------------------------------
# group-relative advantages
# --------------------------------------------------------------------------------------------
def test_grpo_advantages_by_hand():
    r = t([1.0, 2.0, 3.0, 0.0, 0.0, 6.0, 5.0, 5.0, 5.0])
    adv = F.grpo_advantages(r, 3, eps=0.0 + 1e-12)
    # group1: mean 2, unbiased std sqrt((1+0+1)/2) = 1 -> [-1, 0, 1]
    # group2: mean 2, deviations [-2,-2,4], unbiased var (4+4+16)/2 = 12, std 3.4641016151
    #         -> [-0.5773502692, -0.5773502692, 1.1547005384]  (biased std would give -0.7071)
    # group3: identical rewards -> 0 (eps prevents 0/0)
    exp = t([-1.0, 0.0, 1.0, -0.5773502692, -0.5773502692, 1.1547005384, 0.0, 0.0, 0.0])
    assert_close(adv, exp, atol=1e-9, rtol=0)
    assert_close(F.grpo_advantages(r, 3, scale_by_std=False), t([-1.0, 0.0, 1.0, -2.0, -2.0, 4.0, 0.0, 0.0, 0.0]))
    with pytest.raises(ValueError):
        F.grpo_advantages(r, 4)
    with pytest.raises(ValueError):
        F.grpo_advantages(r, 1)


def test_rloo_advantages_by_hand():
    r = t([1.0, 2.0, 3.0, 0.0, 0.0, 6.0])
    # [1,2,3]: 1-(2+3)/2 = -1.5, 2-(1+3)/2 = 0, 3-(1+2)/2 = 1.5
    # [0,0,6]: 0-(0+6)/2 = -3, -3, 6-0 = 6
    assert_close(F.rloo_advantages(r, 3), t([-1.5, 0.0, 1.5, -3.0, -3.0, 6.0]))


def test_explained_variance():
    ret = t([[1.0, 2.0, 3.0, 50.0]])
    mask = t([[1, 1, 1, 0]])
    assert_close(F.explained_variance(t([[1.0, 2.0, 3.0, 0.0]]), ret, mask), t(1.0))
    # residuals [-1, 0, 1] have the same variance as the returns -> 0
    assert_close(F.explained_variance(t([[2.0, 2.0, 2.0, 0.0]]), ret, mask), t(0.0))
    # V = [3, 2, 1]: residual [-2, 0, 2] has biased var 8/3, returns 2/3 -> 1 - 4 = -3
    assert_close(F.explained_variance(t([[3.0, 2.0, 1.0, 0.0]]), ret, mask), t(-3.0))
    assert math.isnan(F.explained_variance(t([[1.0, 1.0, 1.0, 0.0]]), t([[1.0, 1.0, 1.0, 0.0]]), mask).item())


# --------------------------------------------------------------------------------------------
# gradient accumulation equivalence
# --------------------------------------------------------------------------------------------
def _linear_policy_setup(seed=0):
    g = torch.Generator().manual_seed(seed)
    B, T, H, V = 6, 7, 5, 11
    torch.manual_seed(seed)
    policy = torch.nn.Linear(H, V).double()
    feats = torch.randn(B, T, H, generator=g, dtype=torch.float64)
    actions = torch.randint(0, V, (B, T), generator=g)
    lengths = torch.tensor([7, 3, 5, 1, 6, 2])
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(torch.float64)
    with torch.no_grad():
        old = _logp(policy, feats, actions) + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    adv = torch.randn(B, T, generator=g, dtype=torch.float64)
    return policy, feats, actions, mask, old, adv


def _logp(policy, feats, actions):
    return torch.log_softmax(policy(feats), -1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)


def _grads(policy):
    return [p.grad.detach().clone() for p in policy.parameters()]


@pytest.mark.parametrize(
    "agg,global_norm",
    [("token_mean", lambda mask: mask.sum()), ("seq_mean_token_mean", lambda mask: mask.shape[0]),
     ("seq_mean_token_sum", lambda mask: mask.shape[0]), ("constant", lambda mask: 42.0)],
)
def test_gradient_accumulation_equals_full_batch(agg, global_norm):
    policy, feats, actions, mask, old, adv = _linear_policy_setup()
    norm = global_norm(mask)
    policy.zero_grad()
    full_norm = norm if agg == "constant" else None  # full batch: default denominators are global
    loss, stats = F.ppo_policy_loss(_logp(policy, feats, actions), old, adv, mask, 0.2, agg, full_norm)
    loss.backward()
    full = _grads(policy)
    assert stats["clipfrac"].item() > 0  # the example exercises the clipped branch

    for splits in ([slice(0, 3), slice(3, 6)], [slice(0, 2), slice(2, 4), slice(4, 6)]):
        policy.zero_grad()
        for s in splits:
            lp = _logp(policy, feats[s], actions[s])
            micro_loss, _ = F.ppo_policy_loss(lp, old[s], adv[s], mask[s], 0.2, agg, normalizer=norm)
            micro_loss.backward()
        for a, b in zip(_grads(policy), full):
            assert_close(a, b)


def test_gradient_accumulation_without_global_normalizer_differs():
    # Negative control: dividing each micro-batch by its own token count (and averaging) is NOT the
    # full-batch gradient when micro-batches have different numbers of valid tokens.
    policy, feats, actions, mask, old, adv = _linear_policy_setup()
    policy.zero_grad()
    loss, _ = F.ppo_policy_loss(_logp(policy, feats, actions), old, adv, mask, 0.2, "token_mean")
    loss.backward()
    full = _grads(policy)
    policy.zero_grad()
    for s in (slice(0, 3), slice(3, 6)):  # 15 vs 9 valid tokens
        micro_loss, _ = F.ppo_policy_loss(_logp(policy, feats[s], actions[s]), old[s], adv[s], mask[s], 0.2)
        (micro_loss / 2).backward()
    assert not torch.allclose(_grads(policy)[0], full[0], rtol=1e-3, atol=1e-6)


# ------------------------------------------------------------------ group advantages with token rewards
def test_group_token_advantages_hand_derived():
    # completion 0: score 1, token rewards [0, 0, -1]; completion 1: score 0, token rewards [-1, 0], 2 tokens
    scores = torch.tensor([1.0, 0.0])
    tok = torch.tensor([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    # still to come: Y0 = [0, 0, 0]; Y1 = [-1, 0, (end) 0]; totals R = [0, -1], unbiased std 0.70711
    rloo = F.group_token_advantages(scores, tok, mask, 2, kind="rloo")
    assert torch.allclose(rloo, torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]]))
    dr = F.group_token_advantages(scores, tok, mask, 2, kind="grpo", scale_by_std=False)
    assert torch.allclose(dr, torch.tensor([[0.5, 0.0, 0.0], [-0.5, 0.0, 0.0]]))
    grpo = F.group_token_advantages(scores, tok, mask, 2, kind="grpo")
    assert torch.allclose(grpo, torch.tensor([[0.5, 0.0, 0.0], [-0.5, 0.0, 0.0]]) / (0.5 ** 0.5 + 1e-6), atol=1e-6)


@pytest.mark.parametrize("kind", ["grpo", "rloo"])
def test_group_token_advantages_without_token_rewards_are_the_scalar_ones(kind):
    scores = torch.tensor([1.0, 0.0, 3.0, 2.0, 5.0, 5.0])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]])
    adv = F.group_token_advantages(scores, torch.zeros(6, 4), mask, 3, kind=kind)
    ref = F.grpo_advantages(scores, 3) if kind == "grpo" else F.rloo_advantages(scores, 3)
    assert torch.allclose(adv, ref[:, None] * mask, atol=1e-6)


def test_group_token_advantages_shared_penalties_do_not_reward_late_tokens():
    # both completions hit the length cap and pay the same per-token penalties from token 1 on; only
    # their scores differ. The advantage is the scalar GRPO one on every token: no systematic push on
    # late tokens (a constant baseline against reward-to-go gave token 3 a large positive advantage).
    scores = torch.tensor([0.3, 0.1])
    tok = torch.tensor([[0.0, -1.0, -1.0, -1.0]] * 2)
    adv = F.group_token_advantages(scores, tok, torch.ones(2, 4), 2, kind="grpo")
    ref = F.grpo_advantages(scores + tok.sum(1), 2)
    assert torch.allclose(adv, ref[:, None].expand(2, 4), atol=1e-5)


def test_group_token_advantages_credit_the_completion_that_stopped():
    # completion 0 ends after 2 tokens; completion 1 goes on and pays -1 per token from token 2 on
    scores = torch.tensor([0.0, 0.0])
    tok = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, -1.0]])
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    adv = F.group_token_advantages(scores, tok, mask, 2, kind="rloo")
    assert torch.allclose(adv, torch.tensor([[2.0, 2.0, 0.0, 0.0], [-2.0, -2.0, -2.0, -1.0]]))


def test_group_token_advantages_check_the_group_size():
    with pytest.raises(ValueError, match="groups of 4"):
        F.group_token_advantages(torch.zeros(6), torch.zeros(6, 2), torch.ones(6, 2), 4)


def test_batch_normalizer_makes_micro_batches_sum_to_the_mini_batch():
    torch.manual_seed(0)
    loss = torch.randn(4, 5)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]])
    for mode in F.AGG_MODES:
        norm = F.batch_normalizer(mode, n_rows=4, n_tokens=int(mask.sum()), tokens_per_row=8)
        whole = F.aggregate(loss, mask, mode, norm)
        parts = F.aggregate(loss[:2], mask[:2], mode, norm) + F.aggregate(loss[2:], mask[2:], mode, norm)
        assert torch.allclose(whole, parts)
    # by hand: Dr. GRPO's constant = rows x generation budget; token_mean = valid tokens
    assert F.batch_normalizer("constant", 4, 11, 8) == 32.0 and F.batch_normalizer("token_mean", 4, 11) == 11.0
    assert F.aggregate(loss, mask, "constant", 32.0) == pytest.approx(float((loss * mask).sum() / 32))
    with pytest.raises(ValueError, match="tokens_per_row"):
        F.batch_normalizer("constant", 4, 11)
