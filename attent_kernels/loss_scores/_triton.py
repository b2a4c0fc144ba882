"""Triton kernels for per-token cross-entropy scores: the same functions, signatures and results as
``_reference`` (targets (N,) int64; a valid target outside [0, V), possible only when the caller
skipped the host check, gives that row NaN scores).

Both kernels keep, per row and per vocabulary slice, the online-softmax state of the reference,
  m = max_v z_v,  r = sum_{v != y} exp(z_v - m),  q = sum_{v != y} exp(2 (z_v - m)),  z_y,
update it one vocabulary tile at a time with one shared helper, and write it as a partial state.
The vocabulary is split into slices (enough (row block, slice) programs to fill the device, the
count from ``attent_kernels/_cost.py``); the host merges the slices' states by log-sum-exp,
  m = max_s m_s,  r = sum_s r_s exp(m_s - m),  q = sum_s q_s exp(2 (m_s - m)),  z_y = sum_s z_y,s,
in a fixed order (deterministic, no atomics), and finishes as the reference does
(``_reference.scores_from_state``): ||p - e_y||^2 = q / s^2 + (r / s)^2, s = r + exp(z_y - m), a
sum of non-negative terms, and loss = log1p(r exp(m - z_y)) (no cancellation when p_y is close to 1).
A call of one slice finishes in the kernel instead (the same formulas in registers) and writes two
numbers per row: the host adds no work, and a small call (``SMALL_LOGITS``) is one launch of one
fixed configuration. No probability tensor, and for the fused head no logits tensor, is ever
written: each (row, slice) writes four numbers.

Conventions (those of ``attent_kernels/_triton_tiles.py``, whose helpers these share): an
ignored row is never read, so a NaN in it cannot surface, and scores 0;
a NaN in a row's logits (or hidden state) makes only that row NaN; accumulation is float32
(float64 for float64 inputs); the head's logit tiles follow the tl.dot dtype policy of
``dot_types`` (16-bit tensor-core dots for any 16-bit input, TF32 for float32 when PyTorch
allows it); block sizes are autotuned on GPU, keyed on the sizes rounded up to powers of two
(the rows capped at ``LARGE_ROWS``, so an epoch's short last batch reuses its tuning), and one
small configuration runs under the interpreter.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _cost
from .._checks import accum_dtype
from .._triton_tiles import (
    TL_DTYPES,
    autotune,
    autotune_configs,
    block_count,
    dot_types,
    largest_block,
    load_tile,
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
# (row block, vocabulary tile, hidden chunk) of the fused head kernel: GEMM-like tiles, and one
# 4-stage pipeline for large heads (a 128 x 256 logit tile spills registers beside the softmax state).
_HEAD_CONFIGS = autotune_configs(
    {"BLOCK_N": 16, "BLOCK_V": 64, "BLOCK_K": 16},
    [
        ({"BLOCK_N": 64, "BLOCK_V": 128, "BLOCK_K": 64}, 4, 3),
        ({"BLOCK_N": 128, "BLOCK_V": 64, "BLOCK_K": 64}, 4, 3),
        ({"BLOCK_N": 128, "BLOCK_V": 128, "BLOCK_K": 32}, 8, 3),
        ({"BLOCK_N": 128, "BLOCK_V": 128, "BLOCK_K": 64}, 8, 3),
        ({"BLOCK_N": 64, "BLOCK_V": 256, "BLOCK_K": 64}, 8, 3),
        ({"BLOCK_N": 128, "BLOCK_V": 128, "BLOCK_K": 64}, 8, 4),
    ],
)
# Operand elements of one pipeline stage: BLOCK_K features of the hidden rows and weight rows.
_HEAD_PRUNING = shared_memory_pruning(lambda b: (b["BLOCK_N"] + b["BLOCK_V"]) * b["BLOCK_K"])


# ---------------------------------------------------------------------------------------------
# Shared device helpers
# ---------------------------------------------------------------------------------------------


@triton.jit
def _load_targets(targets_ptr, rows, n_rows, V, ignore_index):
    """(targets, valid, outside) of a row block: valid = inside [0, n_rows) and not ignored; the
    target of an invalid row is -1, so it matches no vocabulary column; outside = valid rows whose
    target lies outside [0, V) (possible only when the caller skipped the host check: their
    target logit is stored as NaN, so both scores come out NaN)."""
    targets = tl.load(targets_ptr + rows, mask=rows < n_rows, other=ignore_index)
    valid = (rows < n_rows) & (targets != ignore_index)
    outside = valid & ((targets < 0) | (targets >= V))
    return tl.where(valid, targets, -1), valid, outside


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
def _log1p(x):
    """log(1 + x) to float rounding for x >= 0: x log(u) / (u - 1) with u = 1 + x rounded (exact
    where u rounds to 1), the classic correction of log's argument error."""
    u = 1.0 + x
    return tl.where(u == 1.0, x, tl.log(u) * x / tl.where(u == 1.0, 1.0, u - 1.0))


