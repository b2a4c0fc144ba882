"""fit with pool= (selection from a presampled pool): the examples trained, the final parameters
and the counted cost against a hand-written loop (passes over seeded permutations, chunks of nB
candidates scored by learnability in eval mode, the top nb trained by SGD), at awkward sizes (nB
not a multiple of nb, a pool smaller than nB, short last chunks); the uniform fallback equals
full data's shortened schedule; bad combinations are refused."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from attent import PoolSelection, Reference, fit
from attent.reference import Evidence


class _Ref:
    def __init__(self, losses, selects=True):
        self.losses = losses
        self.evidence = Evidence(1.0, 0.5, 0.1, selects, "stand-in evidence")


def _problem(n, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=generator)
    y = torch.randint(0, 3, (n,), generator=generator)
    return TensorDataset(x, y), _Ref(torch.rand(n, generator=generator) * 2)


def _model():
    torch.manual_seed(7)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Dropout(0.3), nn.Linear(5, 3))


def _oracle(data, reference, *, nb, nB, sizes, lr, seed, draw=None, reference_of=None):
    """The pooled loop by hand: returns the model, the indices trained per step and the candidates.
    ``draw(i)``: example i's input as the loader draws it (default: the stored one);
    ``reference_of(i, x_i)``: its reference loss on that draw (default: the table's)."""
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    x, y = data.tensors
    draw = draw or x.__getitem__
    reference_of = reference_of or (lambda i, _: float(reference.losses[i]))
    n = len(data)
    trained, candidates = [], 0
    torch.manual_seed(seed)  # fit seeds the global RNG at its start (dropout in training steps)
    for p, size in enumerate(sizes):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + p))[:size]
        for start in range(0, size, nB):
            chunk = order[start:start + nB]
            drawn = torch.stack([draw(int(i)) for i in chunk])
            keep = nb if chunk.numel() == nB else math.ceil(chunk.numel() * nb / nB)
            model.eval()
            with torch.no_grad():
                scores = [float(F.cross_entropy(model(drawn[j:j + 1]), y[i:i + 1])) - reference_of(int(i), drawn[j])
                          for j, i in enumerate(chunk)]
            model.train()
            best = sorted(sorted(range(chunk.numel()), key=lambda j: -scores[j])[:keep])
            kept = chunk[best]
            loss = F.cross_entropy(model(drawn[best]), y[kept])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            trained.append(kept.tolist())
            candidates += chunk.numel()
    return model, trained, candidates


@pytest.mark.parametrize("n, nb, keep, epochs, budget, sizes", [
    # nB 8: chunks 8 + 2 keep 3 + 1; 15 examples: three passes (12), then the fewest candidates that keep 3: 6
    (10, 3, 0.4, 2, 0.75, [10, 10, 10, 6]),
    (5, 4, 0.5, 1, 1.0, [5, 3]),  # nB 8 > N: a pass is one chunk of 5 keeping 3, then 3 candidates keep the last 2
])
def test_fit_trains_what_a_hand_written_pooled_loop_trains(n, nb, keep, epochs, budget, sizes):
    data, reference = _problem(n)
    nB = PoolSelection(keep=keep).candidates(nb)
    planned = []

    def schedule(optimizer, steps):
        planned.append(steps)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    model = _model()
    result = fit(model, data, loss="cross_entropy", optimizer=torch.optim.SGD(model.parameters(), lr=0.3), epochs=epochs,
                 budget=budget, batch_size=nb, score="learnability", reference=reference,
                 pool=PoolSelection(keep=keep), lr_scheduler=schedule, progress=False, seed=2)
    oracle, trained, candidates = _oracle(data, reference, nb=nb, nB=nB, sizes=sizes, lr=0.3, seed=2)
    for mine, theirs in zip(model.parameters(), oracle.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)
    steps = sum(math.ceil(size / nB) for size in sizes)
    assert result.steps == len(trained) == steps and planned == [steps]
    assert result.examples_seen == sum(map(len, trained)) == math.floor(budget * epochs * n)
    assert result.examples_scored == candidates == sum(sizes)
    assert result.epochs_completed == len(sizes) and result.selection_time > 0
    assert [s["candidates"] for s in result.selections] == sizes and all(s["pool"]["selects"] for s in result.selections)
    assert sum(s["selected"] for s in result.selections) == result.examples_seen


class _Augmented(TensorDataset):
    """Every read of example i draws a new view of it: its k-th read is shifted by sin((k + 1) * j + i)."""

    def __init__(self, x, y):
        super().__init__(x, y)
        self.reads = [0] * len(x)

    def view(self, i, k):
        return self.tensors[0][i] + 1.5 * torch.sin((k + 1) * torch.arange(4.0) + i)

    def __getitem__(self, i):
        self.reads[i] += 1
        return self.view(i, self.reads[i] - 1), self.tensors[1][i]


