"""Triton kernel for the norm-layer family: the same function, signature and result as
``_reference`` (inputs arrive validated and 3-D: x_hat (B, T, d), g (B, T, d), mask (B, T) bool
or None).

It keeps the conventions of ``attent_kernels/_triton_tiles.py`` and shares its helpers: masked
positions are never read, float32 accumulation (float64 for float64 inputs), per-(example,
feature tile) partial sums reduced with ``torch.sum``, autotuned tiles on GPU and one small
configuration under the interpreter.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._checks import accum_dtype
from .._triton_tiles import (
    TL_DTYPES,
    autotune,
    autotune_configs,
    block_count,
    column_grid,
    example_column,
    load_tile,
    mask_args,
    partials,
    rows_valid,
    smallest_block,
    tune_key,
)

_NORM_CONFIGS = autotune_configs(
    {"BLOCK_T": 16, "BLOCK_D": 16},
    [
        ({"BLOCK_T": 16, "BLOCK_D": 128}, 4, 2),
        ({"BLOCK_T": 32, "BLOCK_D": 64}, 4, 2),
        ({"BLOCK_T": 32, "BLOCK_D": 128}, 4, 3),
        ({"BLOCK_T": 16, "BLOCK_D": 256}, 4, 3),
        ({"BLOCK_T": 64, "BLOCK_D": 128}, 8, 3),
    ],
)


@autotune(configs=_NORM_CONFIGS, key=["tune_T", "tune_d"], reset_to_zero=["partial_ptr"])
@triton.jit
def _norm_grad_norm_kernel(
    x_ptr, stride_xb, stride_xt, stride_xd,
    g_ptr, stride_gb, stride_gt, stride_gd,
    mask_ptr, stride_mb, stride_mt,
    partial_ptr, stride_partial,
    T, d, tune_T, tune_d,
    HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, ACC: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """||sum_t g_t * x_hat_t||^2 (+ ||sum_t g_t||^2 with a bias) per example.

    Tiling: one program per (b, tile_d), the example slowest. Program (b, tile_d) owns features
    d_cols of example b; it walks the sequence in
    chunks of BLOCK_T rows, accumulating its slice of the weight gradient sum_t g_t * x_hat_t (and
    of the bias gradient sum_t g_t) in registers, then squares and sums the slice. Writes
    partial[b, tile_d]; the host sums each row. The per-example gradient is a d-vector, so this
    direct path is exact and reads each input element once.
    Cost per example: 3 T d flops (2 T d without a bias); reads 2 T d elements; extra memory
    B * ceil(d / BLOCK_D) accumulators. Memory-bound: its floor is the time to read x_hat and g.
    """
    b, tile_d = example_column(tl.program_id(0), d, BLOCK_D)
    d_cols = tile_d * BLOCK_D + tl.arange(0, BLOCK_D)
    x_base = x_ptr + b * stride_xb
    g_base = g_ptr + b * stride_gb
    mask_base = mask_ptr + b * stride_mb
    weight_grad = tl.zeros((BLOCK_D,), ACC)
    bias_grad = tl.zeros((BLOCK_D,), ACC)
    for t0 in range(0, T, BLOCK_T):
        rows = t0 + tl.arange(0, BLOCK_T)
        valid = rows_valid(mask_base, stride_mt, rows, T, HAS_MASK)
        x = load_tile(x_base, stride_xt, stride_xd, rows, valid, d_cols, d, ACC, ACC)
        g = load_tile(g_base, stride_gt, stride_gd, rows, valid, d_cols, d, ACC, ACC)
        weight_grad += tl.sum(g * x, axis=0)
        if HAS_BIAS:
            bias_grad += tl.sum(g, axis=0)
    tl.store(partial_ptr + b * stride_partial + tile_d, tl.sum(weight_grad * weight_grad + bias_grad * bias_grad))


def norm_grad_norm_sq(x_hat: torch.Tensor, g: torch.Tensor, bias: bool, mask: torch.Tensor | None) -> torch.Tensor:
    """(B,) ||sum_t g_t * x_hat_t||^2 (+ ||sum_t g_t||^2 with a bias) over the unmasked positions."""
    B, T, d = g.shape
    dtype = accum_dtype(x_hat, g)
    if B == 0:
        return torch.zeros(0, dtype=dtype, device=g.device)
    partial = partials(B, block_count(d, smallest_block(_NORM_CONFIGS, "BLOCK_D")), dtype, g.device)
    _norm_grad_norm_kernel[column_grid(d, B)](
        x_hat, *x_hat.stride(),
        g, *g.stride(),
        *mask_args(mask, g),
        partial, partial.stride(0),
        T, d, tune_key(T), tune_key(d),
        HAS_BIAS=bias, HAS_MASK=mask is not None, ACC=TL_DTYPES[dtype],
    )
    return partial.sum(dim=1)
