"""Packing: micro-batch planning, label shifting, and packed loss == padded loss == alone."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from sumrl.training.data import TrainSequence  # noqa: E402
from sumrl.training.packing import (  # noqa: E402
    IGNORE_INDEX, collate_packed, collate_padded, n_target_tokens, plan_micro_batches, shifted_labels,
)


def test_plan_packed_respects_budget_and_covers_everything():
    lengths = [50, 10, 70, 30, 30, 100, 5, 60]
    groups = plan_micro_batches(lengths, 100)
    flat = sorted(i for g in groups for i in g)
    assert flat == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in g) <= 100 for g in groups)
    # first-fit decreasing packs 355 tokens into 4 rows of 100, not one row per sequence
    assert len(groups) == 4
    assert plan_micro_batches(lengths, 100) == groups  # deterministic


def test_plan_limits_and_oversized():
    groups = plan_micro_batches([10, 10, 10, 10, 10], 100, max_sequences=2)
    assert max(len(g) for g in groups) == 2 and len(groups) == 3
    assert plan_micro_batches([150, 20], 100) == [[0], [1]]  # too long: alone, never dropped


def test_plan_padded_counts_padding():
    lengths = [50, 10, 40, 45]
    groups = plan_micro_batches(lengths, 100, packing=False)
    for g in groups:
        assert max(lengths[i] for i in g) * len(g) <= 100 or len(g) == 1
    # length-sorted: the two longest together (50 * 2 <= 100), then 40 and 10
    assert groups == [[0, 3], [2, 1]]


def test_shifted_labels_mask_prompt_and_boundary():
    ids = [5, 6, 7, 8, 9]
    assert shifted_labels(ids, n_prompt=3) == [IGNORE_INDEX, IGNORE_INDEX, 8, 9, IGNORE_INDEX]
    seq = TrainSequence(ids, 3)
    assert n_target_tokens(seq) == sum(l != IGNORE_INDEX for l in shifted_labels(ids, 3)) == 2
    packed = collate_packed([seq, TrainSequence([1, 2, 3], 1)])
    assert packed["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2]]
    # the last token of the first sequence must not predict the first token of the next one
    assert packed["labels"].tolist() == [[IGNORE_INDEX, IGNORE_INDEX, 8, 9, IGNORE_INDEX, 2, 3, IGNORE_INDEX]]
    assert packed["attention_mask"] is None


def _tiny(seed=0):
    from conftest import build_tiny_model, build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    model = build_tiny_model(tok, seed=seed)
    model.eval()
    return tok, model


def _random_seqs(vocab, lengths, prompts, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [TrainSequence(torch.randint(3, vocab, (n,), generator=g).tolist(), p)
            for n, p in zip(lengths, prompts)]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_equals_padded_and_alone(attn):
    from sumrl.training.loss import CausalLMLoss

    tok, model = _tiny()
    model.config._attn_implementation = attn
    seqs = _random_seqs(len(tok), [37, 12, 60, 25], [30, 4, 41, 1])
    loss = CausalLMLoss(model, chunk_size=16)
    with torch.no_grad():
        packed_sum, packed_n = loss(**collate_packed(seqs))
        padded_sum, padded_n = loss(**collate_padded(seqs, tok.pad_token_id))
        alone = [loss(**collate_packed([s])) for s in seqs]
    alone_sum = sum(float(a[0]) for a in alone)
    assert int(packed_n) == int(padded_n) == sum(n_target_tokens(s) for s in seqs)
    assert abs(float(packed_sum) - float(padded_sum)) / float(padded_sum) < 1e-5
    assert abs(float(packed_sum) - alone_sum) / alone_sum < 1e-5
    # negative control: the same row with a plain causal mask (attention crossing sequence
    # boundaries) gives a different loss, so the equalities above are not vacuous
    leaky = dict(collate_packed(seqs), attention_mask=torch.ones(1, sum(len(s) for s in seqs), dtype=torch.long))
    with torch.no_grad():
        leaky_sum, _ = loss(**leaky)
    assert abs(float(leaky_sum) - alone_sum) / alone_sum > 1e-4


def test_packed_gradients_equal_padded_gradients():
    from sumrl.training.loss import CausalLMLoss

    tok, model = _tiny()
    seqs = _random_seqs(len(tok), [33, 18, 50], [20, 5, 40], seed=1)
    loss = CausalLMLoss(model, chunk_size=8)
    grads = []
    for batch in (collate_packed(seqs), collate_padded(seqs, tok.pad_token_id)):
        model.zero_grad()
        s, n = loss(**batch)
        (s / n).backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    for k in grads[0]:
        assert torch.allclose(grads[0][k], grads[1][k], atol=1e-6, rtol=1e-4), k


def test_chunked_loss_matches_transformers_loss():
    """The trunk + chunked cross-entropy equals the model's own (full-logits) loss."""
    from sumrl.training.loss import CausalLMLoss

    tok, model = _tiny()
    (seq,) = _random_seqs(len(tok), [40], [25], seed=2)
    ids = torch.tensor([seq.input_ids])
    labels = ids.clone()
    labels[:, : seq.n_prompt] = IGNORE_INDEX  # transformers shifts labels itself
    with torch.no_grad():
        ref = model(input_ids=ids, labels=labels).loss
        s, n = CausalLMLoss(model, chunk_size=7)(**collate_packed([seq]))
    assert abs(float(s / n) - float(ref)) < 1e-5
