"""Per-example scores (attent.scores) against F.cross_entropy, autograd and single-example loops."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from attent.scores import Objective, Scorer, forward_batch, gradnorm_scores, prediction_of, score_pass, split_batch


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _output_grad_norms(per_example_loss, pred):
    """||d l_i / d pred_i|| by one autograd call per example (the oracle)."""
    norms = []
    for i in range(pred.shape[0]):
        leaf = pred[i : i + 1].detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(per_example_loss(leaf, i), leaf)
        norms.append(g.norm())
    return torch.stack(norms)


def test_classification_losses_and_scores_match_cross_entropy():
    g = _gen(1)
    logits = torch.randn(5, 7, generator=g, dtype=torch.float64) * 3
    targets = torch.randint(0, 7, (5,), generator=g)
    objective = Objective.resolve("cross_entropy")
    expected = F.cross_entropy(logits, targets, reduction="none")
    torch.testing.assert_close(objective.losses(logits, targets), expected)
    torch.testing.assert_close(objective.output_scores(logits, targets, "loss"), expected)
    oracle = _output_grad_norms(lambda z, i: F.cross_entropy(z, targets[i : i + 1]), logits)
    torch.testing.assert_close(objective.output_scores(logits, targets, "fgrad"), oracle)


@pytest.mark.parametrize("name", ["cross_entropy", "lm"])
def test_sequence_scores_are_per_example_token_means(name):
    g = _gen(2)
    batch, length, vocab = 4, 9, 11
    logits = torch.randn(batch, length, vocab, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(0, vocab, (batch, length), generator=g)
    labels[1, 3:] = -100
    labels[2] = -100  # an example with no valid token scores 0
    objective = Objective.resolve(name)
    shift = 1 if name == "lm" else 0

    def example_loss(z, i):
        z = z[:, : length - shift].reshape(-1, vocab)
        y = labels[i, shift:]
        if (y != -100).sum() == 0:
            return (z * 0).sum()
        return F.cross_entropy(z, y, ignore_index=-100)

    expected = torch.stack([example_loss(logits[i : i + 1], i) for i in range(batch)])
    torch.testing.assert_close(objective.losses(logits, labels), expected)
    torch.testing.assert_close(objective.output_scores(logits, labels, "loss"), expected)
    oracle = _output_grad_norms(example_loss, logits)
    fgrad = objective.output_scores(logits, labels, "fgrad")
    torch.testing.assert_close(fgrad, oracle)
    assert fgrad[2] == 0 and objective.losses(logits, labels)[2] == 0


def test_mse_scores_match_autograd():
    g = _gen(3)
    pred = torch.randn(5, 3, 2, generator=g, dtype=torch.float64)
    target = torch.randn(5, 3, 2, generator=g, dtype=torch.float64)
    objective = Objective.resolve("mse")
    expected = ((pred - target) ** 2).reshape(5, -1).mean(dim=1)
    torch.testing.assert_close(objective.losses(pred, target), expected)
    torch.testing.assert_close(objective.output_scores(pred, target, "loss"), expected)
    oracle = _output_grad_norms(lambda p, i: F.mse_loss(p, target[i : i + 1]), pred)
    torch.testing.assert_close(objective.output_scores(pred, target, "fgrad"), oracle, rtol=1e-6, atol=1e-9)


def test_callable_loss_fgrad_is_the_gradient_wrt_its_own_output():
    g = _gen(4)
    pred = torch.randn(7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randn(7, 3, generator=g, dtype=torch.float64)

    def huber(p, y):
        return F.huber_loss(p, y, reduction="none", delta=0.5).sum(dim=1) ** 1.5

    objective = Objective.resolve(huber)
    torch.testing.assert_close(objective.losses(pred, target), huber(pred, target))
    oracle = _output_grad_norms(lambda p, i: huber(p, target[i : i + 1]).sum(), pred)
    torch.testing.assert_close(objective.output_scores(pred, target, "fgrad"), oracle)
    assert pred.grad is None and not objective.output_scores(pred, target, "fgrad").requires_grad


def test_bad_input_names_the_argument():
    objective = Objective.resolve("cross_entropy")
    with pytest.raises(ValueError, match="integer class-id targets"):
        objective.losses(torch.randn(3, 4), torch.randn(3))
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(5,\)"):
        objective.losses(torch.randn(3, 4), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="loss='lm'"):
        Objective.resolve("lm").losses(torch.randn(3, 4), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="prediction's shape"):
        Objective.resolve("mse").losses(torch.randn(3, 2), torch.randn(3))
    with pytest.raises(ValueError, match="loss must be one of"):
        Objective.resolve("hinge")
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        Objective.resolve(lambda p, y: p.sum()).losses(torch.randn(3, 2), torch.randn(3, 2))
    with pytest.raises(ValueError, match="needs the probe"):
        objective.output_scores(torch.randn(3, 4), torch.zeros(3, dtype=torch.long), "gradnorm")


def test_batch_conventions():
    x, y = torch.randn(2, 3), torch.tensor([0, 1])
    assert split_batch((x, y)) == (x, y)
    inputs, targets = split_batch({"input_ids": x, "labels": y})
    assert set(inputs) == {"input_ids"} and targets is y
    with pytest.raises(ValueError, match="label_key='target'"):
        split_batch({"input_ids": x}, label_key="target")
    with pytest.raises(ValueError, match="pair or a mapping"):
        split_batch((x, y, y))

    class Output:
        logits = x

    assert prediction_of(Output()) is x and prediction_of({"logits": x}) is x and prediction_of((x, y)) is x
    with pytest.raises(ValueError, match="cannot find the prediction"):
        prediction_of("text")


class _Tiny(nn.Module):
    """A model with dropout, so that eval mode matters for the oracle."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Dropout(0.5), nn.Linear(6, 3))

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize("kind", ["loss", "fgrad"])
def test_score_pass_matches_single_example_forwards(kind):
    torch.manual_seed(0)
    model = _Tiny().double()
    data = torch.utils.data.TensorDataset(torch.randn(13, 5, dtype=torch.float64), torch.randint(0, 3, (13,)))
    indices = torch.tensor([12, 0, 7, 3, 3, 9, 1])
    model.train()
    scores = score_pass(model, data, kind, loss="cross_entropy", indices=indices, batch_size=3)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    expected = []
    for i in indices.tolist():
        x, y = data[i]
        z = model(x[None])
        if kind == "loss":
            expected.append(F.cross_entropy(z, y[None]).detach())
        else:
            expected.append(_output_grad_norms(lambda p, _, y=y: F.cross_entropy(p, y[None]), z)[0])
    torch.testing.assert_close(scores, torch.stack(expected).float(), rtol=1e-5, atol=1e-7)


