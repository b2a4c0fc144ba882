"""The output head fused into scoring passes (Scorer(head=)): scores from the head's input and
weight through attent_kernels.linear_cross_entropy_scores, against the plain path (the full
logits, the head not swapped) and a per-example F.cross_entropy loop; models that change the
head's output fall back to the plain path's exact scores with one warning."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attent.scores as scores_module
from attent.scores import Scorer

IGNORE = -100


class TinyLM(nn.Module):
    """embedding -> tanh(linear) -> nn.Linear head; input ids (B,) or (B, T)."""

    def __init__(self, vocab, width=6, *, bias=True, tied=False, out_features=None, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, width)
        self.layer = nn.Linear(width, width)
        self.head = nn.Linear(width, out_features or vocab, bias=bias)
        if bias:
            nn.init.normal_(self.head.bias)  # a bias that matters
        if tied:
            self.head.weight = self.embed.weight
        self.seen = []  # (shape, dtype) of the logits each forward saw, placeholder or not

    def hidden(self, input_ids):
        return torch.tanh(self.layer(self.embed(input_ids)))

    def forward(self, input_ids):
        logits = self.head(self.hidden(input_ids))
        self.seen.append((logits.shape, logits.dtype))
        return logits


class Softcapped(TinyLM):
    def forward(self, input_ids):
        return 2.0 * torch.tanh(self.head(self.hidden(input_ids)) / 2.0)


class FloatCast(TinyLM):
    def forward(self, input_ids):
        return self.head(self.hidden(input_ids)).float()


class PaddedVocab(TinyLM):
    """The head has two padding classes more than the vocabulary; the model slices them off."""

    def __init__(self, vocab, width=6, **kwargs):
        super().__init__(vocab, width, out_features=vocab + 2, **kwargs)
        self.vocab = vocab

    def forward(self, input_ids):
        return self.head(self.hidden(input_ids))[..., : self.vocab]


class HeadTwice(TinyLM):
    """Runs the head on the first position too, and returns the second call's logits as they are."""

    def forward(self, input_ids):
        hidden = self.hidden(input_ids)
        self.first = self.head(hidden[:, :1])
        return self.head(hidden)


class HeadUnused(TinyLM):
    def forward(self, input_ids):
        return F.linear(self.hidden(input_ids), self.head.weight, self.head.bias)


class ScaledInPlace(TinyLM):
    def forward(self, input_ids):
        logits = self.head(self.hidden(input_ids))
        return logits.mul_(2.0)


class HiddenChangedAfter(TinyLM):
    """Modifies the head's input in place after the head ran (the logits are already formed)."""

    def forward(self, input_ids):
        hidden = self.hidden(input_ids)
        logits = self.head(hidden)
        hidden.mul_(3.0)
        return logits


def _batch(batch, length, vocab, *, name, seed=0):
    """Input ids and targets with ignored positions, example 0 carrying no valid target."""
    g = torch.Generator().manual_seed(seed)
    if name == "cross_entropy" and length is None:
        ids = torch.randint(0, vocab, (batch,), generator=g)
        targets = torch.randint(0, vocab, (batch,), generator=g)
        targets[0] = IGNORE
        return ids, targets
    ids = torch.randint(0, vocab, (batch, length), generator=g)
    targets = ids.clone() if name == "lm" else torch.randint(0, vocab, (batch, length), generator=g)
    targets[0] = IGNORE  # no valid token
    targets[1:, -1] = IGNORE
    if length > 2:
        targets[-1, 1] = IGNORE
    return ids, targets


def _brute(model, ids, targets, name, kind):
    """Per-example scores by a loop: F.cross_entropy in float64 on each example's logits, fgrad by
    autograd; 0 for an example with no valid target."""
    out = []
    with torch.no_grad():
        logits = model(ids)
    for i in range(ids.shape[0]):
        z, y = logits[i].double(), targets[i]
        if name == "lm":
            z, y = z[:-1], y[1:]
        z, y = z.reshape(-1, z.shape[-1]), y.reshape(-1)
        if not bool((y != IGNORE).any()):
            out.append(torch.zeros((), dtype=torch.float64))
            continue
        leaf = z.detach().requires_grad_(True)
        loss = F.cross_entropy(leaf, y, ignore_index=IGNORE)
        if kind == "loss":
            out.append(loss.detach())
        else:
            (grad,) = torch.autograd.grad(loss, leaf)
            out.append(grad.norm())
    return torch.stack(out).float()


