"""The stage functions of one RL step, pure where they can be (the trainer calls them in order;
the typed values they return are in :mod:`sumrl.rl.trajectory`):

1. :func:`encode_prompt_ids` -- the same prompt as SFT/eval, document truncated to the budget
   exactly like ``sumrl eval --strategy truncate``; :func:`sample` -- generate with temperature;
2. :func:`truncate_at_eos` -- cut each response at its first end token (the end token stays: it is
   an action the policy must learn); :func:`reference_actions` builds the response of a
   reference-summary trajectory instead; :func:`make_episode` assembles an :class:`Episode`;
3. :func:`score_rollout` -- the configured rewards (sequence-level and per-token) on the decoded
   summaries, the no-end-token term, and placement on response positions -> :class:`Scored`;
5. :func:`critic_advantages` (KL penalty in the reward, GAE, whitening) or
   :func:`group_advantages` (GRPO / RLOO) -> :class:`Advantages`.

(Stage 4, the no-grad forward passes, needs the model: ``RLTrainer.forward_rollout``.)
Everything here is deterministic given its inputs (sampling uses torch's global generator), so the
stages are unit-tested on hand-made inputs (tests/test_rl_rollout.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from sumrl.errors import SumrlError
from sumrl.rl import functional as F
from sumrl.rl.trajectory import Advantages, Episode, PolicyPass, Rollout, Scored


# ------------------------------------------------------------------------------------ 1 prompts
def encode_prompt_ids(tokenizer: Any, document: str, query: str | None, *, max_prompt_tokens: int,
                      instruction: str | None = None) -> list[int]:
    """Prompt token ids with the document cut to fit ``max_prompt_tokens`` (same rule as
    :func:`sumrl.generation.summarize.summarize` with ``strategy="truncate"``: keep the first
    document tokens that fit ``budget - prompt overhead``)."""
    from sumrl.generation.summarize import encode_prompt
    from sumrl.models.prompts import build_prompt, prompt_overhead_tokens

    room = max_prompt_tokens - prompt_overhead_tokens(tokenizer, query, instruction)
    if room < 8:
        raise SumrlError(f"--max-prompt-tokens {max_prompt_tokens} leaves no room for the document "
                         f"(the prompt template alone takes {max_prompt_tokens - room} tokens)")
    doc_ids = tokenizer(document, add_special_tokens=False)["input_ids"]
    if len(doc_ids) > room:
        document = tokenizer.decode(doc_ids[:room], skip_special_tokens=True)
    return encode_prompt(tokenizer, build_prompt(tokenizer, document, query, instruction))


# ----------------------------------------------------------------------------------- 2 truncate
def truncate_at_eos(tokens: Sequence[int], stop_ids: Sequence[int]) -> tuple[list[int], bool]:
    """``(actions, finished)``: tokens up to and including the first end token, and whether there
    was one. Without an end token all tokens are kept (the row hit ``max_new_tokens``)."""
    stops = set(int(s) for s in stop_ids)
    for j, t in enumerate(tokens):
        if int(t) in stops:
            return [int(x) for x in tokens[: j + 1]], True
    return [int(x) for x in tokens], False


def reference_actions(tokenizer: Any, reference: str, *, max_new_tokens: int, eos_id: int) -> list[int] | None:
    """The reference summary as a response: its tokens + the end token that SFT trains the model to
    emit after a summary. ``None`` when the reference and its end token do not fit
    ``max_new_tokens``: a cut reference must never be given an end token (that would teach the
    policy to stop mid-sentence), so over-long references are left out of reference batches."""
    ids = tokenizer(reference.strip(), add_special_tokens=False)["input_ids"]
    if len(ids) + 1 > max_new_tokens:
        return None
    return [int(x) for x in ids] + [int(eos_id)]


def make_episode(tokenizer: Any, *, example_index: int, group: int, prompt_ids: Sequence[int], actions: Sequence[int],
                 finished: bool, source: str = "policy", prefix_ids: Sequence[int] = (),
                 suffix_ids: Sequence[int] = (), suffix_finished: bool | None = None) -> Episode:
    """An :class:`Episode` from its parts. ``prefix_ids`` (guide roll-in, policy tokens) are already
    part of ``prompt_ids``; ``suffix_ids`` (guide roll-out) follow the actions. ``finished`` says
    whether the actions end with an end token; with a roll-out, ``suffix_finished`` says whether
    the guide ended the summary."""
    actions = [int(x) for x in actions]
    text_actions = actions[:-1] if finished and actions else actions
    summary = [*[int(x) for x in prefix_ids], *text_actions, *[int(x) for x in suffix_ids]]
    fin = finished if suffix_finished is None else bool(suffix_finished)
    return Episode(example_index=int(example_index), group=int(group), prompt_ids=tuple(int(x) for x in prompt_ids),
                   action_ids=tuple(actions), summary_ids=tuple(summary), finished=fin,
                   suffix_ids=tuple(int(x) for x in suffix_ids), n_prefix=len(prefix_ids), source=source,
                   text=tokenizer.decode(summary, skip_special_tokens=True))


# -------------------------------------------------------------------------------------- 3 score
def run_rewards(reward: Any, episodes: Sequence[Episode], examples: Sequence[Any], tokenizer: Any):
    """Run the rewards on the decoded summaries (token ids given, so localising rewards can put
    their penalty on tokens). The summary text is ``decode(summary_ids)``, as the contract asks."""
    from sumrl.rewards.base import RewardInput

    exs = [examples[e.example_index] for e in episodes]
    inp = RewardInput(documents=[x.document for x in exs], summaries=[e.text for e in episodes],
                      references=[list(x.references) for x in exs], queries=[x.query for x in exs],
                      token_ids=[list(e.summary_ids) for e in episodes], tokenizer=tokenizer,
                      finished=[e.finished for e in episodes])
    out = reward(inp)
    if out.scores.shape[0] != len(episodes):
        raise SumrlError(f"reward returned {out.scores.shape[0]} scores for {len(episodes)} summaries")
    if not bool(torch.isfinite(out.scores).all()):
        raise SumrlError("a reward returned a NaN/inf score; check the reward configuration")
    return out


NO_EOS_MODES = ("add", "replace")


def place_rewards(episodes: Sequence[Episode], reward_out: Any, T: int, *, no_eos_penalty: float,
                  no_eos_mode: str = "add") -> Scored:
    """Put the reward functions' output on response positions.

    * per-token rewards of the *actions* and of a guide roll-out go to their own response
      positions (the end token gets none: the reward contract has no value for it);
    * per-token rewards of a guide roll-in prefix are dropped: those tokens are part of the state,
      no action of the policy can change them (``totals`` still counts them: it is the reward of
      the summary as written);
    * the sequence score is paid on the last response token (by :func:`~sumrl.rl.functional.
      shape_rewards`); a summary without an end token gets ``no_eos_penalty``: *added* to its
      score (``add``, sumrl's default for metric rewards), or *replacing* its whole reward
      (``replace``: N+ sets the score of such a response to ``penalty_reward_value`` = -1; its
      per-token rewards are dropped too, so its total is the penalty).
    """
    if no_eos_mode not in NO_EOS_MODES:
        raise ValueError(f"no_eos_mode must be one of {NO_EOS_MODES}, got {no_eos_mode!r}")
    B = len(episodes)
    token_scores = torch.zeros(B, T, dtype=torch.float32)
    scores = reward_out.scores.detach().float().clone()
    totals = reward_out.totals().detach().float().clone()
    trs = reward_out.token_rewards
    for i, e in enumerate(episodes):
        if trs is not None:
            tr = trs[i].detach().float()
            if tr.numel() != len(e.summary_ids):
                raise SumrlError(f"reward returned {tr.numel()} token rewards for a summary of {len(e.summary_ids)} tokens")
            n_act = e.n_actions_text
            token_scores[i, :n_act] = tr[e.n_prefix: e.n_prefix + n_act]
            start = len(e.action_ids)  # the suffix follows all actions (it only exists when no end token was taken)
            token_scores[i, start:start + e.n_suffix] = tr[e.n_prefix + n_act:]
        if not e.finished:
            if no_eos_mode == "add":
                scores[i] += no_eos_penalty
                totals[i] += no_eos_penalty
            else:
                scores[i] = no_eos_penalty
                totals[i] = no_eos_penalty
                token_scores[i] = 0.0
    return Scored(scores=scores, token_scores=token_scores, totals=totals)


def score_rollout(reward: Any, rollout: Rollout, examples: Sequence[Any], tokenizer: Any, *, no_eos_penalty: float,
                  no_eos_mode: str = "add") -> Scored:
    """Stage 3: rewards of every episode of ``rollout``, placed on its response positions."""
    out = run_rewards(reward, rollout.episodes, examples, tokenizer)
    placed = place_rewards(rollout.episodes, out, rollout.response_ids.shape[1], no_eos_penalty=no_eos_penalty,
                           no_eos_mode=no_eos_mode)
    return Scored(scores=placed.scores, token_scores=placed.token_scores, totals=placed.totals,
                  components={k: v.detach().float() for k, v in out.components.items()})


# --------------------------------------------------------------------------------- 5 advantages
@dataclass(frozen=True)
class AdvantageSettings:
    kl_coef: float = 0.0
    kl_estimator: str = "k1"
    kl_in_reward: bool = True
    gamma: float = 1.0
    lam: float = 0.95
    value_target: str = "gae"  # gae | mc
    whiten_rewards: bool = False
    whiten_advantages: bool = True
    group_size: int = 1
    algo: str = "ppo"
    scale_by_std: bool = True
    group_credit: str = "position"  # grpo/rloo with per-token rewards: position | sequence


def kl_rewards(scored: Scored, fwd: PolicyPass, rollout: Rollout, s: AdvantageSettings) -> tuple[Tensor, Tensor]:
    """``(rewards, kl)`` (B, T): the placed rewards plus ``-beta * KL`` on the policy's actions
    (guide roll-out tokens are not the policy's: no KL there), the sequence score on the last
    response token. No reference pass means KL = 0 by definition."""
    ref = fwd.ref_logprobs if fwd.ref_logprobs is not None else fwd.logprobs
    rewards, _ = F.shape_rewards(scored.scores, scored.token_scores, fwd.logprobs, fwd.logprobs,
                                 rollout.response_mask, 0.0)
    am = rollout.action_mask.to(torch.bool)
    kl = torch.where(am, F.kl_estimate(fwd.logprobs, ref, s.kl_estimator), torch.zeros((), dtype=rewards.dtype))
    beta = s.kl_coef if s.kl_in_reward else 0.0
    return rewards - beta * kl, kl


def critic_advantages(rollout: Rollout, scored: Scored, fwd: PolicyPass, s: AdvantageSettings, *,
                      advantage_scale: float | None = None) -> Advantages:
    """PPO with a critic: per-token rewards with the KL penalty, GAE over every response token
    (through a guide roll-out too, whose values the critic learns), optional whitening.

    * ``whiten_rewards`` rescales the rewards to unit variance over the batch without moving their
      mean (N+ ``masked_whiten(..., shift_mean=False)``), so that raw returns in the hundreds
      cannot swamp the policy gradient through a shared trunk;
    * ``whiten_advantages`` normalises the advantages of the policy's actions to zero mean and
      unit variance -- on sampled batches. A *reference* batch is never centred (centring would
      push down about a third of the reference tokens, i.e. push the reference down): its
      advantages are divided by ``advantage_scale`` (the advantage std of the last sampled batch)
      when given, else left as they are.
    """
    if fwd.values is None:
        raise ValueError("critic_advantages needs values")
    rewards, kl = kl_rewards(scored, fwd, rollout, s)
    mask = rollout.response_mask
    if s.whiten_rewards:
        rewards = F.masked_whiten(rewards, mask, shift_mean=False)
    adv, ret = F.gae(rewards, fwd.values, mask, s.gamma, s.lam)
    if s.value_target == "mc":
        ret = F.discounted_returns(rewards, mask, s.gamma)
    am = rollout.action_mask
    raw_std = float(F.masked_var(adv, am).clamp(min=1e-16).sqrt()) if am.sum() > 1 else None
    if s.whiten_advantages and am.sum() > 1:
        if rollout.is_reference_batch:
            if advantage_scale:
                adv = torch.where(am.bool(), adv / advantage_scale, torch.zeros((), dtype=adv.dtype))
        else:
            adv = F.masked_whiten(adv, am, shift_mean=True)
    adv = torch.where(am.bool(), adv, torch.zeros((), dtype=adv.dtype))
    return Advantages(rewards=rewards, advantages=adv, returns=ret, kl=kl, raw_std=raw_std)


def group_advantages(rollout: Rollout, scored: Scored, fwd: PolicyPass, s: AdvantageSettings) -> Advantages:
    """GRPO / RLOO advantages.

    ``group_credit="position"`` (sumrl's per-token variant, :func:`~sumrl.rl.functional.
    group_token_advantages`): the sequence score is group-relative as in standard GRPO / RLOO,
    per-token rewards (and ``-beta*KL`` when the KL is in the reward) are compared within the group
    at each response position, so a penalty on token 7 lowers tokens 0..7 of that completion only.
    ``group_credit="sequence"`` is the published form: every reward is folded into one number per
    completion (score + sum of its per-token rewards) and broadcast over its tokens. Without
    per-token rewards both are exactly standard GRPO / RLOO.
    """
    rewards, kl = kl_rewards(scored, fwd, rollout, s)
    mask = rollout.action_mask
    per_token = rewards - F.shape_rewards(scored.scores, None, fwd.logprobs, fwd.logprobs, rollout.response_mask,
                                          0.0)[0]
    if s.group_credit == "sequence":
        total = scored.scores + F.masked_sum(per_token, rollout.response_mask, dim=1)
        seq = (F.grpo_advantages(total, s.group_size, scale_by_std=s.scale_by_std) if s.algo == "grpo"
               else F.rloo_advantages(total, s.group_size))
        adv = torch.where(mask.bool(), seq[:, None].expand_as(per_token).to(per_token.dtype),
                          torch.zeros((), dtype=per_token.dtype))
    else:
        adv = F.group_token_advantages(scored.scores, per_token, mask, s.group_size, kind=s.algo,
                                       scale_by_std=s.scale_by_std)
    return Advantages(rewards=rewards, advantages=adv, returns=None, kl=kl)
