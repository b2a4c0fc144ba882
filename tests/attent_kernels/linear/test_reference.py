"""Linear family (reference backend) against per-example gradients of real nn.Linear layers."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import attent_kernels._checks
import attent_kernels.linear._reference as linear_reference
from attent_kernels import (
    grouped_linear_grad_norm_sq,
    linear_grad_gram,
    linear_grad_norm_sq,
    linear_weight_grad_and_norm_sq,
)
from tests.attent_kernels._oracle import (
    DTYPES,
    assert_matches,
    assert_nan_only_at,
    flat_grads,
    per_example_grads,
    randn,
    random_mask,
    result_dtype,
    sq_norms,
    zero_where_masked,
)

PATHS = ("ghost", "direct", "auto")
# (B, T, d, p); T None means 2-D inputs (B, d) / (B, p).
SHAPES = [(3, None, 5, 7), (4, 1, 6, 3), (5, 7, 9, 4), (2, 13, 3, 11)]


def _inputs(seed: int, B: int, T: int | None, d: int, p: int, dtype: torch.dtype = torch.float32):
    gen = torch.Generator().manual_seed(seed)
    lead = (B,) if T is None else (B, T)
    return randn(gen, *lead, d, dtype=dtype), randn(gen, *lead, p, dtype=dtype), gen


def _linear(d: int, p: int, bias: bool) -> nn.Linear:
    return nn.Linear(d, p, bias=bias).double()


def _oracle_grads(x: torch.Tensor, g: torch.Tensor, bias: bool, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-example gradients of an nn.Linear whose output gradient is g (zero where masked)."""
    layer = _linear(x.shape[-1], g.shape[-1], bias)
    return per_example_grads(layer, x.double(), zero_where_masked(g.double(), mask))


def _oracle_norms(x: torch.Tensor, g: torch.Tensor, bias: bool, mask: torch.Tensor | None = None) -> torch.Tensor:
    return sq_norms(_oracle_grads(x, g, bias, mask))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_norm_matches_per_example_gradients(shape, bias, path):
    x, g, _ = _inputs(1, *shape)
    out = linear_grad_norm_sq(x, g, bias=bias, path=path, backend="reference")
    assert out.shape == (shape[0],) and out.dtype == torch.float32
    assert_matches(out, _oracle_norms(x, g, bias), torch.float32)


@pytest.mark.parametrize("as_float", [False, True], ids=["bool", "float"])
@pytest.mark.parametrize("shape", [(5, None, 6, 4), (4, 9, 5, 7)], ids=str)
def test_mask_drops_positions_and_empties_a_fully_padded_example(shape, as_float):
    x, g, gen = _inputs(2, *shape)
    mask = random_mask(gen, *x.shape[:-1], empty_row=1)
    given_mask = mask.float() if as_float else mask
    expected = _oracle_norms(x, g, True, mask)
    for path in PATHS:
        out = linear_grad_norm_sq(x, g, bias=True, mask=given_mask, path=path, backend="reference")
        assert_matches(out, expected, torch.float32)
        assert out[1] == 0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dtypes_accumulate_in_float32_or_float64(dtype):
    x, g, gen = _inputs(3, 4, 6, 7, 5, dtype)
    mask = random_mask(gen, 4, 6)
    expected = _oracle_norms(x, g, True, mask)
    for path in PATHS:
        out = linear_grad_norm_sq(x, g, bias=True, mask=mask, path=path, backend="reference")
        assert out.dtype == result_dtype(x)
        assert_matches(out, expected, dtype)


def test_auto_path_follows_the_cost_model(monkeypatch):
    """auto runs ghost when T^2 (d + p) < T d p and direct otherwise."""
    calls = []
    for name in ("_ghost_chunk", "_direct_chunk"):
        original = getattr(linear_reference, name)
        monkeypatch.setattr(linear_reference, name, lambda *a, _n=name, _f=original: calls.append(_n) or _f(*a))
    short_wide = _inputs(4, 2, 2, 16, 16)[:2]
    long_narrow = _inputs(4, 2, 40, 3, 4)[:2]
    linear_grad_norm_sq(*short_wide, backend="reference")
    linear_grad_norm_sq(*long_narrow, backend="reference")
    assert calls == ["_ghost_chunk", "_direct_chunk"]


