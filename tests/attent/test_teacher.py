"""The teacher: selection semantics of every strategy, schedules in action, determinism, resume,
the sampler, and its handling of bad input."""
import io
import math
import warnings

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from attent.schedules import IntervalSchedule, RatioSchedule
from attent.scores import IndexedDataset
from attent.strategies import Hard, Importance, InfoBatch, Soft
from attent.teacher import Selection, Teacher

HELD = dict(warmup_epochs=1, reselect_each_epoch=False)  # the published layout: a full epoch, subsets held for the interval


def open_ended(n: int, ratio: float = 0.3, **kwargs) -> Teacher:
    """A teacher that selects at every epoch from epoch 0 on, at a constant ratio."""
    return Teacher(n, ratio=ratio, interval=1, warmup_epochs=0, **kwargs)


def observed(teacher: Teacher, scores: torch.Tensor) -> Teacher:
    teacher.observe(torch.arange(scores.numel()), scores)
    return teacher


def inclusion_frequency(teacher: Teacher, epochs: int) -> torch.Tensor:
    counts = torch.zeros(teacher.num_examples)
    for epoch in range(epochs):
        counts[teacher.select(epoch).indices] += 1
    return counts / epochs


def fake_scores(epoch: int, indices: torch.Tensor) -> torch.Tensor:
    """Deterministic stand-in for a learner's per-example losses at an epoch."""
    return torch.sin(indices.double() * 1.7 + epoch * 0.9).abs().float() + 0.01 * epoch


# --- hard / greedy -------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["hard", "greedy"])
def test_hard_picks_exactly_the_top_m_scores(strategy):
    scores = torch.randperm(40, generator=torch.Generator().manual_seed(3)).float()
    teacher = observed(open_ended(40, ratio=0.25, strategy=strategy), scores)
    selection = teacher.select(0)
    assert isinstance(teacher.strategy, Hard) and teacher.strategy.name == "hard"
    assert selection.indices.tolist() == sorted(torch.topk(scores, 10).indices.tolist())
    assert selection.weights is None and selection.ratio == 0.25 and not selection.is_full
    assert selection.indices.dtype == torch.int64


def test_selection_size_is_floor_of_ratio_times_n_and_at_least_one():
    assert len(observed(open_ended(100, ratio=0.29), torch.rand(100)).select(0)) == 29
    assert len(observed(open_ended(7, ratio=0.1), torch.rand(7)).select(0)) == 1
    assert len(observed(open_ended(10, ratio=0.25), torch.rand(10)).select(0)) == 2  # floor 2.5, not ceil 3
    assert open_ended(10, ratio=0.25).planned_size(0) == 2


def test_hard_breaks_ties_by_the_seed_and_deterministically():
    def pick(seed):
        return observed(open_ended(30, ratio=0.2, seed=seed), torch.ones(30)).select(0).indices.tolist()

    assert pick(0) == pick(0)
    assert pick(0) != pick(1)


def test_never_scored_examples_are_selected_first():
    teacher = open_ended(10, ratio=0.3)
    teacher.observe(torch.arange(7), torch.full((7,), 100.0))
    assert teacher.select(0).indices.tolist() == [7, 8, 9]
    assert teacher.stats["unscored"] == 3 and teacher.stats["nonfinite_held"] == 0


def test_scores_and_their_steps_are_exposed_as_copies():
    teacher = Teacher(4, epochs=3)
    teacher.observe(torch.tensor([2, 0]), torch.tensor([5.0, 6.0]), step=7)
    scores = teacher.scores
    assert scores[[0, 2]].tolist() == [6.0, 5.0] and scores[[1, 3]].isnan().all()
    assert teacher.score_steps.tolist() == [7, -1, 7, -1]
    scores[0] = 0.0
    assert teacher.scores[0].item() == 6.0


def test_without_any_scores_hard_selects_a_seeded_subset():
    first = open_ended(50, ratio=0.2).select(0).indices
    assert first.tolist() == open_ended(50, ratio=0.2).select(0).indices.tolist()
    assert len(first) == 10


def test_nan_and_inf_scores_stay_in_play_are_selected_first_counted_and_warned_once_per_selection():
    teacher = open_ended(10, ratio=0.3)
    scores = torch.arange(10.0)
    scores[2] = math.nan
    scores[4] = math.inf
    teacher.observe(torch.arange(10), scores)
    with pytest.warns(RuntimeWarning, match="2 of 10 examples hold NaN or infinite scores") as record:
        selection = teacher.select(0)
    assert len(record) == 1
    assert selection.indices.tolist() == [2, 4, 9]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        teacher.select(0)  # the same selection again: no new warning
    stats = teacher.stats
    assert stats["nonfinite_scores"] == 2 and stats["nonfinite_held"] == 2


# --- soft ----------------------------------------------------------------------------------


@pytest.mark.parametrize("normalize", ["softmax", "sigmoid"])
def test_soft_at_vanishing_temperature_is_hard(normalize):
    scores = (torch.randperm(30, generator=torch.Generator().manual_seed(1)).float() - 15) * 0.1
    soft = observed(open_ended(30, strategy=Soft(temperature=1e-4, normalize=normalize)), scores)
    hard = observed(open_ended(30, strategy="hard"), scores)
    for epoch in range(5):
        assert soft.select(epoch).indices.tolist() == hard.select(epoch).indices.tolist()


