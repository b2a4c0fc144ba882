"""Triton kernels for per-token cross-entropy scores: the same functions, signatures and results as
``_reference`` (inputs arrive validated: targets (N,) int64 in [0, V) or equal to ignore_index).

Both kernels keep, per row and per vocabulary slice, the online-softmax state of the reference,
  m = max_v z_v,  r = sum_{v != y} exp(z_v - m),  q = sum_{v != y} exp(2 (z_v - m)),  z_y,
update it one vocabulary tile at a time with one shared helper, and write it as a partial state.
The vocabulary is split into slices (enough (row block, slice) programs to fill the device, the
count from ``attent_kernels/_cost.py``); the host merges the slices' states by log-sum-exp,
  m = max_s m_s,  r = sum_s r_s exp(m_s - m),  q = sum_s q_s exp(2 (m_s - m)),  z_y = sum_s z_y,s,
in a fixed order (deterministic, no atomics), and finishes as the reference does
(``_reference.scores_from_state``): ||p - e_y||^2 = q / s^2 + (r / s)^2, s = r + exp(z_y - m), a
sum of non-negative terms, and loss = log1p(r exp(m - z_y)) (no cancellation when p_y is close to 1). No probability tensor, and
for the fused head no logits tensor, is ever written: each (row, slice) writes four numbers.

Conventions (those of ``attent_kernels/_triton_tiles.py``, whose helpers these share): an
ignored row is never read, so a NaN in it cannot surface, and scores 0;
a NaN in a row's logits (or hidden state) makes only that row NaN; accumulation is float32
(float64 for float64 inputs); the head's logit tiles follow the tl.dot dtype policy of
``dot_types`` (16-bit tensor-core dots for any 16-bit input, TF32 for float32 when PyTorch
allows it); block sizes are autotuned on GPU, keyed on the sizes rounded up to powers of two,
and one small configuration runs under the interpreter.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _cost
from .._checks import accum_dtype
from .._triton_tiles import (
    TL_DTYPES,
    autotune_configs,
    block_count,
    dot_types,
    gram_tile,
    largest_block,
    shared_memory_pruning,
    tune_key,
)
from . import _reference

# (row block, vocabulary tile) of the cross-entropy kernel: few rows and wide tiles for large V.
_CE_CONFIGS = autotune_configs(
    {"BLOCK_N": 16, "BLOCK_V": 64},
    [
        ({"BLOCK_N": 1, "BLOCK_V": 2048}, 4, 2),
        ({"BLOCK_N": 1, "BLOCK_V": 4096}, 8, 2),
        ({"BLOCK_N": 2, "BLOCK_V": 2048}, 8, 2),
        ({"BLOCK_N": 4, "BLOCK_V": 1024}, 4, 2),
        ({"BLOCK_N": 16, "BLOCK_V": 256}, 4, 2),
    ],
)
# (row block, vocabulary tile, hidden chunk) of the fused head kernel: GEMM-like tiles.
_HEAD_CONFIGS = autotune_configs(
    {"BLOCK_N": 16, "BLOCK_V": 64, "BLOCK_K": 16},
    [
        ({"BLOCK_N": 64, "BLOCK_V": 128, "BLOCK_K": 64}, 4, 3),
        ({"BLOCK_N": 128, "BLOCK_V": 64, "BLOCK_K": 64}, 4, 3),
        ({"BLOCK_N": 128, "BLOCK_V": 128, "BLOCK_K": 32}, 8, 3),
        ({"BLOCK_N": 128, "BLOCK_V": 128, "BLOCK_K": 64}, 8, 3),
        ({"BLOCK_N": 64, "BLOCK_V": 256, "BLOCK_K": 64}, 8, 3),
    ],
)
# Operand elements of one pipeline stage: BLOCK_K features of the hidden rows and weight rows.
_HEAD_PRUNING = shared_memory_pruning(lambda b: (b["BLOCK_N"] + b["BLOCK_V"]) * b["BLOCK_K"])


# ---------------------------------------------------------------------------------------------
# Shared device helpers
# ---------------------------------------------------------------------------------------------


@triton.jit
def _load_targets(targets_ptr, rows, n_rows, ignore_index):
    """(targets, valid) of a row block: valid = inside [0, n_rows) and not ignored; the target of
    an invalid row is -1, so it matches no vocabulary column."""
    targets = tl.load(targets_ptr + rows, mask=rows < n_rows, other=ignore_index)
    valid = (rows < n_rows) & (targets != ignore_index)
    return tl.where(valid, targets, -1), valid


@triton.jit
def _empty_softmax_state(BLOCK_N: tl.constexpr, ACC: tl.constexpr):
    """(m, rest, q, z_y) of rows that have seen no logit yet: m = -inf, the sums 0."""
    zeros = tl.zeros((BLOCK_N,), ACC)
    return tl.full((BLOCK_N,), float("-inf"), ACC), zeros, zeros, zeros


@triton.jit
def _online_softmax_update(m, rest, q, z_y, z, cols, targets):
    """Fold one (rows, BLOCK_V) tile of logits z (columns beyond the slice hold -inf) into the
    running state (m, rest, q, z_y) of each row. A slice spans whole tiles of every configuration
    (``_vocab_slices``), so only columns beyond V lie outside one, and they match no target. The shift is the new running max, or 0 while a row has
    seen only -inf, so no -inf - -inf is ever formed."""
    is_target = cols[None, :] == targets[:, None]
    z_y += tl.sum(tl.where(is_target, z, 0.0), axis=1)
    m_new = tl.maximum(m, tl.max(z, axis=1))
    shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    scale = tl.exp(m - shift)
    e = tl.where(is_target, 0.0, tl.exp(z - shift[:, None]))
    rest = rest * scale + tl.sum(e, axis=1)
    q = q * scale * scale + tl.sum(e * e, axis=1)
    return m_new, rest, q, z_y


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------




@triton.jit
def _store_state(state_ptr, stride_field, stride_slice, rows, n_rows, m, rest, q, z_y):
    """Write the (m, rest, q, z_y) of a row block for this program's vocabulary slice."""
    base = state_ptr + tl.program_id(1).to(tl.int64) * stride_slice + rows
    in_range = rows < n_rows
    tl.store(base, m, mask=in_range)
    tl.store(base + stride_field, rest, mask=in_range)
    tl.store(base + 2 * stride_field, q, mask=in_range)
    tl.store(base + 3 * stride_field, z_y, mask=in_range)


