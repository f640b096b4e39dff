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
