"""Rule for T5's relative attention bias (``T5Attention.relative_attention_bias``, also MT5's and
UMT5's, whose every layer has its own table), registered once transformers' T5 is imported.

The bias table's lookup, (q, k) buckets -> (1, H, q, k), is shared by the batch and added to every
example's scores (and reused by the later layers): its output gradient is the sum over examples.
While the probe is attached, ``compute_bias`` returns the bias expanded to (B, H, q, k), so the
gradient of each example's copy arrives apart; the per-example gradient is then the one-hot rows of
the buckets times that copy's gradient (:class:`attent.Ids`).
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


def _t5_attention_forward(module: nn.Module, capture: Any, *args: Any, **kwargs: Any) -> Any:
    table: nn.Embedding = module.relative_attention_bias

    def compute_bias(*bias_args: Any, **bias_kwargs: Any) -> torch.Tensor:
        buckets: list[torch.Tensor] = []

        def lookup(func: Callable, arguments: dict) -> torch.Tensor:
            buckets.append(arguments["input"])
            return func(**arguments)

        with WeightCalls(F.embedding, table.weight, lookup):
            values = type(module).compute_bias(module, *bias_args, **bias_kwargs)  # (1, H, q, k)
        if len(buckets) != 1 or values.dim() != 4 or values.shape[0] != 1:
            raise ValueError(f"GradNormProbe: layer {capture.layer!r}: compute_bias made {len(buckets)} lookups and a "
                             f"bias of shape {tuple(values.shape)}; expected one lookup and (1, H, q, k)")
        batch = capture.batch
        expanded = values.expand(batch, -1, -1, -1)
        ids = Ids(buckets[0].expand(batch, *buckets[0].shape), table.num_embeddings)
        capture(Capture(expanded, lambda g: {_PARAM: Outer(ids, g.permute(0, 2, 3, 1), batch_dim=0)}))
        return expanded

    module.compute_bias = compute_bias
    try:
        return capture.forward(*args, **kwargs)
    finally:
        del module.compute_bias


def _registration(attention: str) -> Callable[[ModuleType], None]:
    def register(modeling: ModuleType) -> None:
        register_forward(getattr(modeling, attention), params=(_PARAM,), name="t5-relative-bias",
                         forward=_t5_attention_forward)

    return register


register_when_loaded("transformers.models.t5.modeling_t5", _registration("T5Attention"))
register_when_loaded("transformers.models.mt5.modeling_mt5", _registration("MT5Attention"))
register_when_loaded("transformers.models.umt5.modeling_umt5", _registration("UMT5Attention"))
