"""The group sampler (sumrl.generation.sampler) against today's rl.rollout.sample (model.generate)."""

from __future__ import annotations

import pytest
import torch

from sumrl.generation.sampler import merged_lora, sample_groups
from sumrl.generation.engine import sample
from sumrl.rl.rollout import truncate_at_eos


def _model(lora: bool = False, seed: int = 0):
    from conftest import build_tiny_model, build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    model = build_tiny_model(tok, seed=seed).eval()
    if lora:
        from sumrl.models.lora import add_lora

        model = add_lora(model, r=4, alpha=8)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.3)
    return model, tok


PROMPTS = [[5, 17, 33, 2, 90, 41, 7], [12, 8, 250, 61], [300, 301, 44, 45, 46, 47, 48, 49, 50, 51]]


def _plain(model, prompts, G, **kw):
    rep = [p for p in prompts for _ in range(G)]
    raw = sample(model, rep, **kw)
    return [truncate_at_eos(r, kw["stop_ids"])[0] for r in raw]


def _stops_that_fire(model, tok, prompts, G):
    """Stop ids taken from a greedy run so that rows end at different steps (a random tiny model
    rarely emits its real end token)."""
    raw = _plain(model, prompts, G, max_new_tokens=12, temperature=0.0, top_p=1.0, stop_ids=[tok.eos_token_id],
                 pad_id=tok.pad_token_id)
    return sorted({raw[0][3], raw[-1][6], tok.eos_token_id})


@pytest.mark.parametrize("compact", [True, False])
@pytest.mark.parametrize("chunk", [None, 3])
def test_greedy_equals_rollout_sample(compact, chunk):
    model, tok = _model()
    G = 2
    stops = _stops_that_fire(model, tok, PROMPTS, G)
    kw = dict(max_new_tokens=12, temperature=0.0, top_p=1.0, stop_ids=stops, pad_id=tok.pad_token_id)
    want = _plain(model, PROMPTS, G, **kw)
    got = sample_groups(model, PROMPTS, group_size=G, prefill_chunk=chunk, compact=compact, **kw)
    assert got == want
    lens = {len(r) for r in got}
    assert len(lens) > 1 and max(lens) == 12  # some rows stopped early, some ran to the limit


def test_seeded_sampling_equals_generate_without_compaction():
    model, tok = _model()
    G = 3
    stops = _stops_that_fire(model, tok, PROMPTS, G) + list(range(60, 90))  # ~8% chance per step
    limits = [10, 4, 10, 10, 7, 10, 2, 10, 10]
    kw = dict(max_new_tokens=limits, temperature=0.7, top_p=1.0, stop_ids=stops, pad_id=tok.pad_token_id)
    torch.manual_seed(123)
    want = _plain(model, PROMPTS, G, **kw)
    torch.manual_seed(123)
    got = sample_groups(model, PROMPTS, group_size=G, compact=False, **kw)
    assert got == want
    assert all(len(r) <= lim for r, lim in zip(got, limits))
    assert len({tuple(r) for r in got}) > 3  # really sampled: the group's rows differ


def test_top_p_uses_the_nucleus():
    model, tok = _model()
    kw = dict(max_new_tokens=6, top_p=0.3, stop_ids=[tok.eos_token_id], pad_id=tok.pad_token_id)
    torch.manual_seed(5)
    want = _plain(model, PROMPTS, 2, temperature=1.3, **kw)
    torch.manual_seed(5)
    got = sample_groups(model, PROMPTS, group_size=2, temperature=1.3, compact=False, **kw)
    assert got == want


def test_compact_sampling_rows_end_at_a_stop_or_their_limit():
    """With compaction the random stream differs from generate()'s (the arithmetic of the kept rows
    is checked exactly by the greedy test with early stops); rows end at their first stop token or
    at their limit, and the group's rows differ."""
    model, tok = _model()
    stops = list(range(60, 200))  # ~35% of the vocabulary: most rows stop early, at different steps
    torch.manual_seed(0)
    got = sample_groups(model, [PROMPTS[0], PROMPTS[1]], group_size=16, max_new_tokens=8, temperature=1.0,
                        stop_ids=stops, pad_id=tok.pad_token_id)
    assert len(got) == 32
    for r in got:
        assert 1 <= len(r) <= 8
        assert (r[-1] in stops) or len(r) == 8
        assert all(t not in stops for t in r[:-1])
    assert len({len(r) for r in got}) > 2 and len({tuple(r) for r in got}) > 16


