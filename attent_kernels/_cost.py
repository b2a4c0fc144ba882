"""Cost model of the Triton kernels on a GPU: which kernel (path) a call runs, and how finely a
call is split so that enough programs fill the device.

A kernel's estimated time is ``waves * work per program``: the flops one program does with its
operands padded to whole tiles, times the number of waves in which the grid's programs run
(``ceil(programs / (SM_COUNT * RESIDENT_PROGRAMS))``), so a grid too small to fill the device
and tiles padded past the data both count. The ghost kernels do half of the Gram products (the
block pairs sb <= tb), and that is what is counted.

Every constant below is estimated for an H100 / H200 (132 SMs), not measured: they are to be
measured on a GPU (``bench/gpu/check.sh`` records the timings that calibrate them).
"""
from __future__ import annotations

import math
from typing import Sequence

# Streaming multiprocessors of an H100 / H200 SXM. Estimated, to be measured on a GPU.
SM_COUNT = 132
# Programs of a 4-8 warp tile kernel resident on one SM at a time. Estimated, to be measured on a GPU.
RESIDENT_PROGRAMS = 2
# Waves of programs a split call aims for (the vocabulary split of cross-entropy, the batch
# slices of the fused weight gradient). Estimated, to be measured on a GPU.
TARGET_WAVES = 2
TARGET_PROGRAMS = SM_COUNT * RESIDENT_PROGRAMS * TARGET_WAVES

# Tiles the model assumes the autotuner picks at large shapes. Estimated, to be measured on a GPU.
PAIR_BLOCK_T = 64
FEATURE_BLOCK = 128
FEATURE_BLOCK_T = 32
SORTED_BLOCK_T = 64
# Cost of the sort of the embedding path per id, in flop-equivalents. Estimated, to be measured on a GPU.
SORT_COST_PER_ID = 256
# How fast the fused weight-gradient kernel runs its GEMM tiles against cuBLAS's weight-gradient
# GEMM (it restarts its pipeline and reduces a norm per example). Estimated, to be measured on a GPU.
FUSED_GEMM_EFFICIENCY = 0.8
# How much slower the materialized gradient Gram (float32 matmuls through PyTorch) runs per flop
# than the 16-bit tensor-core tiles of the pair kernel. Estimated, to be measured on a GPU.
MATERIALIZE_SLOWDOWN = 4.0


def _blocks(n: int, block: int) -> int:
    return max(1, math.ceil(n / block))


def _padded(n: int, block: int) -> int:
    return _blocks(n, block) * block


def waves(programs: int) -> int:
    return math.ceil(max(programs, 1) / (SM_COUNT * RESIDENT_PROGRAMS))


def _pairs(T: int) -> int:
    n = _blocks(T, PAIR_BLOCK_T)
    return n * (n + 1) // 2


def ghost_cost(B: int, T: int, d: int, widths: Sequence[int]) -> float:
    """Ghost kernel: one program per (example, block pair sb <= tb) forms an x Gram tile over d
    and a g Gram tile over each p_k."""
    per_program = 2.0 * PAIR_BLOCK_T**2 * (_padded(d, PAIR_BLOCK_T) + sum(_padded(p, PAIR_BLOCK_T) for p in widths))
    return waves(B * _pairs(T)) * per_program


def direct_cost(B: int, T: int, d: int, widths: Sequence[int]) -> float:
    """Direct kernel, one launch per layer: one program per (example, p tile, d tile) accumulates
    its tile of g^T x over the sequence padded to FEATURE_BLOCK_T rows."""
    def one(p: int) -> float:
        programs = B * _blocks(p, FEATURE_BLOCK) * _blocks(d, FEATURE_BLOCK)
        return waves(programs) * 2.0 * FEATURE_BLOCK**2 * _padded(T, FEATURE_BLOCK_T)

    return sum(one(p) for p in widths)


