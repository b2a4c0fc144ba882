"""Rule for ``nn.Embedding``: the per-example gradient is the one-hot rows of the looked-up ids
times the output gradient (:class:`attent.Ids`)."""
from __future__ import annotations

import torch
from torch import nn

from ..factors import Capture, Ids, Outer
from ._registry import first_tensor, register_layer


@register_layer(nn.Embedding, params=("weight",), name="embedding",
                check=lambda m: "max_norm renormalizes rows in place" if m.max_norm is not None else None)
def _embedding(module: nn.Embedding, args: tuple, output: torch.Tensor) -> Capture:
    ids = Ids(first_tensor(args, "nn.Embedding"), module.num_embeddings, module.padding_idx)
    return Capture(output, lambda g: {"weight": Outer(ids, g)})
