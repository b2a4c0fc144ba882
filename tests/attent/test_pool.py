"""Selection from a presampled pool (attent.PoolSelection, attent.pool.PoolTeaching): the candidate
and kept counts and the passes that spend a budget, by hand, at awkward sizes (nB not a multiple of
nb, a pool smaller than nB, a last partial chunk); the chosen examples against a loop over single
examples; the evidence rule's uniform fallback; bad input."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attent.pool import PoolSelection, PoolTeaching, take_examples
from attent.reference import Evidence
from attent.schedules import budget_sizes
from attent.scores import Scorer


class _Ref:
    """A stand-in reference: its losses and evidence."""

    def __init__(self, losses, selects=True):
        self.losses = losses
        self.evidence = Evidence(1.0, 0.5, 0.1, selects, "stand-in evidence")


@pytest.mark.parametrize("nb, keep, nB", [(3, 0.5, 6), (3, 0.3, 10), (3, 0.4, 8), (3, 1.0, 3), (1, 0.1, 10),
                                          (32, 0.25, 128), (5, 0.29, 18)])
def test_candidates_are_ceil_nb_over_keep(nb, keep, nB):
    assert PoolSelection(keep=keep).candidates(nb) == nB


def test_kept_from_full_and_short_chunks():
    pool = PoolSelection(keep=0.5)  # nb 3 -> nB 6
    assert [pool.kept(c, 3) for c in range(1, 7)] == [1, 1, 2, 2, 3, 3]  # ceil(c * 3 / 6), nb at nB
    eight = PoolSelection(keep=0.4)  # nb 3 -> nB 8 (not a multiple of nb)
    assert [eight.kept(c, 3) for c in range(1, 9)] == [1, 1, 2, 2, 2, 3, 3, 3]
    with pytest.raises(ValueError, match="a chunk holds 1 to nB = 6 candidates, got 7"):
        pool.kept(7, 3)


def test_pass_sizes_spend_exactly_the_budget_by_hand():
    pool = PoolSelection(keep=0.5)
    # N = 10, nb 3, nB 6: a pass is chunks 6 + 4 keeping 3 + 2 = 5; budget 1 of 2 epochs = 20 examples: 4 passes,
    # the last cut to the fewest candidates that keep its last 2: 3, not 4 (ceil(3 * 3 / 6) = 2)
    assert pool.pass_sizes(2, 10, 1.0, 3) == [10, 10, 10, 9]
    # budget 0.5: 10 examples: a pass (5), then 6 candidates (3) and the fewest that keep the last 2: 3 (ceil(1.5))
    assert pool.pass_sizes(2, 10, 0.5, 3) == [10, 9]
    # a pool smaller than nB: N = 5, nb 4, nB 8: each pass is one chunk of 5 keeping ceil(5 * 4 / 8) = 3;
    # 5 examples = 3, then 2 from ceil(c / 2) >= 2: c = 3
    assert pool.pass_sizes(1, 5, 1.0, 4) == [5, 3]
    for epochs, n, budget, nb, keep in [(3, 17, 0.37, 4, 0.3), (1, 7, 1.0, 3, 0.25), (5, 100, 0.25, 8, 0.1)]:
        selection = PoolSelection(keep=keep)
        sizes = selection.pass_sizes(epochs, n, budget, nb)
        total = selection.candidates(nb)
        trained = sum(selection.kept(min(total, size - start), nb) for size in sizes for start in range(0, size, total))
        assert trained == sum(budget_sizes(epochs, n, budget)) and all(0 < s <= n for s in sizes)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Dropout(0.5), nn.Linear(6, 3))  # candidates score in eval mode


def _teaching(keep=0.5, strategy="hard", *, n=10, nb=3, reference=None, when="always", epochs=2, budget=1.0):
    reference = reference if reference is not None else _Ref(torch.rand(n, generator=torch.Generator().manual_seed(1)))
    scorer = Scorer("learnability", "cross_entropy", reference=reference)
    return PoolTeaching(PoolSelection(keep=keep, strategy=strategy, when=when), scorer, num_examples=n, epochs=epochs,
                        budget=budget, batch_size=nb, seed=3, reference=reference)


def test_hard_choice_keeps_the_largest_learnability_against_a_single_example_loop():
    n, nb = 10, 3
    teaching = _teaching(n=n, nb=nb, keep=0.4)  # nB = 8
    model = _model()
    generator = torch.Generator().manual_seed(2)
    x, y = torch.randn(n, 4, generator=generator), torch.randint(0, 3, (n,), generator=generator)
    indices = torch.tensor([9, 4, 0, 7, 2, 5, 1, 8])
    model.train()
    kept, batch = teaching.choose(model, indices, (x[indices], y[indices]), step=0, device=torch.device("cpu"))
    assert model.training
    with torch.no_grad():
        model.eval()
        learnability = [float(F.cross_entropy(model(x[i:i + 1]), y[i:i + 1])) - float(teaching.scorer.reference_losses[i])
                        for i in indices.tolist()]
    best = sorted(range(8), key=lambda p: -learnability[p])[:nb]
    assert kept.tolist() == indices[sorted(best)].tolist()
    assert torch.equal(batch[0], x[kept]) and torch.equal(batch[1], y[kept])
    # a short last chunk of 2 candidates keeps ceil(2 * 3 / 8) = 1: the larger
    kept, _ = teaching.choose(model, indices[:2], (x[indices[:2]], y[indices[:2]]), step=1, device=torch.device("cpu"))
    assert kept.tolist() == [indices[0 if learnability[0] > learnability[1] else 1].item()]


def test_soft_and_random_choices_are_seeded_by_step_and_distinct():
    teaching = _teaching(strategy="soft", n=12, nb=4, keep=0.5)
    model = _model()
    x, y = torch.randn(12, 4), torch.randint(0, 3, (12,))
    indices = torch.arange(8)
    first, _ = teaching.choose(model, indices, (x[:8], y[:8]), step=5, device=torch.device("cpu"))
    again, _ = teaching.choose(model, indices, (x[:8], y[:8]), step=5, device=torch.device("cpu"))
    assert torch.equal(first, again) and first.numel() == 4 and first.unique().numel() == 4
    draws = {tuple(teaching.choose(model, indices, (x[:8], y[:8]), step=s, device=torch.device("cpu"))[0].tolist())
             for s in range(20)}
    assert len(draws) > 1


def test_mapping_batches_and_non_batch_values_are_taken_along_the_first_dimension():
    batch = {"input_ids": torch.arange(12).reshape(4, 3), "labels": torch.arange(4), "note": "kept"}
    taken = take_examples(batch, torch.tensor([3, 1]), 4)
    assert taken["input_ids"].tolist() == [[9, 10, 11], [3, 4, 5]] and taken["labels"].tolist() == [3, 1]
    assert taken["note"] == "kept"
    with pytest.raises(ValueError, match=r"a batch of 4 examples .* shape \(3, 4\)"):
        take_examples({"x": torch.zeros(3, 4)}, torch.tensor([0]), 4)


def test_epoch_records_count_trained_examples_and_candidates():
    teaching = _teaching(n=10, nb=3, keep=0.5, epochs=2, budget=0.5)  # passes [10, 9]
    first = teaching.begin_epoch(0, step=0)
    last = teaching.begin_epoch(1, step=2)
    assert teaching.passes == 2 and first.order.numel() == 10 and last.order.numel() == 9
    assert (first.record["selected"], first.record["candidates"], last.record["selected"]) == (5, 10, 5)
    assert last.record["ratio"] == 0.5 and first.record["pool"]["selects"] and first.record["pool"]["keep"] == 0.5
    assert teaching.planned_steps(teaching.passes, lambda examples: -(-examples // teaching.candidates_per_step)) == 4


def test_without_evidence_it_trains_uniformly_and_says_so():
    with pytest.warns(RuntimeWarning, match="trains uniformly .* stand-in evidence"):
        teaching = _teaching(reference=_Ref(torch.rand(10), selects=False), when="evidence", epochs=2, budget=0.5)
    assert not teaching.selects and teaching.candidates_per_step == 3 and teaching.full_sizes == [10]
    record = teaching.begin_epoch(0, step=0).record
    assert record["candidates"] == 0 and record["selected"] == 10 and record["pool"]["reason"] == "stand-in evidence"
    loss_scorer = Scorer("loss", "cross_entropy")
    with pytest.warns(RuntimeWarning, match="no reference model with evidence"):
        plain = PoolTeaching(PoolSelection(), loss_scorer, num_examples=10, epochs=1, budget=1.0, batch_size=2)
    assert not plain.selects
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert PoolTeaching(PoolSelection(when="always"), loss_scorer, num_examples=10, epochs=1, budget=1.0,
                            batch_size=2).selects


@pytest.mark.parametrize("kwargs, match", [
    (dict(keep=0.0), r"keep must be in \(0, 1\]"),
    (dict(keep=1.5), r"keep must be in \(0, 1\]"),
    (dict(strategy="importance"), "strategy must be one of .*'importance'"),
    (dict(strategy="infobatch"), "strategy must be one of"),
    (dict(strategy="best"), "strategy must be one of"),
    (dict(when="sometimes"), "when must be one of \\('evidence', 'always'\\)"),
])
def test_bad_options_name_themselves(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PoolSelection(**kwargs)


def test_bad_protocol_arguments():
    with pytest.raises(ValueError, match="score must be one of .*got 'gradnorm'"):
        PoolTeaching(PoolSelection(), Scorer("gradnorm", "cross_entropy"), num_examples=4, epochs=1, budget=1.0, batch_size=2)
    with pytest.raises(TypeError, match="pool must be an attent.PoolSelection"):
        PoolTeaching(0.5, Scorer("loss"), num_examples=4, epochs=1, budget=1.0, batch_size=2)
    with pytest.raises(ValueError, match="batch_size must be"):
        PoolSelection().candidates(0)
