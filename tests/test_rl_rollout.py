"""Rollout stages of `sumrl rl` on hand-made inputs (no model unless stated): truncation at the
first end token, reference trajectories (never cut), reward placement and the no-end-token term,
the KL term on actions only, critic and group advantages (reference batches not centred), the exact
reference-step schedule, TRIL's switch points and the guided rollout strategies, typed batches,
config validation."""

from __future__ import annotations

import pytest
import torch

from sumrl.errors import ConfigError
from sumrl.rewards.base import RewardOutput
from sumrl.rl import functional as F
from sumrl.rl.rollout import (AdvantageSettings, critic_advantages, encode_prompt_ids, group_advantages, kl_rewards,
                              make_episode, place_rewards, reference_actions, truncate_at_eos)
from sumrl.rl.trajectory import PolicyPass, TrainBatch, collate

EOS, EOS2, PAD = 2, 3, 0


class FakeTok:
    """Decodes ids to 'w<id>' words; enough for episodes built without a real tokenizer."""

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(f"w{i}" for i in ids if not (skip_special_tokens and i in (EOS, EOS2, PAD)))

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [int(w[1:]) for w in text.split()]}


def test_truncate_at_first_eos_keeps_the_end_token_as_an_action():
    assert truncate_at_eos([5, 6, EOS, 7, EOS, PAD], [EOS]) == ([5, 6, EOS], True)
    # any of several stop ids, whichever comes first
    assert truncate_at_eos([5, EOS2, 6, EOS], [EOS, EOS2]) == ([5, EOS2], True)
    assert truncate_at_eos([EOS, 5], [EOS]) == ([EOS], True)  # empty summary, one action
    assert truncate_at_eos([5, 6, 7], [EOS]) == ([5, 6, 7], False)  # cut at max_new_tokens


def test_reference_trajectory_is_whole_reference_plus_eos_and_never_cut(tiny_tokenizer):
    ref = "The meeting discussed the budget."
    ids = tiny_tokenizer(ref, add_special_tokens=False)["input_ids"]
    acts = reference_actions(tiny_tokenizer, ref, max_new_tokens=64, eos_id=tiny_tokenizer.eos_token_id)
    assert acts == ids + [tiny_tokenizer.eos_token_id]
    # exactly fits: n tokens + the end token
    assert reference_actions(tiny_tokenizer, ref, max_new_tokens=len(ids) + 1, eos_id=2) == ids + [2]
    # one short: never a cut reference with an end token (that would teach stopping mid-sentence)
    assert reference_actions(tiny_tokenizer, ref, max_new_tokens=len(ids), eos_id=2) is None
    ep = make_episode(tiny_tokenizer, example_index=0, group=0, prompt_ids=[1, 2], actions=acts, finished=True,
                      source="reference")
    assert ep.is_reference and ep.finished and list(ep.summary_ids) == ids and ep.text == tiny_tokenizer.decode(ids)


def _out(scores, token_rewards=None):
    return RewardOutput(scores=torch.tensor(scores, dtype=torch.float32),
                        token_rewards=[torch.tensor(t, dtype=torch.float32) for t in token_rewards] if token_rewards else None)


