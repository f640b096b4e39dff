"""Supervised fine-tuning (``sumrl sft``): a plain training loop on Accelerate.

One optimizer step consumes ``batch_size`` training sequences (over all processes), taken in a
seeded per-epoch permutation, so the data position is a pure function of the step and resuming
needs no sampler state. Each process takes every ``world_size``-th sequence of the step, packs
them into micro-batches of at most ``micro_batch_tokens`` tokens and accumulates gradients.

Loss normalisation: the loss of a step is ``sum of target-token NLL / number of target tokens in
the whole step`` (all micro-batches, all processes). The token count is known before the forward
pass (from the labels), so each micro-batch back-propagates ``loss_sum * world_size / N_step``;
DDP *averages* gradients over processes, hence the ``world_size``. The result is the gradient of
the full-batch token-mean loss, whatever the micro-batching (tests/test_sft.py checks this).

The same code runs under ``accelerate launch --num_processes N``: the loss module (trunk +
chunked cross-entropy, :mod:`sumrl.training.loss`) is what gets wrapped by DDP; logging,
validation and checkpoints happen on the main process while the others wait. Under FSDP2
(recipes/accelerate/fsdp2.yaml) the loss module is sharded together with its optimizer, every
process validates (each forward is a collective), and checkpoints and the published model are
gathered whole in the one-process format; ``--resume`` and early stopping load them back into the
shards (docs/scale.md).
"""

from __future__ import annotations

import dataclasses
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

from sumrl.errors import ConfigError, TrainingDiverged
from sumrl.training.checkpoint import clear_previous_run, read_checkpoint_state, resume_mismatches, resume_point
from sumrl.training.common import StepSampler, publish_model
from sumrl.training.config import RESUME_MUTABLE, SFTConfig
from sumrl.utils.console import get_logger

log = get_logger(__name__)

CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "checkpoints-best"  # the trainable weights of the best validation (--early-stopping-patience)
CONFIG_FILE = "sft_config.json"
# Files of a previous run removed by --overwrite (the model files are listed in sumrl_model.json).
_RUN_FILES = ("metrics.jsonl", "metrics.csv", "samples.jsonl", CONFIG_FILE)

StepCallback = Callable[[int, dict], None]


def total_steps(cfg: SFTConfig, n_sequences: int) -> int:
    if cfg.steps is not None:
        return cfg.steps
    return max(1, math.ceil(cfg.epochs * n_sequences / cfg.batch_size))


def _fields(cfg: SFTConfig):
    from sumrl.data import FieldMap

    return FieldMap(id=cfg.id_field, document=cfg.document_field, summary=cfg.summary_field, query=cfg.query_field)


def encode_for(cfg: SFTConfig, tokenizer: Any, examples: list) -> list:
    from sumrl.training.data import encode_examples

    return encode_examples(tokenizer, examples, max_seq_len=cfg.max_seq_len, max_target_tokens=cfg.max_target_tokens,
                           strategy=cfg.strategy, instruction=cfg.instruction, chunk_overlap=cfg.chunk_overlap,
                           max_prompt_tokens=cfg.max_prompt_tokens)


# ----------------------------------------------------------------------------------------- model
def build_model(cfg: SFTConfig) -> tuple[Any, Any, str]:
    """``(model, tokenizer, base_spec)``: LoRA-wrapped or fully trainable, in train mode."""
    from sumrl.models.loading import load_model, resolve
    from sumrl.models.lora import add_lora

    if any(m.split(".")[-1] == "lm_head" for m in cfg.lora_target_modules):
        raise ConfigError("--lora-target-modules must not include lm_head (the chunked loss reads the head's weight)")
    r = resolve(cfg.model)
    if r.kind == "adapter":
        base = r.base
        model, tok = load_model(cfg.model, dtype="float32", trainable=cfg.lora, load_in_4bit=cfg.load_in_4bit)
        if not cfg.lora:  # full fine-tuning from an adapter: fold it into the weights first
            model = model.merge_and_unload()
    else:
        # a relative model folder must still resolve when the saved adapter is loaded elsewhere
        base = str(Path(cfg.model).resolve()) if r.kind in ("hf_dir", "gguf") else cfg.model
        model, tok = load_model(cfg.model, dtype="float32", load_in_4bit=cfg.load_in_4bit)
        if cfg.lora:
            model = add_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                             target_modules=cfg.lora_target_modules or None)
    if not cfg.lora:
        for p in model.parameters():
            p.requires_grad_(True)
    if cfg.gradient_checkpointing:
        enable_checkpointing(model)
    cfg_obj = getattr(model, "config", None)
    if cfg_obj is not None:
        cfg_obj.use_cache = False
    model.train()
    return model, tok, base


