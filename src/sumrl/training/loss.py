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
from sumrl.models.sharding import no_split_modules


class CausalLMLoss(torch.nn.Module):
    supports_packing = True
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
        self._no_split_modules = no_split_modules(model)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        ctx = torch.autocast(input_ids.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()
        with ctx:
            hidden = model_hidden_states(self.model, input_ids, attention_mask, position_ids=position_ids)
        weight, softcap = output_head(self.model)
        return chunked_cross_entropy(hidden, weight, labels, chunk_size=self.chunk_size, softcap=softcap)

    def collate(self, seqs: Any, *, packing: bool, pad_id: int) -> dict[str, Any]:
        from sumrl.training.packing import collate

        return collate(seqs, packing=packing, pad_id=pad_id)


class Seq2SeqLMLoss(torch.nn.Module):
    """The same loss for an encoder-decoder: the prompt is the encoder's input, the target is
    teacher-forced through the decoder (``start + labels[:-1]`` predicts ``labels``), and the
    summed cross-entropy of the target tokens is chunked over the vocabulary like the causal one.
    ``forward(input_ids, attention_mask, labels) -> (loss_sum, n_tokens)``; labels are *not*
    shifted (position ``t`` of the decoder predicts ``labels[:, t]``). Packing does not apply
    (the encoder and decoder inputs are separate sequences): batches are length-sorted padding."""

    supports_packing = False

    def __init__(self, model: Any, *, chunk_size: int = 512, bf16: bool = False):
        super().__init__()
        self.model = model
        self.chunk_size = int(chunk_size)
        self.bf16 = bool(bf16)
        self._no_split_modules = no_split_modules(model)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        from sumrl.models.logprobs import IGNORE_INDEX
        from sumrl.models.seq2seq import decoder_hidden, encode

        valid = labels != IGNORE_INDEX
        response = torch.where(valid, labels, torch.zeros_like(labels))  # pad slots: any valid id (masked)
        ctx = torch.autocast(input_ids.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()
        with ctx:
            states, emask = encode(self.model, input_ids, attention_mask)
            hidden = decoder_hidden(self.model, states, emask, response, valid.long())
        weight, softcap = output_head(self.model)
        return chunked_cross_entropy(hidden, weight, labels, chunk_size=self.chunk_size, softcap=softcap)

    def collate(self, seqs: Any, *, packing: bool, pad_id: int) -> dict[str, Any]:
        from sumrl.models.seq2seq import collate_seq2seq

        return collate_seq2seq(seqs, pad_id=pad_id)


def make_loss_module(model: Any, *, chunk_size: int = 512, bf16: bool = False) -> torch.nn.Module:
    """The SFT loss module of ``model``'s family (causal LM or encoder-decoder)."""
    from sumrl.models.seq2seq import is_encoder_decoder

    cls = Seq2SeqLMLoss if is_encoder_decoder(model) else CausalLMLoss
    return cls(model, chunk_size=chunk_size, bf16=bf16)
