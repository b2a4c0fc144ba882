"""Rules for normalization layers: ``nn.LayerNorm`` (any ``normalized_shape``), ``nn.GroupNorm``, and
RMSNorm variants (``nn.RMSNorm``, and any class named ``*RMSNorm``/``*RmsNorm``/``*T5LayerNorm`` with a
``weight`` and ``eps`` or ``variance_epsilon``: Hugging Face Llama's, T5's, timm's). The weight's
per-example gradient is ``sum_t x_hat_t * g_t`` (:class:`Diag`, over the parameter's shape)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..factors import Capture, Diag, Direct
from ._registry import first_tensor, register_layer, register_layer_matcher


def _normalized(x: torch.Tensor, dims: int, eps: float, *, center: bool) -> torch.Tensor:
    """x normalized over its last ``dims`` dimensions, computed in float32 (float64 for float64 x)."""
    xf = x if x.dtype == torch.float64 else x.float()
    reduce = tuple(range(-dims, 0))
    if center:
        xf = xf - xf.mean(dim=reduce, keepdim=True)
    return xf * torch.rsqrt(xf.square().mean(dim=reduce, keepdim=True) + eps)


def _norm_capture(output: torch.Tensor, x_hat: Callable[[], torch.Tensor]) -> Capture:
    return Capture(output, lambda g: {"weight": Diag(x_hat(), g), "bias": Direct(g)})


@register_layer(nn.LayerNorm, params=("weight", "bias"), name="layernorm")
def _layer_norm(module: nn.LayerNorm, args: tuple, output: torch.Tensor) -> Capture:
    x = first_tensor(args, "nn.LayerNorm")
    return _norm_capture(output, lambda: _normalized(x, len(module.normalized_shape), module.eps, center=True))


def _rms_eps(module: nn.Module, x: torch.Tensor) -> float:
    eps = getattr(module, "eps", getattr(module, "variance_epsilon", None))
    return torch.finfo(x.dtype).eps if eps is None else float(eps)


def _looks_like_rms_norm(module: nn.Module) -> bool:
    name = type(module).__name__.lower()
    name = "rmsnorm" if name.endswith("t5layernorm") else name
    has_eps = hasattr(module, "eps") or hasattr(module, "variance_epsilon")
    return name.endswith("rmsnorm") and has_eps and isinstance(getattr(module, "weight", None), nn.Parameter)


@register_layer_matcher(_looks_like_rms_norm, params=("weight", "bias"), name="rmsnorm")
def _rms_norm(module: nn.Module, args: tuple, output: torch.Tensor) -> Capture:
    x = first_tensor(args, type(module).__name__)
    dims = len(getattr(module, "normalized_shape", None) or (module.weight.shape))
    return _norm_capture(output, lambda: _normalized(x, dims, _rms_eps(module, x), center=False))


@register_layer(nn.GroupNorm, params=("weight", "bias"), name="groupnorm")
def _group_norm(module: nn.GroupNorm, args: tuple, output: torch.Tensor) -> Capture:
    x = first_tensor(args, "nn.GroupNorm")

    def x_hat() -> torch.Tensor:
        grouped = _normalized(x.reshape(x.shape[0], module.num_groups, -1), 1, module.eps, center=True)
        return grouped.reshape(x.shape).movedim(1, -1)

    return Capture(output, lambda g: {"weight": Diag(x_hat(), g.movedim(1, -1), batch_dim=0),
                                      "bias": Direct(g.movedim(1, -1), batch_dim=0)})


if hasattr(nn, "RMSNorm"):
    register_layer(nn.RMSNorm, params=("weight",), name="rmsnorm")(_rms_norm)
