"""The fused route of ``GradNormProbe.backward`` (``weight_grad="fused"``): nn.Linear weight
gradients formed with their per-example norms in one pass (``linear_weight_grad_and_norm_sq``).

Every test compares against an independent oracle: ``.grad`` against a plain
``losses.mean().backward()`` of a copy of the model, the norms against ``torch.func`` per-example
gradients of an unprobed forward; shapes are chosen so that a size equal to B (T == B, width == B)
or of 1 cannot hide a mix-up of dimensions.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

import attent._factor_norms as factor_norms
import attent_kernels as ak
from attent import GradNormProbe
from attent._probed_linear import PROBED_LINEAR_NODE


@dataclass(frozen=True)
class Shape:
    """A two-layer MLP on x of shape (B, d) or (B, T, d) (``T=None``: 2-D inputs)."""

    B: int
    T: int | None
    d: int
    hidden: int
    out: int
    bias: bool

    def model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(self.d, self.hidden, bias=self.bias), nn.Tanh(),
                             nn.Linear(self.hidden, self.out, bias=self.bias)).double()

    def inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        lead = (self.B,) if self.T is None else (self.B, self.T)
        return torch.randn(*lead, self.d, dtype=torch.float64), torch.randn(*lead, self.out, dtype=torch.float64)


SHAPES = {
    "T == B": Shape(B=3, T=3, d=5, hidden=4, out=2, bias=True),
    "width == B, no bias": Shape(B=4, T=6, d=4, hidden=4, out=4, bias=False),
    "width 1": Shape(B=3, T=5, d=1, hidden=1, out=1, bias=True),
    "2-D inputs": Shape(B=5, T=None, d=3, hidden=5, out=2, bias=True),
    "2-D inputs, width == B, no bias": Shape(B=2, T=None, d=2, hidden=2, out=1, bias=False),
    "one example": Shape(B=1, T=4, d=3, hidden=2, out=3, bias=True),
}


def mse(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) mean squared error of each example over its positions and outputs."""
    return (model(x) - y).square().flatten(1).mean(dim=1)


def torch_func_norms(model: nn.Module, loss, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """{parameter name: (B,) squared norm of each example's gradient} from vmap(grad) of an
    unprobed forward, ``loss(model_fn, *batched inputs) -> (B,)``."""
    params = {name: p.detach() for name, p in model.named_parameters()}

    def one(p: dict, *example: torch.Tensor) -> torch.Tensor:
        return loss(lambda *args: functional_call(model, p, args), *(t[None] for t in example)).sum()

    grads = vmap(grad(one), in_dims=(None, *[0] * len(inputs)))(params, *inputs)
    return {name: g.flatten(1).square().sum(dim=1) for name, g in grads.items()}


def plain_grads(model: nn.Module, loss, *inputs: torch.Tensor, start: dict | None = None) -> dict[str, torch.Tensor]:
    """``.grad`` after ``loss(model, *inputs).mean().backward()`` on a copy of the model, starting
    from ``start`` ({name: existing .grad}, else none)."""
    twin = copy.deepcopy(model)
    for name, p in twin.named_parameters():
        p.grad = None if start is None else start[name].clone()
    loss(twin, *inputs).mean().backward()
    return {name: p.grad for name, p in twin.named_parameters()}


@pytest.fixture
def fused_calls(monkeypatch) -> list[str]:
    """The ``path`` of every call of the fused weight-gradient op the probe makes."""
    calls = []
    original = factor_norms.weight_grad_and_norm_sq

    def spy(factor, path):
        calls.append(path)
        return original(factor, path)

    monkeypatch.setattr(factor_norms, "weight_grad_and_norm_sq", spy)
    return calls


def assert_matches(probe: GradNormProbe, got: torch.Tensor, norms: dict[str, torch.Tensor], model: nn.Module,
                   grads: dict[str, torch.Tensor], rtol: float = 1e-10) -> None:
    """The total and every layer's norms against torch.func, every ``.grad`` against the plain backward."""
    torch.testing.assert_close(got, sum(norms.values()), rtol=rtol, atol=1e-12)
    for layer, sq in probe.per_layer.items():
        want = sum(norms[name] for name, owner in probe.layer_of.items() if owner == layer)
        torch.testing.assert_close(sq, want, rtol=rtol, atol=1e-12, msg=lambda m, layer=layer: f"per_layer[{layer!r}]: {m}")
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], rtol=rtol, atol=1e-12, msg=lambda m, name=name: f"{name}.grad: {m}")


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_fused_backward_matches_plain_backward_and_torch_func(shape, fused_calls):
    torch.manual_seed(0)
    model = shape.model()
    x, y = shape.inputs()
    norms, grads = torch_func_norms(model, mse, x, y), plain_grads(model, mse, x, y)
    with GradNormProbe(model, weight_grad="fused") as probe:
        losses = mse(model, x, y)
        got = probe.backward(losses)
    assert fused_calls == ["fused", "fused"]  # both layers' weight gradients came from the fused op
    assert_matches(probe, got, norms, model, grads)


