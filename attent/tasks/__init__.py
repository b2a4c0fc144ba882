"""Testbeds: small training tasks, deterministic under a seed, with nothing to download.

Each factory ``name(*, seed=0, quick=False) -> Task`` returns the training and validation datasets,
a model factory, the loss, the metric runs are compared on and a default training recipe;
``quick=True`` gives a tiny version for smoke tests.

- ``digits``: a timm ViT from scratch on scikit-learn's 8x8 handwritten digits (``val_accuracy``).
- ``digits_augmented``: the same, its training set expanded tenfold by small random rotations,
  shifts and noise: large and redundant data, the regime data pruning targets (``val_accuracy``).
- ``stdlib_lm``: a tiny GPT-2 on the Python standard library's source, byte-level (``val_loss``).
- ``scb``: the Sparse Contextual Bigram task, with its ground truth in ``info`` (``val_loss``).
- ``icl_regression``: in-context linear regression (``val_loss``, the MSE).

The waste testbeds (:mod:`attent.tasks.waste`), where uniform training spends compute on examples
that do not help; each supplies a clean holdout and a small reference model (``Task.reference``):

- ``digits_noisy``, ``digits_flipped``: digits x10 with 30% uniform label noise, with structured flips.
- ``digits_off_target``: digits x10, all 10 classes in the pool, validation on the digits 0-4.
- ``prose_lm``: a byte LM on 30% English prose and 70% Python source, validated on held-out prose.
- ``icl_corrupted``: in-context regression seen once, 30% of the prompts corrupted.

:mod:`attent.tasks.compare` runs training methods on a task at a budget; :mod:`attent.tasks.frontier`
compares them by the quality each reaches for its wall time.
"""
from __future__ import annotations

from typing import Callable

from ._task import METRIC_GOALS, ReferenceRecipe, Task, TrainDefaults, higher_is_better
from .digits import digits, digits_augmented
from .icl_regression import icl_regression
from .scb import scb
from .stdlib_lm import stdlib_lm
from .waste import digits_flipped, digits_noisy, digits_off_target, icl_corrupted, prose_lm

__all__ = ["METRIC_GOALS", "TASKS", "CLEAN_TASKS", "WASTE_TASKS", "Task", "TrainDefaults", "ReferenceRecipe",
           "higher_is_better", "make_task", "digits", "digits_augmented", "stdlib_lm", "scb", "icl_regression",
           "digits_noisy", "digits_flipped", "digits_off_target", "prose_lm", "icl_corrupted"]

CLEAN_TASKS: tuple[str, ...] = ("digits", "digits_augmented", "stdlib_lm", "scb", "icl_regression")
WASTE_TASKS: tuple[str, ...] = ("digits_noisy", "digits_flipped", "digits_off_target", "prose_lm", "icl_corrupted")
TASKS: dict[str, Callable[..., Task]] = {
    "digits": digits, "digits_augmented": digits_augmented, "stdlib_lm": stdlib_lm, "scb": scb,
    "icl_regression": icl_regression, "digits_noisy": digits_noisy, "digits_flipped": digits_flipped,
    "digits_off_target": digits_off_target, "prose_lm": prose_lm, "icl_corrupted": icl_corrupted,
}


def make_task(name: str, *, seed: int = 0, quick: bool = False) -> Task:
    """The task called ``name`` (one of ``TASKS``), drawn from ``seed``, tiny when ``quick``."""
    if name not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {name!r}")
    return TASKS[name](seed=seed, quick=quick)
