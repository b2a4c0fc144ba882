"""Plain PyTorch reference for LayerNorm / RMSNorm affine parameters.

The per-example weight gradient sum_t g_t * x_hat_t and bias gradient sum_t g_t are d-vectors,
so the direct path is exact and cheap: O(B T d). Inputs arrive validated and 3-D:
x_hat (B, T, d), g (B, T, d), mask (B, T) bool or None.
"""
from __future__ import annotations

import torch

from .._checks import accum_dtype, rows_per_chunk
from ..linear._reference import masked


def norm_grad_norm_sq(x_hat: torch.Tensor, g: torch.Tensor, bias: bool, mask: torch.Tensor | None) -> torch.Tensor:
    B, T, d = g.shape
    dtype = accum_dtype(x_hat, g)
    out = torch.empty(B, dtype=dtype, device=g.device)
    step = rows_per_chunk(2 * T * d, B)
    for b0 in range(0, B, step):
        sl = slice(b0, b0 + step)
        m = None if mask is None else mask[sl]
        gc = masked(g[sl].to(dtype), m)
        xc = masked(x_hat[sl].to(dtype), m)
        out[sl] = (gc * xc).sum(dim=1).square().sum(dim=-1)
        if bias:
            out[sl] += gc.sum(dim=1).square().sum(dim=-1)
    return out
