"""Loss-score family (reference backend) against F.cross_entropy / MSE and autograd's gradient
w.r.t. each example's outputs."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import attent_kernels._checks
import attent_kernels.loss_scores._reference as loss_reference
from attent_kernels import CEScores, MSEScores, cross_entropy_scores, linear_cross_entropy_scores, mse_scores
from tests.attent_kernels._oracle import DTYPES, assert_matches, assert_nan_only_at, randn, random_mask, result_dtype

# (B, T, V); T None means logits (B, V) and targets (B,).
SHAPES = [(5, None, 7), (3, 1, 4), (4, 9, 11), (2, 6, 1)]


def _logits_and_targets(seed: int, B: int, T: int | None, V: int, dtype=torch.float32, scale: float = 2.0, ignore_index=-100):
    """Random logits and targets; one target in four ignored, and example 0 fully ignored when T is set."""
    gen = torch.Generator().manual_seed(seed)
    lead = (B,) if T is None else (B, T)
    targets = torch.randint(0, V, lead, generator=gen)
    targets[torch.rand(lead, generator=gen) < 0.25] = ignore_index
    if T is not None:
        targets[0] = ignore_index
    return randn(gen, *lead, V, dtype=dtype, scale=scale), targets, gen


def _ce_oracle(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> CEScores:
    """Per-example mean token loss from F.cross_entropy, the squared norm of autograd's gradient
    w.r.t. the logits of each example's summed loss, and the valid-token count (float64)."""
    B, V = logits.shape[0], logits.shape[-1]
    z = logits.double().reshape(B, -1, V).detach().requires_grad_(True)
    tgt = targets.reshape(B, -1)
    token_loss = F.cross_entropy(z.reshape(-1, V), tgt.reshape(-1), ignore_index=ignore_index, reduction="none").reshape(B, -1)
    (grad,) = torch.autograd.grad(token_loss.sum(), z)
    count = (tgt != ignore_index).sum(dim=1)
    return CEScores(token_loss.detach().sum(dim=1) / count.clamp(min=1), grad.square().sum(dim=(1, 2)), count)


def _assert_ce_matches(out: CEScores, expected: CEScores, input_dtype: torch.dtype, out_dtype: torch.dtype) -> None:
    assert isinstance(out, CEScores)
    assert out.loss.dtype == out.fgrad_sq.dtype == out_dtype and out.count.dtype == torch.int64
    assert_matches(out.loss, expected.loss, input_dtype)
    assert_matches(out.fgrad_sq, expected.fgrad_sq, input_dtype)
    assert torch.equal(out.count, expected.count)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_cross_entropy_matches_f_cross_entropy_and_autograd(shape):
    logits, targets, _ = _logits_and_targets(1, *shape)
    out = cross_entropy_scores(logits, targets, backend="reference")
    _assert_ce_matches(out, _ce_oracle(logits, targets), torch.float32, torch.float32)


def test_fully_ignored_example_scores_zero():
    logits, targets, _ = _logits_and_targets(2, 3, 5, 6)
    out = cross_entropy_scores(logits, targets, backend="reference")
    assert (out.loss[0], out.fgrad_sq[0], out.count[0]) == (0, 0, 0)
    assert bool((out.count[1:] > 0).all())


def test_custom_ignore_index_inside_the_vocabulary():
    logits, targets, _ = _logits_and_targets(3, 4, 6, 5, ignore_index=2)
    out = cross_entropy_scores(logits, targets, ignore_index=2, backend="reference")
    _assert_ce_matches(out, _ce_oracle(logits, targets, ignore_index=2), torch.float32, torch.float32)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cross_entropy_dtypes(dtype):
    logits, targets, _ = _logits_and_targets(4, 3, 7, 13, dtype)
    out = cross_entropy_scores(logits, targets, backend="reference")
    _assert_ce_matches(out, _ce_oracle(logits, targets), dtype, result_dtype(logits))


def test_large_logits_stay_finite_and_exact():
    logits, targets, _ = _logits_and_targets(5, 4, 5, 9, scale=300.0)
    out = cross_entropy_scores(logits, targets, backend="reference")
    assert bool(out.loss.isfinite().all() and out.fgrad_sq.isfinite().all())
    _assert_ce_matches(out, _ce_oracle(logits, targets), torch.float32, torch.float32)