def test_place_rewards_actions_eos_and_no_eos_penalty_added_or_replacing():
    tok = FakeTok()
    finished = make_episode(tok, example_index=0, group=0, prompt_ids=[9], actions=[5, 6, EOS], finished=True)
    cut = make_episode(tok, example_index=1, group=1, prompt_ids=[9], actions=[5, 6, 7, 8], finished=False)
    assert list(finished.summary_ids) == [5, 6] and list(cut.summary_ids) == [5, 6, 7, 8]
    out = _out([1.0, 2.0], [[0.1, 0.2], [0.0, -1.0, 0.0, -2.0]])
    sc = place_rewards([finished, cut], out, 4, no_eos_penalty=-1.0)
    # per-token rewards on the summary tokens; the end token (position 2 of row 0) gets none
    assert torch.allclose(sc.token_scores, torch.tensor([[0.1, 0.2, 0.0, 0.0], [0.0, -1.0, 0.0, -2.0]]))
    assert torch.allclose(sc.scores, torch.tensor([1.0, 2.0 - 1.0]))  # the penalty is *added* to a cut summary
    assert torch.allclose(sc.totals, torch.tensor([1.0 + 0.3, 2.0 - 3.0 - 1.0]))
    # N+ form: the whole reward of a summary without an end token becomes the penalty
    rep = place_rewards([finished, cut], out, 4, no_eos_penalty=-1.0, no_eos_mode="replace")
    assert torch.allclose(rep.scores, torch.tensor([1.0, -1.0])) and torch.allclose(rep.totals, torch.tensor([1.3, -1.0]))
    assert torch.all(rep.token_scores[1] == 0) and torch.allclose(rep.token_scores[0], sc.token_scores[0])


def _pass(logp, ref=None, values=None):
    logp = torch.tensor(logp, dtype=torch.float32)
    return PolicyPass(logprobs=logp, entropy=torch.zeros_like(logp),
                      values=None if values is None else torch.tensor(values, dtype=torch.float32),
                      ref_logprobs=None if ref is None else torch.tensor(ref, dtype=torch.float32))


def test_kl_penalty_per_action_and_sequence_score_on_the_last_response_token():
    tok = FakeTok()
    eps = [make_episode(tok, example_index=0, group=0, prompt_ids=[9], actions=[5, 6, EOS], finished=True)]
    r = collate(eps, PAD)
    sc = place_rewards(eps, _out([2.0]), 3, no_eos_penalty=-1.0)
    fwd = _pass([[-1.0, -2.0, -0.5]], ref=[[-1.5, -2.0, -1.0]])
    rewards, kl = kl_rewards(sc, fwd, r, AdvantageSettings(kl_coef=0.5))
    # k1 = logp - ref = [0.5, 0, 0.5]; reward = -0.5 * k1, + score 2 on the end token
    assert torch.allclose(kl, torch.tensor([[0.5, 0.0, 0.5]]))
    assert torch.allclose(rewards, torch.tensor([[-0.25, 0.0, -0.25 + 2.0]]))


def test_guide_rollout_tokens_are_in_the_response_with_their_rewards_but_no_kl_and_critic_learns_there():
    tok = FakeTok()
    # guide roll-in wrote [7, 7] (in the prompt), the policy wrote [5, 6], the guide completed [8, 8, 8]
    ep = make_episode(tok, example_index=0, group=0, prompt_ids=[9, 7, 7], actions=[5, 6], finished=False,
                      prefix_ids=[7, 7], suffix_ids=[8, 8, 8], suffix_finished=True)
    assert list(ep.summary_ids) == [7, 7, 5, 6, 8, 8, 8] and ep.n_prefix == 2 and ep.n_suffix == 3 and ep.finished
    assert list(ep.response_ids) == [5, 6, 8, 8, 8]
    r = collate([ep], PAD, value_on="suffix")
    assert r.response_mask.tolist() == [[1, 1, 1, 1, 1]]
    assert r.action_mask.tolist() == [[1, 1, 0, 0, 0]] and r.value_mask.tolist() == [[0, 0, 1, 1, 1]]
    sc = place_rewards([ep], _out([1.0], [[-5.0, -5.0, 0.1, 0.2, 1.0, 2.0, 3.0]]), 5, no_eos_penalty=-1.0)
    # the roll-in prefix's rewards are dropped (state), the roll-out's stay on their own positions
    assert torch.allclose(sc.token_scores, torch.tensor([[0.1, 0.2, 1.0, 2.0, 3.0]]))
    assert torch.allclose(sc.scores, torch.tensor([1.0]))  # the guide ended it: no penalty
    fwd = _pass([[-1.0, -1.0, -3.0, -3.0, -3.0]], ref=[[-2.0, -2.0, -1.0, -1.0, -1.0]], values=[[0.0] * 5])
    rewards, kl = kl_rewards(sc, fwd, r, AdvantageSettings(kl_coef=1.0))
    assert kl.tolist() == [[1.0, 1.0, 0.0, 0.0, 0.0]]  # no KL on the guide's tokens
    assert torch.allclose(rewards, torch.tensor([[0.1 - 1.0, 0.2 - 1.0, 1.0, 2.0, 3.0 + 1.0]]))
    # GAE runs through the guide's tokens (gamma = lam = 1, V = 0: advantage = reward-to-go); only the
    # policy's tokens carry an advantage
    adv = critic_advantages(r, sc, fwd, AdvantageSettings(kl_coef=1.0, gamma=1.0, lam=1.0, whiten_advantages=False))
    togo = [sum([-0.9, -0.8, 1.0, 2.0, 4.0][t:]) for t in range(5)]
    assert torch.allclose(adv.advantages, torch.tensor([[togo[0], togo[1], 0.0, 0.0, 0.0]]))
    assert torch.allclose(adv.returns, torch.tensor([togo]))  # the critic's targets on every response token


