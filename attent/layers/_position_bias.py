"""Rules for relative attention biases looked up once per forward with (q, k) buckets: T5's
(``T5Attention.relative_attention_bias``, also MT5's and UMT5's, whose every layer has its own
table) and MPNet's (``MPNetEncoder.relative_attention_bias``), registered once transformers' modules
are imported.

The bias table's lookup, (q, k) buckets -> (1, H, q, k), is shared by the batch and added to every
example's scores (and reused by the later layers): its output gradient is the sum over examples.
While the probe is attached, ``compute_bias`` (MPNet: ``compute_position_bias``, which expands the
bias to the batch and copies it) returns the bias expanded to (B, H, q, k), so the gradient of each
example's copy arrives apart; the per-example gradient is then the one-hot rows of the buckets times
that copy's gradient (:class:`attent.Ids`).
"""
from __future__ import annotations

from types import ModuleType
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..factors import Capture, Ids, Outer
from ._calls import WeightCalls
from ._registry import register_forward, register_when_loaded

_PARAM = "relative_attention_bias.weight"


def _relative_bias_forward(method: str) -> Callable[..., Any]:
    """The replacement forward of a module whose ``method`` looks up ``relative_attention_bias``
    with (q, k) buckets once and returns the bias as (1 or B, H, q, k): while the module runs, that
    method returns the bias expanded to (B, H, q, k), each example's copy captured with the buckets."""

    def forward(module: nn.Module, capture: Any, *args: Any, **kwargs: Any) -> Any:
        table: nn.Embedding = module.relative_attention_bias

        def compute_bias(*bias_args: Any, **bias_kwargs: Any) -> torch.Tensor:
            buckets: list[torch.Tensor] = []

            def lookup(func: Callable, arguments: dict) -> torch.Tensor:
                buckets.append(arguments["input"])
                return func(**arguments)

            with WeightCalls(F.embedding, table.weight, lookup):
                values = getattr(type(module), method)(module, *bias_args, **bias_kwargs)
            batch = capture.batch
            if len(buckets) != 1 or buckets[0].dim() != 2 or values.dim() != 4 or values.shape[0] not in (1, batch):
                raise ValueError(f"GradNormProbe: layer {capture.layer!r}: {method} made {len(buckets)} lookups "
                                 f"(ids {[tuple(b.shape) for b in buckets]}) and a bias of shape {tuple(values.shape)}; "
                                 f"expected one lookup of (q, k) buckets and a bias of (1 or {batch}, H, q, k)")
            expanded = values.expand(batch, -1, -1, -1)
            ids = Ids(buckets[0].expand(batch, *buckets[0].shape), table.num_embeddings)
            capture(Capture(expanded, lambda g: {_PARAM: Outer(ids, g.permute(0, 2, 3, 1), batch_dim=0)}))
            return expanded

        setattr(module, method, compute_bias)
        try:
            return capture.forward(*args, **kwargs)
        finally:
            delattr(module, method)

    return forward


def _registration(owner: str, method: str, name: str) -> Callable[[ModuleType], None]:
    def register(modeling: ModuleType) -> None:
        register_forward(getattr(modeling, owner), params=(_PARAM,), name=name, forward=_relative_bias_forward(method))

    return register


register_when_loaded("transformers.models.t5.modeling_t5", _registration("T5Attention", "compute_bias", "t5-relative-bias"))
register_when_loaded("transformers.models.mt5.modeling_mt5", _registration("MT5Attention", "compute_bias", "t5-relative-bias"))
register_when_loaded("transformers.models.umt5.modeling_umt5", _registration("UMT5Attention", "compute_bias",
                                                                          "t5-relative-bias"))
register_when_loaded("transformers.models.mpnet.modeling_mpnet", _registration("MPNetEncoder", "compute_position_bias",
                                                                            "mpnet-relative-bias"))
