"""Rules for normalization layers: ``nn.LayerNorm`` (any ``normalized_shape``), ``nn.GroupNorm``,
``nn.InstanceNorm*d``, ``nn.BatchNorm*d`` in eval mode (training mode, which mixes the examples
through the batch statistics, is refused when it runs), and RMSNorm variants (``nn.RMSNorm``, and
any class named ``*RMSNorm``/``*RmsNorm``/``*T5LayerNorm`` with a ``weight`` and ``eps`` or
``variance_epsilon``: Hugging Face Llama's, T5's, timm's). The weight's per-example gradient is
``sum_t x_hat_t * g_t`` (:class:`Diag`, over the parameter's shape)."""
from __future__ import annotations

import weakref
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from ..factors import Capture, Diag, Direct
from ._registry import first_tensor, register_layer, register_layer_matcher


def _normalized(x: torch.Tensor, dims: int, eps: float, *, center: bool) -> torch.Tensor:
    """x normalized over its last ``dims`` dimensions (centred for a LayerNorm, not for an RMSNorm),
    computed in float32 (float64 for float64 x) by one fused norm call without affine parameters."""
    xf = x if x.dtype == torch.float64 else x.float()
    shape = xf.shape[xf.dim() - dims:]
    with torch.autocast(x.device.type, enabled=False):  # in float32 also where a rule runs under autocast
        return F.layer_norm(xf, shape, eps=eps) if center else F.rms_norm(xf, shape, eps=eps)


def _norm_capture(output: torch.Tensor, x_hat: Callable[[], torch.Tensor]) -> Capture:
    return Capture(output, lambda g: {"weight": Diag(x_hat(), g), "bias": Direct(g)})


@register_layer(nn.LayerNorm, params=("weight", "bias"), name="layernorm", functional=F.layer_norm)
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


_VERIFIED: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()


def _check_scales_x_hat(module: nn.Module, x_hat: torch.Tensor, output: torch.Tensor) -> None:
    """A module matched by its class name must compute weight * x_hat (+ bias), or (1 + weight) * x_hat
    (Gemma): checked on its first call, so a gated or otherwise different RMSNorm is refused."""
    if module in _VERIFIED:
        return
    with torch.no_grad():
        out, weight = output.to(x_hat.dtype), module.weight.to(x_hat.dtype)
        bias = 0 if getattr(module, "bias", None) is None else module.bias.to(x_hat.dtype)
        tolerance = 1e-2 * out.abs().max().item() + 1e-6
        if not any(torch.allclose(out, x_hat * scale + bias, rtol=1e-2, atol=tolerance) for scale in (weight, 1 + weight)):
            raise ValueError(f"{type(module).__name__}: the output is not weight * x_hat (+ bias) of the first input, "
                             f"x_hat its RMS-normalized value (a gated or offset variant?); register a rule for it")
    _VERIFIED.add(module)


@register_layer_matcher(_looks_like_rms_norm, params=("weight", "bias"), name="rmsnorm")
def _rms_norm(module: nn.Module, args: tuple, output: torch.Tensor) -> Capture:
    x = first_tensor(args, type(module).__name__)
    dims = len(getattr(module, "normalized_shape", None) or (module.weight.shape))
    x_hat = lambda: _normalized(x, dims, _rms_eps(module, x), center=False)  # noqa: E731
    _check_scales_x_hat(module, x_hat(), output)
    return _norm_capture(output, x_hat)


def _channel_capture(output: torch.Tensor, x_hat: Callable[[], torch.Tensor]) -> Capture:
    """The per-channel weight and bias of a norm on (N, C, *) inputs (the channel at dim 1)."""
    return Capture(output, lambda g: {"weight": Diag(x_hat().movedim(1, -1), g.movedim(1, -1), batch_dim=0),
                                      "bias": Direct(g.movedim(1, -1), batch_dim=0)})


@register_layer(nn.GroupNorm, params=("weight", "bias"), name="groupnorm", functional=F.group_norm)
def _group_norm(module: nn.GroupNorm, args: tuple, output: torch.Tensor) -> Capture:
    x = first_tensor(args, "nn.GroupNorm")
    return _channel_capture(output, lambda: _normalized(x.reshape(x.shape[0], module.num_groups, -1), 1, module.eps,
                                                        center=True).reshape(x.shape))


@register_layer(_InstanceNorm, params=("weight", "bias"), name="instancenorm", functional=F.instance_norm)
def _instance_norm(module: _InstanceNorm, args: tuple, output: torch.Tensor) -> Capture:
    x = first_tensor(args, type(module).__name__)
    if x.dim() != module._get_no_batch_dim() + 1:
        raise ValueError(f"{type(module).__name__}: unbatched input of shape {tuple(x.shape)}; pass (N, C, ...)")
    own_stats = module.training or not module.track_running_stats

    def x_hat() -> torch.Tensor:
        stats = (None, None) if own_stats else (module.running_mean, module.running_var)
        return F.instance_norm(x, *stats, use_input_stats=own_stats, eps=module.eps)

    return _channel_capture(output, x_hat)


@register_layer(_BatchNorm, params=("weight", "bias"), name="batchnorm-eval", functional=F.batch_norm)
def _batch_norm(module: _BatchNorm, args: tuple, output: torch.Tensor) -> Capture:
    x = first_tensor(args, type(module).__name__)
    if module.training or module.running_mean is None:
        raise ValueError(f"{type(module).__name__} normalizes with the batch's statistics (training mode or no "
                         f"running stats), so examples are not independent; call eval() on it, or leave its "
                         f"parameters out with params=")
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return _channel_capture(output, lambda: (x - module.running_mean.view(shape))
                            * torch.rsqrt(module.running_var.view(shape) + module.eps))


if hasattr(nn, "RMSNorm"):
    register_layer(nn.RMSNorm, params=("weight",), name="rmsnorm")(_rms_norm)
