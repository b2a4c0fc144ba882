"""Rules for linear maps: ``nn.Linear`` (any leading dims, and subclasses) and Hugging Face's
``Conv1D`` (GPT-2's transposed linear), registered when transformers is installed."""
from __future__ import annotations

import sys

import torch
from torch import nn

from ..factors import Capture, Direct, Outer
from ._registry import first_tensor, register_layer


@register_layer(nn.Linear, params=("weight", "bias"), name="linear")
def _linear(module: nn.Linear, args: tuple, output: torch.Tensor) -> Capture:
    x = first_tensor(args, "nn.Linear")
    return Capture(output, lambda g: {"weight": Outer(g, x), "bias": Direct(g)})


def _conv1d(module: nn.Module, args: tuple, output: torch.Tensor) -> Capture:
    x = first_tensor(args, "Conv1D")
    return Capture(output, lambda g: {"weight": Outer(x, g), "bias": Direct(g)})


def register_loaded_integrations() -> None:
    """Register the rule for Hugging Face's ``Conv1D`` if transformers is already imported (a model
    that uses it has imported it). Called when a probe attaches, so ``import attent`` never loads
    transformers itself."""
    if "transformers" not in sys.modules:
        return
    from transformers.pytorch_utils import Conv1D

    register_layer(Conv1D, params=("weight", "bias"), name="conv1d")(_conv1d)
