"""Rollout stages of `sumrl rl` on hand-made inputs (no model): truncation at the first end token,
the no-end-token penalty, per-token reward placement (actions, guide prefix / suffix), reference
trajectories, advantages, trajectory batching, config validation."""

from __future__ import annotations

import pytest
import torch

from sumrl.errors import ConfigError
from sumrl.rewards.base import RewardOutput
from sumrl.rl import functional as F
from sumrl.rl.rollout import (AdvantageSettings, critic_advantages, encode_prompt_ids, group_advantages,
                              make_episode, place_rewards, reference_actions, summary_totals, truncate_at_eos)
from sumrl.rl.trajectory import collate

EOS, EOS2, PAD = 2, 3, 0


class FakeTok:
    """Decodes ids to 'w<id>' words; enough for episodes built without a real tokenizer."""

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(f"w{i}" for i in ids if not (skip_special_tokens and i in (EOS, EOS2, PAD)))


def test_truncate_at_first_eos_keeps_the_end_token_as_an_action():
    assert truncate_at_eos([5, 6, EOS, 7, EOS, PAD], [EOS]) == ([5, 6, EOS], True)
    # any of several stop ids, whichever comes first
    assert truncate_at_eos([5, EOS2, 6, EOS], [EOS, EOS2]) == ([5, EOS2], True)
    assert truncate_at_eos([EOS, 5], [EOS]) == ([EOS], True)  # empty summary, one action
    assert truncate_at_eos([5, 6, 7], [EOS]) == ([5, 6, 7], False)  # cut at max_new_tokens


def test_reference_trajectory_is_reference_tokens_plus_eos(tiny_tokenizer):
    ref = "The meeting discussed the budget."
    ids = tiny_tokenizer(ref, add_special_tokens=False)["input_ids"]
    acts = reference_actions(tiny_tokenizer, ref, max_new_tokens=64, eos_id=tiny_tokenizer.eos_token_id)
    assert acts == ids + [tiny_tokenizer.eos_token_id]
    short = reference_actions(tiny_tokenizer, ref, max_new_tokens=4, eos_id=tiny_tokenizer.eos_token_id)
    assert short == ids[:3] + [tiny_tokenizer.eos_token_id]  # always finished, within the budget
    ep = make_episode(tiny_tokenizer, example_index=0, group=0, prompt_ids=[1, 2], actions=acts, finished=True,
                      source="reference")
    assert ep.is_reference and ep.finished and ep.summary_ids == ids and ep.text == tiny_tokenizer.decode(ids)


def _out(scores, token_rewards=None):
    return RewardOutput(scores=torch.tensor(scores, dtype=torch.float32),
                        token_rewards=[torch.tensor(t, dtype=torch.float32) for t in token_rewards] if token_rewards else None)


def test_place_rewards_actions_eos_and_no_eos_penalty():
    tok = FakeTok()
    finished = make_episode(tok, example_index=0, group=0, prompt_ids=[9], actions=[5, 6, EOS], finished=True)
    cut = make_episode(tok, example_index=1, group=1, prompt_ids=[9], actions=[5, 6, 7, 8], finished=False)
    assert finished.summary_ids == [5, 6] and cut.summary_ids == [5, 6, 7, 8]
    out = _out([1.0, 2.0], [[0.1, 0.2], [0.0, -1.0, 0.0, -2.0]])
    tokens, scores = place_rewards([finished, cut], out, T=4, no_eos_penalty=-1.0)
    # per-token rewards on the summary tokens; the end token (position 2 of row 0) gets none
    assert torch.allclose(tokens, torch.tensor([[0.1, 0.2, 0.0, 0.0], [0.0, -1.0, 0.0, -2.0]]))
    # the no-end-token penalty is added to the score of the cut response only
    assert torch.allclose(scores, torch.tensor([1.0, 1.0]))
    totals = summary_totals([finished, cut], out, -1.0)
    assert torch.allclose(totals, torch.tensor([1.3, -2.0]))