def test_fused_backward_accumulates_into_an_existing_grad():
    torch.manual_seed(1)
    shape = SHAPES["T == B"]
    model = shape.model()
    x, y = shape.inputs()
    start = {name: torch.randn_like(p) for name, p in model.named_parameters()}
    norms, grads = torch_func_norms(model, mse, x, y), plain_grads(model, mse, x, y, start=start)
    for name, p in model.named_parameters():
        p.grad = start[name].clone()
    with GradNormProbe(model, weight_grad="fused") as probe:
        got = probe.backward(mse(model, x, y))
    assert_matches(probe, got, norms, model, grads)


def test_sequence_first_layout_with_t_equal_to_b():
    """x (T, B, d) with T == B and batch_dim=1: the fused norms read the examples at dim 1."""
    torch.manual_seed(2)
    B = T = 3
    model = SHAPES["T == B"].model()
    x, y = torch.randn(T, B, 5, dtype=torch.float64), torch.randn(T, B, 2, dtype=torch.float64)

    def loss(m, x, y):
        return (m(x) - y).square().mean(dim=(0, 2))

    norms = torch_func_norms(model, lambda f, x, y: loss(f, x.transpose(0, 1), y.transpose(0, 1)),
                             x.transpose(0, 1), y.transpose(0, 1))
    grads = plain_grads(model, loss, x, y)
    with GradNormProbe(model, batch_dim=1, weight_grad="fused") as probe:
        got = probe.backward(loss(model, x, y))
    assert_matches(probe, got, norms, model, grads)


class TwiceAndTied(nn.Module):
    """A linear called twice on different inputs, and an output head tied to the embedding."""

    def __init__(self, vocab: int = 7, d: int = 4):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.mix = nn.Linear(d, d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)
        h = h + torch.tanh(self.mix(h))
        return self.head(self.mix(h))


def token_ce(model, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = model(ids)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape).mean(dim=1)


def test_shared_weights_get_their_cross_terms_and_their_plain_gradient(fused_calls):
    torch.manual_seed(3)
    model = TwiceAndTied().double()
    ids, targets = torch.randint(0, 7, (3, 3)), torch.randint(0, 7, (3, 3))
    norms, grads = torch_func_norms(model, token_ce, ids, targets), plain_grads(model, token_ce, ids, targets)
    with GradNormProbe(model, weight_grad="fused") as probe:
        got = probe.backward(token_ce(model, ids, targets))
    assert fused_calls == []  # every weight here is used twice: its norms need the cross terms
    assert_matches(probe, got, norms, model, grads)


def test_score_forms_no_weight_gradient_on_the_fused_route(fused_calls):
    torch.manual_seed(4)
    shape = SHAPES["width == B, no bias"]
    model = shape.model()
    x, y = shape.inputs()
    norms = torch_func_norms(model, mse, x, y)
    with GradNormProbe(model, weight_grad="fused") as probe:
        got = probe.score(mse(model, x, y))
    assert fused_calls == [] and all(p.grad is None for p in model.parameters())
    torch.testing.assert_close(got, sum(norms.values()), rtol=1e-10, atol=1e-12)


