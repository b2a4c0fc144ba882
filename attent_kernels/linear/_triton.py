"""Triton kernels for the linear family: the same functions, signatures and results as
``_reference`` (inputs arrive validated and 3-D: x (B, T, d), g (B, T, p), mask (B, T) bool or
None), computed in fused tiles. They keep the conventions of ``attent_kernels/_triton_tiles.py``
and share its helpers: masked positions are never read, the tl.dot dtype policy of
``dot_types`` (16-bit tensor-core dots for any 16-bit input, TF32 for float32 when PyTorch allows
it, float32 accumulation), per-program partial sums reduced with ``torch.sum`` (no atomics),
the example index slowest in every grid, autotuned tiles on GPU and one small configuration
under the interpreter. Which kernel ``path="auto"`` runs, and how finely a call is split, is
the cost model of ``attent_kernels/_cost.py``.
"""
from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from .. import _cost
from .._checks import accum_dtype
from .._dispatch import interpreter_on
from .._triton_tiles import (
    PAIR_CONFIGS,
    PAIR_PRUNING,
    TILE_GROUP,
    autotune,
    autotune_configs,
    dot_types,
    example_pair,
    feature_grid,
    feature_slots,
    feature_tiles,
    gram_tile,
    grouped_tile,
    largest_block,
    load_tile,
    mask_args,
    operand_dtype,
    pair_grid,
    pair_slots,
    partials,
    rows_valid,
    shared_memory_pruning,
    tune_key,
)
from . import _reference

# (p, d) output-feature tiling, shared by the direct norm and the fused weight gradient.
_FEATURE_CONFIGS = autotune_configs(
    {"BLOCK_P": 16, "BLOCK_D": 16, "BLOCK_T": 16},
    [
        ({"BLOCK_P": 64, "BLOCK_D": 64, "BLOCK_T": 32}, 4, 3),
        ({"BLOCK_P": 128, "BLOCK_D": 64, "BLOCK_T": 32}, 4, 3),
        ({"BLOCK_P": 64, "BLOCK_D": 128, "BLOCK_T": 32}, 4, 3),
        ({"BLOCK_P": 128, "BLOCK_D": 128, "BLOCK_T": 32}, 8, 3),
        ({"BLOCK_P": 128, "BLOCK_D": 128, "BLOCK_T": 64}, 8, 3),
        ({"BLOCK_P": 128, "BLOCK_D": 256, "BLOCK_T": 32}, 8, 3),
    ],
)
# The fused weight gradient's: the same tiles but the widest (its two (BLOCK_P, BLOCK_D) float32
# accumulators, the example's and the running sum, spill registers at 128 x 256), each run one
# program per unit or persistent (the autotuner measures which pays at a shape). Under the
# interpreter the persistent loop, so the tests walk it (several units per program where they
# shrink the device).
_FUSED_CONFIGS = [
    triton.Config({**c.kwargs, "PERSISTENT": persistent}, num_warps=c.num_warps, num_stages=c.num_stages)
    for c in _FEATURE_CONFIGS if c.kwargs["BLOCK_P"] * c.kwargs["BLOCK_D"] <= 128 * 128
    for persistent in ((1,) if interpreter_on() else (0, 1))
]
# The ghost norm's: the pair tiles, and for long sequences (T in the thousands: many block pairs
# per example, each a long d- and p-chunk loop) the largest tiles with deeper pipelines (a
# 128 x 128 chunk spills registers for three projections under autocast).
_GHOST_CONFIGS = PAIR_CONFIGS + (
    [] if interpreter_on() else
    [triton.Config(blocks, num_warps=8, num_stages=stages) for blocks, stages in (
        ({"BLOCK_T": 128, "BLOCK_K": 64}, 3),
        ({"BLOCK_T": 128, "BLOCK_K": 32}, 4),
    )]
)
# Operand elements of one pipeline stage: BLOCK_T rows of g (BLOCK_P) and of x (BLOCK_D).
_FEATURE_PRUNING = shared_memory_pruning(lambda b: b["BLOCK_T"] * (b["BLOCK_P"] + b["BLOCK_D"]))


# ---------------------------------------------------------------------------------------------
# Device helpers
# ---------------------------------------------------------------------------------------------


