"""The shared-prompt forward (sumrl.models.grouped) equals the unshared plain path: hidden states,
log-probs through chunked_token_logprobs, a value head, and LoRA gradients (float32, 1e-5)."""

from __future__ import annotations

import pytest
import torch

from sumrl.models.grouped import grouped_response_hidden, grouped_token_logprobs, prefill, split_groups
from sumrl.models.logprobs import IGNORE_INDEX, chunked_token_logprobs, model_hidden_states, output_head

TOL = 1e-5


def _tiny(kind: str, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    common = dict(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0, tie_word_embeddings=True)
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(**common)).eval()
    return Qwen2ForCausalLM(Qwen2Config(**common)).eval()


def _lora(model):
    from sumrl.models.lora import add_lora

    m = add_lora(model, r=4, alpha=8)
    # peft initialises B = 0 (the adapter is a no-op); random B makes the gradient test meaningful.
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    return m


def _batch(P=3, G=4, Lq=12, T=6, seed=1):
    """Left-padded prompts of different lengths per group, right-padded responses."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(1, 97, (P, Lq), generator=g)
    qm = torch.ones(P, Lq, dtype=torch.long)
    for p, pad in enumerate([0, 5, 9][:P]):
        q[p, :pad], qm[p, :pad] = 0, 0
    r = torch.randint(1, 97, (P * G, T), generator=g)
    rm = torch.ones(P * G, T, dtype=torch.long)
    for row, n in [(1, 2), (4, 5), (P * G - 1, 1)]:
        if row >= P * G or n >= T:
            continue
        r[row, n:], rm[row, n:] = 0, 0
    return q, qm, r, rm, G


def _plain(model, q, qm, r, rm, G):
    Lq, T = q.shape[1], r.shape[1]
    ids = torch.cat([q.repeat_interleave(G, 0), r], 1)
    mask = torch.cat([qm.repeat_interleave(G, 0), rm], 1)
    return model_hidden_states(model, ids, mask)[:, Lq - 1:Lq - 1 + T]


def _logp(model, h, r, rm, temperature=1.0):
    w, cap = output_head(model)
    tgt = torch.where(rm.bool(), r, torch.full_like(r, IGNORE_INDEX))
    return chunked_token_logprobs(h / temperature, w, tgt, chunk_size=7, softcap=cap)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("chunk", [None, 1, 5, 100])
def test_no_grad_hidden_and_logprobs_equal_plain(kind, chunk):
    model = _lora(_tiny(kind))
    q, qm, r, rm, G = _batch()
    with torch.no_grad():
        ref = _plain(model, q, qm, r, rm, G)
        h = grouped_response_hidden(model, q, qm, r, rm, prefill_chunk=chunk)
        out = grouped_token_logprobs(model, q, qm, r, rm, temperature=0.7, chunk_size=7, prefill_chunk=chunk,
                                     return_entropy=True)
        ref_lp = _logp(model, ref, r, rm, 0.7)
    valid = rm.bool()
    assert h.shape == ref.shape
    assert torch.allclose(h[valid], ref[valid], atol=TOL, rtol=0)
    assert torch.allclose(out["logprobs"], ref_lp, atol=TOL, rtol=0)
    assert bool((out["logprobs"][~valid] == 0).all()) and bool((out["entropy"][valid] > 0).all())


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_lora_gradients_equal_plain(kind, checkpointing):
    """The training forward: log-prob loss + value-head loss, gradients of every LoRA tensor and
    of the value head equal to the unshared computation."""
    from sumrl.rl.value import ValueHead

    model = _lora(_tiny(kind))
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()  # checkpointing only acts in training mode (dropout is 0 in these configs)
    head = ValueHead(64)
    q, qm, r, rm, G = _batch()
    coef = torch.randn(r.shape, generator=torch.Generator().manual_seed(3))

    def grads(h):
        lp = _logp(model, h, r, rm)
        v = head(h.float())
        loss = (lp * coef * rm).sum() + ((v - coef) ** 2 * rm).sum() * 0.1
        model.zero_grad(set_to_none=True)
        head.zero_grad(set_to_none=True)
        loss.backward()
        named = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        named.update({f"head.{n}": p.grad.detach().clone() for n, p in head.named_parameters()})
        return loss.detach(), lp.detach(), v.detach(), named

    l_ref, lp_ref, v_ref, g_ref = grads(_plain(model, q, qm, r, rm, G))
    l_sh, lp_sh, v_sh, g_sh = grads(grouped_response_hidden(model, q, qm, r, rm))
    valid = rm.bool()
    assert torch.allclose(lp_sh, lp_ref, atol=TOL, rtol=0)
    assert torch.allclose(v_sh[valid], v_ref[valid], atol=TOL, rtol=0)
    assert abs(float(l_sh - l_ref)) <= TOL * max(1.0, abs(float(l_ref)))
    assert g_ref.keys() == g_sh.keys() and any("lora_A" in n for n in g_ref)
    for n in g_ref:
        scale = max(1.0, float(g_ref[n].abs().max()))
        assert torch.allclose(g_sh[n], g_ref[n], atol=TOL * scale, rtol=0), n
    # the prompt pass itself gets gradient: the k/v LoRA of layer 0 sees only prompt + response
    assert any(float(g.abs().max()) > 0 for n, g in g_sh.items() if "k_proj.lora_B" in n)


def test_single_token_responses_and_group_of_one():
    model = _tiny("llama")
    q, qm, r, rm, _ = _batch(P=2, G=1, T=1)
    with torch.no_grad():
        assert torch.allclose(grouped_response_hidden(model, q, qm, r, rm), _plain(model, q, qm, r, rm, 1), atol=TOL)


def test_prefill_last_hidden_matches_plain_last_position():
    model = _tiny("qwen2")
    q, qm, *_ = _batch()
    with torch.no_grad():
        last, cache = prefill(model, q, qm, chunk=4)
        ref = model_hidden_states(model, q, qm)[:, -1]
    assert torch.allclose(last, ref, atol=TOL)
    assert cache.get_seq_length() == q.shape[1]


def test_split_groups():
    q = torch.tensor([[0, 1, 2], [0, 1, 2], [3, 4, 5], [3, 4, 5]])
    m = (q > 0).long()
    pq, pm = split_groups(q, m, 2)
    assert pq.tolist() == [[0, 1, 2], [3, 4, 5]] and pm.tolist() == [[0, 1, 1], [1, 1, 1]]
    with pytest.raises(ValueError, match="share one prompt"):
        split_groups(q, m, 4)
    with pytest.raises(ValueError, match="groups of 3"):
        split_groups(q, m, 3)


def test_prefill_chunk_refused_under_grad():
    model = _tiny("llama")
    q, qm, r, rm, _ = _batch()
    with pytest.raises(ValueError, match="no-grad"):
        grouped_response_hidden(model, q, qm, r, rm, prefill_chunk=4)


def test_variable_group_sizes_and_consecutive_groups():
    """Groups of different sizes (a reference trajectory took one slot; PPO's one row per prompt):
    hidden states and LoRA gradients still equal the plain path."""
    from sumrl.models.grouped import consecutive_groups

    model = _lora(_tiny("qwen2"))
    q, qm, r, rm, _ = _batch(P=3, G=2)
    sizes = [3, 1, 2]
    rows_q = q.repeat_interleave(torch.tensor(sizes), 0)
    rows_m = qm.repeat_interleave(torch.tensor(sizes), 0)
    pq, pm, got_sizes = consecutive_groups(rows_q, rows_m)
    assert got_sizes == sizes and torch.equal(pq, q) and torch.equal(pm, qm)
    Lq, T = q.shape[1], r.shape[1]

    def run(shared):
        model.zero_grad(set_to_none=True)
        if shared:
            h = grouped_response_hidden(model, pq, pm, r, rm, group_sizes=got_sizes)
        else:
            h = model_hidden_states(model, torch.cat([rows_q, r], 1), torch.cat([rows_m, rm], 1))[:, Lq - 1:Lq - 1 + T]
        lp = _logp(model, h, r, rm)
        lp.sum().backward()
        return lp.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    lp0, g0 = run(False)
    lp1, g1 = run(True)
    assert torch.allclose(lp1, lp0, atol=TOL, rtol=0)
    for n in g0:
        assert torch.allclose(g1[n], g0[n], atol=TOL * max(1.0, float(g0[n].abs().max())), rtol=0), n
    with pytest.raises(ValueError, match="group_sizes"):
        grouped_response_hidden(model, pq, pm, r, rm, group_sizes=[3, 3, 0])


def test_bf16_autocast_runs_and_stays_within_bf16_noise():
    """Under bf16 autocast the shared path is not bit-equal to the plain one (different op shapes
    round differently) but stays within bf16 noise: no larger than bf16-vs-fp32 itself here."""
    model = _lora(_tiny("llama"))
    q, qm, r, rm, G = _batch()
    with torch.no_grad():
        fp32 = _logp(model, _plain(model, q, qm, r, rm, G), r, rm)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            plain = _logp(model, _plain(model, q, qm, r, rm, G), r, rm)
            shared = _logp(model, grouped_response_hidden(model, q, qm, r, rm, prefill_chunk=4), r, rm)
    assert float((shared - plain).abs().max()) < 2e-2
    assert float((shared - fp32).abs().max()) < 2e-2


# ------------------------------------------------------------------ memory: micro-batches, checkpointing
def test_micro_batches_keep_groups_whole_and_respect_both_budgets():
    from sumrl.models.grouped import grad_tokens, micro_batches

    # three groups (sizes 3, 2, 4) of prompts with 10, 6 and 8 real tokens (width 10), responses of 4 tokens
    lens, sizes = [10, 6, 8], [3, 2, 4]
    q = torch.zeros(9, 10, dtype=torch.long)
    qm = torch.zeros(9, 10, dtype=torch.long)
    row = 0
    for p, (n, g) in enumerate(zip(lens, sizes)):
        for _ in range(g):
            q[row, 10 - n:] = p + 1
            qm[row, 10 - n:] = 1
            row += 1
    rm = torch.ones(9, 4, dtype=torch.long)
    rm[0, 2:] = 0  # a short response: the group's longest (4) sets the width
    # rows only: no token budget
    assert micro_batches(q, qm, rm, max_rows=5, max_tokens=None, shared=True) == [[0, 1, 2, 3, 4], [5, 6, 7, 8]]
    # rows cap smaller than a group: the group is split by rows (as a row count always did)
    assert micro_batches(q, qm, rm, max_rows=2, max_tokens=None, shared=True) == [[0, 1], [2], [3, 4], [5, 6], [7, 8]]
    # token budget, shared prompt counted once per group: group 1 = 10 + 3 x 4 = 22, groups 1 + 2 = 2 x 10 + 5 x 4 = 40
    assert micro_batches(q, qm, rm, max_rows=16, max_tokens=40, shared=True) == [[0, 1, 2, 3, 4], [5, 6, 7, 8]]
    # groups 2 + 3 = 2 x 8 + 6 x 4 = 40 > 39; all three = 3 x 10 + 9 x 4 = 66
    assert micro_batches(q, qm, rm, max_rows=16, max_tokens=39, shared=True) == [[0, 1, 2], [3, 4], [5, 6, 7, 8]]
    assert micro_batches(q, qm, rm, max_rows=16, max_tokens=66, shared=True) == [list(range(9))]
    # a group larger than the budget is never split for it: it runs alone
    assert micro_batches(q, qm, rm, max_rows=16, max_tokens=5, shared=True) == [[0, 1, 2], [3, 4], [5, 6, 7, 8]]
    # plain rows: each row costs its prompt + response; longest of the micro-batch sets both widths
    assert micro_batches(q, qm, rm, max_rows=16, max_tokens=28, shared=False) == [[0, 1], [2, 3], [4, 5], [6, 7], [8]]
    # the cost model is the pass's own count on the trimmed micro-batch
    assert grad_tokens(q[:5, 0:], qm[:5], rm[:5], shared=True) == 2 * 10 + 5 * 4
    assert grad_tokens(q[:5], qm[:5], rm[:5], shared=False) == 5 * 14
    assert micro_batches(q[:0], qm[:0], rm[:0], max_rows=4, max_tokens=8, shared=True) == []


def _count_calls(model):
    """Forward calls of every decoder layer's MLP (a checkpointing replay calls it again)."""
    calls = [0]
    for name, m in model.named_modules():
        if name.endswith("mlp"):  # wraps forward: module hooks do not fire in a checkpoint's replay
            def counted(*a, _f=m.forward, **kw):
                calls[0] += 1
                return _f(*a, **kw)

            m.forward = counted
    return calls


@pytest.mark.parametrize("shared", [False, True])
def test_activation_checkpointing_switch_is_exact_and_restored(shared):
    from sumrl.models.grouped import activation_checkpointing
    from transformers.modeling_layers import GradientCheckpointingLayer

    model = _lora(_tiny("llama"))
    model.train()
    calls = _count_calls(model)
    q, qm, r, rm, G = _batch()

    def grads(on):
        model.zero_grad(set_to_none=True)
        calls[0] = 0
        with activation_checkpointing(model, on):
            h = grouped_response_hidden(model, q, qm, r, rm) if shared else _plain(model, q, qm, r, rm, G)
            lp = _logp(model, h, r, rm)
            (lp * rm).sum().backward()
        return calls[0], {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    n_off, g_off = grads(False)
    n_on, g_on = grads(True)
    assert n_on == 2 * n_off > 0  # every layer replayed once in backward: checkpointing did act
    assert g_off.keys() == g_on.keys() and len(g_off) > 0
    for n in g_off:
        assert torch.allclose(g_on[n], g_off[n], atol=TOL, rtol=0), n
    # the model's own setting is back (off: never enabled)
    assert not any(m.gradient_checkpointing for m in model.modules() if isinstance(m, GradientCheckpointingLayer))


def test_module_checkpoints_by_prompt_length_auto():
    """PolicyValueModule(checkpointing="auto"): recompute only for passes over more than
    checkpoint_tokens positions under gradient; log-probs and gradients equal either way."""
    from sumrl.rl.value import PolicyValueModule

    model = _lora(_tiny("llama"))
    model.train()
    calls = _count_calls(model)
    q, qm, r, rm, G = _batch()
    qr, qmr = q.repeat_interleave(G, 0), qm.repeat_interleave(G, 0)
    tokens = 3 * q.shape[1] + 3 * G * r.shape[1]  # 3 prompts once + 12 responses
    results = {}
    for name, setting, limit in (("off", False, 1), ("auto-below", "auto", tokens), ("auto-above", "auto", tokens - 1),
                                 ("on", True, 10 ** 9)):
        m = PolicyValueModule(model, share_prompt=True, checkpointing=setting, checkpoint_tokens=limit)
        model.zero_grad(set_to_none=True)
        calls[0] = 0
        out = m(qr, qmr, r, rm)
        (out["logprobs"] * rm).sum().backward()
        results[name] = (calls[0], out["logprobs"].detach(),
                         {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        with torch.no_grad():  # no gradient: never checkpointed
            calls[0] = 0
            m(qr, qmr, r, rm)
            assert calls[0] == results["off"][0]
    assert results["auto-below"][0] == results["off"][0]
    assert results["auto-above"][0] == results["on"][0] == 2 * results["off"][0]
    for name in ("auto-below", "auto-above", "on"):
        assert torch.allclose(results[name][1], results["off"][1], atol=TOL, rtol=0)
        for n, g in results["off"][2].items():
            assert torch.allclose(results[name][2][n], g, atol=TOL, rtol=0), (name, n)
