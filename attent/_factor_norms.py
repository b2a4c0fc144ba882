"""Squared norms and inner products of factored per-example gradients (see ``attent.factors``).

Every function takes factors in canonical form (:func:`canonical`): batch first, positions
flattened to one dimension T: Outer a (B, T, rows) or Ids (B, T), b (B, T, cols); Diag x, g
(B, T, n); Direct v (B, numel). Self norms go through the ``attent_kernels`` ops (Triton on CUDA
tensors; a linear weight's together with its summed gradient on the probe's fused route, or with
the other weights that read the same input in one grouped call); inner
products, needed only for a parameter used more than once in one forward pass (tied embeddings, a
module called twice), are plain PyTorch on (B, T1, T2) position Grams.
"""
from __future__ import annotations

from typing import Callable

import torch

from attent_kernels import (
    accum_dtype,
    embedding_grad_norm_sq,
    grouped_linear_grad_norm_sq,
    linear_grad_norm_sq,
    linear_weight_grad_and_norm_sq,
    norm_grad_norm_sq,
)

from .factors import Diag, Direct, Factor, Ids, Layout, Outer


def _to_batch_first(t: torch.Tensor, layout: Layout, batch: int, keep_last: int) -> torch.Tensor:
    """(B, T, *last) from t with its examples where ``layout`` says: positions flattened, the last
    ``keep_last`` dims kept; raises ValueError when t does not hold ``batch`` examples there."""
    shape, dim = tuple(t.shape), layout.dim
    if t.dim() <= dim + keep_last:
        raise ValueError(f"a tensor of shape {shape} has no batch dimension {dim} in front of its "
                         f"{keep_last} feature dimension(s)")
    rows = t.shape[dim]
    if (rows % batch if layout.flattened else rows != batch):
        held = f"{rows} rows, not a multiple of" if layout.flattened else f"size {rows} at dim {dim}, not"
        raise ValueError(f"a tensor of shape {shape} has {held} the batch size {batch} (the length of losses)")
    t = t.movedim(dim, 0)
    return t.reshape(batch, -1, *t.shape[t.dim() - keep_last:]) if keep_last else t.reshape(batch, -1)


