"""Metric rewards, token alignment and the registry, on hand-made cases."""

from __future__ import annotations

import pytest
import torch

from sumrl.errors import ConfigError, SumrlError
from sumrl.rewards.align import spread_penalties, token_char_spans
from sumrl.rewards.base import RewardInput
from sumrl.rewards.metric import (CopyReward, EosReward, FaithfulnessReward, LengthReward, RepetitionReward,
                                  RougeReward)
from sumrl.rewards.registry import build_reward, parse_reward_spec

DOC = ("The company reported revenue of 12.5 million dollars in 2019. Alice Smith leads the research team in Paris. "
       "The new model reduces errors on long documents by a wide margin according to the authors.")


def make_input(tok, summaries, doc=DOC, refs=("Alice Smith reported revenue of 12.5 million dollars.",), tokens=True,
               finished=None):
    ids = [tok(s, add_special_tokens=False)["input_ids"] for s in summaries] if tokens else None
    return RewardInput(documents=[doc] * len(summaries), summaries=list(summaries),
                       references=[list(refs)] * len(summaries), queries=[None] * len(summaries),
                       token_ids=ids, tokenizer=tok, finished=finished)


def tokens_text(tok, ids, mask):
    return "".join(tok.decode([t]) for t, m in zip(ids, mask) if m)


# --------------------------------------------------------------------------- alignment


def test_token_char_spans_cover_text_exactly_including_partial_utf8(tiny_tokenizer):
    tok = tiny_tokenizer
    text = "Café 日本 costs 12.5 € — naïve résumé."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    # the tiny byte-level BPE splits the non-ASCII characters into several byte tokens
    assert len(ids) > len(text.split())
    spans = token_char_spans(tok, ids)
    assert len(spans) == len(ids)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    for (s1, e1), (s2, e2) in zip(spans, spans[1:]):
        assert e1 == s2 and s1 <= e1  # contiguous, non-decreasing
    assert "".join(text[s:e] for s, e in spans) == text
    # some byte token holds half of a multi-byte character: it gets an empty span
    assert any(s == e for s, e in spans)


def test_spread_penalties_reach_overlapping_tokens_only():
    token_spans = [(0, 3), (3, 6), (6, 6), (6, 10)]
    # (2, 7) overlaps tokens 0, 1 and 3; token 2 is empty (half a character): it carries nothing
    assert spread_penalties(4, token_spans, [((2, 7), -3.0)]) == ([-1.0, -1.0, 0.0, -1.0], 0.0)
    vals, left = spread_penalties(4, token_spans, [((4, 5), -1.0), ((20, 25), -0.5)])
    assert vals == [0.0, -1.0, 0.0, 0.0] and left == -0.5


# --------------------------------------------------------------------------- localising rewards


def test_faithfulness_penalises_exactly_the_tokens_of_the_unsupported_number(tiny_tokenizer):
    tok = tiny_tokenizer
    s = "Revenue was 99 million dollars in 2019 under Alice Smith."
    inp = make_input(tok, [s])
    out = FaithfulnessReward(penalty=0.5)(inp)
    spans = token_char_spans(tok, inp.token_ids[0])
    flagged = [k for k, v in enumerate(out.token_rewards[0].tolist()) if v < 0]
    flagged_text = "".join(s[spans[k][0]:spans[k][1]] for k in flagged)
    assert flagged_text.strip() == "99 million"
    assert out.token_rewards[0].sum().item() == pytest.approx(-0.5)
    assert out.scores[0].item() == 0.0
    assert out.components["faithfulness/unsupported"].tolist() == [1.0]


def test_faithfulness_unsupported_name_and_clean_summary(tiny_tokenizer):
    tok = tiny_tokenizer
    inp = make_input(tok, ["Bob Jones leads the team in Paris.", "Alice Smith leads the team in Paris."])
    out = FaithfulnessReward(penalty=1.0)(inp)
    assert out.totals().tolist() == pytest.approx([-1.0, 0.0])
    assert torch.all(out.token_rewards[1] == 0)


