"""The typed values that flow through one RL step. Each stage returns a new, immutable value; no
stage assigns fields on an object another stage made::

    Episode (one summary, plain Python)       rollout strategies (rl/guided.py)
        |  collate
    Rollout   (tokens and masks, B rows)      # 1 generate, 2 truncate
        |  score_rollout
    Scored    (scores, per-token rewards)     # 3 score, no-end-token penalty, placement
        |  forward passes (no grad)
    PolicyPass (log-probs, entropy, values, reference log-probs)   # 4 forward
        |  critic_advantages / group_advantages
    Advantages (rewards with KL, advantages, returns, kl)          # 5 advantages
        |  TrainBatch.build
    TrainBatch (what the PPO update reads; mini-batches by select)  # 6 update

Layout of one episode (token ids in the *policy's* vocabulary)::

    prompt_ids                              response_ids
    [chat prompt ... | guide roll-in prefix] [a_0 ... a_{k-1} (EOS) | guide roll-out g_0 ... g_m]

* ``prompt_ids`` is the state the policy starts from. For a PPO++ roll-in it ends with the guide's
  prefix, re-tokenised by the policy tokenizer: those tokens are part of the state, not actions.
* ``action_ids`` are the tokens the policy is trained on (policy-loss mask); when the policy ended
  the summary they end with the end token (an action it must learn to take).
* ``suffix_ids`` is an AggreVaTeD guide roll-out: it follows the actions in the response (the
  trunk reads it, GAE runs through it, the critic is trained on it as in TRIL) but it is not an
  action of the policy.
* ``summary_ids`` are the summary as scored, *without* the end token: roll-in prefix + actions +
  guide roll-out.

Tensors put the prompt left-padded to ``Lq`` and the response right-padded to ``T``, so
``cat(query_ids, response_ids)`` is one left-padded-prompt batch whose position ids (count of real
tokens) match those used at sampling time. Shapes: B episodes, T response positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Sequence

import torch
from torch import Tensor

SOURCES = ("policy", "reference", "guide-rollin", "guide-rollout", "guide-rollin+rollout", "guide")


@dataclass(frozen=True)
class Episode:
    example_index: int  # index into the training examples
    group: int  # episodes sampled for the same prompt in the same step share a group
    prompt_ids: tuple[int, ...]
    action_ids: tuple[int, ...]  # the policy's actions; end with the end token iff the policy ended
    summary_ids: tuple[int, ...]  # scored summary tokens (no end token)
    finished: bool  # the summary ended with an end token (by the policy or the guide)
    suffix_ids: tuple[int, ...] = ()  # guide roll-out tokens after the actions (not actions)
    n_prefix: int = 0  # summary tokens before the first action (guide roll-in)
    source: str = "policy"
    text: str = ""  # decode(summary_ids), what the rewards saw

    @property
    def n_suffix(self) -> int:
        return len(self.suffix_ids)

    @property
    def response_ids(self) -> tuple[int, ...]:
        return self.action_ids + self.suffix_ids

    @property
    def is_reference(self) -> bool:
        return self.source == "reference"

    @property
    def n_actions_text(self) -> int:
        """Actions that are summary tokens (the end token is an action but not a summary token)."""
        return len(self.summary_ids) - self.n_prefix - self.n_suffix


def _frozen_select(obj: Any, index: Tensor) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, Tensor) and v.dim() >= 1:
            out[f.name] = v.index_select(0, index.to(v.device))
        elif isinstance(v, dict):
            out[f.name] = {k: t.index_select(0, index.to(t.device)) for k, t in v.items()}
        elif isinstance(v, tuple) and f.name == "episodes":
            out[f.name] = tuple(v[i] for i in index.tolist())
        else:
            out[f.name] = v
    return out


@dataclass(frozen=True)
class Rollout:
    """Stage 1-2 output: B episodes as tensors.

    ``response_mask`` (B, T) marks every response token the trunk reads (actions + guide roll-out):
    the positions of GAE and of the sequence score. ``action_mask`` marks the policy's actions
    (policy loss, KL, entropy); ``value_mask`` the positions the critic is trained on (the actions,
    or the guide's roll-out tokens for AggreVaTeD as in TRIL).
    """

    query_ids: Tensor  # (B, Lq) left-padded
    query_mask: Tensor  # (B, Lq)
    response_ids: Tensor  # (B, T) right-padded
    response_mask: Tensor  # (B, T)
    action_mask: Tensor  # (B, T)
    value_mask: Tensor  # (B, T)
    finished: Tensor  # (B,) bool
    groups: Tensor  # (B,) long
    episodes: tuple[Episode, ...]
    kind: str = "sampled"  # sampled | reference (a whole batch of reference summaries)
    critic: str = "policy"  # which value head this batch trains: policy | guide (D2LOLS phase 1)
    # (B,) long: trailing query tokens that are a guide roll-in prefix (Episode.n_prefix); a decoder
    # reads them as prompt, an encoder-decoder's decoder starts from them (None: no prefixes)
    prefix_len: Tensor | None = None

    def __len__(self) -> int:
        return int(self.response_ids.shape[0])

    @property
    def is_reference_batch(self) -> bool:
        return self.kind == "reference"


def collate(episodes: Sequence[Episode], pad_id: int, *, kind: str = "sampled", critic: str = "policy",
            value_on: str = "actions") -> Rollout:
    """Pad episodes into a :class:`Rollout` (prompts left-padded, responses right-padded).

    ``value_on``: ``actions`` (the critic learns on the policy's actions) or ``suffix`` (on the
    guide roll-out tokens, TRIL's AggreVaTeD: ``ppo.py`` masks the value loss with the inverted
    roll-in mask when ``curr_alg_type == "aggrevate"``)."""
    if not episodes:
        raise ValueError("no episodes to collate")
    if value_on not in ("actions", "suffix"):
        raise ValueError(f"value_on must be 'actions' or 'suffix', got {value_on!r}")
    B = len(episodes)
    Lq = max(len(e.prompt_ids) for e in episodes)
    T = max(max(len(e.response_ids) for e in episodes), 1)
    q = torch.full((B, Lq), pad_id, dtype=torch.long)
    qm = torch.zeros((B, Lq), dtype=torch.long)
    r = torch.full((B, T), pad_id, dtype=torch.long)
    rm = torch.zeros((B, T), dtype=torch.long)
    am = torch.zeros((B, T), dtype=torch.long)
    vm = torch.zeros((B, T), dtype=torch.long)
    for i, e in enumerate(episodes):
        if e.prompt_ids:
            q[i, Lq - len(e.prompt_ids):] = torch.tensor(e.prompt_ids, dtype=torch.long)
            qm[i, Lq - len(e.prompt_ids):] = 1
        resp = e.response_ids
        if resp:
            r[i, :len(resp)] = torch.tensor(resp, dtype=torch.long)
            rm[i, :len(resp)] = 1
        am[i, :len(e.action_ids)] = 1
        if value_on == "actions":
            vm[i, :len(e.action_ids)] = 1
        else:
            vm[i, len(e.action_ids):len(resp)] = 1
    return Rollout(query_ids=q, query_mask=qm, response_ids=r, response_mask=rm, action_mask=am, value_mask=vm,
                   finished=torch.tensor([e.finished for e in episodes], dtype=torch.bool),
                   groups=torch.tensor([e.group for e in episodes], dtype=torch.long),
                   episodes=tuple(episodes), kind=kind, critic=critic,
                   prefix_len=torch.tensor([e.n_prefix for e in episodes], dtype=torch.long))


@dataclass(frozen=True)
class Scored:
    """Stage 3 output: what the reward functions said, placed on response positions.

    ``scores`` (B,) is the sequence-level score (with the no-end-token term), paid on the last
    response token; ``token_scores`` (B, T) the per-token rewards on their own positions (roll-in
    prefix tokens get none: they are state); ``totals`` (B,) the summary's whole reward before KL
    (what ``objective/reward`` reports); ``components`` {``rewards/<name>``: (B,)}."""

    scores: Tensor
    token_scores: Tensor
    totals: Tensor
    components: dict[str, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class PolicyPass:
    """Stage 4 output (no grad): per response position, (B, T) float32."""

    logprobs: Tensor
    entropy: Tensor
    values: Tensor | None = None
    ref_logprobs: Tensor | None = None  # None: no reference pass (KL is 0 by definition then)


@dataclass(frozen=True)
class Advantages:
    """Stage 5 output, (B, T): per-token rewards with the KL term, advantages, returns (None for
    the group algorithms, which have no critic) and the unscaled KL estimate on the actions."""

    rewards: Tensor
    advantages: Tensor
    returns: Tensor | None
    kl: Tensor
    raw_std: float | None = None  # critic: std of the unwhitened advantages of the actions (a later reference batch's scale)


@dataclass(frozen=True)
class TrainBatch:
    """What the PPO update reads, row-aligned; :meth:`select` gives mini/micro-batches trimmed to
    their own longest prompt and response."""

    query_ids: Tensor
    query_mask: Tensor
    response_ids: Tensor
    response_mask: Tensor
    action_mask: Tensor
    value_mask: Tensor
    old_logprobs: Tensor
    advantages: Tensor
    ref_logprobs: Tensor | None = None
    old_values: Tensor | None = None
    returns: Tensor | None = None
    example_index: Tensor | None = None  # (B,) long: whose reference the target loss reads
    critic: str = "policy"
    prefix_len: Tensor | None = None  # (B,) long, see Rollout.prefix_len

    @classmethod
    def build(cls, rollout: Rollout, fwd: PolicyPass, adv: Advantages) -> "TrainBatch":
        return cls(query_ids=rollout.query_ids, query_mask=rollout.query_mask, response_ids=rollout.response_ids,
                   response_mask=rollout.response_mask, action_mask=rollout.action_mask,
                   value_mask=rollout.value_mask, old_logprobs=fwd.logprobs, advantages=adv.advantages,
                   ref_logprobs=fwd.ref_logprobs, old_values=fwd.values, returns=adv.returns,
                   example_index=torch.tensor([e.example_index for e in rollout.episodes], dtype=torch.long),
                   critic=rollout.critic, prefix_len=rollout.prefix_len)

    def __len__(self) -> int:
        return int(self.response_ids.shape[0])

    def n_actions(self) -> int:
        return int(self.action_mask.sum())

    def n_values(self) -> int:
        return int(self.value_mask.sum())

    def select(self, idx: Sequence[int] | Tensor) -> "TrainBatch":
        index = torch.as_tensor(idx, dtype=torch.long)
        out = _frozen_select(self, index)
        q_keep = int(out["query_mask"].sum(dim=1).max()) if len(index) else 0
        r_keep = max(int(out["response_mask"].sum(dim=1).max()) if len(index) else 0, 1)
        q_cut = out["query_ids"].shape[1] - q_keep
        for k, v in out.items():
            if isinstance(v, Tensor) and v.dim() == 2:
                out[k] = v[:, q_cut:] if k in ("query_ids", "query_mask") else v[:, :r_keep]
        return replace(self, **out)

    def to(self, device: Any) -> "TrainBatch":
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)
                                if isinstance(getattr(self, f.name), Tensor)})