def test_sequence_score_lands_on_last_action_incl_eos():
    tok = FakeTok()
    eps = [make_episode(tok, example_index=0, group=0, prompt_ids=[9, 9], actions=[5, EOS], finished=True),
           make_episode(tok, example_index=1, group=1, prompt_ids=[9], actions=[5, 6, 7], finished=False)]
    traj = collate(eps, PAD)
    out = _out([1.0, 3.0], [[0.5], [0.0, 0.0, -1.0]])
    traj.token_scores, traj.scores = place_rewards(eps, out, traj.response_ids.shape[1], no_eos_penalty=-1.0)
    traj.logprobs = torch.zeros(2, 3)
    traj.ref_logprobs = torch.zeros(2, 3)
    traj.values = torch.zeros(2, 3)
    critic_advantages(traj, AdvantageSettings(kl_coef=0.1, whiten_advantages=False, gamma=1.0, lam=1.0))
    # row 0: token reward 0.5 on its only summary token, score 1.0 on the EOS action
    assert torch.allclose(traj.rewards, torch.tensor([[0.5, 1.0, 0.0], [0.0, 0.0, -1.0 + 3.0 - 1.0]]))
    # with V = 0, gamma = lam = 1: advantage = reward-to-go
    assert torch.allclose(traj.advantages, torch.tensor([[1.5, 1.0, 0.0], [1.0, 1.0, 1.0]]))
    assert torch.equal(traj.response_mask, torch.tensor([[1, 1, 0], [1, 1, 1]]))
    assert torch.equal(traj.query_mask, torch.tensor([[1, 1], [0, 1]]))  # prompts left-padded


def test_kl_penalty_enters_rewards_per_token():
    tok = FakeTok()
    eps = [make_episode(tok, example_index=0, group=0, prompt_ids=[9], actions=[5, 6, EOS], finished=True)]
    traj = collate(eps, PAD)
    traj.token_scores, traj.scores = place_rewards(eps, _out([2.0]), 3, no_eos_penalty=-1.0)
    traj.logprobs = torch.tensor([[-1.0, -2.0, -0.5]])
    traj.ref_logprobs = torch.tensor([[-1.5, -2.0, -1.0]])
    traj.values = torch.zeros(1, 3)
    critic_advantages(traj, AdvantageSettings(kl_coef=0.5, kl_estimator="k1", whiten_advantages=False))
    assert torch.allclose(traj.rewards, torch.tensor([[-0.25, 0.0, -0.25 + 2.0]]))


def test_guide_prefix_rewards_dropped_suffix_rewards_follow_last_action():
    tok = FakeTok()
    # guide roll-in wrote [7, 7] (in the prompt), the policy wrote [5, 6], the guide completed [8, 8, 8]
    ep = make_episode(tok, example_index=0, group=0, prompt_ids=[9, 7, 7], actions=[5, 6], finished=False,
                      prefix_ids=[7, 7], suffix_ids=[8, 8, 8], suffix_finished=True)
    assert ep.summary_ids == [7, 7, 5, 6, 8, 8, 8] and ep.n_prefix == 2 and ep.n_suffix == 3 and ep.finished
    out = _out([1.0], [[-5.0, -5.0, 0.1, 0.2, 1.0, 2.0, 3.0]])
    tokens, scores = place_rewards([ep], out, T=2, no_eos_penalty=-1.0)
    assert torch.allclose(tokens, torch.tensor([[0.1, 0.2]]))
    assert torch.allclose(scores, torch.tensor([1.0 + 6.0]))  # the guide's completed return
    # discounted: suffix token k arrives k+1 steps after the last action, the score with the last one
    _, disc = place_rewards([ep], out, T=2, no_eos_penalty=-1.0, gamma=0.5)
    assert torch.allclose(disc, torch.tensor([1.0 * 0.125 + 1.0 * 0.5 + 2.0 * 0.25 + 3.0 * 0.125]))
    # an unfinished guide roll-out is penalised like any cut summary
    cut = make_episode(tok, example_index=0, group=0, prompt_ids=[9], actions=[5], finished=False,
                       suffix_ids=[8], suffix_finished=False)
    _, s = place_rewards([cut], _out([0.0]), T=1, no_eos_penalty=-1.0)
    assert torch.allclose(s, torch.tensor([-1.0]))


def _group_traj(totals_tok, scores, G):
    tok = FakeTok()
    eps = []
    for i, tr in enumerate(totals_tok):
        eps.append(make_episode(tok, example_index=i // G, group=i // G, prompt_ids=[9],
                                actions=[5] * len(tr) + [EOS], finished=True))
    traj = collate(eps, PAD)
    traj.token_scores, traj.scores = place_rewards(eps, _out(scores, totals_tok), traj.response_ids.shape[1],
                                                   no_eos_penalty=0.0)
    traj.logprobs = torch.zeros_like(traj.token_scores)
    traj.ref_logprobs = torch.zeros_like(traj.token_scores)
    return traj


