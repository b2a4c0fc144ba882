"""Plain PyTorch reference for the linear family: exact, float32 (or float64) accumulation,
chunked over the batch so that no intermediate exceeds MAX_CHUNK_ELEMENTS elements.

Inputs arrive validated and 3-D: x (B, T, d), g (B, T, p), mask (B, T) bool or None.
"""
from __future__ import annotations

import torch

from .._checks import MAX_CHUNK_ELEMENTS, accum_dtype, rows_per_chunk


def masked(t: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Zero the rows of t (b, T, k) where mask (b, T) is False (NaN-safe: where, not multiply)."""
    if mask is None:
        return t
    return torch.where(mask[..., None], t, torch.zeros((), dtype=t.dtype, device=t.device))


def prefers_ghost(T: int, d: int, p: int) -> bool:
    """Cost model: ghost costs T^2 (d + p) per example, direct T d p."""
    return T * (d + p) < d * p


def _chunk(t: torch.Tensor, sl: slice, mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    return masked(t[sl].to(dtype), None if mask is None else mask[sl])


def _ghost_chunk(xc: torch.Tensor, gcs: list[torch.Tensor]) -> torch.Tensor:
    """(K, b): sum_{t,s} (x_t . x_s) (g_kt . g_ks) per layer k and example. The x Gram is formed
    once for all the layers k that share x; rows t are tiled so that each Gram tile stays bounded."""
    b, T, _ = xc.shape
    tile = rows_per_chunk(b * T, T)
    out = xc.new_zeros(len(gcs), b)
    for t0 in range(0, T, tile):
        gx = torch.bmm(xc[:, t0 : t0 + tile], xc.transpose(1, 2))
        for k, gc in enumerate(gcs):
            out[k] += (gx * torch.bmm(gc[:, t0 : t0 + tile], gc.transpose(1, 2))).sum(dim=(1, 2))
    return out


def _direct_chunk(xc: torch.Tensor, gcs: list[torch.Tensor]) -> torch.Tensor:
    """(K, b): ||g_k^T x||_F^2 per layer k and example, tiling output features so each tile stays
    bounded."""
    b, _, d = xc.shape
    out = xc.new_zeros(len(gcs), b)
    for k, gc in enumerate(gcs):
        p = gc.shape[-1]
        tile = rows_per_chunk(b * d, p)
        for p0 in range(0, p, tile):
            out[k] += torch.bmm(gc[:, :, p0 : p0 + tile].transpose(1, 2), xc).square().sum(dim=(1, 2))
    return out


def grouped_linear_grad_norm_sq(
    x: torch.Tensor,
    gs: list[torch.Tensor],
    biases: list[bool],
    mask: torch.Tensor | None,
    path: str,
) -> torch.Tensor:
    """(K, B): ||grad W_k||^2 + [biases[k]] ||grad b_k||^2 per layer k and example, for layers k
    sharing x."""
    B, T, d = x.shape
    p = sum(g.shape[-1] for g in gs)
    dtype = accum_dtype(x, *gs)
    ghost = path == "ghost" or (path == "auto" and prefers_ghost(T, d, p))
    per_example = min(T * T if ghost else p * d, MAX_CHUNK_ELEMENTS) + T * (d + p)
    step = rows_per_chunk(per_example, B)
    out = torch.empty(len(gs), B, dtype=dtype, device=x.device)
    for b0 in range(0, B, step):
        sl = slice(b0, b0 + step)
        xc = _chunk(x, sl, mask, dtype)
        gcs = [_chunk(g, sl, mask, dtype) for g in gs]
        out[:, sl] = _ghost_chunk(xc, gcs) if ghost else _direct_chunk(xc, gcs)
        for k, (gc, has_bias) in enumerate(zip(gcs, biases)):
            if has_bias:
                out[k, sl] += gc.sum(dim=1).square().sum(dim=-1)
    return out


def linear_grad_norm_sq(
    x: torch.Tensor, g: torch.Tensor, bias: bool, mask: torch.Tensor | None, path: str
) -> torch.Tensor:
    return grouped_linear_grad_norm_sq(x, [g], [bias], mask, path)[0]


def linear_weight_grad_and_norm_sq(
    x: torch.Tensor, g: torch.Tensor, mask: torch.Tensor | None, path: str = "fused"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight gradient and the norms, chunk by chunk; ``path`` names the Triton backend's
    algorithm and changes nothing here."""
    B, T, d = x.shape
    p = g.shape[-1]
    dtype = accum_dtype(x, g)
    grad = torch.zeros(p, d, dtype=dtype, device=x.device)
    norm_sq = torch.empty(B, dtype=dtype, device=x.device)
    step = rows_per_chunk(min(p * d, MAX_CHUNK_ELEMENTS) + T * (d + p), B)
    for b0 in range(0, B, step):
        sl = slice(b0, b0 + step)
        xc, gc = _chunk(x, sl, mask, dtype), _chunk(g, sl, mask, dtype)
        norm_sq[sl] = _direct_chunk(xc, [gc])[0]
        grad += gc.reshape(-1, p).T @ xc.reshape(-1, d)
    return grad, norm_sq


def linear_grad_gram(
    x: torch.Tensor,
    g: torch.Tensor,
    mask: torch.Tensor | None,
    x2: torch.Tensor,
    g2: torch.Tensor,
    mask2: torch.Tensor | None,
    bias: bool,
    path: str = "materialize",
) -> torch.Tensor:
    """<grad_i, grad2_j> for every pair: the flattened per-example gradients g_i^T x_i, built one
    tile of output features at a time for one chunk of examples per side, multiplied together.
    This is the one algorithm of the reference (and the Triton backend's "materialize" path):
    ``path`` names the Triton backend's choice and changes nothing here."""
    B, _, d = x.shape
    B2 = x2.shape[0]
    p = g.shape[-1]
    dtype = accum_dtype(x, g, x2, g2)
    out = torch.zeros(B, B2, dtype=dtype, device=x.device)
    p_tile = rows_per_chunk(d, p)
    step = rows_per_chunk(p_tile * d + x.shape[1] * (d + p), B)
    step2 = rows_per_chunk(p_tile * d + x2.shape[1] * (d + p), B2)
    for b0 in range(0, B, step):
        sl = slice(b0, b0 + step)
        xc, gc = _chunk(x, sl, mask, dtype), _chunk(g, sl, mask, dtype)
        for c0 in range(0, B2, step2):
            sl2 = slice(c0, c0 + step2)
            xc2, gc2 = _chunk(x2, sl2, mask2, dtype), _chunk(g2, sl2, mask2, dtype)
            for p0 in range(0, p, p_tile):
                a = torch.bmm(gc[:, :, p0 : p0 + p_tile].transpose(1, 2), xc).flatten(1)
                a2 = torch.bmm(gc2[:, :, p0 : p0 + p_tile].transpose(1, 2), xc2).flatten(1)
                out[sl, sl2] += a @ a2.T
            if bias:
                out[sl, sl2] += gc.sum(dim=1) @ gc2.sum(dim=1).T
    return out
