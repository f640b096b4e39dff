"""Chunked log-probabilities equal the full-logits computation (values, gradients, entropy)."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from sumrl.models.logprobs import (
    chunked_cross_entropy,
    chunked_token_logprobs,
    find_decoder,
    model_hidden_states,
    model_token_logprobs,
    next_token_targets,
    output_head,
)

V = 97


# --------------------------------------------------------------------------------------------
# references (full logits)
# --------------------------------------------------------------------------------------------
def full_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Reference: log_softmax over the full (B, T, V) logits, gathered, 0 at ignored positions."""
    lp = torch.log_softmax(logits.float() if logits.dtype != torch.float64 else logits, dim=-1)
    valid = targets != -100
    g = lp.gather(-1, torch.where(valid, targets, 0).unsqueeze(-1)).squeeze(-1)
    return torch.where(valid, g, torch.zeros_like(g))


def full_entropy(logits: torch.Tensor) -> torch.Tensor:
    lp = torch.log_softmax(logits.float(), dim=-1)
    return -(lp.exp() * lp).sum(-1)


def head_logits(hidden, weight, softcap=None):
    z = hidden @ weight.t()
    return z if softcap is None else softcap * torch.tanh(z / softcap)


def random_targets(B, T, g, frac_ignore=0.3):
    tg = torch.randint(0, V, (B, T), generator=g)
    ign = torch.rand(B, T, generator=g) < frac_ignore
    return torch.where(ign, torch.full_like(tg, -100), tg)


# --------------------------------------------------------------------------------------------
# tensor-level function
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("softcap", [None, 2.0])
@pytest.mark.parametrize("chunk_size", [1, 3, 4, 100])
def test_function_values_and_grads_float64(softcap, chunk_size):
    g = torch.Generator().manual_seed(0)
    B, T, H = 2, 6, 8
    hidden = (torch.randn(B, T, H, generator=g, dtype=torch.float64) * 2).requires_grad_()
    weight = torch.randn(V, H, generator=g, dtype=torch.float64).requires_grad_()
    targets = random_targets(B, T, g)
    upstream = torch.randn(B, T, generator=g, dtype=torch.float64)

    lp, ent = chunked_token_logprobs(hidden, weight, targets, chunk_size=chunk_size, softcap=softcap, return_entropy=True)
    (lp * upstream).sum().backward()
    gh, gw = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None

    logits = head_logits(hidden, weight, softcap)
    ref = full_logprobs(logits, targets)
    (ref * upstream).sum().backward()
    assert_close(lp, ref)
    assert_close(gh, hidden.grad)
    assert_close(gw, weight.grad)
    valid = targets != -100
    assert_close(ent, torch.where(valid, -(logits.log_softmax(-1).exp() * logits.log_softmax(-1)).sum(-1), 0.0).detach())
    # ignored positions: value exactly 0 and no gradient into their hidden state
    assert (lp[~valid] == 0).all()
    assert (gh[~valid] == 0).all()


def test_softcap_changes_the_result():
    # negative control: with logits well above the cap, ignoring the cap would be visibly wrong
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(1, 4, 8, generator=g, dtype=torch.float64) * 5
    weight = torch.randn(V, 8, generator=g, dtype=torch.float64)
    targets = torch.randint(0, V, (1, 4), generator=g)
    capped = chunked_token_logprobs(hidden, weight, targets, chunk_size=2, softcap=3.0)
    plain = chunked_token_logprobs(hidden, weight, targets, chunk_size=2)
    assert (capped - plain).abs().max() > 1.0
    assert_close(capped, full_logprobs(head_logits(hidden, weight, 3.0), targets))


def test_gradcheck_handwritten_backward():
    # finite differences against the derived backward, with soft-capping and ignored positions
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(1, 5, 4, generator=g, dtype=torch.float64).requires_grad_()
    weight = torch.randn(V, 4, generator=g, dtype=torch.float64).requires_grad_()
    targets = torch.tensor([[3, -100, 96, 0, 50]])
    fn = lambda h, w: chunked_token_logprobs(h, w, targets, chunk_size=2, softcap=1.5)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (hidden, weight), eps=1e-6, atol=1e-6)


def test_all_ignored_gives_zeros_and_zero_grad():
    hidden = torch.randn(2, 3, 8, requires_grad=True)
    weight = torch.randn(V, 8, requires_grad=True)
    targets = torch.full((2, 3), -100)
    lp = chunked_token_logprobs(hidden, weight, targets, chunk_size=2)
    assert lp.shape == (2, 3) and (lp == 0).all()
    lp.sum().backward()
    assert (hidden.grad == 0).all() and (weight.grad == 0).all()