class _Spy:
    """Counts calls of a function of attent.scores, passing them through."""

    def __init__(self, monkeypatch, name):
        self.calls = 0
        original = getattr(scores_module, name)

        def spy(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(scores_module, name, spy)


def _passes(model, batches, kind, name, *, head, autocast_context=None):
    """(fused scores, plain scores) of one scoring pass each; the fused pass must not warn."""
    context = {} if autocast_context is None else {"autocast_context": autocast_context}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, fused = Scorer(kind, name, ignore_index=IGNORE, head=head).score_batches(model, batches, **context)
    _, plain = Scorer(kind, name, ignore_index=IGNORE).score_batches(model, batches, **context)
    return fused, plain


def _two_batches(name, batch, length, vocab):
    first, second = _batch(batch, length, vocab, name=name, seed=1), _batch(batch, length, vocab, name=name, seed=2)
    return [(torch.arange(batch), *first), (torch.arange(batch, 2 * batch), *second)]


# (batch, length, vocab, width): V = T, V = B, width 1, a vocabulary of two reference tiles.
SHAPES = [(3, 5, 5, 6), (4, 6, 4, 6), (3, 4, 7, 1), (2, 3, 8195, 4)]


@pytest.mark.parametrize("shape", SHAPES, ids=["V=T", "V=B", "width1", "two-tiles"])
@pytest.mark.parametrize("name", ["lm", "cross_entropy"])
@pytest.mark.parametrize("kind", ["loss", "fgrad"])
@pytest.mark.parametrize("bias", [True, False])
def test_fused_scores_equal_the_logits_scores_and_a_per_example_loop(monkeypatch, shape, name, kind, bias):
    batch, length, vocab, width = shape
    model = TinyLM(vocab, width, bias=bias)
    batches = _two_batches(name, batch, length, vocab)
    fused_calls, plain_calls = _Spy(monkeypatch, "linear_cross_entropy_scores"), _Spy(monkeypatch, "cross_entropy_scores")
    fused, plain = _passes(model, batches, kind, name, head=model.head)
    assert fused_calls.calls == 2 and plain_calls.calls == 2  # the fused pass formed no logits' scores
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)
    brute = torch.cat([_brute(model, ids, targets, name, kind) for _, ids, targets in batches])
    torch.testing.assert_close(fused, brute, rtol=1e-5, atol=1e-6)
    assert fused[0] == 0 and fused[batch] == 0  # the examples with no valid target


@pytest.mark.parametrize("vocab", [1, 5])
@pytest.mark.parametrize("kind", ["loss", "fgrad"])
def test_class_id_targets_of_a_classifier_head(vocab, kind):
    """cross_entropy with hidden (B, d) and targets (B,): one example ignored; vocabulary 1 too."""
    model = TinyLM(vocab, 3)
    batches = [(torch.arange(4), *_batch(4, None, vocab, name="cross_entropy"))]
    fused, plain = _passes(model, batches, kind, "cross_entropy", head="head")
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused, _brute(model, *batches[0][1:], "cross_entropy", kind), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["loss", "fgrad"])
def test_a_head_tied_to_the_embedding(kind):
    model = TinyLM(9, 6, tied=True)
    assert model.head.weight is model.embed.weight
    batches = _two_batches("lm", 3, 7, 9)
    fused, plain = _passes(model, batches, kind, "lm", head=model.head)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused, torch.cat([_brute(model, i, t, "lm", kind) for _, i, t in batches]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["loss", "fgrad"])
def test_a_float64_model(kind):
    model = TinyLM(6, 5).double()
    batches = _two_batches("lm", 3, 6, 6)
    fused, plain = _passes(model, batches, kind, "lm", head=model.head)
    assert {dtype for _, dtype in model.seen} == {torch.float64}  # the placeholder had the logits' dtype
    brute = torch.cat([_brute(model, i, t, "lm", kind) for _, i, t in batches])
    torch.testing.assert_close(fused, brute, rtol=1e-6, atol=1e-7)  # float64 throughout, rounded to float32 once
    torch.testing.assert_close(plain, brute, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["loss", "fgrad"])
