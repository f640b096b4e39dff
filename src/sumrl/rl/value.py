"""Policy log-probs and critic values from one base model.

:class:`PolicyValueModule` is the single trainable module of the RL trainers (what Accelerate
wraps): its ``forward`` runs the decoder trunk over prompt + response once and returns, for each
response position, the log-prob of the action (chunked over the vocabulary, never the logits of the
prompt) and -- with the shared-trunk critic -- the value from a linear head on the same final hidden
states. The reference policy is the same module with LoRA adapters disabled
(:func:`sumrl.models.lora.adapters_disabled`), or a frozen copy for full fine-tuning.

Critic variants (``--value-model``):

* ``head``: ``V(s_t) = w . h_t + b`` on the policy's final hidden state ``h_t`` (the state before
  response token ``t``). One trunk pass serves policy and critic; the value loss also trains the
  policy adapter (scaled by ``vf_coef``). The N+ paper uses a separate value network; sharing the
  trunk is a memory/compute choice.
* ``adapter``: a second LoRA adapter ``"value"`` on the same frozen base, with its own head: a
  separate value network in all but the (frozen) base weights, at the price of a second trunk pass.
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from typing import Any, Iterator

import torch
from torch import Tensor

from sumrl.models.logprobs import IGNORE_INDEX, chunked_token_logprobs, model_hidden_states, output_head

VALUE_ADAPTER = "value"


class ValueHead(torch.nn.Module):
    """Linear scalar head; initialised like the N+ implementation (``std = 1/sqrt(H + 1)``, bias 0)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.normal_(self.linear.weight, std=1.0 / math.sqrt(hidden_size + 1))
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.linear(hidden.to(self.linear.weight.dtype)).squeeze(-1)


def hidden_size(model: Any) -> int:
    cfg = model.config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return int(cfg.hidden_size)


def init_value_head_from_rm(head: ValueHead, reward: Any) -> str | None:
    """Copy the score head of an ``rm`` reward into ``head`` when possible (N+ detail: the critic
    starts from the reward model). The RM's token values are normalised the way the reward uses
    them (``(v - mean) / std``), so the initial values are in reward units. Returns a note saying
    what was done, or None when there is no reward model.

    Only the head can be copied: our critic shares the *policy's* trunk, so this is an exact copy
    of the N+ initialisation only when the RM was trained on the same base model
    (``sumrl rm --backbone policy``); otherwise (MiniLM RM, other hidden size) the head keeps its
    random initialisation.
    """
    rms = [r for r in getattr(reward, "rewards", []) if hasattr(r, "rm") and hasattr(r.rm, "model")]
    if not rms:
        return None
    rm = rms[0]
    src = getattr(rm.rm.model, "head", None)
    if getattr(rm.rm.model, "backbone", None) != "policy" or src is None:
        return "value head not initialised from the reward model (its backbone is not the policy family)"
    if src.weight.shape != head.linear.weight.shape:
        return (f"value head not initialised from the reward model (hidden size {src.weight.shape[1]} vs "
                f"{head.linear.weight.shape[1]})")
    mean, std = 0.0, 1.0
    norm = rm.rm.normalization
    if getattr(rm, "normalize", False) and norm and norm.get("std"):
        mean, std = float(norm["mean"]), max(float(norm["std"]), 1e-6)
    with torch.no_grad():
        head.linear.weight.copy_(src.weight.detach().float() / std)
        head.linear.bias.copy_((src.bias.detach().float() - mean) / std)
    return f"value head initialised from the reward model {rm.path}"


@contextmanager
def active_adapter(model: Any, name: str, trainable: list[Tensor]) -> Iterator[None]:
    """Run ``model`` with adapter ``name`` active. peft's ``set_adapter`` freezes the inactive
    adapters; requires_grad is restored on every trainable tensor afterwards (both adapters train,
    each only through its own forward pass)."""
    prev = model.active_adapter
    model.set_adapter(name)
    for p in trainable:
        p.requires_grad_(True)
    try:
        yield
    finally:
        model.set_adapter(prev)
        for p in trainable:
            p.requires_grad_(True)


