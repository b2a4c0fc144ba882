"""Subclasses that override a torch layer's forward (timm's LayerNorm2d, norm + activation layers,
Conv2dSame, its Linear): probed through the layer's functional call on the module's weight, exact;
a call with other arguments than the module's own, or a subclass of a type without that route, is
refused by name."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attent.probe import GradNormProbe

timm_layers = pytest.importorskip("timm.layers")


def readout(*layers: nn.Module) -> nn.Module:
    """(B,) losses: the layers, then a fixed readout of every output element."""

    class Readout(nn.Sequential):
        def forward(self, x):
            out = super().forward(x)
            return (torch.tanh(out) * torch.linspace(-1, 1, out[0].numel(), dtype=out.dtype).view(out.shape[1:])).flatten(1).sum(1)

    return Readout(*layers).double()


CASES = {  # B == C == H == W == 3: a norm over the wrong axis would still fit the shapes
    "LayerNorm2d (channels first)": lambda: readout(nn.Conv2d(3, 3, 1), timm_layers.LayerNorm2d(3)),
    "LayerNormAct2d (norm, then activation)": lambda: readout(nn.Conv2d(3, 3, 1), timm_layers.LayerNormAct2d(3)),
    "GroupNormAct": lambda: readout(timm_layers.GroupNormAct(3, 3)),
    "BatchNormAct2d in eval mode": lambda: readout(timm_layers.BatchNormAct2d(3)).eval(),
    "Conv2dSame": lambda: readout(timm_layers.Conv2dSame(3, 3, 3, stride=2)),
    "timm Linear": lambda: readout(timm_layers.Linear(3, 3)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_overriding_subclasses_are_exact(exact, name):
    torch.manual_seed(0)
    model = CASES[name]()
    for p in model.parameters():
        nn.init.normal_(p)
    x = torch.randn(3, 3, 3, 3, dtype=torch.float64)
    exact(model, lambda m: m(x), lambda m, i: m(x[i:i + 1]), 3)


def test_a_functional_call_with_other_arguments_than_the_modules_is_refused_by_name():
    class HalfBias(nn.Linear):
        def forward(self, x):
            return F.linear(x, self.weight, self.bias / 2)

    model = nn.Sequential(HalfBias(3, 2))
    with GradNormProbe(model), pytest.raises(ValueError, match=r"layer '0' \(HalfBias\) calls linear with bias other"):
        model(torch.randn(2, 3))


def test_an_overriding_subclass_of_a_type_without_a_functional_route_is_refused_by_name():
    class MyAttention(nn.MultiheadAttention):
        def forward(self, query, key, value, **kwargs):
            return super().forward(query * 2, key, value, **kwargs)

    with pytest.raises(ValueError, match=r"in_proj_weight \(MyAttention\.in_proj_weight: overrides MultiheadAttention\.forward"):
        GradNormProbe(MyAttention(4, 2))


def test_weight_standardized_convolution_is_refused_by_name():
    model = readout(timm_layers.StdConv2d(3, 2, 3))
    with GradNormProbe(model) as probe, pytest.raises(RuntimeError, match=r"0\.weight \(1 uses, 0 in"):
        probe.score(model(torch.randn(2, 3, 5, 5, dtype=torch.float64)))