@triton.autotune(configs=_CE_CONFIGS, key=["tune_N", "tune_V"])
@triton.jit
def _cross_entropy_kernel(
    logits_ptr, stride_ln, stride_lv,
    targets_ptr, state_ptr, stride_field, stride_slice,
    N, V, slice_cols, ignore_index, tune_N, tune_V,
    ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
):
    """Cross-entropy state of a logits matrix, one pass over each vocabulary slice.

    Tiling: grid (row block, slice), the slice slowest. Program (n, s) owns rows
    [n BLOCK_N, (n + 1) BLOCK_N) and the vocabulary slice [s slice_cols, (s + 1) slice_cols),
    walks it in tiles of BLOCK_V columns and folds each (BLOCK_N, BLOCK_V) tile into the rows'
    online-softmax state in registers; ignored rows load nothing. Writes the state to
    state[:, s, rows]; the host merges the slices.
    Cost per row: about 6 V flops and 2 V exponentials; reads V logits once, writes 4 numbers per
    slice. Memory-bound: its floor is the time to read the logits.
    """
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    v_start = tl.program_id(1) * slice_cols
    v_end = tl.minimum(V, v_start + slice_cols)
    targets, valid = _load_targets(targets_ptr, rows, N, ignore_index)
    row_offsets = rows.to(tl.int64)[:, None] * stride_ln
    m, rest, q, z_y = _empty_softmax_state(BLOCK_N, ACC)
    for v0 in range(v_start, v_end, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        in_slice = cols < v_end
        ptrs = logits_ptr + row_offsets + cols.to(tl.int64)[None, :] * stride_lv
        z = tl.load(ptrs, mask=valid[:, None] & in_slice[None, :], other=float("-inf")).to(ACC)
        m, rest, q, z_y = _online_softmax_update(m, rest, q, z_y, z, cols, targets)
    _store_state(state_ptr, stride_field, stride_slice, rows, N, m, rest, q, z_y)


@triton.autotune(configs=_HEAD_CONFIGS, key=["tune_N", "tune_V", "tune_d"], prune_configs_by=_HEAD_PRUNING)
@triton.jit
def _linear_cross_entropy_kernel(
    hidden_ptr, stride_hn, stride_hd,
    weight_ptr, stride_wv, stride_wd,
    bias_ptr, stride_bias,
    targets_ptr, state_ptr, stride_field, stride_slice,
    N, V, d, slice_cols, ignore_index, tune_N, tune_V, tune_d,
    HAS_BIAS: tl.constexpr,
    OPERAND: tl.constexpr, DOT: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Cross-entropy state of the logits hidden @ weight^T (+ bias), never materialized.

    Tiling: grid (row block, slice), the slice slowest. Program (n, s) owns the hidden rows
    [n BLOCK_N, (n + 1) BLOCK_N) and the vocabulary slice [s slice_cols, (s + 1) slice_cols);
    per tile of BLOCK_V weight rows it forms the (BLOCK_N, BLOCK_V) logit tile in registers
    (tl.dot over d-chunks of BLOCK_K, plus the bias) and folds it into the rows' online-softmax
    state. Ignored rows read their hidden state as zero. Writes the state to state[:, s, rows];
    the host merges the slices by log-sum-exp.
    Cost: 2 N V d flops (the head GEMM, V padded to BLOCK_V per slice) plus about 6 N V for the
    softmax; reads N d hidden elements once per vocabulary tile and V d weight elements once per
    row block (mostly served by L2), writes 4 N numbers per slice: no N x V memory. The slices
    make ceil(N / BLOCK_N) * slices programs, enough to fill the device at small N.
    """
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    v_start = tl.program_id(1) * slice_cols
    v_end = tl.minimum(V, v_start + slice_cols)
    targets, valid = _load_targets(targets_ptr, rows, N, ignore_index)
    m, rest, q, z_y = _empty_softmax_state(BLOCK_N, ACC)
    for v0 in range(v_start, v_end, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        in_slice = cols < v_end
        z = gram_tile(
            tl.zeros((BLOCK_N, BLOCK_V), ACC),
            hidden_ptr, stride_hn, stride_hd, rows, valid, weight_ptr, stride_wv, stride_wd, cols, in_slice,
            d, BLOCK_K, OPERAND, DOT, PRECISION,
        )
        if HAS_BIAS:
            z += tl.load(bias_ptr + cols.to(tl.int64) * stride_bias, mask=in_slice, other=0.0).to(ACC)[None, :]
        z = tl.where(in_slice[None, :], z, float("-inf"))
        m, rest, q, z_y = _online_softmax_update(m, rest, q, z_y, z, cols, targets)
    _store_state(state_ptr, stride_field, stride_slice, rows, N, m, rest, q, z_y)


# ---------------------------------------------------------------------------------------------
# Host side
# ---------------------------------------------------------------------------------------------


def _vocab_slices(N: int, V: int, configs: list[triton.Config]) -> tuple[int, int]:
    """(columns per slice, slices): enough (row block, slice) programs to fill the device (the
    cost model's target), each slice a whole number of the largest vocabulary tiles, so of the
    tiles of every configuration (powers of two)."""
    row_blocks = block_count(N, largest_block(configs, "BLOCK_N"))
    return _cost.aligned_slices(V, row_blocks, largest_block(configs, "BLOCK_V"))


def _state(n_slices: int, N: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(4, slices, N) buffer of every slice's (m, rest, q, z_y); every entry is written."""
    return torch.empty(4, n_slices, N, dtype=dtype, device=device)


def _merged_scores(
    state: torch.Tensor, targets: torch.Tensor, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row (loss, ||p - e_y||^2, valid) from the slices' states, merged by log-sum-exp in
    slice order (the shift is 0 while a row has seen only -inf, so no -inf - -inf arises)."""
    m_s, rest_s, q_s, z_y_s = state
    m = m_s.max(dim=0).values
    shift = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    scale = torch.exp(m_s - shift)
    valid = targets != ignore_index
    loss, fgrad = _reference.scores_from_state(
        m, (rest_s * scale).sum(dim=0), (q_s * scale.square()).sum(dim=0), z_y_s.sum(dim=0), valid
    )
    return loss, fgrad, valid


def _empty_scores(targets: torch.Tensor, ignore_index: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    zero = torch.zeros(0, dtype=dtype, device=targets.device)
    return zero, zero.clone(), targets != ignore_index


def cross_entropy_token_scores(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row (loss, ||p - e_y||^2, valid) for logits (N, V); zeros on ignored rows."""
    N, V = logits.shape
    dtype = accum_dtype(logits)
    if N == 0:
        return _empty_scores(targets, ignore_index, dtype)
    slice_cols, n_slices = _vocab_slices(N, V, _CE_CONFIGS)
    state = _state(n_slices, N, dtype, logits.device)
    _cross_entropy_kernel[lambda meta: (block_count(N, meta["BLOCK_N"]), n_slices)](
        logits, *logits.stride(),
        targets, state, state.stride(0), state.stride(1),
        N, V, slice_cols, ignore_index, tune_key(N), tune_key(V),
        ACC=TL_DTYPES[dtype],
    )
    return _merged_scores(state, targets, ignore_index)


def linear_cross_entropy_token_scores(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same from hidden (N, d) and head weight (V, d) (+ bias (V,)), one logit tile at a time."""
    N, d = hidden.shape
    V = weight.shape[0]
    dtype = accum_dtype(hidden, weight, bias)
    if N == 0:
        return _empty_scores(targets, ignore_index, dtype)
    slice_cols, n_slices = _vocab_slices(N, V, _HEAD_CONFIGS)
    state = _state(n_slices, N, dtype, hidden.device)
    _linear_cross_entropy_kernel[lambda meta: (block_count(N, meta["BLOCK_N"]), n_slices)](
        hidden, *hidden.stride(),
        weight, *weight.stride(),
        weight if bias is None else bias, 0 if bias is None else bias.stride(0),
        targets, state, state.stride(0), state.stride(1),
        N, V, d, slice_cols, ignore_index, tune_key(N), tune_key(V), tune_key(d),
        HAS_BIAS=bias is not None, **dot_types(hidden, weight)._asdict(),
    )
    return _merged_scores(state, targets, ignore_index)
