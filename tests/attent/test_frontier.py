"""Frontier readings, checked by hand: interpolated time to quality, the full-data target, the
saving against full data's own frontier, and paired equal-budget advantages."""
import math

import pytest

from attent.tasks.frontier import Point, equal_budget, frontier, full_data_target, saving, time_to_quality


def P(method, budget, seed, quality, wall):
    return Point(method, budget, seed, quality, wall, examples=int(100 * budget), selection_overhead=0.01)


POINTS = [
    # full data: b=0.5 takes 5 s and reaches 0.80 / 0.84; b=1 takes 10 s, 0.90 / 0.94 (mean 0.92, std 0.0283)
    P("full", 0.5, 0, 0.80, 5.0), P("full", 0.5, 1, 0.84, 5.0),
    P("full", 1.0, 0, 0.90, 10.0), P("full", 1.0, 1, 0.94, 10.0),
    # a teacher: b=0.25 at 3 s reaches 0.86 / 0.88, b=0.5 at 6 s 0.93 / 0.95
    P("t", 0.25, 0, 0.86, 3.0), P("t", 0.25, 1, 0.88, 3.0),
    P("t", 0.5, 0, 0.93, 6.0), P("t", 0.5, 1, 0.95, 6.0),
]


def test_frontier_is_the_seed_means_per_budget():
    curve = frontier(POINTS, "t")
    assert [(p.budget, p.wall_time, p.seeds) for p in curve] == [(0.25, 3.0, 2), (0.5, 6.0, 2)]
    assert curve[0].quality == pytest.approx(0.87) and curve[0].quality_std == pytest.approx(0.02 / math.sqrt(2))
    assert frontier(POINTS, "absent") == []


def test_target_is_full_data_at_budget_one_less_one_std():
    std = 0.04 / math.sqrt(2)
    assert full_data_target(POINTS, baseline="full", higher_is_better=True) == pytest.approx(0.92 - std)
    assert full_data_target(POINTS, baseline="full", higher_is_better=False) == pytest.approx(0.92 + std)
    with pytest.raises(ValueError, match="no run at budget 1.0"):
        full_data_target(POINTS, baseline="t", higher_is_better=True)


def test_time_to_quality_interpolates_between_budgets_and_saving_is_against_full_datas_frontier():
    target = 0.90  # full: 0.82 at 5 s, 0.92 at 10 s -> 5 + 5 * 0.08 / 0.10 = 9 s; t: 0.87 at 3 s, 0.94 at 6 s -> 3 + 3 * 3 / 7
    full = time_to_quality(frontier(POINTS, "full"), target, higher_is_better=True)
    mine = time_to_quality(frontier(POINTS, "t"), target, higher_is_better=True)
    assert full == pytest.approx(9.0) and mine == pytest.approx(3 + 9 / 7)
    assert saving(mine, full) == pytest.approx(1 - (3 + 9 / 7) / 9)
    assert time_to_quality(frontier(POINTS, "t"), 0.86, higher_is_better=True) == 3.0  # its first point already does
    assert time_to_quality(frontier(POINTS, "t"), 0.99, higher_is_better=True) is None
    assert saving(None, 9.0) is None


def test_time_to_quality_for_a_loss_goes_downward():
    curve = frontier([P("m", 0.5, 0, 2.0, 4.0), P("m", 1.0, 0, 1.0, 8.0)], "m")
    assert time_to_quality(curve, 1.5, higher_is_better=False) == pytest.approx(6.0)
    assert time_to_quality(curve, 0.5, higher_is_better=False) is None


def test_equal_budget_pairs_seeds_and_turns_the_sign_for_losses():
    advantage = equal_budget(POINTS, method="t", baseline="full", budget=0.5, higher_is_better=True)
    assert advantage["n"] == 2 and advantage["mean"] == pytest.approx(0.12)  # seeds: +0.13, +0.11
    assert advantage["std"] == pytest.approx(0.02 / math.sqrt(2))
    as_loss = equal_budget(POINTS, method="t", baseline="full", budget=0.5, higher_is_better=False)
    assert as_loss["mean"] == pytest.approx(-0.12)
    unpaired = POINTS + [P("t", 1.0, 7, 0.5, 1.0)]
    assert equal_budget(unpaired, method="t", baseline="full", budget=1.0, higher_is_better=True)["n"] == 0


def test_equal_budget_leaves_out_runs_that_spent_more_than_the_budget():
    over = [P("full", 0.25, 0, 0.7, 2.0), Point("ib", 0.25, 0, 0.9, 4.0, examples=45, selection_overhead=0.0),
            Point("ok", 0.25, 0, 0.8, 2.0, examples=25, selection_overhead=0.0)]
    assert equal_budget(over, method="ib", baseline="full", budget=0.25, higher_is_better=True)["n"] == 0
    assert equal_budget(over, method="ok", baseline="full", budget=0.25, higher_is_better=True)["mean"] == pytest.approx(0.1)


def test_cold_frontiers_add_the_reference_seconds_and_amortised_ones_leave_them_out():
    runs = [Point("pool", 0.5, 0, 0.9, 4.0, 50, 0.2, steps=20, reference_time=2.0),
            Point("pool", 0.5, 1, 0.8, 6.0, 50, 0.2, steps=22, reference_time=3.0)]
    cold, amortised = frontier(runs, "pool")[0], frontier(runs, "pool", amortised=True)[0]
    assert cold.wall_time == pytest.approx(7.5) and amortised.wall_time == pytest.approx(5.0)
    assert cold.steps == pytest.approx(21.0) and runs[0].total_time() == 6.0 and runs[0].total_time(amortised=True) == 4.0
    older = [P("full", 1.0, 0, 0.9, 10.0)]  # records written before steps were kept
    assert frontier(older, "full")[0].steps is None and frontier(older, "full")[0].wall_time == 10.0