@pytest.mark.parametrize("path", PATHS)
def test_grouped_equals_separate_layers_and_a_fused_qkv_layer(path):
    x, _, gen = _inputs(5, 3, 6, 7, 1)
    widths = (4, 5, 3)
    gs = [randn(gen, 3, 6, p) for p in widths]
    mask = random_mask(gen, 3, 6, empty_row=2)
    biases = [True, False, True]
    out = grouped_linear_grad_norm_sq(x, gs, biases=biases, mask=mask, path=path, backend="reference")
    separate = sum(
        linear_grad_norm_sq(x, gk, bias=bk, mask=mask, path=path, backend="reference") for gk, bk in zip(gs, biases)
    )
    oracle = sum(_oracle_norms(x, gk, bk, mask) for gk, bk in zip(gs, biases))
    assert_matches(out, oracle, torch.float32)
    assert_matches(separate, oracle, torch.float32)

    fused = grouped_linear_grad_norm_sq(x, gs, biases=True, mask=mask, path=path, backend="reference")
    fused_oracle = _oracle_norms(x, torch.cat(gs, dim=-1), True, mask)
    assert_matches(fused, fused_oracle, torch.float32)
    assert fused[2] == 0


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("T", [None, 1, 3])
def test_grouped_per_layer_rows_are_each_layers_own_norms(path, T):
    # B == T == width of the second layer == 3, a width-1 layer: each row is its layer's norms.
    x, _, gen = _inputs(8, 3, T, 4, 1)
    lead = (3,) if T is None else (3, T)
    gs = [randn(gen, *lead, p) for p in (1, 3, 5)]
    mask = None if T is None else random_mask(gen, 3, T)
    biases = [False, True, True]
    rows = grouped_linear_grad_norm_sq(x, gs, biases=biases, mask=mask, path=path, backend="reference", per_layer=True)
    assert rows.shape == (3, 3)
    for k, (gk, bk) in enumerate(zip(gs, biases)):
        assert_matches(rows[k], _oracle_norms(x, gk, bk, mask), torch.float32)
    summed = grouped_linear_grad_norm_sq(x, gs, biases=biases, mask=mask, path=path, backend="reference")
    torch.testing.assert_close(rows.sum(dim=0), summed)


def test_grouped_bias_flags_none_and_true():
    x, _, gen = _inputs(6, 4, None, 5, 1)
    gs = [randn(gen, 4, 3), randn(gen, 4, 6)]
    no_bias = grouped_linear_grad_norm_sq(x, gs, backend="reference")
    all_bias = grouped_linear_grad_norm_sq(x, gs, biases=True, backend="reference")
    assert_matches(no_bias, sum(_oracle_norms(x, gk, False) for gk in gs), torch.float32)
    assert_matches(all_bias, sum(_oracle_norms(x, gk, True) for gk in gs), torch.float32)


@pytest.mark.parametrize("bias", [False, True])
def test_gram_is_the_matrix_of_per_example_gradient_inner_products(bias):
    x, g, gen = _inputs(7, 5, 4, 6, 3)
    x2, g2 = randn(gen, 3, 7, 6), randn(gen, 3, 7, 3)
    mask, mask2 = random_mask(gen, 5, 4, empty_row=0), random_mask(gen, 3, 7, empty_row=None)
    out = linear_grad_gram(x, g, x2=x2, g2=g2, mask=mask, mask2=mask2, bias=bias, backend="reference")
    assert out.shape == (5, 3) and out.dtype == torch.float32
    expected = flat_grads(_oracle_grads(x, g, bias, mask)) @ flat_grads(_oracle_grads(x2, g2, bias, mask2)).T
    assert_matches(out, expected, torch.float32)
    assert bool((out[0] == 0).all())


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_gram_diagonal_is_the_norm_and_the_gram_is_symmetric(shape, bias):
    x, g, gen = _inputs(8, *shape)
    mask = random_mask(gen, *x.shape[:-1], empty_row=None)
    gram = linear_grad_gram(x, g, mask=mask, bias=bias, backend="reference")
    norms = linear_grad_norm_sq(x, g, bias=bias, mask=mask, backend="reference")
    assert_matches(torch.diagonal(gram), norms, torch.float32)
    assert_matches(gram, gram.T, torch.float32)
    oracle = flat_grads(_oracle_grads(x, g, bias, mask))
    assert_matches(gram, oracle @ oracle.T, torch.float32)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_weight_grad_is_the_modules_grad_of_the_summed_loss(shape):
    x, g, gen = _inputs(9, *shape)
    mask = random_mask(gen, *x.shape[:-1], empty_row=0)
    grad_weight, norm_sq = linear_weight_grad_and_norm_sq(x, g, mask=mask, backend="reference")
    layer = _linear(shape[2], shape[3], bias=False)
    (layer(x.double()) * zero_where_masked(g.double(), mask)).sum().backward()
    assert grad_weight.shape == layer.weight.shape and grad_weight.dtype == torch.float32
    assert_matches(grad_weight, layer.weight.grad, torch.float32)
    assert_matches(norm_sq, _oracle_norms(x, g, False, mask), torch.float32)