def test_soft_at_large_temperature_is_uniform():
    scores = torch.linspace(0, 10, 20)
    frequency = inclusion_frequency(observed(open_ended(20, ratio=0.25, strategy=Soft(temperature=1e6)), scores), 1500)
    assert (frequency - 0.25).abs().max() < 0.06
    peaked = inclusion_frequency(observed(open_ended(20, ratio=0.25, strategy=Soft(temperature=1.0)), scores), 200)
    assert peaked[-3:].mean() > 0.9 and peaked[:8].max() < 0.03


def test_soft_normalization_sigmoid_flattens_large_scores_softmax_does_not():
    scores = torch.tensor([100.0, 101.0])
    softmax = inclusion_frequency(observed(open_ended(2, ratio=0.5, strategy="soft"), scores), 1500)
    sigmoid = inclusion_frequency(observed(open_ended(2, ratio=0.5, strategy=Soft(normalize="sigmoid")), scores), 1500)
    assert softmax[1].item() == pytest.approx(math.e / (1 + math.e), abs=0.04)
    assert sigmoid[1].item() == pytest.approx(0.5, abs=0.04)


def test_soft_takes_unscored_examples_first():
    teacher = open_ended(10, ratio=0.2, strategy="soft")
    teacher.observe(torch.arange(8), torch.full((8,), 50.0))
    assert teacher.select(0).indices.tolist() == [8, 9]


# --- random --------------------------------------------------------------------------------


def test_random_is_a_uniform_subset_that_ignores_scores():
    low = observed(open_ended(20, ratio=0.25, strategy="random"), torch.arange(20.0))
    high = observed(open_ended(20, ratio=0.25, strategy="random"), -torch.arange(20.0))
    assert low.select(3).indices.tolist() == high.select(3).indices.tolist()
    frequency = inclusion_frequency(low, 1500)
    assert (frequency - 0.25).abs().max() < 0.06


# --- infobatch -----------------------------------------------------------------------------


def test_infobatch_prunes_below_mean_examples_and_rescales_the_kept_ones():
    teacher = observed(Teacher(10, strategy="infobatch", epochs=40, warmup_epochs=0), torch.arange(10.0))
    selection = teacher.select(0)
    below = [i for i in selection.indices.tolist() if i < 5]
    assert len(below) == 2  # floor((1 - 0.5) * 5) of the 5 below the mean 4.5
    assert set(range(5, 10)) <= set(selection.indices.tolist())
    weights = dict(zip(selection.indices.tolist(), selection.weights.tolist()))
    assert all(weights[i] == 2.0 for i in below) and all(weights[i] == 1.0 for i in range(5, 10))
    assert teacher.loss_weights(torch.tensor([below[0], 7])).tolist() == [2.0, 1.0]
    assert selection.ratio == 0.7


def test_infobatch_pruning_rate_over_epochs_and_custom_prune_ratio():
    teacher = observed(Teacher(10, strategy=InfoBatch(prune_ratio=0.3), warmup_epochs=0), torch.arange(10.0))
    frequency = inclusion_frequency(teacher, 1000)
    assert (frequency[:5] - 0.6).abs().max() < 0.07  # floor(0.7 * 5) = 3 of 5 kept each epoch
    assert torch.all(frequency[5:] == 1.0)
    assert teacher.select(0).weights.max().item() == pytest.approx(1 / 0.7)


def test_infobatch_stops_pruning_after_delta_of_training_and_keeps_unscored_examples():
    teacher = Teacher(12, strategy=InfoBatch(delta=0.875), epochs=16, warmup_epochs=1)
    teacher.observe(torch.arange(10), torch.arange(10.0))
    assert [teacher.plan.at(e).phase for e in range(16)] == ["warmup"] + ["subset"] * 13 + ["anneal"] * 2
    selection = teacher.select(5)
    assert {10, 11} <= set(selection.indices.tolist())
    assert len(selection) == 12 - 3
    final = teacher.select(14)
    assert final.is_full and final.weights is None
    assert torch.all(teacher.loss_weights(torch.arange(12)) == 1)


# --- importance ----------------------------------------------------------------------------


def test_importance_weights_are_one_over_n_q():
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0])
    teacher = observed(open_ended(4, ratio=1.0, strategy=Importance(uniform_mix=0.2)), scores)
    selection = teacher.select(0)
    q = 0.8 * scores / scores.sum() + 0.2 / 4
    assert torch.allclose(selection.weights, 1 / (4 * q[selection.indices]))
    assert not selection.is_full


def test_importance_weighted_mean_is_an_unbiased_estimate_of_the_full_mean():
    generator = torch.Generator().manual_seed(7)
    scores = torch.rand(30, generator=generator) * 5
    values = scores + torch.randn(30, generator=generator)  # per-example losses correlated with the scores
    teacher = observed(open_ended(30, ratio=0.2, strategy="importance"), scores)
    estimates = []
    for epoch in range(3000):
        selection = teacher.select(epoch)
        estimates.append((selection.weights * values[selection.indices]).mean())
    estimates = torch.stack(estimates)
    standard_error = estimates.std() / math.sqrt(len(estimates))
    assert abs(estimates.mean() - values.mean()) < 4 * standard_error


