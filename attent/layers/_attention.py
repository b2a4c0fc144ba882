"""nn.MultiheadAttention's forward with explicit projections, so the probe can see them; and the
batch layout of the layers inside torch's Transformer modules (from their ``batch_first``).

``F.multi_head_attention_forward`` uses ``in_proj_weight`` (or ``q/k/v_proj_weight`` when kdim/vdim
differ), ``bias_k``/``bias_v`` and ``out_proj`` inside one functional call; the probe needs the
gradients of their outputs. This forward computes the same attention (same masks, dropout,
add_bias_kv, add_zero_attn, head split, output projection) batch-first, with each projection one
``F.linear`` whose output is handed to the probe. Self-attention (query, key and value the same
tensor) projects once: the shared-input case. Otherwise, with a packed weight, the three inputs are
concatenated along the sequence and projected together (three times the projection work, exact):
the gradient of the unused blocks is zero, so ``sum_t g_t x_t^T`` over the concatenation is the
parameter's per-example gradient. ``bias_k``/``bias_v`` are expanded to the batch (read off directly).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..factors import Capture, Direct, Layout, Outer
from ._registry import register_forward, register_layout


def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A boolean mask (True = may not attend) as an additive float mask; float masks as they are."""
    if mask is None or mask.dtype != torch.bool:
        return None if mask is None else mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))


def _pad_key(mask: torch.Tensor | None) -> torch.Tensor | None:
    """An additive mask with one more key position that every query may attend."""
    return None if mask is None else F.pad(mask, (0, 1))


def _project(module: nn.MultiheadAttention, capture: Any, query: torch.Tensor, key: torch.Tensor,
             value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, T, E), (B, S, E), (B, S, E) projections of batch-first inputs, each output captured."""
    E = module.embed_dim
    bias = module.in_proj_bias
    if not module._qkv_same_embed_dim:
        outputs = []
        for i, (x, name) in enumerate(((query, "q_proj_weight"), (key, "k_proj_weight"), (value, "v_proj_weight"))):
            y = F.linear(x, getattr(module, name), None if bias is None else bias[i * E:(i + 1) * E])
            capture(Capture(y, lambda g, x=x, name=name, i=i: {
                name: Outer(g, x, batch_dim=0), "in_proj_bias": Direct(F.pad(g, (i * E, (2 - i) * E)), batch_dim=0)}))
            outputs.append(y)
        return outputs[0], outputs[1], outputs[2]
    self_attention = query is key and key is value
    x = query if self_attention else torch.cat([query, key, value], dim=1)
    projected = F.linear(x, module.in_proj_weight, bias)  # (B, T or T+2S, 3E)
    capture(Capture(projected, lambda g: {"in_proj_weight": Outer(g, x, batch_dim=0), "in_proj_bias": Direct(g, batch_dim=0)}))
    if self_attention:
        return projected.chunk(3, dim=-1)
    T, S = query.shape[1], key.shape[1]
    return projected[:, :T, :E], projected[:, T:T + S, E:2 * E], projected[:, T + S:, 2 * E:]


def _batch_bias(module: nn.MultiheadAttention, capture: Any, name: str, batch: int) -> torch.Tensor:
    """``bias_k`` or ``bias_v`` (1, 1, E) expanded to (B, 1, E), its per-example gradient captured."""
    expanded = getattr(module, name).expand(batch, 1, -1)
    capture(Capture(expanded, lambda g: {name: Direct(g, batch_dim=0)}))
    return expanded


def multi_head_attention(
    module: nn.MultiheadAttention,
    capture: Any,
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
    batch_first or not); every projection's output is passed to ``capture``."""
    batched = query.dim() == 3
    if not batched:
        query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
        key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
    elif not module.batch_first:
        query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
    B, T, E = query.shape
    S, H = key.shape[1], module.num_heads
    D = E // H
    q, k, v = _project(module, capture, query, key, value)

    mask = _additive(attn_mask, q.dtype)
    if mask is None and is_causal:
        mask = _additive(torch.ones(T, S, dtype=torch.bool, device=q.device).triu(1), q.dtype)
    if mask is not None and mask.dim() == 3:
        mask = mask.reshape(B, H, T, S)
    padding = _additive(key_padding_mask, q.dtype)
    if module.bias_k is not None:
        k = torch.cat([k, _batch_bias(module, capture, "bias_k", B)], dim=1)
        v = torch.cat([v, _batch_bias(module, capture, "bias_v", B)], dim=1)
        mask, padding = _pad_key(mask), _pad_key(padding)
    q, k, v = (t.reshape(B, -1, H, D).transpose(1, 2) for t in (q, k, v))  # (B, H, len, D)
    if module.add_zero_attn:
        zeros = k.new_zeros(B, H, 1, D)
        k, v = torch.cat([k, zeros], dim=2), torch.cat([v, zeros], dim=2)
        mask, padding = _pad_key(mask), _pad_key(padding)
    if padding is not None:
        padding = padding.reshape(B, 1, 1, -1)
        mask = padding if mask is None else mask + padding
    dropout = module.dropout if module.training else 0.0

    if need_weights:
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(D) + (0 if mask is None else mask), dim=-1)
        out = F.dropout(weights, dropout) @ v if dropout else weights @ v
    else:
        weights = None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
    heads = out.transpose(1, 2).reshape(B, T, E)
    out = F.linear(heads, module.out_proj.weight, module.out_proj.bias)
    capture(Capture(out, lambda g: {"out_proj.weight": Outer(g, heads, batch_dim=0), "out_proj.bias": Direct(g, batch_dim=0)}))
    if weights is not None and average_attn_weights:
        weights = weights.mean(dim=1)
    if not batched:
        return out.squeeze(0), None if weights is None else weights.squeeze(0)
    if not module.batch_first:
        out = out.transpose(0, 1)
    return out, weights


register_forward(nn.MultiheadAttention, name="multihead-attention", forward=multi_head_attention,
                 params=("in_proj_weight", "in_proj_bias", "q_proj_weight", "k_proj_weight", "v_proj_weight",
                         "bias_k", "bias_v", "out_proj.weight", "out_proj.bias"))


def _batch_first_layout(module: nn.Module) -> Layout:
    """Batch at 0 or 1 inside a torch Transformer module, as its attention's ``batch_first`` says."""
    attention = next(m for m in module.modules() if isinstance(m, nn.MultiheadAttention))
    return Layout(0 if attention.batch_first else 1)


for _container in (nn.Transformer, nn.TransformerEncoder, nn.TransformerDecoder, nn.TransformerEncoderLayer,
                   nn.TransformerDecoderLayer):
    register_layout(_container, _batch_first_layout)
