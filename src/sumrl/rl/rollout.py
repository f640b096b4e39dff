"""The rollout stages, each a small function (the trainer calls them in this order):

1. :func:`encode_prompt_ids` -- the same prompt as SFT/eval, document truncated to the budget
   exactly like ``sumrl eval --strategy truncate``;
2. :func:`sample` -- generate with temperature (left padding, LoRA adapter on);
3. :func:`truncate_at_eos` -- cut each response at its first end token (the end token stays: it is
   an action the policy must learn); :func:`reference_actions` builds the response of a
   reference-summary trajectory instead;
4. :func:`score` -- the configured rewards (sequence-level and per-token) on the decoded summary;
5. :func:`place_rewards` -- per-token rewards onto the action positions, the sequence score (plus
   the no-end-token penalty and any guide roll-out return) onto the last action;
6. :func:`critic_advantages` (KL penalty in the reward, GAE, whitening) or
   :func:`group_advantages` (GRPO / RLOO; per-token rewards compared position by position).

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
from sumrl.rl.trajectory import Episode, Trajectory


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


# ----------------------------------------------------------------------------------- 2 generate
def sample(model: Any, prompts: Sequence[Sequence[int]], *, max_new_tokens: int | Sequence[int], temperature: float,
           top_p: float, stop_ids: Sequence[int], pad_id: int) -> list[list[int]]:
    """Sample one continuation per prompt; returns the new token ids of each row, cut to the row's
    own ``max_new_tokens`` (a list gives per-row limits; one ``generate`` call uses the largest).
    ``temperature == 0`` means greedy. Rows that stopped early are right-padded by ``generate``;
    callers cut at the first end token (:func:`truncate_at_eos`)."""
    if not prompts:
        return []
    limits = [int(max_new_tokens)] * len(prompts) if isinstance(max_new_tokens, int) else [int(x) for x in max_new_tokens]
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
        mask[r, width - len(p):] = 1
    device = next(model.parameters()).device
    kwargs: dict[str, Any] = dict(max_new_tokens=max(limits), pad_token_id=pad_id, eos_token_id=list(stop_ids))
    if temperature > 0:
        # top_k=0: sample from the full distribution, whose log-probs the trainer computes
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=True, **kwargs)
    finally:
        model.train(was_training)
    new = out[:, width:].cpu().tolist()
    return [row[:lim] for row, lim in zip(new, limits)]


# ----------------------------------------------------------------------------------- 3 truncate
def truncate_at_eos(tokens: Sequence[int], stop_ids: Sequence[int]) -> tuple[list[int], bool]:
    """``(actions, finished)``: tokens up to and including the first end token, and whether there
    was one. Without an end token all tokens are kept (the row hit ``max_new_tokens``)."""
    stops = set(int(s) for s in stop_ids)
    for j, t in enumerate(tokens):
        if int(t) in stops:
            return [int(x) for x in tokens[: j + 1]], True
    return [int(x) for x in tokens], False


def reference_actions(tokenizer: Any, reference: str, *, max_new_tokens: int, eos_id: int) -> list[int]:
    """The reference summary as a response: its tokens (cut to ``max_new_tokens - 1``) + the end
    token that SFT trains the model to emit after a summary (so it is always "finished")."""
    ids = tokenizer(reference.strip(), add_special_tokens=False)["input_ids"][: max_new_tokens - 1]
    return [int(x) for x in ids] + [int(eos_id)]


def make_episode(tokenizer: Any, *, example_index: int, group: int, prompt_ids: list[int], actions: list[int],
                 finished: bool, source: str = "policy", prefix_ids: Sequence[int] = (),
                 suffix_ids: Sequence[int] = (), suffix_finished: bool | None = None) -> Episode:
    """An :class:`Episode` from its parts. ``prefix_ids`` (guide roll-in, policy tokens) are already
    part of ``prompt_ids``; ``suffix_ids`` (guide roll-out) follow the actions. ``finished`` says
    whether the actions end with an end token; with a roll-out, ``suffix_finished`` says whether
    the guide ended the summary."""
    text_actions = actions[:-1] if finished else list(actions)
    summary = [*prefix_ids, *text_actions, *suffix_ids]
    fin = finished if suffix_finished is None else bool(suffix_finished)
    return Episode(example_index=example_index, group=group, prompt_ids=list(prompt_ids), response_ids=list(actions),
                   summary_ids=[int(x) for x in summary], finished=fin, n_prefix=len(prefix_ids),
                   n_suffix=len(suffix_ids), source=source,
                   text=tokenizer.decode(summary, skip_special_tokens=True))


# -------------------------------------------------------------------------------------- 4 score
def score(reward: Any, episodes: Sequence[Episode], examples: Sequence[Any], tokenizer: Any):
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


# ---------------------------------------------------------------------------------- 5 placement
def place_rewards(episodes: Sequence[Episode], reward_out: Any, T: int, *, no_eos_penalty: float,
                  gamma: float = 1.0) -> tuple[Tensor, Tensor]:
    """``(token_scores (B, T), scores (B,))`` for the trainer.

    * per-token rewards of the *action* tokens go to their positions (the end token gets none:
      the reward contract has no value for it);
    * per-token rewards of a guide roll-in prefix are dropped: those tokens are part of the state,
      no action of the policy can change them;
    * per-token rewards of a guide roll-out suffix, the sequence score and the no-end-token
      penalty are what follows the last action: they are added to the sequence score, which
      :func:`sumrl.rl.functional.shape_rewards` puts on the last action, discounted by the
      number of guide tokens between that action and where they were earned.
    """
    B = len(episodes)
    token_scores = torch.zeros(B, T, dtype=torch.float32)
    scores = reward_out.scores.detach().float().clone()
    trs = reward_out.token_rewards
    for i, e in enumerate(episodes):
        s = scores[i] + (no_eos_penalty if not e.finished else 0.0)
        n_act = e.n_actions_text
        if trs is not None:
            tr = trs[i].detach().float()
            if tr.numel() != len(e.summary_ids):
                raise SumrlError(f"reward returned {tr.numel()} token rewards for a summary of {len(e.summary_ids)} tokens")
            token_scores[i, :n_act] = tr[e.n_prefix: e.n_prefix + n_act]
            suffix = tr[e.n_prefix + n_act:]
            if suffix.numel():
                disc = gamma ** torch.arange(1, suffix.numel() + 1, dtype=torch.float32)
                s = s * gamma ** suffix.numel() + (disc * suffix).sum() if gamma != 1.0 else s + suffix.sum()
        elif e.n_suffix and gamma != 1.0:
            s = s * gamma ** e.n_suffix
        scores[i] = s
    return token_scores, scores


def summary_totals(episodes: Sequence[Episode], reward_out: Any, no_eos_penalty: float) -> Tensor:
    """(B,) total reward of each summary as written (score + all its per-token rewards + the
    no-end-token penalty): what ``objective/reward`` reports."""
    tot = reward_out.totals().detach().float().clone()
    pen = torch.tensor([0.0 if e.finished else no_eos_penalty for e in episodes], dtype=torch.float32)
    return tot + pen


# --------------------------------------------------------------------------------- 6 advantages
@dataclass
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


def _ref_or_self(traj: Trajectory) -> Tensor:
    # No reference log-probs (kl_coef 0 and --no-reference-kl): KL is 0 by definition here.
    return traj.ref_logprobs if traj.ref_logprobs is not None else traj.logprobs


def critic_advantages(traj: Trajectory, s: AdvantageSettings) -> dict[str, Tensor]:
    """PPO: per-token rewards with the KL penalty, GAE, optional whitening. Fills
    ``traj.rewards / advantages / returns`` and returns ``{"kl": (B, T)}``."""
    mask = traj.response_mask
    beta = s.kl_coef if s.kl_in_reward else 0.0
    rewards, kl = F.shape_rewards(traj.scores, traj.token_scores, traj.logprobs, _ref_or_self(traj), mask, beta,
                                  s.kl_estimator)
    if s.whiten_rewards:
        rewards = F.masked_whiten(rewards, mask, shift_mean=False)
    adv, ret = F.gae(rewards, traj.values, mask, s.gamma, s.lam)
    if s.value_target == "mc":
        ret = F.discounted_returns(rewards, mask, s.gamma)
    if s.whiten_advantages:
        adv = F.masked_whiten(adv, mask, shift_mean=True)
    traj.rewards, traj.advantages, traj.returns = rewards, adv, ret
    return {"kl": kl}


def group_advantages(traj: Trajectory, s: AdvantageSettings) -> dict[str, Tensor]:
    """GRPO / RLOO advantages, with credit assignment for per-token rewards.

    The sequence score (plus the no-end-token penalty) is the group-relative part as in standard
    GRPO / RLOO; per-token rewards (and the -beta*KL penalty when the KL term is in the reward) are
    compared within the group at each response position: :func:`~sumrl.rl.functional.
    group_token_advantages`. A penalty on token 7 then lowers the advantage of tokens 0..7 of that
    completion relative to completions that did not pay it, and tokens after it are not blamed.
    Without per-token rewards this is exactly standard GRPO / RLOO.
    """
    mask = traj.response_mask
    beta = s.kl_coef if s.kl_in_reward else 0.0
    rewards, kl = F.shape_rewards(traj.scores, traj.token_scores, traj.logprobs, _ref_or_self(traj), mask, beta,
                                  s.kl_estimator)
    # the same per-token rewards without the sequence score on the last token
    per_token, _ = F.shape_rewards(torch.zeros_like(traj.scores), traj.token_scores, traj.logprobs,
                                   _ref_or_self(traj), mask, beta, s.kl_estimator)
    adv = F.group_token_advantages(traj.scores, per_token, mask, s.group_size, kind=s.algo,
                                   scale_by_std=s.scale_by_std)
    traj.rewards, traj.advantages, traj.returns = rewards, adv, None
    return {"kl": kl}
