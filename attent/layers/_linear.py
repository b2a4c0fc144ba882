"""Rules for linear maps: ``nn.Linear`` (any leading dims, and subclasses) and Hugging Face's
``Conv1D`` (GPT-2's transposed linear), registered once transformers is imported; and the layout of
OPT's decoder layer, whose MLP and final norm read the rows flattened to (B·T, d), example-major."""
from __future__ import annotations

from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

from ..factors import Capture, Direct, Layout, Outer
from ._registry import first_tensor, register_layer, register_layout, register_when_loaded


@register_layer(nn.Linear, params=("weight", "bias"), name="linear", functional=F.linear)
def _linear(module: nn.Linear, args: tuple, output: torch.Tensor) -> Capture:
    x = first_tensor(args, "nn.Linear")
    return Capture(output, lambda g: {"weight": Outer(g, x), "bias": Direct(g)}, input=x)


def _conv1d(module: nn.Module, args: tuple, output: torch.Tensor) -> Capture:
    x = first_tensor(args, "Conv1D")
    return Capture(output, lambda g: {"weight": Outer(x, g), "bias": Direct(g)})


def _register_hf_conv1d(pytorch_utils: ModuleType) -> None:
    register_layer(pytorch_utils.Conv1D, params=("weight", "bias"), name="conv1d")(_conv1d)


register_when_loaded("transformers.pytorch_utils", _register_hf_conv1d)


def _register_opt(modeling: ModuleType) -> None:
    register_layout(modeling.OPTDecoderLayer, lambda layer: Layout(0, flattened=True))


register_when_loaded("transformers.models.opt.modeling_opt", _register_opt)
