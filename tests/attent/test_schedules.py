"""Ratio and interval schedules, and the epoch plan (warm-up, cycles, annealing) they make."""
import math

import pytest

from attent.schedules import EpochPlan, IntervalSchedule, RatioSchedule, TeachingPlan, progress_of


def phases(plan: TeachingPlan) -> list[tuple[str, int | None]]:
    return [(p.phase, p.selection_epoch) for p in (plan.at(e) for e in range(plan.epochs))]


@pytest.mark.parametrize(
    "schedule, expected",
    [
        (RatioSchedule.constant(0.3), [0.3, 0.3, 0.3, 0.3, 0.3]),
        (RatioSchedule.incremental(0.2, 0.6), [0.2, 0.3, 0.4, 0.5, 0.6]),
        (
            RatioSchedule.cosine(0.2, 0.8),
            [0.2 + 0.6 * (1 - math.cos(math.pi * p)) / 2 for p in (0, 0.25, 0.5, 0.75, 1)],
        ),
        (RatioSchedule.incremental(0.8, 0.4), [0.8, 0.7, 0.6, 0.5, 0.4]),
    ],
)
def test_ratio_schedule_values_at_each_progress(schedule, expected):
    values = [schedule.value(p) for p in (0, 0.25, 0.5, 0.75, 1)]
    assert values == pytest.approx(expected, abs=1e-12)


def test_ratio_schedule_default_is_the_published_cosine():
    schedule = RatioSchedule()
    assert (schedule.kind, schedule.initial, schedule.final) == ("cosine", 0.2, 0.8)
    assert schedule.value(0.5) == pytest.approx(0.5)


def test_interval_schedule_values_round_down():
    assert [IntervalSchedule.fixed(3).value(p) for p in (0, 0.5, 1)] == [3, 3, 3]
    assert [IntervalSchedule.incremental(5, 10).value(p) for p in (0, 0.3, 0.5, 0.99, 1)] == [5, 6, 7, 9, 10]
    assert IntervalSchedule() == IntervalSchedule("fixed", 5, 10)


