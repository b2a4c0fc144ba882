"""Loss-score family: per-example loss and functional-gradient norm from a model's outputs.

Normalization, the same in every op of the family: ``loss`` is the example's MEAN loss (over its
valid tokens for cross-entropy, over its valid elements for MSE), while ``fgrad_sq`` is the squared
norm of the gradient of the example's SUMMED loss w.r.t. its outputs: for softmax cross-entropy
sum_t ||softmax(z_t) - e_{y_t}||^2, for MSE sum 4 (f - y)^2. So a sequence's ``fgrad_sq`` grows with
its length where its ``loss`` does not; divide by ``count`` (cross-entropy) or by the squared
element count (MSE) for the gradient of the mean loss.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .._checks import (
    accum_dtype,
    check_mask,
    fail,
    require_bool,
    require_float,
    require_index,
    require_int,
    require_rank,
    require_same_device,
    require_tensor,
    shape_str,
)
from .._dispatch import Backend, check_backend, implementation

__all__ = ["CEScores", "MSEScores", "cross_entropy_scores", "linear_cross_entropy_scores", "mse_scores"]


class CEScores(NamedTuple):
    """Per-example cross-entropy scores, each (B,) float32 (count: int64).

    loss: MEAN token loss over the example's valid tokens (0 when it has none).
    fgrad_sq: SUM over valid tokens of ||softmax(z_t) - onehot(y_t)||^2: the squared norm of the
        gradient of the example's summed token loss w.r.t. its logits (divide by count^2 for the
        mean loss's).
    count: number of valid tokens.
    """

    loss: torch.Tensor
    fgrad_sq: torch.Tensor
    count: torch.Tensor


class MSEScores(NamedTuple):
    """Per-example MSE scores, each (B,) float32 (float64 for float64 inputs).

    loss: MEAN squared error over the example's valid elements (0 when it has none).
    fgrad_sq: squared norm of the gradient of the example's SUMMED squared error w.r.t. its
        prediction, sum 4 (f - y)^2 over valid elements (divide by the squared count of valid
        elements for the mean loss's)."""

    loss: torch.Tensor
    fgrad_sq: torch.Tensor


def _check_targets(op: str, targets: torch.Tensor, row_shape: torch.Size, vocab: int, ignore_index: int, what: str,
                   check_range: bool) -> None:
    require_index(op, "ignore_index", ignore_index, allow_none=False)
    require_int(op, "targets", targets)
    if targets.shape != row_shape:
        fail(op, f"targets has shape {shape_str(targets)} but {what} needs targets of shape ({', '.join(map(str, row_shape))})")
    require_bool(op, "check_targets", check_range)
    if not check_range:
        return
    valid = targets != ignore_index
    out_of_range = valid & ((targets < 0) | (targets >= vocab))
    if bool(out_of_range.any()):
        bad = targets[out_of_range]
        fail(op, f"targets must lie in [0, {vocab}) or equal ignore_index={ignore_index}; found {bad.unique()[:8].tolist()}")


def _per_example(tokens: tuple[torch.Tensor, torch.Tensor, torch.Tensor], rows_shape: torch.Size) -> CEScores:
    """Per-token (loss, fgrad, valid) of the B * T rows -> per-example CEScores; 2-D inputs (one
    token per example, its scores 0 where ignored) are their own per-example scores."""
    loss_t, fgrad_t, valid = tokens
    if len(rows_shape) == 1:
        return CEScores(loss_t, fgrad_t, valid.to(torch.int64))
    B, T = rows_shape
    loss_t, fgrad_t, valid = (t.reshape(B, T) for t in tokens)
    count = valid.sum(dim=1)
    loss = loss_t.sum(dim=1) / count.clamp(min=1).to(loss_t.dtype)
    return CEScores(loss, fgrad_t.sum(dim=1), count)


@torch.no_grad()
def cross_entropy_scores(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    ignore_index: int = -100,
    check_targets: bool = True,
    backend: Backend = "auto",
) -> CEScores:
    """Per-example softmax cross-entropy loss, functional-gradient norm and valid-token count.

    One pass over the vocabulary per row with an online softmax; no probability tensor and no
    (B*T, V) float32 copy of the logits is allocated. A small call (at most
    ``loss_scores._triton.SMALL_LOGITS`` logits) on CUDA is one kernel launch.

    Args:
        logits: (B, V) or (B, T, V), any floating dtype.
        targets: (B,) or (B, T) integer class ids in [0, V), or ignore_index.
        ignore_index: target value of positions that contribute nothing.
        check_targets: check on the host that every target lies in [0, V) or equals
            ignore_index, and raise a ValueError naming the bad ids (on CUDA: one device
            synchronization). False skips it, for targets already checked (e.g. by the
            ``F.cross_entropy`` of the same step): a target outside the range then gives its
            example NaN scores, never a silently wrong number.
        backend: "auto", "triton" or "reference".

    Returns:
        CEScores(loss, fgrad_sq, count), each (B,): ``loss`` the MEAN over the example's valid
        tokens, ``fgrad_sq`` the SUM over them (float32; float64 for float64 logits); ``count``
        int64.
    """
    op = "cross_entropy_scores"
    require_float(op, "logits", logits)
    require_rank(op, "logits", logits, (2, 3))
    if logits.shape[-1] == 0:
        fail(op, f"logits has shape {shape_str(logits)}: the class dimension must not be empty")
    _check_targets(op, targets, logits.shape[:-1], logits.shape[-1], ignore_index, f"logits of shape {shape_str(logits)}",
                   check_targets)
    require_same_device(op, {"logits": logits, "targets": targets})
    vocab = logits.shape[-1]
    flat_logits, flat_targets = logits.reshape(-1, vocab), targets.reshape(-1).long()
    impl = implementation(op, backend, __name__, flat_logits, flat_targets)
    return _per_example(impl.cross_entropy_token_scores(flat_logits, flat_targets, ignore_index), logits.shape[:-1])


@torch.no_grad()
def linear_cross_entropy_scores(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    check_targets: bool = True,
    backend: Backend = "auto",
) -> CEScores:
    """Cross-entropy scores of the logits hidden @ weight.T (+ bias), computed one vocabulary
    tile at a time so that the full logits tensor is never allocated.

    Args:
        hidden: (B, d) or (B, T, d) final hidden states.
        weight: (V, d) output-head weight.
        targets: (B,) or (B, T) class ids in [0, V), or ignore_index.
        bias: optional (V,) output-head bias.
        ignore_index, check_targets, backend: as in :func:`cross_entropy_scores`.

    Returns:
        CEScores(loss, fgrad_sq, count), each (B,): the loss a mean, fgrad_sq a sum over the
        example's valid tokens, as in :func:`cross_entropy_scores`.
    """
    op = "linear_cross_entropy_scores"
    require_float(op, "hidden", hidden)
    require_float(op, "weight", weight)
    require_rank(op, "hidden", hidden, (2, 3))
    require_rank(op, "weight", weight, (2,))
    if weight.shape[0] == 0:
        fail(op, f"weight has shape {shape_str(weight)}: it must have at least one class row")
    if weight.shape[1] != hidden.shape[-1]:
        fail(op, f"weight has shape {shape_str(weight)} but hidden has shape {shape_str(hidden)}: weight must be (V, {hidden.shape[-1]})")
    if bias is not None:
        require_float(op, "bias", bias)
        if bias.shape != weight.shape[:1]:
            fail(op, f"bias has shape {shape_str(bias)} but weight has shape {shape_str(weight)}: bias must be ({weight.shape[0]},)")
    _check_targets(op, targets, hidden.shape[:-1], weight.shape[0], ignore_index, f"hidden of shape {shape_str(hidden)}",
                   check_targets)
    require_same_device(op, {"hidden": hidden, "weight": weight, "targets": targets, "bias": bias})
    flat_hidden, flat_targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1).long()
    impl = implementation(op, backend, __name__, flat_hidden, weight, bias, flat_targets)
    tokens = impl.linear_cross_entropy_token_scores(flat_hidden, weight, bias, flat_targets, ignore_index)
    return _per_example(tokens, hidden.shape[:-1])