def test_importance_samples_proportionally_to_score():
    scores = torch.tensor([1.0, 1.0, 1.0, 7.0])
    teacher = observed(open_ended(4, ratio=1.0, strategy=Importance(uniform_mix=0.2)), scores)
    draws = torch.cat([teacher.select(e).indices for e in range(1000)])
    share = (draws == 3).float().mean().item()
    assert share == pytest.approx(0.8 * 0.7 + 0.05, abs=0.03)


def test_importance_gives_unscored_examples_the_largest_finite_score():
    teacher = open_ended(4, ratio=1.0, strategy=Importance(uniform_mix=0.2))
    teacher.observe(torch.arange(3), torch.tensor([1.0, 2.0, 3.0]))
    selection = teacher.select(0)
    q_unscored = 0.8 * 3.0 / 9.0 + 0.2 / 4
    weights = dict(zip(selection.indices.tolist(), selection.weights.tolist()))
    assert 3 not in weights or weights[3] == pytest.approx(1 / (4 * q_unscored))
    draws = torch.cat([teacher.select(e).indices for e in range(1000)])
    assert (draws == 3).float().mean().item() == pytest.approx(q_unscored, abs=0.03)


# --- schedules in the teacher --------------------------------------------------------------


def test_between_selection_points_the_subset_stays_and_full_epochs_return_everything():
    teacher = Teacher(20, epochs=12, cycles=3, interval=2, ratio=RatioSchedule(), **HELD)
    seen = []
    for epoch in range(12):
        selection = teacher.select(epoch)
        teacher.observe(selection.indices, fake_scores(epoch, selection.indices))
        seen.append(selection)
    assert seen[0].is_full and seen[0].indices.tolist() == list(range(20)) and seen[0].selected_at is None
    assert seen[2].indices.tolist() == seen[1].indices.tolist() and seen[2].selected_at == 1
    assert [len(s) for s in seen] == [20, 4, 4, 20, 20, 10, 10, 20, 20, 16, 16, 20]
    assert [s.is_full for s in seen] == [True, False, False, True, True, False, False, True, True, False, False, True]


def test_incremental_ratio_and_interval_schedules_drive_the_selection_sizes():
    teacher = Teacher(
        20,
        strategy="hard",
        epochs=10,
        cycles=2,
        ratio=RatioSchedule.incremental(0.2, 0.6),
        interval=IntervalSchedule.incremental(1, 3),
        **HELD,
    )
    observed(teacher, torch.arange(20.0))
    assert [len(teacher.select(e)) for e in range(10)] == [20, 4, 20, 20, 20, 20, 12, 12, 12, 20]
    assert teacher.select(7).indices.tolist() == list(range(8, 20))


def test_published_default_schedule_is_cosine_from_0_2_to_0_8_over_ten_cycles():
    teacher = Teacher(100, epochs=51, ratio=RatioSchedule(), interval=5, **HELD)
    sizes = [len(teacher.select(1 + 5 * cycle)) for cycle in range(10)]
    assert sizes == [math.floor(100 * RatioSchedule().value(c / 9) + 1e-9) for c in range(10)]
    assert sizes[0] == 20 and sizes[-1] == 80


def test_published_recipes():
    complex_ = Teacher.published(100, epochs=51)
    assert (complex_.strategy.name, complex_.refresh) == ("hard", "cycle")
    assert complex_.plan.cycles == 10 and not complex_.plan.reselect_each_epoch
    assert Teacher.published(100, epochs=51, strategy="soft").plan.reselect_each_epoch
    simple = Teacher.published(100, epochs=4, recipe="simple")
    assert [simple.plan.at(e).selection_epoch for e in range(4)] == [None, 1, 1, 1]
    assert simple.plan.at(3).ratio == 0.7
    with pytest.raises(ValueError, match="strategies hard, soft and random"):
        Teacher.published(10, epochs=5, strategy="infobatch")
    with pytest.raises(ValueError, match="recipe"):
        Teacher.published(10, epochs=5, recipe="other")


def test_the_documented_difference_from_the_published_loop_holds():
    """The published loop runs each cycle's full 5-epoch interval even in 3-epoch cycles (E = 40):
    51 passes; attent caps subset epochs at the cycle, so E epochs exactly. Digits: N = 1,437."""
    import attent.teacher as module

    n, epochs, cycles, interval = 1437, 40, 10, 5
    teacher = Teacher.published(n, epochs=epochs)
    ours = sum(teacher.planned_size(e) for e in range(epochs))
    sizes = [max(1, int(n * RatioSchedule().value(c / (cycles - 1)))) for c in range(cycles)]
    cycle = (epochs - 1) // cycles
    passes = 1 + cycles * max(interval, cycle)
    theirs = n + sum(interval * m + max(0, cycle - interval) * n for m in sizes)
    assert (ours, passes, theirs) == (29008, 51, 37337)
    for number in ("51 passes", "37,337 examples", "29,008 examples", "1,437"):
        assert number in " ".join(module.__doc__.split())