def test_bad_targets_and_shapes_raise():
    hidden, weight = torch.randn(1, 3, 8), torch.randn(V, 8)
    with pytest.raises(ValueError):
        chunked_token_logprobs(hidden, weight, torch.tensor([[0, V, 1]]))
    with pytest.raises(ValueError):
        chunked_token_logprobs(hidden, weight, torch.tensor([[0, -5, 1]]))
    with pytest.raises(ValueError):
        chunked_token_logprobs(hidden, weight, torch.tensor([[0, 1, 1]]), chunk_size=0)
    with pytest.raises(ValueError):
        chunked_token_logprobs(hidden, torch.randn(V, 7), torch.tensor([[0, 1, 1]]))


def test_bfloat16_close_to_full_computation():
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 5, 16, generator=g).to(torch.bfloat16).requires_grad_()
    weight = torch.randn(V, 16, generator=g).to(torch.bfloat16).requires_grad_()
    targets = random_targets(2, 5, g)
    lp = chunked_token_logprobs(hidden, weight, targets, chunk_size=3)
    assert lp.dtype == torch.float32
    lp.sum().backward()
    gh, gw = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    ref = full_logprobs(hidden @ weight.t(), targets)
    ref.sum().backward()
    assert_close(lp, ref, atol=1e-5, rtol=1e-5)
    assert gh.dtype == torch.bfloat16 and gw.dtype == torch.bfloat16
    assert_close(gh.float(), hidden.grad.float(), atol=2e-2, rtol=2e-2)
    assert_close(gw.float(), weight.grad.float(), atol=2e-2, rtol=2e-2)


def test_no_full_logits_are_saved_for_backward():
    # The memory argument, checked structurally: nothing the size of (positions x V) is kept
    # between forward and backward. Negative control: the naive path does keep such tensors.
    B, T, H = 4, 16, 8
    n_pos = B * T
    hidden = torch.randn(B, T, H, requires_grad=True)
    weight = torch.randn(V, H, requires_grad=True)
    targets = torch.randint(0, V, (B, T))

    def saved_sizes(fn):
        sizes = []

        def pack(x):
            sizes.append(x.numel())
            return x

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            fn()
        return sizes

    chunked = saved_sizes(lambda: chunked_token_logprobs(hidden, weight, targets, chunk_size=8))
    naive = saved_sizes(lambda: full_logprobs(hidden @ weight.t(), targets))
    assert max(chunked) < n_pos * V  # largest saved: the (V, H) weight / (B*T, H) hidden
    assert max(chunked) <= max(weight.numel(), hidden.numel())
    assert max(naive) >= n_pos * V


def test_chunked_cross_entropy_matches_torch():
    g = torch.Generator().manual_seed(4)
    hidden = torch.randn(2, 7, 8, generator=g, requires_grad=True)
    weight = torch.randn(V, 8, generator=g)
    labels = random_targets(2, 7, g)
    loss_sum, n = chunked_cross_entropy(hidden, weight, labels, chunk_size=5)
    ref = torch.nn.functional.cross_entropy((hidden @ weight.t()).reshape(-1, V), labels.reshape(-1), reduction="sum")
    assert_close(loss_sum, ref)
    assert n.item() == int((labels != -100).sum())


def test_next_token_targets_by_hand():
    ids = torch.tensor([[5, 6, 7, 8], [1, 2, 3, 0]])
    resp = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 0]])
    # row0: positions 1, 2 predict tokens 7, 8 (response); row1: positions 0, 1 predict 2, 3
    assert next_token_targets(ids, resp).tolist() == [[-100, 7, 8, -100], [2, 3, -100, -100]]
    assert next_token_targets(ids).tolist() == [[6, 7, 8, -100], [2, 3, 0, -100]]


# --------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------
def tiny_llama(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )
    return LlamaForCausalLM(cfg).eval()


def tiny_gemma3(seed=0, softcap=30.0):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    cfg = Gemma3TextConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8,
        max_position_embeddings=128, sliding_window=4, final_logit_softcapping=softcap,
    )
    model = Gemma3ForCausalLM(cfg).eval()
    with torch.no_grad():
        # Random init gives |logits| < 1, where tanh(x/30)*30 is the identity; scale the (tied)
        # embedding so logits exceed the cap and the soft-capping path is really exercised.
        model.get_input_embeddings().weight.mul_(100.0)
    return model


def batch(B=3, T=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, T), generator=g)
    am = torch.ones(B, T, dtype=torch.long)
    am[1, :3] = 0  # left padding (prompt side)
    am[2, -2:] = 0  # right padding (response side)
    targets = next_token_targets(ids, am)
    return ids, am, targets


def reference_model_logprobs(model, ids, am, targets):
    pos = (am.cumsum(-1) - 1).masked_fill(am == 0, 0)
    logits = model(input_ids=ids, attention_mask=am, position_ids=pos).logits
    return full_logprobs(logits, targets), logits


MODELS = {"llama": tiny_llama, "gemma3": tiny_gemma3}