def _batch(actions_per_row, kind="sampled"):
    tok = FakeTok()
    eps = [make_episode(tok, example_index=i, group=i, prompt_ids=[9], actions=a, finished=a[-1] == EOS)
           for i, a in enumerate(actions_per_row)]
    return eps, collate(eps, PAD, kind=kind)


def test_whitened_rewards_keep_their_mean_and_reference_batches_are_not_centred():
    eps, r = _batch([[5, 6, EOS], [5, EOS]])
    sc = place_rewards(eps, _out([3.0, -1.0]), 3, no_eos_penalty=0.0)
    fwd = _pass([[0.0] * 3] * 2, values=[[0.0] * 3] * 2)
    s = AdvantageSettings(gamma=1.0, lam=1.0, whiten_rewards=True, whiten_advantages=False)
    adv = critic_advantages(r, sc, fwd, s)
    # rewards [[0,0,3],[0,-1]] over 5 tokens: mean 0.4, unbiased var = (0.16*3 + 6.76 + 1.96)/4 = 2.3;
    # N+ whiten(shift_mean=False) = (x - mean) / std + mean: unit variance, the mean kept
    std = (2.3 + 1e-8) ** 0.5
    w = lambda x: (x - 0.4) / std + 0.4  # noqa: E731
    assert torch.allclose(adv.rewards, torch.tensor([[w(0.0), w(0.0), w(3.0)], [w(0.0), w(-1.0), 0.0]]), atol=1e-6)
    # a sampled batch is whitened (mean 0 over the actions); a reference batch is only divided by the scale
    s2 = AdvantageSettings(gamma=1.0, lam=1.0, whiten_rewards=False, whiten_advantages=True)
    sampled = critic_advantages(r, sc, fwd, s2)
    assert abs(float(F.masked_mean(sampled.advantages, r.action_mask))) < 1e-6
    _, ref_batch = _batch([[5, 6, EOS], [5, EOS]], kind="reference")
    ref = critic_advantages(ref_batch, sc, fwd, s2, advantage_scale=2.0)
    assert torch.allclose(ref.advantages, torch.tensor([[1.5, 1.5, 1.5], [-0.5, -0.5, 0.0]]))
    assert bool((ref.advantages[ref_batch.action_mask.bool()] > 0).sum() == 3)  # the good reference is never pushed down
    none = critic_advantages(ref_batch, sc, fwd, s2)
    assert torch.allclose(none.advantages, torch.tensor([[3.0, 3.0, 3.0], [-1.0, -1.0, 0.0]]))


