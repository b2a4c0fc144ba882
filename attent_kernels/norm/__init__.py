"""Norm-layer family: per-example gradient norms of LayerNorm / RMSNorm weight (and bias)."""
from __future__ import annotations

import torch

from .._checks import check_mask, fail, require_float, require_rank, require_same_device, shape_str
from .._dispatch import Backend, implementation

__all__ = ["norm_grad_norm_sq"]


@torch.no_grad()
def norm_grad_norm_sq(
    x_hat: torch.Tensor,
    g: torch.Tensor,
    *,
    bias: bool = False,
    mask: torch.Tensor | None = None,
    backend: Backend = "auto",
) -> torch.Tensor:
    """Per-example squared gradient norm of a norm layer's affine parameters, y = x_hat * w + b.

    Args:
        x_hat: the normalized input (before the affine), (B, d) or (B, T, d).
        g: gradient w.r.t. the layer output, same shape as x_hat.
        bias: False (the default, as in every op of the package: RMSNorm, or a LayerNorm whose
            bias is not counted) counts the weight alone; True adds the bias gradient
            ||sum_t g_t||^2 (a LayerNorm with its bias).
        mask: (B,) or (B, T) bool (or 0/1); False positions contribute nothing.
        backend: "auto", "triton" or "reference".

    Returns:
        (B,) float32 (float64 for float64 inputs): ||sum_t g_t * x_hat_t||^2 (+ ||sum_t g_t||^2),
        elementwise products with float32 accumulation on either backend (no dot, so no TF32
        or 16-bit rounding: the backends agree to rounding).
    """
    op = "norm_grad_norm_sq"
    require_float(op, "x_hat", x_hat)
    require_float(op, "g", g)
    require_rank(op, "x_hat", x_hat, (2, 3))
    if g.shape != x_hat.shape:
        fail(op, f"x_hat has shape {shape_str(x_hat)} and g has shape {shape_str(g)}: g must have x_hat's shape")
    mask = check_mask(op, mask, x_hat.shape[:-1], f"x_hat of shape {shape_str(x_hat)}")
    require_same_device(op, {"x_hat": x_hat, "g": g, "mask": mask})
    if x_hat.dim() == 2:
        x_hat, g, mask = x_hat[:, None], g[:, None], None if mask is None else mask[:, None]
    return implementation(op, backend, __name__, x_hat, g).norm_grad_norm_sq(x_hat, g, bool(bias), mask)
