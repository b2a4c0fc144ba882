"""Norm family (reference backend) against per-example gradients of real LayerNorm / RMSNorm layers."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import attent_kernels._checks
import attent_kernels.norm._reference as norm_reference
from attent_kernels import norm_grad_norm_sq
from tests.attent_kernels._oracle import (
    DTYPES,
    assert_matches,
    assert_nan_only_at,
    per_example_grads,
    randn,
    random_mask,
    result_dtype,
    sq_norms,
    zero_where_masked,
)

EPS = 1e-5
# (B, T, d); T None means 2-D inputs (B, d).
SHAPES = [(4, None, 5), (3, 1, 7), (5, 9, 3), (2, 15, 11)]


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return normalized(x, "rms") * self.weight


def normalized(x: torch.Tensor, kind: str) -> torch.Tensor:
    """x_hat, the norm layer's input before its affine part."""
    if kind == "rms":
        return x * torch.rsqrt(x.square().mean(dim=-1, keepdim=True) + EPS)
    return F.layer_norm(x, x.shape[-1:], eps=EPS)


def norm_layer(kind: str, d: int) -> nn.Module:
    """'layernorm' (weight and bias), 'layernorm_nobias' or 'rms', in float64 with random affine."""
    if kind == "rms":
        return RMSNorm(d)
    layer = nn.LayerNorm(d, eps=EPS, bias=kind == "layernorm", dtype=torch.float64)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()
    return layer


KINDS = ("layernorm", "layernorm_nobias", "rms")


def _inputs(seed: int, B: int, T: int | None, d: int, dtype: torch.dtype = torch.float32):
    gen = torch.Generator().manual_seed(seed)
    lead = (B,) if T is None else (B, T)
    return randn(gen, *lead, d, dtype=dtype, scale=3.0), randn(gen, *lead, d, dtype=dtype), gen


def _scores_and_oracle(kind: str, x, g, mask=None, given_mask=None):
    """The op on (x_hat, g) and the oracle: per-example gradient norms of the real layer run on x."""
    x_hat = normalized(x.double(), kind).to(x.dtype)
    out = norm_grad_norm_sq(x_hat, g, bias=kind == "layernorm", mask=mask if given_mask is None else given_mask, backend="reference")
    expected = sq_norms(per_example_grads(norm_layer(kind, x.shape[-1]), x.double(), zero_where_masked(g.double(), mask)))
    return out, expected


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_norm_matches_per_example_gradients(shape, kind):
    x, g, _ = _inputs(1, *shape, dtype=torch.float64)
    out, expected = _scores_and_oracle(kind, x, g)
    assert out.shape == (shape[0],) and out.dtype == torch.float64
    assert_matches(out, expected, torch.float64)


@pytest.mark.parametrize("as_float", [False, True], ids=["bool", "float"])
@pytest.mark.parametrize("shape", [(5, None, 4), (4, 8, 6)], ids=str)
def test_mask_drops_positions_and_empties_a_fully_padded_example(shape, as_float):
    x, g, gen = _inputs(2, *shape)
    mask = random_mask(gen, *x.shape[:-1], empty_row=2)
    for kind in KINDS:
        out, expected = _scores_and_oracle(kind, x, g, mask, mask.float() if as_float else mask)
        assert_matches(out, expected, torch.float32)
        assert out[2] == 0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dtypes(dtype):
    x, g, gen = _inputs(3, 4, 6, 9, dtype)
    mask = random_mask(gen, 4, 6)
    x_hat = normalized(x.double(), "layernorm").to(dtype)
    out = norm_grad_norm_sq(x_hat, g, bias=True, mask=mask, backend="reference")
    assert out.dtype == result_dtype(x_hat)
    g_kept = zero_where_masked(g.double(), mask)
    expected = (g_kept * x_hat.double()).sum(dim=1).square().sum(dim=1) + g_kept.sum(dim=1).square().sum(dim=1)
    assert_matches(out, expected, dtype)


@settings(max_examples=25, deadline=None)
@given(
    B=st.integers(1, 5),
    T=st.one_of(st.none(), st.integers(1, 8)),
    d=st.integers(2, 9),
    kind=st.sampled_from(KINDS),
    use_mask=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_hypothesis_shapes(B, T, d, kind, use_mask, seed):
    x, g, gen = _inputs(seed, B, T, d)
    mask = random_mask(gen, *x.shape[:-1], empty_row=None) if use_mask else None
    out, expected = _scores_and_oracle(kind, x, g, mask)
    assert_matches(out, expected, torch.float32)


def test_chunking_leaves_results_unchanged(monkeypatch):
    x, g, gen = _inputs(4, 7, 5, 6)
    mask = random_mask(gen, 7, 5)
    whole = norm_grad_norm_sq(x, g, mask=mask, backend="reference")
    steps = []
    rows_per_chunk = norm_reference.rows_per_chunk
    monkeypatch.setattr(attent_kernels._checks, "MAX_CHUNK_ELEMENTS", 130)
    monkeypatch.setattr(norm_reference, "rows_per_chunk", lambda *a: steps.append(rows_per_chunk(*a)) or steps[-1])
    chunked = norm_grad_norm_sq(x, g, mask=mask, backend="reference")
    assert steps and steps[0] < 7
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=0.0)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("T", [None, 4])
def test_nan_in_one_example_stays_in_that_example(T, bias):
    x, g, _ = _inputs(5, 4, T, 5)
    clean = norm_grad_norm_sq(x, g, bias=bias, backend="reference")
    x_bad = x.clone()
    x_bad.view(4, -1)[0, 3] = float("nan")
    assert_nan_only_at(norm_grad_norm_sq(x_bad, g, bias=bias, backend="reference"), clean, 0)


def test_inputs_are_not_modified():
    x, g, gen = _inputs(6, 3, 5, 4, torch.bfloat16)
    mask = random_mask(gen, 3, 5).float()
    before = [t.clone() for t in (x, g, mask)]
    norm_grad_norm_sq(x, g, mask=mask, backend="reference")
    for t, saved in zip((x, g, mask), before):
        assert torch.equal(t, saved)


@pytest.mark.parametrize("shape", [(0, 5, 4), (0, None, 4), (3, 0, 4)], ids=str)
def test_empty_batch_or_sequence(shape):
    x, g, _ = _inputs(7, *shape)
    assert torch.equal(norm_grad_norm_sq(x, g, backend="reference"), torch.zeros(shape[0]))
