"""Rules for elementwise scales: ``nn.PReLU`` (its slope multiplies min(0, x)) and timm's
``LayerScale`` / ``LayerScale2d`` (``gamma`` multiplies x; DeiT-III, CaiT, EVA), registered once timm
is imported. The per-example gradient is ``sum_t x_t * g_t`` over the scale's shape (:class:`Diag`)."""
from __future__ import annotations

from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

from ..factors import Capture, Diag
from ._registry import first_tensor, register_layer, register_when_loaded


@register_layer(nn.PReLU, params=("weight",), name="prelu", functional=F.prelu)
def _prelu(module: nn.PReLU, args: tuple, output: torch.Tensor) -> Capture:
    x = first_tensor(args, "nn.PReLU")
    if module.num_parameters == 1:
        return Capture(output, lambda g: {"weight": Diag(x.clamp(max=0).unsqueeze(-1), g.unsqueeze(-1))})
    # one slope per channel: the channel is dim 1 of an (N, C, ...) input
    return Capture(output, lambda g: {"weight": Diag(x.clamp(max=0).movedim(1, -1), g.movedim(1, -1), batch_dim=0)})


def _in_place_reason(module: nn.Module) -> str | None:
    return "inplace=True overwrites the input the gradient needs" if module.inplace else None


def _layer_scale(module: nn.Module, args: tuple, output: torch.Tensor) -> Capture:
    x = first_tensor(args, type(module).__name__)
    return Capture(output, lambda g: {"gamma": Diag(x, g)})


def _layer_scale_2d(module: nn.Module, args: tuple, output: torch.Tensor) -> Capture:
    x = first_tensor(args, type(module).__name__)
    return Capture(output, lambda g: {"gamma": Diag(x.movedim(1, -1), g.movedim(1, -1), batch_dim=0)})


def _register_timm(layer_scale: ModuleType) -> None:
    register_layer(layer_scale.LayerScale, params=("gamma",), name="layerscale", check=_in_place_reason)(_layer_scale)
    register_layer(layer_scale.LayerScale2d, params=("gamma",), name="layerscale", check=_in_place_reason)(_layer_scale_2d)


register_when_loaded("timm.layers.layer_scale", _register_timm)