def _group(totals_tok, scores, G):
    tok = FakeTok()
    eps = [make_episode(tok, example_index=i // G, group=i // G, prompt_ids=[9], actions=[5] * len(tr) + [EOS],
                        finished=True) for i, tr in enumerate(totals_tok)]
    r = collate(eps, PAD)
    sc = place_rewards(eps, _out(scores, totals_tok), r.response_ids.shape[1], no_eos_penalty=0.0)
    z = torch.zeros(r.response_ids.shape)
    return r, sc, PolicyPass(logprobs=z, entropy=z, ref_logprobs=z)


@pytest.mark.parametrize("algo", ["grpo", "rloo"])
@pytest.mark.parametrize("credit", ["position", "sequence"])
def test_group_advantages_without_token_rewards_are_the_standard_ones(algo, credit):
    scores = [1.0, 0.0, 3.0, 2.0, 5.0, 5.0]
    r, sc, fwd = _group([[0.0, 0.0]] * 6, scores, 3)
    adv = group_advantages(r, sc, fwd, AdvantageSettings(algo=algo, group_size=3, group_credit=credit))
    R = torch.tensor(scores)
    ref = F.grpo_advantages(R, 3) if algo == "grpo" else F.rloo_advantages(R, 3)
    mask = r.action_mask.bool()
    expect = ref[:, None].expand_as(adv.advantages)
    assert torch.allclose(adv.advantages[mask], expect[mask], atol=1e-5)
    assert torch.all(adv.advantages[~mask] == 0)