class _FrozenNorm(nn.Module):
    """A model with dropout and a BatchNorm the user keeps in eval mode while the rest trains."""

    def __init__(self):
        super().__init__()
        self.norm, self.drop, self.out = nn.BatchNorm1d(5), nn.Dropout(0.5), nn.Linear(5, 3)

    def forward(self, x):
        return self.out(self.drop(self.norm(x)))


class _KeepsNormFrozen(_FrozenNorm):
    """The same, freezing its norm in an override of ``train`` (the overrides must still run)."""

    calls: list

    def train(self, mode=True):
        self.__dict__.setdefault("calls", []).append(mode)
        super().train(mode)
        self.norm.eval()
        return self


@pytest.mark.parametrize("model_class", [_FrozenNorm, _KeepsNormFrozen])
def test_eval_mode_runs_everything_in_eval_and_restores_each_modules_own_mode(model_class):
    from attent.scores import eval_mode

    torch.manual_seed(3)
    model = model_class().train()
    model.norm.eval()
    stats = model.norm.running_mean.clone()
    modes = {name: m.training for name, m in model.named_modules()}
    assert modes[""] and not modes["norm"] and modes["drop"]
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert {name: m.training for name, m in model.named_modules()} == modes
    if model_class is _KeepsNormFrozen:
        assert model.calls[-2:] == [False, True]
    data = torch.utils.data.TensorDataset(torch.randn(9, 5), torch.randint(0, 3, (9,)))
    first = score_pass(model, data, "loss", loss="cross_entropy", batch_size=4)
    assert {name: m.training for name, m in model.named_modules()} == modes  # the frozen norm stays frozen
    torch.testing.assert_close(score_pass(model, data, "loss", loss="cross_entropy", batch_size=4), first)  # no dropout
    assert torch.equal(model.norm.running_mean, stats)
    model.eval()
    with eval_mode(model):
        pass
    assert not any(m.training for m in model.modules())


