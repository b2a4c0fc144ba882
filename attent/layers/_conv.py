"""Rule for ``nn.Conv2d`` whose stride equals its kernel (patch embeddings): output position l
reads exactly patch l of the input, so the convolution is a linear map on the unfolded patches."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..factors import Capture, Direct, Factor, Outer
from ._registry import first_tensor, register_layer


def _patch_conv_reason(module: nn.Conv2d) -> str | None:
    if tuple(module.stride) != tuple(module.kernel_size):
        return f"stride {tuple(module.stride)} differs from kernel_size {tuple(module.kernel_size)}"
    if module.padding not in ((0, 0), "valid") or module.groups != 1 or tuple(module.dilation) != (1, 1):
        return "padding, groups or dilation other than the defaults"
    return None


@register_layer(nn.Conv2d, params=("weight", "bias"), name="conv2d-patch", check=_patch_conv_reason)
def _patch_conv(module: nn.Conv2d, args: tuple, output: torch.Tensor) -> Capture:
    x = first_tensor(args, "nn.Conv2d")

    def factors(g: torch.Tensor) -> dict[str, Factor]:
        patches = F.unfold(x, module.kernel_size, stride=module.stride).transpose(1, 2)  # (B, L, C*kh*kw)
        g_flat = g.flatten(2).transpose(1, 2)  # (B, L, out)
        return {"weight": Outer(g_flat, patches, batch_dim=0), "bias": Direct(g_flat, batch_dim=0)}

    return Capture(output, factors)