@triton.jit
def _store_scores(out_ptr, stride_field, rows, n_rows, valid, m, rest, q, z_y, LOG1P_MARGIN: tl.constexpr):
    """A one-slice call's finish in registers (``_reference.scores_from_state``): write each row's
    loss = log1p(rest e^(m - z_y)) (or m - z_y + log s beyond the margin) to out[0, rows] and
    ||p - e_y||^2 = q / s^2 + (rest / s)^2 to out[1, rows], 0 on invalid rows."""
    shift = tl.where(m == float("-inf"), 0.0, m)
    margin = shift - z_y
    s = rest + tl.exp(-margin)
    near = margin < LOG1P_MARGIN
    loss = tl.where(near, _log1p(rest * tl.exp(tl.where(near, margin, 0.0))), margin + tl.log(s))
    fgrad = q / (s * s) + (rest / s) * (rest / s)
    in_range = rows < n_rows
    tl.store(out_ptr + rows, tl.where(valid, loss, 0.0), mask=in_range)
    tl.store(out_ptr + stride_field + rows, tl.where(valid, fgrad, 0.0), mask=in_range)


@triton.jit
def _finish(out_ptr, stride_field, stride_slice, rows, n_rows, valid, outside, m, rest, q, z_y,
            FINISH: tl.constexpr, LOG1P_MARGIN: tl.constexpr):
    """Write a program's result: the finished scores (FINISH: the call has one slice) or the
    slice's state for the host merge; rows with an out-of-range target get a NaN target logit."""
    z_y = tl.where(outside, float("nan"), z_y)
    if FINISH:
        _store_scores(out_ptr, stride_field, rows, n_rows, valid, m, rest, q, z_y, LOG1P_MARGIN)
    else:
        _store_state(out_ptr, stride_field, stride_slice, rows, n_rows, m, rest, q, z_y)


@triton.jit
def _store_state(state_ptr, stride_field, stride_slice, rows, n_rows, m, rest, q, z_y):
    """Write the (m, rest, q, z_y) of a row block for this program's vocabulary slice."""
    base = state_ptr + tl.program_id(1).to(tl.int64) * stride_slice + rows
    in_range = rows < n_rows
    tl.store(base, m, mask=in_range)
    tl.store(base + stride_field, rest, mask=in_range)
    tl.store(base + 2 * stride_field, q, mask=in_range)
    tl.store(base + 3 * stride_field, z_y, mask=in_range)