def test_group_advantages_per_position_credit_and_the_published_sequence_form():
    # two completions of one prompt, same total: one is penalised on its last token, one on its first
    toks = [[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    r, sc, fwd = _group(toks, [0.0, 0.0, 0.0], 3)
    a = group_advantages(r, sc, fwd, AdvantageSettings(algo="rloo", group_size=3)).advantages
    assert torch.isclose(a[0, 0], a[1, 0])  # equal totals -> equal advantage on the first token
    assert a[1, 1] > a[0, 1] and a[1, 2] > a[0, 2]  # after its penalty, completion 1 is no longer blamed
    assert torch.all(a[2, :3] >= a[0, :3]) and torch.all(a[2, :3] >= a[1, :3])
    # published RLOO: totals [-1, -1, 0] -> A_i = R_i - mean of the others = [-0.5, -0.5, 1.0] on every token
    seq = group_advantages(r, sc, fwd, AdvantageSettings(algo="rloo", group_size=3, group_credit="sequence")).advantages
    assert torch.allclose(seq[:, 0], torch.tensor([-0.5, -0.5, 1.0])) and torch.allclose(seq[0, :4], torch.full((4,), -0.5))


def test_reference_steps_are_exact_not_a_coin_flip():
    from sumrl.rl.guided import PolicySampling, RolloutPlan

    half = RolloutPlan(main=PolicySampling(), reference_ratio=0.5)
    assert [half.is_reference_step(s) for s in range(8)] == [False, True] * 4
    quarter = RolloutPlan(main=PolicySampling(), reference_ratio=0.25)
    assert [quarter.is_reference_step(s) for s in range(8)] == [False, False, False, True] * 2
    assert all(RolloutPlan(main=PolicySampling(), reference_ratio=1.0).is_reference_step(s) for s in range(5))
    assert not any(RolloutPlan(main=PolicySampling()).is_reference_step(s) for s in range(5))
    third = RolloutPlan(main=PolicySampling(), reference_ratio=1 / 3)
    assert sum(third.is_reference_step(s) for s in range(300)) == 100


def test_switch_point_is_uniform_strictly_inside_the_realised_sequence():
    from sumrl.rl.guided import switch_point

    g = torch.Generator().manual_seed(0)
    assert switch_point(0, g) is None and switch_point(1, g) is None  # TRIL: length < 2 -> no switch
    assert all(switch_point(2, g) == 1 for _ in range(20))
    ks = [switch_point(5, g) for _ in range(4000)]
    assert set(ks) == {1, 2, 3, 4}  # 1 .. L-1, as TRIL's rows of tril(ones)[: L - 1]
    assert all(abs(ks.count(k) / 4000 - 0.25) < 0.03 for k in (1, 2, 3, 4))


def _ctx(monkeypatch, policy_rows, guide_rows, max_new_tokens=8):
    import sumrl.rl.guided as G

    calls = {"policy": [], "guide": []}

    def fake_policy(ctx, prompts, limits, prefix_lens=None):
        calls["policy"].append((prompts, limits))
        calls.setdefault("prefix_lens", []).append(prefix_lens)
        return [truncate_at_eos(policy_rows[i][:lim], [EOS]) for i, lim in enumerate(limits)]

    def fake_guide(guide, tok, items, so_far, budgets):
        calls["guide"].append((list(map(list, so_far)), list(budgets)))
        return [(list(guide_rows[i][:b]), len(guide_rows[i]) <= b) for i, b in enumerate(budgets)]

    monkeypatch.setattr(G, "_policy_sample", fake_policy)
    monkeypatch.setattr(G, "guide_write", fake_guide)
    ctx = G.RolloutContext(policy=None, tokenizer=FakeTok(), prompt_ids=lambda i, ex: [9, 9], stop_ids=[EOS],
                           pad_id=PAD, eos_id=EOS, max_new_tokens=max_new_tokens, temperature=1.0, top_p=1.0,
                           group_size=1, guide=object())
    return ctx, calls


class _Ex:
    def __init__(self, ref="w11 w12"):
        self.references, self.reference, self.id, self.document, self.query = [ref], ref, "x", "d", None


def test_ppo_plus_plus_rolls_in_a_prefix_of_the_guides_own_sample(monkeypatch):
    from sumrl.rl.guided import GuideRollin

    ctx, calls = _ctx(monkeypatch, policy_rows=[[5, 6, 7, 8, 9, 10, 11, 12]] * 2, guide_rows=[[21, 22, 23, 24], [31]])
    r = GuideRollin(beta=1.0).collect(ctx, [0, 1], [_Ex(), _Ex()], torch.Generator().manual_seed(1), {})
    e0, e1 = r.episodes
    # row 0: the guide wrote 4 tokens -> a prefix of k in 1..3 of them, the policy continues with 8 - k tokens
    k = e0.n_prefix
    assert 1 <= k <= 3 and list(e0.prompt_ids) == [9, 9, 21, 22, 23, 24][:2 + k]
    assert calls["policy"][0][1][0] == 8 - k and e0.source == "guide-rollin"
    # row 1: the guide's sample has one token: no switch point inside it, a plain policy episode
    assert e1.n_prefix == 0 and e1.source == "policy" and list(e1.prompt_ids) == [9, 9]
    assert r.action_mask.sum(dim=1).tolist() == [8 - k, 8]
    # the sampler and the rollout are told which prompt tokens are the roll-in (an encoder-decoder's decoder input)
    assert calls["prefix_lens"][0] == [k, 0] and r.prefix_len.tolist() == [k, 0]
    nobody = GuideRollin(beta=0.0).collect(ctx, [0, 1], [_Ex(), _Ex()], torch.Generator(), {})
    assert all(e.n_prefix == 0 for e in nobody.episodes)


def test_aggrevated_keeps_a_policy_prefix_and_the_guide_completes_it(monkeypatch):
    from sumrl.rl.guided import GuideRollout

    ctx, calls = _ctx(monkeypatch, policy_rows=[[5, 6, 7, EOS], [5, EOS]], guide_rows=[[40, 41, EOS], [50, 51]])
    r = GuideRollout(beta=1.0).collect(ctx, [0, 1], [_Ex(), _Ex()], torch.Generator().manual_seed(2), {})
    e0, e1 = r.episodes
    # row 0: realised summary [5, 6, 7] (L = 3) -> the policy keeps k in {1, 2} tokens, the guide continues
    k = len(e0.action_ids)
    assert k in (1, 2) and list(e0.action_ids) == [5, 6, 7][:k] and e0.source == "guide-rollout"
    assert calls["guide"][0][0][0] == [5, 6, 7][:k] and calls["guide"][0][1][0] == 8 - k
    assert r.value_mask[0].tolist()[:k] == [0] * k and r.value_mask[0, k:k + e0.n_suffix].all()
    # row 1: a one-token summary has no switch point: as in TRIL the guide writes alone (critic only)
    assert e1.action_ids == () and e1.source == "guide" and int(r.action_mask[1].sum()) == 0
    assert int(r.value_mask[1].sum()) == e1.n_suffix == 2


def test_d2lols_switches_the_whole_batch_at_tau():
    from sumrl.rl.config import RLConfig
    from sumrl.rl.guided import GuideRollin, GuideRollout, make_rollout_plan

    cfg = RLConfig(algo="d2lols", guide="g", steps=10, d2lols_tau=3)
    cfg.validate()
    plan = make_rollout_plan(cfg)
    kinds = [type(plan.strategy(s)).__name__ for s in range(6)]
    assert kinds == ["GuideRollout"] * 3 + ["GuideRollin"] * 3
    assert plan.strategy(0).critic == "guide" and plan.strategy(5).critic == "policy"
    assert plan.strategy(0).beta == 0.8 and plan.strategy(5).beta == 0.8  # TRIL's TL;DR beta for both phases
    assert RLConfig(algo="d2lols", guide="g", steps=1000).tau == 200  # TRIL TL;DR: tau 200 of n_iters 1000
    assert isinstance(make_rollout_plan(RLConfig(algo="ppo++", guide="g")).main, GuideRollin)
    assert isinstance(make_rollout_plan(RLConfig(algo="aggrevated", guide="g")).main, GuideRollout)
    assert make_rollout_plan(RLConfig(algo="aggrevated", guide="g")).main.beta == 1.0


def test_train_batch_select_trims_padding():
    tok = FakeTok()
    eps = [make_episode(tok, example_index=0, group=0, prompt_ids=[9, 9, 9], actions=[5, 6, 7, EOS], finished=True),
           make_episode(tok, example_index=1, group=1, prompt_ids=[9], actions=[5], finished=False)]
    r = collate(eps, PAD)
    z = torch.arange(8, dtype=torch.float32).view(2, 4)
    b = TrainBatch.build(r, PolicyPass(logprobs=z, entropy=z), _adv(z))
    sub = b.select([1])
    assert sub.query_ids.tolist() == [[9]] and sub.response_ids.tolist() == [[5]]
    assert sub.old_logprobs.tolist() == [[4.0]] and sub.example_index.tolist() == [1]
    assert b.response_ids.shape == (2, 4)  # the original is untouched (immutable values)


def _adv(z):
    from sumrl.rl.trajectory import Advantages

    return Advantages(rewards=z, advantages=z, returns=None, kl=z)


def test_summary_cap_from_the_data():
    from sumrl.rl.trainer import summary_cap

    lens = list(range(1, 101))  # 1 .. 100
    assert summary_cap(lens, 0.95, 64) == 95 + 1  # nearest-rank 95th percentile + the end token
    assert summary_cap(lens, 1.0, 64) == 101
    assert summary_cap(lens, None, 64) == 64


def test_prompt_truncation_matches_eval(tiny_tokenizer):
    from sumrl.generation.summarize import encode_prompt
    from sumrl.models.prompts import build_prompt, prompt_overhead_tokens

    doc = "We propose a new method for long document summarization. " * 40
    ids = encode_prompt_ids(tiny_tokenizer, doc, None, max_prompt_tokens=100)
    assert len(ids) <= 100
    room = 100 - prompt_overhead_tokens(tiny_tokenizer, None, None)
    cut = tiny_tokenizer.decode(tiny_tokenizer(doc, add_special_tokens=False)["input_ids"][:room], skip_special_tokens=True)
    assert ids == encode_prompt(tiny_tokenizer, build_prompt(tiny_tokenizer, cut))
    short = encode_prompt_ids(tiny_tokenizer, "A short document.", None, max_prompt_tokens=100)
    assert short == encode_prompt(tiny_tokenizer, build_prompt(tiny_tokenizer, "A short document."))


@pytest.mark.parametrize("overrides, message", [
    ({"algo": "grpo", "samples_per_prompt": 1}, "at least 2"),
    ({"algo": "ppo++"}, "needs --guide"),
    ({"algo": "ppo", "guide": "default"}, "only used by"),
    ({"reference_trajectory_ratio": 1.5}, "reference-trajectory-ratio"),
    ({"reward": ""}, "at least one reward"),
    ({"value_clipp": 0.1}, "unknown option"),
    ({"kl_estimator": "k3", "kl_coef": 0.1}, "not a KL penalty"),  # k3 as a reward: not the reverse KL's gradient
    ({"kl_estimator": "k2", "kl_coef": 0.1, "algo": "rloo"}, "not a KL penalty"),
    ({"no_eos_mode": "subtract"}, "no_eos_mode"),
    ({"summary_cap_quantile": 0.2}, "summary-cap-quantile"),
])
def test_config_errors_are_one_line(overrides, message):
    from sumrl.config import build_config
    from sumrl.rl.config import RLConfig

    with pytest.raises(ConfigError, match=message):
        build_config(RLConfig, None, overrides)


def test_recipes_are_valid():
    from pathlib import Path

    from sumrl.config import build_config, load_recipe
    from sumrl.rl.config import RLConfig

    root = Path(__file__).resolve().parent.parent / "recipes"
    names = sorted(p.name for p in root.glob("rl_*.yaml"))
    assert names == sorted(f"rl_{a}.yaml" for a in ("ppo", "grpo", "rloo", "ppo++", "aggrevated", "d2lols", "lastmile",
                                                     "composite"))
    for name in names:
        cfg = build_config(RLConfig, load_recipe(root / name), source=name)
        assert cfg.algo in name or name in ("rl_lastmile.yaml", "rl_composite.yaml")
    composite = build_config(RLConfig, load_recipe(root / "rl_composite.yaml"))
    assert composite.algo == "grpo" and composite.no_eos_penalty == 0.0  # the end-token term is in the reward list
    assert [r["name"] for r in composite.reward] == ["rouge", "coverage", "factuality", "coherence_model", "repetition",
                                                     "length", "eos"]
    last = build_config(RLConfig, load_recipe(root / "rl_lastmile.yaml"))
    assert (last.kl_coef, last.entropy_coef, last.gamma, last.lam) == (0.0, 0.0, 0.99999, 0.95)
    assert last.value_target == "mc" and last.reference_trajectory_ratio == 0.5 and last.summary_cap_quantile == 0.95
    assert last.no_eos_penalty == 0.0  # the paper has no end-token penalty
    assert last.ppo_epochs == 1 and last.mini_batch_size is None


def test_critic_advantages_report_the_raw_std_a_reference_batch_divides_by():
    eps, r = _batch([[5, 6, EOS], [5, EOS]])
    sc = place_rewards(eps, _out([3.0, -1.0]), 3, no_eos_penalty=0.0)
    fwd = _pass([[0.0] * 3] * 2, values=[[0.0] * 3] * 2)
    adv = critic_advantages(r, sc, fwd, AdvantageSettings(gamma=1.0, lam=1.0, whiten_advantages=True))
    # unwhitened advantages of the 5 actions (V = 0, gamma = lam = 1): [3, 3, 3, -1, -1]; unbiased std
    raw = torch.tensor([3.0, 3.0, 3.0, -1.0, -1.0])
    assert adv.raw_std == pytest.approx(float(raw.std()), rel=1e-5)
