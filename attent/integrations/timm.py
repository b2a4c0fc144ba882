"""timm recipe: a Vision Transformer trained from scratch, with or without an AtteNT teacher.

    model, result = train_vit(train_data, num_classes=10, img_size=16, patch_size=4, in_chans=1,
                              eval_data=val_data, teacher=Teacher(len(train_data), epochs=30), epochs=30)

The model is timm's ``vit_tiny_patch16_224`` architecture built with ``pretrained=False`` at the
given image size, patch size and width (nothing is downloaded); training is the usual from-scratch
ViT recipe: AdamW with decoupled weight decay on weights only (not on biases, norms, position
embeddings or the class token), linear warm-up then cosine decay over epochs, gradient clipping.
The schedule runs in epochs so that a teacher's shorter subset epochs do not stretch it.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from .._extras import require
from ..optim import adamw, warmup_cosine
from ..trainer import FitResult, fit

timm = require("timm", "timm")

__all__ = ["ARCHITECTURE", "build_vit", "train_vit"]

ARCHITECTURE = "vit_tiny_patch16_224"


def build_vit(
    *,
    num_classes: int,
    img_size: int,
    patch_size: int,
    in_chans: int = 3,
    embed_dim: int = 192,
    depth: int = 12,
    num_heads: int = 3,
    mlp_ratio: float = 4.0,
    drop_path_rate: float = 0.0,
    **model_kwargs: Any,
) -> nn.Module:
    """A randomly initialized timm ViT (``vit_tiny_patch16_224``'s architecture at these sizes).

    Args:
        num_classes: classifier outputs.
        img_size: side of the square input images (must be a multiple of ``patch_size``).
        patch_size: side of the square patches.
        in_chans: image channels.
        embed_dim, depth, num_heads, mlp_ratio, drop_path_rate: transformer size and regularization.
        model_kwargs: further ``timm.create_model`` keyword arguments.

    Returns:
        A model mapping (B, in_chans, img_size, img_size) images to (B, num_classes) logits.
    """
    if img_size % patch_size:
        raise ValueError(f"img_size={img_size} must be a multiple of patch_size={patch_size}")
    if embed_dim % num_heads:
        raise ValueError(f"embed_dim={embed_dim} must be a multiple of num_heads={num_heads}")
    return timm.create_model(
        ARCHITECTURE, pretrained=False, num_classes=num_classes, img_size=img_size, patch_size=patch_size,
        in_chans=in_chans, embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
        drop_path_rate=drop_path_rate, **model_kwargs,
    )


def train_vit(
    train_data: Dataset,
    *,
    num_classes: int,
    img_size: int,
    patch_size: int,
    in_chans: int = 3,
    eval_data: Dataset | None = None,
    teacher: Any = None,
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    warmup_epochs: int = 2,
    max_grad_norm: float | None = 1.0,
    embed_dim: int = 192,
    depth: int = 12,
    num_heads: int = 3,
    drop_path_rate: float = 0.0,
    model_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
    **fit_options: Any,
) -> tuple[nn.Module, FitResult]:
    """Train a ViT from scratch on ``(image (C, H, W) float, label int)`` pairs with :func:`attent.fit`.

    Args:
        train_data: map-style dataset of (image, label) pairs.
        num_classes, img_size, patch_size, in_chans: the task's shape.
        eval_data: validation pairs (``val_loss`` and ``val_accuracy`` every epoch).
        teacher: an ``attent.Teacher`` for ``len(train_data)`` examples, or None for full-data training.
        epochs, batch_size, lr, weight_decay, warmup_epochs, max_grad_norm: the recipe's
            hyper-parameters (AdamW, warm-up + cosine per epoch, gradient clipping).
        embed_dim, depth, num_heads, drop_path_rate, model_kwargs: the model (see :func:`build_vit`).
        seed: the model is initialized under ``torch.manual_seed(seed)`` and ``fit`` runs with it.
        fit_options: further :func:`attent.fit` options (device, amp, out_dir, progress, max_time, ...).

    Returns:
        (model, FitResult).
    """
    torch.manual_seed(seed)
    model = build_vit(
        num_classes=num_classes, img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
        depth=depth, num_heads=num_heads, drop_path_rate=drop_path_rate, **(model_kwargs or {}),
    )
    optimizer = adamw(model, lr=lr, weight_decay=weight_decay)
    scheduler = warmup_cosine(optimizer, total=epochs, warmup=warmup_epochs)
    result = fit(
        model, train_data, loss="cross_entropy", optimizer=optimizer, teacher=teacher, epochs=epochs,
        batch_size=batch_size, eval_data=eval_data, lr_scheduler=scheduler, lr_scheduler_interval="epoch",
        max_grad_norm=max_grad_norm, seed=seed, **fit_options,
    )
    return model, result
