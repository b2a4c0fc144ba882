"""Smoke test of the GPU product-path benchmark (bench/gpu/product.py) on the CPU: every fit method
runs twice in the process, every score shape is timed against F.cross_entropy, and the record
holds what the GPU check quotes."""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

pytest.importorskip("sklearn")

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def product():
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(REPO))
        yield importlib.import_module("bench.gpu.product")


def test_quick_run_writes_both_runs_of_every_method_and_every_score_shape(product, tmp_path, monkeypatch):
    monkeypatch.setattr(product, "METHODS", product.METHODS[:2])  # full data and the default teacher
    assert product.main(["--quick", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "product-gpu.json").read_text())
    assert [(r["method"], r["run"]) for r in record["fit"]] == [
        (m.name, run) for m in product.METHODS for run in (1, 2)]
    teacher = [r for r in record["fit"] if r["score"] == "fgrad"]
    assert all(0 <= r["selection_share"] < 1 and r["selection_s"] > 0 and r["steps"] > 0 for r in teacher)
    assert teacher[0]["meets_goal"] is None and isinstance(teacher[1]["meets_goal"], bool)
    full = [r for r in record["fit"] if r["score"] is None]
    assert all(r["goal_share"] is None and r["meets_goal"] is None for r in full)
    shapes = {(r["shape"], r["method"]) for r in record["score_calls"]}
    assert shapes == {(label, method) for label, _, _ in product.QUICK_SCORE_SHAPES
                      for method in ("F.cross_entropy", "cross_entropy_scores", "cross_entropy_scores unchecked")}
    yardsticks = [r for r in record["score_calls"] if r["method"] == "F.cross_entropy"]
    assert all(r["x_f_cross_entropy"] == 1.0 for r in yardsticks)
    assert record["versions"] and record["machine"] and record["command"].startswith("python bench/gpu/product.py --quick")
    assert "default teacher (fgrad)" in (tmp_path / "product-gpu.md").read_text()