@pytest.mark.parametrize("name", ["lm", "cross_entropy"])
def test_under_cpu_bf16_autocast(kind, name):
    """Under autocast the placeholder has the bf16 logits' shape and dtype. The fused scores are the
    float32 scores of hidden (bf16, as the head receives it) times the float32 weight: exact
    against a float64 loop on those logits (rtol 1e-5). The plain path rounds the weight and the
    logits to bf16 (8 significant bits: each logit, here below 3 in size, moves by up to
    3 * 2^-9 < 6e-3, the loss by up to twice that), so it agrees within 1e-2 (observed: 1.2e-3)."""
    model = TinyLM(11, 8)
    batches = _two_batches(name, 3, 6, 11)
    bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    fused, plain = _passes(model, batches, kind, name, head=model.head, autocast_context=bf16)
    assert set(model.seen) == {(torch.Size([3, 6, 11]), torch.bfloat16)}  # placeholder and logits alike
    hidden = []
    hook = model.head.register_forward_hook(lambda module, args, output: hidden.append(args[0]))
    with torch.no_grad(), bf16():
        for _, ids, _ in batches:
            model(ids)
    hook.remove()
    assert all(h.dtype == torch.bfloat16 for h in hidden)

    class Exact(nn.Module):  # float64 logits of the bf16 hidden and the float32 head
        def forward(self, h):
            return F.linear(h.double(), model.head.weight.double(), model.head.bias.double())

    exact = torch.cat([_brute(Exact(), h, t, name, kind) for h, (_, _, t) in zip(hidden, batches)])
    torch.testing.assert_close(fused, exact, rtol=1e-5, atol=1e-6)
    assert max(abs(z) for h in hidden for z in Exact()(h).flatten().tolist()) < 3
    torch.testing.assert_close(fused, plain, rtol=0, atol=1e-2)


FALLBACKS = {
    "softcapped": (Softcapped, "not the head's output as it is"),
    "float-cast": (FloatCast, "not the head's output as it is"),
    "sliced": (PaddedVocab, "not the head's output as it is"),
    "head-twice": (HeadTwice, "the head ran 2 times"),
    "head-unused": (HeadUnused, "the head ran 0 times"),
    "scaled-in-place": (ScaledInPlace, "forward failed on the head's placeholder output"),
    "hidden-changed-after": (HiddenChangedAfter, "modified the head's output, input, weight or bias in place"),
}


@pytest.mark.parametrize("case", sorted(FALLBACKS))
@pytest.mark.parametrize("kind", ["loss", "fgrad"])
def test_a_model_that_changes_the_heads_output_falls_back_to_the_exact_plain_scores(case, kind):
    cls, reason = FALLBACKS[case]
    model = cls(7, 5, seed=3)
    batches = [(torch.arange(3 * b, 3 * b + 3), *_batch(3, 6, 7, name="lm", seed=b)) for b in range(3)]
    # FloatCast is a no-op on float32 logits (.float() returns them), so it runs under bf16 autocast.
    context = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if cls is FloatCast else None
    extra = {} if context is None else {"autocast_context": context}
    forwards = []
    model.register_forward_pre_hook(lambda module, args: forwards.append(1))
    scorer = Scorer(kind, "lm", head=model.head)
    with pytest.warns(RuntimeWarning, match="not fused") as caught:
        _, fused = scorer.score_batches(model, batches, **extra)
    assert len([w for w in caught if "not fused" in str(w.message)]) == 1
    assert reason in scorer.head_fallback and reason in str(caught[0].message)
    assert len(forwards) == len(batches) + 1  # the first batch reran, the later ones went straight to the logits
    _, plain = Scorer(kind, "lm").score_batches(model, batches, **extra)
    assert torch.equal(fused, plain)
    assert "forward" not in vars(model.head)


def test_the_heads_forward_is_restored_after_the_pass_and_after_an_error_and_grads_are_untouched():
    model = TinyLM(6, 4)
    ids, targets = _batch(2, 5, 6, name="lm")
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    grads = [p.grad.clone() for p in model.parameters()]
    before = model(ids).detach()
    scorer = Scorer("fgrad", "lm", head=model.head)
    scorer.score_batch(model, ids, targets)
    assert "forward" not in vars(model.head) and torch.equal(model(ids), before)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))

    class Failing(TinyLM):
        def forward(self, input_ids):
            self.head(self.hidden(input_ids))
            raise ValueError("the model's own error")

    failing = Failing(6, 4)
    with pytest.raises(ValueError, match="the model's own error"):
        Scorer("loss", "lm", head=failing.head).score_batch(failing, ids, targets)
    assert "forward" not in vars(failing.head)
    assert torch.equal(failing.head(failing.hidden(ids)), F.linear(failing.hidden(ids), failing.head.weight, failing.head.bias))


