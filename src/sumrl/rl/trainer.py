"""The RL loop (``sumrl rl``): PPO with a critic and per-token rewards, GRPO / RLOO, and the guided
algorithms PPO++ / AggreVaTeD / D2LOLS, on one base model with Accelerate.

One outer step, in the order of the code below:

1. **Generate**: pick ``batch_size`` prompts (seeded permutation: the data position is a function
   of the step), sample ``samples_per_prompt`` summaries each with temperature -- or use the
   reference summaries for this batch (``reference_trajectory_ratio``), or let the guide roll in /
   roll out (:mod:`sumrl.rl.guided`);
2. **Truncate** each response at its first end token;
3. **Penalise** responses with no end token (``no_eos_penalty``);
4. **Score** with the configured rewards (sequence-level and per-token);
5. **Forward** (no grad): old log-probs, entropy and values of the policy, reference log-probs
   with the adapters off; then **per-token rewards** with the KL penalty;
6. **Advantages**: GAE (+ whitening) for the critic algorithms, group baselines for GRPO / RLOO;
7. **PPO epochs** over mini-batches (gradient accumulation over micro-batches with the exact
   token-mean normaliser), clipped policy loss, clipped value loss, optional KL / entropy terms;
8. **Log** namespaced metrics, sample tables, checkpoint.

Safety: a NaN/inf loss or gradient stops the run before the optimizer step; ``objective/kl`` above
``max_kl`` stops it before the update. Either raises :class:`~sumrl.errors.TrainingDiverged` (one
line from the CLI). Checkpoints are written only after the *next* rollout has confirmed that the
policy they hold has a finite, bounded KL (the final one at the end of the run), so the last
checkpoint on disk is always a good one.

Off-policy note: reference-summary trajectories are not samples of the policy; their "old"
log-probs are the current policy's log-probs, so the PPO ratio starts at 1 and the update is the
naive on-policy one (as in the last-mile paper), not an importance-corrected off-policy update.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from sumrl.errors import ConfigError, SumrlError, TrainingDiverged
from sumrl.rl.config import GROUP_ALGOS, GUIDED_ALGOS, RESUME_MUTABLE, RLConfig
from sumrl.training.checkpoint import clear_previous_run, read_checkpoint_state, resume_mismatches, resume_point
from sumrl.utils.console import get_logger
from sumrl.utils.seeds import MINIBATCH, REFERENCE_ORDER, ROLLOUT, derive_seed

log = get_logger(__name__)

CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "rl_config.json"
_RUN_FILES = ("metrics.jsonl", "metrics.csv", "samples.jsonl", CONFIG_FILE)

StepCallback = Callable[[int, dict], None]

__all__ = ["RLConfig", "train", "CHECKPOINT_DIR", "CONFIG_FILE", "build_policy"]


# ----------------------------------------------------------------------------------------- model
@dataclasses.dataclass
class Policy:
    model: Any  # peft model (LoRA) or plain model (full fine-tuning)
    tokenizer: Any
    base_spec: str | None  # what the saved adapter's base is (None: a full model is saved)
    merged_from: str | None  # the SFT adapter merged into the weights, if any
    ref_model: Any | None  # frozen reference copy (full fine-tuning only)


def _load_merged(spec: str, dropout_off: bool, load_in_4bit: bool = False) -> tuple[Any, Any, Any]:
    """``(model, tokenizer, resolved)``; an adapter folder is merged into its base so that the
    weights *are* the starting policy (then adapters-off = that policy, not the bare base)."""
    from sumrl.models.loading import load_model, resolve
    from sumrl.models.lora import disable_dropout

    r = resolve(spec)
    if load_in_4bit and r.kind == "adapter":
        raise ConfigError(f"--load-in-4bit with the adapter {spec} as --policy: RL merges the adapter into its base, "
                          f"which a 4-bit base would requantise; start from the base model or train without it")
    # explicit: an SFT adapter trained on a 4-bit base is merged into its full-precision base here
    model, tok = load_model(spec, dtype="float32", load_in_4bit=load_in_4bit)
    if r.kind == "adapter":
        model = model.merge_and_unload()
    if dropout_off:
        disable_dropout(model)
    return model, tok, r


def build_policy(cfg: RLConfig) -> Policy:
    from sumrl.models.lora import add_lora

    if any(m.split(".")[-1] == "lm_head" for m in cfg.lora_target_modules):
        raise ConfigError("--lora-target-modules must not include lm_head (log-probs read the head's weight)")
    if cfg.value_model == "adapter" and not cfg.lora:
        raise ConfigError("--value-model adapter needs --lora (the value adapter sits on the frozen base)")
    model, tok, r = _load_merged(cfg.policy, cfg.dropout_off, cfg.load_in_4bit)
    merged_from = cfg.policy if r.kind == "adapter" else None
    if r.kind == "adapter":
        base_spec = None  # SFT weights are merged in: the RL adapter is saved stacked on the SFT adapter
    elif r.kind in ("hf_dir", "gguf"):
        base_spec = str(Path(cfg.policy).resolve())  # must resolve from wherever OUT is loaded
    else:
        base_spec = cfg.policy
    ref_model = None
    if cfg.lora:
        model = add_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=0.0,
                         target_modules=cfg.lora_target_modules or None)
        if cfg.value_model == "adapter":
            from sumrl.rl.value import VALUE_ADAPTER

            model.add_adapter(VALUE_ADAPTER, model.peft_config["default"])
            for n, p in model.named_parameters():
                if "lora_" in n:
                    p.requires_grad_(True)
    else:
        for p in model.parameters():
            p.requires_grad_(True)
        ref_model, _, _ = _load_merged(cfg.policy, cfg.dropout_off)
        ref_model.eval()
        for p in ref_model.parameters():
            p.requires_grad_(False)
    if cfg.gradient_checkpointing is True:  # "auto" is decided per pass by PolicyValueModule
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return Policy(model=model, tokenizer=tok, base_spec=base_spec, merged_from=merged_from, ref_model=ref_model)


# ------------------------------------------------------------------------------------ output dir
def _resume_mismatches(saved: dict, cfg: RLConfig) -> list[str]:
    mutable = set(RESUME_MUTABLE)
    if cfg.min_lr_ratio != 1.0 or saved.get("min_lr_ratio", 1.0) != 1.0:
        mutable.discard("steps")  # a decaying schedule depends on the run length
    return resume_mismatches(saved, cfg, mutable)


def _fields(cfg: RLConfig):
    from sumrl.data import FieldMap

    return FieldMap(id=cfg.id_field, document=cfg.document_field, summary=cfg.summary_field, query=cfg.query_field)


def _policy_backbone_rm(reward: Any) -> bool:
    """Whether the reward has an ``rm`` entry whose model is a policy-backbone (LoRA) reward model."""
    from sumrl.rl.value import find_rm_reward

    rm = find_rm_reward(reward)
    return rm is not None and getattr(getattr(getattr(rm, "rm", None), "model", None), "backbone", None) == "policy"


def critic_split(params: list[tuple[str, Any]]) -> dict[str, list]:
    """Trainable parameters by owner: the critic's (value heads, the value adapter's LoRA weights)
    and the policy's (everything else, e.g. the policy LoRA; with the shared-trunk head critic the
    trunk's LoRA gets both losses' gradients and counts as the policy's)."""
    from sumrl.rl.value import is_value_adapter_param

    def is_critic(n: str) -> bool:
        return (n.startswith(("value_head.", "guide_value_head.")) or ".value_head." in n
                or is_value_adapter_param(n))

    return {"policy": [p for n, p in params if not is_critic(n)], "critic": [p for n, p in params if is_critic(n)]}


def _finite(metrics: dict) -> dict:
    # explained variance is NaN when all returns are equal: leave it out rather than write NaN
    return {k: v for k, v in metrics.items() if not isinstance(v, float) or math.isfinite(v)}


