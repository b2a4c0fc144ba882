"""The probe benchmark's methods (`attent bench probe`): on the quick configs, every full-parameter
method's squared norms agree with torch.func's per-example gradients, the subset probe covers just
the last block, and the record has the table's fields."""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def harness():
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(REPO))
        yield importlib.import_module("bench.probe.run")


def _norms(harness, model: str, method: str) -> torch.Tensor:
    net, inputs, loss, _, last = harness._build(model, True, torch.device("cpu"))
    return harness._method(method, net, inputs, loss, last)()


@pytest.mark.parametrize("model", ["vit", "gpt2"])
def test_probe_methods_match_torch_func(harness, model):
    reference = _norms(harness, model, "torch.func")
    assert reference.shape[0] >= 2 and bool((reference > 0).all())
    for method in ("probe.score", "probe.backward"):
        torch.testing.assert_close(_norms(harness, model, method), reference, rtol=1e-4, atol=0)
    subset = _norms(harness, model, "probe.score (last block)")
    assert bool((subset > 0).all()) and bool((subset < reference).all())


def test_opacus_method_matches_torch_func_on_the_vit(harness):
    pytest.importorskip("opacus")
    torch.testing.assert_close(_norms(harness, "vit", "opacus"), _norms(harness, "vit", "torch.func"), rtol=1e-4, atol=0)


def test_record_fields(harness, tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "_run_isolated", lambda model, method, quick, repeats: harness._measure(model, method, quick, repeats))
    out = tmp_path / "probe.json"
    assert harness.main(["--quick", "--models", "gpt2", "--methods", "plain step,probe.score,torch.func", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    rows = record["models"]["gpt2"]
    assert set(rows) == {"plain step", "probe.score", "torch.func"}
    assert rows["probe.score"]["max_rel_diff_vs_torch_func"] < 1e-4 and rows["plain step"]["norms"] is None
    assert all(row["seconds"] > 0 and row["peak_bytes"] >= 0 for row in rows.values())
    assert record["machine"]["cpu_cores"] and record["versions"]["torch"]
