"""Rules for ``nn.Conv1d`` and ``nn.Conv2d`` with any stride, padding (and padding mode), dilation and
groups: the convolution is a linear map on the unfolded input, output position l reading the
receptive field l (Conv1d as a Conv2d of height 1). With one group the weight gradient is the Outer
of the output gradient and the unfolded patches (ghost or direct path by cost); with several groups
it is formed per example (B × weight size, small for convolutions) as a Direct factor."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..factors import Capture, Direct, Factor, Outer
from ._registry import first_tensor, register_layer


def _patches(module: nn.Conv1d | nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """(B, L, C*k) receptive fields of a batched input, in the weight's (C, *kernel) order."""
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    padded = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
    if isinstance(module, nn.Conv1d):
        padded = padded.unsqueeze(2)
        kernel, stride, dilation = (1, *module.kernel_size), (1, *module.stride), (1, *module.dilation)
    else:
        kernel, stride, dilation = module.kernel_size, module.stride, module.dilation
    return F.unfold(padded, kernel, dilation=dilation, stride=stride).transpose(1, 2)


def _conv(module: nn.Conv1d | nn.Conv2d, args: tuple, output: torch.Tensor) -> Capture:
    x = first_tensor(args, type(module).__name__)
    spatial = 1 if isinstance(module, nn.Conv1d) else 2
    if x.dim() != spatial + 2:
        raise ValueError(f"{type(module).__name__}: unbatched input of shape {tuple(x.shape)}; pass a batch "
                         f"(B, C, ...) of examples")

    def factors(g: torch.Tensor) -> dict[str, Factor]:
        patches = _patches(module, x)  # (B, L, C*k)
        g_flat = g.flatten(2).transpose(1, 2)  # (B, L, out)
        groups = module.groups
        if groups == 1:
            weight: Factor = Outer(g_flat, patches, batch_dim=0)
        else:
            B, L = patches.shape[:2]
            per_group = torch.einsum("blgo,blgc->bgoc", g_flat.reshape(B, L, groups, -1),
                                     patches.reshape(B, L, groups, -1))
            weight = Direct(per_group.reshape(B, -1), batch_dim=0)
        return {"weight": weight, "bias": Direct(g_flat, batch_dim=0)}

    return Capture(output, factors)


register_layer(nn.Conv1d, params=("weight", "bias"), name="conv")(_conv)
register_layer(nn.Conv2d, params=("weight", "bias"), name="conv")(_conv)