@triton.jit
def _feature_tile(pid, p, d, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):
    """(outer, tile, tile_d, p_cols, d_cols) of program pid of a ``feature_grid``: the example or
    slice (slowest), the (p, d) tile index, in grouped order, its d tile and its columns."""
    n_p = tl.maximum(tl.cdiv(p, BLOCK_P), 1)
    n_d = tl.maximum(tl.cdiv(d, BLOCK_D), 1)
    tile = pid % (n_p * n_d)
    tile_p, tile_d = grouped_tile(tile, n_p, n_d, TILE_GROUP)
    p_cols = tile_p * BLOCK_P + tl.arange(0, BLOCK_P)
    return pid // (n_p * n_d), tile, tile_d, p_cols, tile_d * BLOCK_D + tl.arange(0, BLOCK_D)


@triton.jit
def _example_weight_grad_tile(
    acc, g_sum, sum_g,
    x_base, stride_xt, stride_xd, d_cols, d,
    g_base, stride_gt, stride_gp, p_cols, p,
    mask_base, stride_mt, T,
    HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_T: tl.constexpr,
    OPERAND: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr,
):
    """One example's tile of its weight gradient, acc + g[:, p_cols]^T x[:, d_cols] summed over
    the sequence in chunks of BLOCK_T, and (HAS_BIAS, in the program where sum_g holds) g_sum +
    sum_t g[t, p_cols]."""
    for t0 in range(0, T, BLOCK_T):
        rows = t0 + tl.arange(0, BLOCK_T)
        valid = rows_valid(mask_base, stride_mt, rows, T, HAS_MASK)
        x = load_tile(x_base, stride_xt, stride_xd, rows, valid, d_cols, d, OPERAND, DOT)
        g = load_tile(g_base, stride_gt, stride_gp, rows, valid, p_cols, p, OPERAND, DOT)
        acc = tl.dot(tl.trans(g), x, acc, input_precision=PRECISION)
        if HAS_BIAS:
            if sum_g:
                g_sum += tl.sum(g.to(g_sum.dtype), axis=0)
    return acc, g_sum


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


