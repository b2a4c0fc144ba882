"""Triton kernels for the linear family: the same functions, signatures and results as
``_reference`` (inputs arrive validated and 3-D: x (B, T, d), g (B, T, p), mask (B, T) bool or
None), computed in fused tiles.

Conventions shared by every kernel here:
- Tiles are loaded with ``tl.load(..., mask=row_valid & col_in_bounds, other=0)``: a padded or
  out-of-range position is never read, so a NaN there cannot leak into any sum.
- Operands of ``tl.dot`` are cast to one dot dtype (the promotion of the inputs' dtypes; a no-op
  when they already agree). Accumulation is float32, float64 for float64 inputs, as in the
  reference; float32 products use IEEE precision (no tf32), so results match the reference to
  rounding. bfloat16 and float16 products are exact in float32, only the summation order differs.
  The interpreter's ``tl.dot`` cannot multiply bfloat16 (numpy has no such type), so under
  ``TRITON_INTERPRET=1`` bfloat16 tiles are upcast to float32 first: the same products, exactly.
- Per-example results are written as partial sums to small buffers, one slot per program, and
  reduced with ``torch.sum``: deterministic, no atomics.
- Block sizes are autotuned on GPU, keyed on the sizes rounded up to powers of two (one tuning
  per shape family, so a new sequence length within the family does not re-tune); under the
  interpreter one small configuration is used, because autotuning there is far too slow.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .._checks import accum_dtype
from .._dispatch import interpreter_on
from ._reference import prefers_ghost

_TL_DTYPES = {
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
    torch.float32: tl.float32,
    torch.float64: tl.float64,
}


def _configs(interpreted: dict[str, int], tuned: list[tuple[dict[str, int], int, int]]) -> list[triton.Config]:
    """One small configuration under the interpreter, the tuning list on GPU."""
    if interpreter_on():
        return [triton.Config(interpreted, num_warps=1, num_stages=1)]
    return [triton.Config(blocks, num_warps=warps, num_stages=stages) for blocks, warps, stages in tuned]


# (t, s) sequence tiling, shared by the ghost norm and the gradient Gram.
_PAIR_CONFIGS = _configs(
    {"BLOCK_T": 16, "BLOCK_K": 16},
    [
        ({"BLOCK_T": 32, "BLOCK_K": 64}, 4, 3),
        ({"BLOCK_T": 64, "BLOCK_K": 32}, 4, 3),
        ({"BLOCK_T": 64, "BLOCK_K": 64}, 4, 3),
        ({"BLOCK_T": 128, "BLOCK_K": 32}, 8, 3),
        ({"BLOCK_T": 128, "BLOCK_K": 64}, 8, 2),
    ],
)
# (p, d) output-feature tiling, shared by the direct norm and the fused weight gradient.
_FEATURE_CONFIGS = _configs(
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


def _smallest(configs: list[triton.Config], name: str) -> int:
    return min(c.kwargs[name] for c in configs)


def _family(n: int) -> int:
    """Autotuning key of a size: rounded up to a power of two."""
    return triton.next_power_of_2(max(1, n))


# ---------------------------------------------------------------------------------------------
# Shared device helpers
# ---------------------------------------------------------------------------------------------


@triton.jit
def _rows_valid(mask_base, stride_mt, rows, T, HAS_MASK: tl.constexpr):
    """(BLOCK,) bool: row inside the sequence and, with a mask, not padded."""
    valid = rows < T
    if HAS_MASK:
        valid = valid & (tl.load(mask_base + rows.to(tl.int64) * stride_mt, mask=valid, other=0) != 0)
    return valid


@triton.jit
def _load_tile(base, stride_row, stride_col, rows, rows_valid, cols, n_cols, DOT: tl.constexpr):
    """(len(rows), len(cols)) tile in the dot dtype; invalid rows and columns out of range read as 0."""
    ptrs = base + rows.to(tl.int64)[:, None] * stride_row + cols.to(tl.int64)[None, :] * stride_col
    tile = tl.load(ptrs, mask=rows_valid[:, None] & (cols[None, :] < n_cols), other=0.0)
    return tile.to(DOT)


@triton.jit
def _gram_tile(
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
        a = _load_tile(a_base, a_stride_row, a_stride_col, a_rows, a_valid, cols, n_cols, DOT)
        b = _load_tile(b_base, b_stride_row, b_stride_col, b_rows, b_valid, cols, n_cols, DOT)
        acc = tl.dot(a, tl.trans(b), acc, input_precision=PRECISION)
    return acc


@triton.jit
def _example_weight_grad_tile(
    acc, g_sum,
    x_base, stride_xt, stride_xd, d_cols, d,
    g_base, stride_gt, stride_gp, p_cols, p,
    mask_base, stride_mt, T,
    HAS_MASK: tl.constexpr, WITH_G_SUM: tl.constexpr,
    BLOCK_T: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr,
):
    """One example's tile of its weight gradient, acc + g[:, p_cols]^T x[:, d_cols] summed over
    the sequence in chunks of BLOCK_T, and (WITH_G_SUM) g_sum + sum_t g[t, p_cols]."""
    for t0 in range(0, T, BLOCK_T):
        rows = t0 + tl.arange(0, BLOCK_T)
        valid = _rows_valid(mask_base, stride_mt, rows, T, HAS_MASK)
        x = _load_tile(x_base, stride_xt, stride_xd, rows, valid, d_cols, d, DOT)
        g = _load_tile(g_base, stride_gt, stride_gp, rows, valid, p_cols, p, DOT)
        acc = tl.dot(tl.trans(g), x, acc, input_precision=PRECISION)
        if WITH_G_SUM:
            g_sum += tl.sum(g.to(g_sum.dtype), axis=0)
    return acc, g_sum


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


@triton.autotune(configs=_PAIR_CONFIGS, key=["tune_T", "tune_d", "tune_p"], reset_to_zero=["partial_ptr"])
@triton.jit
def _ghost_norm_kernel(
    x_ptr, stride_xb, stride_xt, stride_xd,
    g_ptrs, stride_gb, stride_gt, stride_gp, widths,
    mask_ptr, stride_mb, stride_mt,
    partial_ptr, stride_partial,
    T, d, tune_T, tune_d, tune_p,
    BIASES: tl.constexpr, HAS_MASK: tl.constexpr,
    DOT: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Ghost norm of K linear layers sharing x: sum_{t,s} (x_t . x_s) sum_k (g_kt . g_ks), plus
    sum_{t,s} g_kt . g_ks = ||sum_t g_kt||^2 for the layers k with a bias.

    Tiling: program (b, tb) owns rows t of block tb of example b and loops over the column blocks
    sb <= tb (the Grams are symmetric: an off-diagonal block pair counts twice). Per pair it forms
    the x Gram tile once (tl.dot over d-chunks) and, for each projection k, the g_k Gram tile
    (tl.dot over p_k-chunks), multiplies them elementwise and reduces to a row vector; the T x T
    Grams never leave registers. The g's come as a tuple of tensors (any count, any strides, so
    the Q/K/V views of one fused projection are read in place without a copy) walked by a
    compile-time loop: one kernel body for any number of projections.
    Writes partial[b, tb]; the host sums over tb.
    Cost per example, with p = sum_k p_k: T^2 (d + p) flops (half of the full Gram products);
    reads about T^2 (d + p) / BLOCK_T elements (each block pair reloads its two row blocks);
    extra memory B * ceil(T / BLOCK_T) accumulators.
    """
    b = tl.program_id(0).to(tl.int64)
    tb = tl.program_id(1)
    mask_base = mask_ptr + b * stride_mb
    x_base = x_ptr + b * stride_xb
    t_rows = tb * BLOCK_T + tl.arange(0, BLOCK_T)
    t_valid = _rows_valid(mask_base, stride_mt, t_rows, T, HAS_MASK)
    row_sums = tl.zeros((BLOCK_T,), ACC)
    for sb in range(0, tb + 1):
        s_rows = sb * BLOCK_T + tl.arange(0, BLOCK_T)
        s_valid = _rows_valid(mask_base, stride_mt, s_rows, T, HAS_MASK)
        zero = tl.zeros((BLOCK_T, BLOCK_T), ACC)
        x_gram = _gram_tile(
            zero, x_base, stride_xt, stride_xd, t_rows, t_valid, x_base, stride_xt, stride_xd, s_rows, s_valid,
            d, BLOCK_K, DOT, PRECISION,
        )
        g_gram = zero
        bias_sums = tl.zeros((BLOCK_T,), ACC)
        for k in tl.static_range(len(BIASES)):
            g_base = g_ptrs[k] + b * stride_gb[k]
            g_gram_k = _gram_tile(
                zero, g_base, stride_gt[k], stride_gp[k], t_rows, t_valid, g_base, stride_gt[k], stride_gp[k],
                s_rows, s_valid, widths[k], BLOCK_K, DOT, PRECISION,
            )
            g_gram += g_gram_k
            if BIASES[k]:
                bias_sums += tl.sum(g_gram_k, axis=1)
        weight = 1.0 + (sb < tb).to(ACC)
        row_sums += weight * (tl.sum(x_gram * g_gram, axis=1) + bias_sums)
    tl.store(partial_ptr + b * stride_partial + tb, tl.sum(row_sums))