def test_new_scores_do_not_change_a_selection_until_the_next_selection_point():
    teacher = Teacher(10, strategy="hard", ratio=0.3, interval=3, warmup_epochs=0, reselect_each_epoch=False)
    teacher.observe(torch.arange(10), torch.arange(10.0))
    first = teacher.select(0).indices.tolist()
    teacher.observe(torch.arange(10), -torch.arange(10.0))
    assert teacher.select(1).indices.tolist() == first
    assert teacher.select(3).indices.tolist() == [0, 1, 2]


# --- refresh -------------------------------------------------------------------------------


def test_refresh_cycle_asks_for_every_example_at_selection_points_only():
    teacher = Teacher(8, epochs=7, cycles=2, interval=2, refresh="cycle", ratio=RatioSchedule(), **HELD)
    assert teacher.refresh_indices(0) is None  # warm-up
    assert teacher.refresh_indices(1).tolist() == list(range(8))
    teacher.select(1)
    assert teacher.refresh_indices(1) is None  # already selected
    assert teacher.refresh_indices(2) is None and teacher.refresh_indices(3) is None
    assert teacher.refresh_indices(4).tolist() == list(range(8))
    assert teacher.stats["refreshes"] == 2
    assert Teacher(8, epochs=7, refresh=None).refresh_indices(1) is None
    assert Teacher(8, epochs=7, strategy="random", refresh="cycle").refresh_indices(1) is None


def test_refresh_fraction_asks_for_the_stalest_examples_never_scored_first():
    teacher = Teacher(10, epochs=5, cycles=1, refresh=0.3)
    teacher.observe(torch.tensor([0, 1, 2, 3]), torch.ones(4), step=5)
    teacher.observe(torch.tensor([4, 5, 6, 7]), torch.ones(4), step=2)
    assert teacher.refresh_indices(1).tolist() == [4, 8, 9]
    teacher.observe(torch.tensor([8, 9]), torch.ones(2), step=9)
    assert teacher.refresh_indices(1).tolist() == [4, 5, 6]


# --- determinism and resume ----------------------------------------------------------------


def run(teacher: Teacher, epochs: range, shuffle_orders: list, selections: list) -> None:
    sampler = teacher.sampler(IndexedDataset(range(teacher.num_examples)))
    for epoch in epochs:
        fresh = teacher.refresh_indices(epoch)
        if fresh is not None:
            teacher.observe(fresh, fake_scores(epoch, fresh) + 0.5)
        sampler.set_epoch(epoch)
        order = list(sampler)
        shuffle_orders.append(order)
        selection = teacher.select(epoch)
        selections.append((selection.indices.tolist(), None if selection.weights is None else selection.weights.tolist()))
        for start in range(0, len(order), 8):
            batch = torch.tensor(sorted(set(order[start : start + 8])))
            teacher.observe(batch, fake_scores(epoch, batch))


STRATEGY_KWARGS = [
    dict(strategy="hard"),
    dict(strategy=Soft(temperature=0.5), refresh=0.25),
    dict(strategy="random"),
    dict(strategy="importance", refresh="cycle"),
    dict(strategy="infobatch"),
    dict(strategy="hard", refresh=0.25, reselect_each_epoch=True),
]


def strategy_id(kwargs: dict) -> str:
    name = getattr(kwargs["strategy"], "name", kwargs["strategy"])
    return name + ("-reselect" if kwargs.get("reselect_each_epoch") else "")


def assert_same_state(a: dict, b: dict, path: str = "state") -> None:
    """Every field of two state_dicts equal (tensors exactly, dtypes included)."""
    assert a.keys() == b.keys(), path
    for key in a:
        x, y = a[key], b[key]
        where = f"{path}[{key!r}]"
        if isinstance(x, dict):
            assert isinstance(y, dict), where
            assert_same_state(x, y, where)
        elif isinstance(x, torch.Tensor):
            assert isinstance(y, torch.Tensor) and x.dtype == y.dtype and x.shape == y.shape, where
            same = (x == y) | (x.isnan() & y.isnan()) if x.is_floating_point() else x == y  # NaN: never scored
            assert bool(same.all()), where
        else:
            assert x == y, where


@pytest.mark.parametrize("kwargs", STRATEGY_KWARGS, ids=strategy_id)
def test_same_calls_same_selections(kwargs):
    schedule = {} if kwargs["strategy"] == "infobatch" else dict(cycles=3, interval=3)
    results = []
    for _ in range(2):
        orders, selections = [], []
        run(Teacher(37, epochs=12, seed=5, **schedule, **kwargs), range(12), orders, selections)
        results.append((orders, selections))
    assert results[0] == results[1]