def enable_checkpointing(model: Any) -> None:
    """Activation checkpointing of every decoder layer, non-reentrant (works with frozen inputs,
    i.e. LoRA, and with DDP). transformers 5 renamed the method; both spellings are accepted."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    kwargs = {"use_reentrant": False}
    if hasattr(inner, "activation_checkpointing_enable"):
        inner.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:  # pragma: no cover - transformers < 5
        inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


# ------------------------------------------------------------------------------------ validation
@dataclasses.dataclass
class Validator:
    cfg: SFTConfig
    tokenizer: Any
    examples: list
    sequences: list

    def loss(self, loss_module: Any, device: Any) -> tuple[float, int]:
        import torch

        from sumrl.training.packing import plan_micro_batches

        if not self.sequences:
            return float("nan"), 0
        packing = self.cfg.packing and loss_module.supports_packing
        groups = plan_micro_batches([len(s) for s in self.sequences], self.cfg.tokens_per_micro_batch,
                                    self.cfg.micro_batch_size, packing=packing)
        total, n = 0.0, 0
        was = loss_module.training
        loss_module.eval()
        try:
            with torch.no_grad():
                for g in groups:
                    batch = _to(loss_module.collate([self.sequences[i] for i in g], packing=packing,
                                                    pad_id=self.tokenizer.pad_token_id), device)
                    ls, nt = loss_module(**batch)
                    total += float(ls)
                    n += int(nt)
        finally:
            loss_module.train(was)
        return total / max(n, 1), n

    def generate(self, model: Any) -> tuple[dict, list[dict]]:
        from sumrl.evaluation.metrics import length_stats
        from sumrl.evaluation.rouge import rouge
        from sumrl.generation.summarize import GenerationSettings, summarize

        exs = self.examples[: self.cfg.val_generate]
        if not exs:
            return {}, []
        # Prompts as long as the training prompts (not the model's full context): validation
        # measures what training optimises, and stays affordable on CPU.
        settings = GenerationSettings(max_new_tokens=self.cfg.val_max_new_tokens, batch_size=self.cfg.val_batch_size,
                                      strategy=self.cfg.strategy, instruction=self.cfg.instruction,
                                      max_input_tokens=self.cfg.max_seq_len, seed=self.cfg.seed, progress=False)
        outs = summarize(model, self.tokenizer, exs, settings)
        rows, agg = [], {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0, "pred_words": 0.0, "ref_words": 0.0,
                         "finished": 0.0}
        for ex, o in zip(exs, outs):
            r = rouge(o.text, ex.references)
            ls = length_stats(o.text, ex.references, ex.document)
            m = {"rouge1": r["rouge1_f"], "rouge2": r["rouge2_f"], "rougeL": r["rougeL_f"],
                 "pred_words": ls["pred_words"], "ref_words": ls["ref_words"], "finished": float(o.finished)}
            for k in agg:
                agg[k] += m[k] / len(exs)
            rows.append({"id": ex.id, "prediction": o.text, "reference": ex.reference, **m})
        agg["len_ratio"] = agg["pred_words"] / max(agg["ref_words"], 1e-9)
        return agg, rows


def _to(batch: dict, device: Any) -> dict:
    return {k: (v.to(device) if v is not None else None) for k, v in batch.items()}


# ------------------------------------------------------------------------------------ output dir
def early_stopping_update(best: float | None, bad: int, val_loss: float,
                          min_delta: float = 0.0) -> tuple[float, int, bool]:
    """One validation's effect on early stopping: ``(best, validations without improvement, improved)``.

    An improvement is a loss more than ``min_delta`` below the best so far (the first validation
    finite validation always is one); a non-finite loss never is, and leaves the best at +inf until
    a finite one arrives.
    """
    if math.isfinite(val_loss) and (best is None or val_loss < best - min_delta):
        return val_loss, 0, True
    return (best if best is not None else math.inf), bad + 1, False


# ---------------------------------------------------------------------------------------- train
def train(cfg: SFTConfig, *, callbacks: list[StepCallback] | None = None) -> dict:
    """Run SFT; returns a summary (steps, last losses, last validation metrics, output folder).

    ``callbacks`` are called on every process after each step (and its logging, validation and
    checkpoint) with ``(step, metrics)``; an exception raised there stops training like a kill.
    """
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    from sumrl.data import load_data
    from sumrl.training.checkpoint import last_checkpoint, load_checkpoint, save_checkpoint
    from sumrl.training.loss import make_loss_module
    from sumrl.training.optim import DivergenceGuard, build_optimizer, build_scheduler, parameters_finite, trainable
    from sumrl.training.packing import n_target_tokens, plan_micro_batches
    from sumrl.utils.io import write_json
    from sumrl.utils.logging import MetricLogger

    # On a machine without a GPU, Accelerate only forms a multi-process (gloo) group when told it
    # is a CPU run; without this, `torchrun --nproc_per_node N` would start N independent runs.
    from sumrl.models.sharding import full_weights, shard_units, whole_numel, whole_tensor, zero3_gathered
    from sumrl.training import parallel as par
    from sumrl.training.parallel import full_optimizer_state, is_fsdp

    accelerator = par.make_accelerator(**par.accelerator_kwargs())
    world, rank, main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    # FSDP2 (recipes/accelerate/fsdp2.yaml): parameters, gradients and optimizer state sharded
    fsdp = is_fsdp(accelerator)
    # DeepSpeed ZeRO-2/3 (recipes/accelerate/deepspeed_zero2.yaml, deepspeed_zero3.yaml): gradients and optimizer
    # state partitioned (ZeRO-3: parameters too), the engine driven step by step (sumrl.training.parallel, "DeepSpeed")
    ds = par.is_deepspeed(accelerator)
    if ds:
        par.check_deepspeed(accelerator, "sft")
    # ZeRO-3: every forward gathers the parameters (a collective: every process validates, as under FSDP), and
    # weights read outside a forward (checkpoints, the published model) are gathered whole first
    z3 = par.is_zero3(accelerator)
    from sumrl.models.precision import precision_line, resolve_bf16

    use_bf16, why = resolve_bf16(cfg.bf16, accelerator.device)
    if main:
        log.info(precision_line("sft", use_bf16, why))
    if cfg.batch_size < world:
        raise ConfigError(f"--batch-size ({cfg.batch_size}) must be at least the number of processes ({world})")
    out = Path(cfg.out)
    resume_from = resume_point(out, resume=cfg.resume, overwrite=cfg.overwrite, checkpoint_dir=CHECKPOINT_DIR,
                               clean=main)
    if resume_from is not None:
        bad = resume_mismatches(read_checkpoint_state(resume_from).get("config", {}), cfg, RESUME_MUTABLE)
        if bad:
            raise ConfigError("--resume with settings that change the run: " + "; ".join(bad))
    accelerator.wait_for_everyone()
    if main:
        if cfg.overwrite:
            clear_previous_run(out, _RUN_FILES, CHECKPOINT_DIR)
            import shutil

            shutil.rmtree(out / BEST_DIR, ignore_errors=True)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / CONFIG_FILE, dataclasses.asdict(cfg))
    set_seed(cfg.seed)

    # data
    examples = load_data(cfg.data, cfg.split, fields=_fields(cfg), skip_invalid=cfg.skip_invalid,
                         require_summary=True, limit=cfg.limit, seed=cfg.seed)
    with par.whole_model_construction(accelerator):  # ZeRO-3: built as in one process, partitioned by prepare
        model, tok, base_spec = build_model(cfg)
    from sumrl.models.seq2seq import check_lengths

    check_lengths(model, cfg.model, n_input=cfg.max_seq_len, input_flag="--max-seq-len",
                  n_output=cfg.max_target_tokens, output_flag="--max-target-tokens")
    seqs = encode_for(cfg, tok, examples)
    n_steps = total_steps(cfg, len(seqs))
    sampler = StepSampler(len(seqs), cfg.batch_size, cfg.seed)
    validator = None
    # under FSDP / ZeRO-3 every process validates (each forward is a collective over the shards); the main one logs
    if (main or fsdp or z3) and cfg.eval_every > 0 and (cfg.val_examples or cfg.val_generate):
        n_val = max(cfg.val_examples, cfg.val_generate)
        from sumrl.data import load_heldout

        val_ex = load_heldout(cfg.data, cfg.val_split, purpose="validation", fields=_fields(cfg),
                              skip_invalid=cfg.skip_invalid, require_summary=True, limit=n_val, seed=cfg.seed)
        validator = Validator(cfg, tok, val_ex, encode_for(cfg, tok, val_ex[: cfg.val_examples])) if val_ex else None

    loss_module = make_loss_module(model, chunk_size=cfg.loss_chunk_size, bf16=use_bf16)
    packing = cfg.packing and loss_module.supports_packing
    if cfg.packing and not packing and main:
        log.info("sft: packing does not apply to encoder-decoder models (the prompt is the encoder's input): "
              "micro-batches are length-sorted and padded instead")
    if fsdp:  # FSDP2 shards the module and re-points the optimizer at the shards (one prepare for both)
        optimizer = build_optimizer(trainable(loss_module.model), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                    betas=(cfg.adam_beta1, cfg.adam_beta2))
        loss_module, optimizer = accelerator.prepare(loss_module, optimizer)
        raw_module = loss_module
        params = trainable(raw_module.model)  # the shards
        sched_optimizer = optimizer
    elif ds:  # the engine replaces the module; the LR schedule stays on the torch optimizer DeepSpeed steps
        sched_optimizer = build_optimizer(trainable(loss_module.model), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                          betas=(cfg.adam_beta1, cfg.adam_beta2))
        opt_groups = [list(g["params"]) for g in sched_optimizer.param_groups]  # the one-process numbering
        loss_module, optimizer = par.prepare_deepspeed(accelerator, loss_module, sched_optimizer,
                                                       max_grad_norm=cfg.max_grad_norm)
        raw_module = accelerator.unwrap_model(loss_module)
        params = trainable(raw_module.model)
    else:
        loss_module = accelerator.prepare(loss_module)
        raw_module = accelerator.unwrap_model(loss_module)
        params = trainable(raw_module.model)
        optimizer = build_optimizer(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                    betas=(cfg.adam_beta1, cfg.adam_beta2))
        sched_optimizer = optimizer
    scheduler = build_scheduler(sched_optimizer, warmup_steps=cfg.warmup_steps, total_steps=n_steps,
                                min_lr_ratio=cfg.min_lr_ratio)
    start = 0
    counters = {"tokens_seen": 0, "target_tokens_seen": 0}
    run_tokens, run_seconds = 0, 0.0  # this invocation's training steps only (no validation, no resume)
    if resume_from is not None:
        state = load_checkpoint(resume_from, model=raw_module.model, optimizer=None if ds else optimizer,
                                scheduler=scheduler, sharded=fsdp, zero3=z3)
        if ds:  # the engine's fp32 master copy and AdamW partitions
            par.deepspeed_load_state(loss_module, opt_groups, raw_module.model, resume_from)
        start = int(state["step"])
        counters.update(state.get("counters", {}))
    logger = MetricLogger(out, tensorboard=cfg.tensorboard, resume_step=start if resume_from else None) if main else None
    device = accelerator.device
    n_train, n_all = sum(whole_numel(p) for _, p in params), sum(whole_numel(p) for p in raw_module.model.parameters())
    if main:
        log.info(f"sft: {len(examples)} examples -> {len(seqs)} sequences, {n_steps} steps of {cfg.batch_size}; "
              f"trainable {n_train:,} / {n_all:,} parameters ({'LoRA' if cfg.lora else 'full'}); "
              f"{world} process(es)"
              + (f"; FSDP2 ({shard_units(loss_module)} shard units; parameters, gradients and optimizer state sharded)"
                 if fsdp else "")
              + (f"; DeepSpeed ZeRO-{accelerator.state.deepspeed_plugin.zero_stage} ("
                 + ("parameters, " if z3 else "") + "gradients and optimizer state partitioned)" if ds else "")
              + f"; output {out}" + (f"; resuming at step {start}" if start else ""))

    last_val: dict = {}
    patience = cfg.early_stopping_patience

    def validate(step: int) -> bool:
        """Validate on the main process; True when early stopping says to stop (same on every process)."""
        nonlocal last_val
        stop = False
        if validator is not None:  # only the main process has one, except under FSDP / ZeRO-3
            metrics: dict[str, float] = {}
            if cfg.val_examples:
                vl, vn = validator.loss(raw_module, device)
                metrics.update({"val/loss": vl, "val/tokens": vn})
                if patience:
                    best, bad, improved = early_stopping_update(counters.get("best_val_loss"), counters.get("bad_evals", 0),
                                                                vl, cfg.early_stopping_min_delta)
                    counters.update(best_val_loss=best, bad_evals=bad)
                    if fsdp or z3:  # every process validated; the main one's decision for all (gathering is a collective)
                        from accelerate.utils import broadcast_object_list

                        improved = broadcast_object_list([improved])[0]
                    if improved:  # the weights published at the end, unless a later validation beats them
                        counters["best_step"] = step
                        # FSDP / ZeRO-3: whole weights, the main process saves
                        with full_weights(loss_module, fsdp), zero3_gathered((p for _, p in params), z3):
                            if main:
                                save_checkpoint(out / BEST_DIR, step, model=raw_module.model, optimizer=None,
                                                state={"val_loss": vl}, keep=1)  # weights only: never resumed from
                    metrics.update({"val/best_loss": best, "val/best_step": counters.get("best_step", -1)})
                    stop = bad >= patience
            # FSDP: generation calls the inner model, which skips the root unit's hooks: its own
            # weights (embeddings, head) are gathered around it; every process decodes the same
            # prompts greedily or with the same seed, so they take the same number of steps
            with full_weights(loss_module, fsdp, root_only=True):
                gen, rows = validator.generate(raw_module.model)
            metrics.update({f"val/{k}": v for k, v in gen.items()})
            if main:
                logger.log(metrics, step)
                if rows:
                    logger.log_samples(rows, step)
            last_val = metrics
        if patience and world > 1:
            from accelerate.utils import broadcast_object_list

            stop = broadcast_object_list([stop])[0]
        accelerator.wait_for_everyone()
        return stop

    def checkpoint(step: int) -> None:
        # Adam normalises the step size, so a huge finite --lr can put inf/NaN in the weights with a
        # finite loss and gradient: never save (or later publish) such weights.
        with zero3_gathered((p for _, p in params), z3):  # ZeRO-3: the same whole weights on every process
            finite = parameters_finite(p for _, p in params)
        if not finite:
            raise TrainingDiverged(f"sft diverged at step {step}: the weights are no longer finite; the last good "
                                   f"checkpoint is kept in {out / CHECKPOINT_DIR}; lower --lr")
        # FSDP: every process gathers the whole weights and optimizer state (collectives), the main one
        # writes them in the one-process format
        opt_state = (full_optimizer_state(raw_module.model, optimizer) if fsdp else
                     par.deepspeed_optimizer_state(loss_module, opt_groups, sched_optimizer) if ds else None)
        with full_weights(loss_module, fsdp), zero3_gathered((p for _, p in params), z3):
            if main:
                save_checkpoint(out / CHECKPOINT_DIR, step, model=raw_module.model,
                                optimizer=optimizer if opt_state is None else _StateOf(opt_state),
                                scheduler=scheduler, keep=cfg.keep_checkpoints,
                                state={"config": dataclasses.asdict(cfg), "counters": counters,
                                       "epoch": sampler.epoch_at(step)})
        accelerator.wait_for_everyone()

    stopped = bool(counters.get("stopped_at"))  # a resumed run that early stopping had already ended
    if start == 0 and cfg.eval_every > 0:
        stopped = validate(0) or stopped
    bar = tqdm(total=n_steps, initial=start, desc="sft", unit="step", disable=not (main and cfg.progress),
               dynamic_ncols=True)
    last_train: dict = {}
    guard = DivergenceGuard(what="sft", max_loss_ratio=cfg.max_loss_ratio, reference=counters.get("first_loss"),
                            where=str(out / CHECKPOINT_DIR))
    loss_module.train()
    try:
        for step in range(start, n_steps):
            if stopped:
                break
            t0 = time.perf_counter()
            step_seqs = [seqs[i] for i in sampler.indices(step)]
            n_step_targets = sum(n_target_tokens(s) for s in step_seqs)
            local = step_seqs[rank::world]
            groups = plan_micro_batches([len(s) for s in local], cfg.tokens_per_micro_batch, cfg.micro_batch_size,
                                        packing=packing)
            scale = world / n_step_targets
            local_loss = torch.zeros((), dtype=torch.float64, device=device)
            local_tokens = sum(len(s) for s in local)
            # ZeRO-2 and FSDP2 make collectives on every forward/backward, while packing gives each process its
            # own number of micro-batches: each makes as many passes as the busiest (idle ones add exact zeros)
            passes = par.lockstep(accelerator, groups, collective=ds or fsdp)
            n_passes = len(passes)
            for k, (g, idle) in enumerate(passes):
                batch = _to(raw_module.collate([local[i] for i in g], packing=packing, pad_id=tok.pad_token_id),
                            device)
                # gradients are all-reduced once per step, on the last micro-batch
                sync = k == n_passes - 1
                if ds:  # the engine reduces into each process's partition; no division by its accumulation steps
                    loss_sum, _ = loss_module(**batch)
                    par.deepspeed_backward(loss_module, loss_sum * (0.0 if idle else scale), boundary=sync)
                else:
                    with nullcontext() if sync or fsdp else accelerator.no_sync(loss_module):
                        loss_sum, _ = loss_module(**batch)
                        accelerator.backward(loss_sum * (0.0 if idle else scale))
                if not idle:
                    local_loss += loss_sum.detach().double()
            if ds:  # the norm over all partitions, before the step; the engine's step clips by it
                grad_norm = par.deepspeed_grad_norm(loss_module)
            else:
                grad_norm = accelerator.clip_grad_norm_([p for _, p in params],
                                                        cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"))
            loss = float(accelerator.reduce(local_loss, reduction="sum")) / n_step_targets
            n_tokens = int(accelerator.reduce(torch.tensor(local_tokens, device=device), reduction="sum"))
            try:  # before the step: a diverged step never reaches the weights (same on every process)
                guard.check(loss, float(grad_norm), step + 1)
            except TrainingDiverged:
                par.deepspeed_zero_grad(loss_module) if ds else optimizer.zero_grad(set_to_none=True)
                raise
            counters["first_loss"] = guard.reference
            par.deepspeed_step(loss_module) if ds else optimizer.step()
            lr = scheduler.get_last_lr()[0]
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            dt = time.perf_counter() - t0
            counters["tokens_seen"] += n_tokens
            run_tokens, run_seconds = run_tokens + n_tokens, run_seconds + dt
            counters["target_tokens_seen"] += n_step_targets
            done = step + 1
            last_train = {"train/loss": loss, "train/lr": lr, "train/grad_norm": float(grad_norm),
                          "train/target_tokens": n_step_targets, "train/tokens": n_tokens,
                          "train/tokens_per_s": n_tokens / dt, "train/micro_batches": len(groups),
                          "train/epoch": sampler.epoch_at(done)}
            if main:
                if done % cfg.log_every == 0 or done == n_steps:
                    logger.log(last_train, done)
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{n_tokens / dt:,.0f}", refresh=False)
                bar.update(1)
            if cfg.eval_every > 0 and (done % cfg.eval_every == 0 or done == n_steps):
                stopped = validate(done)
                if stopped and main:
                    counters["stopped_at"] = done
                    log.info(f"sft: early stopping at step {done}: val/loss has not improved for {patience} "
                          f"validations; best {counters['best_val_loss']:.4f} at step {counters.get('best_step')}")
            if done % cfg.save_every == 0 or done == n_steps or stopped:
                checkpoint(done)
            for cb in callbacks or []:
                cb(done, last_train)
    finally:
        bar.close()
        if logger is not None:
            logger.close()

    with zero3_gathered((p for _, p in params), z3):
        finite = parameters_finite(p for _, p in params)
    if not finite:
        raise TrainingDiverged(f"sft diverged: the weights are no longer finite; nothing published; the last good "
                               f"checkpoint is kept in {out / CHECKPOINT_DIR}; lower --lr")
    extra = {"trained_by": "sumrl sft", "lora": cfg.lora, "steps": n_steps, "load_in_4bit": cfg.load_in_4bit}
    best_dir = last_checkpoint(out / BEST_DIR) if patience else None
    if best_dir is not None:  # every process loads it, so that they all return the same weights
        best_state = load_checkpoint(best_dir, model=raw_module.model, restore_rng=False, sharded=fsdp, zero3=z3)
        extra.update(best_step=int(best_state["step"]), best_val_loss=float(best_state["val_loss"]),
                     stopped_at=counters.get("stopped_at"))
        if main:
            log.info(f"sft: publishing the weights of step {best_state['step']} (best val/loss "
                  f"{best_state['val_loss']:.4f})")
    # FSDP: the trained weights gathered whole on every process (a collective), the main one saves; the
    # root unit's own weights whole too (peft reads the embedding's shape to decide what to save)
    whole = {n: whole_tensor(p) for n, p in raw_module.model.named_parameters() if p.requires_grad} if fsdp else None
    # ZeRO-3: every parameter gathered whole (peft reads the frozen embedding's shape; a full model saves them all)
    with full_weights(loss_module, fsdp, root_only=True), zero3_gathered(raw_module.model.parameters(), z3):
        if main:
            publish_model(raw_module.model, tok, out, base_spec=base_spec, extra=extra, state_dict=whole)
    if main:
        log.info(f"saved the {'LoRA adapter' if cfg.lora else 'model'} to {out} (use --model {out})")
    accelerator.wait_for_everyone()
    return {"out": str(out), "is_main": main, "steps": n_steps, "best_step": extra.get("best_step"),
            "stopped_at": counters.get("stopped_at"), "start_step": start, "train": last_train, "val": last_val,
            "n_sequences": len(seqs), "trainable_parameters": n_train,
            "tokens_per_s": run_tokens / run_seconds if run_seconds else None}


class _StateOf:
    """An optimizer stand-in whose ``state_dict`` is a state gathered beforehand (FSDP)."""

    def __init__(self, state: dict):
        self._state = state

    def state_dict(self) -> dict:
        return self._state


def summary_line(summary: dict) -> str:
    """The one line ``sumrl sft`` prints of :func:`train`'s summary: steps, the last train/loss, the
    last validation numbers and the throughput."""
    val = summary.get("val") or {}
    tr = summary.get("train") or {}
    parts = [f"steps {summary['steps']}"]
    if "train/loss" in tr:
        parts.append(f"train/loss {tr['train/loss']:.4f}")
    parts += [f"{k} {val[k]:.4g}" for k in ("val/loss", "val/rougeL", "val/pred_words", "val/ref_words") if k in val]
    if summary.get("tokens_per_s"):
        parts.append(f"{summary['tokens_per_s']:.0f} tokens/s (training steps of this run)")
    return "sft done: " + ", ".join(parts)
