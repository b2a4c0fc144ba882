"""GradNormProbe's grouped norms: linear layers that read one input tensor in a pass (attention's
q, k and v projections of one x) get their weight norms from one ``grouped_linear_grad_norm_sq``
call, one row per layer; each layer's norms checked against its own per-example gradients."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from attent import _factor_norms
from attent.probe import GradNormProbe
from tests.attent.test_probe import oracle

B = T = 3  # T == B on purpose; the k projection is B wide, the q projection 1 wide


class SharedInput(nn.Module):
    """q, k and v read the same normed x (or the model's input itself, so that they are the last
    layers of the backward); o reads the attention output (another tensor); an optional extra
    layer reads x through a transposed view (the same memory, another tensor)."""

    def __init__(self, d: int = 4, *, tied_kv: bool = False, view_reader: bool = False, normed: bool = True):
        super().__init__()
        self.norm = nn.LayerNorm(d) if normed else nn.Identity()
        self.q = nn.Linear(d, 1)
        self.k = nn.Linear(d, B, bias=False)
        self.v = nn.Linear(d, B)
        if tied_kv:
            self.v.weight = self.k.weight  # one parameter read by two layers: its cross terms count
        self.o = nn.Linear(B, d)
        self.side = nn.Linear(T, 2) if view_reader else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        attn = torch.softmax(q * k / 2, dim=1)
        out = self.o(attn * v).tanh().pow(2).mean(dim=(1, 2))
        if self.side is not None:
            out = out + self.side(h.transpose(1, 2)).sin().mean(dim=(1, 2))
        return out


def _per_layer_oracle(model: nn.Module, losses: torch.Tensor) -> dict[str, torch.Tensor]:
    return {name: oracle(losses, list(module.parameters(recurse=False)))[0]
            for name, module in model.named_modules() if name and list(module.parameters(recurse=False))}


def _grouped_calls(monkeypatch) -> list[int]:
    """The layer counts of the probe's grouped-norm calls."""
    calls: list[int] = []
    original = _factor_norms.grouped_linear_grad_norm_sq

    def spy(x, gs, **kwargs):
        calls.append(len(gs))
        return original(x, gs, **kwargs)

    monkeypatch.setattr(_factor_norms, "grouped_linear_grad_norm_sq", spy)
    return calls


@pytest.mark.parametrize("mode, weight_grad", [("score", "separate"), ("backward", "separate"), ("backward", "fused")])
@pytest.mark.parametrize("view_reader, normed", [(False, True), (True, True), (False, False)])
def test_layers_reading_one_input_are_grouped_and_each_layer_exact(monkeypatch, mode, weight_grad, view_reader, normed):
    torch.manual_seed(0)
    model = SharedInput(view_reader=view_reader, normed=normed).double()
    x = torch.randn(B, T, 4, dtype=torch.float64)
    calls = _grouped_calls(monkeypatch)
    with GradNormProbe(model, weight_grad=weight_grad) as probe:
        losses = model(x)
        expected = _per_layer_oracle(model, losses)
        got = probe.score(losses) if mode == "score" else probe.backward(losses, reduction="sum")
        assert set(probe.per_layer) == set(expected)
        for name, norms in expected.items():
            torch.testing.assert_close(probe.per_layer[name], norms, rtol=1e-9, atol=1e-12, msg=name)
        torch.testing.assert_close(got, sum(expected.values()), rtol=1e-9, atol=1e-12)
    # The fused route forms each weight gradient with its own norms: nothing is grouped there.
    assert calls == ([] if weight_grad == "fused" else [3])


@pytest.mark.parametrize("mode", ["score", "backward"])
def test_a_tied_weight_keeps_its_cross_terms_and_the_rest_is_grouped(monkeypatch, mode):
    torch.manual_seed(1)
    model = SharedInput(tied_kv=True).double()
    x = torch.randn(B, T, 4, dtype=torch.float64)
    calls = _grouped_calls(monkeypatch)
    with GradNormProbe(model, weight_grad="separate") as probe:
        losses = model(x)
        params = [p for p in model.parameters()]
        expected, _ = oracle(losses, params)
        q_expected, _ = oracle(losses, list(model.q.parameters()))
        got = probe.score(losses) if mode == "score" else probe.backward(losses, reduction="sum")
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(probe.per_layer["q"], q_expected, rtol=1e-9, atol=1e-12)
    # k.weight (also v.weight) goes the shared parameter's way; q alone is left of the group.
    assert calls == [1]


def test_one_layer_called_twice_on_one_input_is_a_shared_weight_not_a_group(monkeypatch):
    torch.manual_seed(2)
    layer = nn.Linear(4, 3).double()

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = layer

        def forward(self, x):
            return (self.layer(x).tanh() * self.layer(x)).sum(dim=(1, 2))

    model = Twice()
    x = torch.randn(B, T, 4, dtype=torch.float64)
    calls = _grouped_calls(monkeypatch)
    with GradNormProbe(model) as probe:
        losses = model(x)
        expected, _ = oracle(losses, list(model.parameters()))
        torch.testing.assert_close(probe.score(losses), expected, rtol=1e-9, atol=1e-12)
    assert calls == []