def test_progress_is_index_over_count_minus_one_and_one_for_a_single_item():
    assert [progress_of(i, 5) for i in range(5)] == [0, 0.25, 0.5, 0.75, 1]
    assert progress_of(0, 1) == 1.0
    with pytest.raises(ValueError, match="count=3"):
        progress_of(3, 3)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: RatioSchedule("linear", 0.2, 0.8), "kind"),
        (lambda: RatioSchedule.cosine(0.0, 0.8), r"initial ratio must be in \(0, 1\], got 0.0"),
        (lambda: RatioSchedule.incremental(0.2, 1.5), r"final ratio must be in \(0, 1\], got 1.5"),
        (lambda: RatioSchedule("constant", 0.3), "one ratio"),
        (lambda: IntervalSchedule("growing"), "kind"),
        (lambda: IntervalSchedule.fixed(0), "initial interval must be an integer >= 1, got 0"),
        (lambda: IntervalSchedule.incremental(6, 4), "maximum >= initial"),
        (lambda: RatioSchedule().value(1.5), "progress"),
    ],
)
def test_schedule_bad_input_names_the_value(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_published_layout_with_cycles_of_exactly_the_interval():
    plan = TeachingPlan(epochs=51)  # 1 warm-up epoch, 10 cycles of 5 epochs, all on the subset
    assert plan.cycles == 10
    assert plan.at(0) == EpochPlan(0, "warmup", None, None, 1.0)
    for cycle in range(10):
        start = 1 + 5 * cycle
        ratio = RatioSchedule().value(cycle / 9)
        for epoch in range(start, start + 5):
            assert plan.at(epoch) == EpochPlan(epoch, "subset", cycle, start, ratio)


def test_published_layout_trains_the_rest_of_a_long_cycle_on_full_data():
    plan = TeachingPlan(epochs=801)  # cycles of 80 epochs: 5 on the subset, 75 on the full data
    kinds = phases(plan)
    assert kinds[1:6] == [("subset", 1)] * 5
    assert kinds[6:81] == [("full", None)] * 75
    assert kinds[81] == ("subset", 81)
    assert plan.at(800).cycle == 9


def test_hand_built_plan_with_incremental_schedules_and_annealing():
    plan = TeachingPlan(
        epochs=12,
        warmup_epochs=1,
        anneal_epochs=1,
        cycles=2,
        ratio=RatioSchedule.incremental(0.2, 0.6),
        interval=IntervalSchedule.incremental(2, 4),
    )
    assert phases(plan) == [
        ("warmup", None),
        ("subset", 1), ("subset", 1), ("full", None), ("full", None), ("full", None),
        ("subset", 6), ("subset", 6), ("subset", 6), ("subset", 6), ("full", None),
        ("anneal", None),
    ]
    assert [plan.at(e).ratio for e in (1, 2, 3, 6, 9, 11)] == [0.2, 0.2, 1.0, 0.6, 0.6, 1.0]
    assert [plan.at(e).cycle for e in (0, 1, 5, 6, 10, 11)] == [None, 0, 0, 1, 1, None]


def test_remainder_epochs_lengthen_the_first_cycles():
    plan = TeachingPlan(epochs=24, cycles=10, interval=IntervalSchedule.fixed(5))  # span 23: 3 cycles of 3, 7 of 2
    starts = [e for e in range(24) if plan.at(e).is_selection_point]
    assert starts == [1, 4, 7, 10, 12, 14, 16, 18, 20, 22]
    assert all(not plan.at(e).is_full for e in range(1, 24))


def test_reselect_each_epoch_makes_every_subset_epoch_a_selection_point():
    plan = TeachingPlan(epochs=9, cycles=2, interval=IntervalSchedule.fixed(2), reselect_each_epoch=True)
    assert phases(plan) == [
        ("warmup", None),
        ("subset", 1), ("subset", 2), ("full", None), ("full", None),
        ("subset", 5), ("subset", 6), ("full", None), ("full", None),
    ]


def test_default_cycles_are_capped_at_one_per_teaching_epoch():
    plan = TeachingPlan(epochs=5)
    assert plan.cycles == 4
    assert [plan.at(e).selection_epoch for e in range(5)] == [None, 1, 2, 3, 4]


def test_more_cycles_than_teaching_epochs_is_an_error_not_a_silent_cut():
    with pytest.raises(ValueError, match=r"cycles=10 does not fit the teaching span of 3 epochs"):
        TeachingPlan(epochs=4, cycles=10)
    assert TeachingPlan(epochs=4, cycles=3).cycles == 3


def test_no_teaching_span_means_every_epoch_is_full():
    plan = TeachingPlan(epochs=3, warmup_epochs=2, anneal_epochs=1)
    assert plan.cycles == 0
    assert [p for p, _ in phases(plan)] == ["warmup", "warmup", "anneal"]


def test_open_ended_plan_selects_every_interval_epochs_at_a_constant_ratio():
    plan = TeachingPlan(epochs=None, warmup_epochs=2, ratio=RatioSchedule.constant(0.4), interval=IntervalSchedule.fixed(3))
    assert plan.at(1).phase == "warmup"
    assert [plan.at(e).selection_epoch for e in range(2, 11)] == [2, 2, 2, 5, 5, 5, 8, 8, 8]
    assert plan.at(1000).ratio == 0.4
    assert plan.at(1000).cycle == (1000 - 2) // 3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(epochs=None, cycles=3), "cycles=3 needs epochs"),
        (dict(epochs=None, anneal_epochs=2, ratio=RatioSchedule.constant(0.5)), "anneal_epochs=2 needs epochs"),
        (dict(epochs=None), "'cosine' ratio schedule needs epochs"),
        (dict(epochs=None, ratio=RatioSchedule.constant(0.5), interval=IntervalSchedule.incremental()), "interval schedule needs epochs"),
        (dict(epochs=0), "epochs must be an integer >= 1, got 0"),
        (dict(epochs=4, warmup_epochs=3, anneal_epochs=2), "warmup_epochs=3, anneal_epochs=2, epochs=4"),
        (dict(epochs=10, cycles=0), "cycles must be an integer >= 1, got 0"),
        (dict(epochs=10, warmup_epochs=-1), "warmup_epochs must be an integer >= 0, got -1"),
    ],
)
def test_plan_bad_input_names_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TeachingPlan(**kwargs)


def test_plan_rejects_epochs_outside_the_run():
    plan = TeachingPlan(epochs=6)
    with pytest.raises(ValueError, match=r"epoch must be in \[0, epochs=6\), got 6"):
        plan.at(6)
    with pytest.raises(ValueError, match="epoch must be an integer >= 0, got -1"):
        plan.at(-1)
