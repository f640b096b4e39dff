"""Encoder-decoder summarizers (T5, BART, PEGASUS, LED) behind the same interface as decoders.

The rest of sumrl sees the same things for both families: a prompt (token ids, left-padded in
batches), a response (right-padded), and per response position ``t`` a final hidden state
``h[:, t]`` from which ``h @ W_head^T`` are the logits of response token ``t``. What differs lives
here:

* **where the prompt goes**: into the encoder, never into the decoder; the decoder reads
  ``[decoder_start_token_id] + response[:-1]`` (teacher forcing), so ``h[:, t]`` predicts
  ``response[t]`` exactly as for a causal LM;
* **padding**: encoder inputs are re-padded to the *right* before every encoder pass (BART, LED and
  PEGASUS have absolute position embeddings: a left-padded row would put its first token at a
  position > 0; T5's relative positions are unaffected either way), so any batch width gives the
  same numbers -- sampling, the old/reference/training passes and SFT agree;
* **the head**: T5 with tied embeddings rescales the decoder output by ``d_model ** -0.5`` before
  the head (``config.scale_decoder_outputs`` in transformers 5); that factor is applied to ``h``
  here, so ``h @ W^T`` are the model's logits; BART-family ``final_logits_bias`` must be zero
  (checked in :func:`sumrl.models.logprobs.output_head`);
* **LED**: global attention on the first token of every input (the LED paper's setting for
  summarization), sliding-window attention elsewhere;
* **the encoder runs once per document**: rows of one group (consecutive identical prompts) share
  one encoder pass, expanded with ``index_select`` (exact; gradients flow back through the
  expansion into LoRA adapters on the encoder);
* **input limits**: LED 16,384 (``max_encoder_position_embeddings``), BART/PEGASUS
  ``max_position_embeddings`` (1,024), T5 ``n_positions`` (512, the length it was trained at; its
  relative positions accept more, so ``--max-input-tokens`` may raise it).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

# LoRA target modules per family (final module names; lm_head is never one: log-probs read its weight)
T5_TARGETS = ["q", "k", "v", "o", "wi", "wo", "wi_0", "wi_1"]
BART_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
# LED's encoder self-attention (Longformer) names its projections query/key/value(+_global) and output
LED_ENCODER_TARGETS = ["query", "key", "value", "query_global", "key_global", "value_global", "output"]


def _config(obj: Any) -> Any:
    cfg = getattr(obj, "config", obj)
    return cfg


def is_encoder_decoder(obj: Any) -> bool:
    """True for an encoder-decoder model, a peft model wrapping one, or its config."""
    return bool(getattr(_config(obj), "is_encoder_decoder", False))


def unwrap(model: Any) -> Any:
    get_base = getattr(model, "get_base_model", None)
    if callable(get_base) and type(model).__module__.startswith("peft"):
        return get_base()
    return model


def family(obj: Any) -> str:
    return str(getattr(_config(obj), "model_type", "") or "")


def input_limit(obj: Any) -> int:
    """Longest encoder input the model accepts (tokens): see the module docstring."""
    cfg = _config(obj)
    for attr in ("max_encoder_position_embeddings", "max_position_embeddings", "n_positions"):
        n = getattr(cfg, attr, None)
        if n:
            return int(n)
    return 512


def has_hard_input_limit(obj: Any) -> bool:
    """False for relative-position models (T5 family), whose ``n_positions`` is only the trained length."""
    cfg = _config(obj)
    return bool(getattr(cfg, "max_encoder_position_embeddings", None) or getattr(cfg, "max_position_embeddings", None))


def output_limit(obj: Any) -> int | None:
    """Longest decoder output (tokens), or None for relative-position decoders (T5)."""
    cfg = _config(obj)
    for attr in ("max_decoder_position_embeddings", "max_position_embeddings"):
        n = getattr(cfg, attr, None)
        if n:
            return int(n)
    return None


def check_lengths(model: Any, spec: str, *, n_input: int, input_flag: str, n_output: int | None = None,
                  output_flag: str = "") -> None:
    """One-line ConfigError when an encoder-decoder is asked for more input or output tokens than
    its position embeddings hold (a no-op for decoders and for T5's relative positions)."""
    from sumrl.errors import ConfigError

    if not is_encoder_decoder(model):
        return
    if has_hard_input_limit(model) and n_input > input_limit(model):
        raise ConfigError(f"{input_flag} {n_input} exceeds the {input_limit(model)} input tokens {spec} accepts "
                          f"(an encoder-decoder: this is the encoder's input)")
    out = output_limit(model)
    if n_output is not None and out is not None and n_output > out:
        raise ConfigError(f"{output_flag} {n_output} exceeds the {out} output tokens {spec}'s decoder accepts")


def task_prefix(config: Any) -> str:
    """The summarization prefix a checkpoint declares (T5: ``summarize: ``), or ''."""
    tsp = getattr(config, "task_specific_params", None) or {}
    return str((tsp.get("summarization") or {}).get("prefix") or "")


def default_target_modules(model: Any) -> list[str]:
    names = {n.split(".")[-1] for n, _ in unwrap(model).named_modules()}
    wanted = T5_TARGETS if any(n in names for n in ("wi", "wi_0")) else BART_TARGETS + LED_ENCODER_TARGETS
    return [n for n in wanted if n in names]


def decoder_start_id(model: Any) -> int:
    cfg = _config(unwrap(model))
    s = getattr(cfg, "decoder_start_token_id", None)
    if s is None:
        gc = getattr(unwrap(model), "generation_config", None)
        s = getattr(gc, "decoder_start_token_id", None)
    if s is None:
        s = getattr(cfg, "pad_token_id", None)
    if s is None:
        raise ValueError(f"{type(unwrap(model)).__name__}: no decoder_start_token_id in its config")
    return int(s)


def head_scale(model: Any) -> float:
    """The factor the model applies to decoder states before the LM head (T5 tied embeddings)."""
    m = unwrap(model)
    cfg = m.config
    scale = getattr(cfg, "scale_decoder_outputs", None)
    if scale is None:  # transformers < 5: T5 rescaled whenever the embeddings were tied
        scale = family(cfg) in ("t5", "mt5", "umt5", "longt5") and bool(getattr(cfg, "tie_word_embeddings", False))
    return float(getattr(cfg, "d_model", 1)) ** -0.5 if scale else 1.0


def right_pad(ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """The same rows with their real tokens moved to the left end (right padding), trimmed to the
    longest row."""
    lengths = mask.long().sum(dim=1)
    width = max(int(lengths.max()) if len(lengths) else 0, 1)
    L = ids.shape[1]
    # index of the k-th real token of each row; real tokens are contiguous in a left-padded row
    # but this also accepts right-padded or unpadded input (first real position = argmax of mask)
    start = torch.where(lengths > 0, mask.long().argmax(dim=1), torch.zeros_like(lengths))
    cols = start[:, None] + torch.arange(width, device=ids.device)[None, :]
    keep = torch.arange(width, device=ids.device)[None, :] < lengths[:, None]
    cols = torch.where(keep, cols, torch.zeros_like(cols)).clamp_(max=L - 1)
    # padding slots repeat a token of the row (a valid id; masked, so never attended to)
    return ids.gather(1, cols), keep.to(mask.dtype)


def encoder_kwargs(model: Any, mask: Tensor) -> dict[str, Tensor]:
    """Extra encoder inputs: LED's global attention on each row's first token."""
    if family(unwrap(model)) == "led":
        g = torch.zeros_like(mask)
        g[:, 0] = 1
        return {"global_attention_mask": g}
    return {}


def encode(model: Any, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """``(encoder states (B, L, H), encoder mask (B, L))`` of left- (or right-) padded prompts."""
    ids, mask = right_pad(ids, mask)
    enc = unwrap(model).get_encoder()
    out = enc(input_ids=ids, attention_mask=mask, return_dict=True, **encoder_kwargs(model, mask))
    return out.last_hidden_state, mask


def group_index(query_ids: Tensor, query_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(unique prompts, their masks, index)``: consecutive identical rows collapsed;
    ``unique[index]`` gives back the rows."""
    from sumrl.models.grouped import consecutive_groups

    pq, pm, sizes = consecutive_groups(query_ids, query_mask)
    index = torch.repeat_interleave(torch.arange(len(sizes), device=query_ids.device),
                                    torch.tensor(sizes, device=query_ids.device))
    return pq, pm, index


def split_prefix(query_ids: Tensor, query_mask: Tensor, prefix_len: Tensor) -> tuple[Tensor, Tensor, list[list[int]]]:
    """A guide roll-in (PPO++) puts its prefix at the end of the prompt: for a decoder it is state
    read after the prompt, for an encoder-decoder it belongs to the *decoder*. Returns the encoder
    part (left-padded again) and each row's decoder prefix."""
    from sumrl.models.grouped import left_pad

    enc, pre = [], []
    for ids, m, k in zip(query_ids.tolist(), query_mask.tolist(), prefix_len.tolist()):
        real = [t for t, keep in zip(ids, m) if keep]
        cut = len(real) - int(k)
        enc.append(real[:cut])
        pre.append(real[cut:])
    e_ids, e_mask = left_pad(enc, 0)  # pad value never read (masked)
    return e_ids.to(query_ids.device), e_mask.to(query_mask.device), pre


def decoder_hidden(model: Any, enc_states: Tensor, enc_mask: Tensor, response_ids: Tensor,
                   response_mask: Tensor, prefixes: Sequence[Sequence[int]] | None = None) -> Tensor:
    """(B, T, H) decoder states (head-scaled) teacher-forced on the response: ``h[:, t]`` predicts
    ``response_ids[:, t]`` from the encoder states, the row's decoder ``prefixes`` (a PPO++ roll-in;
    none by default) and ``response_ids[:, :t]``. The decoder reads
    ``[start] + prefix + response[:-1]`` right-padded, so its positions are those of generation."""
    B, T = response_ids.shape
    dev = response_ids.device
    start = torch.full((B, 1), decoder_start_id(model), dtype=response_ids.dtype, device=dev)
    if not prefixes or not any(len(p) for p in prefixes):
        dec_ids = torch.cat([start, response_ids[:, :-1]], dim=1)
        dec_mask = torch.cat([torch.ones_like(response_mask[:, :1]), response_mask[:, :-1]], dim=1)
        offsets = None
    else:
        P = max(len(p) for p in prefixes)
        dec_ids = torch.zeros((B, 1 + P + T - 1), dtype=response_ids.dtype, device=dev)
        dec_mask = torch.zeros((B, 1 + P + T - 1), dtype=response_mask.dtype, device=dev)
        for b, p in enumerate(prefixes):
            k = len(p)
            row = torch.cat([start[b], torch.tensor(list(p), dtype=response_ids.dtype, device=dev),
                             response_ids[b, :-1]])
            dec_ids[b, :row.numel()] = row
            dec_mask[b, :1 + k] = 1
            dec_mask[b, 1 + k:1 + k + T - 1] = response_mask[b, :-1]
        offsets = torch.tensor([len(p) for p in prefixes], device=dev)
    dec = unwrap(model).get_decoder()
    out = dec(input_ids=dec_ids, attention_mask=dec_mask, encoder_hidden_states=enc_states,
              encoder_attention_mask=enc_mask, use_cache=False, return_dict=True)
    h = out.last_hidden_state
    if offsets is not None:  # position k + t reads the last prefix token / response[t-1], predicts response[t]
        cols = offsets[:, None] + torch.arange(T, device=dev)[None, :]
        h = h.gather(1, cols[:, :, None].expand(-1, -1, h.shape[-1]))
    s = head_scale(model)
    return h * s if s != 1.0 else h


def response_hidden(model: Any, query_ids: Tensor, query_mask: Tensor, response_ids: Tensor, response_mask: Tensor,
                    *, share_encoder: bool = True, prefix_len: Tensor | None = None) -> Tensor:
    """(B, T, H): what :meth:`sumrl.rl.value.PolicyValueModule.response_hidden` returns for a causal
    LM, for an encoder-decoder. ``share_encoder``: one encoder pass per run of identical prompts.
    ``prefix_len`` (B,): trailing prompt tokens that are a roll-in prefix (decoder input)."""
    prefixes = None
    if prefix_len is not None and bool((prefix_len > 0).any()):
        query_ids, query_mask, prefixes = split_prefix(query_ids, query_mask, prefix_len)
    if share_encoder:
        pq, pm, index = group_index(query_ids, query_mask)
        states, emask = encode(model, pq, pm)
        if len(pq) < len(query_ids):
            states, emask = states.index_select(0, index), emask.index_select(0, index)
    else:
        states, emask = encode(model, query_ids, query_mask)
    return decoder_hidden(model, states, emask, response_ids, response_mask, prefixes)


def generate_rows(model: Any, prompts: Sequence[Sequence[int]], prefix_lens: Sequence[int], pad_id: int,
                  **kwargs: Any) -> list[list[int]]:
    """New tokens per row when some prompts end with a decoder prefix (PPO++ roll-in, a guide
    continuing a summary): rows without one are generated together (shared encoder), rows with one
    in batches of equal prefix length (the decoder input ``[start] + prefix`` needs no padding, so
    its positions are exactly those of an unbatched run)."""
    from sumrl.models.grouped import left_pad

    out: list[list[int] | None] = [None] * len(prompts)
    by_len: dict[int, list[int]] = {}
    for i, k in enumerate(prefix_lens):
        by_len.setdefault(int(k), []).append(i)
    dev = next(model.parameters()).device
    for k, rows in sorted(by_len.items()):
        enc = [list(prompts[i])[:len(prompts[i]) - k] for i in rows]
        ids, mask = left_pad(enc, pad_id)
        extra = {}
        if k:
            start = decoder_start_id(model)
            extra["decoder_input_ids"] = torch.tensor([[start, *list(prompts[i])[len(prompts[i]) - k:]] for i in rows],
                                                      dtype=torch.long, device=dev)
        new = generate(model, ids.to(dev), mask.to(dev), **extra, **kwargs)[:, k:]
        for r, i in enumerate(rows):
            out[i] = new[r].tolist()
    return out  # type: ignore[return-value]


def generate(model: Any, ids: Tensor, mask: Tensor, *, share_encoder: bool = True, **kwargs: Any) -> Tensor:
    """``model.generate`` on left-padded prompts; returns only the new tokens (B, n).

    The encoder runs once per run of identical consecutive prompts (a GRPO group) and its states
    are expanded to the group's rows, which is exactly what ``generate`` would compute per row."""
    from transformers.modeling_outputs import BaseModelOutput

    if share_encoder:
        pq, pm, index = group_index(ids, mask)
    else:
        pq, pm, index = ids, mask, torch.arange(ids.shape[0], device=ids.device)
    with torch.inference_mode():
        states, emask = encode(model, pq, pm)
        states, emask = states.index_select(0, index), emask.index_select(0, index)
        out = model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=states), attention_mask=emask,
                             **kwargs)
    return out[:, 1:]  # the decoder start token is not generated


def collate_seq2seq(seqs: Sequence[Any], *, pad_id: int) -> dict[str, Tensor]:
    """SFT batch of :class:`sumrl.training.data.TrainSequence` for an encoder-decoder: the prompt
    ``input_ids[:n_prompt]`` right-padded as the encoder's ``input_ids``/``attention_mask``, the
    target as ``labels`` (-100 on padding; the decoder reads ``start + labels[:-1]``)."""
    from sumrl.models.logprobs import IGNORE_INDEX

    n = len(seqs)
    Le = max(max(s.n_prompt for s in seqs), 1)
    Ld = max(max(len(s.input_ids) - s.n_prompt for s in seqs), 1)
    ids = torch.full((n, Le), pad_id, dtype=torch.long)
    mask = torch.zeros((n, Le), dtype=torch.long)
    labels = torch.full((n, Ld), IGNORE_INDEX, dtype=torch.long)
    for r, s in enumerate(seqs):
        p, t = s.input_ids[:s.n_prompt], s.input_ids[s.n_prompt:]
        ids[r, :len(p)] = torch.tensor(p, dtype=torch.long)
        mask[r, :len(p)] = 1
        labels[r, :len(t)] = torch.tensor(t, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
