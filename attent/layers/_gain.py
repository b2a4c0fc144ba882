"""Gains: a 0-D or 1-D parameter of a module without a rule (a ReZero scalar, CaiT's ``gamma_1``)
that the module's forward uses as a factor of an elementwise product ``p * x``.

While the owner runs, a torch function mode sees every ``p * x`` (``x * p``, ``torch.mul``,
``Tensor.mul``) with such a parameter and captures the product: its per-example gradient is
``sum (x * g)`` over every dimension p is broadcast along (:class:`attent.Direct`), exact whenever p
does not reach the batch dimension and the product has x's shape. Any other use of the parameter is
not captured, and the probe refuses it when it counts the parameter's uses in the graph.
"""
from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from ..factors import Capture, Direct

__all__ = ["GainProducts"]

_PRODUCTS = {torch.mul, torch.Tensor.mul, torch.Tensor.__mul__, torch.Tensor.__rmul__}


class GainProducts(TorchFunctionMode):
    """Captures the products ``p * x`` of the gains ``{id(parameter): name}`` with batched tensors,
    through ``capture`` (which carries ``layout``)."""

    def __init__(self, gains: dict[int, str], capture: Any) -> None:
        super().__init__()
        self.gains, self.capture = gains, capture

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func not in _PRODUCTS or len(args) != 2 or kwargs:
            return out
        layout = self.capture.layout
        for p, x in (args, args[::-1]):
            name = self.gains.get(id(p))
            if (name is not None and isinstance(x, torch.Tensor) and isinstance(out, torch.Tensor)
                    and out.shape == x.shape and p.dim() < x.dim() - layout.dim and not layout.flattened):
                self.capture(Capture(out, lambda g, x=x, name=name, shape=p.shape: {name: _gain(x, g, shape, layout.dim)}))
                break
        return out


def _gain(x: torch.Tensor, g: torch.Tensor, shape: torch.Size, batch_dim: int) -> Direct:
    product = (x * g).movedim(batch_dim, 0)
    target = (product.shape[0],) + (1,) * (product.dim() - 1 - len(shape)) + tuple(shape)
    return Direct(product.sum_to_size(target).reshape(product.shape[0], -1), batch_dim=0)
