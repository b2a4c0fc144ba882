"""attent.Reference: the three ways it gets its data (a clean holdout, a split of the pool,
cross-fitting), each training example's reference loss against a loop over single examples with
the model that scored it, early stopping and the counted cost, the evidence rule by hand, and bad
input."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset, TensorDataset

from attent import Reference
from attent.reference import EVIDENCE_MARGIN, EVIDENCE_STDERRS, evidence_of


def _data(n, seed, features=3, classes=2):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=generator)
    return TensorDataset(x, (x[:, 0] > 0).long() if classes == 2 else torch.randint(0, classes, (n,), generator=generator))


def _loss_of(model, dataset, i):
    x, y = dataset[i]
    with torch.no_grad():
        return float(F.cross_entropy(model(x[None]), y[None]))


def _factory():
    return nn.Linear(3, 2)


def test_clean_holdout_scores_the_whole_pool_with_the_trained_model():
    pool, holdout = _data(23, 0), _data(50, 1)
    before = pool.tensors[0].clone()
    ref = Reference.fit(_factory, pool, loss="cross_entropy", holdout=holdout, max_epochs=4, patience=10, batch_size=16)
    assert ref.train is pool and torch.equal(ref.train_indices, torch.arange(23)) and ref.holdout_indices.numel() == 0
    assert len(ref.models) == 1 and not ref.models[0].training and torch.equal(ref.fold, torch.zeros(23, dtype=torch.int64))
    expected = torch.tensor([_loss_of(ref.models[0], pool, i) for i in range(23)])
    torch.testing.assert_close(ref.losses, expected, rtol=1e-5, atol=1e-6)
    # holdout of 50: 10 for validation, 40 trained in batches of 16 (3 steps an epoch), every epoch run (patience 10)
    epochs = len(ref.val_losses[0])
    assert epochs == 4
    cost = ref.cost
    assert (cost.train_steps, cost.train_examples, cost.val_examples, cost.scored_examples) == (12, 160, 40, 23)
    assert cost.train_time > 0 and cost.score_time > 0 and cost.time == cost.train_time + cost.score_time
    assert torch.equal(pool.tensors[0], before)


def test_a_fraction_of_the_pool_is_split_off_and_the_learner_trains_on_the_rest():
    pool = _data(40, 2)
    ref = Reference.fit(_factory, pool, loss="cross_entropy", holdout=0.15, max_epochs=3, batch_size=8)
    held, rest = ref.holdout_indices, ref.train_indices
    assert held.numel() == math.floor(0.15 * 40) == 6 and rest.numel() == 34
    assert sorted(held.tolist() + rest.tolist()) == list(range(40))
    assert isinstance(ref.train, Subset) and ref.train.indices == rest.tolist() and len(ref) == 34
    expected = torch.tensor([_loss_of(ref.models[0], ref.train, i) for i in range(34)])
    torch.testing.assert_close(ref.losses, expected, rtol=1e-5, atol=1e-6)
    again = Reference.fit(_factory, pool, loss="cross_entropy", holdout=0.15, max_epochs=3, batch_size=8)
    assert torch.equal(again.holdout_indices, held) and torch.equal(again.losses, ref.losses)  # seeded


def test_static_filter_keeps_the_lowest_reference_losses_of_the_learners_set_by_hand():
    pool = _data(40, 4)
    ref = Reference.fit(_factory, pool, loss="cross_entropy", holdout=0.15, max_epochs=2, batch_size=8)
    ref.losses[[3, 7, 20]] = ref.losses.min() - 1  # a three-way tie, kept in index order
    before = ref.losses.clone()
    for keep, count in [(0.5, 17), (0.1, 3), (0.06, 2), (0.001, 1), (1, 34)]:
        ranked = sorted(range(34), key=lambda i: (float(ref.losses[i]), i))[:count]
        kept = ref.filtered(keep)
        assert kept.dataset is ref.train and kept.indices == sorted(ranked) and len(kept) == count
    kept = ref.filtered(0.06)
    assert kept.indices == [3, 7]
    for position, i in enumerate(kept.indices):  # examples of the learner's set, not of the pool
        assert torch.equal(kept[position][0], pool[ref.train_indices[i].item()][0])
    assert torch.equal(ref.losses, before)
    for bad in (0, -0.5, 1.5, True, "half", float("nan")):
        with pytest.raises(ValueError, match="keep must be a number in \\(0, 1\\]"):
            ref.filtered(bad)


def test_cross_fitting_scores_each_half_with_the_model_trained_on_the_other():
    # two halves that disagree: in each half the label is a different function of the input, so a
    # model that saw an example's own half would fit it; the other half's model does not
    n = 41
    pool = _data(n, 3)
    ref = Reference.fit(_factory, pool, loss="cross_entropy", holdout="cross-fit", max_epochs=3, batch_size=8)
    assert ref.train is pool and len(ref.models) == 2 and ref.holdout_indices.numel() == n
    assert sorted(ref.fold.bincount().tolist()) == [n // 2, n - n // 2]
    expected = torch.tensor([_loss_of(ref.models[int(ref.fold[i])], pool, i) for i in range(n)])
    torch.testing.assert_close(ref.losses, expected, rtol=1e-5, atol=1e-6)
    other = torch.tensor([_loss_of(ref.models[1 - int(ref.fold[i])], pool, i) for i in range(n)])
    assert not torch.allclose(ref.losses, other)
    assert ref.cost.scored_examples == n and ref.cost.train_steps == sum(
        len(h) * math.ceil((size - max(1, math.floor(0.2 * size))) / 8)
        for h, size in zip(ref.val_losses, (n // 2, n - n // 2)))


def test_cross_fit_model_never_trains_on_the_examples_it_scores():
    # labels +1 on half A and their opposite on half B for the same inputs: a model trained on A is
    # confidently wrong on B, so every cross-fitted loss is high; scored by its own half's model it would be low
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(20, 3, generator=generator) * 3
    inputs = torch.cat([x, x])
    order = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    half_a = torch.zeros(40, dtype=torch.bool)
    half_a[torch.sort(order[:20]).values] = True
    labels = torch.where(half_a, (inputs[:, 0] > 0).long(), (inputs[:, 0] <= 0).long())
    pool = TensorDataset(inputs, labels)
    ref = Reference.fit(_factory, pool, loss="cross_entropy", holdout="cross-fit", max_epochs=40, patience=40,
                        batch_size=8, lr=0.1)
    own = torch.tensor([_loss_of(ref.models[1 - int(ref.fold[i])], pool, i) for i in range(40)])
    assert float(ref.losses.mean()) > float(own.mean()) + 0.5


def test_early_stopping_keeps_the_best_validation_loss_and_stops_after_patience():
    pool, holdout = _data(10, 4), _data(30, 5, classes=3)  # random labels: validation loss soon rises
    ref = Reference.fit(lambda: nn.Linear(3, 3), pool, loss="cross_entropy", holdout=holdout, max_epochs=60,
                        patience=2, lr=0.5, batch_size=4)
    history = ref.val_losses[0]
    best = min(range(len(history)), key=history.__getitem__)
    assert len(history) == best + 3 < 60  # two epochs without improvement after the best, then stop
    # the kept model is the best epoch's: its mean loss on the 6 validation examples (the first 6 of
    # the seeded permutation of the model's data) is the best one, not the last
    val = torch.randperm(30, generator=torch.Generator().manual_seed(0))[:6].tolist()
    kept = sum(_loss_of(ref.models[0], holdout, i) for i in val) / 6
    assert kept == pytest.approx(history[best], rel=1e-5) and history[-1] > history[best]
    assert ref.cost.train_steps == len(history) * math.ceil(24 / 4)


def test_mse_reference_losses_are_mean_squared_errors():
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(30, 4, generator=generator)
    pool = TensorDataset(x, x[:, :2] * 2.0)
    ref = Reference.fit(lambda: nn.Linear(4, 2), pool, loss="mse", holdout=0.2, max_epochs=5, batch_size=8)
    with torch.no_grad():
        expected = torch.stack([((ref.models[0](ref.train[i][0]) - ref.train[i][1]) ** 2).mean() for i in range(24)])
    torch.testing.assert_close(ref.losses, expected, rtol=1e-5, atol=1e-6)


def test_evidence_rule_by_hand():
    held = torch.tensor([1.0, 1.2, 0.8, 1.0])  # mean 1, sample variance 0.02667
    clean = torch.tensor([1.1, 0.9, 1.0, 1.0])  # mean 1.0: no gap
    assert not evidence_of(clean, held).selects
    noisy = torch.tensor([1.0, 1.0, 5.0, 1.0, 1.0, 5.0])  # mean 2.333, variance 4.2667
    evidence = evidence_of(noisy, held)
    stderr = math.sqrt(4.266666 / 6 + 0.0266666 / 4)
    assert evidence.stderr == pytest.approx(stderr, rel=1e-4)
    assert evidence.selects == (4 / 3 > max(EVIDENCE_STDERRS * stderr, EVIDENCE_MARGIN * 1.0))
    sharp = torch.tensor([2.0, 2.1, 1.9, 2.0])
    assert evidence_of(sharp, held).selects and "more than" in evidence_of(sharp, held).reason
    barely = held + EVIDENCE_MARGIN * 0.9  # a gap inside the relative margin, however tight the spread
    assert not evidence_of(barely.repeat(100), held.repeat(100)).selects
    with pytest.raises(ValueError, match="both sides"):
        evidence_of(torch.zeros(0), held)


@pytest.mark.parametrize("kwargs, match", [
    (dict(holdout="half"), "holdout must be a Dataset"),
    (dict(holdout=1.5), r"holdout must be a Dataset, a fraction in \(0, 1\)"),
    (dict(holdout=0.01), "the reference needs at least 2"),
    (dict(max_epochs=0), "max_epochs must be an integer >= 1"),
    (dict(val_fraction=1.0), r"val_fraction must be a number in \(0, 1\)"),
    (dict(lr=-1.0), "lr must be a positive number"),
    (dict(holdout=[1, 2, 3]), "holdout must be a Dataset"),
])
def test_bad_arguments_name_themselves(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Reference.fit(_factory, _data(20, 0), loss="cross_entropy", **kwargs)


def test_bad_pools_and_factories_are_refused():
    with pytest.raises(ValueError, match="pool must be a map-style dataset"):
        Reference.fit(_factory, [1, 2, 3].__iter__(), loss="cross_entropy")
    with pytest.raises(ValueError, match="cross-fitting needs a pool of at least 4"):
        Reference.fit(_factory, _data(3, 0), loss="cross_entropy", holdout="cross-fit")
    with pytest.raises(ValueError, match="model_factory must build an nn.Module with trainable parameters"):
        Reference.fit(lambda: nn.Identity(), _data(20, 0), loss="cross_entropy")


def _per_draw_reference(n=41):
    return Reference.fit(_factory, _data(n, 3), loss="cross_entropy", holdout="cross-fit", max_epochs=3, batch_size=8,
                         per_draw=True)


def _drawn_oracle(ref, x, y, indices):
    """Each example's loss under the model of its fold, on the drawn inputs given, one at a time."""
    with torch.no_grad():
        return torch.tensor([float(F.cross_entropy(ref.models[int(ref.fold[i])](x[j:j + 1]), y[j:j + 1]))
                             for j, i in enumerate(indices.tolist())])