@settings(max_examples=25, deadline=None)
@given(
    B=st.integers(1, 5),
    T=st.one_of(st.none(), st.integers(1, 7)),
    d=st.integers(1, 9),
    p=st.integers(1, 9),
    bias=st.booleans(),
    use_mask=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_hypothesis_shapes(B, T, d, p, bias, use_mask, seed):
    x, g, gen = _inputs(seed, B, T, d, p)
    mask = random_mask(gen, *x.shape[:-1], empty_row=None) if use_mask else None
    grads = _oracle_grads(x, g, bias, mask)
    expected = sq_norms(grads)
    for path in PATHS:
        assert_matches(linear_grad_norm_sq(x, g, bias=bias, mask=mask, path=path, backend="reference"), expected, torch.float32)
    gram = linear_grad_gram(x, g, mask=mask, bias=bias, backend="reference")
    assert_matches(gram, flat_grads(grads) @ flat_grads(grads).T, torch.float32)


def _every_op(x, g, gs, mask, x2, g2, mask2):
    """Every linear-family result on one set of inputs, each path where a path applies."""
    results = [linear_grad_norm_sq(x, g, bias=True, mask=mask, path=path, backend="reference") for path in PATHS]
    results += [grouped_linear_grad_norm_sq(x, gs, biases=True, mask=mask, path=path, backend="reference") for path in PATHS]
    results.append(linear_grad_gram(x, g, x2=x2, g2=g2, mask=mask, mask2=mask2, bias=True, backend="reference"))
    results.extend(linear_weight_grad_and_norm_sq(x, g, mask=mask, backend="reference"))
    return results


def test_chunking_leaves_results_unchanged(monkeypatch):
    x, g, gen = _inputs(10, 7, 9, 11, 6)
    gs = [g, randn(gen, 7, 9, 5)]
    x2, g2 = randn(gen, 5, 4, 11), randn(gen, 5, 4, 6)
    mask, mask2 = random_mask(gen, 7, 9), random_mask(gen, 5, 4, empty_row=None)
    whole = _every_op(x, g, gs, mask, x2, g2, mask2)

    chunk_sizes = []
    rows_per_chunk = linear_reference.rows_per_chunk

    def spy(per_row: int, total: int) -> int:
        step = rows_per_chunk(per_row, total)
        chunk_sizes.append((step, total))
        return step

    monkeypatch.setattr(attent_kernels._checks, "MAX_CHUNK_ELEMENTS", 23)
    monkeypatch.setattr(linear_reference, "MAX_CHUNK_ELEMENTS", 23)
    monkeypatch.setattr(linear_reference, "rows_per_chunk", spy)
    chunked = _every_op(x, g, gs, mask, x2, g2, mask2)
    assert any(step < total for step, total in chunk_sizes), "the tiny chunk bound must split some loop"
    for a, b in zip(chunked, whole):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))


@pytest.mark.parametrize("shape", [(4, None, 5, 3), (4, 6, 5, 3)], ids=str)
def test_nan_in_one_example_stays_in_that_example(shape):
    x, g, gen = _inputs(11, *shape)
    gs = [g, randn(gen, *g.shape[:-1], 2)]
    clean = _every_op(x, g, gs, None, x, g, None)
    x_bad = x.clone()
    x_bad.view(shape[0], -1)[2, 1] = float("nan")
    dirty = _every_op(x_bad, g, gs, None, x_bad, g, None)
    for result, reference in zip(dirty[:-2] + dirty[-1:], clean[:-2] + clean[-1:]):
        assert_nan_only_at(result, reference, 2)


def test_nan_at_a_masked_position_is_ignored():
    x, g, gen = _inputs(12, 3, 5, 4, 6)
    mask = random_mask(gen, 3, 5, empty_row=None)
    mask[1, 3] = False
    x_bad, g_bad = x.clone(), g.clone()
    x_bad[1, 3, 0] = g_bad[1, 3, 2] = float("nan")
    for path in PATHS:
        out = linear_grad_norm_sq(x_bad, g_bad, bias=True, mask=mask, path=path, backend="reference")
        assert_matches(out, _oracle_norms(x, g, True, mask), torch.float32)


def test_inputs_are_not_modified():
    x, g, gen = _inputs(13, 4, 5, 6, 3, torch.bfloat16)
    gs = [g, randn(gen, 4, 5, 2, dtype=torch.bfloat16)]
    mask = random_mask(gen, 4, 5).float()
    x2, g2, mask2 = x[:3].clone(), g[:3].clone(), mask[:3].clone()
    before = [t.clone() for t in (x, g, *gs, mask, x2, g2, mask2)]
    _every_op(x, g, gs, mask, x2, g2, mask2)
    for t, saved in zip((x, g, *gs, mask, x2, g2, mask2), before):
        assert torch.equal(t, saved)


@pytest.mark.parametrize("shape", [(0, 5, 4, 3), (0, None, 4, 3), (3, 0, 4, 3)], ids=str)
def test_empty_batch_or_sequence(shape):
    x, g, gen = _inputs(14, *shape)
    B = shape[0]
    gs = [g, randn(gen, *g.shape[:-1], 2)]
    for path in PATHS:
        assert torch.equal(linear_grad_norm_sq(x, g, bias=True, path=path, backend="reference"), torch.zeros(B))
        assert torch.equal(grouped_linear_grad_norm_sq(x, gs, path=path, backend="reference"), torch.zeros(B))
    assert torch.equal(linear_grad_gram(x, g, backend="reference"), torch.zeros(B, B))
    grad_weight, norm_sq = linear_weight_grad_and_norm_sq(x, g, backend="reference")
    assert torch.equal(grad_weight, torch.zeros(3, 4)) and torch.equal(norm_sq, torch.zeros(B))