class PolicyValueModule(torch.nn.Module):
    """``forward(query_ids, query_mask, response_ids, response_mask, ...) -> dict`` with
    ``logprobs`` (B, T), optionally ``entropy`` (B, T) and ``values`` (B, T).

    Args of ``forward``:
        temperature: logits are divided by it before the softmax (via ``hidden / temperature``,
            exact because the head is linear; the trainer refuses soft-capped heads with T != 1).
        with_values: also compute the critic.
        with_entropy: entropy of the next-token distribution at each response position, no gradient
            (from the chunked pass).
        entropy_grad: entropy *with* gradient (for an entropy bonus): full logits of the response
            positions only, ``(n_response_tokens, V)``.
    """

    def __init__(self, model: Any, value_head: ValueHead | None = None, *, value_adapter: bool = False,
                 chunk_size: int = 512, bf16: bool = False, guide_value_head: ValueHead | None = None):
        super().__init__()
        self.model = model
        self.value_head = value_head
        # D2LOLS's separate guide critic (TRIL create_guide_critic): a second head on the same trunk
        self.guide_value_head = guide_value_head
        self.value_adapter = bool(value_adapter)
        self.chunk_size = int(chunk_size)
        self.bf16 = bool(bf16)
        self._adapter_params: list[Tensor] = []
        if self.value_adapter:
            self._adapter_params = [p for n, p in model.named_parameters() if "lora_" in n]

    def _trunk(self, ids: Tensor, mask: Tensor) -> Tensor:
        ctx = torch.autocast(ids.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()
        with ctx:
            return model_hidden_states(self.model, ids, mask)

    def forward(self, query_ids: Tensor, query_mask: Tensor, response_ids: Tensor, response_mask: Tensor, *,
                temperature: float = 1.0, with_values: bool = False, with_entropy: bool = False,
                entropy_grad: bool = False, critic: str = "policy") -> dict[str, Tensor]:
        Lq, T = query_ids.shape[1], response_ids.shape[1]
        ids = torch.cat([query_ids, response_ids], dim=1)
        mask = torch.cat([query_mask, response_mask], dim=1)
        hidden = self._trunk(ids, mask)
        # hidden[:, Lq - 1 + t] is the state before response token t: it predicts that token and
        # is where the critic evaluates V(s_t). Only these T positions reach the LM head.
        h = hidden[:, Lq - 1: Lq - 1 + T]
        weight, softcap = output_head(self.model)
        targets = torch.where(response_mask.bool(), response_ids, torch.full_like(response_ids, IGNORE_INDEX))
        hs = h if temperature == 1.0 else h / temperature
        out: dict[str, Tensor] = {}
        if with_entropy and not entropy_grad:
            out["logprobs"], out["entropy"] = chunked_token_logprobs(
                hs, weight, targets, chunk_size=self.chunk_size, softcap=softcap, return_entropy=True)
        else:
            out["logprobs"] = chunked_token_logprobs(hs, weight, targets, chunk_size=self.chunk_size, softcap=softcap)
        if entropy_grad:
            from sumrl.rl.functional import entropy_from_logits

            m = response_mask.bool()
            logits = hs[m].to(weight.dtype) @ weight.t()
            if softcap:
                logits = softcap * torch.tanh(logits / softcap)
            ent = torch.zeros(response_ids.shape, dtype=torch.float32, device=h.device)
            out["entropy"] = ent.masked_scatter(m, entropy_from_logits(logits).float())
        if with_values:
            head = self.guide_value_head if critic == "guide" else self.value_head
            if head is None:
                raise RuntimeError(f"this module has no {critic} value head")
            if self.value_adapter:
                with active_adapter(self.model, VALUE_ADAPTER, self._adapter_params):
                    hv = self._trunk(ids, mask)[:, Lq - 1: Lq - 1 + T]
            else:
                hv = h
            out["values"] = head(hv.float())
        return out
