"""A torch function mode that hands a rule the functional calls made on one weight inside a forward,
for layers whose forward computes its inputs before the call (Hugging Face position embeddings, T5's
bias buckets, timm EVA's concatenated qkv bias, subclasses that override a torch layer's forward)."""
from __future__ import annotations

import inspect
from typing import Callable

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["WeightCalls"]

def _builtin(**defaults: object) -> inspect.Signature:
    """The signature of a builtin functional: input, weight, then ``defaults``."""
    names = {"input": inspect.Parameter.empty, "weight": inspect.Parameter.empty, **defaults}
    return inspect.Signature([inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default)
                              for name, default in names.items()])


_CONV = _builtin(bias=None, stride=1, padding=0, dilation=1, groups=1)
_CONV_TRANSPOSE = _builtin(bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1)
_SIGNATURES = {
    **{func: inspect.signature(func) for func in (F.embedding, F.layer_norm, F.group_norm, F.batch_norm, F.instance_norm)},
    F.linear: _builtin(bias=None), F.prelu: _builtin(), F.conv1d: _CONV, F.conv2d: _CONV, F.conv3d: _CONV,
    F.conv_transpose1d: _CONV_TRANSPOSE, F.conv_transpose2d: _CONV_TRANSPOSE, F.conv_transpose3d: _CONV_TRANSPOSE,
}


class WeightCalls(TorchFunctionMode):
    """Inside the ``with`` block, every ``func(...)`` call whose ``weight`` is ``weight`` goes to
    ``handle(func, arguments) -> output`` (arguments bound by name, defaults applied)."""

    def __init__(self, func: Callable, weight: torch.Tensor, handle: Callable[[Callable, dict], torch.Tensor]) -> None:
        super().__init__()
        self.func, self.signature, self.weight, self.handle = func, _SIGNATURES[func], weight, handle

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not self.func:
            return func(*args, **kwargs)
        call = self.signature.bind(*args, **kwargs)
        call.apply_defaults()
        if call.arguments["weight"] is not self.weight:
            return func(*args, **kwargs)
        return self.handle(func, dict(call.arguments))