def linear_path(B: int, T: int, d: int, widths: Sequence[int]) -> str:
    """The path of ``path="auto"``: "closed" (T = 1: ||x||^2 ||g||^2, no tiles at all), else the
    cheaper of "ghost" and "direct"."""
    if T == 1:
        return "closed"
    return "ghost" if ghost_cost(B, T, d, widths) <= direct_cost(B, T, d, widths) else "direct"


def fused_weight_grad_wins(B: int, T: int, d: int, p: int) -> bool:
    """Whether the fused kernel (the weight gradient and the norms in one pass, each example's T
    padded to FEATURE_BLOCK_T rows) beats the separate computation: the weight-gradient GEMM
    through cuBLAS over the B T rows, then the norms on the path ``linear_path`` picks."""
    slots = SM_COUNT * RESIDENT_PROGRAMS
    gemm = 2.0 * B * T * d * p / slots
    fused = 2.0 * B * _padded(T, FEATURE_BLOCK_T) * d * p / slots / FUSED_GEMM_EFFICIENCY
    path = linear_path(B, T, d, [p])
    norms = 0.0 if path == "closed" else (ghost_cost if path == "ghost" else direct_cost)(B, T, d, [p])
    return fused <= gemm + norms


def gram_materializes(B: int, T: int, B2: int, T2: int, d: int, p: int, symmetric: bool) -> bool:
    """Whether the gradient Gram is cheaper with the per-example gradients materialized (g_i^T x_i
    formed tile by tile, 2 (B T + B2 T2) d p flops, then multiplied, 2 B B2 d p, in float32
    through PyTorch) than with the pair kernel (a program per (row slice, j, i) walks its block
    pairs: 2 T T2 (d + p) per example pair). Materializing wins for long sequences of narrow
    layers (d p small against T (d + p)); the pairs for short sequences of wide ones."""
    pairs = B * (B + 1) // 2 if symmetric else B * B2
    slice_rows, slices = aligned_slices(T, pairs, PAIR_BLOCK_T)
    per_program = 2.0 * min(slice_rows, _padded(T, PAIR_BLOCK_T)) * _padded(T2, PAIR_BLOCK_T) * (d + p)
    flops = 2.0 * (B * T + B2 * T2) * d * p + 2.0 * B * B2 * d * p
    materialize = MATERIALIZE_SLOWDOWN * flops / (SM_COUNT * RESIDENT_PROGRAMS)
    return materialize < waves(pairs * slices) * per_program


def embedding_sorts(B: int, T: int, d: int) -> bool:
    """Whether the sorted embedding kernel (sort each example's ids, then one program per
    (example, d tile) sums each run of equal ids in order: O(T d)) beats the pair kernel
    (O(T^2 d) over the block pairs sb <= tb)."""
    pair = waves(B * _pairs(T)) * 2.0 * PAIR_BLOCK_T**2 * _padded(d, PAIR_BLOCK_T)
    sorted_programs = B * _blocks(d, FEATURE_BLOCK)
    walk = waves(sorted_programs) * 2.0 * _padded(T, SORTED_BLOCK_T) * SORTED_BLOCK_T * FEATURE_BLOCK
    sort = SORT_COST_PER_ID * B * T * math.log2(max(T, 2)) / (SM_COUNT * RESIDENT_PROGRAMS)
    return walk + sort < pair


def splits(work_programs: int, most: int) -> int:
    """How many slices to split a call into so that ``work_programs`` programs per slice reach
    TARGET_PROGRAMS: at least one, at most ``most``."""
    return max(1, min(most, math.ceil(TARGET_PROGRAMS / max(work_programs, 1))))


def aligned_slices(n: int, work_programs: int, align: int) -> tuple[int, int]:
    """(length, count): the range [0, n) cut into ``count`` slices of ``length``, a multiple of
    ``align`` (the largest tile, so that no tile of any configuration crosses a slice), enough
    slices for ``work_programs`` programs per slice to reach TARGET_PROGRAMS."""
    wanted = splits(work_programs, _blocks(n, align))
    length = _blocks(_blocks(n, wanted), align) * align
    return length, _blocks(n, length)
