"""A small transformer that reads a sequence and predicts from its last position (the synthetic tasks' learner)."""
from __future__ import annotations

import torch
from torch import nn

from .._extras import require

Block = require("timm.models.vision_transformer", "tasks").Block

__all__ = ["LastPositionTransformer"]


class LastPositionTransformer(nn.Module):
    """``embed`` -> + learned position embedding -> ``depth`` pre-norm timm ``Block`` s (full
    self-attention) -> LayerNorm -> linear head, read at the last position.

    Built from layers the gradient-norm probe covers (``nn.Embedding``, ``nn.Linear``,
    ``nn.LayerNorm``); positions go through an ``nn.Embedding`` indexed per example.

    Args:
        embed: maps the inputs (B, T, ...) to (B, T, width): an ``nn.Embedding`` for token ids, an
            ``nn.Linear`` for real-valued tokens.
        width, depth, heads, mlp_ratio: the transformer's size (``width`` divisible by ``heads``).
        max_len: the longest sequence accepted.
        out_features: size of the prediction.
    """

    def __init__(self, embed: nn.Module, *, width: int, depth: int, heads: int, max_len: int, out_features: int,
                 mlp_ratio: float = 2.0):
        super().__init__()
        if width % heads:
            raise ValueError(f"width={width} must be a multiple of heads={heads}")
        self.max_len = max_len
        self.embed = embed
        self.position = nn.Embedding(max_len, width)
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio=mlp_ratio, qkv_bias=True) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, out_features)
        nn.init.normal_(self.position.weight, std=0.02)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """inputs: (B, T) int64 token ids or (B, T, F) float tokens, T <= max_len.
        Returns (B, out_features) in the parameters' dtype."""
        hidden = self.embed(inputs)
        batch, length = hidden.shape[:2]
        if length > self.max_len:
            raise ValueError(f"inputs have length {length}, more than max_len={self.max_len}; inputs shape {tuple(inputs.shape)}")
        positions = torch.arange(length, device=hidden.device).expand(batch, length)
        hidden = hidden + self.position(positions)
        for block in self.blocks:
            hidden = block(hidden)
        return self.head(self.norm(hidden[:, -1]))