def _common(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors in their promoted dtype (each returned as it is when all dtypes agree)."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return tuple(t.to(dtype) for t in tensors)


def _same_positions(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.shape[:2] != b.shape[:2]:
        raise ValueError(f"{what}: the two tensors hold different positions ({tuple(a.shape)} and {tuple(b.shape)})")


def canonical(factor: Factor, layout: Layout, shape: torch.Size, batch: int) -> Factor:
    """``factor`` with batch first and positions flattened; a Diag's trailing ``shape`` dims
    flattened to one; a Direct summed to (B, numel).

    ``layout`` is the layer's (a factor's own ``batch_dim`` replaces it), ``shape`` the
    parameter's, ``batch`` the number of examples; raises ValueError naming the shapes when the
    factor does not hold ``batch`` examples where the layout says."""
    if factor.batch_dim is not None:
        layout = Layout(factor.batch_dim)
    if isinstance(factor, Outer):
        b = _to_batch_first(factor.b, layout, batch, 1)
        if isinstance(factor.a, Ids):
            ids = _to_batch_first(factor.a.ids, layout, batch, 0)
            _same_positions(ids, b, "ids and output gradient")
            return Outer(Ids(ids, factor.a.num, factor.a.padding_idx), b, 0)
        a = _to_batch_first(factor.a, layout, batch, 1)
        _same_positions(a, b, "Outer factors")
        return Outer(a, b, 0)
    if isinstance(factor, Diag):
        x, g = _common(factor.x, factor.g)
        k = len(shape)
        if tuple(x.shape) != tuple(g.shape) or tuple(x.shape[x.dim() - k:]) != tuple(shape):
            raise ValueError(f"Diag factors of shapes {tuple(x.shape)} and {tuple(g.shape)} do not both end in the "
                             f"parameter's shape {tuple(shape)}")
        x, g = (_to_batch_first(t, layout, batch, k).flatten(2) for t in (x, g))
        return Diag(x, g, 0)
    numel = shape.numel()
    v = _to_batch_first(factor.v, layout, batch, 0)
    if v.shape[1] % numel:
        raise ValueError(f"a Direct factor of shape {tuple(factor.v.shape)} does not hold whole gradients of a "
                         f"parameter of {numel} elements")
    return Direct(v.reshape(batch, -1, numel).sum(dim=1, dtype=accum_dtype(v)), 0)


def stacked(examples: list[Factor]) -> Factor:
    """One factor of B examples from B factors of one example each, of one layer the batch shares
    (each read from its example's gradient): the examples at a new dim 0 (its ``batch_dim``), every
    position of each kept. A tensor every example's factor holds (the layer's batch-free input) is
    expanded, not copied."""
    def stack(tensors: list[torch.Tensor]) -> torch.Tensor:
        first = tensors[0]
        return first.expand(len(tensors), *first.shape) if all(t is first for t in tensors) else torch.stack(tensors)

    first = examples[0]
    if isinstance(first, Outer):
        if isinstance(first.a, Ids):
            a: torch.Tensor | Ids = Ids(stack([f.a.ids for f in examples]), first.a.num, first.a.padding_idx)
        else:
            a = stack([f.a for f in examples])
        return Outer(a, stack([f.b for f in examples]), 0)
    if isinstance(first, Diag):
        return Diag(stack([f.x for f in examples]), stack([f.g for f in examples]), 0)
    return Direct(stack([f.v for f in examples]), 0)


def norm_sq(factor: Factor, bias: bool = False) -> torch.Tensor:
    """(B,) squared norm of a canonical factor's per-example gradient; ``bias``: plus the norm
    ||sum_t g_t||^2 of a bias whose gradient sums the output gradient g (a float Outer's a, a
    Diag's g), in the same kernel call."""
    if isinstance(factor, Outer):
        if isinstance(factor.a, Ids):
            # the layer's lookup already refused ids outside its table: no host check (a device sync)
            return embedding_grad_norm_sq(factor.a.ids, factor.b, padding_idx=factor.a.padding_idx, check_ids=False)
        x, g = _common(factor.b, factor.a)
        return linear_grad_norm_sq(x, g, bias=bias)
    if isinstance(factor, Diag):
        return norm_grad_norm_sq(factor.x, factor.g, bias=bias)
    return factor.v.square().sum(dim=1)


def rounded_by_autocast(factor: Factor, dtype: torch.dtype | None,
                        cast: Callable[[torch.Tensor, torch.dtype], torch.Tensor]) -> Factor:
    """``factor`` as its layer's matmul multiplied it. ``dtype``: the autocast dtype the layer call
    ran under (None outside autocast). A float :class:`Outer` with one factor in ``dtype`` and the
    other float32 is a matmul autocast ran in ``dtype`` on a float32 input it cast first, so the
    per-example gradient is made of that rounded input: the float32 factor comes back rounded to
    ``dtype`` by ``cast(tensor, dtype)`` (the kernels then read both in 16 bits and accumulate in
    float32). Any other factor is returned as it is."""
    if dtype is None or not isinstance(factor, Outer) or isinstance(factor.a, Ids):
        return factor
    a, b = factor.a, factor.b
    if a.dtype == dtype and b.dtype == torch.float32:
        return Outer(a, cast(b, dtype), factor.batch_dim)
    if b.dtype == dtype and a.dtype == torch.float32:
        return Outer(cast(a, dtype), b, factor.batch_dim)
    return factor


def grouped_norm_sq(factors: list[Outer], biases: list[bool]) -> torch.Tensor:
    """(K, B) squared norms of K canonical float Outer factors that share their b (the layers'
    common input x), row k factor k's (plus ||sum_t a_t||^2 where ``biases[k]``, as in
    :func:`norm_sq`): one ``grouped_linear_grad_norm_sq`` call, the Gram of x formed once. The
    tensors meet in their promoted dtype, as in :func:`norm_sq`."""
    x, *gs = _common(factors[0].b, *(factor.a for factor in factors))
    return grouped_linear_grad_norm_sq(x, gs, biases=biases, per_layer=True)


def weight_grad_and_norm_sq(factor: Outer, path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The summed gradient sum_i sum_t a_it b_it^T (rows, cols) of a canonical float Outer, and
    its (B,) per-example squared norms, from one pass over a and b (``linear_weight_grad_and_norm_sq``
    with ``path``: "fused", "separate" or "auto"); float32 (float64 for float64 factors). The two
    tensors keep their dtypes (a 16-bit output gradient with a float32 input, as under autocast,
    multiplies in 16 bits on the Triton kernel)."""
    if isinstance(factor.a, Ids):
        raise TypeError("the fused weight gradient needs a float row factor, not token ids")
    return linear_weight_grad_and_norm_sq(factor.b, factor.a, path=path)


def _as_direct(factor: Diag) -> Direct:
    dtype = accum_dtype(factor.x)
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
    dtype = accum_dtype(factor.b, direct.v)
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
        dtype = accum_dtype(f1.v, f2.v)
        return (f1.v.to(dtype) * f2.v.to(dtype)).sum(dim=1)
    rows, cols = shape[0], shape[1:].numel()
    if isinstance(f1, Direct):
        return _outer_times_direct(f2, f1, rows, cols)
    if isinstance(f2, Direct):
        return _outer_times_direct(f1, f2, rows, cols)
    dtype = accum_dtype(f1.b, f2.b)
    return (_row_gram(f1.a, f2.a, dtype) * (f1.b.to(dtype) @ f2.b.to(dtype).transpose(1, 2))).sum(dim=(1, 2))