@pytest.mark.parametrize("kind", ["loss", "fgrad"])
def test_a_forward_set_on_the_head_after_the_scorer_was_built_falls_back_and_stays(kind):
    model = TinyLM(7, 5, seed=4)
    ids, targets = _batch(3, 6, 7, name="lm")
    scorer = Scorer(kind, "lm", head=model.head)

    def tripled(hidden):
        return nn.Linear.forward(model.head, hidden) * 3

    model.head.forward = tripled  # as a wrapper's hook or another probe would set it
    with pytest.warns(RuntimeWarning, match="no longer runs nn.Linear's forward"):
        fused = scorer.score_batch(model, ids, targets)
    assert vars(model.head)["forward"] is tripled
    torch.testing.assert_close(fused, Scorer(kind, "lm").score_batch(model, ids, targets), rtol=0, atol=0)


def test_bad_heads_are_refused_with_errors_naming_the_argument():
    model = TinyLM(6, 4)
    ids, targets = _batch(2, 5, 6, name="lm")
    with pytest.raises(ValueError, match="head is for score kinds 'loss' and 'fgrad' .* got head with kind='gradnorm'"):
        Scorer("gradnorm", "lm", head=model.head)
    for loss in ("mse", lambda pred, y: pred.sum(dim=(1, 2))):
        with pytest.raises(ValueError, match="head is for score kinds .* loss="):
            Scorer("loss", loss, head=model.head)
    with pytest.raises(ValueError, match="head must be an nn.Linear .* got Embedding"):
        Scorer("loss", "lm", head=model.embed)

    class OwnForward(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2

    with pytest.raises(ValueError, match="head must be an nn.Linear .* got a forward of its own"):
        Scorer("loss", "lm", head=OwnForward(4, 6))
    with pytest.raises(ValueError, match="head='lm_head': TinyLM has no submodule of that name"):
        Scorer("loss", "lm", head="lm_head").attach(model)
    with pytest.raises(ValueError, match=r"head='embed' must be an nn.Linear .* got Embedding"):
        Scorer("loss", "lm", head="embed").score_batch(model, ids, targets)
    with pytest.raises(ValueError, match=r"head \(an Linear of shape \(6, 4\)\) is not a submodule of the model"):
        Scorer("loss", "lm", head=nn.Linear(4, 6)).score_batch(model, ids, targets)
    with pytest.raises(ValueError, match=r"loss='lm' needs logits \(B, T, V\) and labels \(B, T\); got logits \(2, 5, 6\)"):
        Scorer("loss", "lm", head=model.head).score_batch(model, ids, targets[:, :4])
    assert "forward" not in vars(model.head)


def test_fit_scores_its_refresh_passes_through_the_head(monkeypatch):
    """lr 0: the model never changes, so the teacher is fed the same scores with and without the
    fused head, and selects the same examples."""
    from attent import fit
    from attent.teacher import Teacher

    vocab, length = 13, 6
    ids, labels = _batch(10, length, vocab, name="lm", seed=4)
    data = [{"input_ids": i, "labels": y} for i, y in zip(ids, labels)]

    class MappingLM(TinyLM):
        def forward(self, input_ids):
            return {"logits": super().forward(input_ids)}

    def run(score_head):
        model = MappingLM(vocab, 5, seed=2)
        teacher = Teacher(len(data), when="always", warmup_epochs=1, strategy="hard", ratio=0.5, interval=1, epochs=3, refresh="cycle")
        seen = {}
        select = teacher.select
        teacher.select = lambda epoch: seen.setdefault(epoch, select(epoch))
        spy = _Spy(monkeypatch, "linear_cross_entropy_scores")
        result = fit(model, data, loss="lm", optimizer=torch.optim.SGD(model.parameters(), lr=0.0), teacher=teacher,
                     score="fgrad", epochs=3, batch_size=4, score_head=score_head, progress=False)
        assert result.examples_scored == 2 * len(data)  # a refresh pass before each of the two subset epochs
        return teacher, seen, spy.calls

    fused_teacher, fused_seen, fused_calls = run("head")
    plain_teacher, plain_seen, plain_calls = run(None)
    assert fused_calls == 2 * 3 and plain_calls == 0  # two refresh passes of three batches
    torch.testing.assert_close(fused_teacher.scores, plain_teacher.scores, rtol=1e-5, atol=1e-6, equal_nan=True)
    assert [fused_seen[e].indices.tolist() for e in range(3)] == [plain_seen[e].indices.tolist() for e in range(3)]
    with pytest.raises(ValueError, match="score_head must be None, the output head"):
        fit(MappingLM(vocab), data, loss="lm", optimizer=torch.optim.SGD(MappingLM(vocab).parameters(), lr=0.0),
            epochs=1, score_head=3)
