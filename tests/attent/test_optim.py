"""Generic optimizer and schedule helpers."""
import math

import pytest
import torch

from attent.optim import adamw, warmup_cosine

timm_vit = pytest.importorskip("attent.integrations.timm")
TINY = dict(num_classes=10, img_size=8, patch_size=4, in_chans=1, embed_dim=16, depth=1, num_heads=2)


def build_vit(**kwargs):
    return timm_vit.build_vit(**kwargs)


def test_adamw_decays_matrices_only():
    model = build_vit(**TINY)
    decay, no_decay = adamw(model, lr=1e-3, weight_decay=0.05).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert {"pos_embed", "cls_token", "head.bias", "norm.weight"} <= {names[id(p)] for p in no_decay["params"]}
    assert all(p.dim() >= 2 for p in decay["params"]) and "pos_embed" not in {names[id(p)] for p in decay["params"]}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_warmup_cosine_factors():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = warmup_cosine(optimizer, total=6, warmup=2)
    rates = []
    for _ in range(6):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [0.5, 1.0] + [0.5 * (1 + math.cos(math.pi * k / 3)) for k in range(4)]
    assert rates == pytest.approx(expected)
    with pytest.raises(ValueError, match=r"warmup must be an integer in \[0, total=3\), got 3"):
        warmup_cosine(optimizer, total=3, warmup=3)
    with pytest.raises(ValueError, match="total must be a positive integer"):
        warmup_cosine(optimizer, total=0, warmup=0)