def test_a_per_draw_reference_scores_the_candidates_as_drawn_against_a_hand_written_loop():
    """Augmented data: each candidate's learnability is the learner's loss less the reference's
    loss on the same drawn view (the model of its cross-fitting fold), and the kept examples train
    on that view; the reference's forwards are counted."""
    # nB 8: 16 examples to train; passes of 11 candidates (chunks 8 + 3 keep 3 + 2), then 1 candidate keeps 1
    n, nb, keep, epochs, budget, sizes = 11, 3, 0.4, 2, 0.75, [11, 11, 11, 1]
    base, _ = _problem(n, seed=4)
    data = _Augmented(*base.tensors)
    reference = Reference.fit(lambda: nn.Linear(4, 3), data, loss="cross_entropy", holdout="cross-fit", max_epochs=3,
                              batch_size=4, per_draw=True)
    data.reads = [0] * n
    model = _model()
    result = fit(model, data, loss="cross_entropy", optimizer=torch.optim.SGD(model.parameters(), lr=0.3), epochs=epochs,
                 budget=budget, batch_size=nb, score="learnability", reference=reference,
                 pool=PoolSelection(keep=keep, when="always"), progress=False, seed=2,
                 lr_scheduler=lambda optimizer, steps: torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0))
    reads = [0] * n

    def draw(i):
        reads[i] += 1
        return data.view(i, reads[i] - 1)

    def reference_of(i, x_i):
        with torch.no_grad():
            model_i = reference.models[int(reference.fold[i])]
            return float(F.cross_entropy(model_i(x_i[None]), data.tensors[1][i:i + 1]))

    oracle, trained, candidates = _oracle(data, reference, nb=nb, nB=PoolSelection(keep=keep).candidates(nb),
                                          sizes=sizes, lr=0.3, seed=2, draw=draw, reference_of=reference_of)
    assert [s["candidates"] for s in result.selections] == sizes and result.examples_seen == sum(map(len, trained)) == 16
    assert data.reads == reads and result.examples_scored == candidates == sum(sizes)
    for mine, theirs in zip(model.parameters(), oracle.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)
    assert reference.drawn_examples == candidates and reference.draw_time > 0


def test_without_evidence_fit_runs_full_datas_shortened_schedule_and_says_so():
    data, reference = _problem(9)
    uniform = _Ref(reference.losses, selects=False)
    plain_model, pooled_model = _model(), _model()
    options = dict(loss="cross_entropy", epochs=3, budget=0.5, batch_size=2, progress=False, seed=1)
    plain = fit(plain_model, data, optimizer=torch.optim.SGD(plain_model.parameters(), lr=0.2), score="loss", **options)
    with pytest.warns(RuntimeWarning, match="trains uniformly .* stand-in evidence"):
        pooled = fit(pooled_model, data, optimizer=torch.optim.SGD(pooled_model.parameters(), lr=0.2), score="learnability",
                     reference=uniform, pool=PoolSelection(keep=0.25), **options)
    for mine, theirs in zip(pooled_model.parameters(), plain_model.parameters()):
        assert torch.equal(mine, theirs)
    assert (pooled.steps, pooled.examples_seen, pooled.examples_scored) == (plain.steps, plain.examples_seen, 0)
    assert pooled.selections[0]["pool"]["reason"] == "stand-in evidence" and not pooled.selections[0]["pool"]["selects"]


def test_bad_combinations_are_refused():
    data, reference = _problem(8)
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    base = dict(loss="cross_entropy", optimizer=optimizer, epochs=1, progress=False)
    from attent import Teacher

    with pytest.raises(ValueError, match="either teacher= .* or pool="):
        fit(model, data, teacher=Teacher(8, when="always", epochs=1), pool=PoolSelection(), score="learnability", reference=reference, **base)
    with pytest.raises(ValueError, match="pool= needs grad_accum=1"):
        fit(model, data, pool=PoolSelection(), grad_accum=2, score="learnability", reference=reference, **base)
    with pytest.raises(ValueError, match="reference holds 5 reference losses but train_data has 8 examples"):
        fit(model, data, pool=PoolSelection(), score="learnability", reference=_Ref(torch.ones(5)), **base)
    with pytest.raises(ValueError, match="'learnability' needs reference="):
        fit(model, data, pool=PoolSelection(), score="learnability", **base)
    with pytest.raises(ValueError, match="score must be one of .*got 'gradnorm'"):
        fit(model, data, pool=PoolSelection(when="always"), score="gradnorm", **base)
    with pytest.raises(TypeError, match="pool must be an attent.PoolSelection"):
        fit(model, data, pool=0.5, score="loss", **base)
