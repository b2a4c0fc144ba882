"""Embedding family: per-example squared norm of an embedding table's gradient."""
from __future__ import annotations

import torch

from .._checks import check_mask, fail, require_bool, require_float, require_index, require_int, require_rank, require_same_device, shape_str
from .._dispatch import Backend, implementation

__all__ = ["embedding_grad_norm_sq"]

PATHS = ("auto", "pairs", "sorted")


@torch.no_grad()
def embedding_grad_norm_sq(
    ids: torch.Tensor,
    g: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    padding_idx: int | None = None,
    num_embeddings: int | None = None,
    check_ids: bool = True,
    path: str = "auto",
    backend: Backend = "auto",
) -> torch.Tensor:
    """Per-example ||grad E||^2 of an embedding lookup y_t = E[id_t].

    Positions with the same id add their gradients before squaring:
    ||grad E_i||^2 = sum_{t,s} [id_t = id_s] (g_t . g_s).

    Args:
        ids: (B,) or (B, T) integer token ids.
        g: gradient w.r.t. the looked-up rows, (B, d) or (B, T, d).
        mask: (B,) or (B, T) bool (or 0/1); False positions contribute nothing.
        padding_idx: positions holding this id contribute nothing (as ``nn.Embedding`` gives
            its padding row no gradient).
        num_embeddings: the table's row count, when known: ids must lie in [0, num_embeddings).
        check_ids: check on the host that no id of a counted position (not masked, not padding)
            is negative or, with ``num_embeddings``, past the table, and raise a ValueError
            naming them (on CUDA: one device synchronization). False skips it, for ids the
            lookup itself already checked (``nn.Embedding`` refuses them): the result is then
            the formula's value for the ids as given.
        path: how the Triton backend computes it: "pairs" (the Gram of g over the block pairs of
            the sequence, O(T^2 d)), "sorted" (each example's ids sorted, then every run of equal
            ids summed in order, O(T d)) or "auto" (the cost model's choice,
            ``attent_kernels/_cost.py``). The reference has one algorithm (an index_add per id).
        backend: "auto", "triton" or "reference".

    Returns:
        (B,) float32 (float64 for float64 g). The Triton kernels multiply in g's dtype (float32:
        TF32 when ``torch.backends.cuda.matmul.allow_tf32`` is on, within about 1e-3; else to
        rounding), with float32 accumulation.
    """
    op = "embedding_grad_norm_sq"
    if path not in PATHS:
        fail(op, f"path must be one of {PATHS}, got {path!r}")
    require_int(op, "ids", ids)
    require_float(op, "g", g)
    require_rank(op, "ids", ids, (1, 2))
    if g.dim() != ids.dim() + 1 or g.shape[:-1] != ids.shape:
        fail(op, f"ids has shape {shape_str(ids)} and g has shape {shape_str(g)}: g must be ids' shape plus a feature dimension")
    keep = check_mask(op, mask, ids.shape, f"ids of shape {shape_str(ids)}")
    require_same_device(op, {"ids": ids, "g": g, "mask": keep})
    require_index(op, "padding_idx", padding_idx, allow_none=True)
    if padding_idx is not None:
        not_pad = ids != padding_idx
        keep = not_pad if keep is None else keep & not_pad
    if num_embeddings is not None and (not isinstance(num_embeddings, int) or isinstance(num_embeddings, bool)
                                       or num_embeddings < 1):
        fail(op, f"num_embeddings must be a positive integer or None, got {num_embeddings!r}")
    require_bool(op, "check_ids", check_ids)
    if check_ids:
        outside = (ids < 0) if num_embeddings is None else (ids < 0) | (ids >= num_embeddings)
        if keep is not None:
            outside &= keep
        if bool(outside.any()):
            bound = "non-negative" if num_embeddings is None else f"in [0, {num_embeddings})"
            fail(op, f"ids must be {bound} at every counted position; found {ids[outside].unique()[:8].tolist()} "
                     f"in ids of shape {shape_str(ids)} (mask or padding_idx exclude positions that hold no real id)")
    if ids.dim() == 1:
        ids, g, keep = ids[:, None], g[:, None], None if keep is None else keep[:, None]
    ids = ids.long()
    return implementation(op, backend, __name__, ids, g).embedding_grad_norm_sq(ids, g, keep, path)