def test_repetition_penalty_lands_on_the_repeated_copy(tiny_tokenizer):
    tok = tiny_tokenizer
    s = "the model reduces errors and the model reduces errors"
    inp = make_input(tok, [s, "the model reduces errors on long documents"])
    out = RepetitionReward(n=3, penalty=1.0)(inp)
    spans = token_char_spans(tok, inp.token_ids[0])
    first_half = s.index(" and")
    vals = out.token_rewards[0].tolist()
    for k, (a, b) in enumerate(spans):
        if b <= first_half:
            assert vals[k] == 0.0  # the first occurrence is not penalised
    assert all(vals[k] < 0 for k, (a, b) in enumerate(spans) if a >= s.rindex("model") and b > a)
    # 4 of 9 words are inside the repeated trigrams ("the model reduces errors" second time)
    assert out.totals()[0].item() == pytest.approx(-4 / 9)
    assert out.totals()[1].item() == 0.0


def test_copy_penalises_long_verbatim_span_only(tiny_tokenizer):
    tok = tiny_tokenizer
    copied = "The new model reduces errors on long documents by a wide margin"
    s = f"In short, {copied}."
    out = CopyReward(min_words=8, penalty=1.0)(make_input(tok, [s, "Errors drop a lot with the new model."]))
    total_words = len(s.split())
    assert out.totals()[0].item() == pytest.approx(-len(copied.split()) / total_words)
    assert out.totals()[1].item() == 0.0
    spans = token_char_spans(tok, make_input(tok, [s]).token_ids[0])
    vals = out.token_rewards[0].tolist()
    for k, (a, b) in enumerate(spans):
        if b <= len("In short,"):
            assert vals[k] == 0.0


def test_totals_identical_without_token_ids(tiny_tokenizer):
    tok = tiny_tokenizer
    sums = ["Bob reported 99 million. the model reduces errors the model reduces errors",
            "The company reported revenue of 12.5 million dollars in 2019. Alice Smith leads"]
    for reward in (FaithfulnessReward(), RepetitionReward(), CopyReward(min_words=5), LengthReward()):
        with_tok = reward(make_input(tok, sums, tokens=True))
        without = reward(make_input(tok, sums, tokens=False))
        assert without.token_rewards is None
        assert with_tok.token_rewards is not None
        assert with_tok.totals().tolist() == pytest.approx(without.totals().tolist(), abs=1e-5), reward.name


def test_summary_must_match_decoded_tokens(tiny_tokenizer):
    tok = tiny_tokenizer
    inp = make_input(tok, ["Alice Smith leads."])
    inp.summaries = ["Something else entirely."]
    with pytest.raises(SumrlError, match="not the decode"):
        RepetitionReward()(inp)


# --------------------------------------------------------------------------- sequence rewards


def test_length_reference_mode_per_token_beyond_reference(tiny_tokenizer):
    tok = tiny_tokenizer
    ref = "Alice Smith leads the team."
    n_ref = len(tok(ref, add_special_tokens=False)["input_ids"])
    long = "Alice Smith leads the team in Paris and reports revenue."
    inp = make_input(tok, [long, "Alice leads."], refs=(ref,))
    out = LengthReward(per_token_penalty=-2.5)(inp)
    t = out.token_rewards[0]
    assert torch.all(t[:n_ref] == 0) and torch.all(t[n_ref:] == -2.5)
    assert out.totals()[0].item() == pytest.approx(-2.5 * (len(inp.token_ids[0]) - n_ref))
    assert out.totals()[1].item() == 0.0  # shorter than the reference: no penalty
    # without a tokenizer the unit is whitespace words
    no_tok = RewardInput([DOC], [long], [[ref]], [None])
    assert LengthReward()(no_tok).totals().item() == pytest.approx(-2.5 * (10 - 5))


