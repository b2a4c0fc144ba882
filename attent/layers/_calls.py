"""A torch function mode that hands a rule the functional calls made on one weight inside a forward
(``F.embedding`` or ``F.linear``), for layers whose forward computes its inputs before the call
(Hugging Face position embeddings, T5's bias buckets, timm EVA's concatenated qkv bias)."""
from __future__ import annotations

import inspect
from typing import Callable

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["WeightCalls"]

_SIGNATURES = {
    F.embedding: inspect.signature(F.embedding),
    F.linear: inspect.Signature([inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default)
                                 for name, default in (("input", inspect.Parameter.empty),
                                                       ("weight", inspect.Parameter.empty), ("bias", None))]),
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
