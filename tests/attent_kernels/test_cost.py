"""The cost model of the Triton kernels (attent_kernels/_cost.py): the choices it makes at the
shapes the kernels issue names, and the splits it asks for."""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from attent_kernels import _cost

REPO = Path(__file__).resolve().parents[2]


def test_t1_takes_the_closed_form_and_long_sequences_of_narrow_layers_the_direct_path():
    assert _cost.linear_path(8, 1, 4096, [4096]) == "closed"
    assert _cost.linear_path(8, 512, 4096, [11008]) == "ghost"  # LLaMA-7B at T = 512
    assert _cost.linear_path(8, 8192, 256, [256]) == "direct"


def test_ghost_is_credited_with_half_the_gram_and_the_grid_waves():
    # T doubling quadruples the block pairs; with the device full the work follows them.
    short, long = _cost.ghost_terms(64, 1024, 768, [768]), _cost.ghost_terms(64, 2048, 768, [768])
    assert long[0] == pytest.approx(4 * short[0], rel=0.05)
    # Below one wave the grid does not fill the device: one example costs what a full wave does.
    full = _cost.SM_COUNT * _cost.RESIDENT_PROGRAMS
    assert _cost.ghost_time(1, 64, 768, [768]) == _cost.ghost_time(full, 64, 768, [768]) < _cost.ghost_time(full + 1, 64, 768, [768])


def test_long_sequences_sort_the_embedding_ids():
    assert _cost.embedding_sorts(8, 4096, 4096)


def _fit() -> dict:
    return json.loads((REPO / "bench" / "results" / "cost_fit_h200.json").read_text())


def test_the_constants_are_the_committed_fit_of_the_gpu_record():
    """Every fitted constant of _cost.py is the value bench/gpu/fit_cost.py wrote from the record."""
    fitted = _fit()["constants"]
    assert fitted, "the fit holds no constants"
    for name, value in fitted.items():
        assert getattr(_cost, name) == value, f"_cost.{name} = {getattr(_cost, name)!r}, the fit says {value!r}"


def test_auto_picks_what_the_fit_reports_at_every_recorded_shape(monkeypatch):
    """The committed fit's decisions (the path auto picks at each shape of the record, and its
    regret against the measured fastest) are the ones the model makes now on that record, through
    the fit script's own reading of it."""
    monkeypatch.syspath_prepend(str(REPO))
    fit_cost = importlib.import_module("bench.gpu.fit_cost")
    fit = _fit()
    record = json.loads((REPO / fit["record"]).read_text())
    now = fit_cost.decisions(record["results"])
    assert len(now) >= 20
    assert now == fit["decisions"]
    for decision in now:
        measured = decision["measured_s"]
        assert decision["regret"] == pytest.approx(measured[decision["pick"]] / min(measured.values()) - 1)


def test_constants_are_replaced_only_while_open():
    before = _cost.GHOST_RATE
    with _cost.constants(GHOST_RATE=1.0):
        assert _cost.GHOST_RATE == 1.0
    assert _cost.GHOST_RATE == before
    with pytest.raises(ValueError, match="unknown cost-model constants"):
        with _cost.constants(NOT_A_CONSTANT=1):
            pass


@pytest.mark.parametrize("n, programs, align", [(1, 1, 64), (50257, 64, 256), (300, 1, 64), (4096, 10**6, 128), (0, 3, 16)])
def test_aligned_slices_cover_the_range_in_whole_tiles(n, programs, align):
    length, count = _cost.aligned_slices(n, programs, align)
    assert length % align == 0 and count >= 1
    assert (count - 1) * length < max(n, 1) <= count * length
    assert count == 1 or programs * (count - 1) < _cost.TARGET_PROGRAMS


def test_splits_stay_between_one_and_the_most():
    assert _cost.splits(10**6, 8) == 1
    assert _cost.splits(1, 8) == 8
    assert _cost.splits(0, 3) == 3


def test_fused_weight_gradient_against_the_gemm_then_the_norms():
    assert not _cost.fused_weight_grad_wins(8, 512, 4096, 11008)  # LLaMA-7B, T = 512: GEMM + ghost
    assert _cost.fused_weight_grad_wins(8, 4096, 4096, 11008)  # T = 4096: the norms cost as much as the GEMM
    assert not _cost.fused_weight_grad_wins(64, 1, 768, 768)  # T = 1: the closed form is free
