"""The factored per-example gradients a layer rule returns (see :mod:`attent.layers`).

A rule never forms a per-example gradient when it is large; it says how to get it from the gradient
of one of the layer's outputs (B = examples, B = len(losses); row i of the batch is example i). The
batch sits where the layer's :class:`Layout` says (the probe's ``batch_dim``, or a container's
declared layout) unless a factor names its own ``batch_dim``; it is never guessed from a size:

- :class:`Outer` ``(a, b)``: the per-example gradient is ``sum_t a_t b_t^T`` over every position
  t, with ``a`` of shape (B, ..., rows) (or :class:`Ids`, one-hot rows given by token ids) and
  ``b`` of shape (B, ..., cols). Linear weights (a = output gradient, b = input), HF ``Conv1D``
  (a = input, b = output gradient), embeddings (a = the ids), patch-embedding convolutions.
- :class:`Diag` ``(x, g)``: the per-example gradient is ``sum_t x_t * g_t`` (elementwise) over
  every position t, x and g of shape (B, ..., *param.shape): the weight of LayerNorm/RMSNorm (x =
  the normalized input, any ``normalized_shape``), GroupNorm, LayerScale, PReLU.
- :class:`Direct` ``(v)``: the per-example gradient itself, summed over the positions: (B, ...,
  param.numel()) after flattening; for biases and for small loose parameters.

This module is a leaf: it imports nothing from the rest of ``attent``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, Union

import torch
from torch import nn

__all__ = ["Ids", "Outer", "Diag", "Direct", "Factor", "Capture", "LayerRule", "Layout"]


@dataclass(frozen=True)
class Layout:
    """Where a layer's tensors keep their examples.

    ``dim``: the batch dimension. ``flattened``: that dimension holds B·R rows, example-major (rows
    i·R … i·R+R−1 belong to example i), as when a model reshapes (B, T, d) to (B·T, d) before a layer.
    """

    dim: int = 0
    flattened: bool = False


@dataclass(frozen=True)
class Ids:
    """One-hot rows given by integer ids: ``ids`` (B, ...) int, ``num`` rows; positions holding
    ``padding_idx`` contribute nothing (``nn.Embedding`` gives its padding row no gradient)."""

    ids: torch.Tensor
    num: int
    padding_idx: int | None = None


@dataclass(frozen=True)
class Outer:
    """Per-example gradient ``sum_t a_t b_t^T``: a (B, ..., rows) float or :class:`Ids`, b (B, ..., cols).

    ``batch_dim`` overrides the probe's batch dimension for these tensors (e.g. 0 for image patches)."""

    a: torch.Tensor | Ids
    b: torch.Tensor
    batch_dim: int | None = None


@dataclass(frozen=True)
class Diag:
    """Per-example gradient ``sum_t x_t * g_t`` (elementwise): x and g of the same shape
    (B, ..., *param.shape); every leading position is summed."""

    x: torch.Tensor
    g: torch.Tensor
    batch_dim: int | None = None


@dataclass(frozen=True)
class Direct:
    """The per-example gradient itself: v (B, ..., k) with the parameter's numel dividing the
    non-batch part; every block of param.numel() trailing elements is one position, summed."""

    v: torch.Tensor
    batch_dim: int | None = None


Factor = Union[Outer, Diag, Direct]


@dataclass
class Capture:
    """A tensor a layer call produced, and how its gradient gives the layer's parameters'
    per-example gradients: ``factors(grad) -> {parameter name: Factor}`` (names relative to the
    module; a name the probe does not cover is ignored).

    ``input``: the layer's input, where it is the ``b`` of its float :class:`Outer` factors (a
    linear layer's x). The norms of layers whose captures name the same input tensor in one pass
    (attention's q, k and v projections of one x) are computed together, the Gram of that input
    formed once (``attent_kernels.grouped_linear_grad_norm_sq``)."""

    tensor: torch.Tensor
    factors: Callable[[torch.Tensor], Mapping[str, Factor]]
    input: torch.Tensor | None = None


LayerRule = Callable[[nn.Module, tuple, Any], Union[Capture, Sequence[Capture]]]
"""``rule(module, args, output)``: called in the module's forward hook with its positional inputs
and its output; returns the captures of this call (empty when nothing needs a gradient)."""
