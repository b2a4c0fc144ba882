"""Triton kernels for per-token cross-entropy scores: the same functions, signatures and results as
``_reference`` (inputs arrive validated: targets (N,) int64 in [0, V) or equal to ignore_index).

Both kernels keep, per row, the online-softmax state of the reference,
  m = max_v z_v,  r = sum_{v != y} exp(z_v - m),  q = sum_{v != y} exp(2 (z_v - m)),  z_y,
update it one vocabulary tile at a time with one shared helper, and finish with
  loss = m + log s - z_y,  ||p - e_y||^2 = q / s^2 + (r / s)^2,  s = r + exp(z_y - m),
a sum of non-negative terms (no cancellation when p_y is close to 1). No probability tensor, and
for the fused head no logits tensor, is ever written: each row's output is three numbers.

Conventions (those of ``attent_kernels/_triton_tiles.py``, whose helpers these share): an
ignored row is never read, so a NaN in it cannot surface, and scores 0;
a NaN in a row's logits (or hidden state) makes only that row NaN; accumulation is float32
(float64 for float64 inputs); float32 products use IEEE precision; block sizes are autotuned on GPU,
keyed on the sizes rounded up to powers of two, and one small configuration runs under the
interpreter.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._checks import accum_dtype
from .._triton_tiles import TL_DTYPES, autotune_configs, dot_types, gram_tile, tile_grid, tune_key

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
    """Fold one (rows, BLOCK_V) tile of logits z (columns beyond V hold -inf) into the running
    state (m, rest, q, z_y) of each row. The shift is the new running max, or 0 while a row has
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


@triton.jit
def _store_token_scores(loss_ptr, fgrad_ptr, rows, n_rows, valid, m, rest, q, z_y):
    """loss = m + log s - z_y and ||p - e_y||^2 = q / s^2 + (rest / s)^2 per row, 0 for invalid rows."""
    shift = tl.where(m == float("-inf"), 0.0, m)
    s = rest + tl.exp(z_y - shift)
    loss = shift + tl.log(s) - z_y
    rest_share = rest / s
    fgrad = q / (s * s) + rest_share * rest_share
    in_range = rows < n_rows
    tl.store(loss_ptr + rows, tl.where(valid, loss, 0.0), mask=in_range)
    tl.store(fgrad_ptr + rows, tl.where(valid, fgrad, 0.0), mask=in_range)


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


@triton.autotune(configs=_CE_CONFIGS, key=["tune_N", "tune_V"])
@triton.jit
def _cross_entropy_kernel(
    logits_ptr, stride_ln, stride_lv,
    targets_ptr, loss_ptr, fgrad_ptr,
    N, V, ignore_index, tune_N, tune_V,
    ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
):
    """Cross-entropy scores of a logits matrix, one pass over the vocabulary.

    Tiling: program n owns rows [n BLOCK_N, (n + 1) BLOCK_N) and walks the vocabulary in tiles of
    BLOCK_V columns, folding each (BLOCK_N, BLOCK_V) tile into the rows' online-softmax state in
    registers; ignored rows load nothing. Writes loss[row] and fgrad[row].
    Cost per row: about 6 V flops and 2 V exponentials; reads V logits once, writes 2 numbers.
    Memory-bound: its floor is the time to read the logits.
    """
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    targets, valid = _load_targets(targets_ptr, rows, N, ignore_index)
    row_offsets = rows.to(tl.int64)[:, None] * stride_ln
    m, rest, q, z_y = _empty_softmax_state(BLOCK_N, ACC)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        ptrs = logits_ptr + row_offsets + cols.to(tl.int64)[None, :] * stride_lv
        z = tl.load(ptrs, mask=valid[:, None] & (cols[None, :] < V), other=float("-inf")).to(ACC)
        m, rest, q, z_y = _online_softmax_update(m, rest, q, z_y, z, cols, targets)
    _store_token_scores(loss_ptr, fgrad_ptr, rows, N, valid, m, rest, q, z_y)


