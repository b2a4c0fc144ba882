"""The Task record every testbed returns, and the direction of each metric."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn
from torch.utils.data import Dataset

from ..optim import adamw, warmup_cosine_steps

__all__ = ["METRIC_GOALS", "TrainDefaults", "ReferenceRecipe", "Task", "higher_is_better"]

# Whether a larger ("max") or a smaller ("min") value of a history metric is better.
METRIC_GOALS: dict[str, str] = {"val_accuracy": "max", "val_loss": "min", "val_ppl": "min", "train_loss": "min"}


def higher_is_better(metric: str) -> bool:
    """True for metrics where larger is better (accuracy), False for losses and perplexity."""
    if metric not in METRIC_GOALS:
        raise ValueError(f"metric must be one of {sorted(METRIC_GOALS)}, got {metric!r}")
    return METRIC_GOALS[metric] == "max"


@dataclass(frozen=True)
class TrainDefaults:
    """A task's default training recipe: AdamW (no decay on biases, norms, position embeddings),
    a linear warm-up over the first ``warmup_epochs / epochs`` of the run's optimizer steps, then
    a cosine decay to 0 at its last step (over the steps the run really takes, a teacher's shorter
    subset epochs and a budget's shorter schedule included), gradient clipping at
    ``max_grad_norm``, an evaluation every ``eval_every`` optimizer steps (and at every epoch end)."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_epochs: int
    eval_every: int | None
    max_grad_norm: float | None = 1.0


@dataclass(frozen=True)
class ReferenceRecipe:
    """How a task's reference model (:class:`attent.Reference`) is built: a small model from
    ``model_factory``, trained on ``holdout`` (a clean Dataset the task supplies, a fraction of the
    pool, or ``"cross-fit"``) with AdamW at ``lr`` in batches of ``batch_size``, early-stopped on its
    validation loss (at most ``max_epochs``, ``patience``)."""

    model_factory: Callable[[], nn.Module]
    holdout: Any
    lr: float = 1e-2
    batch_size: int = 64
    max_epochs: int = 50
    patience: int = 3
    weight_decay: float = 0.0

    def fit(self, task: "Task", seed: int) -> Any:
        """The reference of ``task``'s training pool, drawn from ``seed``."""
        from ..reference import Reference

        return Reference.fit(self.model_factory, task.train, loss=task.loss, holdout=self.holdout, lr=self.lr,
                             batch_size=self.batch_size, max_epochs=self.max_epochs, patience=self.patience,
                             weight_decay=self.weight_decay, seed=seed)


@dataclass(frozen=True)
class Task:
    """A testbed: data, a model factory, the loss, the metric and a training recipe.

    name: the task's name. train, val: map-style datasets of ``(input, target)`` pairs (disjoint).
    model_factory: builds a fresh, randomly initialized model (use :meth:`model` for a seeded one).
    loss: the :func:`attent.fit` loss name (``"cross_entropy"``, ``"lm"`` or ``"mse"``).
    metric: the history key runs are compared on (``"val_accuracy"``, ``"val_loss"``, ...).
    defaults: the training recipe. info: task facts (sizes, and the ground truth of synthetic tasks).
    reference: how to build the task's reference model (the waste testbeds), or None.
    """

    name: str
    train: Dataset
    val: Dataset
    model_factory: Callable[[], nn.Module]
    loss: str
    metric: str
    defaults: TrainDefaults
    info: Mapping[str, Any] = field(default_factory=dict)
    reference: ReferenceRecipe | None = None

    def __post_init__(self) -> None:
        higher_is_better(self.metric)

    @property
    def higher_is_better(self) -> bool:
        """True when a larger ``metric`` is better."""
        return higher_is_better(self.metric)

    def model(self, seed: int) -> nn.Module:
        """A model initialized from ``seed`` (the global RNG is left as it was)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.model_factory()

    def optimizer(self, model: nn.Module) -> torch.optim.AdamW:
        """AdamW at the recipe's learning rate and weight decay (no decay on one-dimensional
        parameters nor on those the model's ``no_weight_decay()`` names)."""
        return adamw(model, lr=self.defaults.lr, weight_decay=self.defaults.weight_decay)

    def lr_schedule(self, epochs: int) -> Any:
        """The recipe's warm-up + cosine schedule as a :func:`attent.fit` factory: per optimizer
        step over the steps the run takes, warming up for the recipe's share of a run of ``epochs``."""
        return warmup_cosine_steps(min(self.defaults.warmup_epochs, epochs - 1) / epochs)