def test_merged_lora_greedy_equal_and_weights_restored_exactly():
    from sumrl.models.logprobs import model_token_logprobs, next_token_targets

    model, tok = _model(lora=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stops = [tok.eos_token_id]
    kw = dict(max_new_tokens=10, temperature=0.0, stop_ids=stops, pad_id=tok.pad_token_id)
    unmerged = sample_groups(model, PROMPTS, group_size=2, **kw)
    merged = sample_groups(model, PROMPTS, group_size=2, merge_lora=True, **kw)
    assert merged == unmerged == _plain(model, PROMPTS, 2, top_p=1.0, **kw)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n  # bit for bit, not just within rounding
        assert not p.is_inference(), n
    # the model still trains after merged generation (no inference tensors left in it)
    out = model(torch.tensor([PROMPTS[0]]))
    out.logits.float().logsumexp(-1).sum().backward()
    assert any(p.grad is not None for n, p in model.named_parameters() if "lora_A" in n)
    model.zero_grad(set_to_none=True)
    # log-probs of the generated tokens computed with the adapters merged equal the unmerged ones
    rows = [p + r for p, r in zip([p for p in PROMPTS for _ in range(2)], unmerged)]
    width = max(map(len, rows))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    tgt = next_token_targets(ids, mask)
    with torch.no_grad():
        lp = model_token_logprobs(model, ids, mask, tgt)
        with merged_lora(model):
            lp_m = model_token_logprobs(model, ids, mask, tgt)
    assert torch.allclose(lp, lp_m, atol=1e-5)
    # the adapters matter (otherwise the test above proves nothing)
    from sumrl.models.lora import adapters_disabled

    with adapters_disabled(model), torch.no_grad():
        lp_base = model_token_logprobs(model, ids, mask, tgt)
    assert float((lp - lp_base).abs().max()) > 1e-3


def test_bad_arguments():
    model, tok = _model()
    with pytest.raises(ValueError, match="limits"):
        sample_groups(model, PROMPTS, group_size=2, max_new_tokens=[3, 3], temperature=0.0, stop_ids=[1], pad_id=0)
    assert sample_groups(model, [], max_new_tokens=3, temperature=0.0, stop_ids=[1], pad_id=0) == []


def test_variable_group_sizes_match_the_repeated_prompts():
    from sumrl.generation.sampler import consecutive_prompt_groups

    model, tok = _model()
    rows = [PROMPTS[0]] * 3 + [PROMPTS[1]] + [PROMPTS[2]] * 2
    uniq, sizes = consecutive_prompt_groups(rows)
    assert uniq == PROMPTS and sizes == [3, 1, 2]
    stops = _stops_that_fire(model, tok, PROMPTS, 2)
    kw = dict(max_new_tokens=10, temperature=0.0, top_p=1.0, stop_ids=stops, pad_id=tok.pad_token_id)
    want = [truncate_at_eos(r, stops)[0] for r in sample(model, rows, **kw)]
    assert sample_groups(model, uniq, group_size=sizes, **kw) == want
    torch.manual_seed(9)
    kw.update(temperature=0.9)
    want = [truncate_at_eos(r, stops)[0] for r in sample(model, rows, **kw)]
    torch.manual_seed(9)
    assert sample_groups(model, uniq, group_size=sizes, compact=False, **kw) == want


@pytest.mark.slow
def test_default_model_sampler_and_grouped_forward_equal_plain_paths():
    """The real default model (SmolLM2-135M) with a LoRA adapter, two 256-token ScisummNet prompts,
    2 completions each: greedy tokens of sample_groups (merged LoRA, chunked prefill) equal
    rollout.sample's, and the shared-prompt log-probs equal the plain ones."""
    from sumrl.data import load_data
    from sumrl.generation.sampler import left_pad
    from sumrl.generation.summarize import eos_ids
    from sumrl.models.grouped import grouped_token_logprobs
    from sumrl.models.loading import load_model
    from sumrl.models.logprobs import IGNORE_INDEX, chunked_token_logprobs, model_hidden_states, output_head
    from sumrl.models.lora import add_lora
    from sumrl.rl.rollout import encode_prompt_ids

    model, tok = load_model("default", dtype="float32")
    model = add_lora(model, r=16, alpha=32)
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.01)
    stops, pad = eos_ids(model, tok), tok.pad_token_id
    prompts = [encode_prompt_ids(tok, ex.document, ex.query, max_prompt_tokens=256)
               for ex in load_data("scisummnet", "train", limit=2)]
    kw = dict(max_new_tokens=16, temperature=0.0, top_p=1.0, stop_ids=stops, pad_id=pad)
    want = _plain(model, prompts, 2, **kw)
    got = sample_groups(model, prompts, group_size=2, prefill_chunk=100, merge_lora=True, **kw)
    assert got == want
    q, qm = left_pad(prompts, pad)
    r, rm = left_pad([x[::-1] for x in got], pad)  # right padding: reverse, left-pad, flip back
    r, rm = r.flip(1), rm.flip(1)
    with torch.no_grad():
        lp = grouped_token_logprobs(model, q, qm, r, rm, temperature=0.7, prefill_chunk=100)["logprobs"]
        Lq, T = q.shape[1], r.shape[1]
        h = model_hidden_states(model, torch.cat([q.repeat_interleave(2, 0), r], 1),
                                torch.cat([qm.repeat_interleave(2, 0), rm], 1))[:, Lq - 1:Lq - 1 + T]
        w, cap = output_head(model)
        ref = chunked_token_logprobs(h / 0.7, w, torch.where(rm.bool(), r, torch.full_like(r, IGNORE_INDEX)), softcap=cap)
    assert torch.allclose(lp, ref, atol=1e-4, rtol=0), float((lp - ref).abs().max())
