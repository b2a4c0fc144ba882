"""nn.MultiheadAttention's forward with explicit input projections, so the probe can see them.

``F.multi_head_attention_forward`` uses ``in_proj_weight`` inside one functional call; the probe
needs the gradient of the projection's output. This forward computes the same attention (same
masks, dropout, head split, output projection) with the projection as one ``F.linear`` whose output
is handed to the probe. Self-attention (query, key and value the same tensor) projects once: the
shared-input case. Otherwise the three inputs are concatenated along the sequence and projected
together (three times the projection work, exact): the gradient of the unused blocks is zero, so
``sum_t g_t x_t^T`` over the concatenation is the parameter's per-example gradient.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..factors import Capture, Direct, Outer
from ._registry import register_layer


def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A boolean mask (True = may not attend) as an additive float mask; float masks as they are."""
    if mask is None or mask.dtype != torch.bool:
        return None if mask is None else mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))


def multi_head_attention(
    module: nn.MultiheadAttention,
    capture: Callable[[Capture], None],
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    need_weights: bool = True,
    attn_mask: torch.Tensor | None = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Same inputs and outputs as ``module(query, key, value, ...)`` (batched or unbatched,
    batch_first or not); the projection output is passed to ``capture``."""
    batched = query.dim() == 3
    self_attention = query is key and key is value
    if not batched:
        query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
        key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
    elif not module.batch_first:
        query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
    B, T, E = query.shape
    S, H = key.shape[1], module.num_heads
    D = E // H

    x = query if self_attention else torch.cat([query, key, value], dim=1)
    projected = F.linear(x, module.in_proj_weight, module.in_proj_bias)  # (B, T or T+2S, 3E)
    capture(Capture(projected, lambda g: {"in_proj_weight": Outer(g, x, batch_dim=0), "in_proj_bias": Direct(g, batch_dim=0)}))
    if self_attention:
        q, k, v = projected.chunk(3, dim=-1)
    else:
        q, k, v = projected[:, :T, :E], projected[:, T:T + S, E:2 * E], projected[:, T + S:, 2 * E:]
    q, k, v = (t.reshape(B, -1, H, D).transpose(1, 2) for t in (q, k, v))  # (B, H, len, D)

    mask = _additive(attn_mask, q.dtype)
    if mask is None and is_causal:
        mask = _additive(torch.ones(T, S, dtype=torch.bool, device=q.device).triu(1), q.dtype)
    if mask is not None and mask.dim() == 3:
        mask = mask.reshape(B, H, T, S)
    padding = _additive(key_padding_mask, q.dtype)
    if padding is not None:
        padding = padding.reshape(B, 1, 1, S)
        mask = padding if mask is None else mask + padding
    dropout = module.dropout if module.training else 0.0

    if need_weights:
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(D) + (0 if mask is None else mask), dim=-1)
        out = F.dropout(weights, dropout) @ v if dropout else weights @ v
    else:
        weights = None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
    out = module.out_proj(out.transpose(1, 2).reshape(B, T, E))
    if weights is not None and average_attn_weights:
        weights = weights.mean(dim=1)
    if not batched:
        return out.squeeze(0), None if weights is None else weights.squeeze(0)
    if not module.batch_first:
        out = out.transpose(0, 1)
    return out, weights


def _mha_reason(module: nn.MultiheadAttention) -> str | None:
    if not module._qkv_same_embed_dim:
        return "separate q/k/v projection weights (kdim/vdim differ from embed_dim)"
    if module.bias_k is not None or module.add_zero_attn:
        return "bias_k/bias_v or add_zero_attn"
    return None


register_layer(nn.MultiheadAttention, params=("in_proj_weight", "in_proj_bias"), name="mha-in-proj",
               forward=multi_head_attention, check=_mha_reason)(lambda module, args, output: [])
