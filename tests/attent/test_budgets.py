"""Budgets: a teacher spends the fraction of the recipe's epochs * N it is given, full data at a
budget is the shortened schedule, and the learning-rate schedule runs over the steps taken."""
import math

import pytest
import torch
from torch.utils.data import TensorDataset

from attent import Teacher, fit
from attent.optim import warmup_cosine_steps
from attent.schedules import IntervalSchedule, RatioSchedule, budget_sizes
from attent.strategies import Importance, InfoBatch, Soft


def spent(teacher: Teacher) -> int:
    return sum(teacher.planned_size(e) for e in range(teacher.plan.epochs))


@pytest.mark.parametrize("n, epochs", [(37, 12), (1437, 40), (10, 10), (5, 3)])
@pytest.mark.parametrize("budget", [0.25, 0.5, 0.75, 1.0])
@pytest.mark.parametrize("options", [
    {},
    {"strategy": Soft(), "ratio": RatioSchedule.incremental(1.0, 0.2), "interval": IntervalSchedule.fixed(50),
     "reselect_each_epoch": True, "warmup_epochs": 0},
    {"strategy": Importance(), "ratio": RatioSchedule.constant(0.5), "warmup_epochs": 0},
])
def test_a_teacher_spends_its_budget_and_never_more(n, epochs, budget, options):
    """floor(b * E * N) at most, and within one epoch's subset-size step of it (the sizes are
    whole examples, the scale is the largest that fits)."""
    try:
        teacher = Teacher(n, when="always", epochs=epochs, budget=budget, **options)
    except ValueError as error:  # only when the plan's full-data epochs alone exceed the budget
        assert "already take" in str(error)
        return
    allowed = math.floor(budget * epochs * n + 1e-9)
    assert spent(teacher) <= allowed
    assert allowed - spent(teacher) <= max(epochs, n)  # a finer scale would overspend by at least one example
    if budget == 1.0:
        assert spent(teacher) == allowed


def test_budget_scales_the_ratio_shape_and_keeps_it():
    teacher = Teacher(1000, when="always", epochs=11, budget=0.5, ratio=RatioSchedule.incremental(0.2, 0.8), warmup_epochs=1,
                      cycles=10, interval=1)
    sizes = [teacher.planned_size(e) for e in range(11)]
    assert sizes[0] == 1000 and sizes[1:] == sorted(sizes[1:]) and sizes[1] < sizes[-1]
    assert teacher.plan.ratio.shape == RatioSchedule.incremental(0.2, 0.8)


@pytest.mark.parametrize("kwargs, match", [
    (dict(budget=0.5), "budget needs epochs"),
    (dict(budget=0.5, epochs=4, ratio=0.3), "both fix the subset sizes"),
    (dict(budget=0.5, epochs=8, strategy=InfoBatch()), "sizes its subsets from the scores"),
    (dict(budget=0.1, epochs=4, warmup_epochs=1), r"budget=0.1 allows 4 training examples, but .* already take 13"),
    (dict(budget=0.0, epochs=4), r"budget must be in \(0, 1\]"),
    (dict(budget=1.5, epochs=4), r"budget must be in \(0, 1\]"),
])
def test_budget_errors_name_what_conflicts(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Teacher(10, when="always", **kwargs)


def test_budget_sizes_are_the_shortened_schedule_with_a_partial_last_epoch():
    assert [len(budget_sizes(40, 100, b)) for b in (0.25, 0.5, 0.75, 1.0)] == [10, 20, 30, 40]
    assert budget_sizes(6, 10, 0.25) == [10, 5] and budget_sizes(3, 10, 0.1) == [3]
    assert budget_sizes(4, 3, 0.01) == [1]
    with pytest.raises(ValueError, match="budget"):
        budget_sizes(4, 10, 0)


def _data(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long())


def _model():
    torch.manual_seed(0)
    return torch.nn.Linear(5, 2)


@pytest.mark.parametrize("teacher", [False, True])
def test_fit_at_a_budget_processes_it_and_the_schedule_ends_at_the_last_step(teacher):
    """Full data at b = 0.5 of 8 epochs runs 4; a teacher at b = 0.5 runs 8 epochs of smaller
    subsets; both process at most half of 8 * 24 examples and the rate reaches 0 at their last step.
    (b = 0.3 for full data: 2 whole epochs and 9 of the third.)"""
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    options = dict(loss="cross_entropy", optimizer=optimizer, epochs=8, budget=0.5, batch_size=5, score="loss",
                   lr_scheduler=warmup_cosine_steps(0.1), progress=False)
    if teacher:
        options["teacher"] = Teacher(24, when="always", epochs=8, budget=0.5, warmup_epochs=0, interval=IntervalSchedule.fixed(8),
                                     reselect_each_epoch=True)
    result = fit(model, _data(), **options)
    assert result.epochs_completed == (8 if teacher else 4)
    assert result.examples_seen <= 96 and (teacher or result.examples_seen == 96)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_fit_refuses_a_teacher_built_for_another_budget():
    model = _model()
    with pytest.raises(ValueError, match=r"fit budget=0.5 but the teacher was built with budget=None"):
        fit(model, _data(), loss="cross_entropy", optimizer=torch.optim.SGD(model.parameters(), lr=0.1), epochs=4,
            budget=0.5, teacher=Teacher(24, when="always", epochs=4), progress=False)


def test_full_data_at_a_budget_ends_with_a_partial_epoch_of_the_shuffled_order():
    model = _model()
    result = fit(model, _data(), loss="cross_entropy", optimizer=torch.optim.SGD(model.parameters(), lr=0.1), epochs=8,
                 budget=0.3, batch_size=5, progress=False)
    assert result.epochs_completed == 3 and result.examples_seen == math.floor(0.3 * 8 * 24) == 57
    assert [s["selected"] for s in result.selections] == [24, 24, 9]


def test_eval_points_measure_runs_of_different_epoch_lengths_at_the_same_progress():
    """10 points over 20 planned steps: evaluations at steps 2, 4, ..., 20, none at other epoch ends."""
    model = _model()
    result = fit(model, _data(), loss="cross_entropy", optimizer=torch.optim.SGD(model.parameters(), lr=0.1), epochs=4,
                 batch_size=5, eval_data=_data(8, 1), eval_points=10, progress=False)
    assert result.steps == 20 and [r["step"] for r in result.history] == list(range(2, 21, 2))