# ---------------------------------------------------------------------------------- the trainer
def reference_lengths(tokenizer: Any, examples: list) -> list[int]:
    """Policy-token length of each example's (first) reference, without the end token."""
    return [len(tokenizer(ex.reference.strip(), add_special_tokens=False)["input_ids"]) if ex.references else 0
            for ex in examples]


def summary_cap(lengths: list[int], quantile: float | None, fixed: int) -> int:
    """The output cap: ``fixed``, or the ``quantile`` of the reference lengths (nearest rank, rounded
    up) plus one for the end token."""
    if quantile is None or not lengths:
        return fixed
    ordered = sorted(lengths)
    rank = max(math.ceil(quantile * len(ordered)) - 1, 0)
    return ordered[rank] + 1


class RLTrainer:
    """Models and the model-bound stages (4: forward passes, 6: update) of one RL run; the loop
    itself is :func:`train`."""

    def __init__(self, cfg: RLConfig):
        import torch

        from sumrl.generation.summarize import eos_ids
        from sumrl.models.logprobs import output_head
        from sumrl.rewards.registry import build_reward
        from sumrl.rl.guided import make_rollout_plan
        from sumrl.rl.value import (PolicyValueModule, ValueHead, hidden_size, init_value_adapter_from_rm,
                                    init_value_head_from_rm)

        from sumrl.training.parallel import (accelerator_kwargs, check_deepspeed, is_deepspeed, is_fsdp, is_zero3,
                                             make_accelerator, whole_model_construction)

        self.cfg = cfg
        # data-parallel under accelerate launch / torchrun (sumrl.rl.distributed); on CPU, Accelerate
        # only joins the (gloo) process group when told it runs on the CPU
        self.accelerator = make_accelerator(**accelerator_kwargs(find_unused=cfg.algo == "d2lols"))
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        # FSDP2 (recipes/accelerate/fsdp2.yaml): LoRA (the reference = adapters off) or full weights (the
        # reference = a frozen copy sharded like the policy), the head critic, the unguided algorithms
        self.fsdp = is_fsdp(self.accelerator)
        if self.fsdp and (cfg.algo in GUIDED_ALGOS or cfg.value_model == "adapter"):
            raise ConfigError("sumrl rl under FSDP needs --value-model head and an unguided algorithm (ppo, grpo, "
                              "rloo): the guide and the value adapter are not sharded; see docs/scale.md")
        # DeepSpeed ZeRO-2/3 (recipes/accelerate/deepspeed_zero2.yaml, deepspeed_zero3.yaml): the engine driven step by step
        # (sumrl.training.parallel, "DeepSpeed"); LoRA or full weights, PPO (value head or adapter), GRPO, RLOO;
        # policy and critic clipped separately by sumrl on the partitioned gradients (the engine's clipping off)
        self.ds = is_deepspeed(self.accelerator)
        # ZeRO-3 (recipes/accelerate/deepspeed_zero3.yaml): parameters partitioned too; every forward gathers them
        # layer by layer (a collective), so every process makes the same calls: the no-grad passes in lockstep, the
        # shared-prompt passes and the group sampler off, generation with synced_gpus, as under FSDP2
        self.z3 = is_zero3(self.accelerator)
        if self.ds:
            check_deepspeed(self.accelerator, "rl")
            if cfg.algo in GUIDED_ALGOS or cfg.target_coef > 0:
                raise ConfigError("sumrl rl under DeepSpeed runs --algo ppo, grpo and rloo only: the guided algorithms "
                                  "and --target-coef are not tested there; use recipes/accelerate/ddp.yaml for them -- "
                                  "see docs/scale.md")
        # FSDP2 / ZeRO-3: every call of a layer is a collective (see above)
        self.sharded = self.fsdp or self.z3
        from sumrl.models.precision import precision_line, resolve_bf16

        self.use_bf16, why = resolve_bf16(cfg.bf16, self.accelerator.device)
        if self.accelerator.is_main_process:
            log.info(precision_line("rl", self.use_bf16, why))
        from sumrl.utils.memory import cap_heap_retention

        cap_heap_retention()  # long prompts' freed activations go back to the system (utils/memory.py)
        # ZeRO-3: built whole as in one process -- the policy is partitioned by prepare; the reward models stay whole
        # on every process (never inside deepspeed.zero.Init, which would partition them with no engine to gather)
        with whole_model_construction(self.accelerator):
            self.reward = build_reward(cfg.reward)
            self.policy = build_policy(cfg)
        from sumrl.models.seq2seq import check_lengths

        check_lengths(self.policy.model, cfg.policy, n_input=cfg.max_prompt_tokens, input_flag="--max-prompt-tokens",
                      n_output=cfg.max_new_tokens, output_flag="--max-new-tokens")
        tok = self.policy.tokenizer
        self.tok = tok
        self.stop_ids = eos_ids(self.policy.model, tok)
        if tok.pad_token_id is None or tok.pad_token_id in self.stop_ids:
            raise SumrlError("the policy tokenizer's pad token must differ from its end token(s)")
        self.pad_id, self.eos_id = int(tok.pad_token_id), int(tok.eos_token_id)
        _, softcap = output_head(self.policy.model)
        self.temperature = cfg.temperature if cfg.logprob_temperature else 1.0
        if softcap and self.temperature != 1.0:
            raise ConfigError("this model soft-caps its logits (Gemma): log-probs at a sampling temperature != 1 "
                              "are not supported; use --temperature 1 or --no-logprob-temperature")
        value_head = guide_head = None
        self.rm_note = None
        if cfg.uses_critic:
            value_head = ValueHead(hidden_size(self.policy.model))
            if cfg.value_init_from_rm and cfg.value_model == "adapter" and _policy_backbone_rm(self.reward):
                # the whole critic starts as the reward model (N+; the last-mile paper's value model is
                # the policy's base + a LoRA + a scalar head, like its RM): adapter and head
                self.rm_note = init_value_adapter_from_rm(self.policy.model, value_head, self.reward)
            elif cfg.value_init_from_rm:
                self.rm_note = init_value_head_from_rm(value_head, self.reward)
            if cfg.algo == "d2lols":
                guide_head = ValueHead(hidden_size(self.policy.model))
        # Under FSDP the shared-prompt passes are off: they call each sharded decoder layer a data-dependent
        # number of times (prompt chunks, the T == 1 shortcut, the plain fallback), while every call of a
        # shard unit is an all-gather all processes must make in the same order (docs/scale.md)
        module = PolicyValueModule(self.policy.model, value_head, value_adapter=cfg.value_model == "adapter",
                                   chunk_size=cfg.logprob_chunk_size, bf16=self.use_bf16, guide_value_head=guide_head,
                                   share_prompt=cfg.share_prompt and not self.sharded,
                                   checkpointing=cfg.gradient_checkpointing,
                                   checkpoint_tokens=cfg.checkpoint_tokens, prefill_chunk=cfg.prefill_chunk)
        # under FSDP / DeepSpeed the module is prepared in train(), together with its optimizer (DeepSpeed:
        # the engine wraps this very module, so self.raw stays it)
        self.module = module if self.fsdp or self.ds else self.accelerator.prepare(module)
        self.raw = self.accelerator.unwrap_model(self.module)
        self.device = self.accelerator.device
        self.ref_module = None
        if self.policy.ref_model is not None:
            self.ref_module = PolicyValueModule(self.policy.ref_model, chunk_size=cfg.logprob_chunk_size,
                                                bf16=self.use_bf16, share_prompt=cfg.share_prompt and not self.sharded,
                                                prefill_chunk=cfg.prefill_chunk).to(self.device)
            if self.z3:
                # ZeRO-3: the frozen reference partitioned like the policy, in an inference engine of its own (no
                # optimizer; TRL's prepare_deepspeed): each process holds 1/N of it, every forward gathers
                from sumrl.training.parallel import deepspeed_inference_engine

                self.ref_module = deepspeed_inference_engine(self.accelerator, self.ref_module)
            elif self.fsdp:
                # the frozen reference copy sharded like the policy (Accelerate's own FSDP2 preparation, the
                # same plugin settings; no optimizer): each process holds 1/N of it, every forward gathers
                from accelerate.utils.fsdp_utils import fsdp2_prepare_model

                self.ref_module = fsdp2_prepare_model(self.accelerator, self.ref_module)
        self.guide = None
        if cfg.algo in GUIDED_ALGOS:
            from sumrl.rl.guided import Guide

            self.guide = Guide.load(cfg.guide, max_prompt_tokens=cfg.max_prompt_tokens, instruction=cfg.instruction,
                                    temperature=cfg.guide_temperature)
            self.guide.model.to(self.device)
        self.plan = make_rollout_plan(cfg)
        # the one seam of policy generation (sumrl.generation.engine): rollouts and held-out greedy summaries
        from sumrl.generation.engine import HFEngine

        root = self.raw if self.fsdp else None
        self.engine = HFEngine(self.raw.model, share_prompt=cfg.share_prompt,
                               merge_lora=cfg.share_prompt and cfg.merge_lora_for_generation and cfg.lora
                               and not cfg.load_in_4bit
                               and cfg.value_model == "head", prefill_chunk=cfg.prefill_chunk, fsdp_root=root,
                               synced=self.z3)
        self.eval_engine = HFEngine(self.raw.model, fsdp_root=root, synced=self.z3)
        self.max_new_tokens = cfg.max_new_tokens  # replaced by set_summary_cap()
        self._prompt_cache: dict[int, list[int]] = {}
        self._ref_cache: dict[int, list[int] | None] = {}  # reference actions at the current cap
        self._eval_prompts: list[list[int]] | None = None
        self.torch = torch

    def set_summary_cap(self, cap: int) -> None:
        self.max_new_tokens = int(cap)
        self._ref_cache = {}

    def prompt_ids(self, i: int, ex: Any) -> list[int]:
        if i not in self._prompt_cache:
            self._prompt_cache[i] = self._encode(ex)
        return self._prompt_cache[i]

    def _encode(self, ex: Any) -> list[int]:
        from sumrl.rl.rollout import encode_prompt_ids

        return encode_prompt_ids(self.tok, ex.document, ex.query, max_prompt_tokens=self.cfg.max_prompt_tokens,
                                 instruction=self.cfg.instruction)

    def rollout_context(self):
        from sumrl.rl.guided import RolloutContext

        cfg = self.cfg
        return RolloutContext(policy=self.raw.model, tokenizer=self.tok, prompt_ids=self.prompt_ids,
                              stop_ids=self.stop_ids, pad_id=self.pad_id, eos_id=self.eos_id,
                              max_new_tokens=self.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                              group_size=cfg.group_size, guide=self.guide, share_prompt=cfg.share_prompt,
                              engine=self.engine)

    # ------------------------------------------------------------------ held-out evaluation
    def evaluate(self, examples: list, n_rows: int) -> tuple[dict[str, float], list[dict]]:
        """Greedy summaries of the fixed held-out ``examples`` (the policy alone: no guide, no
        reference trajectories), scored by the training rewards exactly as a rollout is (sequence
        score + per-token rewards + the no-end-token term). Returns the ``eval/*`` metrics and
        sample rows for the first ``n_rows`` documents. Greedy decoding draws no random numbers, so
        evaluating does not change what a (resumed) run samples.

        With several processes each writes and scores every N-th document; the per-document results
        are gathered (in document order) and every process computes the same metrics."""
        import torch

        from sumrl.generation.engine import Sampling
        from sumrl.training.parallel import gather_parts
        from sumrl.rl.rollout import make_episode, score_rollout, truncate_at_eos
        from sumrl.rl.trajectory import collate

        cfg, tok = self.cfg, self.tok
        if self._eval_prompts is None:
            self._eval_prompts = [self._encode(ex) for ex in examples]
        # every document with one process; under FSDP every process takes the same decoding steps:
        # all write every document (greedy: the same summaries), the first one's results are kept
        mine = list(range(len(examples))) if self.sharded else list(range(self.rank, len(examples), self.world))
        episodes = []
        for s in range(0, len(mine), cfg.val_batch_size):
            idx = mine[s:s + cfg.val_batch_size]
            prompts = [self._eval_prompts[i] for i in idx]
            raw = self.eval_engine.generate(prompts, [self.max_new_tokens] * len(prompts),
                                            Sampling(temperature=0.0, top_p=1.0, stop_ids=tuple(self.stop_ids),
                                                     pad_id=self.pad_id))
            for i, r in zip(idx, raw):
                acts, fin = truncate_at_eos(r, self.stop_ids)
                episodes.append(make_episode(tok, example_index=i, group=i, source="eval (greedy)",
                                             prompt_ids=self._eval_prompts[i], actions=acts, finished=fin))
        part: list = []
        if episodes and not (self.sharded and self.rank > 0):
            scored = score_rollout(self.reward, collate(episodes, self.pad_id), examples, tok,
                                   no_eos_penalty=cfg.no_eos_penalty, no_eos_mode=cfg.no_eos_mode)
            part = [(e, scored.totals[k], {n: v[k] for n, v in scored.components.items()})
                    for k, e in enumerate(episodes)]
        rows = sorted((r for p in gather_parts(self.accelerator, part) for r in p), key=lambda r: r[0].example_index)
        episodes = [r[0] for r in rows]
        totals = torch.stack([r[1] for r in rows])
        components = {n: torch.stack([r[2][n] for r in rows]) for n in (rows[0][2] if rows else {})}
        lens = torch.tensor([len(e.summary_ids) for e in episodes], dtype=torch.float32)
        metrics = {
            "eval/reward": float(totals.mean()),
            **{f"eval/{k}": float(v.mean()) for k, v in components.items()},
            "eval/mean_length": float(lens.mean()),
            "eval/no_eos_rate": float(sum(not e.finished for e in episodes) / len(episodes)),
        }
        return metrics, _sample_rows(episodes, examples, totals, components, n_rows)

    # ------------------------------------------------------------------ stage 4: forward passes
    def micro_batches(self, batch: Any) -> list[list[int]]:
        """Row positions of each forward pass: ``micro_batch_size`` rows and ``micro_batch_tokens``
        positions at most, groups whole (:func:`sumrl.models.grouped.micro_batches`)."""
        from sumrl.models.grouped import micro_batches

        return micro_batches(batch.query_ids, batch.query_mask, batch.response_mask,
                             max_rows=self.cfg.micro_batch_size, max_tokens=self.cfg.micro_batch_tokens,
                             shared=self.cfg.share_prompt)

    def _rows_forward(self, module: Any, rollout: Any, **kw) -> dict:
        """Run ``module`` over the rollout in micro-batches (full width, no grad). Under FSDP2 each
        forward all-gathers the shard units' parameters, so every process makes as many as the
        busiest; the idle ones' outputs are dropped (:func:`sumrl.training.parallel.lockstep`)."""
        import torch

        from sumrl.training.parallel import lockstep

        outs: dict[str, list] = {}
        dev = self.device
        with torch.no_grad():
            for rows, idle in lockstep(self.accelerator, self.micro_batches(rollout), collective=self.sharded):
                s, e = rows[0], rows[-1] + 1  # consecutive rows
                pl = rollout.prefix_len[s:e].to(dev) if rollout.prefix_len is not None else None
                o = module(rollout.query_ids[s:e].to(dev), rollout.query_mask[s:e].to(dev),
                           rollout.response_ids[s:e].to(dev), rollout.response_mask[s:e].to(dev),
                           temperature=self.temperature, prefix_len=pl, **kw)
                if idle:
                    continue
                for k, v in o.items():
                    outs.setdefault(k, []).append(v.float().cpu())
        return {k: torch.cat(v, dim=0) for k, v in outs.items()}

    def can_defer_policy_pass(self) -> bool:
        """With one PPO epoch of one mini-batch and nothing that needs the policy's log-probs
        before the update (no critic, no KL in the reward), the "old" log-probs *are* the detached
        log-probs of the update's own forward pass (ratio 1): skip the separate no-grad pass (TRL
        does the same when ``num_iterations == 1``)."""
        cfg = self.cfg
        one_update = cfg.ppo_epochs == 1 and (cfg.mini_batch_size is None
                                              or cfg.mini_batch_size >= cfg.batch_size * cfg.group_size)
        # reference batches may have fewer rows, never more: one mini-batch still holds them all
        kl_in_reward = cfg.kl_coef > 0 and not cfg.kl_in_loss
        return one_update and not cfg.uses_critic and not kl_in_reward and cfg.target_coef == 0

    def forward_rollout(self, rollout: Any, *, defer: bool = False):
        """Stage 4 (no grad): the policy's log-probs, entropy and values of every response token,
        and the reference policy's log-probs (adapters off, or the frozen copy). ``defer``: leave
        the policy's log-probs (NaN) and entropy to the update's own forward pass."""
        import torch

        from sumrl.rl.trajectory import PolicyPass

        self.module.eval()
        if defer:
            lp = ent = None
            values = None
        else:
            o = self._rows_forward(self.raw, rollout, with_values=self.cfg.uses_critic, with_entropy=True,
                                   critic=rollout.critic)
            lp, ent, values = o["logprobs"], o["entropy"], o.get("values")
        ref = None
        if self.need_ref():
            with self.reference() as m:
                ref = self._rows_forward(m, rollout)["logprobs"]
        if lp is None:  # deferred: placeholders (nothing before the update reads them: see can_defer_policy_pass)
            lp = torch.zeros(rollout.response_ids.shape)
            ent = torch.zeros(rollout.response_ids.shape)
        return PolicyPass(logprobs=lp, entropy=ent, values=values, ref_logprobs=ref)

    @contextmanager
    def reference(self) -> Iterator[Any]:
        """The reference policy: same weights with LoRA adapters off, or the frozen copy."""
        from sumrl.models.lora import adapters_disabled

        if self.ref_module is not None:
            yield self.ref_module
        elif self.fsdp or self.ds:  # DeepSpeed: ZeRO's gradient hooks are on these parameters; leave requires_grad
            from sumrl.models.sharding import lora_bypassed

            with lora_bypassed(self.raw.model):
                yield self.raw
        else:
            with adapters_disabled(self.raw.model):
                yield self.raw

    def need_ref(self) -> bool:
        return self.cfg.kl_coef > 0 or self.cfg.reference_kl

    # ------------------------------------------------------------------ stage 6: update
    def reference_actions_of(self, i: int, ex: Any) -> list[int] | None:
        """Example ``i``'s reference + end token as actions (None when it does not fit the cap);
        tokenised once per run (the target loss reads the same references every mini-batch)."""
        from sumrl.rl.rollout import reference_actions

        if i not in self._ref_cache:
            self._ref_cache[i] = reference_actions(self.tok, ex.reference, max_new_tokens=self.max_new_tokens,
                                                   eos_id=self.eos_id) if ex.references else None
        return self._ref_cache[i]

    def _target_loss(self, example_index: list[int], examples: list, norm_tokens: int) -> Any:
        """TRIL's target regularisation: the NLL of the rows' reference summaries (TRIL ``ppo.py``:
        ``-sum(target log-probs * target_masks) / n_target``), summed over ``example_index`` and
        divided by ``norm_tokens`` (the mini-batch's reference tokens)."""
        from sumrl.rl.rollout import make_episode
        from sumrl.rl.trajectory import collate

        eps = []
        for i in example_index:
            acts = self.reference_actions_of(i, examples[i])
            if acts is not None:
                eps.append(make_episode(self.tok, example_index=i, group=i, prompt_ids=self.prompt_ids(i, examples[i]),
                                        actions=acts, finished=True, source="reference"))
        if not eps:
            return None
        r = collate(eps, self.pad_id)
        dev = self.device
        out = self.module(r.query_ids.to(dev), r.query_mask.to(dev), r.response_ids.to(dev),
                          r.response_mask.to(dev), temperature=1.0)
        return -(out["logprobs"] * r.response_mask.to(dev)).sum() / max(norm_tokens, 1)

    def _target_tokens(self, example_index: list[int], examples: list) -> int:
        return sum(len(self.reference_actions_of(i, examples[i]) or []) for i in example_index)

    def update(self, batch: Any, optimizer: Any, scheduler: Any, params: dict[str, list], step: int,
               examples: list | None = None, *, deferred: bool = False) -> tuple[dict, Any]:
        """Stage 6: PPO epochs over mini-batches, gradient accumulation over micro-batches with the
        exact normaliser of the mini-batch. Returns ``(metrics, fresh)`` where ``fresh`` holds the
        detached (B, T) log-probs and entropy of the first epoch's forward passes (the "old"
        log-probs when the no-grad policy pass was deferred).

        With several processes ``batch`` is the global batch on every process: each runs the
        micro-batches of its own block of every mini-batch (:mod:`sumrl.rl.distributed`)."""
        import torch

        from sumrl.rl import functional as F
        from sumrl.rl.distributed import shard
        from sumrl.training.parallel import (deepspeed_backward, deepspeed_clip_grad_norms, deepspeed_step,
                                             deepspeed_zero_grad, lockstep, reduce_sums, reduce_tensor_sum)

        cfg, acc = self.cfg, self.accelerator
        N = len(batch)
        mb = min(cfg.mini_batch_size or N, N)
        gen = torch.Generator().manual_seed(derive_seed(cfg.seed, MINIBATCH, step))
        sums: dict[str, float] = {}
        weights: dict[str, float] = {}
        T = batch.response_ids.shape[1]
        fresh_lp = torch.zeros(N, T)
        fresh_ent = torch.zeros(N, T)

        def add(name: str, value: float, w: float) -> None:
            sums[name] = sums.get(name, 0.0) + value * w
            weights[name] = weights.get(name, 0.0) + w

        def normaliser(mini: Any, n_tok: int) -> float:
            return F.batch_normalizer(cfg.loss_agg, len(mini), n_tok, cfg.loss_norm_constant or self.max_new_tokens)

        # shuffle whole groups (consecutive rows of one document), so that a micro-batch keeps a
        # group's shared prompt in one pass; with one row per document this is a plain row shuffle
        ex = batch.example_index.tolist()
        groups: list[list[int]] = []
        for i, e in enumerate(ex):
            if groups and ex[groups[-1][-1]] == e:
                groups[-1].append(i)
            else:
                groups.append([i])
        n_updates = 0
        self.module.train()
        for epoch in range(cfg.ppo_epochs):
            perm = [i for g in torch.randperm(len(groups), generator=gen).tolist() for i in groups[g]]
            for s in range(0, N, mb):
                rows = perm[s:s + mb]
                mini = batch.select(rows)
                n_act, n_val = mini.n_actions(), mini.n_values()
                if n_act == 0 and (n_val == 0 or not cfg.uses_critic):
                    continue
                # exact normalisers of the whole mini-batch, so accumulating micro-batches = one big batch
                norm = normaliser(mini, n_act)
                vnorm = normaliser(mini, n_val)
                mine = shard(range(len(mini)), self.rank, self.world)  # this process's rows of the mini-batch
                # FSDP2 gathers / reduces on every forward and backward, ZeRO-2 reduces on every backward,
                # while the token budget gives each process its own number of micro-batches: each makes as
                # many passes as the busiest; an idle one runs like the others, logs nothing, adds 0 x its loss
                passes = lockstep(acc, self.micro_batches(mini.select(mine)), collective=self.ds or self.fsdp)
                n_passes = len(passes)
                for k_part, (part, idle) in enumerate(passes):
                    sub = [mine[k] for k in part]
                    mt = mini.select(sub).to(self.device)
                    amask = mt.action_mask
                    w = float(amask.sum())
                    out = self.module(mt.query_ids, mt.query_mask, mt.response_ids, mt.response_mask,
                                      temperature=self.temperature, with_values=cfg.uses_critic,
                                      with_entropy=deferred and epoch == 0, entropy_grad=cfg.entropy_coef > 0,
                                      critic=mt.critic, prefix_len=mt.prefix_len)
                    if epoch == 0 and not idle:
                        width = out["logprobs"].shape[1]
                        idx = torch.tensor([rows[j] for j in sub])
                        fresh_lp[idx, :width] = out["logprobs"].detach().float().cpu()
                        if "entropy" in out:
                            fresh_ent[idx, :width] = out["entropy"].detach().float().cpu()
                    old = out["logprobs"].detach() if deferred else mt.old_logprobs
                    record = (lambda *a: None) if idle else add  # an idle pass's statistics are not the batch's
                    loss = out["logprobs"].new_zeros(())
                    if n_act:
                        pg, st = F.ppo_policy_loss(out["logprobs"], old, mt.advantages, amask, cfg.clip_eps,
                                                   cfg.loss_agg, norm)
                        loss = loss + pg
                        record("policy/loss", float(pg.detach()), 1.0)
                        for k in ("clipfrac", "approx_kl", "ratio_mean"):
                            record(f"policy/{k}", float(st[k]), w)
                    if cfg.uses_critic and n_val:
                        vmask = mt.value_mask
                        vl, vst = F.value_loss(out["values"], mt.old_values, mt.returns, vmask,
                                               cfg.value_clip if cfg.value_clip > 0 else None, cfg.loss_agg, vnorm)
                        loss = loss + cfg.vf_coef * vl
                        record("value/loss", float(vl.detach()), 1.0)
                        record("value/clipfrac", float(vst["vf_clipfrac"]), float(vmask.sum()))
                    if cfg.kl_in_loss and cfg.kl_coef > 0 and n_act:
                        klm = F.kl_estimate(out["logprobs"], mt.ref_logprobs, "k3")
                        kl_loss = F.aggregate(klm, amask, cfg.loss_agg, norm)
                        loss = loss + cfg.kl_coef * kl_loss
                        record("policy/kl_loss", float(kl_loss.detach()), 1.0)
                    if cfg.entropy_coef > 0 and n_act:
                        ent = F.aggregate(out["entropy"], amask, cfg.loss_agg, norm)
                        loss = loss - cfg.entropy_coef * ent
                    lv = float(loss.detach())
                    if not math.isfinite(lv):
                        raise TrainingDiverged(self._diverged_msg(f"the loss is {lv}", step))
                    # the processes' gradients are averaged: times world, their sum is the mini-batch's
                    scaled = loss * 0.0 if idle else loss * self.world if self.world > 1 else loss
                    if self.ds:  # DeepSpeed averages too; the last micro-batch is the accumulation boundary
                        deepspeed_backward(self.module, scaled, boundary=k_part == n_passes - 1)
                    else:
                        acc.backward(scaled)
                if cfg.target_coef > 0 and examples is not None:
                    # TRIL: the references of the mini-batch's rows (one per row, as in its buffer)
                    ex_rows = [int(i) for i in mini.example_index.tolist()]
                    n_target = self._target_tokens(ex_rows, examples)
                    ex_rows = shard(ex_rows, self.rank, self.world)
                    for ms in range(0, len(ex_rows), cfg.micro_batch_size):
                        tl = self._target_loss(ex_rows[ms:ms + cfg.micro_batch_size], examples, n_target)
                        if tl is None:
                            continue
                        if not math.isfinite(float(tl.detach())):
                            raise TrainingDiverged(self._diverged_msg("the target loss is not finite", step))
                        acc.backward(cfg.target_coef * tl * self.world)
                        add("policy/target_loss", float(tl.detach()), 1.0)
                # policy and critic clipped separately: returns in the hundreds give value gradients
                # whose norm would otherwise shrink the policy's update to nothing under one global clip
                limit = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
                # DeepSpeed: each group's norm from the partitioned gradients (one all-reduce), each group's
                # slices scaled in place before the engine's step (its own one-norm clipping is off)
                ds_norms = (deepspeed_clip_grad_norms(self.module, {g: params[g] for g in ("policy", "critic")
                                                                    if params.get(g)}, limit) if self.ds else {})
                for group, key in (("policy", "train/grad_norm"), ("critic", "value/grad_norm")):
                    if not params.get(group):
                        continue
                    gn = ds_norms[group] if self.ds else float(acc.clip_grad_norm_(params[group], limit))
                    if not math.isfinite(gn):
                        deepspeed_zero_grad(self.module) if self.ds else optimizer.zero_grad(set_to_none=True)
                        raise TrainingDiverged(self._diverged_msg(f"the {group} gradient norm is {gn}", step))
                    add(key, gn, 1.0)
                deepspeed_step(self.module) if self.ds else optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                n_updates += 1
        if self.world > 1:  # every process's share of the sums (grad norms: the same on each, weights too)
            sums, weights = reduce_sums(acc, sums), reduce_sums(acc, weights)
            fresh_lp, fresh_ent = reduce_tensor_sum(acc, fresh_lp), reduce_tensor_sum(acc, fresh_ent)
        out = {k: sums[k] / weights[k] for k in sums if weights[k] > 0}
        # losses were summed over micro-batches: report per optimizer step
        for k in ("policy/loss", "value/loss", "policy/kl_loss", "policy/target_loss"):
            if k in out:
                out[k] = sums[k] / max(n_updates, 1)
        out["train/optimizer_steps"] = n_updates
        return out, (fresh_lp, fresh_ent)

    def _diverged_msg(self, what: str, step: int) -> str:
        from sumrl.training.checkpoint import last_checkpoint

        ck = last_checkpoint(Path(self.cfg.out) / CHECKPOINT_DIR)
        kept = f"the last good checkpoint is kept in {ck}" if ck else "no checkpoint was written yet"
        return (f"training diverged at step {step}: {what}; {kept} (try a lower --lr, a higher --kl-coef or "
                f"a smaller --clip-eps)")