@pytest.mark.parametrize("kwargs", STRATEGY_KWARGS, ids=strategy_id)
def test_resumed_mid_cycle_selects_exactly_what_an_uninterrupted_run_selects(kwargs):
    schedule = {} if kwargs["strategy"] == "infobatch" else dict(cycles=3, interval=3)
    make = lambda: Teacher(37, epochs=12, seed=11, **schedule, **kwargs)  # noqa: E731
    uninterrupted = make()
    whole_orders, whole = [], []
    run(uninterrupted, range(12), whole_orders, whole)

    first = make()
    part_orders, part = [], []
    run(first, range(6), part_orders, part)  # stops after epoch 5: mid-cycle for the cycle layouts
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = make()
    resumed.load_state_dict(torch.load(buffer))
    run(resumed, range(6, 12), part_orders, part)

    assert resumed.plan.at(6).selection_epoch in (5, 6)  # epoch 6 continues the cycle begun at 5
    assert part == whole and part_orders == whole_orders
    assert resumed.stats == uninterrupted.stats
    assert_same_state(resumed.state_dict(), uninterrupted.state_dict())


def test_loss_weights_survive_a_resume():
    teacher = observed(Teacher(10, strategy="infobatch", warmup_epochs=0), torch.arange(10.0))
    teacher.select(0)
    resumed = Teacher(10, strategy="infobatch", warmup_epochs=0)
    resumed.load_state_dict(teacher.state_dict())
    assert torch.equal(resumed.loss_weights(torch.arange(10)), teacher.loss_weights(torch.arange(10)))
    assert resumed.stats == teacher.stats


# --- sampler and the three-line loop -------------------------------------------------------


def test_sampler_yields_the_selection_shuffled_and_advances_epochs_by_itself():
    teacher = observed(Teacher(12, ratio=0.5, interval=2, warmup_epochs=1), torch.arange(12.0))
    indexed = IndexedDataset(range(12))
    sampler = teacher.sampler(indexed)
    epoch0 = list(sampler)
    assert sorted(epoch0) == list(range(12)) and epoch0 != list(range(12))
    assert sampler.epoch == 1 and len(sampler) == 6
    assert sorted(sampler) == list(range(6, 12))
    assert list(teacher.sampler(indexed, shuffle=False)) == list(range(12))
    sampler.set_epoch(0)
    assert list(sampler) == epoch0


def test_plain_loop_adopts_the_teacher_in_three_lines():
    data = torch.arange(30.0)
    teacher = Teacher(30, epochs=6, cycles=1, ratio=0.5, interval=5, **HELD)
    indexed = IndexedDataset(data)
    loader = DataLoader(indexed, batch_size=4, sampler=teacher.sampler(indexed))
    trained = []
    for _epoch in range(6):
        count = 0
        for idx, x in loader:
            per_example_loss = (x - 10).abs()
            per_example_loss = per_example_loss * teacher.loss_weights(idx)
            teacher.observe(idx, per_example_loss.detach())
            count += len(idx)
        trained.append(count)
    assert trained == [30, 15, 15, 15, 15, 15]
    assert sorted(teacher.select(3).indices.tolist()) == sorted(torch.topk((data - 10).abs(), 15).indices.tolist())


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_examples=0), "num_examples must be a positive integer .*got 0"),
        (dict(ratio=0), r"ratio must be in \(0, 1\], got 0"),
        (dict(ratio=1.5), r"ratio must be in \(0, 1\], got 1.5"),
        (dict(ratio=-0.2), r"ratio must be in \(0, 1\], got -0.2"),
        (dict(ratio="half"), "ratio must be a number"),
        (dict(strategy="best"), "strategy must be one of"),
        (dict(refresh=0.0), r"refresh must be in \(0, 1\], got 0.0"),
        (dict(refresh="sometimes"), "refresh must be None, 'cycle' or a fraction"),
        (dict(interval=0), "interval must be an integer >= 1, got 0"),
        (dict(epochs=4, warmup_epochs=3, anneal_epochs=2), "warmup_epochs=3, anneal_epochs=2, epochs=4"),
        (dict(strategy="infobatch", ratio=0.5), r"\{'ratio': 0.5\} do not apply to strategy='infobatch'"),
        (dict(strategy="infobatch", cycles=0), r"\{'cycles': 0\} do not apply"),
        (dict(seed=-1), "seed must be an integer >= 0, got -1"),
    ],
)
def test_constructor_bad_input_names_the_argument(kwargs, match):
    kwargs = dict(num_examples=10, epochs=8) | kwargs
    with pytest.raises(ValueError, match=match):
        Teacher(kwargs.pop("num_examples"), **kwargs)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Soft(normalize="tanh"), "normalize must be 'softmax' or 'sigmoid'"),
        (lambda: Soft(temperature=0.0), r"temperature must be a number in \(0.0, inf\), got 0.0"),
        (lambda: InfoBatch(prune_ratio=1.0), r"prune_ratio must be a number in \[0.0, 1.0\), got 1.0"),
        (lambda: InfoBatch(delta=0.0), r"delta must be in \(0, 1\], got 0.0"),
        (lambda: Importance(uniform_mix=0.0), r"uniform_mix must be in \(0, 1\], got 0.0"),
        (lambda: Teacher(10, epochs=4, cycles=10, warmup_epochs=1), r"cycles=10 does not fit the teaching span of 3 epochs"),
    ],
)
def test_strategy_options_bad_input_names_the_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    "indices, scores, match",
    [
        (torch.tensor([0, 10]), torch.ones(2), r"indices must be in \[0, num_examples=10\), got \[10\]"),
        (torch.tensor([-1, 3]), torch.ones(2), r"got \[-1\]"),
        (torch.arange(2), ["high", "low"], r"scores must be a \(b,\) tensor or sequence of real numbers, got \['high'"),
        (torch.arange(2), torch.ones(2, dtype=torch.complex64), "scores must be real numbers, got dtype torch.complex64"),
        (["a", "b"], torch.ones(2), r"indices must be a \(b,\) tensor or sequence of integer example indices"),
        (torch.arange(4), torch.ones(4, 1), r"scores must have shape \(b,\), got \(4, 1\)"),
        (torch.arange(3), torch.ones(4), r"same shape \(b,\), got indices \(3,\) and scores \(4,\)"),
        (torch.arange(4).reshape(2, 2), torch.ones(4), r"indices must have shape \(b,\), got \(2, 2\)"),
        (torch.tensor([0.0, 1.0]), torch.ones(2), "integer example indices, got dtype torch.float32"),
    ],
)
def test_observe_bad_input_names_the_argument_and_shapes(indices, scores, match):
    teacher = Teacher(10, epochs=4)
    with pytest.raises(ValueError, match=match):
        teacher.observe(indices, scores)
    assert teacher.stats["observed"] == 0


