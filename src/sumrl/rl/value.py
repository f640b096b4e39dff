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


def is_value_adapter_param(name: str) -> bool:
    """A LoRA weight of the ``"value"`` adapter (``...lora_A.value.weight``). Not just ``".value."``
    in the name: LED's Longformer attention has a projection *module* called ``value``, whose
    policy-adapter weights are ``...value.lora_A.default.weight``."""
    return f".lora_A.{VALUE_ADAPTER}." in name or f".lora_B.{VALUE_ADAPTER}." in name


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
    them (``(v - mean) / std``, token statistics for a ``per_token`` reward), so the initial values
    are in reward units. :func:`init_value_adapter_from_rm` initialises the whole critic instead. Returns a note saying
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
    mean, std = rm.stats()  # the statistics the reward itself uses (per-token ones with per_token)
    with torch.no_grad():
        head.linear.weight.copy_(src.weight.detach().float() / std)
        head.linear.bias.copy_((src.bias.detach().float() - mean) / std)
    return f"value head initialised from the reward model {rm.path}"


def find_rm_reward(reward: Any) -> Any:
    rms = [r for r in getattr(reward, "rewards", [reward]) if hasattr(r, "rm") and hasattr(r.rm, "model")]
    return rms[0] if rms else None


def _base_params(model: Any) -> dict[str, Tensor]:
    """The frozen base weights of a peft model by a name that ignores where LoRA wraps a layer
    (``...q_proj.base_layer.weight`` -> ``...q_proj.weight``) and the peft prefix."""
    out = {}
    for n, p in model.named_parameters():
        if "lora_" in n:
            continue
        n = n.replace(".base_layer.", ".")
        out[n[len("base_model.model."):] if n.startswith("base_model.model.") else n] = p
    return out