# ---------------------------------------------------------------------------------------- train
def train(cfg: RLConfig, *, callbacks: list[StepCallback] | None = None) -> dict:
    """Run RL; returns a summary (steps, last metrics, output folder).

    One outer step reads top to bottom: ``# 1 generate``, ``# 2`` (truncation happens inside the
    rollout strategy), ``# 3 score``, ``# 4 forward``, ``# 5 advantages``, ``# 6 update``,
    ``# 7 check and checkpoint``, ``# 8 log``. Each stage returns a new typed value
    (:mod:`sumrl.rl.trajectory`).

    ``callbacks`` are called after each step (logging and checkpointing done) with
    ``(step, metrics)``; an exception raised there stops training like a kill.
    """
    import torch
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    from sumrl.data import load_data, load_heldout
    from sumrl.rl import functional as F
    from sumrl.models.sharding import full_weights, shard_units, whole_numel, whole_tensor, zero3_gathered
    from sumrl.rl.distributed import check_divisible, gather_step, shard, step_seed
    from sumrl.training.parallel import (deepspeed_load_state, deepspeed_optimizer_state, full_optimizer_state,
                                         prepare_deepspeed, process_state)
    from sumrl.rl.rollout import (AdvantageSettings, critic_advantages, group_advantages,
                                  score_rollout)
    from sumrl.rl.trajectory import TrainBatch
    from sumrl.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
    from sumrl.training.optim import build_optimizer, build_scheduler, trainable
    from sumrl.training.common import StepSampler
    from sumrl.utils.io import write_json
    from sumrl.utils.logging import MetricLogger

    out = Path(cfg.out)
    # several processes (accelerate launch / torchrun): the main one alone writes the run folder
    ps = process_state()
    rank, world, is_main = ps.process_index, ps.num_processes, ps.is_main_process
    check_divisible(batch_size=cfg.batch_size, group_size=cfg.group_size, mini_batch_size=cfg.mini_batch_size,
                    world=world)
    if world > 1 and cfg.target_coef > 0:
        raise ConfigError("--target-coef runs in one process only (the reference rows of a mini-batch are not "
                          "split evenly over processes)")
    say = log.info if is_main else (lambda *a, **k: None)
    resume_from = resume_point(out, resume=cfg.resume, overwrite=cfg.overwrite, checkpoint_dir=CHECKPOINT_DIR,
                               clean=is_main)  # the main process alone writes the folder
    if resume_from is not None:
        bad = _resume_mismatches(read_checkpoint_state(resume_from).get("config", {}), cfg)
        if bad:
            raise ConfigError("--resume with settings that change the run: " + "; ".join(bad))
    set_seed(cfg.seed)
    examples = load_data(cfg.data, cfg.split, fields=_fields(cfg), skip_invalid=cfg.skip_invalid,
                         require_summary=True, limit=cfg.limit, seed=cfg.seed)
    if len(examples) < cfg.batch_size:
        raise ConfigError(f"--batch-size {cfg.batch_size} is larger than the {len(examples)} training examples")
    val_examples: list = []
    if cfg.eval_every:
        # a small user file may have no row in the held-out split: train anyway, with a one-line notice
        val_examples = load_heldout(cfg.data, cfg.val_split, purpose="held-out evaluation (--eval-every)",
                                    fields=_fields(cfg), skip_invalid=cfg.skip_invalid, require_summary=True,
                                    limit=cfg.val_examples, seed=cfg.seed)
    if is_main:
        if cfg.overwrite:
            clear_previous_run(out, _RUN_FILES, CHECKPOINT_DIR)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / CONFIG_FILE, dataclasses.asdict(cfg))
    ps.wait_for_everyone()

    tr = RLTrainer(cfg)
    # The output cap, from the data when asked; reference batches only use references that fit it whole.
    ref_lens = reference_lengths(tr.tok, examples)
    cap = summary_cap(ref_lens, cfg.summary_cap_quantile, cfg.max_new_tokens)
    tr.set_summary_cap(cap)
    fitting = [i for i, n in enumerate(ref_lens) if 0 < n and n + 1 <= cap]
    q = sorted(ref_lens)
    say(f"rl: training references are {q[len(q) // 2]} policy tokens at the median, "
          f"{q[max(math.ceil(0.95 * len(q)) - 1, 0)]} at the 95th percentile; summaries capped at {cap} tokens "
          f"({'from --summary-cap-quantile %g' % cfg.summary_cap_quantile if cfg.summary_cap_quantile else '--max-new-tokens'})"
          + (f"; {len(examples) - len(fitting)} of {len(examples)} references do not fit whole and are left out of "
             f"reference batches" if cfg.reference_trajectory_ratio > 0 else ""))
    if cfg.reference_trajectory_ratio > 0 and len(fitting) < cfg.batch_size:
        raise ConfigError(f"only {len(fitting)} training references fit --max-new-tokens {cap} whole, fewer than "
                          f"--batch-size {cfg.batch_size}: raise the cap (e.g. --summary-cap-quantile 0.95)")
    params = trainable(tr.raw)
    optimizer = build_optimizer(params, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.adam_eps)
    sched_optimizer = optimizer
    opt_groups = [list(g["params"]) for g in optimizer.param_groups]  # the one-process numbering of checkpoints
    if tr.fsdp:
        # FSDP2 shards the module and re-points the optimizer at the shards (one prepare for both)
        tr.module, optimizer = tr.accelerator.prepare(tr.module, optimizer)
        params = trainable(tr.raw)
        sched_optimizer = optimizer
    elif tr.ds:  # the engine wraps tr.raw; the LR schedule stays on the torch optimizer DeepSpeed steps; the
        # engine does not clip (one global norm): the update clips policy and critic separately itself
        tr.module, optimizer = prepare_deepspeed(tr.accelerator, tr.module, optimizer, max_grad_norm=0.0)
    policy_trained = {n for n, p in tr.raw.model.named_parameters() if p.requires_grad}  # what _publish saves
    param_groups = critic_split(params)
    N = cfg.batch_size * cfg.group_size  # episodes per outer step
    per_step = cfg.ppo_epochs * math.ceil(N / min(cfg.mini_batch_size or N, N))
    scheduler = build_scheduler(sched_optimizer, warmup_steps=cfg.warmup_steps, total_steps=cfg.steps * per_step,
                                min_lr_ratio=cfg.min_lr_ratio)
    start = 0
    advantage_scale: float | None = None  # advantage std of the last sampled batch (reference batches use it)
    if resume_from is not None:
        state = load_checkpoint(resume_from, model=tr.raw, optimizer=None if tr.ds else optimizer, scheduler=scheduler,
                                sharded=tr.fsdp, zero3=tr.z3)
        if tr.ds:  # the engine's fp32 master copy and AdamW partitions
            deepspeed_load_state(tr.module, opt_groups, tr.raw, resume_from)
        start = int(state["step"])
        advantage_scale = state.get("advantage_scale")
    sampler = StepSampler(len(examples), cfg.batch_size, cfg.seed)
    ref_sampler = StepSampler(max(len(fitting), 1), cfg.batch_size, cfg.seed, REFERENCE_ORDER)
    plan = tr.plan
    logger = (MetricLogger(out, tensorboard=cfg.tensorboard, resume_step=start if resume_from else None) if is_main
              else _NoLogger())
    n_train = sum(whole_numel(p) for _, p in params)
    n_all = sum(whole_numel(p) for p in tr.raw.parameters())
    say(f"rl: {cfg.algo} on {len(examples)} prompts, {cfg.steps} steps of {cfg.batch_size} prompts x "
          f"{cfg.group_size} samples; trainable {n_train:,} / {n_all:,} parameters "
          f"({'LoRA' if cfg.lora else 'full'}); output {out}" + (f"; resuming at step {start}" if start else "")
          + (f"; {world} processes, {cfg.batch_size // world} prompts each" if world > 1 else "")
          + (f"; FSDP2 ({shard_units(tr.raw)} shard units; parameters, gradients and optimizer state sharded)"
             if _sharded(tr.raw) else "")
          + (f"; DeepSpeed ZeRO-{tr.accelerator.state.deepspeed_plugin.zero_stage} ("
             + ("parameters, " if tr.z3 else "") + "gradients and optimizer state partitioned)" if tr.ds else ""))
    if tr.rm_note:
        say(f"rl: {tr.rm_note}")
    adv_settings = AdvantageSettings(kl_coef=cfg.kl_coef, kl_estimator=cfg.kl_estimator, kl_in_reward=not cfg.kl_in_loss,
                                     gamma=cfg.gamma, lam=cfg.lam, value_target=cfg.value_target,
                                     whiten_rewards=cfg.whiten_rewards, whiten_advantages=cfg.whiten_advantages,
                                     group_size=cfg.group_size, algo=cfg.algo, scale_by_std=cfg.scale_by_std,
                                     group_credit=cfg.group_credit)

    def checkpoint(step: int, rng: dict | None = None, scale: float | None = None) -> None:
        # ``rng``: the generator state at the end of ``step`` (a deferred save happens later, after
        # the next rollout has used the generator; the checkpoint must hold the state to resume from).
        now = rng_state() if rng is not None else None
        # FSDP: every process gathers the whole weights and optimizer state (collectives), the main one
        # writes them in the one-process format
        opt_state = (full_optimizer_state(tr.raw, optimizer) if tr.fsdp else
                     deepspeed_optimizer_state(tr.module, opt_groups, sched_optimizer) if tr.ds else None)
        # ZeRO-3: the trainable weights gathered whole on every process (a collective)
        with full_weights(tr.raw, tr.fsdp), zero3_gathered((p for _, p in params), tr.z3):
            if not is_main:
                return
            if rng is not None:
                set_rng_state(rng)
            try:
                save_checkpoint(out / CHECKPOINT_DIR, step, model=tr.raw,
                                optimizer=optimizer if opt_state is None else _StateOf(opt_state), scheduler=scheduler,
                                keep=cfg.keep_checkpoints, state={"config": dataclasses.asdict(cfg),
                                                                  "advantage_scale": scale})
            finally:
                if now is not None:
                    set_rng_state(now)

    pending: tuple[int, dict, float | None] | None = None  # a checkpoint waiting for the next sampled KL check
    bar = tqdm(total=cfg.steps, initial=start, desc=f"rl {cfg.algo}", unit="step", disable=not (cfg.progress and is_main),
               dynamic_ncols=True)
    last: dict = {}
    first: dict = {}

    def kl_check(kl_tok: Any, amask: Any, is_ref: bool, done: int) -> float:
        """Mean KL per summary of the actions. On a sampled batch: stop the run when it is not finite
        or exceeds ``max_kl``, else write the checkpoint waiting for this confirmation. A reference
        batch's log-ratio is not a KL of the policy: it neither stops the run nor confirms."""
        nonlocal pending
        kl = float(F.masked_sum(kl_tok, amask, dim=1).mean())
        if not is_ref:
            if not math.isfinite(kl) or (cfg.max_kl > 0 and kl > cfg.max_kl):
                raise TrainingDiverged(tr._diverged_msg(
                    f"objective/kl = {kl:.4g} nats per summary exceeds --max-kl {cfg.max_kl:g}", done))
            if pending is not None:
                checkpoint(*pending)
                pending = None
        return kl

    def held_out(step: int) -> dict:
        """``eval/*`` of the policy after ``step`` updates; its first held-out summaries (the same
        documents each time) go to samples.jsonl."""
        t0 = time.perf_counter()
        m, rows = tr.evaluate(val_examples, cfg.n_samples)
        m["time/eval"] = time.perf_counter() - t0
        if cfg.sample_every:
            logger.log_samples(rows, step)
        return m

    try:
        if val_examples and start == 0:  # the policy before any update: the "before" of the curve
            before = held_out(0)
            logger.log(before, 0)
            say(f"[step 0] eval/reward {before['eval/reward']:+.3f} on {len(val_examples)} held-out "
                      f"{cfg.val_split} documents, mean length {before['eval/mean_length']:.0f} tokens")
        for step in range(start, cfg.steps):
            done = step + 1
            t_step = time.perf_counter()
            timings: dict[str, float] = {}
            is_ref = plan.is_reference_step(step)
            n_ref_before = plan.reference_steps_before(step)
            if is_ref:
                idx = [fitting[i] for i in ref_sampler.indices(n_ref_before)]
            else:
                idx = sampler.indices(step - n_ref_before)
            idx = shard(idx, rank, world)  # this process's prompts (the whole batch with one process)
            # Decisions (guide roll-in/out, switch points) come from a generator seeded by the step, so
            # a resumed run makes the same ones; sampling uses the global RNG saved in checkpoints --
            # with several processes, a generator seeded by (seed, step, rank) instead: a resume with
            # any number of processes continues reproducibly
            decisions = ROLLOUT if world == 1 else f"{ROLLOUT}-rank{rank}"
            gen = torch.Generator().manual_seed(derive_seed(cfg.seed, decisions, step))
            if world > 1:
                torch.manual_seed(step_seed(cfg.seed, step, rank))
            # 1 generate (policy samples, reference summaries or guided), 2 truncate at the first end token
            t0 = time.perf_counter()
            rollout = plan.collect(step, tr.rollout_context(), idx, examples, gen, timings)
            timings["time/generate"] = time.perf_counter() - t0
            # 3 score: rewards, no-end-token term, placement on response positions
            t0 = time.perf_counter()
            scored = score_rollout(tr.reward, rollout, examples, tr.tok, no_eos_penalty=cfg.no_eos_penalty,
                                   no_eos_mode=cfg.no_eos_mode)
            timings["time/score"] = time.perf_counter() - t0
            # 4 forward (no grad): log-probs, entropy, values; reference log-probs with the adapters off.
            # Skipped for the policy when the update's own forward gives the same log-probs -- except
            # when a checkpoint waits for this rollout's KL check, which must come before the update.
            defer = tr.can_defer_policy_pass() and (pending is None or is_ref)
            t0 = time.perf_counter()
            fwd = tr.forward_rollout(rollout, defer=defer)
            timings["time/forward"] = time.perf_counter() - t0
            # several processes: from here on every process holds the global batch of the step
            rollout, scored, fwd = gather_step(tr.accelerator, rollout, scored, fwd, tr.pad_id)
            # 5 advantages: per-token rewards with the KL term; GAE or group baselines
            if cfg.algo in GROUP_ALGOS:
                adv = group_advantages(rollout, scored, fwd, adv_settings)
            else:
                adv = critic_advantages(rollout, scored, fwd, adv_settings,
                                        advantage_scale=advantage_scale if is_ref else None)
                if not is_ref and cfg.whiten_advantages:
                    advantage_scale = adv.raw_std if adv.raw_std is not None else advantage_scale
            amask = rollout.action_mask.bool()
            for name, t in (("log-probs", None if defer else fwd.logprobs),
                            ("values", fwd.values), ("advantages", adv.advantages)):
                if t is not None and not bool(torch.isfinite(t[amask]).all()):
                    raise TrainingDiverged(tr._diverged_msg(f"the rollout {name} are not finite", done))
            # 6 check: a sampled batch's KL (of the policy before this step's update) confirms the
            # pending checkpoint; a reference batch's log-ratio is not a KL of the policy
            if not defer:
                kl_mean = kl_check(adv.kl, amask, is_ref, done)
            # 7 update: PPO epochs over mini-batches
            t0 = time.perf_counter()
            lr = scheduler.get_last_lr()[0]
            upd, (fresh_lp, fresh_ent) = tr.update(TrainBatch.build(rollout, fwd, adv), optimizer, scheduler,
                                                   param_groups, done, examples, deferred=defer)
            timings["time/train"] = time.perf_counter() - t0
            tr.engine.sync_weights(tr.raw.model)  # a serving engine copies the updated weights here
            entropy = fwd.entropy
            if defer:  # the update's first forward (before its optimizer step) gave the rollout-time log-probs
                entropy = fresh_ent
                ref = fwd.ref_logprobs if fwd.ref_logprobs is not None else fresh_lp
                kl_mean = kl_check(torch.where(amask, F.kl_estimate(fresh_lp, ref, cfg.kl_estimator), torch.zeros(())),
                                   amask, is_ref, done)
            timings["time/step"] = time.perf_counter() - t_step
            # 8 log
            episodes = rollout.episodes
            lens = torch.tensor([len(e.summary_ids) for e in episodes], dtype=torch.float32)
            metrics: dict[str, Any] = {
                "objective/reward": float(scored.totals.mean()),
                "objective/entropy": float(F.masked_mean(entropy, amask)) if amask.any() else 0.0,
                "objective/scores": float(scored.scores.mean()),
                "completions/mean_length": float(lens.mean()),
                "completions/min_length": float(lens.min()),
                "completions/max_length": float(lens.max()),
                "completions/no_eos_rate": float((~rollout.finished).float().mean()),
                "completions/reference_fraction": sum(e.is_reference for e in episodes) / len(episodes),
                "train/lr": lr,
                "train/max_new_tokens": tr.max_new_tokens,
                **{k: float(v.mean()) for k, v in scored.components.items()},
                **upd, **timings,
            }
            if is_ref:
                metrics["reference/logratio"] = kl_mean
            else:
                metrics["objective/kl"] = kl_mean
                metrics["objective/rlhf_reward"] = float(scored.totals.mean()) - (
                    cfg.kl_coef * kl_mean if not cfg.kl_in_loss else 0.0)
            if tr.guide is not None:
                metrics["guide/rollin_fraction"] = sum(e.n_prefix > 0 for e in episodes) / len(episodes)
                metrics["guide/rollout_fraction"] = sum(e.n_suffix > 0 for e in episodes) / len(episodes)
                metrics["guide/critic"] = 1.0 if rollout.critic == "guide" else 0.0
            if cfg.uses_critic and fwd.values is not None:
                vmask = rollout.value_mask.bool()
                if vmask.any():
                    metrics["value/mean"] = float(F.masked_mean(fwd.values, vmask))
                    metrics["value/explained_variance"] = float(F.explained_variance(fwd.values, adv.returns, vmask))
                if amask.any():
                    metrics["policy/advantage_mean"] = float(F.masked_mean(adv.advantages, amask))
            if val_examples and (done % cfg.eval_every == 0 or done == cfg.steps):
                metrics.update(held_out(done))  # after this step's update
            metrics = _finite(metrics)
            if not first:
                first = dict(metrics)
            last = metrics
            if done % cfg.log_every == 0 or done == cfg.steps or "eval/reward" in metrics:
                logger.log(metrics, done)
            if cfg.sample_every and (done % cfg.sample_every == 0 or done == 1 or done == cfg.steps):
                rows = _sample_rows(list(episodes), examples, scored.totals, scored.components, cfg.n_samples)
                logger.log_samples(rows, done)
                if cfg.progress:
                    for r in rows if is_main else []:
                        bar.write(f"[step {done}] reward {r['reward']:+.3f} ({r['source']}, {r['n_tokens']} tok): "
                                  f"{r['summary'][:160]!r}")
            bar.set_postfix(reward=f"{metrics['objective/reward']:.3f}", kl=f"{kl_mean:.3f}",
                            len=f"{metrics['completions/mean_length']:.0f}", refresh=False)
            bar.update(1)
            if done == cfg.steps:
                checkpoint(done, scale=advantage_scale)
            elif done % cfg.save_every == 0:
                pending = (done, rng_state(), advantage_scale)
            for cb in callbacks or []:
                cb(done, metrics)
    finally:
        bar.close()
        logger.close()

    # FSDP: the adapter's whole weights gathered on every process (a collective), the main one saves
    whole = ({n: whole_tensor(p) for n, p in tr.raw.model.named_parameters() if n in policy_trained}
             if tr.fsdp else None)
    # the root unit's own weights whole too: peft reads the embedding's shape to decide what to save
    # ZeRO-3: every parameter gathered whole (peft reads the frozen embedding's shape; a full model saves them all)
    with full_weights(tr.raw, tr.fsdp, root_only=True), zero3_gathered(tr.raw.parameters(), tr.z3):
        if is_main:
            _publish(tr, out, cfg, state_dict=whole)
    tr.accelerator.wait_for_everyone()
    return {"out": str(out), "steps": cfg.steps, "start_step": start, "first": first, "last": last,
            "is_main": is_main}