def test_observe_rejects_a_negative_step():
    with pytest.raises(ValueError, match="step must be an integer >= 0, got -3"):
        Teacher(10, epochs=4).observe(torch.arange(2), torch.ones(2), step=-3)


def test_load_state_dict_from_a_dataset_of_another_length():
    state = Teacher(10, epochs=4).state_dict()
    with pytest.raises(ValueError, match="num_examples=10 but this teacher has num_examples=12: the dataset length changed"):
        Teacher(12, epochs=4).load_state_dict(state)
    with pytest.raises(ValueError, match="not a Teacher state_dict"):
        Teacher(10, epochs=4).load_state_dict({"scores": torch.ones(10)})


def _corrupt(state, path, value):
    state = {**state, "subset": None if state["subset"] is None else dict(state["subset"])}
    target = state
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return state


@pytest.mark.parametrize("path, value, match", [
    (("subset", "indices"), torch.tensor([0, 3, 10]), r"state_dict\['subset'\]\['indices'\] must be in \[0, num_examples=10\), got \[10\]"),
    (("subset", "indices"), torch.tensor([0.0, 3.0]), r"\['indices'\] must be a \(m,\) integer tensor"),
    (("scores",), torch.ones(10, dtype=torch.complex64), "must hold real floating-point scores"),
    (("score_steps",), torch.ones(10), "must hold integer steps >= -1, got dtype torch.float32"),
    (("observe_calls",), 2.5, r"state_dict\['observe_calls'\] must be an integer >= 0, got 2.5"),
    (("counters",), {"observed": 1}, r"state_dict\['counters'\] must have the keys"),
])
def test_load_state_dict_refuses_corrupt_fields_and_changes_nothing(path, value, match):
    source = observed(Teacher(10, ratio=0.5, interval=2, warmup_epochs=0), torch.arange(10.0))
    source.select(0)
    target = Teacher(10, ratio=0.5, interval=2, warmup_epochs=0)
    before = target.state_dict()
    with pytest.raises(ValueError, match=match):
        target.load_state_dict(_corrupt(source.state_dict(), path, value))
    assert_same_state(target.state_dict(), before)


def test_observe_keeps_scores_in_float64_and_averages_repeated_indices():
    teacher = Teacher(4, epochs=4)
    teacher.observe(torch.tensor([0, 1, 1, 2]), torch.tensor([1e300, 1.0, 1.0 + 1e-12, 3.0], dtype=torch.float64))
    assert teacher.scores.dtype == torch.float64
    assert teacher.scores[0].item() == 1e300 and teacher.scores[1].item() == 1.0 + 5e-13
    assert teacher.stats["nonfinite_scores"] == 0 and teacher.stats["observed"] == 3


def test_select_outside_the_run_and_loss_weights_out_of_range():
    teacher = Teacher(10, epochs=4)
    with pytest.raises(ValueError, match=r"epoch 4 \(0-based\) is past the teacher's plan of 4 epochs"):
        teacher.select(4)
    with pytest.raises(ValueError, match=r"indices must be in \[0, num_examples=10\), got \[12\]"):
        teacher.loss_weights(torch.tensor([1, 12]))


def test_inputs_are_never_modified_and_not_aliased():
    teacher = Teacher(10, epochs=4)
    indices = torch.tensor([3, 1, 2])
    scores = torch.tensor([0.5, math.nan, 2.0])
    teacher.observe(indices, scores)
    assert indices.tolist() == [3, 1, 2] and scores[0].item() == 0.5 and math.isnan(scores[1].item())
    scores[0] = 9.0
    assert teacher.state_dict()["scores"][3].item() == 0.5
    assert teacher.loss_weights(indices).tolist() == [1.0, 1.0, 1.0]


def test_observe_accepts_any_real_dtype_and_sequences_and_an_empty_batch():
    teacher = Teacher(6, epochs=4)
    teacher.observe([0, 1], [1, 2])
    teacher.observe(torch.tensor([2, 3], dtype=torch.int32), torch.tensor([1.0, 2.0], dtype=torch.bfloat16))
    teacher.observe(torch.empty(0, dtype=torch.int64), torch.empty(0))
    stats = teacher.stats
    assert stats["observed"] == 4 and stats["unscored"] == 2