@triton.autotune(configs=_HEAD_CONFIGS, key=["tune_N", "tune_V", "tune_d"])
@triton.jit
def _linear_cross_entropy_kernel(
    hidden_ptr, stride_hn, stride_hd,
    weight_ptr, stride_wv, stride_wd,
    bias_ptr, stride_bias,
    targets_ptr, loss_ptr, fgrad_ptr,
    N, V, d, ignore_index, tune_N, tune_V, tune_d,
    HAS_BIAS: tl.constexpr, DOT: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Cross-entropy scores of the logits hidden @ weight^T (+ bias), never materialized.

    Tiling: program n owns the hidden rows [n BLOCK_N, (n + 1) BLOCK_N) and walks the vocabulary
    in tiles of BLOCK_V weight rows; per tile it forms the (BLOCK_N, BLOCK_V) logit tile in
    registers (tl.dot over d-chunks of BLOCK_K, plus the bias) and folds it into the rows'
    online-softmax state. Ignored rows read their hidden state as zero and score 0.
    Cost: 2 N V d flops (the head GEMM) plus about 6 N V for the softmax; reads N d hidden
    elements once per vocabulary tile and V d weight elements once per row block
    (N d V / BLOCK_V + V d N / BLOCK_N, mostly served by L2), writes 2 N numbers: no N x V memory.
    """
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    targets, valid = _load_targets(targets_ptr, rows, N, ignore_index)
    m, rest, q, z_y = _empty_softmax_state(BLOCK_N, ACC)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        in_vocab = cols < V
        z = gram_tile(
            tl.zeros((BLOCK_N, BLOCK_V), ACC),
            hidden_ptr, stride_hn, stride_hd, rows, valid, weight_ptr, stride_wv, stride_wd, cols, in_vocab,
            d, BLOCK_K, DOT, PRECISION,
        )
        if HAS_BIAS:
            z += tl.load(bias_ptr + cols.to(tl.int64) * stride_bias, mask=in_vocab, other=0.0).to(ACC)[None, :]
        z = tl.where(in_vocab[None, :], z, float("-inf"))
        m, rest, q, z_y = _online_softmax_update(m, rest, q, z_y, z, cols, targets)
    _store_token_scores(loss_ptr, fgrad_ptr, rows, N, valid, m, rest, q, z_y)


# ---------------------------------------------------------------------------------------------
# Host side
# ---------------------------------------------------------------------------------------------


def _score_buffers(
    targets: torch.Tensor, ignore_index: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, fgrad, valid) buffers for the per-row results; the kernels fill the first two."""
    n_rows = targets.shape[0]
    loss = torch.zeros(n_rows, dtype=dtype, device=targets.device)
    fgrad = torch.zeros(n_rows, dtype=dtype, device=targets.device)
    return loss, fgrad, targets != ignore_index


def cross_entropy_token_scores(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row (loss, ||p - e_y||^2, valid) for logits (N, V); zeros on ignored rows."""
    N, V = logits.shape
    dtype = accum_dtype(logits)
    loss, fgrad, valid = _score_buffers(targets, ignore_index, dtype)
    if N == 0:
        return loss, fgrad, valid
    _cross_entropy_kernel[tile_grid(BLOCK_N=N)](
        logits, *logits.stride(),
        targets, loss, fgrad,
        N, V, ignore_index, tune_key(N), tune_key(V),
        ACC=TL_DTYPES[dtype],
    )
    return loss, fgrad, valid


def linear_cross_entropy_token_scores(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same from hidden (N, d) and head weight (V, d) (+ bias (V,)), one logit tile at a time."""
    N, d = hidden.shape
    V = weight.shape[0]
    dot, acc, precision = dot_types(hidden, weight)
    loss, fgrad, valid = _score_buffers(targets, ignore_index, accum_dtype(hidden, weight))
    if N == 0:
        return loss, fgrad, valid
    _linear_cross_entropy_kernel[tile_grid(BLOCK_N=N)](
        hidden, *hidden.stride(),
        weight, *weight.stride(),
        weight if bias is None else bias, 0 if bias is None else bias.stride(0),
        targets, loss, fgrad,
        N, V, d, ignore_index, tune_key(N), tune_key(V), tune_key(d),
        HAS_BIAS=bias is not None, DOT=dot, ACC=acc, PRECISION=precision,
    )
    return loss, fgrad, valid
