"""Linear-layer family: per-example gradient norms and inner products of y = x W^T (+ b).

Per example, x is (T, d) and g = dl/dy is (T, p) (T = 1 for 2-D inputs); the per-example weight
gradient is g^T x (p x d). Every function here validates its arguments, then dispatches: CUDA
tensors to the Triton kernels in ``_triton``, CPU tensors to the exact reference in ``_reference``.

``bias`` means the same in every op of the package: False (the default) counts the weight alone,
True adds the bias gradient's term (||sum_t g_t||^2 in a norm, its inner products in a Gram).

Precision of the Triton kernels (``attent_kernels/_triton_tiles.py``, ``dot_types``): any 16-bit
input, also mixed with float32 as under autocast, multiplies in that 16-bit type with float32
accumulation (within about 1e-2 of the float32 reference); float32 alone follows
``torch.backends.cuda.matmul.allow_tf32`` (TF32: within about 1e-3; IEEE: to rounding); float64
is IEEE float64. The reference always accumulates in float32 (float64) from the inputs' values.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .._checks import check_mask, fail, require_float, require_leading, require_rank, require_same_device, shape_str
from .._dispatch import Backend, implementation

__all__ = [
    "linear_grad_norm_sq",
    "grouped_linear_grad_norm_sq",
    "linear_grad_gram",
    "linear_weight_grad_and_norm_sq",
]

PATHS = ("auto", "ghost", "direct")
GRAM_PATHS = ("auto", "pairs", "materialize")
WEIGHT_GRAD_PATHS = ("auto", "fused", "separate")


def _as_3d(
    op: str, x: torch.Tensor, gs: Sequence[torch.Tensor], g_names: Sequence[str], mask: torch.Tensor | None
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
    """Validate x (B, d) | (B, T, d), each g (B, p) | (B, T, p) and mask (B,) | (B, T);
    return them 3-D (T = 1 for 2-D inputs) with the mask as bool."""
    require_float(op, "x", x)
    require_rank(op, "x", x, (2, 3))
    for name, g in zip(g_names, gs):
        require_float(op, name, g)
        require_leading(op, "x", x, name, g, x.dim() - 1)
    mask = check_mask(op, mask, x.shape[:-1], f"x of shape {shape_str(x)}")
    require_same_device(op, {"x": x, **dict(zip(g_names, gs)), "mask": mask})
    if x.dim() == 2:
        return x[:, None], [g[:, None] for g in gs], None if mask is None else mask[:, None]
    return x, list(gs), mask


def _check_path(op: str, path: str, paths: tuple[str, ...] = PATHS) -> None:
    if path not in paths:
        fail(op, f"path must be one of {paths}, got {path!r}")


@torch.no_grad()
def linear_grad_norm_sq(
    x: torch.Tensor,
    g: torch.Tensor,
    *,
    bias: bool = False,
    mask: torch.Tensor | None = None,
    path: str = "auto",
    backend: Backend = "auto",
) -> torch.Tensor:
    """Per-example squared norm of a linear layer's parameter gradient.

    Args:
        x: layer input, (B, d) or (B, T, d), any floating dtype.
        g: gradient of the loss w.r.t. the layer output, (B, p) or (B, T, p), same rank as x.
        bias: add ||sum_t g_t||^2, the bias gradient's squared norm.
        mask: (B,) or (B, T) bool (or 0/1); False positions contribute nothing.
        path: "ghost" (Gram of x times Gram of g, T^2 (d + p) per example), "direct"
            (||g^T x||^2, T d p per example) or "auto": the reference takes the cheaper by that
            flop count; the Triton backend by the kernels' cost model (``attent_kernels/_cost.py``:
            half Gram, tile padding, occupancy), and at T = 1 the closed form ||x||^2 ||g||^2.
        backend: "auto" (Triton on CUDA tensors, reference on CPU), "triton" or "reference".

    Returns:
        (B,) float32 (float64 for float64 inputs): ||grad W_i||_F^2 (+ ||grad b_i||^2); the
        module docstring gives the Triton kernels' precision per input dtype.
    """
    op = "linear_grad_norm_sq"
    _check_path(op, path)
    x3, (g3,), m3 = _as_3d(op, x, [g], ["g"], mask)
    return implementation(op, backend, __name__, x3, g3).linear_grad_norm_sq(x3, g3, bool(bias), m3, path)


@torch.no_grad()
def grouped_linear_grad_norm_sq(
    x: torch.Tensor,
    gs: Sequence[torch.Tensor],
    *,
    biases: bool | Sequence[bool] | None = None,
    mask: torch.Tensor | None = None,
    path: str = "auto",
    backend: Backend = "auto",
    per_layer: bool = False,
) -> torch.Tensor:
    """Per-example squared gradient norms of several linear layers that read the same x
    (attention Q, K and V, or the parts of a fused QKV projection), summed over the layers or
    one row per layer; the Gram of x is formed once for all of them.

    Args:
        x: shared input, (B, d) or (B, T, d).
        gs: one output gradient per layer, each (B, p_k) or (B, T, p_k).
        biases: None or False (no biases), True (every layer has one) or one bool per layer.
        mask, path, backend: as in :func:`linear_grad_norm_sq` (the cost model uses sum_k p_k).
        per_layer: False: the sum over the layers; True: one row per layer.

    Returns:
        (B,) float32: sum_k ||grad W_k,i||^2 (+ ||grad b_k,i||^2 where biases[k]); with
        ``per_layer``, (K, B) float32, row k layer k's term.
    """
    op = "grouped_linear_grad_norm_sq"
    _check_path(op, path)
    gs = list(gs)
    if not gs:
        fail(op, "gs must hold at least one gradient tensor")
    if biases is None or isinstance(biases, bool):
        flags = [bool(biases)] * len(gs)
    else:
        flags = [bool(b) for b in biases]
        if len(flags) != len(gs):
            fail(op, f"biases has {len(flags)} entries but gs has {len(gs)}")
    x3, g3s, m3 = _as_3d(op, x, gs, [f"gs[{k}]" for k in range(len(gs))], mask)
    terms = implementation(op, backend, __name__, x3, *g3s).grouped_linear_grad_norm_sq(x3, g3s, flags, m3, path)
    return terms if per_layer else terms.sum(dim=0)


@torch.no_grad()
def linear_grad_gram(
    x: torch.Tensor,
    g: torch.Tensor,
    *,
    x2: torch.Tensor | None = None,
    g2: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    mask2: torch.Tensor | None = None,
    bias: bool = False,
    path: str = "auto",
    backend: Backend = "auto",
) -> torch.Tensor:
    """Per-example gradient inner products <grad_i, grad2_j> of a linear layer: the layer's block
    of the empirical attention NTK. With x2/g2 omitted the second set is the first one, and the
    diagonal equals :func:`linear_grad_norm_sq`.

    Args:
        x, g: first set, (B, d)/(B, p) or (B, T, d)/(B, T, p).
        x2, g2: second set, (B2, d)/(B2, p) or (B2, T2, d)/(B2, T2, p); both or neither.
        mask, mask2: position masks of each set, (B,)/(B, T) and (B2,)/(B2, T2).
        bias: include the bias gradients' inner products.
        path: how the Triton backend computes it: "pairs" (a program per (i, j) walks the T x T2
            block pairs, 2 T T2 (d + p) per pair), "materialize" (the per-example gradients formed
            tile by tile, then multiplied: the reference's one algorithm) or "auto" ("pairs":
            materializing never won in the GPU record ``attent_kernels/_cost.py`` is fitted to).
            The reference always materializes.
        backend: as in :func:`linear_grad_norm_sq`.

    Returns:
        (B, B2) float32 (float64 for float64 inputs).
    """
    op = "linear_grad_gram"
    _check_path(op, path, GRAM_PATHS)
    if (x2 is None) != (g2 is None):
        fail(op, "pass both x2 and g2, or neither")
    x3, (g3,), m3 = _as_3d(op, x, [g], ["g"], mask)
    if x2 is None:
        if mask2 is not None:
            fail(op, "mask2 needs x2 and g2")
        x23, g23, m23 = x3, g3, m3
    else:
        x23, (g23,), m23 = _as_3d(op, x2, [g2], ["g2"], mask2)
        if x23.shape[-1] != x3.shape[-1] or g23.shape[-1] != g3.shape[-1]:
            fail(op, f"x2 {shape_str(x2)} and g2 {shape_str(g2)} must have the feature sizes of x {shape_str(x)} and g {shape_str(g)}")
        require_same_device(op, {"x": x, "x2": x2})
    return implementation(op, backend, __name__, x3, g3, x23, g23).linear_grad_gram(
        x3, g3, m3, x23, g23, m23, bool(bias), path
    )


@torch.no_grad()
def linear_weight_grad_and_norm_sq(
    x: torch.Tensor,
    g: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    path: str = "auto",
    backend: Backend = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ordinary weight gradient sum_i g_i^T x_i and the per-example squared norms
    ||g_i^T x_i||^2 together: the training-time path.

    Args:
        x: (B, d) or (B, T, d); g: (B, p) or (B, T, p); mask: (B,) or (B, T).
        path: how the Triton backend computes it: "fused" (one kernel reads x and g once and
            forms both, each example's sequence padded to its row tile), "separate" (the
            weight-gradient GEMM through cuBLAS over all B T rows, float32 output, then the
            norms on :func:`linear_grad_norm_sq`'s auto path; with a mask, x and g are copied
            with their masked rows zeroed first) or "auto" (the cost model's choice,
            ``attent_kernels/_cost.py``). The reference has one algorithm.
        backend: as in :func:`linear_grad_norm_sq`.

    Returns:
        grad_weight (p, d) and norm_sq (B,), float32 (float64 for float64 inputs). The Triton
        kernel splits the batch into slices when the (p, d) tiles alone would not fill the
        device (``attent_kernels/_cost.py``) and sums the slices' gradients in a fixed order:
        bitwise reproducible.
    """
    op = "linear_weight_grad_and_norm_sq"
    _check_path(op, path, WEIGHT_GRAD_PATHS)
    x3, (g3,), m3 = _as_3d(op, x, [g], ["g"], mask)
    return implementation(op, backend, __name__, x3, g3).linear_weight_grad_and_norm_sq(x3, g3, m3, path)