def test_score_pass_gradnorm_matches_per_example_parameter_gradients():
    pytest.importorskip("attent.probe")
    torch.manual_seed(1)
    model = _Tiny().double()
    data = torch.utils.data.TensorDataset(torch.randn(11, 5, dtype=torch.float64), torch.randint(0, 3, (11,)))
    scores = score_pass(model, data, "gradnorm", loss="cross_entropy", batch_size=4)
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    params = {k: v.detach() for k, v in model.named_parameters()}

    def example_loss(p, x, y):
        return F.cross_entropy(functional_call(model, p, (x[None],)), y[None])

    x, y = data.tensors
    grads = vmap(grad(example_loss), in_dims=(None, 0, 0))(params, x, y)
    expected = sum(g.reshape(11, -1).square().sum(dim=1) for g in grads.values()).sqrt()
    torch.testing.assert_close(scores, expected.float(), rtol=1e-4, atol=1e-7)


def test_score_pass_rejects_out_of_range_indices():
    data = torch.utils.data.TensorDataset(torch.randn(4, 5), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 4\)"):
        score_pass(_Tiny(), data, "loss", loss="cross_entropy", indices=[0, 4])
    with pytest.raises(ValueError, match="score kind"):
        score_pass(_Tiny(), data, "entropy", loss="cross_entropy")


def test_forward_batch_passes_mappings_as_keywords():
    class Keyword(nn.Module):
        def forward(self, input_ids, scale):
            return {"logits": input_ids * scale}

    x = torch.randn(2, 3)
    torch.testing.assert_close(forward_batch(Keyword(), {"input_ids": x, "scale": 2.0}), 2 * x)


def test_scorer_refuses_gradnorm_without_its_probe_and_bad_kinds():
    with pytest.raises(ValueError, match="score kind must be one of"):
        Scorer("margin")
    scorer = Scorer("gradnorm", "cross_entropy")
    logits = torch.randn(3, 4, requires_grad=True)
    with pytest.raises(ValueError, match="gradnorm step scores need norms_sq"):
        scorer.step_scores(logits, torch.zeros(3, dtype=torch.long), logits.sum(1))
    with pytest.raises(ValueError, match="needs the probe"):
        scorer.score_batch(torch.nn.Linear(4, 4), torch.randn(3, 4), torch.zeros(3, dtype=torch.long))


def test_gradnorm_scores_undo_the_loss_coefficients():
    norms_sq = torch.tensor([4.0, 9.0, 0.25], dtype=torch.float64)
    coefficients = torch.tensor([0.5, -3.0, 0.1])
    torch.testing.assert_close(gradnorm_scores(norms_sq, coefficients), torch.tensor([4.0, 1.0, 5.0]))


def _reference(n, seed=9):
    return torch.rand(n, generator=_gen(seed), dtype=torch.float64) * 3