def test_grouped_norms_under_bfloat16_autocast():
    torch.manual_seed(3)
    model = SharedInput()
    x = torch.randn(B, T, 4)
    with GradNormProbe(model, weight_grad="separate") as probe, torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(x).float()
        expected = _per_layer_oracle(model, losses)
        probe.score(losses)
    for name in ("q", "k", "v"):
        torch.testing.assert_close(probe.per_layer[name].double(), expected[name].double(), rtol=2e-2, atol=1e-6, msg=name)


class _NoGradient(torch.autograd.Function):
    """The identity whose backward passes no gradient (None): the graph reaches its input, the
    input's gradient never arrives."""

    @staticmethod
    def forward(ctx, t):
        return t.clone()

    @staticmethod
    def backward(ctx, grad):
        return None


def test_a_reader_whose_gradient_never_arrives_leaves_the_others_exact():
    torch.manual_seed(4)
    model = SharedInput().double()
    forward = model.forward

    def blocked(x):
        h = model.norm(x)
        q, k, v = model.q(h), _NoGradient.apply(model.k(h)), model.v(h)
        return model.o(torch.softmax(q * k / 2, dim=1) * v).tanh().pow(2).mean(dim=(1, 2))

    model.forward = blocked
    x = torch.randn(B, T, 4, dtype=torch.float64)
    with GradNormProbe(model, weight_grad="separate") as probe:
        losses = model(x)
        expected = _per_layer_oracle(model, losses)
        probe.score(losses)
    model.forward = forward
    assert "k" not in probe.per_layer
    for name in ("q", "v", "o", "norm"):
        torch.testing.assert_close(probe.per_layer[name], expected[name], rtol=1e-9, atol=1e-12, msg=name)


def test_readers_of_one_input_with_different_layouts_are_not_mixed():
    # q declares its examples at dim 1: its factors of the shared x are another view of it, so it
    # is computed alone, as it is when it is the only probed layer.
    torch.manual_seed(5)
    model = SharedInput().double()
    x = torch.randn(B, T, 4, dtype=torch.float64)
    with GradNormProbe(model, batch_dim={"q": 1}, weight_grad="separate") as probe:
        losses = model(x)
        expected = _per_layer_oracle(model, losses)
        probe.score(losses)
    with GradNormProbe(model, ["q.weight", "q.bias"], batch_dim={"q": 1}) as alone:
        alone.score(model(x))
    torch.testing.assert_close(probe.per_layer["q"], alone.per_layer["q"], rtol=1e-12, atol=0)
    for name in ("k", "v"):
        torch.testing.assert_close(probe.per_layer[name], expected[name], rtol=1e-9, atol=1e-12, msg=name)


def test_llama_groups_its_qkv_and_its_gate_and_up_projections(monkeypatch):
    from tests.attent.test_probe import _llama, _padded_batch, lm_losses

    torch.manual_seed(6)
    model = _llama().double()
    ids, mask, labels = _padded_batch(67, [8, 3, 6], 8)
    calls = _grouped_calls(monkeypatch)
    with GradNormProbe(model, weight_grad="separate") as probe:
        losses = lm_losses(model(input_ids=ids, attention_mask=mask).logits, labels)
        expected = _per_layer_oracle(model, losses)
        probe.score(losses)
    assert sorted(calls) == [2, 2, 3, 3]  # per decoder layer: q, k, v of one x; gate, up of another
    for name in ("model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.k_proj", "model.layers.1.self_attn.v_proj",
                 "model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"):
        torch.testing.assert_close(probe.per_layer[name], expected[name], rtol=1e-8, atol=1e-12, msg=name)


class CrossAttentionStack(nn.Module):
    """Decoder-like layers whose k and v read one encoder output: its readers lie apart in the
    backward, with each layer's q and output projection in between."""

    def __init__(self, layers: int = 3, d: int = 4):
        super().__init__()
        self.q = nn.ModuleList(nn.Linear(d, d) for _ in range(layers))
        self.k = nn.ModuleList(nn.Linear(d, d, bias=False) for _ in range(layers))
        self.v = nn.ModuleList(nn.Linear(d, d) for _ in range(layers))
        self.o = nn.ModuleList(nn.Linear(d, d) for _ in range(layers))

    def forward(self, h: torch.Tensor, enc: torch.Tensor) -> torch.Tensor:
        for q, k, v, o in zip(self.q, self.k, self.v, self.o):
            weights = torch.softmax(q(h) @ k(enc).transpose(1, 2), dim=-1)
            h = h + o(weights @ v(enc)).tanh()
        return h.square().mean(dim=(1, 2))


def test_readers_of_one_input_far_apart_are_grouped_by_neighbours_not_held_to_the_end(monkeypatch):
    torch.manual_seed(7)
    model = CrossAttentionStack().double()
    h, enc = torch.randn(B, T, 4, dtype=torch.float64), torch.randn(B, 5, 4, dtype=torch.float64)
    calls = _grouped_calls(monkeypatch)
    with GradNormProbe(model, weight_grad="separate") as probe:
        losses = model(h, enc)
        expected = _per_layer_oracle(model, losses)
        probe.score(losses)
    # Each layer's k and v arrive together: one call of two per layer, none holding all six.
    assert calls == [2, 2, 2]
    for name, norms in expected.items():
        torch.testing.assert_close(probe.per_layer[name], norms, rtol=1e-9, atol=1e-12, msg=name)
