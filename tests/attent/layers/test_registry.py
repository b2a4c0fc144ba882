"""The registry: rules for transformers/timm classes register only once those libraries are imported,
so ``import attent`` never imports them; a user rule may claim a submodule's parameter."""
from __future__ import annotations

import subprocess
import sys

import torch
from torch import nn

from attent import factors, layers


def test_import_attent_loads_neither_transformers_nor_timm():
    code = "import sys, attent; assert not {'transformers', 'timm'} & set(sys.modules), sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_rule_for_a_module_not_yet_imported_registers_when_it_is(monkeypatch):
    seen = []
    layers.register_when_loaded("attent_test_fake_library", seen.append)
    layers.register_loaded_integrations()
    assert seen == []
    fake = type(sys)("attent_test_fake_library")
    monkeypatch.setitem(sys.modules, "attent_test_fake_library", fake)
    layers.register_loaded_integrations()
    layers.register_loaded_integrations()
    assert seen == [fake]


def test_a_rule_may_claim_a_submodule_parameter(exact):
    class Scaled(nn.Module):
        """Owns no parameter itself: its rule covers ``inner.weight``, used as a gain of x."""

        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(3, 3)  # only its weight is used, elementwise

        def forward(self, x):
            return x * self.inner.weight.diagonal()

    @layers.register_layer(Scaled, params=("inner.weight",), name="scaled")
    def _scaled(module, args, output):
        x = args[0]
        return factors.Capture(output, lambda g: {"inner.weight": factors.Direct(torch.diag_embed(x * g).flatten(-2))})

    torch.manual_seed(0)
    model, x = nn.Sequential(Scaled()).double(), torch.randn(3, 2, 3, dtype=torch.float64)
    probe = exact(model, lambda m: m(x).sum(dim=(1, 2)), lambda m, i: m(x[i:i + 1]).sum(dim=(1, 2)), 3,
                  params=["0.inner.weight"])
    assert probe.coverage == {"0.inner.weight": "scaled"}
