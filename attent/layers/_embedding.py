"""Rules for ``nn.Embedding`` (and subclasses, such as Hugging Face's learned position embeddings
that override ``forward``) and ``nn.EmbeddingBag``: the per-example gradient is the one-hot rows of
the looked-up ids times the output gradient (:class:`attent.Ids`).

The ids are read where they are used: the module's own forward runs under a torch function mode that
sees its ``F.embedding`` calls on the module's weight, so a subclass that computes its ids (OPT's
positions from the attention mask, BART's offset positions) is read exactly. Ids that the batch
shares (size 1 at the batch dimension: GPT-2's (1, T) position ids) are looked up per example. 1-D
ids are refused: one id per example and positions shared by the batch cannot be told apart.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..factors import Capture, Ids, Outer
from ._calls import WeightCalls
from ._registry import register_forward


def _per_example_ids(capture: Any, ids: torch.Tensor) -> torch.Tensor:
    dim = capture.layout.dim
    if ids.dim() == 1 and dim == 0 or ids.dim() <= dim:
        raise ValueError(f"GradNormProbe: layer {capture.layer!r} looks up ids of shape {tuple(ids.shape)}: one id per "
                         f"example and positions shared by the batch cannot be told apart; pass ids of shape (B, 1), "
                         f"or shared positions as (1, T)")
    if ids.shape[dim] != 1 or capture.batch == 1:
        return ids
    shape = list(ids.shape)
    shape[dim] = capture.batch
    return ids.expand(shape)


def _embedding_forward(module: nn.Embedding, capture: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
    def lookup(func: Callable, arguments: dict) -> torch.Tensor:
        if arguments["scale_grad_by_freq"]:
            raise ValueError(f"GradNormProbe: layer {capture.layer!r} looks up with scale_grad_by_freq=True")
        ids = arguments["input"] = _per_example_ids(capture, arguments["input"])
        output = func(**arguments)
        num, pad = module.weight.shape[0], arguments["padding_idx"]
        found = Ids(ids, num, None if pad is None else pad % num)
        capture(Capture(output, lambda g: {"weight": Outer(found, g)}))
        return output

    with WeightCalls(F.embedding, module.weight, lookup):
        return capture.forward(*args, **kwargs)


def _embedding_reason(module: nn.Embedding) -> str | None:
    if module.scale_grad_by_freq:
        return ("scale_grad_by_freq=True divides each row's gradient by its frequency in the whole batch, so one "
                "example's gradient depends on the others' ids")
    return None


register_forward(nn.Embedding, params=("weight",), name="embedding", forward=_embedding_forward, check=_embedding_reason,
                 functional=F.embedding)


def _bag_reason(module: nn.EmbeddingBag) -> str | None:
    return "mode='max' (the gradient goes to the argmax row only)" if module.mode == "max" else None


def _bag_forward(module: nn.EmbeddingBag, capture: Any, input: torch.Tensor, offsets: torch.Tensor | None = None,
                 per_sample_weights: torch.Tensor | None = None) -> torch.Tensor:
    output = capture.forward(input, offsets, per_sample_weights)
    ids, weights = _bags(module, input, offsets, per_sample_weights)
    found = Ids(ids, module.num_embeddings, module.padding_idx)
    capture(Capture(output, lambda g: {"weight": Outer(found, weights.unsqueeze(-1) * g.unsqueeze(1), batch_dim=0)}))
    return output


def _bags(module: nn.EmbeddingBag, input: torch.Tensor, offsets: torch.Tensor | None,
          per_sample_weights: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(bags, L) ids and (bags, L) weights of each looked-up row in its bag's sum (0 at fill positions)."""
    weights = torch.ones(input.shape, dtype=torch.float32, device=input.device) if per_sample_weights is None \
        else per_sample_weights.detach().float()
    if input.dim() == 2:
        ids, present = input, torch.ones(input.shape, dtype=torch.bool, device=input.device)
    else:
        starts = offsets[:-1] if module.include_last_offset else offsets
        ends = torch.cat([starts[1:], starts.new_tensor([input.shape[0]])]) if not module.include_last_offset else offsets[1:]
        lengths = ends - starts
        positions = torch.arange(int(lengths.max()) if len(lengths) else 0, device=input.device)
        present = positions[None, :] < lengths[:, None]
        index = (starts[:, None] + positions[None, :]).clamp(max=max(input.shape[0] - 1, 0))
        ids = torch.where(present, input[index], 0)
        weights = torch.where(present, weights[index], 0)
    if module.padding_idx is not None:
        present = present & (ids != module.padding_idx)
    weights = weights * present
    if module.mode == "mean":
        weights = weights / present.sum(dim=1, keepdim=True).clamp(min=1)
    return ids, weights


register_forward(nn.EmbeddingBag, params=("weight",), name="embedding-bag", forward=_bag_forward, check=_bag_reason)
