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


def _single_example_norms(model: nn.Module, params: list[torch.Tensor], forward_one: Callable, batch: int) -> torch.Tensor:
    norms = []
    for i in range(batch):
        grads = torch.autograd.grad(forward_one(model, i).sum(), params, allow_unused=True)
        norms.append(sum(g.double().square().sum() for g in grads if g is not None))
    return torch.tensor(norms, dtype=torch.float64)


def _exact(model: nn.Module, forward: Callable, forward_one: Callable, batch: int, *, mode: str = "score",
           rtol: float = 1e-5, params=None, **options) -> GradNormProbe:
    with torch.no_grad():
        unprobed = forward(model)
    with GradNormProbe(model, params, **options) as probe:
        losses = forward(model)
        torch.testing.assert_close(losses.detach(), unprobed, rtol=1e-5, atol=1e-6)
        got = probe.score(losses) if mode == "score" else probe.backward(losses)
    assert not got.requires_grad and got.shape == (batch,)
    chosen = [p for name, p in model.named_parameters() if name in probe.coverage]
    want = _single_example_norms(model, chosen, forward_one, batch)
    torch.testing.assert_close(got.double(), want, rtol=rtol, atol=1e-10)
    return probe


@pytest.fixture(scope="session")
def exact() -> Callable[..., GradNormProbe]:
    return _exact
