"""In-context linear regression (Garg et al. 2022; von Oswald et al. 2023): a transformer learns to
fit a fresh linear function from the examples in its prompt.

Each prompt (x_1, y_1, ..., x_k, y_k, x_query) has its own weight vector w ~ N(0, I_dim) and
``pairs + 1`` inputs x ~ N(0, I_dim); y = w . x / sqrt(dim) (unit variance, no noise). It is laid
out as k + 1 tokens of size dim + 2, one per example (von Oswald et al.'s layout): a pair token is
[x_i, y_i, 0], the query token [x_query, 0, 1]. The target is y_query: with k >= dim pairs it is
determined by the prompt (least squares on the pairs recovers w exactly), so the Bayes error is 0;
predicting 0 scores an MSE of 1. Training and validation prompts are drawn from the seed (disjoint
draws). The metric is the validation MSE.
"""
from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn
from torch.utils.data import TensorDataset

from ._sequence_model import LastPositionTransformer
from ._task import Task, TrainDefaults

__all__ = ["make_prompts", "icl_regression"]


def make_prompts(count: int, *, dim: int, pairs: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw ``count`` prompts.

    Returns:
        prompts: (count, pairs + 1, dim + 2) float32 token sequences (layout in the module docstring).
        targets: (count, 1) float32 y_query.
        weights: (count, dim) float32 the w of each prompt.
    """
    if dim < 1 or pairs < 1 or count < 1:
        raise ValueError(f"count, dim and pairs must be positive, got count={count}, dim={dim}, pairs={pairs}")
    weights = torch.randn(count, dim, generator=generator)
    xs = torch.randn(count, pairs + 1, dim, generator=generator)
    ys = torch.einsum("npd,nd->np", xs, weights) / math.sqrt(dim)
    prompts = torch.zeros(count, pairs + 1, dim + 2)
    prompts[:, :, :dim] = xs
    prompts[:, :pairs, dim] = ys[:, :pairs]
    prompts[:, pairs, dim + 1] = 1.0
    return prompts, ys[:, pairs:], weights


def _build_model(*, dim: int, pairs: int, width: int, depth: int, heads: int) -> LastPositionTransformer:
    return LastPositionTransformer(nn.Linear(dim + 2, width), width=width, depth=depth, heads=heads, max_len=pairs + 1,
                                   out_features=1)


def icl_regression(*, seed: int = 0, quick: bool = False, dim: int = 5, pairs: int = 11) -> Task:
    """The in-context linear regression task.

    Args:
        seed: draws the prompts.
        quick: a tiny version for smoke tests (few prompts, a one-block model, 2 epochs).
        dim: the inputs' dimension.
        pairs: (x, y) pairs per prompt before the query.

    Returns:
        Task with items ``(prompt (pairs + 1, dim + 2) float32, y_query (1,) float32)``, loss
        ``"mse"`` and metric ``"val_loss"`` (the validation MSE).
    """
    n_train, n_val = (128, 64) if quick else (8192, 1024)
    generator = torch.Generator().manual_seed(seed)
    train_prompts, train_targets, train_weights = make_prompts(n_train, dim=dim, pairs=pairs, generator=generator)
    val_prompts, val_targets, val_weights = make_prompts(n_val, dim=dim, pairs=pairs, generator=generator)
    size = dict(width=16, depth=1, heads=2) if quick else dict(width=64, depth=3, heads=4)
    defaults = (
        TrainDefaults(epochs=2, batch_size=32, lr=1e-3, weight_decay=0.01, warmup_epochs=0, eval_every=2)
        if quick
        else TrainDefaults(epochs=20, batch_size=64, lr=1e-3, weight_decay=0.01, warmup_epochs=1, eval_every=32)
    )
    return Task(
        name="icl_regression",
        train=TensorDataset(train_prompts, train_targets),
        val=TensorDataset(val_prompts, val_targets),
        model_factory=partial(_build_model, dim=dim, pairs=pairs, **size),
        loss="mse",
        metric="val_loss",
        defaults=defaults,
        info={"dim": dim, "pairs": pairs, "train_weights": train_weights, "val_weights": val_weights},
    )