def test_learnability_step_scores_are_the_losses_less_the_reference_at_each_index():
    g = _gen(10)
    n = 6  # T == B below on purpose: 6 examples, a batch of 6 in a scrambled order with a repeat
    reference = _reference(n)
    logits = torch.randn(6, 6, generator=g)
    targets = torch.randint(0, 6, (6,), generator=g)
    indices = torch.tensor([5, 0, 3, 3, 1, 2])
    scorer = Scorer("learnability", "cross_entropy", reference=reference)
    losses = F.cross_entropy(logits, targets, reduction="none")
    expected = torch.stack([losses[i] - float(reference[int(indices[i])]) for i in range(6)])
    torch.testing.assert_close(scorer.step_scores(logits, targets, losses, indices=indices), expected)
    mse = Scorer("learnability", "mse", reference=reference)
    pred, y = torch.randn(6, 1, generator=g), torch.randn(6, 1, generator=g)
    mse_losses = Objective.resolve("mse").losses(pred, y)
    expected = torch.stack([(pred[i, 0] - y[i, 0]) ** 2 - float(reference[int(indices[i])]) for i in range(6)])
    torch.testing.assert_close(mse.step_scores(pred, y, mse_losses, indices=indices), expected)


def test_learnability_scoring_pass_matches_single_example_losses_less_the_reference():
    g = _gen(11)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(7, 4, generator=g), torch.randint(0, 3, (7,), generator=g)
    reference = _reference(7)
    scorer = Scorer("learnability", "cross_entropy", reference=reference)
    order = torch.tensor([6, 2, 4, 0, 1, 5, 3])
    batches = [(order[:3], x[order[:3]], y[order[:3]]), (order[3:], x[order[3:]], y[order[3:]])]  # a last partial batch
    indices, scores = scorer.score_batches(model, batches)
    with torch.no_grad():
        oracle = torch.stack([F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]) - float(reference[i]) for i in order.tolist()])
    assert torch.equal(indices, order)
    torch.testing.assert_close(scores, oracle.float())
    fused = Scorer("learnability", "cross_entropy", reference=reference, head="2")
    _, fused_scores = fused.score_batches(model, batches)
    torch.testing.assert_close(fused_scores, oracle.float(), rtol=1e-5, atol=1e-5)


def test_learnability_refuses_what_it_cannot_score():
    reference = _reference(4).float()
    with pytest.raises(ValueError, match="'learnability' needs reference="):
        Scorer("learnability", "cross_entropy")
    with pytest.raises(ValueError, match="reference is for score kind 'learnability'"):
        Scorer("loss", "cross_entropy", reference=reference)
    with pytest.raises(ValueError, match=r"\(N,\) real reference losses"):
        Scorer("learnability", "cross_entropy", reference=torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"\(N,\) real reference losses"):
        Scorer("learnability", "cross_entropy", reference=torch.arange(3))
    with pytest.raises(ValueError, match="must be finite; 1 of 4"):
        Scorer("learnability", "cross_entropy", reference=torch.tensor([0.0, float("nan"), 1.0, 2.0]))
    scorer = Scorer("learnability", "cross_entropy", reference=reference)
    logits, targets = torch.randn(3, 2), torch.tensor([0, 1, 0])
    losses = F.cross_entropy(logits, targets, reduction="none")
    with pytest.raises(ValueError, match="needs the batch's example indices"):
        scorer.step_scores(logits, targets, losses)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 4\).*\[1, 4\]"):
        scorer.step_scores(logits, targets, losses, indices=torch.tensor([1, 2, 4]))
    with pytest.raises(ValueError, match=r"indices must be \(3,\) integer example indices"):
        scorer.step_scores(logits, targets, losses, indices=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"indices must be \(3,\) integer example indices"):
        scorer.step_scores(logits, targets, losses, indices=torch.tensor([1.0, 2.0, 0.0]))
    kept = reference.clone()
    scorer.reference_losses.add_(1.0)
    assert torch.equal(reference, kept)  # the scorer holds a copy
