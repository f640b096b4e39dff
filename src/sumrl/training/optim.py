"""AdamW with linear warm-up and cosine decay (shared by SFT and the RL trainers)."""

from __future__ import annotations

import math
from typing import Any, Iterable


class WarmupCosine:
    """LR multiplier: ``step / warmup`` during warm-up, then cosine from 1 down to ``min_ratio``
    at ``total`` steps (held there afterwards). A picklable object rather than a closure, so the
    scheduler's state_dict round-trips it."""

    def __init__(self, warmup: int, total: int, min_ratio: float = 0.0):
        self.warmup, self.total, self.min_ratio = int(warmup), max(int(total), 1), float(min_ratio)

    def __call__(self, step: int) -> float:
        if self.warmup > 0 and step < self.warmup:
            return (step + 1) / (self.warmup + 1)  # never exactly 0: step 0 must move the weights
        span = max(self.total - self.warmup, 1)
        progress = min(max(step - self.warmup, 0) / span, 1.0)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def trainable(model: Any) -> list[tuple[str, Any]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def build_optimizer(params: Iterable[tuple[str, Any]], *, lr: float, weight_decay: float = 0.0,
                    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> Any:
    """AdamW; biases and norm weights (1-D tensors) get no weight decay, as usual."""
    import torch

    params = list(params)
    decay = [p for _, p in params if p.ndim >= 2]
    no_decay = [p for _, p in params if p.ndim < 2]
    groups = [g for g in ({"params": decay, "weight_decay": weight_decay},
                          {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


def build_scheduler(optimizer: Any, *, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> Any:
    import torch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps, min_lr_ratio))


# ---------------------------------------------------------------------------------------------
# Divergence checks, made before the optimizer step so that a bad step never reaches the weights
# (and so never a checkpoint or a published model).


def check_step(loss: float, grad_norm: float, step: int, *, what: str = "training", where: str = "") -> None:
    """Raise TrainingDiverged (one line) if the loss or the gradient norm is not finite."""
    from sumrl.errors import TrainingDiverged

    keep = f"; the last good checkpoint is kept in {where}" if where else ""
    if not math.isfinite(loss):
        raise TrainingDiverged(f"{what} diverged at step {step}: the loss is {loss}{keep}; lower --lr")
    if not math.isfinite(grad_norm):
        raise TrainingDiverged(f"{what} diverged at step {step}: the gradient norm is {grad_norm}{keep}; "
                               "lower --lr")


class DivergenceGuard:
    """Per-step checks of a training loop, before its optimizer step.

    * non-finite loss or gradient norm;
    * a gradient norm of exactly 0 with a positive loss: every unit saturated, nothing can be
      learned any more (what ``--lr 1e3`` does: the loss sits at ln(vocab) with zero gradient);
    * a loss above ``max_loss_ratio`` times the run's first loss (``reference``, saved in the
      checkpoint so that a resumed run keeps the same bound); 0 turns this check off.
    """

    def __init__(self, *, what: str, max_loss_ratio: float = 0.0, reference: float | None = None, where: str = ""):
        self.what, self.max_loss_ratio, self.reference, self.where = what, max_loss_ratio, reference, where

    def check(self, loss: float, grad_norm: float, step: int) -> None:
        from sumrl.errors import TrainingDiverged

        check_step(loss, grad_norm, step, what=self.what, where=self.where)
        keep = f"; the last good checkpoint is kept in {self.where}" if self.where else ""
        if grad_norm == 0.0 and loss > 0.0:
            raise TrainingDiverged(f"{self.what} collapsed at step {step}: the gradient is exactly zero at loss "
                                   f"{loss:.4g} (every unit saturated){keep}; lower --lr")
        if self.reference is None:
            self.reference = loss
        elif self.max_loss_ratio > 0 and loss > self.max_loss_ratio * self.reference:
            raise TrainingDiverged(f"{self.what} blew up at step {step}: the loss {loss:.4g} is over "
                                   f"{self.max_loss_ratio:g} x the first step's {self.reference:.4g}{keep}; lower "
                                   "--lr (or raise --max-loss-ratio)")


def parameters_finite(params: Iterable[Any]) -> bool:
    """True when every tensor is finite (checked before a checkpoint or the model is written)."""
    import torch

    return all(bool(torch.isfinite(p).all()) for p in params)