def test_selection_is_a_small_record():
    selection = Selection(torch.arange(3), None, 0.3, False, 2)
    assert len(selection) == 3 and selection.selected_at == 2


def test_the_default_teacher_reselects_every_epoch_at_a_constant_share_from_epoch_zero():
    teacher = Teacher(100, epochs=8)
    plans = [teacher.plan.at(e) for e in range(8)]
    assert all(p.phase == "subset" and p.selection_epoch == p.epoch and p.ratio == 0.5 for p in plans)
    budgeted = Teacher(100, epochs=8, budget=0.25)
    assert [budgeted.planned_size(e) for e in range(8)] == [25] * 8


def test_small_pure_top_k_subsets_draw_the_study_warning():
    with pytest.warns(UserWarning, match=r"several epochs in a row on a pure top-k subset of 20%.*reselect_each_epoch"):
        Teacher(100, strategy="hard", epochs=51, ratio=RatioSchedule(), interval=5, **HELD)
    with pytest.warns(UserWarning, match=r"selects a pure top-k subset of 20% .*cannot be learned") as caught:
        Teacher(100, strategy="hard", epochs=51, ratio=RatioSchedule(), interval=5, reselect_each_epoch=True)
    assert "reselect_each_epoch" not in str(caught[0].message)
    with pytest.warns(UserWarning, match=r"selects a pure top-k subset of 2[56]% "):
        Teacher(100, strategy="hard", epochs=8, budget=0.25)  # the budget sets the share
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Teacher(100, strategy=Hard(random_share=0.3), epochs=51, ratio=RatioSchedule(), interval=5, **HELD)
        Teacher(100, strategy="soft", epochs=51, ratio=RatioSchedule(), interval=5, **HELD)
        Teacher(100, strategy="hard", epochs=51, ratio=0.7, interval=5, **HELD)
        Teacher(100, strategy="hard", epochs=8, budget=0.5)  # half the examples: not the harmful regime
        Teacher(100, strategy="hard", ratio=0.2)  # open-ended: no plan to read
        Teacher.published(100, epochs=51)  # the published recipe, asked for by name
        Teacher(100, epochs=51)  # the default: soft, re-selected every epoch
        Teacher(100, epochs=8, budget=0.25)


def test_the_default_strategy_is_soft_selection():
    teacher = Teacher(1000, epochs=4, seed=3)
    assert isinstance(teacher.strategy, Soft) and teacher.strategy == Soft()
    teacher.observe(torch.arange(1000), torch.linspace(0.0, 8.0, 1000))
    picked = teacher.select(0).indices
    assert len(picked) == 500 and len(set(picked.tolist())) == 500
    # drawn, not ranked: the higher scores are favoured, yet not the top half exactly
    assert picked.float().mean() > 600 and int((picked < 500).sum()) > 0


# --- several steps observed at once (the trainers' buffered scores) ----------------------------


def test_observe_with_a_step_per_score_keeps_each_examples_mean_at_its_latest_step():
    teacher = Teacher(6, epochs=4)
    teacher.observe(torch.tensor([3, 1, 3, 3, 1, 5]), torch.tensor([1.0, 2.0, 5.0, 7.0, 4.0, 8.0]),
                    step=torch.tensor([0, 0, 2, 2, 1, 4]))
    assert teacher.scores[[3, 1, 5]].tolist() == [6.0, 4.0, 8.0]
    assert teacher.score_steps.tolist() == [-1, 1, -1, 2, -1, 4]
    with pytest.raises(ValueError, match=r"step must be an int or hold one step per score, got shape \(2,\) for 3 scores"):
        teacher.observe(torch.arange(3), torch.ones(3), step=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"step must be non-negative, got \[-2\]"):
        teacher.observe(torch.arange(2), torch.ones(2), step=[1, -2])
    with pytest.raises(ValueError, match=r"step must be an int or a \(b,\) tensor of integer steps, got torch.float32"):
        teacher.observe(torch.arange(2), torch.ones(2), step=torch.ones(2))


@pytest.mark.parametrize("strategy", ["soft", "hard", "importance"])
def test_buffered_step_scores_leave_the_teacher_as_step_by_step_observing_does(strategy):
    """Steps observed through Teaching (kept, then flushed at the next epoch) against the same
    steps fed to a twin teacher one at a time: the same state, the same next selection. Repeats
    within a step (importance draws) and across steps included."""
    from attent.scores import Scorer
    from attent.teaching import Teaching

    generator = torch.Generator().manual_seed(5)
    buffered = Teacher(12, epochs=3, strategy=strategy, seed=1, when="always")
    direct = Teacher(12, epochs=3, strategy=strategy, seed=1)
    teaching = Teaching(buffered, Scorer("loss", "cross_entropy"), num_examples=12)
    for step in range(7):
        indices = torch.randint(0, 12, (5,), generator=generator)
        scores = torch.rand(5, generator=generator, dtype=torch.float64)
        teaching.observe(indices, scores, step=step)
        direct.observe(indices, scores, step=step)
    assert teaching.pending == 35 and buffered.stats["observed"] == 0
    begun = teaching.begin_epoch(1, step=7)  # flushes before it selects
    assert teaching.pending == 0
    assert torch.equal(buffered.scores, direct.scores) and torch.equal(buffered.score_steps, direct.score_steps)
    assert begun.order.tolist() == direct.epoch_order(1).tolist()


