"""The oracle for the probe's layer rules: each example's gradient from its own forward pass.

``exact(model, forward, forward_one, batch)`` runs ``forward(model) -> (B,) losses`` under a
GradNormProbe (score or backward), and compares its squared norms with those of
``forward_one(model, i) -> loss of example i alone`` differentiated one example at a time (an
independent forward, so a probe that leaks one example into another, or changes the model's
output, is caught), and the probed losses with the unprobed ones.
"""
from __future__ import annotations

from typing import Callable

import pytest
import torch
from torch import nn

from attent.probe import GradNormProbe


def _single_example_norms(model: nn.Module, names: list[str], forward_one: Callable, batch: int) -> torch.Tensor:
    """(B, P) squared norms of each example's gradient, per parameter."""
    params = dict(model.named_parameters())
    rows = []
    for i in range(batch):
        grads = torch.autograd.grad(forward_one(model, i).sum(), [params[n] for n in names], allow_unused=True)
        rows.append(torch.stack([torch.zeros((), dtype=torch.float64) if g is None else g.double().square().sum()
                                 for g in grads]))
    return torch.stack(rows)


def _exact(model: nn.Module, forward: Callable, forward_one: Callable, batch: int, *, mode: str = "score",
           rtol: float = 1e-5, params=None, **options) -> GradNormProbe:
    """Compares the total and every ``per_layer`` entry with the oracle (a small layer's error shows
    in its own entry even where the total hides it)."""
    with torch.no_grad():
        unprobed = forward(model)
    with GradNormProbe(model, params, **options) as probe:
        losses = forward(model)
        torch.testing.assert_close(losses.detach(), unprobed, rtol=1e-5, atol=1e-6)
        got = probe.score(losses) if mode == "score" else probe.backward(losses)
    assert not got.requires_grad and got.shape == (batch,)
    names = list(probe.layer_of)
    want = _single_example_norms(model, names, forward_one, batch)
    atol = max(1e-7 * want.sum(1).max().item(), 1e-25)  # relative to the model's scale: small gradients count too
    torch.testing.assert_close(got.double(), want.sum(1), rtol=rtol, atol=atol)
    for layer, sq in probe.per_layer.items():
        mine = torch.tensor([probe.layer_of[n] == layer for n in names])
        torch.testing.assert_close(sq.double(), want[:, mine].sum(1), rtol=rtol, atol=atol,
                                   msg=lambda m, layer=layer: f"per_layer[{layer!r}]: {m}")
    assert set(probe.per_layer) == set(probe.layer_of.values())
    return probe


@pytest.fixture(scope="session")
def exact() -> Callable[..., GradNormProbe]:
    return _exact