def test_a_plain_backward_of_a_fused_forward_gives_the_ordinary_gradients():
    torch.manual_seed(5)
    shape = SHAPES["T == B"]
    model = shape.model()
    x, y = shape.inputs()
    grads = plain_grads(model, mse, x, y)
    with GradNormProbe(model, weight_grad="fused"):
        output = model(x)
        assert isinstance(output.grad_fn, PROBED_LINEAR_NODE)
        (output - y).square().flatten(1).mean(dim=1).mean().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("route", ["auto", "separate"])
def test_auto_on_a_cpu_and_separate_keep_autograd_s_own_weight_gradient(route, fused_calls):
    torch.manual_seed(6)
    shape = SHAPES["T == B"]
    model = shape.model()
    x, y = shape.inputs()
    norms, grads = torch_func_norms(model, mse, x, y), plain_grads(model, mse, x, y)
    with GradNormProbe(model, weight_grad=route) as probe:
        losses = mse(model, x, y)
        assert not isinstance(model(x).grad_fn, PROBED_LINEAR_NODE)
        got = probe.backward(losses)
    assert fused_calls == []
    assert_matches(probe, got, norms, model, grads)


def test_fused_backward_under_autocast():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(6, 5), nn.GELU(), nn.Linear(5, 3))
    x, y = torch.randn(4, 4, 6), torch.randn(4, 4, 3)

    def loss(m, x, y):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(x)
        return (out.float() - y).square().flatten(1).mean(dim=1)

    grads = plain_grads(model, loss, x, y)
    norms = torch_func_norms(model.double(), lambda f, x, y: mse(f, x, y), x.double(), y.double())
    model.float()
    with GradNormProbe(model, weight_grad="fused") as probe:
        got = probe.backward(loss(model, x, y))
    torch.testing.assert_close(got.double(), sum(norms.values()), rtol=5e-2, atol=1e-6)
    for name, p in model.named_parameters():
        assert p.grad.dtype == torch.float32
        torch.testing.assert_close(p.grad, grads[name], rtol=2e-2, atol=2e-3)


def test_fused_backward_on_the_test_device(device, fused_calls):
    """On a GPU the Triton kernels run (the cost model's "auto" too); on a CPU the reference."""
    torch.manual_seed(8)
    model = nn.Sequential(nn.Linear(24, 40), nn.Tanh(), nn.Linear(40, 8)).to(device)
    x, y = torch.randn(3, 17, 24, device=device), torch.randn(3, 17, 8, device=device)
    norms, grads = torch_func_norms(model, mse, x, y), plain_grads(model, mse, x, y)
    route = "auto" if device == "cuda" else "fused"
    with GradNormProbe(model, weight_grad=route) as probe:
        got = probe.backward(mse(model, x, y))
    assert fused_calls == [route, route]
    assert_matches(probe, got, norms, model, grads, rtol=1e-3)


def test_an_unknown_route_is_refused():
    with pytest.raises(ValueError, match=r"weight_grad must be one of \('auto', 'fused', 'separate'\), got 'always'"):
        GradNormProbe(nn.Linear(2, 2), weight_grad="always")


@pytest.mark.parametrize("shape", [SHAPES["T == B"], SHAPES["2-D inputs"]], ids=["T == B", "2-D inputs"])
def test_fused_backward_through_the_triton_kernel(shape, monkeypatch):
    """The probe's fused route on the Triton kernel itself (on a CPU, under the interpreter)."""
    pytest.importorskip("triton")
    torch.manual_seed(9)
    model = shape.model().float()
    x, y = (t.float() for t in shape.inputs())
    norms, grads = torch_func_norms(model, mse, x, y), plain_grads(model, mse, x, y)
    calls = []

    def on_triton(x, g, *, path):
        calls.append(path)
        return ak.linear_weight_grad_and_norm_sq(x, g, path=path, backend="triton")

    monkeypatch.setattr(factor_norms, "linear_weight_grad_and_norm_sq", on_triton)
    with GradNormProbe(model, weight_grad="fused") as probe:
        got = probe.backward(mse(model, x, y))
    assert calls == ["fused", "fused"]
    assert_matches(probe, got, norms, model, grads, rtol=1e-4)