def test_per_draw_losses_run_each_examples_fold_model_on_the_drawn_batch():
    ref = _per_draw_reference()
    table = ref.losses.clone()
    both = torch.tensor([int((ref.fold == 0).nonzero()[0]), int((ref.fold == 1).nonzero()[0])])
    one_fold = (ref.fold == 1).nonzero().reshape(-1)[:3]
    generator = torch.Generator().manual_seed(9)
    for indices in (torch.tensor([both[1], both[0], both[1], 40, 0]), one_fold, both[:1], torch.arange(41)):
        b = indices.numel()
        x, y = torch.randn(b, 3, generator=generator) * 2, torch.randint(0, 2, (b,), generator=generator)
        before = x.clone()
        drawn = ref.draw_losses(x, y, indices)
        assert drawn.dtype == torch.float32 and drawn.shape == (b,)
        torch.testing.assert_close(drawn, _drawn_oracle(ref, x, y, indices), rtol=1e-5, atol=1e-6)
        assert torch.equal(x, before)
    assert ref.drawn_examples == 5 + 3 + 1 + 41 and ref.draw_time > 0
    assert all(not m.training for m in ref.models) and torch.equal(ref.losses, table)
    # the drawn inputs, not the table: the pool's own inputs give the table's losses back
    torch.testing.assert_close(ref.draw_losses(*_data(41, 3).tensors, torch.arange(41)), table, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 41\).* \[0, 41\]"):
        ref.draw_losses(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), torch.tensor([0, 41]))
    x, y = torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)
    for indices, got in ((torch.tensor([0, 1, 2]), r"int64 and shape \(3,\)"),
                         (torch.tensor([True, False]), r"bool and shape \(2,\)"),
                         (torch.tensor([1.9, 0.0]), r"float32 and shape \(2,\)"),
                         (torch.tensor([[0], [1]]), r"int64 and shape \(2, 1\)")):
        with pytest.raises(ValueError, match=r"indices must be \(2,\) integer example indices.*" + got):
            ref.draw_losses(x, y, indices)
    with pytest.raises(ValueError, match="draw_losses needs a batch"):
        ref.draw_losses({"note": "no tensor"}, [1, 2], torch.tensor([0, 1]))


