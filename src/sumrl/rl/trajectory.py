"""Typed containers for rollouts: one :class:`Episode` per sampled summary (plain Python lists, as
produced by the rollout stages) and a :class:`Trajectory` batch of padded tensors for the update.

Layout of one episode (token ids in the *policy's* vocabulary)::

    prompt_ids                              response_ids (the policy's actions)
    [chat prompt ... | guide roll-in prefix] [a_0 a_1 ... a_{n-1} (EOS)]  + guide roll-out (not actions)

* ``prompt_ids`` is the state the policy starts from. For a PPO++ roll-in it ends with the guide's
  prefix, re-tokenised by the policy tokenizer: those tokens are part of the state, not actions.
* ``response_ids`` are the tokens the policy is trained on; when the episode finished by the policy
  they end with the end token (an action the policy must learn to take).
* ``summary_ids`` are the summary as scored, *without* the end token: roll-in prefix + actions +
  guide roll-out. ``n_prefix`` / ``n_suffix`` say how many of them are not actions.

The trajectory tensors put the prompt left-padded to ``Lq`` and the response right-padded to ``T``,
so ``input_ids = cat(query_ids, response_ids)`` is one left-padded-prompt batch whose position ids
(count of real tokens) match those used at sampling time.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor

SOURCES = ("policy", "reference", "guide-rollin", "guide-rollout")


@dataclass
class Episode:
    example_index: int  # index into the training examples
    group: int  # episodes sampled for the same prompt in the same step share a group
    prompt_ids: list[int]
    response_ids: list[int]  # actions; ends with the end token iff ended_by_policy
    summary_ids: list[int]  # scored summary tokens (no end token)
    finished: bool  # the summary ended with an end token (by the policy or the guide)
    n_prefix: int = 0  # summary tokens before the first action (guide roll-in)
    n_suffix: int = 0  # summary tokens after the last action (guide roll-out)
    source: str = "policy"
    text: str = ""  # decode(summary_ids), what the rewards saw

    @property
    def is_reference(self) -> bool:
        return self.source == "reference"

    @property
    def n_actions_text(self) -> int:
        """Actions that are summary tokens (the end token is an action but not a summary token)."""
        return len(self.summary_ids) - self.n_prefix - self.n_suffix


@dataclass
class Trajectory:
    """A batch of episodes as tensors; per-token tensors are (B, T), aligned with ``response_ids``."""

    query_ids: Tensor  # (B, Lq) left-padded
    query_mask: Tensor  # (B, Lq) 1 on real prompt tokens
    response_ids: Tensor  # (B, T) right-padded
    response_mask: Tensor  # (B, T) 1 on actions
    logprobs: Tensor | None = None  # old (rollout-time) policy log-probs
    ref_logprobs: Tensor | None = None
    values: Tensor | None = None
    entropy: Tensor | None = None
    token_scores: Tensor | None = None  # reward-function per-token rewards placed on actions (no KL)
    rewards: Tensor | None = None  # shaped per-token rewards (incl. KL penalty and sequence score)
    advantages: Tensor | None = None
    returns: Tensor | None = None
    scores: Tensor | None = None  # (B,) sequence-level score incl. no-EOS penalty and guide roll-out return
    totals: Tensor | None = None  # (B,) total reward of the summary (score + per-token rewards), before KL
    finished: Tensor | None = None  # (B,) bool
    is_reference: Tensor | None = None  # (B,) bool
    groups: Tensor | None = None  # (B,) long
    components: dict[str, Tensor] = field(default_factory=dict)  # name -> (B,)
    episodes: list[Episode] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.response_ids.shape[0])

    @property
    def query_len(self) -> int:
        return int(self.query_ids.shape[1])

    def input_ids(self) -> tuple[Tensor, Tensor]:
        """``(input_ids, attention_mask)`` of prompt + response (response padding masked out)."""
        ids = torch.cat([self.query_ids, self.response_ids], dim=1)
        mask = torch.cat([self.query_mask, self.response_mask], dim=1)
        return ids, mask

    def n_tokens(self) -> int:
        return int(self.response_mask.sum())

    def select(self, idx: list[int] | Tensor) -> "Trajectory":
        """Rows ``idx`` (tensors indexed, dict values indexed, episodes picked); columns trimmed to the
        longest prompt / response among them so small micro-batches do not carry padding."""
        index = torch.as_tensor(idx, dtype=torch.long)
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                out[f.name] = v.index_select(0, index.to(v.device))
            elif f.name == "components":
                out[f.name] = {k: t.index_select(0, index.to(t.device)) for k, t in v.items()}
            elif f.name == "episodes":
                out[f.name] = [v[i] for i in index.tolist()] if v else []
            else:
                out[f.name] = v
        sub = Trajectory(**out)
        return sub.trimmed()

    def trimmed(self) -> "Trajectory":
        q_keep = int(self.query_mask.sum(dim=1).max()) if len(self) else 0
        r_keep = max(int(self.response_mask.sum(dim=1).max()) if len(self) else 0, 1)
        q_cut = self.query_len - q_keep
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, Tensor) or v.dim() != 2:
                continue
            if f.name in ("query_ids", "query_mask"):
                setattr(self, f.name, v[:, q_cut:])
            else:
                setattr(self, f.name, v[:, :r_keep])
        return self

    def to(self, device: Any) -> "Trajectory":
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                setattr(self, f.name, v.to(device))
            elif f.name == "components":
                setattr(self, f.name, {k: t.to(device) for k, t in v.items()})
        return self


def collate(episodes: list[Episode], pad_id: int) -> Trajectory:
    """Pad episodes into a :class:`Trajectory` (prompts left-padded, responses right-padded)."""
    if not episodes:
        raise ValueError("no episodes to collate")
    B = len(episodes)
    Lq = max(len(e.prompt_ids) for e in episodes)
    T = max(max(len(e.response_ids) for e in episodes), 1)
    q = torch.full((B, Lq), pad_id, dtype=torch.long)
    qm = torch.zeros((B, Lq), dtype=torch.long)
    r = torch.full((B, T), pad_id, dtype=torch.long)
    rm = torch.zeros((B, T), dtype=torch.long)
    for i, e in enumerate(episodes):
        if e.prompt_ids:
            q[i, Lq - len(e.prompt_ids):] = torch.tensor(e.prompt_ids, dtype=torch.long)
            qm[i, Lq - len(e.prompt_ids):] = 1
        if e.response_ids:
            r[i, :len(e.response_ids)] = torch.tensor(e.response_ids, dtype=torch.long)
            rm[i, :len(e.response_ids)] = 1
    return Trajectory(
        query_ids=q, query_mask=qm, response_ids=r, response_mask=rm,
        finished=torch.tensor([e.finished for e in episodes], dtype=torch.bool),
        is_reference=torch.tensor([e.is_reference for e in episodes], dtype=torch.bool),
        groups=torch.tensor([e.group for e in episodes], dtype=torch.long),
        episodes=list(episodes),
    )
