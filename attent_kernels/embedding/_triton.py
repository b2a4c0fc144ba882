"""Triton kernels for the embedding family: the same function, signature and result as
``_reference`` (inputs arrive validated: ids (B, T) int64, g (B, T, d), keep (B, T) bool or None,
with the mask and padding_idx already folded into keep).

Two kernels, chosen by ``path`` ("auto": the cost model of ``attent_kernels/_cost.py``): the
pair kernel forms Gram tiles of g over the block pairs of the sequence, O(T^2 d), best at short
sequences; the sorted kernel sorts each example's ids and sums every run of equal ids in order,
O(T d). Both keep the conventions of ``attent_kernels/_triton_tiles.py`` and share its helpers:
kept-out positions are never read, the tl.dot dtype policy of ``dot_types`` with float32
accumulation (float64 for float64 g), per-program partial sums reduced with ``torch.sum`` (no
atomics), the example index slowest in the grid, autotuned tiles on GPU and one small
configuration under the interpreter.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _cost
from .._checks import accum_dtype
from .._triton_tiles import (
    PAIR_CONFIGS,
    PAIR_PRUNING,
    autotune,
    autotune_configs,
    block_count,
    column_grid,
    dot_types,
    example_column,
    example_pair,
    gram_tile,
    load_tile,
    mask_args,
    pair_grid,
    pair_slots,
    partials,
    rows_valid,
    shared_memory_pruning,
    smallest_block,
    tune_key,
)

# (sequence chunk, feature tile) of the sorted kernel.
_SORTED_CONFIGS = autotune_configs(
    {"BLOCK_T": 16, "BLOCK_D": 16},
    [
        ({"BLOCK_T": 32, "BLOCK_D": 128}, 4, 2),
        ({"BLOCK_T": 64, "BLOCK_D": 64}, 4, 2),
        ({"BLOCK_T": 64, "BLOCK_D": 128}, 4, 3),
        ({"BLOCK_T": 64, "BLOCK_D": 256}, 8, 3),
        ({"BLOCK_T": 128, "BLOCK_D": 128}, 8, 2),
    ],
)
# Operand elements of one chunk: the run-equality matrix and the g tile.
_SORTED_PRUNING = shared_memory_pruning(lambda b: b["BLOCK_T"] * (b["BLOCK_T"] + b["BLOCK_D"]))


@autotune(configs=PAIR_CONFIGS, key=["tune_T", "tune_d"], prune_configs_by=PAIR_PRUNING, reset_to_zero=["partial_ptr"])
@triton.jit
def _embedding_norm_kernel(
    ids_ptr, stride_ib, stride_it,
    g_ptr, stride_gb, stride_gt, stride_gd,
    mask_ptr, stride_mb, stride_mt,
    partial_ptr, stride_partial,
    T, d, tune_T, tune_d,
    HAS_MASK: tl.constexpr,
    OPERAND: tl.constexpr, DOT: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """||grad E||^2 = sum_{t,s} [id_t = id_s] (g_t . g_s) per example, over block pairs.

    Tiling: one program per (b, pair), the example slowest. Program (b, pair) owns one block pair
    (tb, sb), sb <= tb, of example b (the sum is symmetric in t, s: an off-diagonal pair counts twice); it
    forms the (BLOCK_T, BLOCK_T) g Gram tile in registers (tl.dot over d-chunks of BLOCK_K) and
    the id-equality tile of the two row blocks, and sums the Gram entries of equal ids; no T x T
    tensor leaves registers. Kept-out positions load g as zero, so they contribute nothing
    whatever their id. Writes partial[b, pair]; the host sums each row.
    Cost per example: T^2 d flops (half of the full Gram, T padded to BLOCK_T); B n(n + 1) / 2
    programs for n = ceil(T / BLOCK_T), each reading 2 BLOCK_T d elements of g and 2 BLOCK_T ids.
    """
    b, pair, tb, sb = example_pair(tl.program_id(0), T, BLOCK_T)
    ids_base = ids_ptr + b * stride_ib
    g_base = g_ptr + b * stride_gb
    mask_base = mask_ptr + b * stride_mb
    t_rows = tb * BLOCK_T + tl.arange(0, BLOCK_T)
    t_valid = rows_valid(mask_base, stride_mt, t_rows, T, HAS_MASK)
    t_ids = tl.load(ids_base + t_rows.to(tl.int64) * stride_it, mask=t_valid, other=0)
    s_rows = sb * BLOCK_T + tl.arange(0, BLOCK_T)
    s_valid = rows_valid(mask_base, stride_mt, s_rows, T, HAS_MASK)
    s_ids = tl.load(ids_base + s_rows.to(tl.int64) * stride_it, mask=s_valid, other=0)
    g_gram = gram_tile(
        tl.zeros((BLOCK_T, BLOCK_T), ACC),
        g_base, stride_gt, stride_gd, t_rows, t_valid, g_base, stride_gt, stride_gd, s_rows, s_valid,
        d, BLOCK_K, OPERAND, DOT, PRECISION,
    )
    same_id = t_ids[:, None] == s_ids[None, :]
    weight = 1.0 + (sb < tb).to(ACC)
    tl.store(partial_ptr + b * stride_partial + pair, weight * tl.sum(tl.sum(tl.where(same_id, g_gram, 0.0), axis=1)))


@autotune(
    configs=_SORTED_CONFIGS, key=["tune_T", "tune_d"], prune_configs_by=_SORTED_PRUNING, reset_to_zero=["partial_ptr"]
)
@triton.jit
def _sorted_embedding_norm_kernel(
    run_ptr, stride_rb, stride_rt,
    order_ptr, stride_ob, stride_ot,
    g_ptr, stride_gb, stride_gt, stride_gd,
    partial_ptr, stride_partial,
    T, d, tune_T, tune_d,
    OPERAND: tl.constexpr, DOT: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """||grad E||^2 = sum over runs of equal ids of ||sum_{t in run} g_t||^2 per example, from its
    positions sorted by id: run[b, u] numbers the run of sorted position u (-1: kept out, sorted
    first) and order[b, u] is its position in the sequence.

    Tiling: one program per (b, tile_d), the example slowest. Program (b, tile_d) walks example b's sorted
    positions in chunks of BLOCK_T, loading the g rows (columns of its d tile) in that order. In
    a chunk, the run sums of every row come from one tl.dot of the (BLOCK_T, BLOCK_T) run-equality
    matrix with the g tile, plus the carry: the sum of the run left open by the previous chunk.
    Each run that ends inside the chunk adds its squared sum; the chunk's last row becomes the
    new carry, and the old carry adds its square when the chunk does not continue its run.
    Writes partial[b, tile_d] (squared norms add over feature tiles); the host sums each row.
    Cost per example: 2 T BLOCK_T d flops (T padded to BLOCK_T), linear in T; reads T d elements
    of g once and 2 T indices per d tile; B ceil(d / BLOCK_D) programs; the host's sort is
    O(B T log T).
    """
    b, tile_d = example_column(tl.program_id(0), d, BLOCK_D)
    run_base = run_ptr + b * stride_rb
    order_base = order_ptr + b * stride_ob
    g_base = g_ptr + b * stride_gb
    cols = tile_d * BLOCK_D + tl.arange(0, BLOCK_D)
    total = tl.zeros((BLOCK_D,), ACC)
    carry = tl.zeros((BLOCK_D,), ACC)
    carry_run = tl.full([], -1, tl.int32)
    for t0 in range(0, T, BLOCK_T):
        rows = t0 + tl.arange(0, BLOCK_T)
        last = tl.minimum(t0 + BLOCK_T, T) - 1
        run = tl.load(run_base + rows.to(tl.int64) * stride_rt, mask=rows < T, other=-1)
        valid = run >= 0
        source = tl.load(order_base + rows.to(tl.int64) * stride_ot, mask=valid, other=0)
        g = load_tile(g_base, stride_gt, stride_gd, source, valid, cols, d, OPERAND, DOT)
        same_run = (run[:, None] == run[None, :]).to(DOT)
        sums = tl.dot(same_run, g, tl.zeros((BLOCK_T, BLOCK_D), ACC), input_precision=PRECISION)
        sums += tl.where(valid & (run == carry_run), 1.0, 0.0)[:, None] * carry[None, :]
        next_run = tl.load(run_base + (rows + 1).to(tl.int64) * stride_rt, mask=rows < last, other=-2)
        ends = valid & (rows < last) & (next_run != run)
        first_run = tl.load(run_base + t0 * stride_rt)
        total += tl.where(first_run != carry_run, carry * carry, 0.0)
        total += tl.sum(tl.where(ends[:, None], sums * sums, 0.0), axis=0)
        carry = tl.sum(tl.where((rows == last)[:, None], sums, 0.0), axis=0)
        carry_run = tl.load(run_base + last * stride_rt)
    tl.store(partial_ptr + b * stride_partial + tile_d, tl.sum(total + carry * carry))


def _pair_norm_sq(ids: torch.Tensor, g: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    B, T, d = g.shape
    partial = partials(B, pair_slots(T, PAIR_CONFIGS), accum_dtype(g), g.device)
    _embedding_norm_kernel[pair_grid(T, B)](
        ids, *ids.stride(),
        g, *g.stride(),
        *mask_args(keep, g),
        partial, partial.stride(0),
        T, d, tune_key(T), tune_key(d),
        HAS_MASK=keep is not None, **dot_types(g)._asdict(),
    )
    return partial.sum(dim=1)


def _sorted_runs(ids: torch.Tensor, keep: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(run, order), each (B, T): each example's positions sorted by id (kept-out ones first),
    order[b, u] the position of sorted entry u and run[b, u] the index of its run of equal ids,
    -1 for kept-out positions."""
    key = ids if keep is None else torch.where(keep, ids, torch.iinfo(torch.int64).min)
    sorted_key, order = torch.sort(key, dim=1, stable=True)
    run = torch.zeros_like(sorted_key, dtype=torch.int32)
    run[:, 1:] = (sorted_key[:, 1:] != sorted_key[:, :-1]).cumsum(dim=1, dtype=torch.int32)
    if keep is not None:
        run = torch.where(keep.gather(1, order), run, -1)
    return run, order


def _sorted_norm_sq(ids: torch.Tensor, g: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    B, T, d = g.shape
    run, order = _sorted_runs(ids, keep)
    partial = partials(B, block_count(d, smallest_block(_SORTED_CONFIGS, "BLOCK_D")), accum_dtype(g), g.device)
    _sorted_embedding_norm_kernel[column_grid(d, B)](
        run, *run.stride(),
        order, *order.stride(),
        g, *g.stride(),
        partial, partial.stride(0),
        T, d, tune_key(T), tune_key(d),
        **dot_types(g)._asdict(),
    )
    return partial.sum(dim=1)


def embedding_grad_norm_sq(ids: torch.Tensor, g: torch.Tensor, keep: torch.Tensor | None, path: str) -> torch.Tensor:
    """(B,) sum_{t,s} [id_t = id_s] (g_t . g_s) over the kept positions of each example."""
    B, T, d = g.shape
    if B == 0:
        return torch.zeros(0, dtype=accum_dtype(g), device=g.device)
    if path == "auto":
        path = "sorted" if _cost.embedding_sorts(B, T, d) else "pairs"
    if path == "sorted":
        return _sorted_norm_sq(ids, g, keep)
    return _pair_norm_sq(ids, g, keep)
