"""Rule for timm's ``EvaAttention`` (EVA, EVA-02): its fused ``qkv`` Linear is called as
``F.linear(x, qkv.weight, cat(q_bias, k_bias, v_bias))`` with a zero, frozen ``k_bias`` buffer, so
the weight and the two bias parameters are used inside one functional call. While the probe is
attached the module's own forward runs under a mode that sees that call (:class:`WeightCalls`):
the weight's per-example gradient is the Outer of the output gradient and x, and ``q_bias`` /
``v_bias`` read off the first and last thirds of the summed output gradient. Registered once
timm's EVA is imported."""
from __future__ import annotations

from types import ModuleType
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..factors import Capture, Direct, Outer
from ._calls import WeightCalls
from ._registry import register_forward, register_when_loaded


def _fused_qkv_forward(module: nn.Module, capture: Any, *args: Any, **kwargs: Any) -> Any:
    def handle(func: Callable, arguments: dict) -> torch.Tensor:
        output, x = func(**arguments), arguments["input"]
        third = output.shape[-1] // 3
        capture(Capture(output, lambda g: {"qkv.weight": Outer(g, x), "q_bias": Direct(g[..., :third]),
                                           "v_bias": Direct(g[..., 2 * third:])}))
        return output

    with WeightCalls(F.linear, module.qkv.weight, handle):
        return capture.forward(*args, **kwargs)


def _separate_bias_reason(module: nn.Module) -> str | None:
    if module.qkv is None:
        return None
    return "qkv_bias_separate=True adds the bias in place after the projection" if module.qkv_bias_separate else None


def _register_eva(eva: ModuleType) -> None:
    register_forward(eva.EvaAttention, params=("qkv.weight", "q_bias", "v_bias"), name="fused-qkv",
                     forward=_fused_qkv_forward, check=_separate_bias_reason)


register_when_loaded("timm.models.eva", _register_eva)
