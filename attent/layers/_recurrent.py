"""Rules for ``nn.LSTM``, ``nn.GRU`` and ``nn.RNN`` (up to 64 layers, bidirectional, bias, batch_first, dropout, h0;
not proj_size or packed sequences): a replacement forward runs the same recurrence step by step.

Per layer and direction, the input projection of every step is one ``F.linear`` (captured: the
Outer of its gradient and the inputs). The hidden projection runs once per step with the transposed
weight formed once; a zero tensor Z (B, T, gates) added to the hidden projections is captured
instead, so the gradients of all steps' hidden projections arrive together as Z's gradient, and the
weight's per-example gradient is the Outer of it and the hidden states each step read.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from ..factors import Capture, Direct, Outer
from ._registry import register_forward


def _cell(module: nn.Module, a: torch.Tensor, hh: torch.Tensor, state: tuple) -> tuple:
    """One step: ``a`` the input projection, ``hh`` the hidden projection; returns the new state."""
    if isinstance(module, nn.LSTM):
        h, c = state
        i, f, g, o = (a + hh).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
    if isinstance(module, nn.RNN):
        return ((torch.tanh if module.nonlinearity == "tanh" else torch.relu)(a + hh),)
    (h,) = state
    a_r, a_z, a_n = a.chunk(3, dim=-1)
    h_r, h_z, h_n = hh.chunk(3, dim=-1)
    r, z = torch.sigmoid(a_r + h_r), torch.sigmoid(a_z + h_z)
    n = torch.tanh(a_n + r * h_n)
    return ((1 - z) * n + z * h,)


def _direction(module: nn.Module, capture: Any, x: torch.Tensor, state: tuple, suffix: str) -> tuple:
    """One layer in one direction over batch-first x (B, T, in): (outputs (B, T, H), final state)."""
    names = [f"{kind}_{part}{suffix}" for kind in ("weight", "bias") for part in ("ih", "hh")]
    w_ih, w_hh = getattr(module, names[0]), getattr(module, names[1])
    b_ih, b_hh = (getattr(module, n) for n in names[2:]) if module.bias else (None, None)
    B, T = x.shape[:2]
    a = F.linear(x, w_ih, b_ih)  # (B, T, gates)
    capture(Capture(a, lambda g: {names[0]: Outer(g, x, batch_dim=0), names[2]: Direct(g, batch_dim=0)}))
    z = torch.zeros((), dtype=a.dtype, device=a.device, requires_grad=True).expand(B, T, a.shape[-1])
    w_hh_t, b_hh = w_hh.t(), (0 if b_hh is None else b_hh.expand(B, -1))
    reverse = suffix.endswith("_reverse")
    steps = range(T - 1, -1, -1) if reverse else range(T)
    read, outputs = [], [None] * T
    for t in steps:
        read.append(state[0])
        state = _cell(module, a[:, t], state[0] @ w_hh_t + b_hh + z[:, t], state)
        outputs[t] = state[0]
    read = torch.stack(read[::-1] if reverse else read, dim=1)  # (B, T, H): the hidden state step t read
    capture(Capture(z, lambda g: {names[1]: Outer(g, read, batch_dim=0), names[3]: Direct(g, batch_dim=0)}))
    return torch.stack(outputs, dim=1), state


def _recurrent_forward(module: nn.Module, capture: Any, input: Any, hx: Any = None) -> tuple:
    if isinstance(input, PackedSequence) or input.dim() != 3:
        raise ValueError(f"{type(module).__name__}: packed or unbatched input; pass a padded (B, T, in) or (T, B, in) batch")
    x = input if module.batch_first else input.transpose(0, 1)
    B, directions, lstm = x.shape[0], 2 if module.bidirectional else 1, isinstance(module, nn.LSTM)
    zeros = x.new_zeros(module.num_layers * directions, B, module.hidden_size)
    hx = (zeros, zeros) if hx is None and lstm else zeros if hx is None else hx
    states = list(zip(*hx)) if lstm else [(h,) for h in hx]
    finals = []
    for layer in range(module.num_layers):
        if layer and module.dropout and module.training:
            x = F.dropout(x, module.dropout)
        outs = []
        for d in range(directions):
            out, final = _direction(module, capture, x, states[layer * directions + d], f"_l{layer}" + ("_reverse" if d else ""))
            outs.append(out)
            finals.append(final)
        x = torch.cat(outs, dim=-1)
    out = x if module.batch_first else x.transpose(0, 1)
    h_n = torch.stack([f[0] for f in finals])
    return (out, (h_n, torch.stack([f[1] for f in finals]))) if lstm else (out, h_n)


def _recurrent_reason(module: nn.Module) -> str | None:
    return "proj_size > 0" if getattr(module, "proj_size", 0) else None


_PARAMS = tuple(f"{kind}_{part}_l{layer}{suffix}" for kind in ("weight", "bias") for part in ("ih", "hh")
                for layer in range(64) for suffix in ("", "_reverse"))
for _type in (nn.LSTM, nn.GRU, nn.RNN):
    register_forward(_type, params=_PARAMS, name="recurrent", forward=_recurrent_forward, check=_recurrent_reason)
