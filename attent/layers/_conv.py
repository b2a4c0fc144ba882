"""Rules for ``nn.Conv1d``, ``nn.Conv2d`` and ``nn.Conv3d`` with any stride, padding (and padding
mode), dilation and groups: the convolution is a linear map on the unfolded input, output position l
reading the receptive field l. With one group the weight gradient is the Outer of the output
gradient and the unfolded patches (ghost or direct path by cost); with several groups it is formed
per example (B × weight size, small for convolutions) as a Direct factor.

``nn.ConvTranspose1d/2d/3d`` (one group): input position l scatters into the output window that a
convolution with the same stride, padding and dilation would read at l, so the weight gradient is
the Outer of the input and the unfolded output gradient (output_padding only extends the output)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..factors import Capture, Direct, Factor, Outer
from ._registry import first_tensor, register_layer

Conv = nn.Conv1d | nn.Conv2d | nn.Conv3d


def _patches(module: nn.Module, x: torch.Tensor, grid: tuple[int, ...] | None = None) -> torch.Tensor:
    """(B, L, C*k) receptive fields of a batched input (B, C, *spatial), in the weight's (C, *kernel)
    order; ``grid``: keep only the first ``grid`` window positions along each spatial dim."""
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    fields = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
    n = len(module.kernel_size)
    for i, (k, s, d) in enumerate(zip(module.kernel_size, module.stride, module.dilation)):
        fields = fields.unfold(2 + i, d * (k - 1) + 1, s)[..., ::d]  # window dims appended last
        fields = fields if grid is None else fields.narrow(2 + i, 0, grid[i])
    B, C = x.shape[:2]
    fields = fields.permute(0, *range(2, 2 + n), 1, *range(2 + n, 2 + 2 * n))  # (B, *L, C, *kernel)
    return fields.reshape(B, -1, C * module.weight[0, 0].numel())


def _batched_input(module: nn.Module, args: tuple) -> torch.Tensor:
    x = first_tensor(args, type(module).__name__)
    if x.dim() != len(module.kernel_size) + 2:
        raise ValueError(f"{type(module).__name__}: unbatched input of shape {tuple(x.shape)}; pass a batch "
                         f"(B, C, ...) of examples")
    return x


def _conv(module: Conv, args: tuple, output: torch.Tensor) -> Capture:
    x = _batched_input(module, args)

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


def _conv_transpose(module: nn.ConvTranspose1d | nn.ConvTranspose2d | nn.ConvTranspose3d, args: tuple,
                    output: torch.Tensor) -> Capture:
    x = _batched_input(module, args)

    def factors(g: torch.Tensor) -> dict[str, Factor]:
        x_flat, g_flat = x.flatten(2).transpose(1, 2), g.flatten(2).transpose(1, 2)  # (B, L_in, C_in), (B, L_out, C_out)
        # output_padding >= stride (allowed when below dilation) adds windows no input position reaches
        return {"weight": Outer(x_flat, _patches(module, g, tuple(x.shape[2:])), batch_dim=0),
                "bias": Direct(g_flat, batch_dim=0)}

    return Capture(output, factors)


for _conv_type, _functional in ((nn.Conv1d, F.conv1d), (nn.Conv2d, F.conv2d), (nn.Conv3d, F.conv3d)):
    register_layer(_conv_type, params=("weight", "bias"), name="conv", functional=_functional)(_conv)
for _conv_type, _functional in ((nn.ConvTranspose1d, F.conv_transpose1d), (nn.ConvTranspose2d, F.conv_transpose2d),
                                (nn.ConvTranspose3d, F.conv_transpose3d)):
    register_layer(_conv_type, params=("weight", "bias"), name="conv-transpose", functional=_functional,
                   check=lambda m: "groups > 1" if m.groups != 1 else None)(_conv_transpose)