@torch.no_grad()
def mse_scores(
    pred: torch.Tensor, target: torch.Tensor, *, mask: torch.Tensor | None = None, backend: Backend = "auto"
) -> MSEScores:
    """Per-example mean squared error and functional-gradient norm (elementwise PyTorch on every
    device and backend: one fused expression, memory-bound, no kernel of its own).

    Args:
        pred: (B, ...) predictions, floating.
        target: same shape as pred.
        mask: optional bool (or 0/1) mask over a leading prefix of pred's dims, e.g. (B,) or
            (B, T) for pred (B, T, D); False entries contribute nothing.
        backend: "auto", "triton" or "reference", as for every op; each runs the same expression.

    Returns:
        MSEScores(loss, fgrad_sq), each (B,) float32 (float64 for float64 inputs): ``loss`` the
        MEAN squared error over the example's valid elements, ``fgrad_sq`` the squared gradient
        norm of their SUM, 4 sum (f - y)^2; an example with no valid element gets 0 for both.
    """
    op = "mse_scores"
    check_backend(op, backend)
    require_float(op, "pred", pred)
    require_float(op, "target", target)
    if pred.dim() < 1 or target.shape != pred.shape:
        fail(op, f"pred has shape {shape_str(pred)} and target has shape {shape_str(target)}: they must match, with a batch dimension")
    if mask is not None:
        require_tensor(op, "mask", mask)
    require_same_device(op, {"pred": pred, "target": target, "mask": mask})
    dtype = accum_dtype(pred, target)
    sq = (pred.to(dtype) - target.to(dtype)).square()
    if mask is None:
        keep = torch.ones(pred.shape, dtype=torch.bool, device=pred.device)
    else:
        if mask.dim() < 1 or mask.dim() > pred.dim():
            fail(op, f"mask has shape {shape_str(mask)} but must be a leading prefix of pred's shape {shape_str(pred)}")
        keep = check_mask(op, mask, pred.shape[: mask.dim()], f"pred of shape {shape_str(pred)}")
        keep = keep.reshape(*keep.shape, *([1] * (pred.dim() - keep.dim()))).expand(pred.shape)
    rows = (pred.shape[0], math.prod(pred.shape[1:]))
    sq = torch.where(keep, sq, torch.zeros((), dtype=dtype, device=pred.device)).reshape(rows)
    count = keep.reshape(rows).sum(dim=1)
    total = sq.sum(dim=1)
    return MSEScores(total / count.clamp(min=1).to(dtype), 4 * total)