def test_per_draw_losses_run_each_fold_model_once_per_example_in_eval_mode_and_restore_its_mode():
    ref = Reference.fit(lambda: nn.Sequential(nn.Dropout(0.5), nn.Linear(3, 2)), _data(30, 4), loss="cross_entropy",
                        holdout="cross-fit", max_epochs=2, batch_size=8, per_draw=True)
    ref.models[0].train()
    ref.models[1][1].train()  # a submodule in train mode inside a model in eval mode stays so
    rows = []
    hooks = [model.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0])) for model in ref.models]
    oracle_models = [copy.deepcopy(model).eval() for model in ref.models]
    indices = torch.tensor([3, 17, 0, 29, 11, 8, 21])
    x, y = torch.randn(7, 3), torch.randint(0, 2, (7,))
    drawn = ref.draw_losses(x, y, indices)
    for hook in hooks:
        hook.remove()
    assert sorted(rows) == sorted(int((ref.fold[indices] == k).sum()) for k in (0, 1)) and sum(rows) == 7
    with torch.no_grad():
        oracle = torch.tensor([float(F.cross_entropy(oracle_models[int(ref.fold[i])](x[j:j + 1]), y[j:j + 1]))
                               for j, i in enumerate(indices.tolist())])
    torch.testing.assert_close(drawn, oracle, rtol=1e-5, atol=1e-6)
    assert ref.models[0].training and ref.models[0][0].training
    assert not ref.models[1].training and ref.models[1][1].training and not ref.models[1][0].training


