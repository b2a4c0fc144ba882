"""The tile helpers shared by the kernels: the block-pair decoding and the grouped tile order
(run on vectors of program ids in one program, under the interpreter without CUDA), and the
shared-memory pruning of the autotuners."""
from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from attent_kernels._triton_tiles import (  # noqa: E402
    SHARED_MEMORY_BYTES,
    block_pair,
    grouped_tile,
    shared_memory_pruning,
)

IDS = 1 << 14


@triton.jit
def _pairs_kernel(k_ptr, tb_ptr, sb_ptr, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    tb, sb = block_pair(tl.load(k_ptr + i))
    tl.store(tb_ptr + i, tb)
    tl.store(sb_ptr + i, sb)


def _decode(k: torch.Tensor) -> tuple[list[int], list[int]]:
    tb = torch.empty_like(k)
    sb = torch.empty_like(k)
    _pairs_kernel[(1,)](k, tb, sb, BLOCK=k.numel())
    return tb.tolist(), sb.tolist()


@triton.jit
def _grouped_kernel(row_ptr, col_ptr, n_rows, n_cols, BLOCK: tl.constexpr, GROUP: tl.constexpr):
    pid = tl.arange(0, BLOCK)
    row, col = grouped_tile(pid, n_rows, n_cols, GROUP)
    tl.store(row_ptr + pid, row)
    tl.store(col_ptr + pid, col)


def test_block_pair_enumerates_the_lower_triangle_in_row_order(device):
    tb, sb = _decode(torch.arange(IDS, dtype=torch.int32, device=device))
    expected = [(t, s) for t in range(200) for s in range(t + 1)][:IDS]
    assert list(zip(tb, sb)) == expected


def test_block_pair_at_row_boundaries_where_float32_sqrt_rounds():
    """k just below, at and past t (t + 1) / 2 for rows t up to 40000 (float32's sqrt of 8 k + 1
    rounds across the boundary from t of a few thousand on): corrected to the exact row."""
    rows = torch.tensor([3000, 4095, 8191, 20000, 30000, 40000]).repeat_interleave(4)
    starts = rows * (rows + 1) // 2
    k = (starts + torch.tensor([-2, -1, 0, 1]).repeat(6)).to(torch.int32)
    block = triton.next_power_of_2(k.numel())
    padded = torch.cat([k, k[-1:].expand(block - k.numel())])
    tb, sb = _decode(padded)
    for i, value in enumerate(k.tolist()):
        t = int(((8 * value + 1) ** 0.5 - 1) // 2)
        t = t - 1 if t * (t + 1) // 2 > value else t + 1 if (t + 1) * (t + 2) // 2 <= value else t
        assert (tb[i], sb[i]) == (t, value - t * (t + 1) // 2), value


@pytest.mark.parametrize("n_rows, n_cols, group", [(1, 1, 8), (5, 3, 2), (17, 9, 8), (3, 40, 8), (8, 8, 8)])
def test_grouped_tile_order_visits_every_tile_once(device, n_rows, n_cols, group):
    block = triton.next_power_of_2(n_rows * n_cols)
    rows = torch.empty(block, dtype=torch.int32, device=device)
    cols = torch.empty_like(rows)
    _grouped_kernel[(1,)](rows, cols, n_rows, n_cols, BLOCK=block, GROUP=group)
    tiles = list(zip(rows.tolist(), cols.tolist()))[: n_rows * n_cols]
    assert sorted(tiles) == [(r, c) for r in range(n_rows) for c in range(n_cols)]
    # Neighbouring programs stay within one group of `group` row tiles.
    assert all(r // group == tiles[i - 1][0] // group for i, (r, _) in enumerate(tiles) if i and i % (group * n_cols))


def test_shared_memory_pruning_drops_only_tiles_above_the_limit_for_the_operand_size():
    prune = shared_memory_pruning(lambda b: 2 * b["BLOCK_T"] * b["BLOCK_K"])["early_config_prune"]
    configs = [triton.Config({"BLOCK_T": t, "BLOCK_K": 64}, num_warps=4, num_stages=3) for t in (32, 128, 256)]
    kept = {dtype: [c.kwargs["BLOCK_T"] for c in prune(configs, {}, OPERAND=dtype)] for dtype in (tl.bfloat16, tl.float32, tl.float64)}
    assert kept == {tl.bfloat16: [32, 128, 256], tl.float32: [32, 128], tl.float64: [32]}
    assert 3 * 2 * 128 * 64 * 8 > SHARED_MEMORY_BYTES >= 3 * 2 * 128 * 64 * 4



def test_every_autotuned_kernel_keeps_its_tuning_on_disk(monkeypatch):
    """``autotune`` asks Triton to cache tuning results across processes (where it can), and every
    family's autotuned kernel is built through it."""
    from attent_kernels import _triton_tiles

    asked = {}
    monkeypatch.setattr(triton, "autotune", lambda **kwargs: asked.update(kwargs) or (lambda fn: fn))
    _triton_tiles.autotune(configs=[], key=["n"])
    assert _triton_tiles.CACHES_TUNING == ("cache_results" in inspect.signature(triton.runtime.autotuner.autotune).parameters)
    assert asked.get("cache_results") is (True if _triton_tiles.CACHES_TUNING else None)
    for path in Path(_triton_tiles.__file__).parent.glob("*/_triton.py"):
        assert "triton.autotune(" not in path.read_text(), f"{path}: build autotuned kernels with _triton_tiles.autotune"