def test_length_short_penalty_is_a_sequence_score_per_missing_token(tiny_tokenizer):
    tok = tiny_tokenizer
    ref = "Alice Smith leads the team in Paris."
    n_ref = len(tok(ref, add_special_tokens=False)["input_ids"])
    long = "Alice Smith leads the team in Paris and reports revenue to the board."
    inp = make_input(tok, [long, "Alice leads."], refs=(ref,))
    out = LengthReward(per_token_penalty=-2.5, short_penalty=-0.5)(inp)
    n_long, n_short = len(inp.token_ids[0]), len(inp.token_ids[1])
    assert n_short < n_ref < n_long
    # too long: the per-token penalty on the tokens beyond the reference, no score
    assert out.scores[0].item() == 0.0 and out.totals()[0].item() == pytest.approx(-2.5 * (n_long - n_ref))
    # too short: no token penalised, -0.5 per missing reference token as the sequence score
    assert torch.all(out.token_rewards[1] == 0)
    assert out.scores[1].item() == pytest.approx(-0.5 * (n_ref - n_short))
    assert out.components["length/short"].tolist() == [0.0, float(n_ref - n_short)]
    with pytest.raises(ConfigError, match="short_penalty"):
        LengthReward(short_penalty=0.5)


def test_length_ratio_mode_is_zero_at_target_and_symmetric():
    doc = " ".join(["word"] * 1000)
    r = LengthReward(mode="ratio", compression=10.0, coef=1.0)
    inp = RewardInput([doc] * 3, [" ".join(["w"] * 100), " ".join(["w"] * 200), " ".join(["w"] * 50)],
                      [[]] * 3, [None] * 3)
    s = r(inp).scores.tolist()
    assert s[0] == pytest.approx(0.0)
    assert s[1] == pytest.approx(s[2]) and s[1] < 0  # twice and half the target cost the same


def test_eos_penalty_only_when_cut_off():
    inp = RewardInput([DOC] * 3, ["a", "b", "c"], [["r"]] * 3, [None] * 3, finished=[True, False, None])
    assert EosReward(penalty=2.0)(inp).scores.tolist() == [0.0, -2.0, 0.0]


def test_rouge_reward_matches_metric_and_needs_references():
    from sumrl.evaluation.rouge import rouge

    ref = "Alice Smith reported revenue of 12.5 million dollars."
    s = "Alice Smith reported 12.5 million in revenue."
    out = RougeReward()(RewardInput([DOC], [s], [[ref]], [None]))
    r = rouge(s, [ref])
    assert out.scores[0].item() == pytest.approx((r["rouge1_f"] + r["rouge2_f"] + r["rougeL_f"]) / 3, abs=1e-6)
    assert out.components["rouge/rouge2"][0].item() == pytest.approx(r["rouge2_f"], abs=1e-6)
    with pytest.raises(SumrlError, match="needs reference"):
        RougeReward()(RewardInput([DOC], [s], [[]], [None]))


def test_embedding_rewards_rank_on_topic_above_off_topic():
    rel = build_reward("relevance,coverage,coherence")
    doc = ("Photosynthesis lets plants turn sunlight, water and carbon dioxide into glucose and oxygen. "
           "Chlorophyll in the leaves absorbs light. ") * 40  # ~ 600 words -> several source windows
    on = "Plants use sunlight and chlorophyll to make glucose and oxygen from water and carbon dioxide."
    off = "The football match ended in a draw after a late penalty in the second half."
    out = rel(RewardInput([doc, doc], [on, off], [[]] * 2, [None] * 2))
    assert out.components["rewards/relevance"][0] > out.components["rewards/relevance"][1] + 0.2
    assert out.components["rewards/coverage"][0] > out.components["rewards/coverage"][1]
    # coherence: a repeated sentence scores below two related sentences
    coh = build_reward("coherence")
    a = "Plants absorb light with chlorophyll. This light energy drives the making of glucose."
    b = "Plants absorb light with chlorophyll. Plants absorb light with chlorophyll."
    c = coh(RewardInput([doc, doc], [a, b], [[]] * 2, [None] * 2)).scores.tolist()
    assert c[0] > c[1]


# --------------------------------------------------------------------------- registry


