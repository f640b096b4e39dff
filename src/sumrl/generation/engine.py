"""The rollout-engine seam: every policy sample of ``sumrl rl`` (training rollouts and the greedy
held-out evaluation) goes through one call,

    engine.generate(prompts, limits, sampling) -> token ids

so that a serving engine (vLLM, SGLang) can be put behind it without touching the trainer.
:class:`HFEngine` is today's engine: ``model.generate`` (:func:`sample`) or the
group sampler (:func:`sumrl.generation.sampler.sample_groups`: each prompt prefilled once per group).

What another engine must provide (docs/scale.md, "A serving engine"):

* ``generate`` returns, per prompt, the new token ids (at most ``limits[i]``; the caller cuts at
  the first stop token), drawn from ``softmax(logits / temperature)`` over the *whole* vocabulary
  (nucleus only when ``top_p < 1``; no repetition penalty, no top-k, no min-length: the trainer's
  log-probs assume exactly this distribution -- see ``neutral_generation_config``);
* the policy's current weights before each step's rollout (:meth:`sync_weights`, called by the
  trainer after every optimizer update; the HF engine samples from the trained module itself, so it
  has nothing to copy);
* if its numerics differ from the trainer's forward pass (another kernel, bf16/fp8 sampling), a
  log-prob mismatch correction (truncated importance sampling of the trainer's old log-probs
  against the engine's) -- the HF engine samples with the trainer's own weights and kernels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import torch

__all__ = ["Sampling", "RolloutEngine", "HFEngine", "sample", "neutral_generation_config"]


@dataclass(frozen=True)
class Sampling:
    """How to sample: ``temperature == 0`` is greedy; ``stop_ids`` end a row; ``pad_id`` pads."""

    temperature: float
    top_p: float
    stop_ids: tuple[int, ...]
    pad_id: int


class RolloutEngine(Protocol):
    def generate(self, prompts: Sequence[Sequence[int]], limits: Sequence[int], sampling: Sampling, *,
                 prefix_lens: Sequence[int] | None = None) -> list[list[int]]:
        """New token ids per prompt (row ``i`` at most ``limits[i]`` long). ``prefix_lens`` (PPO++
        only): trailing prompt tokens that are a summary prefix, which an encoder-decoder's decoder
        starts from instead of its encoder reading them."""
        ...

    def sync_weights(self, model: Any) -> None:
        """Make the engine sample from ``model``'s current weights."""
        ...


class HFEngine:
    """Hugging Face generation on the policy module itself (no weight copy to keep in sync).

    ``share_prompt``: runs of consecutive identical prompts (a GRPO group) are prefilled once and
    finished rows leave the batch (the group sampler); ``merge_lora``: sample with the LoRA weights
    merged in (restored bit for bit afterwards). Models the group sampler cannot run (sliding-window
    attention) take ``model.generate``."""

    def __init__(self, model: Any, *, share_prompt: bool = False, merge_lora: bool = False, prefill_chunk: int = 2048,
                 fsdp_root: Any = None, synced: bool = False):
        self.model = model
        # FSDP: the model is sharded; ``model`` sits inside the root unit ``fsdp_root``, whose own
        # parameters (embeddings, head) are gathered around the call, and processes take the same
        # number of decoding steps (``generate(synced_gpus=True)``). ``synced`` (DeepSpeed ZeRO-3): the
        # engine's hooks gather each layer around its call (a collective), so the same synced_gpus rule
        self.synced = synced or fsdp_root is not None
        self.share_prompt = share_prompt and not self.synced
        self.merge_lora = merge_lora and not self.synced
        self.prefill_chunk = prefill_chunk
        self.fsdp_root = fsdp_root

    def sync_weights(self, model: Any) -> None:
        self.model = model

    def generate(self, prompts: Sequence[Sequence[int]], limits: Sequence[int], sampling: Sampling, *,
                 prefix_lens: Sequence[int] | None = None) -> list[list[int]]:
        from sumrl.models.seq2seq import is_encoder_decoder

        if self.synced:
            from sumrl.models.sharding import full_weights

            with full_weights(self.fsdp_root, self.fsdp_root is not None, root_only=True):
                return sample(self.model, prompts, max_new_tokens=list(limits), temperature=sampling.temperature,
                              top_p=sampling.top_p, stop_ids=list(sampling.stop_ids), pad_id=sampling.pad_id,
                              prefix_lens=prefix_lens, synced_gpus=True)
        if not prompts:
            return []
        # encoder-decoders share the encoder pass of a group inside sample (seq2seq.generate)
        if self.share_prompt and not is_encoder_decoder(self.model):
            from sumrl.generation.sampler import consecutive_prompt_groups, sample_groups

            uniq, sizes = consecutive_prompt_groups(prompts)
            try:
                return sample_groups(self.model, uniq, group_size=sizes, max_new_tokens=list(limits),
                                     temperature=sampling.temperature, top_p=sampling.top_p,
                                     stop_ids=list(sampling.stop_ids), pad_id=sampling.pad_id,
                                     prefill_chunk=self.prefill_chunk, merge_lora=self.merge_lora)
            except ValueError as e:  # sliding-window models (Gemma 3) take the plain path
                if "sliding" not in str(e):
                    raise
        return sample(self.model, prompts, max_new_tokens=list(limits), temperature=sampling.temperature,
                      top_p=sampling.top_p, stop_ids=list(sampling.stop_ids), pad_id=sampling.pad_id,
                      prefix_lens=prefix_lens)


