"""The probe's peer suite (`python -m bench.probe.peer`): its case runner calls a Linear layer exact,
BatchNorm in training mode rejected and a probe whose norms are off wrong, and the record's totals
and exit status follow from the outcomes."""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch

from attent.probe import GradNormProbe

REPO = Path(__file__).resolve().parents[2]
EXACT = "Linear in=(3, 4) bias=True"
REJECTED = "BatchNorm1d train"


@pytest.fixture(scope="module")
def harness():
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(REPO))
        yield importlib.import_module("bench.probe.peer")


def _case(harness, name: str):
    return next(case for case in harness.cases() if case.name == name)


@pytest.fixture
def off_by_half(monkeypatch):
    """GradNormProbe.score answering 1.5 times the true squared norms."""
    score = GradNormProbe.score
    monkeypatch.setattr(GradNormProbe, "score", lambda probe, losses: 1.5 * score(probe, losses))


def test_linear_is_exact(harness):
    result = harness.run_case(_case(harness, EXACT))
    assert result["outcome"] == "exact" and result["group"] == harness.LAYER
    assert result["max_rel_error"] < harness.TOLERANCE and result["output_unchanged"]


def test_batchnorm_in_training_mode_is_rejected(harness):
    result = harness.run_case(_case(harness, REJECTED))
    assert result["outcome"] == "rejected" and "BatchNorm1d" in result["error"] and "max_rel_error" not in result


def test_off_norms_are_wrong(harness, off_by_half):
    result = harness.run_case(_case(harness, EXACT))
    assert result["outcome"] == "wrong" and result["max_rel_error"] == pytest.approx(0.5) and result["output_unchanged"]


@pytest.mark.parametrize("wrong", [False, True])
def test_record_totals_and_exit_status(harness, tmp_path, monkeypatch, request, wrong):
    if wrong:
        request.getfixturevalue("off_by_half")
    chosen = [_case(harness, EXACT), _case(harness, REJECTED)]
    monkeypatch.setattr(harness, "cases", lambda: chosen)
    monkeypatch.setattr(torch, "set_num_threads", lambda threads: None)  # main's one thread would outlast the test
    out = tmp_path / "peer.json"
    assert harness.main(["--json", str(out)]) == int(wrong)
    record = json.loads(out.read_text())
    assert record["totals"] == {"cases": 2, "exact": int(not wrong), "rejected": 1, "wrong": int(wrong)}
    assert [case["name"] for case in record["cases"]] == [EXACT, REJECTED]
    assert record["benchmark"] == "probe_peer" and record["machine"]["cpu_cores"] and record["versions"]["torch"]