@autotune(configs=_CE_CONFIGS, key=["tune_N", "tune_V"])
@triton.jit
def _cross_entropy_kernel(
    logits_ptr, stride_ln, stride_lv,
    targets_ptr, state_ptr, stride_field, stride_slice,
    N, V, slice_cols, ignore_index, tune_N, tune_V,
    ACC: tl.constexpr, FINISH: tl.constexpr, LOG1P_MARGIN: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
):
    """Cross-entropy state of a logits matrix, one pass over each vocabulary slice.

    Tiling: grid (row block, slice), the slice slowest. Program (n, s) owns rows
    [n BLOCK_N, (n + 1) BLOCK_N) and the vocabulary slice [s slice_cols, (s + 1) slice_cols),
    walks it in tiles of BLOCK_V columns and folds each (BLOCK_N, BLOCK_V) tile into the rows'
    online-softmax state in registers; ignored rows load nothing. Writes the state to
    state[:, s, rows] and the host merges the slices; with one slice (FINISH) it writes the
    finished (loss, fgrad) to out[:, rows] instead, and the host merges nothing.
    Cost per row: about 6 V flops and 2 V exponentials; reads V logits once, writes 4 numbers per
    slice. Memory-bound: its floor is the time to read the logits.
    """
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    v_start = tl.program_id(1) * slice_cols
    v_end = tl.minimum(V, v_start + slice_cols)
    targets, valid, outside = _load_targets(targets_ptr, rows, N, V, ignore_index)
    row_offsets = rows.to(tl.int64)[:, None] * stride_ln
    m, rest, q, z_y = _empty_softmax_state(BLOCK_N, ACC)
    for v0 in range(v_start, v_end, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        in_slice = cols < v_end
        ptrs = logits_ptr + row_offsets + cols.to(tl.int64)[None, :] * stride_lv
        z = tl.load(ptrs, mask=valid[:, None] & in_slice[None, :], other=float("-inf")).to(ACC)
        m, rest, q, z_y = _online_softmax_update(m, rest, q, z_y, z, cols, targets)
    _finish(state_ptr, stride_field, stride_slice, rows, N, valid, outside, m, rest, q, z_y, FINISH, LOG1P_MARGIN)


@autotune(configs=_HEAD_CONFIGS, key=["tune_N", "tune_V", "tune_d"], prune_configs_by=_HEAD_PRUNING)
@triton.jit
def _linear_cross_entropy_kernel(
    hidden_ptr, stride_hn, stride_hd,
    weight_ptr, stride_wv, stride_wd,
    bias_ptr, stride_bias,
    targets_ptr, state_ptr, stride_field, stride_slice,
    N, V, d, slice_cols, ignore_index, tune_N, tune_V, tune_d,
    HAS_BIAS: tl.constexpr,
    OPERAND: tl.constexpr, DOT: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    FINISH: tl.constexpr, LOG1P_MARGIN: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Cross-entropy state of the logits hidden @ weight^T (+ bias), never materialized.

    Tiling: grid (row block, slice), the slice slowest. Program (n, s) owns the hidden rows
    [n BLOCK_N, (n + 1) BLOCK_N) and the vocabulary slice [s slice_cols, (s + 1) slice_cols),
    and walks it in ONE loop over (vocabulary tile of BLOCK_V weight rows, hidden chunk of
    BLOCK_K), so the software pipeline (operand loads num_stages deep, asynchronous tensor-core
    dots) runs on across tiles: the next tile's operands load while a tile's softmax runs. At a
    tile's last chunk its (BLOCK_N, BLOCK_V) logits (plus the bias) are complete in registers and
    are folded into the rows' online-softmax state. Ignored rows read their hidden state as zero.
    Writes the state to state[:, s, rows] and the host merges the slices by log-sum-exp; with
    one slice (FINISH) it writes the finished (loss, fgrad) to out[:, rows].
    Cost: 2 N V d flops (the head GEMM, V padded to BLOCK_V per slice) plus about 6 N V for the
    softmax; reads N d hidden elements once per vocabulary tile and V d weight elements once per
    row block (mostly served by L2), writes 4 N numbers per slice: no N x V memory. The slices
    make ceil(N / BLOCK_N) * slices programs, enough to fill the device at small N.
    """
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    v_start = tl.program_id(1) * slice_cols
    v_end = tl.minimum(V, v_start + slice_cols)
    targets, valid, outside = _load_targets(targets_ptr, rows, N, V, ignore_index)
    m, rest, q, z_y = _empty_softmax_state(BLOCK_N, ACC)
    n_chunks = tl.maximum(tl.cdiv(d, BLOCK_K), 1)
    n_tiles = tl.maximum(tl.cdiv(v_end - v_start, BLOCK_V), 0)
    logits = tl.zeros((BLOCK_N, BLOCK_V), ACC)
    for k in range(0, n_tiles * n_chunks):
        cols = v_start + (k // n_chunks) * BLOCK_V + tl.arange(0, BLOCK_V)
        in_slice = cols < v_end
        features = (k % n_chunks) * BLOCK_K + tl.arange(0, BLOCK_K)
        h = load_tile(hidden_ptr, stride_hn, stride_hd, rows, valid, features, d, OPERAND, DOT)
        w = load_tile(weight_ptr, stride_wv, stride_wd, cols, in_slice, features, d, OPERAND, DOT)
        logits = tl.dot(h, tl.trans(w), logits, input_precision=PRECISION)
        if k % n_chunks == n_chunks - 1:
            z = logits
            if HAS_BIAS:
                z += tl.load(bias_ptr + cols.to(tl.int64) * stride_bias, mask=in_slice, other=0.0).to(ACC)[None, :]
            z = tl.where(in_slice[None, :], z, float("-inf"))
            m, rest, q, z_y = _online_softmax_update(m, rest, q, z_y, z, cols, targets)
            logits = tl.zeros((BLOCK_N, BLOCK_V), ACC)
    _finish(state_ptr, stride_field, stride_slice, rows, N, valid, outside, m, rest, q, z_y, FINISH, LOG1P_MARGIN)


# ---------------------------------------------------------------------------------------------
# Host side
# ---------------------------------------------------------------------------------------------

# A call with at most SMALL_LOGITS logits (N V) over at most SMALL_VOCAB classes is launch-bound:
# it runs one fixed configuration (an autotuner of one configuration: no key built, no tuning) in
# one vocabulary slice, finished in the kernel, so its cost is one launch, as for
# ``F.cross_entropy`` (a training step's logits, e.g. 32 x 10, or a short batch of a small
# vocabulary). A larger vocabulary takes the sliced kernel even for few rows, whose programs
# would otherwise each walk 16 rows of the whole vocabulary on a nearly empty device.
SMALL_LOGITS = 1 << 20
SMALL_VOCAB = 4096
_SMALL_CE_CONFIGS = autotune_configs({"BLOCK_N": 16, "BLOCK_V": 64}, [({"BLOCK_N": 16, "BLOCK_V": 256}, 4, 2)])
_small_cross_entropy_kernel = autotune(configs=_SMALL_CE_CONFIGS, key=[])(_cross_entropy_kernel.fn)
# Rows at or above this count share one tuning per vocabulary (their best tiles do not depend on
# N), so an epoch's short last batch does not tune again.
LARGE_ROWS = 1024


def _row_key(N: int) -> int:
    """Autotuning key of the row count: its power of two below LARGE_ROWS, one key above."""
    return min(tune_key(N), LARGE_ROWS)


def _vocab_slices(N: int, V: int, configs: list[triton.Config]) -> tuple[int, int]:
    """(columns per slice, slices): enough (row block, slice) programs to fill the device (the
    cost model's target), each slice a whole number of the largest vocabulary tiles, so of the
    tiles of every configuration (powers of two)."""
    row_blocks = block_count(N, largest_block(configs, "BLOCK_N"))
    return _cost.aligned_slices(V, row_blocks, largest_block(configs, "BLOCK_V"))


def _output(n_slices: int, N: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The kernel's output buffer: (2, 1, N) finished (loss, fgrad) of a one-slice call, else
    (4, slices, N) every slice's (m, rest, q, z_y); every entry is written."""
    return torch.empty(2 if n_slices == 1 else 4, n_slices, N, dtype=dtype, device=device)


def _scores(out: torch.Tensor, targets: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row (loss, ||p - e_y||^2, valid) from the kernel's output: as written by a one-slice
    call, else the slices' states merged by log-sum-exp in slice order (the shift is 0 while a row
    has seen only -inf, so no -inf - -inf arises)."""
    valid = targets != ignore_index
    if out.shape[0] == 2:
        return out[0, 0], out[1, 0], valid
    m_s, rest_s, q_s, z_y_s = out
    m = m_s.max(dim=0).values
    shift = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    scale = torch.exp(m_s - shift)
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
    small = N * V <= SMALL_LOGITS and V <= SMALL_VOCAB
    kernel = _small_cross_entropy_kernel if small else _cross_entropy_kernel
    slice_cols, n_slices = (V, 1) if small else _vocab_slices(N, V, _CE_CONFIGS)
    out = _output(n_slices, N, dtype, logits.device)
    kernel[lambda meta: (block_count(N, meta["BLOCK_N"]), n_slices)](
        logits, *logits.stride(),
        targets, out, out.stride(0), out.stride(1),
        N, V, slice_cols, ignore_index, _row_key(N), tune_key(V),
        ACC=TL_DTYPES[dtype], FINISH=n_slices == 1, LOG1P_MARGIN=_reference.LOG1P_MARGIN,
    )
    return _scores(out, targets, ignore_index)


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
    out = _output(n_slices, N, dtype, hidden.device)
    _linear_cross_entropy_kernel[lambda meta: (block_count(N, meta["BLOCK_N"]), n_slices)](
        hidden, *hidden.stride(),
        weight, *weight.stride(),
        weight if bias is None else bias, 0 if bias is None else bias.stride(0),
        targets, out, out.stride(0), out.stride(1),
        N, V, d, slice_cols, ignore_index, _row_key(N), tune_key(V), tune_key(d),
        HAS_BIAS=bias is not None, **dot_types(hidden, weight)._asdict(),
        FINISH=n_slices == 1, LOG1P_MARGIN=_reference.LOG1P_MARGIN,
    )
    return _scores(out, targets, ignore_index)