def test_fgrad_keeps_its_relative_accuracy_when_the_target_is_nearly_certain():
    """||p - e_y||^2 of tokens whose target has probability 1 - 1e-4 ... 1 - 1e-12 is tiny but
    positive: each must match the oracle relatively, not only next to the batch's largest score."""
    gen = torch.Generator().manual_seed(6)
    logits, targets = randn(gen, 6, 1, 17), torch.randint(0, 17, (6, 1), generator=gen)
    margins = torch.tensor([8.0, 10.0, 12.0, 14.0, 16.0, 18.0])
    logits.scatter_add_(2, targets[..., None], margins[:, None, None])
    out = cross_entropy_scores(logits, targets, backend="reference")
    expected = _ce_oracle(logits, targets).fgrad_sq
    assert bool((out.fgrad_sq > 0).all())
    torch.testing.assert_close(out.fgrad_sq.double(), expected, rtol=1e-4, atol=0.0)


def test_loss_keeps_its_relative_accuracy_when_the_target_is_nearly_certain():
    """A loss of 1e-4 ... 1e-12 (log s - (z_y - m) would cancel to 0 or to a few ulps of 1):
    each matches the oracle relatively, and a large margin past LOG1P_MARGIN stays exact."""
    gen = torch.Generator().manual_seed(7)
    logits, targets = randn(gen, 7, 1, 17), torch.randint(0, 17, (7, 1), generator=gen)
    margins = torch.tensor([8.0, 12.0, 16.0, 20.0, 24.0, 28.0, -45.0])
    logits.scatter_add_(2, targets[..., None], margins[:, None, None])
    out = cross_entropy_scores(logits, targets, backend="reference")
    assert bool((out.loss > 0).all())
    torch.testing.assert_close(out.loss.double(), _ce_oracle(logits, targets).loss, rtol=1e-5, atol=0.0)