def neutral_generation_config(*, max_new_tokens: int, temperature: float, top_p: float, stop_ids: Sequence[int],
                              pad_id: int):
    """A fresh ``GenerationConfig`` that samples from exactly the distribution whose log-probs the
    trainer computes: ``softmax(logits / temperature)`` over the whole vocabulary (or greedy).

    It is passed whole to ``generate`` so that nothing in a checkpoint's own ``generation_config``
    (``repetition_penalty``, ``no_repeat_ngram_size``, ``top_k``, ``min_new_tokens``, bad words...)
    can reshape the sampling distribution behind the trainer's back."""
    from transformers import GenerationConfig

    kw: dict[str, Any] = dict(max_new_tokens=int(max_new_tokens), pad_token_id=int(pad_id),
                              eos_token_id=[int(s) for s in stop_ids], use_cache=True, repetition_penalty=1.0,
                              no_repeat_ngram_size=0, min_new_tokens=0, num_beams=1)
    if temperature > 0:
        kw.update(do_sample=True, temperature=float(temperature), top_p=float(top_p), top_k=0)
    else:
        kw.update(do_sample=False)
    gc = GenerationConfig(**kw)
    if temperature <= 0:  # greedy: unset the sampling knobs so transformers does not warn about them
        gc.temperature, gc.top_p, gc.top_k = None, None, None
    return gc


def sample(model: Any, prompts: Sequence[Sequence[int]], *, max_new_tokens: int | Sequence[int], temperature: float,
           top_p: float, stop_ids: Sequence[int], pad_id: int,
           prefix_lens: Sequence[int] | None = None, synced_gpus: bool = False) -> list[list[int]]:
    """Sample one continuation per prompt; returns the new token ids of each row, cut to the row's
    own ``max_new_tokens`` (a list gives per-row limits; one ``generate`` call uses the largest).
    ``temperature == 0`` means greedy. Rows that stopped early are right-padded by ``generate``;
    callers cut at the first end token (:func:`truncate_at_eos`). ``prefix_lens``: how many trailing
    tokens of each prompt are a summary prefix (a guide roll-in); a decoder reads them as prompt, an
    encoder-decoder's decoder starts from them (:func:`sumrl.models.seq2seq.generate_rows`).
    ``synced_gpus``: the model is sharded over processes (FSDP): every process keeps stepping until
    all have finished (transformers' ``generate(synced_gpus=True)``)."""
    if not prompts:
        return []
    limits = [int(max_new_tokens)] * len(prompts) if isinstance(max_new_tokens, int) else [int(x) for x in max_new_tokens]
    from sumrl.models.grouped import left_pad

    ids, mask = left_pad(prompts, pad_id)
    device = next(model.parameters()).device
    gc = neutral_generation_config(max_new_tokens=max(limits), temperature=temperature, top_p=top_p,
                                   stop_ids=stop_ids, pad_id=pad_id)
    was_training = model.training
    model.eval()
    try:
        from sumrl.generation.summarize import generate_new_tokens
        from sumrl.models.seq2seq import generate_rows, is_encoder_decoder

        if prefix_lens is not None and any(prefix_lens) and is_encoder_decoder(model):
            new = generate_rows(model, prompts, prefix_lens, pad_id, generation_config=gc)
        else:
            # no inference tensors under FSDP: the gathered parameters are reused by the training passes
            with torch.no_grad() if synced_gpus else torch.inference_mode():
                new = generate_new_tokens(model, ids.to(device), mask.to(device), generation_config=gc,
                                          **({"synced_gpus": True} if synced_gpus else {})).cpu().tolist()
    finally:
        model.train(was_training)
    return [row[:lim] for row, lim in zip(new, limits)]
