"""The fused route of a probed ``nn.Linear`` in a training backward: an autograd function whose
backward lets the probe form the weight gradient and the per-example norms in one pass.

``probed_linear(x, weight, bias, parameter_grads)`` computes ``F.linear(x, weight, bias)`` (under
autocast, with its operands cast as autocast casts them). Its backward computes the input gradient
g W as autograd does, then asks ``parameter_grads(node, g)`` (``node`` is the function's graph
node, where the probe keeps its record of the call):

- ``(False, None)``: the pass wants no parameter gradient (the probe's ``score``): none is formed;
- ``(True, grad_weight)``: the probe formed the weight gradient sum_i g_i^T x_i with the norms
  (``attent_kernels.linear_weight_grad_and_norm_sq``); it is returned for autograd to accumulate
  into ``weight.grad``;
- ``(True, None)``: an ordinary backward (outside the probe's calls, or a weight used more than
  once, whose norms need cross terms): the weight gradient is the plain matmul g^T x.

The bias gradient is always the plain sum of g over the rows (its norm comes from the probe's
``Direct`` factor, as on the separate route).
"""
from __future__ import annotations

from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F

from attent_kernels import uses_triton

__all__ = ["WeightGradRoute", "WEIGHT_GRAD_ROUTES", "ParameterGrads", "PROBED_LINEAR_NODE", "fuses", "probed_linear"]

WeightGradRoute = Literal["auto", "fused", "separate"]
WEIGHT_GRAD_ROUTES: tuple[str, ...] = ("auto", "fused", "separate")

ParameterGrads = Callable[[Any, torch.Tensor], tuple[bool, "torch.Tensor | None"]]
"""``parameter_grads(node, grad_output) -> (wanted, grad_weight)``, see the module docstring."""


def fuses(route: WeightGradRoute, x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a linear call on ``x`` and ``weight`` takes the fused route: always for "fused",
    never for "separate"; for "auto" where the kernels run on Triton (CUDA tensors), whose cost
    model (``attent_kernels/_cost.py``, ``fused_weight_grad_wins``) then picks, per call and
    shape, the fused kernel or cuBLAS's weight-gradient GEMM followed by the norm kernels. On a
    CPU the reference's one chunked pass is slower than autograd's matmul, so "auto" keeps the
    separate route there."""
    if route == "auto":
        return uses_triton(x, weight)
    return route == "fused"


class _ProbedLinear(torch.autograd.Function):
    """y = x W^T + b; its backward forms the parameter gradients as ``parameter_grads`` says."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                parameter_grads: ParameterGrads) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.parameter_grads = parameter_grads
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        needs_x, needs_weight, needs_bias, _ = ctx.needs_input_grad
        grad_x = grad_output @ weight if needs_x else None
        wanted, grad_weight = ctx.parameter_grads(ctx, grad_output)
        if not wanted:
            return grad_x, None, None, None
        rows = grad_output.reshape(-1, weight.shape[0])
        if needs_weight:
            grad_weight = rows.T @ x.reshape(-1, weight.shape[1]) if grad_weight is None else grad_weight.to(weight.dtype)
        grad_bias = rows.sum(dim=0) if needs_bias else None
        return grad_x, grad_weight, grad_bias, None


PROBED_LINEAR_NODE: type = _ProbedLinear._backward_cls
"""The class of the graph node of a :func:`probed_linear` output (its ``grad_fn``)."""


def _autocast_operands(tensors: tuple[torch.Tensor | None, ...], device: str) -> tuple[torch.Tensor | None, ...]:
    """The operands as autocast casts them for a linear: floating tensors other than float64 in the
    autocast dtype of ``device``."""
    dtype = torch.get_autocast_dtype(device)
    return tuple(t.to(dtype) if t is not None and t.is_floating_point() and t.dtype != torch.float64 else t
                 for t in tensors)


def probed_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  parameter_grads: ParameterGrads) -> torch.Tensor:
    """``F.linear(x, weight, bias)``: x (..., d), weight (p, d), bias (p,) or None -> (..., p),
    whose backward forms the parameter gradients as ``parameter_grads`` says (module docstring)."""
    device = x.device.type
    if not torch.is_autocast_enabled(device):
        return _ProbedLinear.apply(x, weight, bias, parameter_grads)
    x, weight, bias = _autocast_operands((x, weight, bias), device)
    with torch.autocast(device, enabled=False):
        return _ProbedLinear.apply(x, weight, bias, parameter_grads)
