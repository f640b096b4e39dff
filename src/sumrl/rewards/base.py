"""The reward contract shared by the reward registry, reward models and the RL trainers.

A reward sees a batch of (document, generated summary, references, query) and returns:

* ``scores``: (N,) sequence-level reward of each summary;
* ``token_rewards``: optional list of N 1-D tensors, one value per *generated token* of the
  summary (aligned to ``RewardInput.token_ids[i]``), for rewards that can localise a problem
  (a repeated n-gram, a copied span, an unsupported number) -- the RL trainers add these to the
  per-token reward, so the penalty lands on the tokens that carry the problem;
* ``components``: named (N,) parts for logging as ``rewards/<name>``.

The *total* reward of summary i is ``scores[i] + token_rewards[i].sum()``. A reward that only has
a sequence-level view returns ``token_rewards=None``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch


@dataclass
class RewardInput:
    documents: list[str]
    summaries: list[str]
    references: list[list[str]]
    queries: list[str | None]
    # generated token ids of each summary, WITHOUT the EOS token; the summary text must equal
    # tokenizer.decode(token_ids[i], skip_special_tokens=True) so char spans map onto tokens
    token_ids: list[list[int]] | None = None
    tokenizer: Any | None = None
    finished: list[bool] | None = None  # whether each summary ended with EOS (not cut off)
    # filled lazily by sumrl.rewards.metric.token_spans(): char span of each generated token in
    # its summary, shared by every localising reward of a composite (decoded once per batch)
    token_spans: list[list[tuple[int, int]]] | None = None

    def __len__(self) -> int:
        return len(self.summaries)


@dataclass
class RewardOutput:
    scores: torch.Tensor  # (N,)
    token_rewards: list[torch.Tensor] | None = None  # N x (len(token_ids[i]),)
    components: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (N,)

    def totals(self) -> torch.Tensor:
        """(N,) sequence score plus the sum of the per-token rewards."""
        if self.token_rewards is None:
            return self.scores
        return self.scores + torch.stack([t.sum() if t.numel() else t.new_zeros(()) for t in self.token_rewards])


@runtime_checkable
class Reward(Protocol):
    name: str

    def __call__(self, inp: RewardInput) -> RewardOutput: ...