def test_teaching_observe_checks_shapes_at_once_and_keeps_nothing_without_a_teacher():
    from attent.scores import Scorer
    from attent.teaching import Teaching

    teaching = Teaching(Teacher(4, epochs=2, when="always"), Scorer("loss", "cross_entropy"), num_examples=4)
    with pytest.raises(ValueError, match=r"same shape \(b,\), got indices \(3,\) and scores \(2,\)"):
        teaching.observe(torch.arange(3), torch.ones(2), step=0)
    full = Teaching(None, Scorer("loss", "cross_entropy"), num_examples=4)
    full.observe(torch.arange(3), torch.ones(3), step=0)
    assert full.pending == 0
    full.flush()


# --- what a plain loop would otherwise get silently wrong ------------------------------------


def _pairs(n):
    g = torch.Generator().manual_seed(n)
    return TensorDataset(torch.randn(n, 3, generator=g), torch.randint(0, 2, (n,), generator=g))


@pytest.mark.parametrize("built_for, message", [
    (80, r"the loader's dataset has 100 examples but the teacher was built for num_examples=80: examples 80 to 99 would "
         r"never be trained; build it as Teacher\(len\(data\), ...\)"),
    (120, r"has 100 examples but the teacher was built for num_examples=120: the sampler would ask for examples 100 to "
          r"119, which do not exist"),
])
def test_the_sampler_refuses_a_dataset_of_another_size(built_for, message):
    with pytest.raises(ValueError, match=message):
        Teacher(built_for, epochs=2).sampler(IndexedDataset(_pairs(100)))


def test_the_sampler_refuses_a_dataset_without_indices_and_says_to_wrap_it():
    ds = _pairs(100)
    with pytest.raises(ValueError, match=r"must yield \(index, item\) pairs.*item 0 is a tuple starting with a Tensor\. "
                                         r"Wrap it: data = attent.IndexedDataset\(ds\)"):
        Teacher(100, epochs=2).sampler(ds)
    with pytest.raises(ValueError, match=r"item 0 is a tuple starting with a int"):  # pairs, but not each item's own index
        Teacher(100, epochs=2).sampler([(i + 1, i) for i in range(100)])
    with pytest.raises(ValueError, match=r"item 99 is a tuple starting with a int"):
        Teacher(100, epochs=2).sampler([(i, i) for i in range(99)] + [(0, 99)])
    assert len(Teacher(100, epochs=2).sampler([(torch.tensor(i), i) for i in range(100)])) == 50
    with pytest.warns(UserWarning, match=r"teacher.sampler\(\) without the loader's dataset cannot check"):
        Teacher(100, epochs=2).sampler()
    with pytest.raises(ValueError, match="data must be the map-style dataset the DataLoader reads"):
        Teacher(100, epochs=2).sampler(iter(range(100)))


def test_indices_that_are_a_batch_of_inputs_say_to_wrap_the_dataset():
    teacher = Teacher(100, epochs=2)
    x, _ = _pairs(100).tensors
    for bad in (x[:4], x[:4, 0], x[:4].long()):  # float (b, 3) inputs, float (b,), integer (b, 3)
        hint = r"A loader over the bare dataset yields \(x, y\), not \(index, \(x, y\)\): wrap it, data = attent.IndexedDataset\(ds\)"
        with pytest.raises(ValueError, match=hint):
            teacher.observe(bad, torch.ones(len(bad)))
        with pytest.raises(ValueError, match=hint):
            teacher.loss_weights(bad)


def test_a_loop_longer_than_the_plan_is_refused_and_an_open_ended_teacher_runs_on():
    data = IndexedDataset(_pairs(10))
    teacher = Teacher(10, ratio=0.5, epochs=2)
    loader = DataLoader(data, batch_size=4, sampler=teacher.sampler(data))
    assert [sum(len(idx) for idx, _ in loader) for _ in range(2)] == [5, 5]
    with pytest.raises(ValueError, match=r"the loop starts epoch 2 \(0-based\) but the teacher plans 2 epochs; build it with "
                                         r"epochs= the loop's length, or epochs=None for an open-ended teacher"):
        next(iter(loader))
    assert len(loader) == 0  # nothing left to train; only iterating past the plan is an error
    for call in (teacher.select, teacher.refresh_indices, teacher.planned_size, teacher.epoch_order):
        with pytest.raises(ValueError, match=r"epoch 2 \(0-based\) is past the teacher's plan of 2 epochs: build the teacher "
                                             r"with epochs= the loop's length, or epochs=None"):
            call(2)
    open_ended = Teacher(10, ratio=0.5)
    loader = DataLoader(data, batch_size=4, sampler=open_ended.sampler(data))
    assert [sum(len(idx) for idx, _ in loader) for _ in range(4)] == [5, 5, 5, 5]
