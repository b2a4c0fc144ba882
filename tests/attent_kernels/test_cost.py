"""The cost model of the Triton kernels (attent_kernels/_cost.py): the choices it makes at the
shapes the kernels issue names, and the splits it asks for."""
from __future__ import annotations

import pytest

from attent_kernels import _cost


def test_t1_takes_the_closed_form_and_long_sequences_of_narrow_layers_the_direct_path():
    assert _cost.linear_path(8, 1, 4096, [4096]) == "closed"
    assert _cost.linear_path(64, 197, 768, [768]) == "ghost"  # ViT-B/16
    assert _cost.linear_path(8, 512, 4096, [11008]) == "ghost"  # LLaMA-7B at T = 512
    assert _cost.linear_path(8, 8192, 256, [256]) == "direct"


def test_ghost_is_credited_with_half_the_gram_and_the_grid_waves():
    # T doubling quadruples the block pairs; with the device full the cost follows them.
    short, long = _cost.ghost_cost(64, 1024, 768, [768]), _cost.ghost_cost(64, 2048, 768, [768])
    assert long == pytest.approx(4 * short, rel=0.05)
    # Below one wave the grid does not fill the device: one example costs what a full wave does.
    assert _cost.ghost_cost(1, 64, 768, [768]) == _cost.ghost_cost(_cost.SM_COUNT * _cost.RESIDENT_PROGRAMS, 64, 768, [768])


def test_gram_pairs_for_short_sequences_of_wide_layers_and_materializes_long_narrow_ones():
    assert not _cost.gram_materializes(8, 16, 8, 16, 4096, 4096, symmetric=True)
    assert _cost.gram_materializes(4, 4096, 4, 4096, 64, 64, symmetric=True)


def test_long_sequences_sort_the_embedding_ids():
    assert _cost.embedding_sorts(8, 4096, 4096)


@pytest.mark.parametrize("n, programs, align", [(1, 1, 64), (50257, 64, 256), (300, 1, 64), (4096, 10**6, 128), (0, 3, 16)])
def test_aligned_slices_cover_the_range_in_whole_tiles(n, programs, align):
    length, count = _cost.aligned_slices(n, programs, align)
    assert length % align == 0 and count >= 1
    assert (count - 1) * length < max(n, 1) <= count * length
    assert count == 1 or programs * (count - 1) < _cost.TARGET_PROGRAMS


def test_splits_stay_between_one_and_the_most():
    assert _cost.splits(10**6, 8) == 1
    assert _cost.splits(1, 8) == 8
    assert _cost.splits(0, 3) == 3


def test_fused_weight_gradient_against_the_gemm_then_the_norms():
    assert not _cost.fused_weight_grad_wins(8, 512, 4096, 11008)  # LLaMA-7B, T = 512: GEMM + ghost
    assert _cost.fused_weight_grad_wins(8, 4096, 4096, 11008)  # T = 4096: the norms cost as much as the GEMM
    assert not _cost.fused_weight_grad_wins(64, 1, 768, 768)  # T = 1: the closed form is free
