"""timm recipe: a tiny ViT from scratch on scikit-learn digits, with and without a teacher."""
import math

import pytest
import torch
from sklearn.datasets import load_digits
from torch.utils.data import TensorDataset

from attent.integrations.timm import build_vit, train_vit
from attent.teacher import Teacher

TINY = dict(num_classes=10, img_size=8, patch_size=4, in_chans=1, embed_dim=16, depth=1, num_heads=2)


def _digits(start, count):
    bunch = load_digits()
    images = torch.tensor(bunch.images[start : start + count], dtype=torch.float32)[:, None] / 16.0
    return TensorDataset(images, torch.tensor(bunch.target[start : start + count]))


def test_train_vit_with_a_teacher_end_to_end(tmp_path):
    train, val = _digits(0, 61), _digits(100, 23)
    teacher = Teacher(len(train), when="always", warmup_epochs=1, ratio=0.5, interval=1, epochs=3)
    model, result = train_vit(train, eval_data=val, teacher=teacher, score="fgrad", epochs=3, batch_size=16, warmup_epochs=1,
                              progress=False, out_dir=tmp_path, **TINY)
    assert model.patch_embed.proj.kernel_size == (4, 4) and len(model.blocks) == 1 and model.head.out_features == 10
    assert [r["examples_seen"] for r in result.history] == [61, 61 + 30, 61 + 30 + 30]
    assert all(0.0 <= r["val_accuracy"] <= 1.0 and math.isfinite(r["val_loss"]) for r in result.history)
    assert (tmp_path / "score_histograms.png").stat().st_size > 0


def test_train_vit_is_reproducible_under_its_seed():
    train = _digits(0, 21)
    first, _ = train_vit(train, epochs=2, batch_size=8, warmup_epochs=1, progress=False, seed=3, **TINY)
    second, _ = train_vit(train, epochs=2, batch_size=8, warmup_epochs=1, progress=False, seed=3, **TINY)
    assert all(torch.equal(p, q) for p, q in zip(first.parameters(), second.parameters()))


def test_build_vit_rejects_mismatched_sizes():
    with pytest.raises(ValueError, match="multiple of patch_size"):
        build_vit(**{**TINY, "img_size": 9})
    with pytest.raises(ValueError, match="multiple of num_heads"):
        build_vit(**{**TINY, "num_heads": 3})
