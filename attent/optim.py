"""Generic optimizer and learning-rate helpers used by the recipes, the tasks and YAML configs.

    optimizer = attent.optim.adamw(model, lr=1e-3, weight_decay=0.05)
    scheduler = attent.optim.warmup_cosine(optimizer, total=epochs, warmup=2)        # step once per epoch
    fit(..., lr_scheduler=warmup_cosine_steps(0.05))    # per step, over the steps the run will take
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

__all__ = ["adamw", "warmup_cosine", "warmup_cosine_steps"]


def adamw(model: nn.Module, *, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on the matrices only: parameters with one dimension (biases, norm
    weights) and those the model's ``no_weight_decay()`` names (timm: position embedding, class
    token) get none."""
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.dim() <= 1 or name in skip else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)


def warmup_cosine(optimizer: torch.optim.Optimizer, *, total: int, warmup: int,
                  min_factor: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning-rate factors over ``total`` units (epochs or optimizer steps, whichever the
    scheduler is stepped by): (i + 1) / warmup for the first ``warmup`` units, then a half cosine
    from 1 down to ``min_factor`` at the last unit (i = total - 1)."""
    if isinstance(total, bool) or not isinstance(total, int) or total < 1:
        raise ValueError(f"total must be a positive integer, got {total!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or not 0 <= warmup < total:
        raise ValueError(f"warmup must be an integer in [0, total={total}), got {warmup!r}")

    def factor(unit: int) -> float:
        if unit < warmup:
            return (unit + 1) / warmup
        progress = (unit - warmup) / max(1, total - warmup - 1)
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def warmup_cosine_steps(warmup_fraction: float, min_factor: float = 0.0) -> Callable[[torch.optim.Optimizer, int], torch.optim.lr_scheduler.LambdaLR]:
    """A ``fit`` scheduler factory: given the run's optimizer steps, :func:`warmup_cosine` over them,
    warming up for ``round(warmup_fraction * steps)`` of them (at most all but one), stepped per step."""
    if isinstance(warmup_fraction, bool) or not isinstance(warmup_fraction, (int, float)) or not 0 <= warmup_fraction < 1:
        raise ValueError(f"warmup_fraction must be a number in [0, 1), got {warmup_fraction!r}")

    def factory(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
        return warmup_cosine(optimizer, total=steps, warmup=min(steps - 1, round(warmup_fraction * steps)),
                             min_factor=min_factor)

    return factory
