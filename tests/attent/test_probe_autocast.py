"""The probe under bf16 autocast and on the hot path: the kernels get the 16-bit tensors the layers
multiplied (the float32 input rounded as autocast rounds it, the 16-bit output gradient), the norms
are exact against an oracle built from those rounded tensors, and no hook reads a tensor value on
the host (a device synchronization per layer on a GPU)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attent import _factor_norms
from attent.probe import GradNormProbe
from tests.attent._spies import count_host_reads, spy_calls

B = T = 3  # batch and sequence sizes coincide on purpose
LINEAR_OPS = ("linear_grad_norm_sq", "grouped_linear_grad_norm_sq", "linear_weight_grad_and_norm_sq")


class Block(nn.Module):
    """Embedding, LayerNorm, q/k/v reading one input, attention, output projection, MLP, head."""

    def __init__(self, vocab: int = 13, d: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.emb, self.norm = nn.Embedding(vocab, d), nn.LayerNorm(d)
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d, bias=False), nn.Linear(d, d)
        self.out, self.up, self.head = nn.Linear(d, d), nn.Linear(d, 2 * d), nn.Linear(2 * d, vocab)
        self.heads = heads

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        b, t = ids.shape
        x = self.norm(self.emb(ids))
        q, k, v = (lin(x).view(b, t, self.heads, -1).transpose(1, 2) for lin in (self.q, self.k, self.v))
        mixed = torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v
        x = x + self.out(mixed.transpose(1, 2).reshape(b, t, -1))
        return self.head(F.gelu(self.up(x)))


def batch(seed: int) -> tuple[Block, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    return Block(), torch.randint(0, 13, (B, T)), torch.randint(0, 13, (B, T))


def losses_of(model: nn.Module, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(ids)
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none").view(B, T).mean(1)


def linear_factors(model: nn.Module) -> dict[str, list]:
    """{linear name: [input, output gradient]} of the next forward and backward."""
    seen: dict[str, list] = {}

    def keep(name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            seen[name] = [args[0].detach()]
            output.register_hook(lambda g: seen[name].append(g))
        return hook

    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            module.register_forward_hook(keep(name))
    return seen


@pytest.mark.parametrize("mode", ["score", "backward"])
def test_norms_under_bf16_autocast_are_exact_against_the_rounded_inputs(mode):
    model, ids, targets = batch(0)
    seen = linear_factors(model)
    with GradNormProbe(model, weight_grad="fused" if mode == "backward" else "auto") as probe:
        losses = losses_of(model, ids, targets)
        probe.score(losses) if mode == "score" else probe.backward(losses)
    # q, k, v and up read the float32 LayerNorm output that autocast casts; out and head read bf16 activations
    assert {name for name, (x, _) in seen.items() if x.dtype == torch.float32} == {"q", "k", "v", "up"}
    for name, (x, g) in seen.items():
        assert g.dtype == torch.bfloat16
        x = x.to(torch.bfloat16).double()  # what the layer's matmul multiplied
        g = g.double() * (B if mode == "backward" else 1)  # the mean's gradient, back to each example's own loss
        want = torch.einsum("btp,btd->bpd", g, x).square().sum((1, 2))
        if getattr(model, name).bias is not None:
            want = want + g.sum(1).square().sum(1)
        torch.testing.assert_close(probe.per_layer[name].double(), want, rtol=1e-5, atol=1e-10, msg=name)


@pytest.mark.parametrize("mode, route, ops", [
    ("score", "separate", {"grouped_linear_grad_norm_sq", "linear_grad_norm_sq"}),
    ("backward", "separate", {"grouped_linear_grad_norm_sq", "linear_grad_norm_sq"}),
    ("backward", "fused", {"linear_weight_grad_and_norm_sq"}),
])
def test_the_kernels_get_the_16_bit_tensors(monkeypatch, mode, route, ops):
    model, ids, targets = batch(1)
    calls = spy_calls(monkeypatch, _factor_norms, LINEAR_OPS)
    with GradNormProbe(model, weight_grad=route) as probe:
        losses = losses_of(model, ids, targets)
        probe.score(losses) if mode == "score" else probe.backward(losses)
    assert {name for name, _, _ in calls} == ops
    assert all(dtypes and set(dtypes) == {torch.bfloat16} for _, dtypes, _ in calls), calls


@pytest.mark.parametrize("mode", ["score", "backward"])
def test_a_bias_norm_comes_with_its_weight_norm_in_one_call(monkeypatch, mode):
    model, ids, targets = batch(3)
    norms = spy_calls(monkeypatch, _factor_norms, ("norm_grad_norm_sq",))
    calls = spy_calls(monkeypatch, _factor_norms, LINEAR_OPS)
    with GradNormProbe(model, weight_grad="separate") as probe:
        losses = losses_of(model, ids, targets)
        probe.score(losses) if mode == "score" else probe.backward(losses)
    flags = sorted((name, str(kwargs.get("bias", kwargs.get("biases")))) for name, _, kwargs in calls)
    # q, k (no bias), v in one grouped call; out, up and head each with its bias
    assert [name for name, _ in flags] == ["grouped_linear_grad_norm_sq"] + ["linear_grad_norm_sq"] * 3
    assert flags[1:] == [("linear_grad_norm_sq", "True")] * 3
    assert sorted(calls[[n for n, _, _ in calls].index("grouped_linear_grad_norm_sq")][2]["biases"]) == [False, True, True]
    assert [kwargs for _, _, kwargs in norms] == [{"bias": True}]  # the LayerNorm's weight and bias


@pytest.mark.parametrize("mode", ["score", "backward"])
def test_the_hooks_read_no_tensor_value_on_the_host(monkeypatch, mode):
    model, ids, targets = batch(2)
    with GradNormProbe(model, weight_grad="fused" if mode == "backward" else "separate") as probe:
        reads = count_host_reads(monkeypatch)
        losses = losses_of(model, ids, targets)
        got = probe.score(losses) if mode == "score" else probe.backward(losses)
        monkeypatch.undo()
    assert reads == [] and got.shape == (B,)