@pytest.mark.parametrize("algo", ["grpo", "rloo"])
def test_group_advantages_without_token_rewards_are_the_standard_ones(algo):
    scores = [1.0, 0.0, 3.0, 2.0, 5.0, 5.0]
    traj = _group_traj([[0.0, 0.0]] * 6, scores, 3)
    group_advantages(traj, AdvantageSettings(algo=algo, group_size=3, kl_coef=0.0))
    R = torch.tensor(scores)
    ref = F.grpo_advantages(R, 3) if algo == "grpo" else F.rloo_advantages(R, 3)
    mask = traj.response_mask.bool()
    expect = ref[:, None].expand_as(traj.advantages)
    assert torch.allclose(traj.advantages[mask], expect[mask], atol=1e-5)
    assert torch.all(traj.advantages[~mask] == 0)


def test_group_advantages_give_per_token_credit():
    # two completions of one prompt, same total: one is penalised on its last token, one on its first
    traj = _group_traj([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], [0.0, 0.0, 0.0], 3)
    group_advantages(traj, AdvantageSettings(algo="rloo", group_size=3, kl_coef=0.0))
    a = traj.advantages
    # equal totals -> equal advantage on the first token
    assert torch.isclose(a[0, 0], a[1, 0])
    # after its penalty, completion 1's later tokens are no longer blamed for it
    assert a[1, 1] > a[0, 1] and a[1, 2] > a[0, 2]
    # the unpenalised completion is better than both on every token
    assert torch.all(a[2, :3] >= a[0, :3]) and torch.all(a[2, :3] >= a[1, :3])


def test_collate_select_trims_padding():
    tok = FakeTok()
    eps = [make_episode(tok, example_index=0, group=0, prompt_ids=[9, 9, 9], actions=[5, 6, 7, EOS], finished=True),
           make_episode(tok, example_index=1, group=1, prompt_ids=[9], actions=[5], finished=False)]
    traj = collate(eps, PAD)
    traj.logprobs = torch.arange(8, dtype=torch.float32).view(2, 4)
    traj.components = {"rewards/x": torch.tensor([1.0, 2.0])}
    sub = traj.select([1])
    assert sub.query_ids.tolist() == [[9]] and sub.response_ids.tolist() == [[5]]
    assert sub.logprobs.tolist() == [[4.0]] and sub.components["rewards/x"].tolist() == [2.0]
    ids, mask = traj.input_ids()
    assert ids.shape == (2, 7) and mask.sum().item() == 3 + 4 + 1 + 1


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


def test_guided_plan_is_seeded_and_in_range():
    from sumrl.rl.guided import sample_guided_plan

    a = sample_guided_plan(50, rollin_prob=0.5, rollout_prob=1.0, max_new_tokens=10, generator=torch.Generator().manual_seed(3))
    b = sample_guided_plan(50, rollin_prob=0.5, rollout_prob=1.0, max_new_tokens=10, generator=torch.Generator().manual_seed(3))
    assert a == b
    assert all(p["rollout"] for p in a) and 5 < sum(p["rollin"] for p in a) < 45
    assert all(1 <= p["rollin_len"] <= 9 for p in a if p["rollin"])
    none = sample_guided_plan(20, rollin_prob=0.0, rollout_prob=0.0, max_new_tokens=10, generator=torch.Generator())
    assert not any(p["rollin"] or p["rollout"] for p in none)


@pytest.mark.parametrize("overrides, message", [
    ({"algo": "grpo", "samples_per_prompt": 1}, "at least 2"),
    ({"algo": "ppo++"}, "needs --guide"),
    ({"algo": "ppo", "guide": "default"}, "only used by"),
    ({"reference_trajectory_ratio": 1.5}, "reference-trajectory-ratio"),
    ({"reward": ""}, "at least one reward"),
    ({"value_clipp": 0.1}, "unknown option"),
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
    assert names == sorted(f"rl_{a}.yaml" for a in ("ppo", "grpo", "rloo", "ppo++", "aggrevated", "d2lols", "lastmile"))
    for name in names:
        cfg = build_config(RLConfig, load_recipe(root / name), source=name)
        assert cfg.algo in name or name == "rl_lastmile.yaml"
    last = build_config(RLConfig, load_recipe(root / "rl_lastmile.yaml"))
    assert (last.kl_coef, last.entropy_coef, last.gamma, last.lam) == (0.0, 0.0, 0.99999, 0.95)
    assert last.value_target == "mc" and last.reference_trajectory_ratio == 0.5 and last.max_new_tokens == 100
    assert last.ppo_epochs == 1 and last.mini_batch_size is None