@settings(max_examples=25, deadline=None)
@given(
    B=st.integers(1, 5),
    T=st.one_of(st.none(), st.integers(1, 7)),
    V=st.integers(1, 12),
    scale=st.sampled_from([0.1, 2.0, 40.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_cross_entropy_hypothesis_shapes(B, T, V, scale, seed):
    logits, targets, _ = _logits_and_targets(seed, B, T, V, scale=scale)
    out = cross_entropy_scores(logits, targets, backend="reference")
    _assert_ce_matches(out, _ce_oracle(logits, targets), torch.float32, torch.float32)


def _head(seed: int, B: int, T: int | None, d: int, V: int, dtype=torch.float32, with_bias: bool = True):
    logits, targets, gen = _logits_and_targets(seed, B, T, V)
    lead = targets.shape
    hidden, weight = randn(gen, *lead, d, dtype=dtype), randn(gen, V, d, dtype=dtype, scale=0.7)
    return hidden, weight, randn(gen, V, dtype=dtype) if with_bias else None, targets


def _head_logits(hidden, weight, bias):
    logits = hidden.double() @ weight.double().T
    return logits if bias is None else logits + bias.double()


@pytest.mark.parametrize("with_bias", [False, True], ids=["no_bias", "bias"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_linear_cross_entropy_equals_scores_of_the_explicit_logits(shape, with_bias):
    B, T, V = shape
    hidden, weight, bias, targets = _head(7, B, T, 5, V, with_bias=with_bias)
    out = linear_cross_entropy_scores(hidden, weight, targets, bias=bias, backend="reference")
    _assert_ce_matches(out, _ce_oracle(_head_logits(hidden, weight, bias), targets), torch.float32, torch.float32)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_linear_cross_entropy_dtypes(dtype):
    hidden, weight, bias, targets = _head(8, 3, 4, 6, 10, dtype)
    out = linear_cross_entropy_scores(hidden, weight, targets, bias=bias, backend="reference")
    _assert_ce_matches(out, _ce_oracle(_head_logits(hidden, weight, bias), targets), dtype, result_dtype(hidden))


def test_vocabulary_tiles_and_row_chunks_leave_results_unchanged(monkeypatch):
    logits, targets, gen = _logits_and_targets(9, 5, 7, 23)
    hidden, weight, bias, head_targets = _head(9, 5, 7, 4, 23)
    whole = [cross_entropy_scores(logits, targets), linear_cross_entropy_scores(hidden, weight, head_targets, bias=bias)]
    steps = []
    rows_per_chunk = loss_reference.rows_per_chunk
    monkeypatch.setattr(attent_kernels._checks, "MAX_CHUNK_ELEMENTS", 20)
    monkeypatch.setattr(loss_reference, "VOCAB_TILE", 4)
    monkeypatch.setattr(loss_reference, "rows_per_chunk", lambda *a: steps.append(rows_per_chunk(*a)) or steps[-1])
    tiled = [
        cross_entropy_scores(logits, targets, backend="reference"),
        linear_cross_entropy_scores(hidden, weight, head_targets, bias=bias, backend="reference"),
    ]
    assert steps == [5, 5], "rows of 4 vocabulary entries, 5 rows to a chunk of 20 elements"
    for a, b in zip(tiled, whole):
        for field_a, field_b in zip(a, b):
            torch.testing.assert_close(field_a, field_b, rtol=1e-5, atol=1e-6)


def test_leading_vocabulary_tiles_of_minus_infinity(monkeypatch):
    """Vocabulary masking can make a row's first tiles all -inf: the online softmax must not
    turn that into -inf - -inf = NaN."""
    logits, targets, _ = _logits_and_targets(10, 3, 5, 13)
    logits[..., :8] = float("-inf")
    targets[(targets >= 0) & (targets < 8)] = 9
    monkeypatch.setattr(loss_reference, "VOCAB_TILE", 4)
    out = cross_entropy_scores(logits, targets, backend="reference")
    assert torch.isfinite(out.loss).all() and torch.isfinite(out.fgrad_sq).all()
    _assert_ce_matches(out, _ce_oracle(logits, targets), torch.float32, torch.float32)


@pytest.mark.parametrize("T", [None, 4])
def test_nan_in_one_example_stays_in_that_example(T):
    logits, targets, _ = _logits_and_targets(10, 4, T, 6)
    targets[2] = 1
    hidden, weight, bias, _ = _head(10, 4, T, 3, 6)
    clean = [cross_entropy_scores(logits, targets), linear_cross_entropy_scores(hidden, weight, targets, bias=bias)]
    logits_bad, hidden_bad = logits.clone(), hidden.clone()
    logits_bad.view(4, -1)[2, 3] = float("nan")
    hidden_bad.view(4, -1)[2, 1] = float("nan")
    dirty = [
        cross_entropy_scores(logits_bad, targets, backend="reference"),
        linear_cross_entropy_scores(hidden_bad, weight, targets, bias=bias, backend="reference"),
    ]
    for scores, reference in zip(dirty, clean):
        assert_nan_only_at(scores.loss, reference.loss, 2)
        assert_nan_only_at(scores.fgrad_sq, reference.fgrad_sq, 2)
        assert torch.equal(scores.count, reference.count)


def _mse_oracle(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> MSEScores:
    """Mean squared error over each example's valid elements, and the squared norm of autograd's
    gradient w.r.t. pred of each example's summed squared error (float64)."""
    f = pred.double().detach().requires_grad_(True)
    keep = torch.ones_like(f, dtype=torch.bool)
    if mask is not None:
        keep = mask.bool().reshape(*mask.shape, *([1] * (f.dim() - mask.dim()))).expand(f.shape)
    sq = torch.where(keep, (f - target.double()).square(), torch.zeros((), dtype=torch.float64))
    (grad,) = torch.autograd.grad(sq.sum(), f)
    B = f.shape[0]
    return MSEScores(sq.detach().reshape(B, -1).sum(1) / keep.reshape(B, -1).sum(1).clamp(min=1), grad.reshape(B, -1).square().sum(1))


# pred shape, mask shape (None: no mask)
MSE_CASES = [((5,), None), ((4, 3), None), ((4, 3), (4,)), ((3, 6, 2), (3, 6)), ((3, 6, 2), (3,)), ((2, 1, 5), (2, 1))]


@pytest.mark.parametrize("as_float", [False, True], ids=["bool", "float"])
@pytest.mark.parametrize("pred_shape, mask_shape", MSE_CASES, ids=str)
def test_mse_matches_autograd(pred_shape, mask_shape, as_float):
    gen = torch.Generator().manual_seed(11)
    pred, target = randn(gen, *pred_shape), randn(gen, *pred_shape)
    mask = None if mask_shape is None else random_mask(gen, *mask_shape, empty_row=1)
    out = mse_scores(pred, target, mask=None if mask is None else (mask.float() if as_float else mask))
    expected = _mse_oracle(pred, target, mask)
    assert isinstance(out, MSEScores) and out.loss.dtype == out.fgrad_sq.dtype == torch.float32
    assert_matches(out.loss, expected.loss, torch.float32)
    assert_matches(out.fgrad_sq, expected.fgrad_sq, torch.float32)
    if mask is not None:
        assert out.loss[1] == 0 and out.fgrad_sq[1] == 0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mse_dtypes(dtype):
    gen = torch.Generator().manual_seed(12)
    pred, target = randn(gen, 3, 4, 5, dtype=dtype), randn(gen, 3, 4, 5, dtype=dtype)
    mask = random_mask(gen, 3, 4)
    out = mse_scores(pred, target, mask=mask)
    expected = _mse_oracle(pred, target, mask)
    assert out.loss.dtype == result_dtype(pred)
    assert_matches(out.loss, expected.loss, dtype)
    assert_matches(out.fgrad_sq, expected.fgrad_sq, dtype)


def test_mse_nan_in_one_example_stays_in_that_example():
    gen = torch.Generator().manual_seed(13)
    pred, target = randn(gen, 4, 3, 2), randn(gen, 4, 3, 2)
    clean = mse_scores(pred, target)
    pred_bad = pred.clone()
    pred_bad[3, 1, 0] = float("nan")
    dirty = mse_scores(pred_bad, target)
    assert_nan_only_at(dirty.loss, clean.loss, 3)
    assert_nan_only_at(dirty.fgrad_sq, clean.fgrad_sq, 3)


def test_inputs_are_not_modified():
    logits, targets, gen = _logits_and_targets(14, 3, 4, 5, torch.float32)
    hidden, weight, bias, _ = _head(14, 3, 4, 2, 5, torch.bfloat16)
    pred, target, mask = randn(gen, 3, 4, 2), randn(gen, 3, 4, 2), random_mask(gen, 3, 4).float()
    tensors = (logits, targets, hidden, weight, bias, pred, target, mask)
    before = [t.clone() for t in tensors]
    cross_entropy_scores(logits, targets, backend="reference")
    linear_cross_entropy_scores(hidden, weight, targets, bias=bias, backend="reference")
    mse_scores(pred, target, mask=mask)
    for t, saved in zip(tensors, before):
        assert torch.equal(t, saved)


@pytest.mark.parametrize("shape", [(0, 5, 4), (0, None, 4), (3, 0, 4)], ids=str)
def test_empty_batch_or_sequence(shape):
    B, T, V = shape
    lead = (B,) if T is None else (B, T)
    logits, targets = torch.randn(*lead, V), torch.zeros(lead, dtype=torch.long)
    hidden, weight = torch.randn(*lead, 3), torch.randn(V, 3)
    for scores in (
        cross_entropy_scores(logits, targets, backend="reference"),
        linear_cross_entropy_scores(hidden, weight, targets, backend="reference"),
    ):
        assert torch.equal(scores.loss, torch.zeros(B)) and torch.equal(scores.fgrad_sq, torch.zeros(B))
        assert torch.equal(scores.count, torch.zeros(B, dtype=torch.int64))
    mse = mse_scores(logits, logits.clone())
    assert torch.equal(mse.loss, torch.zeros(B)) and torch.equal(mse.fgrad_sq, torch.zeros(B))