def test_parse_reward_spec_weights_and_rm_paths(tmp_path):
    assert parse_reward_spec("rouge,length:0.5") == [{"name": "rouge"}, {"name": "length", "weight": 0.5}]
    assert parse_reward_spec("rm:/a/b:2") == [{"name": "rm", "path": "/a/b", "weight": 2.0}]
    assert parse_reward_spec("rm:C:/models/rm") == [{"name": "rm", "path": "C:/models/rm"}]
    odd = tmp_path / "rm:1"
    odd.mkdir()
    assert parse_reward_spec(f"rm:{odd}") == [{"name": "rm", "path": str(odd)}]  # existing path wins
    with pytest.raises(ConfigError, match="not a number"):
        parse_reward_spec("length:big")


def test_build_reward_rejects_unknown_names_and_options():
    with pytest.raises(ConfigError, match="unknown reward 'rogue'"):
        build_reward("rogue")
    with pytest.raises(ConfigError, match="unknown option.*per_tokn_penalty"):
        build_reward([{"name": "length", "per_tokn_penalty": -1}])
    with pytest.raises(ConfigError, match="mode"):
        build_reward([{"name": "length", "mode": "words"}])


def test_composite_sums_weighted_rewards_and_exposes_components(tiny_tokenizer):
    tok = tiny_tokenizer
    comp = build_reward([{"name": "faithfulness", "weight": 2.0, "penalty": 1.0},
                         {"name": "eos", "weight": 0.5}, {"name": "length", "label": "len2", "per_token_penalty": -1}])
    inp = make_input(tok, ["Bob Jones leads.", "Alice Smith leads."], finished=[True, False],
                     refs=("Alice Smith leads the team.",))
    out = comp(inp)
    assert set(out.components) >= {"rewards/faithfulness", "rewards/eos", "rewards/len2", "rewards/total"}
    assert out.totals().tolist() == pytest.approx([-2.0, -0.5])
    assert out.components["rewards/total"].tolist() == pytest.approx([-2.0, -0.5])
    assert out.token_rewards is not None and len(out.token_rewards[0]) == len(inp.token_ids[0])


def test_length_penalties_in_rm_token_units_reproduce_the_paper_reward(tiny_tokenizer):
    """Hand-made RM token values: token statistics mean 0.8, std 0.2 give per_token_penalty
    (-2.5 + 0.8) / 0.2 = -8.5 and short_penalty -0.8 / 0.2 = -4; then for any length the
    normalised RM reward plus the length reward = paper reward / 0.2 - n_ref * 0.8 / 0.2."""
    from sumrl.rewards.reward_model import paper_length_penalties

    pen = paper_length_penalties({"mean": 0.8, "std": 0.2})
    assert pen == pytest.approx({"per_token_penalty": -8.5, "short_penalty": -4.0})
    tok = tiny_tokenizer
    ref = "Alice Smith leads the team."
    n_ref = len(tok(ref, add_special_tokens=False)["input_ids"])
    long = "Alice Smith leads the team in Paris and reports revenue."
    short = "Alice leads."
    inp = make_input(tok, [long, short], refs=(ref,))
    out = LengthReward(**pen)(inp)
    n_long, n_short = len(inp.token_ids[0]), len(inp.token_ids[1])
    assert n_short < n_ref < n_long
    # the tokens past the reference get exactly -8.5 each; the short one -4 per missing token
    assert out.token_rewards[0][n_ref:].tolist() == pytest.approx([-8.5] * (n_long - n_ref))
    assert out.scores[1].item() == pytest.approx(-4.0 * (n_ref - n_short))
    for i, n in enumerate((n_long, n_short)):
        v = [0.9, 0.3, 1.0, 0.6] * n  # any raw RM token values
        v = v[:n]
        paper = sum(v) + -2.5 * max(0, n - n_ref)
        ours = sum((x - 0.8) / 0.2 for x in v) + out.totals()[i].item()
        assert ours == pytest.approx(paper / 0.2 - n_ref * 0.8 / 0.2)