def _sharded(module: Any) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


class _StateOf:
    """An optimizer stand-in whose ``state_dict`` is a state gathered beforehand (FSDP)."""

    def __init__(self, state: dict):
        self._state = state

    def state_dict(self) -> dict:
        return self._state


class _NoLogger:
    """The metric logger of a process that is not the main one: it writes nothing."""

    def log(self, metrics: dict, step: int) -> None:
        pass

    def log_samples(self, rows: list, step: int) -> None:
        pass

    def close(self) -> None:
        pass


def _sample_rows(episodes: list, examples: list, totals: Any, components: dict, n: int) -> list[dict]:
    """Sample-table rows of the first ``n`` episodes: ``totals`` (B,) and ``components`` {name: (B,)}."""
    rows = []
    for i, e in enumerate(episodes[:n]):
        ex = examples[e.example_index]
        rows.append({
            "id": ex.id, "document": ex.document[:300], "summary": e.text, "reference": ex.reference,
            "source": e.source, "n_tokens": len(e.summary_ids), "finished": e.finished,
            "reward": float(totals[i]),
            "components": {k: float(v[i]) for k, v in components.items()},
        })
    return rows


def stacked_base_spec(lower_adapter: str, out: Path) -> str:
    """How an RL adapter trained on an SFT adapter's merged weights names its base: the SFT folder
    relative to OUT ("../sft"), so that the two folders can be moved or committed together."""
    rel = os.path.relpath(Path(lower_adapter).resolve(), Path(out).resolve())
    return rel if rel.startswith("..") else "./" + rel