def test_learnability_with_a_per_draw_reference_is_the_learner_loss_less_the_reference_on_the_same_draw():
    from attent import Scorer

    ref = _per_draw_reference()
    torch.manual_seed(1)
    learner = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    generator = torch.Generator().manual_seed(5)
    indices = torch.tensor([7, 40, 7, 2, 31, 19])  # both folds, an example drawn twice
    x, y = torch.randn(6, 3, generator=generator) * 2, torch.randint(0, 2, (6,), generator=generator)
    with torch.no_grad():
        losses = F.cross_entropy(learner(x), y, reduction="none")
    expected = losses - _drawn_oracle(ref, x, y, indices)
    scorer = Scorer("learnability", "cross_entropy", reference=ref)
    torch.testing.assert_close(scorer.score_batch(learner, x, y, indices=indices), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(scorer.step_scores(learner(x), y, losses, indices=indices, inputs=x), expected,
                               rtol=1e-5, atol=1e-6)
    assert ref.drawn_examples == 12
    with pytest.raises(ValueError, match="per-draw reference .* needs the batch's inputs= and targets="):
        scorer.step_scores(learner(x), y, losses, indices=indices)
    ref.per_draw = False  # the table: one draw's losses, not this one's
    table = Scorer("learnability", "cross_entropy", reference=ref).step_scores(learner(x), y, losses, indices=indices)
    torch.testing.assert_close(table, losses - ref.losses[indices])
    assert not torch.allclose(table, expected)


def test_per_draw_must_be_a_bool():
    with pytest.raises(ValueError, match="per_draw must be True or False, got 'yes'"):
        Reference.fit(_factory, _data(20, 0), loss="cross_entropy", per_draw="yes")


def test_a_per_draw_reference_in_fit_counts_each_drawn_example_once_inside_the_selection_time():
    """fit with a per-epoch teacher fed learnability and a scoring pass every cycle: the real
    per-draw reference runs on every trained and every re-scored example once, and its seconds
    lie inside the run's selection time."""
    from attent import Teacher, fit

    ref = _per_draw_reference(30)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
    teacher = Teacher(30, when="always", ratio=0.5, epochs=3, refresh="cycle", warmup_epochs=1, seed=0)
    result = fit(model, ref.train, loss="cross_entropy", optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                 teacher=teacher, score="learnability", reference=ref, epochs=3, batch_size=4, progress=False)
    assert result.examples_scored > 0 and result.examples_seen > 0
    assert ref.drawn_examples == result.examples_seen + result.examples_scored
    assert 0 < ref.draw_time <= result.selection_time
