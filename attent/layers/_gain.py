"""Gains: a 0-D or 1-D parameter of a module without a rule (a ReZero scalar, CaiT's ``gamma_1``,
ConvNeXt's ``gamma``) that the module's forward uses, as it is or reshaped, as a factor of an
elementwise product ``p * x``.

While the owner runs, a torch function mode sees every ``p * x`` (``x * p``, ``torch.mul``,
``Tensor.mul``) with such a parameter and captures the product: its per-example gradient is
``sum (x * g)`` over every dimension p is broadcast along (:class:`attent.Direct`), exact whenever p
has size 1 at (or does not reach) the batch dimension and the product has x's shape. Any other use of the parameter is
not captured, and the probe refuses it when it counts the parameter's uses in the graph.
"""
from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from ..factors import Capture, Direct

__all__ = ["GainProducts"]

_PRODUCTS = {torch.mul, torch.Tensor.mul, torch.Tensor.__mul__, torch.Tensor.__rmul__}
_VIEWS = {torch.reshape, torch.Tensor.reshape, torch.Tensor.view, torch.Tensor.unsqueeze, torch.unsqueeze}


class GainProducts(TorchFunctionMode):
    """Captures the products ``p * x`` of the gains ``{id(parameter): name}`` (or of their reshapes,
    ``gamma.reshape(1, -1, 1, 1)``) with batched tensors, through ``capture`` (which carries ``layout``)."""

    def __init__(self, gains: dict[int, str], capture: Any) -> None:
        super().__init__()
        self.gains, self.capture = gains, capture
        self.views: dict[int, tuple[str, torch.Tensor]] = {}  # id(view) -> (name, view): the view kept alive

    def _name(self, t: Any) -> str | None:
        return self.gains.get(id(t)) or (self.views[id(t)][0] if id(t) in self.views else None)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _VIEWS and args and self._name(args[0]) is not None:
            self.views[id(out)] = (self._name(args[0]), out)
        if func not in _PRODUCTS or len(args) != 2 or kwargs or not isinstance(out, torch.Tensor):
            return out
        layout = self.capture.layout
        for p, x in (args, args[::-1]):
            name = self._name(p)
            if name is None or not isinstance(x, torch.Tensor) or out.shape != x.shape or layout.flattened:
                continue
            full = (1,) * (x.dim() - p.dim()) + tuple(p.shape)  # p's shape aligned to x's dims
            if len(full) == x.dim() and full[layout.dim] == 1:
                self.capture(Capture(out, lambda g, x=x, name=name, full=full: {name: _gain(x, g, full, layout.dim)}))
                break
        return out


def _gain(x: torch.Tensor, g: torch.Tensor, full: tuple[int, ...], batch_dim: int) -> Direct:
    """The per-example gradient of a gain of shape ``full`` (aligned to x, 1 at the batch dim)."""
    product = (x * g).movedim(batch_dim, 0)
    target = (product.shape[0],) + full[:batch_dim] + full[batch_dim + 1:]
    return Direct(product.sum_to_size(target).reshape(product.shape[0], -1), batch_dim=0)
