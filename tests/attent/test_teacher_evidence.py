"""A per-epoch teacher selects only where its ``when`` allows: by default (``"evidence"``) only with a
reference that finds waste in the data. Without that evidence fit trains full data's shortened
schedule at the teacher's budget (bitwise the run without a teacher), warns, records why in every
epoch and never feeds the teacher; with it, or with ``when="always"``, the teacher selects."""
import math
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from attent import Teacher, Teaching, fit
from attent.reference import Evidence
from attent.scores import Scorer
from attent.teacher import selection_decision

N, EPOCHS = 14, 4


class _Ref:
    def __init__(self, losses, selects):
        self.losses = losses
        self.evidence = Evidence(1.0, 0.5, 0.1, selects, f"stand-in evidence ({'waste' if selects else 'none'})")


def _problem(seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(N, 4, generator=generator)
    y = torch.randint(0, 3, (N,), generator=generator)
    return TensorDataset(x, y), torch.rand(N, generator=generator)


def _fit(teacher=None, reference=None, score="loss", **extra):
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    data, _ = _problem()
    result = fit(model, data, loss="cross_entropy", optimizer=torch.optim.SGD(model.parameters(), lr=0.3),
                 teacher=teacher, reference=reference, score=score, epochs=EPOCHS, budget=0.5, batch_size=3,
                 progress=False, seed=2, **extra)
    return model, result


@pytest.mark.parametrize("reference", [None, "no waste"], ids=["no reference", "reference without evidence"])
def test_without_evidence_the_default_teacher_runs_full_datas_shortened_schedule_and_says_so(reference):
    _, losses = _problem()
    ref = None if reference is None else _Ref(losses, selects=False)
    score = "loss" if ref is None else "learnability"
    plain_model, plain = _fit(score=score, reference=ref)
    teacher = Teacher(N, epochs=EPOCHS, budget=0.5)
    with pytest.warns(RuntimeWarning, match="trains uniformly .*teacher unused"):
        model, result = _fit(teacher, reference=ref, score=score)
    for mine, theirs in zip(model.parameters(), plain_model.parameters()):
        assert torch.equal(mine, theirs)
    assert (result.steps, result.examples_seen, result.epochs_completed) == (plain.steps, plain.examples_seen,
                                                                             plain.epochs_completed)
    expected = selection_decision("evidence", ref, score)[1]
    assert result.selections and all(s["uniform"] == expected for s in result.selections)
    assert ("no reference model" if ref is None else "stand-in evidence (none)") in expected
    assert teacher.stats["observed"] == 0 and bool(teacher.scores.isnan().all())


def test_with_evidence_of_waste_the_default_teacher_selects_by_learnability():
    _, losses = _problem()
    teacher = Teacher(N, epochs=EPOCHS, budget=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        _, result = _fit(teacher, reference=_Ref(losses, selects=True), score="learnability")
    assert all("uniform" not in s for s in result.selections)
    assert any(s["selected"] < N for s in result.selections)
    assert teacher.stats["observed"] > 0


def test_when_always_selects_without_a_reference():
    teacher = Teacher(N, epochs=EPOCHS, budget=0.5, when="always")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        _, result = _fit(teacher)
    assert all("uniform" not in s for s in result.selections) and any(s["selected"] < N for s in result.selections)


def test_the_protocol_decides_once_and_plans_the_uniform_epochs():
    scorer = Scorer("loss", "cross_entropy")
    with pytest.warns(RuntimeWarning, match="trains uniformly"):
        teaching = Teaching(Teacher(N, epochs=EPOCHS, budget=0.5), scorer, num_examples=N)
    assert not teaching.selects and teaching.teacher is None and not teaching.observes
    assert teaching.full_sizes == [N, N]  # 0.5 of 4 epochs: two whole ones
    assert teaching.passes == 2 and teaching.planned_sizes(2) == [N, N]
    with pytest.raises(ValueError, match="teacher plans 4 epochs but the run is asked for 3"):
        teaching.check_epochs(3)
    with pytest.warns(RuntimeWarning, match="trains uniformly"):
        open_ended = Teaching(Teacher(N, ratio=0.5), scorer, num_examples=N)
    assert open_ended.full_sizes is None and open_ended.passes is None and open_ended.planned_sizes(3) == [N, N, N]
    selecting = Teaching(Teacher(N, epochs=EPOCHS, budget=0.5, when="always"), scorer, num_examples=N)
    assert selecting.selects and selecting.reason == "when='always'" and selecting.passes == EPOCHS


def test_when_must_be_known():
    with pytest.raises(ValueError, match="when must be one of \\('evidence', 'always'\\), got 'sometimes'"):
        Teacher(N, epochs=EPOCHS, when="sometimes")


def _top(values, m):
    return torch.sort(torch.topk(values, m).indices).values


def test_learnability_ranks_examples_the_learner_has_not_scored_by_a_prior_from_the_reference():
    """An unseen example's learnability is the learner's typical loss (the mean of its held losses)
    less the example's reference loss: before any score the hard teacher keeps the lowest reference
    losses (the static filter's ranking), later unseen and seen examples compete on that footing."""
    generator = torch.Generator().manual_seed(3)
    reference = torch.rand(N, generator=generator) * 3
    teaching = Teaching(Teacher(N, strategy="hard", ratio=0.5, when="always"),
                        Scorer("learnability", "cross_entropy", reference=reference), num_examples=N)
    m = N // 2
    first = teaching.begin_epoch(0, step=0)
    assert torch.equal(torch.sort(first.order).values, _top(-reference.double(), m))
    seen = torch.tensor([0, 3, 4, 9, 13])
    learner = torch.tensor([2.5, 0.1, 3.0, 1.2, 0.4], dtype=torch.float64)
    teaching.observe(seen, learner - reference[seen].double(), step=4)
    second = teaching.begin_epoch(1, step=5)
    values = learner.mean() - reference.double()
    values[seen] = learner - reference[seen].double()
    expected = _top(values, m)
    without_typical = values.clone()
    without_typical[~torch.isin(torch.arange(N), seen)] -= learner.mean()
    assert not torch.equal(expected, _top(without_typical, m))  # the typical loss decides this selection
    assert torch.equal(torch.sort(second.order).values, expected)


def test_a_prior_scores_only_the_unscored_and_nan_keeps_them_maximally_informative():
    teacher = Teacher(6, strategy="hard", ratio=0.5, when="always")
    teacher.observe(torch.tensor([0, 1, 2]), torch.tensor([5.0, -1.0, 0.0]), step=0)
    prior = torch.tensor([-9.0, 9.0, 9.0, 1.0, math.nan, -2.0])
    assert teacher.select(0, prior=prior).indices.tolist() == [0, 3, 4]  # held 5 beats prior 9; NaN taken first
    assert Teacher(6, strategy="hard", ratio=0.5, when="always").select(0).indices.numel() == 3
    with pytest.raises(ValueError, match=r"prior must hold one score per example, shape \(6,\), got \(5,\)"):
        Teacher(6, strategy="hard", ratio=0.5, when="always").select(0, prior=torch.zeros(5))


def test_other_scores_keep_unseen_examples_maximally_informative():
    teaching = Teaching(Teacher(N, strategy="hard", ratio=0.5, when="always"), Scorer("loss", "cross_entropy"),
                        num_examples=N)
    teaching.begin_epoch(0, step=0)
    seen = torch.arange(9)
    teaching.observe(seen, torch.linspace(5.0, 9.0, 9), step=1)
    chosen = torch.sort(teaching.begin_epoch(1, step=2).order).values
    assert set(range(9, N)) <= set(chosen.tolist()) and set(chosen.tolist()) - set(range(9, N)) == {7, 8}


def test_a_plain_loops_sampler_given_the_reference_ranks_unseen_examples_by_the_same_prior():
    """teacher.sampler(data, reference=): the loader's length (asked first, as a DataLoader does)
    and its order both come from the selection with the prior; the next epoch's after observing
    learnability scores is the hand-computed one; a reference of the wrong length is refused."""
    from torch.utils.data import DataLoader

    from attent import IndexedDataset
    from attent.teacher import learnability_prior

    generator = torch.Generator().manual_seed(4)
    reference = torch.rand(N, generator=generator) * 3
    data = IndexedDataset(TensorDataset(torch.randn(N, 4, generator=generator), torch.zeros(N, dtype=torch.long)))
    teacher = Teacher(N, strategy="hard", ratio=0.5, when="always", epochs=2)
    sampler = teacher.sampler(data, reference=reference)
    loader = DataLoader(data, batch_size=3, sampler=sampler)
    assert len(sampler) == N // 2
    first = torch.cat([idx for idx, _ in loader])
    assert torch.equal(torch.sort(first).values, _top(-reference.double(), N // 2))
    learner = torch.linspace(0.2, 2.8, first.numel(), dtype=torch.float64)
    teacher.observe(first, learner - reference[first].double(), step=0)
    values = learnability_prior(teacher, reference)
    torch.testing.assert_close(values, learner.mean() - reference.double())
    values[first] = learner - reference[first].double()
    second = torch.cat([idx for idx, _ in loader])
    assert torch.equal(torch.sort(second).values, _top(values, N // 2))
    with pytest.raises(ValueError, match=rf"reference losses must hold one loss per example, \({N},\), got \(5,\)"):
        Teacher(N, when="always", epochs=2).sampler(data, reference=torch.zeros(5))
