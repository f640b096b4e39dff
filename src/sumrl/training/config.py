"""The ``sumrl sft`` and ``sumrl rm train`` configs (kept free of torch imports so that ``sumrl --help``
stays fast)."""

from __future__ import annotations

import typing
from dataclasses import dataclass

from sumrl.config import BF16_HELP, AutoBool, opt
from sumrl.data.options import DataOptions
from sumrl.errors import ConfigError
from sumrl.rewards.negatives import NEGATIVE_CLASSES
from sumrl.training.checkpoint import RUN_OPTIONS_RESUME_MUTABLE, RunOptions

# Options that may change between an interrupted run and its ``--resume`` without changing the
# trajectory (schedule length is *not* among them: the cosine schedule depends on it).
RESUME_MUTABLE = RUN_OPTIONS_RESUME_MUTABLE | {
    "out", "eval_every", "val_generate", "val_max_new_tokens", "val_batch_size", "max_loss_ratio",
}


@dataclass
class SFTConfig(RunOptions, DataOptions):
    # DataOptions.split defaults to "test" (evaluation); training reads the train split.
    split: str = opt("train", "split to train on")
    model: str = opt("default", "model to fine-tune ('default', a packaged name, a model/adapter folder, .gguf, hub id)")
    out: str = opt("runs/sft", "output folder: the fine-tuned model/adapter (loadable with --model OUT), "
                               "sft_config.json, metrics.jsonl/csv, tensorboard/, checkpoints/")
    # --- what is trained
    lora: bool = opt(True, "train a LoRA adapter (default); --no-lora or --full fine-tunes all weights")
    lora_r: int = opt(16, "LoRA rank")
    lora_alpha: int = opt(32, "LoRA alpha (scale = alpha / r)")
    lora_dropout: float = opt(0.0, "LoRA dropout")
    lora_target_modules: list[str] = opt(default_factory=list, help="module names LoRA is applied to "
                                         "(default: all attention and MLP projections)")
    # --- sequences
    max_seq_len: int = opt(2048, "tokens per training sequence (prompt + summary; for an encoder-decoder the "
                                 "encoder input alone); longer documents use --strategy")
    max_target_tokens: int = opt(512, "summary tokens kept at most (a longer reference is cut and gets no EOS)")
    max_prompt_tokens: typing.Optional[int] = opt(
        None, "prompt tokens at most, the document cut to fit -- the same budget as `sumrl eval --max-input-tokens` "
              "and `sumrl rl --max-prompt-tokens`, so training and test prompts match (default: whatever "
              "--max-seq-len leaves beside each summary, so a short summary gets more of the document)")
    strategy: str = opt("truncate", "documents longer than --max-seq-len: truncate = keep the beginning (as "
                                    "`sumrl eval --strategy truncate`); chunk = train the map and reduce prompts of "
                                    "`--strategy chunk` on reference sentences aligned to each window (docs/sft.md)",
                        choices=["truncate", "chunk"])
    chunk_overlap: int = opt(32, "overlap of consecutive windows with --strategy chunk (as in generation)")
    instruction: typing.Optional[str] = opt(None, "instruction placed before the document (must match eval)")
    # --- schedule
    epochs: float = opt(1.0, "passes over the training split (ignored when --steps is given)")
    steps: typing.Optional[int] = opt(None, "optimizer steps (overrides --epochs)")
    batch_size: int = opt(8, "examples per optimizer step, over all processes")
    micro_batch_tokens: typing.Optional[int] = opt(
        None, "tokens per forward pass (one packed row); a step's examples are packed into as many micro-batches "
              "as needed and their gradients accumulated (default: --max-seq-len)")
    micro_batch_size: typing.Optional[int] = opt(None, "at most this many examples per micro-batch (default: no limit)")
    packing: bool = opt(True, "padding-free packing (several examples in one row, attention kept inside each); "
                              "--no-packing pads length-sorted micro-batches instead")
    lr: float = opt(2e-4, "peak learning rate (AdamW)")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    adam_beta1: float = opt(0.9, "AdamW beta1")
    adam_beta2: float = opt(0.999, "AdamW beta2")
    warmup_steps: int = opt(10, "linear warm-up steps, then cosine decay")
    min_lr_ratio: float = opt(0.1, "final learning rate as a fraction of --lr")
    max_grad_norm: float = opt(1.0, "clip the global gradient norm to this (0 = no clipping)")
    max_loss_ratio: float = opt(3.0, "stop (keeping the last good checkpoint) when a step's loss exceeds this many "
                                     "times the first step's loss: a blown-up run (0 = no such check; NaN/inf loss "
                                     "or gradient and an all-zero gradient always stop the run)")
    # --- speed / memory
    gradient_checkpointing: bool = opt(True, "recompute activations in backward (memory linear in length, ~30% slower)")
    load_in_4bit: bool = opt(False, "QLoRA: load the base model frozen in 4-bit NF4 (bitsandbytes; pip install "
                                    "'sumrl[quant]'), LoRA adapters in full precision; needs --lora")
    bf16: AutoBool = opt("auto", BF16_HELP)
    loss_chunk_size: int = opt(512, "summary positions per chunk of the cross-entropy (never full-vocabulary logits "
                                    "for the whole sequence)")
    # --- logging, validation, checkpoints
    eval_every: int = opt(50, "validate every N steps (and before the first and after the last step); 0 = never")
    val_split: str = opt("val", "split used for validation")
    early_stopping_patience: int = opt(
        0, "stop when val/loss has not improved on its best for N validations in a row, and publish the weights of "
           "the best validation instead of the last (0 = off: run every step, publish the last weights)")
    early_stopping_min_delta: float = opt(0.0, "a validation counts as an improvement only when val/loss falls by "
                                               "more than this below the best so far")
    val_examples: int = opt(16, "validation examples for val/loss")
    val_generate: int = opt(4, "validation examples summarised for val/rouge*, val/pred_words (0 = none)")
    val_max_new_tokens: int = opt(256, "generation length for validation samples")
    val_batch_size: int = opt(4, "generation batch size for validation samples")

    def validate(self) -> None:
        if self.load_in_4bit and not self.lora:
            raise ConfigError("--load-in-4bit needs --lora (a 4-bit base is frozen; only adapters train)")

        def positive(name: str, allow_zero: bool = False) -> None:
            v = getattr(self, name)
            if v is not None and (v < 0 or (v == 0 and not allow_zero)):
                raise ConfigError(f"--{name.replace('_', '-')} must be {'>= 0' if allow_zero else '> 0'}, got {v}")

        self.check_run_options()
        for name in ("max_seq_len", "max_target_tokens", "batch_size", "lr", "loss_chunk_size", "lora_r",
                     "lora_alpha", "epochs", "steps",
                     "micro_batch_tokens", "micro_batch_size", "max_prompt_tokens"):
            positive(name)
        for name in ("warmup_steps", "eval_every", "val_examples", "val_generate", "max_grad_norm", "weight_decay",
                     "chunk_overlap", "lora_dropout", "max_loss_ratio", "early_stopping_patience",
                     "early_stopping_min_delta"):
            positive(name, allow_zero=True)
        if self.early_stopping_patience and not (self.eval_every and self.val_examples):
            raise ConfigError("--early-stopping-patience needs validation losses: set --eval-every and --val-examples "
                              "above 0")
        if self.max_seq_len < 64:
            raise ConfigError(f"--max-seq-len must be at least 64, got {self.max_seq_len}")
        if self.max_target_tokens >= self.max_seq_len:
            raise ConfigError(f"--max-target-tokens ({self.max_target_tokens}) must be smaller than --max-seq-len "
                              f"({self.max_seq_len}) to leave room for the document")
        if self.micro_batch_tokens is not None and self.micro_batch_tokens < self.max_seq_len:
            raise ConfigError(f"--micro-batch-tokens ({self.micro_batch_tokens}) must be >= --max-seq-len "
                              f"({self.max_seq_len}): one sequence must fit in a micro-batch")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(self, name)}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"--lora-dropout must be in [0, 1), got {self.lora_dropout}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"--min-lr-ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.chunk_overlap >= self.max_seq_len // 2:
            raise ConfigError(f"--chunk-overlap ({self.chunk_overlap}) must be below half of --max-seq-len")

    @property
    def tokens_per_micro_batch(self) -> int:
        return self.micro_batch_tokens or self.max_seq_len


