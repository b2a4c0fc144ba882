"""Plain PyTorch reference for the embedding family.

Per example, ||grad E||^2 = sum_{t,s} [id_t = id_s] (g_t . g_s) = sum over distinct ids of
||sum_{t: id_t = id} g_t||^2: rows of g are summed per (example, id) with one index_add, so the
cost is O(B T d) and no T x T tensor is formed. Inputs arrive validated and 2-D/3-D:
ids (B, T) int64, g (B, T, d), keep (B, T) bool (mask and padding_idx already folded in) or None.
"""
from __future__ import annotations

import torch

from .._checks import accum_dtype, rows_per_chunk


def embedding_grad_norm_sq(ids: torch.Tensor, g: torch.Tensor, keep: torch.Tensor | None, path: str = "auto") -> torch.Tensor:
    """(B,) ||grad E||^2; ``path`` names the Triton backend's algorithm and changes nothing here."""
    B, T, d = g.shape
    dtype = accum_dtype(g)
    out = torch.zeros(B, dtype=dtype, device=g.device)
    step = rows_per_chunk(2 * T * d, B)
    for b0 in range(0, B, step):
        idc = ids[b0 : b0 + step]
        gc = g[b0 : b0 + step].to(dtype)
        b = idc.shape[0]
        example = torch.arange(b, device=g.device)[:, None].expand(b, T)
        if keep is not None:
            kc = keep[b0 : b0 + step]
            idc, gc, example = idc[kc], gc[kc], example[kc]
        else:
            idc, gc, example = idc.reshape(-1), gc.reshape(-1, d), example.reshape(-1)
        pairs = torch.stack([example, idc], dim=1)
        uniq, slot = torch.unique(pairs, dim=0, return_inverse=True)
        summed = torch.zeros(uniq.shape[0], d, dtype=dtype, device=g.device).index_add_(0, slot, gc)
        out[b0 : b0 + step].index_add_(0, uniq[:, 0], summed.square().sum(dim=1))
    return out
