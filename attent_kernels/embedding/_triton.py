"""Triton kernel for the embedding family: the same function, signature and result as
``_reference`` (inputs arrive validated: ids (B, T) int64, g (B, T, d), keep (B, T) bool or None,
with the mask and padding_idx already folded into keep).

It keeps the conventions of ``attent_kernels/_triton_tiles.py`` and shares its helpers: masked
positions are never read, float32 accumulation (float64 for float64 g), IEEE float32 products,
per-(example, block) partial sums reduced with ``torch.sum``, autotuned (t, s) tiling on GPU and
one small configuration under the interpreter.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._checks import accum_dtype
from .._triton_tiles import (
    PAIR_CONFIGS,
    dot_types,
    gram_tile,
    mask_args,
    rows_valid,
    tile_grid,
    tile_partials,
    tune_key,
)


@triton.autotune(configs=PAIR_CONFIGS, key=["tune_T", "tune_d"], reset_to_zero=["partial_ptr"])
@triton.jit
def _embedding_norm_kernel(
    ids_ptr, stride_ib, stride_it,
    g_ptr, stride_gb, stride_gt, stride_gd,
    mask_ptr, stride_mb, stride_mt,
    partial_ptr, stride_partial,
    T, d, tune_T, tune_d,
    HAS_MASK: tl.constexpr,
    DOT: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """||grad E||^2 = sum_{t,s} [id_t = id_s] (g_t . g_s) per example.

    Tiling: program (b, tb) owns rows t of block tb of example b and loops over the column blocks
    sb <= tb (the sum is symmetric in t, s: an off-diagonal block pair counts twice). Per pair it
    forms the (BLOCK_T, BLOCK_T) g Gram tile in registers (tl.dot over d-chunks of BLOCK_K) and the
    id-equality tile of the two row blocks, and reduces the Gram entries of equal ids to a row
    vector; no T x T tensor leaves registers. Kept-out positions load g as zero, so they
    contribute nothing whatever their id. Writes partial[b, tb]; the host sums over tb.
    Cost per example: T^2 d flops (half of the full Gram); reads about T^2 d / BLOCK_T elements of
    g (each block pair reloads its two row blocks) and T^2 / BLOCK_T ids; extra memory
    B * ceil(T / BLOCK_T) accumulators.
    """
    b = tl.program_id(0).to(tl.int64)
    tb = tl.program_id(1)
    ids_base = ids_ptr + b * stride_ib
    g_base = g_ptr + b * stride_gb
    mask_base = mask_ptr + b * stride_mb
    t_rows = tb * BLOCK_T + tl.arange(0, BLOCK_T)
    t_valid = rows_valid(mask_base, stride_mt, t_rows, T, HAS_MASK)
    t_ids = tl.load(ids_base + t_rows.to(tl.int64) * stride_it, mask=t_valid, other=0)
    row_sums = tl.zeros((BLOCK_T,), ACC)
    for sb in range(0, tb + 1):
        s_rows = sb * BLOCK_T + tl.arange(0, BLOCK_T)
        s_valid = rows_valid(mask_base, stride_mt, s_rows, T, HAS_MASK)
        s_ids = tl.load(ids_base + s_rows.to(tl.int64) * stride_it, mask=s_valid, other=0)
        g_gram = gram_tile(
            tl.zeros((BLOCK_T, BLOCK_T), ACC),
            g_base, stride_gt, stride_gd, t_rows, t_valid, g_base, stride_gt, stride_gd, s_rows, s_valid,
            d, BLOCK_K, DOT, PRECISION,
        )
        same_id = t_ids[:, None] == s_ids[None, :]
        weight = 1.0 + (sb < tb).to(ACC)
        row_sums += weight * tl.sum(tl.where(same_id, g_gram, 0.0), axis=1)
    tl.store(partial_ptr + b * stride_partial + tb, tl.sum(row_sums))


def embedding_grad_norm_sq(ids: torch.Tensor, g: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """(B,) sum_{t,s} [id_t = id_s] (g_t . g_s) over the kept positions of each example."""
    B, T, d = g.shape
    dtype = accum_dtype(g)
    if B == 0:
        return torch.zeros(0, dtype=dtype, device=g.device)
    dot, acc, precision = dot_types(g)
    partial = tile_partials(B, dtype, g.device, PAIR_CONFIGS, BLOCK_T=T)
    _embedding_norm_kernel[tile_grid(B, BLOCK_T=T)](
        ids, *ids.stride(),
        g, *g.stride(),
        *mask_args(keep, g),
        partial, partial.stride(0),
        T, d, tune_key(T), tune_key(d),
        HAS_MASK=keep is not None, DOT=dot, ACC=acc, PRECISION=precision,
    )
    return partial.sum(dim=1)
