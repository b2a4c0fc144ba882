"""Plain PyTorch reference for per-token cross-entropy scores.

Rows are processed in chunks of rows x vocabulary with an online softmax, so no (N, V) float32
tensor is ever allocated. For each row with logits z and target y the running state is
  m = max_v z_v,  r = sum_{v != y} exp(z_v - m),  q = sum_{v != y} exp(2 (z_v - m)),  z_y,
and at the end, with s = r + exp(z_y - m) the softmax denominator,
  loss = m + log s - z_y = log1p(r exp(m - z_y)),
  ||p - e_y||^2 = sum_{v != y} p_v^2 + (1 - p_y)^2 = q / s^2 + (r / s)^2.
Every term of the last sum is non-negative and the log1p form subtracts nothing: no
cancellation, so both scores keep their relative accuracy when p_y is close to 1 (the forms
sum_v p_v^2 - 2 p_y + 1 and log s - (z_y - m) lose it; the first can go negative).
Targets (N,) int64: a valid target outside [0, V) (possible only when the caller skipped the host
check) gives that row NaN scores, as the Triton kernels do.
"""
from __future__ import annotations

from typing import Callable

import torch

from .._checks import accum_dtype, rows_per_chunk

VOCAB_TILE = 8192

LogitTile = Callable[[slice, int, int], torch.Tensor]


def _token_scores(
    n_rows: int, vocab: int, logit_tile: LogitTile, targets: torch.Tensor, ignore_index: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    device = targets.device
    loss = torch.zeros(n_rows, dtype=dtype, device=device)
    fgrad = torch.zeros(n_rows, dtype=dtype, device=device)
    valid = targets != ignore_index
    zero = torch.zeros((), dtype=dtype, device=device)
    v_tile = min(vocab, VOCAB_TILE)
    step = rows_per_chunk(v_tile, n_rows)
    for r0 in range(0, n_rows, step):
        rows = slice(r0, r0 + step)
        tgt = targets[rows].clamp(0, vocab - 1)
        r = tgt.shape[0]
        m = torch.full((r,), float("-inf"), dtype=dtype, device=device)
        rest = torch.zeros(r, dtype=dtype, device=device)
        q = torch.zeros(r, dtype=dtype, device=device)
        z_y = torch.zeros(r, dtype=dtype, device=device)
        for v0 in range(0, vocab, v_tile):
            v1 = min(vocab, v0 + v_tile)
            z = logit_tile(rows, v0, v1).to(dtype)
            m_new = torch.maximum(m, z.max(dim=1).values)
            # Shift by 0 while every logit seen so far is -inf, so that no -inf - -inf = NaN arises
            # (a leading tile can be all -inf under vocabulary masking); exp(m - shift) is then 0.
            shift = torch.where(torch.isneginf(m_new), torch.zeros_like(m_new), m_new)
            scale = torch.exp(m - shift)
            here = (tgt >= v0) & (tgt < v1)
            local = (tgt - v0).clamp(0, v1 - v0 - 1)[:, None]
            z_y = torch.where(here, z.gather(1, local)[:, 0], z_y)
            e = torch.exp(z - shift[:, None])
            e.scatter_(1, local, torch.where(here[:, None], zero, e.gather(1, local)))
            rest = rest * scale + e.sum(dim=1)
            q = q * scale.square() + e.square().sum(dim=1)
            m = m_new
        loss[rows], fgrad[rows] = scores_from_state(m, rest, q, z_y, valid[rows])
    outside = valid & ((targets < 0) | (targets >= vocab))
    nan = torch.full((), float("nan"), dtype=dtype, device=device)
    return torch.where(outside, nan, loss), torch.where(outside, nan, fgrad), valid


# Below this margin m - z_y the loss is computed as log1p(rest e^(m - z_y)) (exp cannot overflow).
LOG1P_MARGIN = 30.0


def scores_from_state(
    m: torch.Tensor, rest: torch.Tensor, q: torch.Tensor, z_y: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, ||p - e_y||^2) of rows from their online-softmax state, 0 on invalid rows.

    loss = -log p_y = log(s) - (z_y - m) with s = rest + e^(z_y - m): when the target is nearly
    certain, s is 1 + (a tiny rest) and the subtraction would cancel, so while the margin
    m - z_y < LOG1P_MARGIN the loss is log1p(rest e^(m - z_y)), which keeps its relative
    accuracy; beyond it the loss exceeds the margin and the direct form is exact. The shift is 0
    while a row has seen only -inf, so no -inf - -inf arises."""
    shift = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    margin = shift - z_y
    s = rest + torch.exp(-margin)
    near = margin < LOG1P_MARGIN
    loss = torch.where(near, torch.log1p(rest * torch.exp(torch.where(near, margin, 0.0))), margin + torch.log(s))
    zero = torch.zeros((), dtype=m.dtype, device=m.device)
    return torch.where(valid, loss, zero), torch.where(valid, q / s.square() + (rest / s).square(), zero)


def cross_entropy_token_scores(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row (loss, ||p - e_y||^2, valid) for logits (N, V); zeros on ignored rows."""
    dtype = accum_dtype(logits)
    return _token_scores(
        logits.shape[0], logits.shape[1], lambda rows, v0, v1: logits[rows, v0:v1], targets, ignore_index, dtype
    )


def linear_cross_entropy_token_scores(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same from hidden (N, d) and head weight (V, d) (+ bias (V,)), one logit tile at a time."""
    dtype = accum_dtype(hidden, weight, bias)

    def logit_tile(rows: slice, v0: int, v1: int) -> torch.Tensor:
        z = hidden[rows].to(dtype) @ weight[v0:v1].to(dtype).T
        return z if bias is None else z + bias[v0:v1].to(dtype)

    return _token_scores(hidden.shape[0], weight.shape[0], logit_tile, targets, ignore_index, dtype)