@autotune(
    configs=_GHOST_CONFIGS, key=["tune_T", "tune_d", "tune_p"], prune_configs_by=PAIR_PRUNING, reset_to_zero=["partial_ptr"]
)
@triton.jit
def _ghost_norm_kernel(
    x_ptr, stride_xb, stride_xt, stride_xd,
    g_ptrs, stride_gb, stride_gt, stride_gp, widths,
    mask_ptr, stride_mb, stride_mt,
    partial_ptr, stride_layer, stride_partial,
    T, d, tune_T, tune_d, tune_p,
    BIASES: tl.constexpr, HAS_MASK: tl.constexpr,
    OPERAND: tl.constexpr, DOT: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Ghost norms of K linear layers sharing x, one per layer: sum_{t,s} (x_t . x_s) (g_kt . g_ks),
    plus sum_{t,s} g_kt . g_ks = ||sum_t g_kt||^2 for the layers k with a bias.

    Tiling: one program per (b, pair), the example slowest. Program (b, pair) owns one block pair
    (tb, sb), sb <= tb, of example b (the Grams are symmetric: an off-diagonal pair counts twice). It forms
    the x Gram tile once (tl.dot over d-chunks) and, for each projection k, the g_k Gram tile
    (tl.dot over p_k-chunks), multiplies it elementwise with the x Gram tile and reduces; the
    T x T Grams never leave registers. The g's come as a tuple of tensors (any count, any strides, so the Q/K/V
    views of one fused projection are read in place) walked by a compile-time loop.
    Writes partial[k, b, pair]; the host sums over the pairs (deterministic, no atomics).
    Cost per example, with p = sum_k p_k: T^2 (d + p) flops (half of the full Gram products, on
    T padded to BLOCK_T); B * n(n + 1) / 2 programs for n = ceil(T / BLOCK_T) blocks, each
    reading 2 BLOCK_T (d + p) elements; extra memory K partial sums per program.
    """
    b, pair, tb, sb = example_pair(tl.program_id(0), T, BLOCK_T)
    mask_base = mask_ptr + b * stride_mb
    x_base = x_ptr + b * stride_xb
    t_rows = tb * BLOCK_T + tl.arange(0, BLOCK_T)
    t_valid = rows_valid(mask_base, stride_mt, t_rows, T, HAS_MASK)
    s_rows = sb * BLOCK_T + tl.arange(0, BLOCK_T)
    s_valid = rows_valid(mask_base, stride_mt, s_rows, T, HAS_MASK)
    zero = tl.zeros((BLOCK_T, BLOCK_T), ACC)
    x_gram = gram_tile(
        zero, x_base, stride_xt, stride_xd, t_rows, t_valid, x_base, stride_xt, stride_xd, s_rows, s_valid,
        d, BLOCK_K, OPERAND, DOT, PRECISION,
    )
    weight = 1.0 + (sb < tb).to(ACC)
    out = partial_ptr + b * stride_partial + pair
    for k in tl.static_range(len(BIASES)):
        g_base = g_ptrs[k] + b * stride_gb[k]
        g_gram = gram_tile(
            zero, g_base, stride_gt[k], stride_gp[k], t_rows, t_valid, g_base, stride_gt[k], stride_gp[k],
            s_rows, s_valid, widths[k], BLOCK_K, OPERAND, DOT, PRECISION,
        )
        products = x_gram * g_gram
        if BIASES[k]:
            products += g_gram
        tl.store(out + k * stride_layer, weight * tl.sum(tl.sum(products, axis=1)))


@autotune(
    configs=_FEATURE_CONFIGS, key=["tune_T", "tune_d", "tune_p"], prune_configs_by=_FEATURE_PRUNING,
    reset_to_zero=["partial_ptr"],
)
@triton.jit
def _direct_norm_kernel(
    x_ptr, stride_xb, stride_xt, stride_xd,
    g_ptr, stride_gb, stride_gt, stride_gp,
    mask_ptr, stride_mb, stride_mt,
    partial_ptr, stride_partial,
    T, d, p, tune_T, tune_d, tune_p,
    HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr,
    OPERAND: tl.constexpr, DOT: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """Direct norm ||g^T x||_F^2 (+ ||sum_t g_t||^2 with a bias).

    Tiling: one program per (b, tile), the example slowest and the (p, d) tiles in grouped order,
    so the programs resident together share example b's rows of x and g in L2. Program (b, tile)
    accumulates that (BLOCK_P, BLOCK_D) tile of example b's weight gradient g^T x over the
    sequence in registers (tl.dot over BLOCK_T rows), squares and sums it; only the programs of
    the first d tile also sum their g columns over t for the bias. Nothing of size d * p is
    written. Writes partial[b, tile]; the host sums each row.
    Cost per example: 2 T d p flops (T padded to BLOCK_T); reads T d p (1 / BLOCK_P + 1 / BLOCK_D)
    elements, mostly from L2; extra memory one accumulator per program.
    """
    b, tile, tile_d, p_cols, d_cols = _feature_tile(tl.program_id(0), p, d, BLOCK_P, BLOCK_D)
    b = b.to(tl.int64)
    grad, g_sum = _example_weight_grad_tile(
        tl.zeros((BLOCK_P, BLOCK_D), ACC), tl.zeros((BLOCK_P,), ACC), tile_d == 0,
        x_ptr + b * stride_xb, stride_xt, stride_xd, d_cols, d,
        g_ptr + b * stride_gb, stride_gt, stride_gp, p_cols, p,
        mask_ptr + b * stride_mb, stride_mt, T,
        HAS_MASK, HAS_BIAS, BLOCK_T, OPERAND, DOT, PRECISION,
    )
    tl.store(partial_ptr + b * stride_partial + tile, tl.sum(tl.sum(grad * grad, axis=1) + g_sum * g_sum))


@autotune(
    configs=_FUSED_CONFIGS, key=["tune_B", "tune_T", "tune_d", "tune_p"], prune_configs_by=_FEATURE_PRUNING,
    reset_to_zero=["partial_ptr"],
)
@triton.jit
def _weight_grad_and_norm_kernel(
    x_ptr, stride_xb, stride_xt, stride_xd,
    g_ptr, stride_gb, stride_gt, stride_gp,
    mask_ptr, stride_mb, stride_mt,
    grad_ptr, stride_grad_slice, partial_ptr, stride_partial,
    B, T, d, p, per_slice, n_slices, tune_B, tune_T, tune_d, tune_p,
    HAS_MASK: tl.constexpr,
    OPERAND: tl.constexpr, DOT: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, PERSISTENT: tl.constexpr,
):
    """The training-time path: sum_i g_i^T x_i and every ||g_i^T x_i||_F^2 in one pass.

    Tiling: the work is n_slices * tiles units (slice, tile), the batch slice slowest and the
    (p, d) tiles in grouped order; program pid runs units pid, pid + programs, ...: one unit
    each, or (PERSISTENT) as many programs as the device holds at once, each walking several
    units (``_cost.persistent_programs``). Unit
    (slice, tile) owns the (BLOCK_P, BLOCK_D) tile of the weight gradient for the examples
    [slice * per_slice, (slice + 1) * per_slice) and walks their rows in ONE loop over (example,
    row block) pairs, so the software pipeline runs across example boundaries instead of
    refilling at every example (the loop nest is flattened, ``tl.range(flatten=True)``, also
    across a persistent program's units). It accumulates g_i^T x_i in registers; at each
    example's last row block it writes the square-sum to partial[i, tile], adds the tile to the
    unit's running gradient and starts the next example from zero; each unit's gradient tile is
    stored once, to grad[slice]; the host sums the slices (deterministic, no atomics; each
    example's norm stays within one program). The slices exist so that small (p, d) grids still
    fill the device: their count is the cost model's.
    Cost: 2 B T d p flops (each example's T padded to BLOCK_T); reads B T d p (1 / BLOCK_P +
    1 / BLOCK_D) elements, writes slices * d p; extra memory slices * d p accumulators (none
    beyond the result for one slice) and one per (example, tile).
    """
    zero = tl.zeros((BLOCK_P, BLOCK_D), ACC)
    n_blocks = tl.cdiv(T, BLOCK_T)
    n_units = n_slices * tl.maximum(tl.cdiv(p, BLOCK_P), 1) * tl.maximum(tl.cdiv(d, BLOCK_D), 1)
    for unit in range(tl.program_id(0), n_units, tl.num_programs(0)):
        part, tile, _, p_cols, d_cols = _feature_tile(unit, p, d, BLOCK_P, BLOCK_D)
        first = part * per_slice
        examples = tl.minimum(B, first + per_slice) - first
        total = zero
        grad = zero
        for k in range(0, examples * n_blocks):
            # Example i, row block t0: 64-bit offsets (a batch may exceed 2^31 elements).
            i = (first + k // n_blocks).to(tl.int64)
            rows = (k % n_blocks) * BLOCK_T + tl.arange(0, BLOCK_T)
            valid = rows_valid(mask_ptr + i * stride_mb, stride_mt, rows, T, HAS_MASK)
            x = load_tile(x_ptr + i * stride_xb, stride_xt, stride_xd, rows, valid, d_cols, d, OPERAND, DOT)
            g = load_tile(g_ptr + i * stride_gb, stride_gt, stride_gp, rows, valid, p_cols, p, OPERAND, DOT)
            grad = tl.dot(tl.trans(g), x, grad, input_precision=PRECISION)
            if k % n_blocks == n_blocks - 1:
                tl.store(partial_ptr + i * stride_partial + tile, tl.sum(grad * grad))
                total += grad
                grad = zero
        out = grad_ptr + part.to(tl.int64) * stride_grad_slice + p_cols.to(tl.int64)[:, None] * d + d_cols[None, :]
        tl.store(out, total, mask=(p_cols[:, None] < p) & (d_cols[None, :] < d))


@autotune(configs=PAIR_CONFIGS, key=["tune_T", "tune_d", "tune_p"], prune_configs_by=PAIR_PRUNING)
@triton.jit
def _gradient_gram_kernel(
    x_ptr, stride_xb, stride_xt, stride_xd,
    g_ptr, stride_gb, stride_gt, stride_gp,
    mask_ptr, stride_mb, stride_mt,
    x2_ptr, stride_x2b, stride_x2t, stride_x2d,
    g2_ptr, stride_g2b, stride_g2t, stride_g2p,
    mask2_ptr, stride_m2b, stride_m2t,
    partial_ptr, stride_ps, stride_pi,
    T, T2, d, p, B2, n_slices, slice_rows, tune_T, tune_d, tune_p,
    SYMMETRIC: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, HAS_MASK2: tl.constexpr,
    OPERAND: tl.constexpr, DOT: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """<grad_i, grad2_j> = sum_{t,s} (x_it . x2_js)(g_it . g2_js) (+ sum_{t,s} g_it . g2_js with a
    bias): the ghost tiling across two examples.

    Tiling: one program per (i, j, slice), example i slowest. Program (i, j, slice) owns the rows
    [slice * slice_rows, (slice + 1) * slice_rows) of example i of the first set (slice_rows a
    multiple of every BLOCK_T) and loops over their (t, s) block pairs with all of example j of
    the second set, forms the x and g cross-Gram tiles in registers (tl.dot over d- and
    p-chunks), multiplies and reduces, and writes partial[slice, i, j]; the host sums the
    slices (their count is the cost model's: enough programs at small B). When the second set is
    the first (SYMMETRIC) only j <= i is computed (the other programs run no iteration and store
    nothing) and the host mirrors the lower triangle.
    Cost per pair: 2 T T2 (d + p) flops (T, T2 padded to BLOCK_T), halved over the pairs when
    symmetric; reads about T T2 (d + p) / BLOCK_T elements; extra memory slices * B * B2.
    """
    pid = tl.program_id(0)
    part = pid % n_slices
    j = ((pid // n_slices) % B2).to(tl.int64)
    i = (pid // (n_slices * B2)).to(tl.int64)
    computed = (j <= i) | (not SYMMETRIC)
    t_start = part * slice_rows
    t_end = tl.where(computed, tl.minimum(T, t_start + slice_rows), t_start)
    x_base = x_ptr + i * stride_xb
    g_base = g_ptr + i * stride_gb
    mask_base = mask_ptr + i * stride_mb
    x2_base = x2_ptr + j * stride_x2b
    g2_base = g2_ptr + j * stride_g2b
    mask2_base = mask2_ptr + j * stride_m2b
    row_sums = tl.zeros((BLOCK_T,), ACC)
    for t0 in range(t_start, t_end, BLOCK_T):
        t_rows = t0 + tl.arange(0, BLOCK_T)
        t_valid = rows_valid(mask_base, stride_mt, t_rows, T, HAS_MASK)
        for s0 in range(0, T2, BLOCK_T):
            s_rows = s0 + tl.arange(0, BLOCK_T)
            s_valid = rows_valid(mask2_base, stride_m2t, s_rows, T2, HAS_MASK2)
            zero = tl.zeros((BLOCK_T, BLOCK_T), ACC)
            x_gram = gram_tile(
                zero, x_base, stride_xt, stride_xd, t_rows, t_valid, x2_base, stride_x2t, stride_x2d, s_rows, s_valid,
                d, BLOCK_K, OPERAND, DOT, PRECISION,
            )
            g_gram = gram_tile(
                zero, g_base, stride_gt, stride_gp, t_rows, t_valid, g2_base, stride_g2t, stride_g2p, s_rows, s_valid,
                p, BLOCK_K, OPERAND, DOT, PRECISION,
            )
            products = x_gram * g_gram
            if HAS_BIAS:
                products += g_gram
            row_sums += tl.sum(products, axis=1)
    tl.store(partial_ptr + part.to(tl.int64) * stride_ps + i * stride_pi + j, tl.sum(row_sums), mask=computed)


# ---------------------------------------------------------------------------------------------
# Host side
# ---------------------------------------------------------------------------------------------


def _closed_form_norm_sq(
    x: torch.Tensor, gs: list[torch.Tensor], biases: list[bool], mask: torch.Tensor | None
) -> torch.Tensor:
    """(K, B) at T = 1: ||g_k^T x||^2 = ||x||^2 ||g_k||^2 and ||grad b_k||^2 = ||g_k||^2, row
    reductions read once (memory-bound, no tiles)."""
    dtype = accum_dtype(x, *gs)
    x_sq = _reference.masked(x.to(dtype), mask).square().sum(dim=(1, 2))
    rows = []
    for g, has_bias in zip(gs, biases):
        g_sq = _reference.masked(g.to(dtype), mask).square().sum(dim=(1, 2))
        rows.append(g_sq * (x_sq + 1.0) if has_bias else g_sq * x_sq)
    return torch.stack(rows)


def _ghost_norm_sq(
    x: torch.Tensor, gs: list[torch.Tensor], biases: list[bool], mask: torch.Tensor | None
) -> torch.Tensor:
    B, T, d = x.shape
    partial = partials((len(gs), B), pair_slots(T, _GHOST_CONFIGS), accum_dtype(x, *gs), x.device)
    _ghost_norm_kernel[pair_grid(T, B)](
        x, *x.stride(),
        tuple(gs), tuple(g.stride(0) for g in gs), tuple(g.stride(1) for g in gs), tuple(g.stride(2) for g in gs),
        tuple(g.shape[-1] for g in gs),
        *mask_args(mask, x),
        partial, partial.stride(0), partial.stride(1),
        T, d, tune_key(T), tune_key(d), tune_key(sum(g.shape[-1] for g in gs)),
        BIASES=tuple(biases), HAS_MASK=mask is not None, **dot_types(x, *gs)._asdict(),
    )
    return partial.sum(dim=2)


def _direct_norm_sq(x: torch.Tensor, g: torch.Tensor, bias: bool, mask: torch.Tensor | None) -> torch.Tensor:
    B, T, d = x.shape
    p = g.shape[-1]
    partial = partials(B, feature_slots(p, d, _FEATURE_CONFIGS), accum_dtype(x, g), x.device)
    _direct_norm_kernel[feature_grid(p, d, B)](
        x, *x.stride(),
        g, *g.stride(),
        *mask_args(mask, x),
        partial, partial.stride(0),
        T, d, p, tune_key(T), tune_key(d), tune_key(p),
        HAS_BIAS=bias, HAS_MASK=mask is not None, **dot_types(x, g)._asdict(),
    )
    return partial.sum(dim=1)


def grouped_linear_grad_norm_sq(
    x: torch.Tensor,
    gs: list[torch.Tensor],
    biases: list[bool],
    mask: torch.Tensor | None,
    path: str,
) -> torch.Tensor:
    """(K, B): ||grad W_k||^2 + [biases[k]] ||grad b_k||^2 per layer k and example, for layers k
    sharing x: one ghost launch for all k (the x Gram tile formed once per block pair), or one
    direct launch per k (the direct path shares nothing across k but the reads of x); "auto"
    takes the path of the cost model, the closed form at T = 1."""
    B, T, d = x.shape
    if B == 0:
        return torch.zeros(len(gs), 0, dtype=accum_dtype(x, *gs), device=x.device)
    if path == "auto":
        path = _cost.linear_path(B, T, d, [g.shape[-1] for g in gs])
    if path == "closed":
        return _closed_form_norm_sq(x, gs, biases, mask)
    if path == "ghost":
        return _ghost_norm_sq(x, gs, biases, mask)
    return torch.stack([_direct_norm_sq(x, g, has_bias, mask) for g, has_bias in zip(gs, biases)])


def linear_grad_norm_sq(
    x: torch.Tensor, g: torch.Tensor, bias: bool, mask: torch.Tensor | None, path: str
) -> torch.Tensor:
    return grouped_linear_grad_norm_sq(x, [g], [bias], mask, path)[0]


def batch_slices(B: int, d: int, p: int) -> tuple[int, int]:
    """(examples per slice, slices) of the fused kernel: enough (tile, slice) programs to fill the
    device (the cost model's target) at the largest tiles, at most one slice per example."""
    largest = {name: largest_block(_FUSED_CONFIGS, name) for name in ("BLOCK_P", "BLOCK_D")}
    per_slice = triton.cdiv(B, _cost.splits(feature_tiles(p, d, largest), B))
    return per_slice, triton.cdiv(B, per_slice)


def _weight_gemm(x: torch.Tensor, g: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """sum_i g_i^T x_i as one GEMM over the B T rows, the operands rounded as the kernels round
    theirs (``operand_dtype``), accumulated in float32 (float64): for 16-bit operands cuBLAS's
    GEMM with a float32 output on CUDA; on the interpreter's CPU tensors the same exact products
    in float32. Masked rows are zeroed in both operands, so a NaN there cannot leak."""
    operand = operand_dtype(x, g)
    x2 = _reference.masked(x.to(operand), mask).flatten(0, 1)
    g2 = _reference.masked(g.to(operand), mask).flatten(0, 1)
    if operand.itemsize > 2:
        return g2.T @ x2
    if x2.is_cuda:
        return torch.mm(g2.T, x2, out_dtype=torch.float32)
    return g2.T.float() @ x2.float()


def linear_weight_grad_and_norm_sq(
    x: torch.Tensor, g: torch.Tensor, mask: torch.Tensor | None, path: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight gradient and the norms: the fused kernel, or the GEMM then the norm kernels
    ("separate"), as ``path`` or the cost model says."""
    B, T, d = x.shape
    p = g.shape[-1]
    dtype = accum_dtype(x, g)
    if B == 0:
        return torch.zeros(p, d, dtype=dtype, device=x.device), torch.zeros(0, dtype=dtype, device=x.device)
    if path == "auto":
        path = "fused" if _cost.fused_weight_grad_wins(B, T, d, p) else "separate"
    if path == "separate":
        return _weight_gemm(x, g, mask), linear_grad_norm_sq(x, g, False, mask, "auto")
    per_slice, n_slices = batch_slices(B, d, p)
    grad = torch.empty(n_slices, p, d, dtype=dtype, device=x.device)
    partial = partials(B, feature_slots(p, d, _FEATURE_CONFIGS), dtype, x.device)

    def grid(meta: dict[str, Any]) -> tuple[int]:
        units = feature_tiles(p, d, meta) * n_slices
        return (_cost.persistent_programs(units) if meta["PERSISTENT"] else units,)

    _weight_grad_and_norm_kernel[grid](
        x, *x.stride(),
        g, *g.stride(),
        *mask_args(mask, x),
        grad, grad.stride(0), partial, partial.stride(0),
        B, T, d, p, per_slice, n_slices,
        tune_key(B), tune_key(T), tune_key(d), tune_key(p),
        HAS_MASK=mask is not None, **dot_types(x, g)._asdict(),
    )
    return (grad[0] if n_slices == 1 else grad.sum(dim=0)), partial.sum(dim=1)


def linear_grad_gram(
    x: torch.Tensor,
    g: torch.Tensor,
    mask: torch.Tensor | None,
    x2: torch.Tensor,
    g2: torch.Tensor,
    mask2: torch.Tensor | None,
    bias: bool,
    path: str,
) -> torch.Tensor:
    """<grad_i, grad2_j> for every pair: with the per-example gradients materialized
    ("materialize"), else ("pairs", "auto") the pair kernel: materializing never won in the GPU
    record the cost model is fitted to (``attent_kernels/_cost.py``). When the second set
    is the first one (the same tensors), the lower triangle is mirrored, so the result is exactly
    symmetric (the pair kernel computes only that triangle)."""
    symmetric = x2 is x and g2 is g and mask2 is mask
    if path == "materialize":
        out = _reference.linear_grad_gram(x, g, mask, x2, g2, mask2, bias)
    else:
        out = _pair_gram((x, g, mask), (x2, g2, mask2), bias, symmetric)
    if symmetric:
        return out.tril() + out.tril(-1).T
    return out


GramSet = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


def _pair_gram(first: GramSet, second: GramSet, bias: bool, symmetric: bool) -> torch.Tensor:
    """The pair kernel's (B, B2) result for the sets (x, g, mask) and (x2, g2, mask2): the rows of
    the first set cut into slices when the (i, j) pairs alone would not fill the device, the
    slices' partials summed in order."""
    (x, g, mask), (x2, g2, mask2) = first, second
    B, T, d = x.shape
    B2, T2, _ = x2.shape
    p = g.shape[-1]
    pairs = B * (B + 1) // 2 if symmetric else B * B2
    slice_rows, n_slices = _cost.aligned_slices(T, pairs, largest_block(PAIR_CONFIGS, "BLOCK_T"))
    partial = torch.zeros(n_slices, B, B2, dtype=accum_dtype(x, g, x2, g2), device=x.device)
    if B > 0 and B2 > 0:
        _gradient_gram_kernel[(n_slices * B2 * B,)](
            x, *x.stride(),
            g, *g.stride(),
            *mask_args(mask, x),
            x2, *x2.stride(),
            g2, *g2.stride(),
            *mask_args(mask2, x2),
            partial, partial.stride(0), partial.stride(1),
            T, T2, d, p, B2, n_slices, slice_rows, tune_key(max(T, T2)), tune_key(d), tune_key(p),
            SYMMETRIC=symmetric, HAS_BIAS=bias, HAS_MASK=mask is not None, HAS_MASK2=mask2 is not None,
            **dot_types(x, g, x2, g2)._asdict(),
        )
    return partial.sum(dim=0)