@triton.autotune(configs=_FEATURE_CONFIGS, key=["tune_T", "tune_d", "tune_p"], reset_to_zero=["partial_ptr"])
@triton.jit
def _direct_norm_kernel(
    x_ptr, stride_xb, stride_xt, stride_xd,
    g_ptr, stride_gb, stride_gt, stride_gp,
    mask_ptr, stride_mb, stride_mt,
    partial_ptr, stride_partial,
    T, d, p, tune_T, tune_d, tune_p,
    HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr,
    DOT: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """Direct norm ||g^T x||_F^2 (+ ||sum_t g_t||^2 with a bias).

    Tiling: program (b, tile_p, tile_d) accumulates that (BLOCK_P, BLOCK_D) tile of example b's
    weight gradient g^T x over the sequence in registers (tl.dot over BLOCK_T rows), squares and
    sums it; the programs with tile_d == 0 also sum their g columns over t for the bias. Nothing of
    size d * p is written. Writes partial[b, tile_p * n_d_tiles + tile_d]; the host sums each row.
    Cost per example: 2 T d p flops; reads T d p (1 / BLOCK_P + 1 / BLOCK_D) elements; extra
    memory B * ceil(p / BLOCK_P) * ceil(d / BLOCK_D) accumulators.
    """
    b = tl.program_id(0).to(tl.int64)
    tile_p = tl.program_id(1)
    tile_d = tl.program_id(2)
    p_cols = tile_p * BLOCK_P + tl.arange(0, BLOCK_P)
    d_cols = tile_d * BLOCK_D + tl.arange(0, BLOCK_D)
    grad, g_sum = _example_weight_grad_tile(
        tl.zeros((BLOCK_P, BLOCK_D), ACC), tl.zeros((BLOCK_P,), ACC),
        x_ptr + b * stride_xb, stride_xt, stride_xd, d_cols, d,
        g_ptr + b * stride_gb, stride_gt, stride_gp, p_cols, p,
        mask_ptr + b * stride_mb, stride_mt, T,
        HAS_MASK, HAS_BIAS, BLOCK_T, DOT, PRECISION,
    )
    norm_sq = tl.sum(tl.sum(grad * grad, axis=1) + (tile_d == 0).to(ACC) * g_sum * g_sum)
    tl.store(partial_ptr + b * stride_partial + tile_p * tl.num_programs(2) + tile_d, norm_sq)


@triton.autotune(configs=_FEATURE_CONFIGS, key=["tune_B", "tune_T", "tune_d", "tune_p"], reset_to_zero=["partial_ptr"])
@triton.jit
def _weight_grad_and_norm_kernel(
    x_ptr, stride_xb, stride_xt, stride_xd,
    g_ptr, stride_gb, stride_gt, stride_gp,
    mask_ptr, stride_mb, stride_mt,
    grad_ptr, partial_ptr, stride_partial,
    B, T, d, p, tune_B, tune_T, tune_d, tune_p,
    HAS_MASK: tl.constexpr,
    DOT: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """The training-time path: sum_i g_i^T x_i and every ||g_i^T x_i||_F^2 in one pass.

    Tiling: program (tile_p, tile_d) owns the (BLOCK_P, BLOCK_D) tile of the weight gradient and loops
    over the examples; per example it accumulates the tile of g_i^T x_i over the sequence in
    registers, writes its square-sum to partial[i, tile_p * n_d_tiles + tile_d] and adds it to the
    running gradient tile, stored once at the end. x and g are read exactly as by the plain
    weight-gradient GEMM (which sums over the same B * T rows); the norms add B * BLOCK_P *
    BLOCK_D flops per tile, about 1/T of the GEMM.
    Cost: 2 B T d p flops; reads B T d p (1 / BLOCK_P + 1 / BLOCK_D) elements, writes d p;
    extra memory B * ceil(p / BLOCK_P) * ceil(d / BLOCK_D) accumulators.
    """
    tile_p = tl.program_id(0)
    tile_d = tl.program_id(1)
    slot = tile_p * tl.num_programs(1) + tile_d
    p_cols = tile_p * BLOCK_P + tl.arange(0, BLOCK_P)
    d_cols = tile_d * BLOCK_D + tl.arange(0, BLOCK_D)
    zero = tl.zeros((BLOCK_P, BLOCK_D), ACC)
    no_g_sum = tl.zeros((BLOCK_P,), ACC)
    total = zero
    # Per-example pointers advance by one batch stride a step (64-bit pointer arithmetic).
    x_base, g_base, mask_base, partial_base = x_ptr, g_ptr, mask_ptr, partial_ptr + slot
    for _ in range(0, B):
        grad, no_g_sum = _example_weight_grad_tile(
            zero, no_g_sum,
            x_base, stride_xt, stride_xd, d_cols, d,
            g_base, stride_gt, stride_gp, p_cols, p,
            mask_base, stride_mt, T,
            HAS_MASK, False, BLOCK_T, DOT, PRECISION,
        )
        tl.store(partial_base, tl.sum(grad * grad))
        total += grad
        x_base += stride_xb
        g_base += stride_gb
        mask_base += stride_mb
        partial_base += stride_partial
    out = grad_ptr + p_cols.to(tl.int64)[:, None] * d + d_cols[None, :]
    tl.store(out, total, mask=(p_cols[:, None] < p) & (d_cols[None, :] < d))


@triton.autotune(configs=_PAIR_CONFIGS, key=["tune_T", "tune_d", "tune_p"])
@triton.jit
def _gradient_gram_kernel(
    x_ptr, stride_xb, stride_xt, stride_xd,
    g_ptr, stride_gb, stride_gt, stride_gp,
    mask_ptr, stride_mb, stride_mt,
    x2_ptr, stride_x2b, stride_x2t, stride_x2d,
    g2_ptr, stride_g2b, stride_g2t, stride_g2p,
    mask2_ptr, stride_m2b, stride_m2t,
    out_ptr, stride_out,
    T, T2, d, p, tune_T, tune_d, tune_p,
    SYMMETRIC: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, HAS_MASK2: tl.constexpr,
    DOT: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """<grad_i, grad2_j> = sum_{t,s} (x_it . x2_js)(g_it . g2_js) (+ sum_{t,s} g_it . g2_js with a
    bias): the ghost tiling across two examples.

    Tiling: program (i, j) loops over the (t, s) block pairs of example i of the first set and
    example j of the second, forms the x and g cross-Gram tiles in registers (tl.dot over d- and
    p-chunks), multiplies and reduces, and writes out[i, j]. When the second set is the first
    (SYMMETRIC) only j <= i is computed (the other programs run no iteration and store nothing)
    and the host mirrors the lower triangle.
    Cost per pair: 2 T T2 (d + p) flops, halved over the pairs when symmetric; reads about
    T T2 (d + p) / BLOCK_T elements; no memory beyond the (B, B2) result.
    """
    i = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1).to(tl.int64)
    computed = (j <= i) | (not SYMMETRIC)
    T_run = tl.where(computed, T, 0)
    x_base = x_ptr + i * stride_xb
    g_base = g_ptr + i * stride_gb
    mask_base = mask_ptr + i * stride_mb
    x2_base = x2_ptr + j * stride_x2b
    g2_base = g2_ptr + j * stride_g2b
    mask2_base = mask2_ptr + j * stride_m2b
    row_sums = tl.zeros((BLOCK_T,), ACC)
    for t0 in range(0, T_run, BLOCK_T):
        t_rows = t0 + tl.arange(0, BLOCK_T)
        t_valid = _rows_valid(mask_base, stride_mt, t_rows, T, HAS_MASK)
        for s0 in range(0, T2, BLOCK_T):
            s_rows = s0 + tl.arange(0, BLOCK_T)
            s_valid = _rows_valid(mask2_base, stride_m2t, s_rows, T2, HAS_MASK2)
            zero = tl.zeros((BLOCK_T, BLOCK_T), ACC)
            x_gram = _gram_tile(
                zero, x_base, stride_xt, stride_xd, t_rows, t_valid, x2_base, stride_x2t, stride_x2d, s_rows, s_valid,
                d, BLOCK_K, DOT, PRECISION,
            )
            g_gram = _gram_tile(
                zero, g_base, stride_gt, stride_gp, t_rows, t_valid, g2_base, stride_g2t, stride_g2p, s_rows, s_valid,
                p, BLOCK_K, DOT, PRECISION,
            )
            products = x_gram * g_gram
            if HAS_BIAS:
                products += g_gram
            row_sums += tl.sum(products, axis=1)
    tl.store(out_ptr + i * stride_out + j, tl.sum(row_sums), mask=computed)


# ---------------------------------------------------------------------------------------------
# Host side
# ---------------------------------------------------------------------------------------------


def _dot_types(*tensors: torch.Tensor) -> tuple[tl.dtype, tl.dtype, str]:
    """(dot dtype, accumulator dtype, tl.dot input precision) for a call on these tensors."""
    common = functools.reduce(torch.promote_types, (t.dtype for t in tensors))
    if common == torch.bfloat16 and interpreter_on():
        common = torch.float32
    dot = _TL_DTYPES.get(common, tl.float32)
    acc = tl.float64 if accum_dtype(*tensors) == torch.float64 else tl.float32
    precision = "ieee" if dot == tl.float32 else "tf32"
    return dot, acc, precision


def _mask_args(mask: torch.Tensor | None, stand_in: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(pointer, batch stride, position stride) of a bool mask, as an int32 copy (B * T words; the
    float64 tl.dot lowering of Triton 3.8 rejects tiles masked through a byte load); a stand-in
    pointer, never read, when there is no mask."""
    if mask is None:
        return stand_in, 0, 0
    as_int = mask.to(torch.int32)
    return as_int, as_int.stride(0), as_int.stride(1)


def _ghost_norm_sq(
    x: torch.Tensor, gs: list[torch.Tensor], biases: list[bool], mask: torch.Tensor | None
) -> torch.Tensor:
    B, T, d = x.shape
    dot, acc, precision = _dot_types(x, *gs)
    partial = torch.zeros(B, triton.cdiv(max(T, 1), _smallest(_PAIR_CONFIGS, "BLOCK_T")), dtype=accum_dtype(x, *gs), device=x.device)
    grid = lambda meta: (B, triton.cdiv(max(T, 1), meta["BLOCK_T"]))  # noqa: E731
    _ghost_norm_kernel[grid](
        x, *x.stride(),
        tuple(gs), tuple(g.stride(0) for g in gs), tuple(g.stride(1) for g in gs), tuple(g.stride(2) for g in gs),
        tuple(g.shape[-1] for g in gs),
        *_mask_args(mask, x),
        partial, partial.stride(0),
        T, d, _family(T), _family(d), _family(sum(g.shape[-1] for g in gs)),
        BIASES=tuple(biases), HAS_MASK=mask is not None, DOT=dot, ACC=acc, PRECISION=precision,
    )
    return partial.sum(dim=1)


def _feature_partial(B: int, d: int, p: int, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Zeroed (B, tiles) buffer with a slot for every (p, d) tile of the smallest configuration."""
    tiles = triton.cdiv(max(p, 1), _smallest(_FEATURE_CONFIGS, "BLOCK_P")) * triton.cdiv(
        max(d, 1), _smallest(_FEATURE_CONFIGS, "BLOCK_D")
    )
    return torch.zeros(B, tiles, dtype=accum_dtype(x, g), device=x.device)


def _direct_norm_sq(x: torch.Tensor, g: torch.Tensor, bias: bool, mask: torch.Tensor | None) -> torch.Tensor:
    B, T, d = x.shape
    p = g.shape[-1]
    dot, acc, precision = _dot_types(x, g)
    partial = _feature_partial(B, d, p, x, g)
    grid = lambda meta: (B, triton.cdiv(max(p, 1), meta["BLOCK_P"]), triton.cdiv(max(d, 1), meta["BLOCK_D"]))  # noqa: E731
    _direct_norm_kernel[grid](
        x, *x.stride(),
        g, *g.stride(),
        *_mask_args(mask, x),
        partial, partial.stride(0),
        T, d, p, _family(T), _family(d), _family(p),
        HAS_BIAS=bias, HAS_MASK=mask is not None, DOT=dot, ACC=acc, PRECISION=precision,
    )
    return partial.sum(dim=1)


def grouped_linear_grad_norm_sq(
    x: torch.Tensor,
    gs: list[torch.Tensor],
    biases: list[bool],
    mask: torch.Tensor | None,
    path: str,
) -> torch.Tensor:
    """sum_k (||grad W_k||^2 + [biases[k]] ||grad b_k||^2) per example, for layers k sharing x:
    one ghost launch for all k (the x Gram tile formed once per block pair), or one direct launch
    per k (the direct path shares nothing across k but the reads of x)."""
    B, T, d = x.shape
    if B == 0:
        return torch.zeros(0, dtype=accum_dtype(x, *gs), device=x.device)
    p = sum(g.shape[-1] for g in gs)
    if path == "ghost" or (path == "auto" and prefers_ghost(T, d, p)):
        return _ghost_norm_sq(x, gs, biases, mask)
    return sum(_direct_norm_sq(x, g, has_bias, mask) for g, has_bias in zip(gs, biases))


def linear_grad_norm_sq(
    x: torch.Tensor, g: torch.Tensor, bias: bool, mask: torch.Tensor | None, path: str
) -> torch.Tensor:
    return grouped_linear_grad_norm_sq(x, [g], [bias], mask, path)


def linear_weight_grad_and_norm_sq(
    x: torch.Tensor, g: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    B, T, d = x.shape
    p = g.shape[-1]
    dtype = accum_dtype(x, g)
    grad = torch.zeros(p, d, dtype=dtype, device=x.device)
    if B == 0:
        return grad, torch.zeros(0, dtype=dtype, device=x.device)
    dot, acc, precision = _dot_types(x, g)
    partial = _feature_partial(B, d, p, x, g)
    grid = lambda meta: (triton.cdiv(max(p, 1), meta["BLOCK_P"]), triton.cdiv(max(d, 1), meta["BLOCK_D"]))  # noqa: E731
    _weight_grad_and_norm_kernel[grid](
        x, *x.stride(),
        g, *g.stride(),
        *_mask_args(mask, x),
        grad, partial, partial.stride(0),
        B, T, d, p, _family(B), _family(T), _family(d), _family(p),
        HAS_MASK=mask is not None, DOT=dot, ACC=acc, PRECISION=precision,
    )
    return grad, partial.sum(dim=1)


def linear_grad_gram(
    x: torch.Tensor,
    g: torch.Tensor,
    mask: torch.Tensor | None,
    x2: torch.Tensor,
    g2: torch.Tensor,
    mask2: torch.Tensor | None,
    bias: bool,
) -> torch.Tensor:
    """<grad_i, grad2_j> for every pair; when the second set is the first one (the same tensors),
    only the lower triangle is computed and mirrored."""
    B, T, d = x.shape
    B2, T2, _ = x2.shape
    p = g.shape[-1]
    symmetric = x2 is x and g2 is g and mask2 is mask
    out = torch.zeros(B, B2, dtype=accum_dtype(x, g, x2, g2), device=x.device)
    if B == 0 or B2 == 0:
        return out
    dot, acc, precision = _dot_types(x, g, x2, g2)
    _gradient_gram_kernel[(B, B2)](
        x, *x.stride(),
        g, *g.stride(),
        *_mask_args(mask, x),
        x2, *x2.stride(),
        g2, *g2.stride(),
        *_mask_args(mask2, x2),
        out, out.stride(0),
        T, T2, d, p, _family(max(T, T2)), _family(d), _family(p),
        SYMMETRIC=symmetric, HAS_BIAS=bias, HAS_MASK=mask is not None, HAS_MASK2=mask2 is not None,
        DOT=dot, ACC=acc, PRECISION=precision,
    )
    if symmetric:
        return out.tril() + out.tril(-1).T
    return out
