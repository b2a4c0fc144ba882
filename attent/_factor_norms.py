"""Squared norms and inner products of factored per-example gradients (see ``attent.factors``).

Every function takes factors in canonical form (:func:`canonical`): batch first, positions
flattened to one dimension T: Outer a (B, T, rows) or Ids (B, T), b (B, T, cols); Diag x, g
(B, T, n); Direct v (B, numel). Self norms go through the ``attent_kernels`` ops (Triton on CUDA
tensors); inner products, needed only for a parameter used more than once in one forward pass
(tied embeddings, a module called twice), are plain PyTorch on (B, T1, T2) position Grams.
"""
from __future__ import annotations

import torch

from attent_kernels import embedding_grad_norm_sq, linear_grad_norm_sq, norm_grad_norm_sq

from .factors import Diag, Direct, Factor, Ids, Outer


def _to_batch_first(t: torch.Tensor, batch_dim: int, keep_last: int) -> torch.Tensor:
    """(B, T, *last) from t with its batch at ``batch_dim``: positions flattened, last dims kept."""
    t = t.movedim(batch_dim, 0)
    return t.reshape(t.shape[0], -1, *t.shape[t.dim() - keep_last:]) if keep_last else t.reshape(t.shape[0], -1)


def _accumulation_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _common(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if a.dtype == b.dtype:
        return a, b
    dtype = torch.promote_types(a.dtype, b.dtype)
    return a.to(dtype), b.to(dtype)


def _tensors(factor: Factor) -> list[torch.Tensor]:
    if isinstance(factor, Outer):
        return [factor.a.ids if isinstance(factor.a, Ids) else factor.a, factor.b]
    return [factor.x, factor.g] if isinstance(factor, Diag) else [factor.v]


def _batch_dim(factor: Factor, preferred: int, batch: int) -> int:
    """The factor's batch dimension: its own, else ``preferred`` when every tensor has size ``batch``
    there, else dim 0 or 1 when exactly one of them fits (a pooled (B, d) tensor in a
    sequence-first model)."""
    tensors = _tensors(factor)
    shapes = ", ".join(str(tuple(t.shape)) for t in tensors)
    fits = [d for d in dict.fromkeys((preferred, 0, 1)) if all(t.dim() > d and t.shape[d] == batch for t in tensors)]
    if factor.batch_dim is not None:
        if factor.batch_dim not in fits:
            raise ValueError(f"tensors of shapes {shapes} do not have the batch of {batch} at their batch_dim={factor.batch_dim}")
        return factor.batch_dim
    if not fits:
        raise ValueError(f"tensors of shapes {shapes} have no dimension {preferred}, 0 or 1 of the batch size {batch} "
                         f"(the length of losses); a layer whose output is broadcast over the batch must be left out with params=")
    if fits[0] != preferred and len(fits) > 1:
        raise ValueError(f"tensors of shapes {shapes} fit the batch size {batch} in dims 0 and 1 but not at batch_dim={preferred}")
    return fits[0]


def canonical(factor: Factor, batch_dim: int, numel: int, batch: int) -> Factor:
    """``factor`` with batch first and positions flattened; a Direct summed to (B, numel).

    ``batch_dim`` is the preferred batch dimension, ``batch`` the number of examples (see
    :func:`_batch_dim`); raises ValueError naming the shapes when the factor does not fit."""
    dim = _batch_dim(factor, batch_dim, batch)
    if isinstance(factor, Outer):
        b = _to_batch_first(factor.b, dim, 1)
        if isinstance(factor.a, Ids):
            ids = factor.a.ids.movedim(dim, 0).reshape(b.shape[0], -1)
            return Outer(Ids(ids, factor.a.num, factor.a.padding_idx), b, 0)
        return Outer(_to_batch_first(factor.a, dim, 1), b, 0)
    if isinstance(factor, Diag):
        x, g = _common(factor.x, factor.g)
        return Diag(_to_batch_first(x, dim, 1), _to_batch_first(g, dim, 1), 0)
    v = factor.v.movedim(dim, 0)
    if v[0].numel() % numel:
        raise ValueError(f"a Direct factor of shape {tuple(factor.v.shape)} does not hold whole gradients of a parameter of {numel} elements")
    return Direct(v.reshape(v.shape[0], -1, numel).sum(dim=1, dtype=_accumulation_dtype(v)), 0)


def norm_sq(factor: Factor) -> torch.Tensor:
    """(B,) squared norm of a canonical factor's per-example gradient."""
    if isinstance(factor, Outer):
        if isinstance(factor.a, Ids):
            return embedding_grad_norm_sq(factor.a.ids, factor.b, padding_idx=factor.a.padding_idx)
        x, g = _common(factor.b, factor.a)
        return linear_grad_norm_sq(x, g)
    if isinstance(factor, Diag):
        return norm_grad_norm_sq(factor.x, factor.g, bias=False)
    return factor.v.square().sum(dim=1)


def _as_direct(factor: Diag) -> Direct:
    dtype = _accumulation_dtype(factor.x)
    return Direct((factor.x.to(dtype) * factor.g.to(dtype)).sum(dim=1), 0)


def _row_gram(a1: torch.Tensor | Ids, a2: torch.Tensor | Ids, dtype: torch.dtype) -> torch.Tensor:
    """(B, T1, T2) inner products a1_t . a2_s of the row factors (one-hot rows for Ids)."""
    if isinstance(a1, Ids) and isinstance(a2, Ids):
        same = a1.ids[:, :, None] == a2.ids[:, None, :]
        for ids, pad in ((a1.ids[:, :, None], a1.padding_idx), (a2.ids[:, None, :], a2.padding_idx)):
            if pad is not None:
                same = same & (ids != pad)
        return same.to(dtype)
    if isinstance(a2, Ids):
        return _row_gram(a2, a1, dtype).transpose(1, 2)
    if isinstance(a1, Ids):
        gathered = a2.to(dtype).gather(2, a1.ids[:, None, :].expand(-1, a2.shape[1], -1))  # (B, T2, T1)
        if a1.padding_idx is not None:
            gathered = gathered.masked_fill((a1.ids == a1.padding_idx)[:, None, :], 0)
        return gathered.transpose(1, 2)
    return a1.to(dtype) @ a2.to(dtype).transpose(1, 2)


def _outer_times_direct(factor: Outer, direct: Direct, rows: int, cols: int) -> torch.Tensor:
    """<sum_t a_t b_t^T, V> per example, V the Direct gradient as (rows, cols)."""
    dtype = _accumulation_dtype(factor.b, direct.v)
    v = direct.v.to(dtype).reshape(-1, rows, cols)
    if isinstance(factor.a, Ids):
        picked = v.gather(1, factor.a.ids.clamp(0, rows - 1)[:, :, None].expand(-1, -1, cols))  # (B, T, cols)
        products = (picked * factor.b.to(dtype)).sum(dim=2)
        if factor.a.padding_idx is not None:
            products = products.masked_fill(factor.a.ids == factor.a.padding_idx, 0)
        return products.sum(dim=1)
    return torch.einsum("btr,brc,btc->b", factor.a.to(dtype), v, factor.b.to(dtype))


def inner(f1: Factor, f2: Factor, shape: torch.Size) -> torch.Tensor:
    """(B,) inner products of two canonical factors' per-example gradients of one parameter."""
    f1 = _as_direct(f1) if isinstance(f1, Diag) else f1
    f2 = _as_direct(f2) if isinstance(f2, Diag) else f2
    if isinstance(f1, Direct) and isinstance(f2, Direct):
        dtype = _accumulation_dtype(f1.v, f2.v)
        return (f1.v.to(dtype) * f2.v.to(dtype)).sum(dim=1)
    rows, cols = shape[0], shape[1:].numel()
    if isinstance(f1, Direct):
        return _outer_times_direct(f2, f1, rows, cols)
    if isinstance(f2, Direct):
        return _outer_times_direct(f1, f2, rows, cols)
    dtype = _accumulation_dtype(f1.b, f2.b)
    return (_row_gram(f1.a, f2.a, dtype) * (f1.b.to(dtype) @ f2.b.to(dtype).transpose(1, 2))).sum(dim=(1, 2))
