"""Tile helpers shared by the Triton kernels of every op family (``attent_kernels/<family>/_triton.py``):
the dtype choices of a call, the autotuning configurations, the partial-sum buffers and launch
grids on the host, and the masked row and tile loads and Gram tiles on the device.

Conventions the families' kernels keep with these helpers:
- Tiles are loaded with ``tl.load(..., mask=row_valid & col_in_bounds, other=0)``: a padded or
  out-of-range position is never read, so a NaN there cannot leak into any sum.
- Operands of ``tl.dot`` are cast to one dot dtype (the promotion of the inputs' dtypes; a no-op
  when they already agree). Accumulation is float32, float64 for float64 inputs, as in the
  references; float32 products use IEEE precision (no tf32), so results match the references to
  rounding. bfloat16 and float16 products are exact in float32, only the summation order differs.
  The interpreter's ``tl.dot`` cannot multiply bfloat16 (numpy has no such type), so under
  ``TRITON_INTERPRET=1`` bfloat16 tiles are upcast to float32 first: the same products, exactly.
- Per-example results are written as partial sums to small buffers, one slot per program, and
  reduced with ``torch.sum``: deterministic, no atomics.
- Block sizes are autotuned on GPU, keyed on the sizes rounded up to powers of two (one tuning
  per shape family, so a new sequence length within the family does not re-tune); under the
  interpreter one small configuration is used, because autotuning there is far too slow. The
  choice is made when a family's module is imported.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable

import torch
import triton
import triton.language as tl

from ._checks import accum_dtype
from ._dispatch import interpreter_on

TL_DTYPES = {
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
    torch.float32: tl.float32,
    torch.float64: tl.float64,
}


# ---------------------------------------------------------------------------------------------
# Host side
# ---------------------------------------------------------------------------------------------


def autotune_configs(
    interpreted: dict[str, int], tuned: list[tuple[dict[str, int], int, int]]
) -> list[triton.Config]:
    """One small configuration under the interpreter; on GPU the tuning list of (blocks,
    num_warps, num_stages)."""
    if interpreter_on():
        return [triton.Config(interpreted, num_warps=1, num_stages=1)]
    return [triton.Config(blocks, num_warps=warps, num_stages=stages) for blocks, warps, stages in tuned]


# (t, s) sequence tiling of the kernels that form T x T Gram tiles: the linear ghost norm and
# gradient Gram, the embedding norm.
PAIR_CONFIGS = autotune_configs(
    {"BLOCK_T": 16, "BLOCK_K": 16},
    [
        ({"BLOCK_T": 32, "BLOCK_K": 64}, 4, 3),
        ({"BLOCK_T": 64, "BLOCK_K": 32}, 4, 3),
        ({"BLOCK_T": 64, "BLOCK_K": 64}, 4, 3),
        ({"BLOCK_T": 128, "BLOCK_K": 32}, 8, 3),
        ({"BLOCK_T": 128, "BLOCK_K": 64}, 8, 2),
    ],
)


def tune_key(n: int) -> int:
    """Autotuning key of a size: rounded up to a power of two."""
    return triton.next_power_of_2(max(1, n))


def _block_count(n: int, block: int) -> int:
    """Blocks of ``block`` covering n, at least one: an empty dimension still gets a program,
    which writes its zero."""
    return triton.cdiv(max(n, 1), block)


def tile_grid(*programs: int, **sizes: int) -> Callable[[dict[str, Any]], tuple[int, ...]]:
    """Launch grid of an autotuned kernel: the given program counts, then for each size (keyed by
    its block's name, e.g. ``BLOCK_T=T``) the number of blocks under the configuration run."""
    return lambda meta: (*programs, *(_block_count(n, meta[block]) for block, n in sizes.items()))


def tile_partials(
    B: int, dtype: torch.dtype, device: torch.device, configs: list[triton.Config], **sizes: int
) -> torch.Tensor:
    """Zeroed (B, slots) buffer of per-program partial sums: a slot for every tile of the sizes
    (keyed by their blocks' names, as for ``tile_grid``) under the smallest blocks of the
    configurations, so it holds the tiles of whichever configuration the autotuner picks."""
    slots = math.prod(_block_count(n, min(c.kwargs[block] for c in configs)) for block, n in sizes.items())
    return torch.zeros(B, slots, dtype=dtype, device=device)


def dot_types(*tensors: torch.Tensor) -> tuple[tl.dtype, tl.dtype, str]:
    """(dot dtype, accumulator dtype, tl.dot input precision) for a call on these tensors."""
    common = functools.reduce(torch.promote_types, (t.dtype for t in tensors))
    if common == torch.bfloat16 and interpreter_on():
        common = torch.float32
    dot = TL_DTYPES.get(common, tl.float32)
    precision = "ieee" if dot == tl.float32 else "tf32"
    return dot, TL_DTYPES[accum_dtype(*tensors)], precision


def mask_args(mask: torch.Tensor | None, stand_in: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(pointer, batch stride, position stride) of a bool mask, as an int32 copy (B * T words; the
    float64 tl.dot lowering of Triton 3.8 rejects tiles masked through a byte load); a stand-in
    pointer, never read, when there is no mask."""
    if mask is None:
        return stand_in, 0, 0
    as_int = mask.to(torch.int32)
    return as_int, as_int.stride(0), as_int.stride(1)


# ---------------------------------------------------------------------------------------------
# Device side
# ---------------------------------------------------------------------------------------------


@triton.jit
def rows_valid(mask_base, stride_mt, rows, T, HAS_MASK: tl.constexpr):
    """(BLOCK,) bool: row inside the sequence and, with a mask, not padded."""
    valid = rows < T
    if HAS_MASK:
        valid = valid & (tl.load(mask_base + rows.to(tl.int64) * stride_mt, mask=valid, other=0) != 0)
    return valid


@triton.jit
def load_tile(base, stride_row, stride_col, rows, valid, cols, n_cols, DOT: tl.constexpr):
    """(len(rows), len(cols)) tile in the dot dtype; invalid rows and columns out of range read as 0."""
    ptrs = base + rows.to(tl.int64)[:, None] * stride_row + cols.to(tl.int64)[None, :] * stride_col
    tile = tl.load(ptrs, mask=valid[:, None] & (cols[None, :] < n_cols), other=0.0)
    return tile.to(DOT)


@triton.jit
def gram_tile(
    acc,
    a_base, a_stride_row, a_stride_col, a_rows, a_valid,
    b_base, b_stride_row, b_stride_col, b_rows, b_valid,
    n_cols,
    BLOCK_K: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr,
):
    """acc + A[a_rows] @ B[b_rows]^T: the (len(a_rows), len(b_rows)) tile of row inner products,
    summed over the n_cols features in chunks of BLOCK_K."""
    for c0 in range(0, n_cols, BLOCK_K):
        cols = c0 + tl.arange(0, BLOCK_K)
        a = load_tile(a_base, a_stride_row, a_stride_col, a_rows, a_valid, cols, n_cols, DOT)
        b = load_tile(b_base, b_stride_row, b_stride_col, b_rows, b_valid, cols, n_cols, DOT)
        acc = tl.dot(a, tl.trans(b), acc, input_precision=PRECISION)
    return acc