def _publish(tr: RLTrainer, out: Path, cfg: RLConfig, state_dict: dict | None = None) -> None:
    """Save the trained policy so ``--model OUT`` loads it: the RL LoRA adapter on the original base;
    when the run started from an SFT adapter, the RL adapter *stacked* on that SFT adapter (a few MB;
    ``--model OUT`` merges the SFT adapter and applies the RL one, the weights RL trained on); the
    full model when all weights were trained."""
    from sumrl.training.common import publish_model

    model = tr.raw.model
    extra = {"trained_by": "sumrl rl", "algo": cfg.algo, "steps": cfg.steps, "policy": cfg.policy,
             "load_in_4bit": cfg.load_in_4bit}
    if cfg.lora:
        stacked = tr.policy.merged_from is not None
        base = stacked_base_spec(tr.policy.merged_from, out) if stacked else tr.policy.base_spec
        publish_model(model, tr.tok, out, base_spec=base, state_dict=state_dict,
                      extra={**extra, "lora": True, **({"stacked_on": tr.policy.merged_from} if stacked else {})})
        log.info(f"saved the RL LoRA adapter to {out}" + (f" (on the SFT adapter {tr.policy.merged_from}, "
                                                        f"which must stay at {base} relative to it)" if stacked else "")
              + f" (use --model {out})")
        return
    publish_model(model, tr.tok, out, base_spec=None, state_dict=state_dict,
                  extra={**extra, "lora": False, "merged_from": tr.policy.merged_from})
    log.info(f"saved the full RL model to {out} (use --model {out})")


def summary_line(summary: dict) -> str:
    """The one line ``sumrl rl`` prints of :func:`train`'s summary: steps, and reward, KL and length
    from the first to the last logged step (the last alone after a --resume)."""
    first, last = summary.get("first") or {}, summary.get("last") or {}
    parts = [f"steps {summary['steps']}"]
    for k in ("objective/reward", "objective/kl", "completions/mean_length"):
        if k in last:
            parts.append(f"{k} {first[k]:.4g} -> {last[k]:.4g}" if k in first and summary["start_step"] == 0
                         else f"{k} {last[k]:.4g}")
    return "rl done: " + ", ".join(parts)
