"""Digits: a timm ViT trained from scratch on scikit-learn's handwritten digits (shipped with the package).

1,797 grey 8x8 images of the digits 0-9, split once (stratified, ``random_state=0``) into 1,437
training and 360 validation images, whatever the seed. Pixels (0..16) are scaled to [0, 1] and
standardized with the training set's mean and standard deviation. The model is timm's
``vit_tiny_patch16_224`` architecture at 8x8 pixels, 2x2 patches (16 patch tokens and a class
token), width 48, 2 blocks, 4 heads; a full-data run of the default recipe reaches about 95%
validation accuracy in about a minute on a 2-core CPU.

``digits_augmented`` is the regime data pruning targets: training data large and redundant, so
that full data at the recipe is wasteful. Each of the 1,437 training images comes ``COPIES`` (10)
times, the original and nine drawn from ``seed`` with a small random rotation (within
``MAX_DEGREES``), shift (within ``MAX_SHIFT`` pixels) and pixel noise (``NOISE`` of the pixel
range): 14,370 training images; validation is the same 360 untouched images; the recipe is 6
epochs.
"""
from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from .._extras import require
from ..integrations.timm import build_vit
from ._task import Task, TrainDefaults

_datasets = require("sklearn.datasets", "tasks")
_model_selection = require("sklearn.model_selection", "tasks")

__all__ = ["IMAGE_SIZE", "NUM_CLASSES", "VAL_FRACTION", "SPLIT_SEED", "COPIES", "digits", "digits_augmented"]

IMAGE_SIZE = 8
NUM_CLASSES = 10
VAL_FRACTION = 0.2
SPLIT_SEED = 0
PIXEL_MAX = 16.0
QUICK_TRAIN, QUICK_VAL = 120, 60
COPIES, MAX_DEGREES, MAX_SHIFT, NOISE = 10, 12.0, 1.0, 0.05


def digits(*, seed: int = 0, quick: bool = False) -> Task:
    """The digits task.

    Args:
        seed: unused by the data (the split is fixed); kept for the common task signature, the
            model's initialization comes from the seed given to ``Task.model``.
        quick: a tiny version for smoke tests (120 training and 60 validation images, a one-block
            ViT of width 16, 2 epochs).

    Returns:
        Task with items ``(image (1, 8, 8) float32, label () int64)``, loss ``"cross_entropy"`` and
        metric ``"val_accuracy"``.
    """
    bunch = _datasets.load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / PIXEL_MAX
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    train_idx, val_idx = _model_selection.train_test_split(
        torch.arange(labels.numel()).numpy(), test_size=VAL_FRACTION, stratify=bunch.target, random_state=SPLIT_SEED
    )
    train_idx, val_idx = torch.as_tensor(train_idx), torch.as_tensor(val_idx)
    if quick:
        train_idx, val_idx = train_idx[:QUICK_TRAIN], val_idx[:QUICK_VAL]
    mean, std = images[train_idx].mean(), images[train_idx].std()
    standardized = (images - mean) / std
    size = dict(embed_dim=16, depth=1, num_heads=2) if quick else dict(embed_dim=48, depth=2, num_heads=4)
    model_factory = partial(
        build_vit, num_classes=NUM_CLASSES, img_size=IMAGE_SIZE, patch_size=2, in_chans=1, mlp_ratio=2.0, **size
    )
    defaults = (
        TrainDefaults(epochs=2, batch_size=32, lr=2e-3, weight_decay=0.05, warmup_epochs=0, eval_every=2)
        if quick
        else TrainDefaults(epochs=40, batch_size=32, lr=2e-3, weight_decay=0.05, warmup_epochs=2, eval_every=15)
    )
    return Task(
        name="digits",
        train=TensorDataset(standardized[train_idx], labels[train_idx]),
        val=TensorDataset(standardized[val_idx], labels[val_idx]),
        model_factory=model_factory,
        loss="cross_entropy",
        metric="val_accuracy",
        defaults=defaults,
        info={"train_indices": train_idx, "val_indices": val_idx, "num_classes": NUM_CLASSES,
              "pixel_mean": float(mean), "pixel_std": float(std)},
    )


def _jittered(images: torch.Tensor, copies: int, generator: torch.Generator) -> torch.Tensor:
    """(copies * n, 1, 8, 8): the images, then ``copies - 1`` rounds of randomly rotated, shifted and
    noised versions of them (bilinear resampling, zeros outside), in [0, 1] pixel units."""
    n = images.shape[0]
    rounds = [images]
    for _ in range(copies - 1):
        angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(MAX_DEGREES)
        shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * MAX_SHIFT * 2 / IMAGE_SIZE
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        moved = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        noise = torch.randn(moved.shape, generator=generator) * NOISE
        rounds.append((moved + noise).clamp(0.0, 1.0))
    return torch.cat(rounds)


def digits_augmented(*, seed: int = 0, quick: bool = False) -> Task:
    """The digits task with its training set expanded ``COPIES``-fold by jitter (see the module
    docstring); the copies are drawn from ``seed``. ``quick``: the quick digits expanded 3-fold."""
    base = digits(quick=quick)
    train_idx = base.info["train_indices"]
    bunch = _datasets.load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1)[train_idx] / PIXEL_MAX
    labels = torch.tensor(bunch.target, dtype=torch.int64)[train_idx]
    copies = 3 if quick else COPIES
    expanded = _jittered(images, copies, torch.Generator().manual_seed(seed))
    standardized = (expanded - base.info["pixel_mean"]) / base.info["pixel_std"]
    defaults = base.defaults if quick else TrainDefaults(epochs=6, batch_size=32, lr=2e-3, weight_decay=0.05,
                                                         warmup_epochs=1, eval_every=150)
    return Task(
        name="digits_augmented",
        train=TensorDataset(standardized, labels.repeat(copies)),
        val=base.val,
        model_factory=base.model_factory,
        loss="cross_entropy",
        metric="val_accuracy",
        defaults=defaults,
        info={**base.info, "copies": copies, "source_index": torch.arange(len(train_idx)).repeat(copies)},
    )