def init_value_adapter_from_rm(model: Any, head: ValueHead, reward: Any, *, strict: bool = False) -> str:
    """Initialise the whole critic of ``--value-model adapter`` from a policy-backbone reward model
    (N+ detail: the value network starts as the reward model): the RM's LoRA adapter (its config
    -- rank, alpha, target modules, layers -- and its weights) becomes adapter ``"value"`` of the
    policy ``model`` (a peft model; an existing ``"value"`` adapter is replaced and left trainable),
    and the RM's score head becomes ``head``, normalised like the reward (``(v - mean) / std`` with
    the statistics the ``rm`` reward uses: token statistics with ``per_token``, else sequence ones).

    With the same base weights and the same input tokens the critic then outputs exactly the RM's
    normalised token values, shifted by one position: ``V(s_{t+1})`` (the state after response token
    ``t``) = the RM's value at token ``t``; ``V(s_0)`` = its value at the last prompt token. The
    policy's prompt is not the RM's ``Document: ... Summary:`` input, so in RL this is an
    initialisation, not a copy of the reward.

    Call it after the ``"value"`` adapter is added and before :class:`PolicyValueModule` is built
    (which collects the LoRA parameters). Refuses (``ConfigError``, one line) when there is no
    ``rm`` reward, when the RM is not a policy-backbone one, or when its base model has other
    parameters or shapes than the policy's. Base weights that differ (e.g. the policy is an SFT
    model merged into the base) are allowed and said in the returned note -- the adapter was then
    learnt on another base, an approximation -- unless ``strict``. Returns a one-line note.
    """
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    from sumrl.errors import ConfigError

    rm = find_rm_reward(reward)
    if rm is None:
        raise ConfigError("value_init rm: the reward has no 'rm' entry (a reward-model folder) to initialise the critic from")
    rmm = rm.rm.model
    if getattr(rmm, "backbone", None) != "policy":
        raise ConfigError(f"value_init rm: the reward model {rm.path} has the {getattr(rmm, 'backbone', '?')} backbone; "
                          f"only a policy-backbone RM (sumrl rm --backbone policy) has a LoRA to become the value adapter")
    if not hasattr(model, "peft_config"):
        raise ConfigError("value_init rm needs the policy as a LoRA (peft) model: use --lora with --value-model adapter")
    mine, theirs = _base_params(model), _base_params(rmm.lm)
    if set(mine) != set(theirs):
        diff = sorted(set(mine) ^ set(theirs))[0]
        raise ConfigError(f"value_init rm: the reward model {rm.path} is not on the policy's base model (parameter "
                          f"{diff} is in one only)")
    bad = [n for n in mine if mine[n].shape != theirs[n].shape]
    if bad:
        raise ConfigError(f"value_init rm: the reward model {rm.path} is not on the policy's base model ({bad[0]}: "
                          f"{tuple(theirs[bad[0]].shape)} vs {tuple(mine[bad[0]].shape)})")
    if rmm.head.weight.shape != head.linear.weight.shape:
        raise ConfigError(f"value_init rm: head shape {tuple(rmm.head.weight.shape)} vs {tuple(head.linear.weight.shape)}")
    same = all(torch.equal(mine[n].detach().float().cpu(), theirs[n].detach().float().cpu()) for n in mine)
    if strict and not same:
        raise ConfigError(f"value_init rm: the reward model {rm.path} has the policy's architecture but other base "
                          f"weights (e.g. the policy is an SFT model merged into the base)")
    rm_cfg = rmm.lm.peft_config["default"]
    if VALUE_ADAPTER in model.peft_config:
        model.delete_adapter(VALUE_ADAPTER)
    model.add_adapter(VALUE_ADAPTER, rm_cfg)  # the RM's rank, alpha, target modules and layers
    result = set_peft_model_state_dict(model, get_peft_model_state_dict(rmm.lm, adapter_name="default"),
                                       adapter_name=VALUE_ADAPTER)
    missing = [k for k in getattr(result, "missing_keys", []) if is_value_adapter_param(k)]
    if missing:
        raise ConfigError(f"value_init rm: the reward model's adapter does not fit the value adapter (e.g. {missing[0]})")
    for n, p in model.named_parameters():
        if "lora_" in n:
            p.requires_grad_(True)
    mean, std = rm.stats() if hasattr(rm, "stats") else (0.0, 1.0)
    with torch.no_grad():
        head.linear.weight.copy_(rmm.head.weight.detach().float() / std)
        head.linear.bias.copy_((rmm.head.bias.detach().float() - mean) / std)
    how = "same base weights" if same else "same architecture, other base weights: an approximate start"
    return f"critic (value adapter + head) initialised from the reward model {rm.path} ({how})"


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
                 chunk_size: int = 512, bf16: bool = False, guide_value_head: ValueHead | None = None,
                 share_prompt: bool = False, checkpointing: Any = None, checkpoint_tokens: int = 2048,
                 prefill_chunk: int | None = 1024):
        super().__init__()
        # activation checkpointing per pass under gradient: True / False / "auto" (on above
        # checkpoint_tokens positions, sumrl.models.grouped.checkpointing_wanted); None = the model's own
        self.checkpointing = checkpointing
        self.checkpoint_tokens = int(checkpoint_tokens)
        self.prefill_chunk = prefill_chunk  # no-grad passes: the prompt this many tokens at a time
        self.model = model
        from sumrl.models.sharding import no_split_modules

        self._no_split_modules = no_split_modules(model)  # FSDP: each decoder layer its own shard unit
        self.value_head = value_head
        # D2LOLS's separate guide critic (TRIL create_guide_critic): a second head on the same trunk
        self.guide_value_head = guide_value_head
        self.value_adapter = bool(value_adapter)
        self.chunk_size = int(chunk_size)
        self.bf16 = bool(bf16)
        self.share_prompt = bool(share_prompt)
        from sumrl.models.seq2seq import is_encoder_decoder

        self._seq2seq = is_encoder_decoder(model)
        self._adapter_params: list[Tensor] = []
        if self.value_adapter:
            self._adapter_params = [p for n, p in model.named_parameters() if "lora_" in n]

    def _trunk(self, ids: Tensor, mask: Tensor) -> Tensor:
        ctx = torch.autocast(ids.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()
        with ctx:
            return model_hidden_states(self.model, ids, mask)

    def response_hidden(self, query_ids: Tensor, query_mask: Tensor, response_ids: Tensor,
                        response_mask: Tensor, prefix_len: Tensor | None = None) -> Tensor:
        """(B, T, H) final hidden states at ``Lq - 1 .. Lq - 2 + T``: ``h[:, t]`` predicts response
        token ``t`` and is where the critic evaluates ``V(s_t)``. Rows with the same prompt in a row
        (a GRPO group) share one pass over it (:func:`sumrl.models.grouped.grouped_response_hidden`,
        exact) when ``share_prompt``; otherwise, or for models with sliding-window layers shorter than
        the sequence, the plain pass over prompt + response. For an encoder-decoder the prompt is
        encoded once per group and the decoder reads the response
        (:func:`sumrl.models.seq2seq.response_hidden`); ``prefix_len`` says which trailing prompt
        tokens are a roll-in prefix, which an encoder-decoder's decoder reads (a decoder reads the
        prompt as it is, so ignores it)."""
        if self.checkpointing is None or not torch.is_grad_enabled():
            return self._response_hidden(query_ids, query_mask, response_ids, response_mask, prefix_len)
        from sumrl.models.grouped import activation_checkpointing, checkpointing_wanted, grad_tokens

        tokens = grad_tokens(query_ids, query_mask, response_mask, shared=self.share_prompt)
        # with a value adapter the critic's pass runs under the other adapter, but backward (after both
        # passes) replays every checkpointed layer: each replay must run under the adapter its forward had
        replay = self._replay_under_forward_adapter if self.value_adapter else None
        with activation_checkpointing(self.model, checkpointing_wanted(self.checkpointing, tokens,
                                                                       self.checkpoint_tokens), context_fn=replay):
            return self._response_hidden(query_ids, query_mask, response_ids, response_mask, prefix_len)

    def _replay_under_forward_adapter(self) -> tuple[Any, Any]:
        """torch.utils.checkpoint ``context_fn``: called at a layer's forward; its replay in backward
        runs under the adapter active now (found by the experiment: a rank-8 critic adapter replayed
        under the rank-16 policy adapter crashed; with equal ranks it would train silently wrong)."""
        return nullcontext(), active_adapter(self.model, self.model.active_adapter, self._adapter_params)

    def _response_hidden(self, query_ids: Tensor, query_mask: Tensor, response_ids: Tensor,
                         response_mask: Tensor, prefix_len: Tensor | None = None) -> Tensor:
        Lq, T = query_ids.shape[1], response_ids.shape[1]
        if self._seq2seq:  # the prompt is the encoder's input, run once per group (exact)
            from sumrl.models.seq2seq import response_hidden

            ctx = torch.autocast(query_ids.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()
            with ctx:
                return response_hidden(self.model, query_ids, query_mask, response_ids, response_mask,
                                       prefix_len=prefix_len)
        if self.share_prompt:
            from sumrl.models.grouped import consecutive_groups, grouped_response_hidden

            pq, pm, sizes = consecutive_groups(query_ids, query_mask)
            if len(sizes) < query_ids.shape[0]:
                ctx = torch.autocast(query_ids.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()
                try:
                    with ctx:
                        return grouped_response_hidden(self.model, pq, pm, response_ids, response_mask,
                                                       group_sizes=sizes,
                                                       prefill_chunk=None if torch.is_grad_enabled()
                                                       else self.prefill_chunk)
                except ValueError as e:
                    if "sliding-window" not in str(e):
                        raise
        ids = torch.cat([query_ids, response_ids], dim=1)
        mask = torch.cat([query_mask, response_mask], dim=1)
        return self._trunk(ids, mask)[:, Lq - 1: Lq - 1 + T]

    def forward(self, query_ids: Tensor, query_mask: Tensor, response_ids: Tensor, response_mask: Tensor, *,
                temperature: float = 1.0, with_values: bool = False, with_entropy: bool = False,
                entropy_grad: bool = False, critic: str = "policy",
                prefix_len: Tensor | None = None) -> dict[str, Tensor]:
        # h[:, t] is the state before response token t: it predicts that token and is where the
        # critic evaluates V(s_t). Only these T positions reach the LM head.
        h = self.response_hidden(query_ids, query_mask, response_ids, response_mask, prefix_len)
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
                    hv = self.response_hidden(query_ids, query_mask, response_ids, response_mask, prefix_len)
            else:
                hv = h
            out["values"] = head(hv.float())
        return out