@dataclass
class RMTrainConfig:
    kind: str = opt("synthetic", "synthetic = positives (document, reference) vs generated negatives, no human "
                                 "feedback; preference = Bradley-Terry on human pairs (--pairs)",
                    choices=["synthetic", "preference"])
    out: str = opt("", "output folder (config.json, model.safetensors, metrics.json)")
    data: str = opt("scisummnet", "synthetic: dataset of (document, reference) positives (built-in name or file)")
    pairs: str | None = opt(None, "preference: pairs.jsonl (from `sumrl data pairs` or `sumrl human export`)")
    backbone: str = opt("minilm", "minilm = small head on the MiniLM encoder (fast on CPU); policy = LoRA on a causal "
                                  "LM (--model) with a scalar head", choices=["minilm", "policy"])
    model: str = opt("default", "with --backbone policy: the policy-family model spec")
    init: str | None = opt(None, "start from an existing reward-model folder (e.g. synthetic, then preference)")
    steps: int = opt(100, "optimizer steps")
    batch_size: int = opt(8, "examples (synthetic: positives, each with one negative) or pairs per step")
    lr: float = opt(1e-4, "learning rate (AdamW)")
    max_loss_ratio: float = opt(3.0, "stop when a step's loss exceeds this many times the first step's (a blow-up; "
                                     "0 = off); a non-finite loss or gradient always stops the run")
    max_length: int = opt(256, "tokens per (document prefix, summary) input")
    max_summary_tokens: int = opt(128, "summary tokens kept (the document prefix gets the rest)")
    train_layers: int = opt(2, "minilm: top transformer layers trained (-1 = all, 0 = head only)")
    lora_r: int = opt(8, "policy: LoRA rank")
    load_in_4bit: bool = opt(False, "policy: the backbone frozen in 4-bit NF4 (bitsandbytes; pip install "
                                    "'sumrl[quant]'), LoRA and head in full precision")
    lora_layers: int = opt(-1, "policy: LoRA on the top N decoder layers only (-1 = all); the layers below need no "
                               "backward pass (CPU time)")
    micro_batch_size: int = opt(0, "synthetic: forward/backward this many sequences at a time, grouped by length, "
                                   "gradients accumulated (0 = the whole step at once); same step, less padding")
    classes: list[str] = opt(None, "synthetic: negative classes", default_factory=lambda: list(NEGATIVE_CLASSES))
    limit: int | None = opt(None, "use at most N training examples / pairs")
    eval_split: str = opt("test", "synthetic: split for the held-out per-class accuracy")
    eval_limit: int | None = opt(60, "held-out examples / pairs evaluated (CPU time)")
    norm_limit: int | None = opt(40, "examples used for the score normalisation statistics")
    margin: bool = opt(False, "preference: subtract the pair margin in the Bradley-Terry loss")
    margin_scale: float = opt(1.0, "preference: multiplier of the margin")
    test_fraction: float = opt(0.2, "preference: held-out share of documents for pairs without meta.split")
    seed: int = opt(0, "random seed")

    def validate(self) -> None:
        if not self.out:
            raise ConfigError("missing --out (the reward-model folder to write)")
        if self.kind == "preference" and not self.pairs:
            raise ConfigError("--kind preference needs --pairs FILE")
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError("--steps and --batch-size must be at least 1")
        if self.lr <= 0:
            raise ConfigError("--lr must be positive")
        if self.max_summary_tokens < 1 or self.max_summary_tokens > self.max_length - 16:
            raise ConfigError("--max-summary-tokens must be between 1 and --max-length - 16")
        if self.load_in_4bit and self.backbone != "policy":
            raise ConfigError("--load-in-4bit applies to --backbone policy only")
        if self.micro_batch_size < 0:
            raise ConfigError("--micro-batch-size must be 0 (whole step) or positive")
        bad = [c for c in self.classes if c not in NEGATIVE_CLASSES]
        if bad or not self.classes:
            raise ConfigError(f"--classes: unknown {', '.join(bad) or '(empty)'}; choose from "
                              f"{', '.join(NEGATIVE_CLASSES)}")
