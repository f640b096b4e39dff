"""The SFT loss as a module: summed cross-entropy of the target tokens, never full logits.

Why a module: under ``accelerate launch`` the trained network is wrapped in
DistributedDataParallel, which only synchronises gradients correctly when the computation goes
through the wrapper's ``forward``. Calling the decoder trunk directly (to skip the LM head)
would bypass it, so the whole loss -- trunk, then chunked cross-entropy over the target
positions -- is this module's forward and *this* module is what gets wrapped.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch

from sumrl.models.logprobs import chunked_cross_entropy, model_hidden_states, output_head


class CausalLMLoss(torch.nn.Module):
    """``forward(input_ids, labels, position_ids=None, attention_mask=None) -> (loss_sum, n_tokens)``.

    ``labels`` are already shifted (``labels[:, t]`` is predicted from position ``t``; -100 =
    ignored). With ``bf16`` the trunk runs under bfloat16 autocast (parameters stay float32);
    the cross-entropy always runs in float32 (chunked_cross_entropy disables autocast).
    """

    def __init__(self, model: Any, *, chunk_size: int = 512, bf16: bool = False):
        super().__init__()
        self.model = model
        self.chunk_size = int(chunk_size)
        self.bf16 = bool(bf16)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        ctx = torch.autocast(input_ids.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()
        with ctx:
            hidden = model_hidden_states(self.model, input_ids, attention_mask, position_ids=position_ids)
        weight, softcap = output_head(self.model)
        return chunked_cross_entropy(hidden, weight, labels, chunk_size=self.chunk_size, softcap=softcap)