@pytest.mark.parametrize("name", list(MODELS))
def test_model_values_entropy_several_chunk_sizes(name):
    model = MODELS[name]()
    ids, am, targets = batch()
    with torch.no_grad():
        ref, logits = reference_model_logprobs(model, ids, am, targets)
        ref_ent = torch.where(targets != -100, full_entropy(logits), 0.0)
        for cs in (1, 4, 5, 27, 1000):  # 5 does not divide the 20 valid positions; 1000 > B*T
            lp, ent = model_token_logprobs(model, ids, am, targets, chunk_size=cs, return_entropy=True)
            assert_close(lp, ref, atol=1e-5, rtol=0)
            assert_close(ent, ref_ent, atol=1e-5, rtol=0)
            assert (lp[targets == -100] == 0).all()
    if name == "gemma3":
        weight, softcap = output_head(model)
        hidden = model_hidden_states(model, ids, am)
        assert softcap == 30.0
        assert (hidden @ weight.t()).abs().max() > 30.0  # the cap is active in this test


@pytest.mark.parametrize("name", list(MODELS))
def test_model_single_position(name):
    model = MODELS[name]()
    ids = torch.tensor([[5], [7]])
    am = torch.ones(2, 1, dtype=torch.long)
    targets = torch.tensor([[11], [-100]])
    with torch.no_grad():
        ref, _ = reference_model_logprobs(model, ids, am, targets)
        assert_close(model_token_logprobs(model, ids, am, targets, chunk_size=3), ref, atol=1e-5, rtol=0)


def _param_grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", list(MODELS))
def test_model_gradients_equal_full_logits(name):
    model = MODELS[name]()
    ids, am, targets = batch(seed=1)
    upstream = torch.randn(targets.shape, generator=torch.Generator().manual_seed(5))

    model.zero_grad()
    lp = model_token_logprobs(model, ids, am, targets, chunk_size=4)
    (lp * upstream).sum().backward()
    chunked = _param_grads(model)

    model.zero_grad()
    ref, _ = reference_model_logprobs(model, ids, am, targets)
    (ref * upstream).sum().backward()
    full = _param_grads(model)

    assert chunked.keys() == full.keys() and len(full) > 5
    head_name = next(n for n in full if "embed_tokens" in n or "lm_head" in n)
    assert full[head_name].abs().sum() > 0
    for n in full:
        assert_close(chunked[n], full[n], atol=1e-5, rtol=1e-4, msg=n)


def test_find_decoder_returns_trunk_not_model():
    model = tiny_llama()
    dec = find_decoder(model)
    assert dec is model.model
    gem = tiny_gemma3()
    assert find_decoder(gem) is gem.model
    assert output_head(model)[1] is None  # Llama: no soft-capping


def test_peft_lora_model():
    from peft import LoraConfig, get_peft_model

    base = tiny_llama(seed=3)
    ids, am, targets = batch(seed=2)
    with torch.no_grad():
        base_lp = model_token_logprobs(base, ids, am, targets)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, init_lora_weights=False)
    model = get_peft_model(base, cfg)
    assert find_decoder(model) is model.get_base_model().model

    lp = model_token_logprobs(model, ids, am, targets, chunk_size=3)
    # LoRA (random non-zero B) really applies: the result moved away from the base model's ...
    assert (lp.detach() - base_lp).abs().max() > 1e-3
    upstream = torch.randn(targets.shape, generator=torch.Generator().manual_seed(6))
    model.zero_grad()
    (lp * upstream).sum().backward()
    chunked = _param_grads(model)

    # ... and equals the peft model's own full-logits forward, values and LoRA gradients
    model.zero_grad()
    ref, _ = reference_model_logprobs(model, ids, am, targets)
    assert_close(lp.detach(), ref.detach(), atol=1e-5, rtol=0)
    (ref * upstream).sum().backward()
    full = _param_grads(model)
    assert chunked.keys() == full.keys()
    assert all("lora_" in n for n in full) and len(full) == 2 * 2 * 2  # 2 layers x 2 modules x (A, B)
    for n in full:
        assert_close(chunked[n], full[n], atol=1e-5, rtol=1e-4, msg=n)


def test_peft_modules_to_save_head_and_lora_head():
    from peft import LoraConfig, get_peft_model

    ids, am, targets = batch(seed=3)
    model = get_peft_model(tiny_llama(seed=4), LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["lm_head"]))
    with torch.no_grad():
        # the trainable copy of the head must be the one used
        model.get_base_model().lm_head.modules_to_save["default"].weight.mul_(3.0)
        ref, _ = reference_model_logprobs(model, ids, am, targets)
        assert_close(model_token_logprobs(model, ids, am, targets), ref, atol=1e-5, rtol=0)

    lora_head = get_peft_model(tiny_llama(seed=4), LoraConfig(r=2, target_modules=["q_proj", "lm_head"]))
    with pytest.raises(ValueError, match="LM head"):
        model_token_logprobs(lora_head, ids, am, targets)
