"""Embedding family (reference backend) against per-example gradients of a real nn.Embedding."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import attent_kernels._checks
import attent_kernels.embedding._reference as embedding_reference
from attent_kernels import embedding_grad_norm_sq
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

# (B, T, vocab, d); T None means 1-D ids (B,). Small vocabularies so that ids repeat.
SHAPES = [(4, None, 3, 5), (3, 1, 4, 6), (5, 9, 4, 3), (2, 17, 11, 7)]


def _inputs(seed: int, B: int, T: int | None, vocab: int, d: int, dtype: torch.dtype = torch.float32):
    gen = torch.Generator().manual_seed(seed)
    lead = (B,) if T is None else (B, T)
    ids = torch.randint(0, vocab, lead, generator=gen)
    return ids, randn(gen, *lead, d, dtype=dtype), gen


def _oracle_norms(
    ids: torch.Tensor, g: torch.Tensor, vocab: int, padding_idx: int | None = None, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-example squared gradient norm of nn.Embedding(vocab, d, padding_idx) with output gradient g."""
    table = nn.Embedding(vocab, g.shape[-1], padding_idx=padding_idx).double()
    return sq_norms(per_example_grads(table, ids, zero_where_masked(g.double(), mask)))


@pytest.mark.parametrize("padding_idx", [None, 1])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_norm_matches_per_example_gradients(shape, padding_idx):
    ids, g, _ = _inputs(1, *shape)
    out = embedding_grad_norm_sq(ids, g, padding_idx=padding_idx, backend="reference")
    assert out.shape == (shape[0],) and out.dtype == torch.float32
    assert_matches(out, _oracle_norms(ids, g, shape[2], padding_idx), torch.float32)


def test_repeated_ids_add_their_gradients_before_squaring():
    ids = torch.tensor([[2, 2, 0]])
    g = torch.tensor([[[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]]])
    # id 2: (1 + 3, 2 - 1) -> 16 + 1; id 0: 0.25 + 0.25.
    assert embedding_grad_norm_sq(ids, g, backend="reference").tolist() == [17.5]


@pytest.mark.parametrize("as_float", [False, True], ids=["bool", "float"])
@pytest.mark.parametrize("shape", [(5, None, 3, 4), (4, 8, 5, 6)], ids=str)
def test_mask_and_padding_drop_positions_and_empty_a_fully_padded_example(shape, as_float):
    ids, g, gen = _inputs(2, *shape)
    mask = random_mask(gen, *ids.shape, empty_row=3)
    given_mask = mask.float() if as_float else mask
    out = embedding_grad_norm_sq(ids, g, mask=given_mask, padding_idx=0, backend="reference")
    assert_matches(out, _oracle_norms(ids, g, shape[2], 0, mask), torch.float32)
    assert out[3] == 0


def test_example_of_padding_ids_only_scores_zero():
    ids, g, _ = _inputs(3, 3, 6, 5, 4)
    ids[0] = 4
    out = embedding_grad_norm_sq(ids, g, padding_idx=4, backend="reference")
    assert out[0] == 0 and bool((out[1:] > 0).all())


@pytest.mark.parametrize("id_dtype", [torch.int32, torch.int64, torch.uint8], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dtypes(dtype, id_dtype):
    ids, g, gen = _inputs(4, 4, 7, 6, 5, dtype)
    mask = random_mask(gen, 4, 7)
    out = embedding_grad_norm_sq(ids.to(id_dtype), g, mask=mask, padding_idx=2, backend="reference")
    assert out.dtype == result_dtype(g)
    assert_matches(out, _oracle_norms(ids, g, 6, 2, mask), dtype)


@settings(max_examples=25, deadline=None)
@given(
    B=st.integers(1, 5),
    T=st.one_of(st.none(), st.integers(1, 9)),
    vocab=st.integers(1, 8),
    d=st.integers(1, 7),
    use_padding=st.booleans(),
    use_mask=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_hypothesis_shapes(B, T, vocab, d, use_padding, use_mask, seed):
    ids, g, gen = _inputs(seed, B, T, vocab, d)
    padding_idx = vocab - 1 if use_padding else None
    mask = random_mask(gen, *ids.shape, empty_row=None) if use_mask else None
    out = embedding_grad_norm_sq(ids, g, mask=mask, padding_idx=padding_idx, backend="reference")
    assert_matches(out, _oracle_norms(ids, g, vocab, padding_idx, mask), torch.float32)


def test_chunking_leaves_results_unchanged(monkeypatch):
    ids, g, gen = _inputs(5, 9, 13, 7, 5)
    mask = random_mask(gen, 9, 13)
    whole = embedding_grad_norm_sq(ids, g, mask=mask, padding_idx=3, backend="reference")
    steps = []
    rows_per_chunk = embedding_reference.rows_per_chunk
    monkeypatch.setattr(attent_kernels._checks, "MAX_CHUNK_ELEMENTS", 300)
    monkeypatch.setattr(embedding_reference, "rows_per_chunk", lambda *a: steps.append(rows_per_chunk(*a)) or steps[-1])
    chunked = embedding_grad_norm_sq(ids, g, mask=mask, padding_idx=3, backend="reference")
    assert steps and steps[0] < 9
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=0.0)


@pytest.mark.parametrize("T", [None, 6])
def test_nan_in_one_example_stays_in_that_example(T):
    ids, g, _ = _inputs(6, 5, T, 4, 3)
    clean = embedding_grad_norm_sq(ids, g, backend="reference")
    g_bad = g.clone()
    g_bad.view(5, -1)[3, 2] = float("nan")
    assert_nan_only_at(embedding_grad_norm_sq(ids, g_bad, backend="reference"), clean, 3)


def test_inputs_are_not_modified():
    ids, g, gen = _inputs(7, 3, 5, 4, 6, torch.bfloat16)
    mask = random_mask(gen, 3, 5).float()
    before = [t.clone() for t in (ids, g, mask)]
    embedding_grad_norm_sq(ids, g, mask=mask, padding_idx=0, backend="reference")
    for t, saved in zip((ids, g, mask), before):
        assert torch.equal(t, saved)


@pytest.mark.parametrize("shape", [(0, 5, 4, 3), (0, None, 4, 3), (3, 0, 4, 3)], ids=str)
def test_empty_batch_or_sequence(shape):
    ids, g, _ = _inputs(8, *shape)
    assert torch.equal(embedding_grad_norm_sq(ids, g, padding_idx=0, backend="reference"), torch.zeros(shape[0]))


@pytest.mark.parametrize("bad", [-1, -5, 4, 9])
def test_ids_outside_the_table_are_refused(bad):
    """A negative id (or one past num_embeddings) at a counted position is an error naming it, on
    every backend and path; the same id where it is masked out or is the padding id is not."""
    ids, g, _ = _inputs(9, 3, 6, 4, 5)
    ids[1, 2] = bad
    needs_table = bad >= 0
    kwargs = {"num_embeddings": 4}
    for backend in ("reference", "triton"):
        with pytest.raises(ValueError, match=rf"ids must be .*found \[{bad}\]"):
            embedding_grad_norm_sq(ids, g, backend=backend, **kwargs)
    if needs_table:  # without the table's size only negative ids are known to be wrong
        embedding_grad_norm_sq(ids, g, backend="reference")
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[1, 2] = False
    clean = ids.clone()
    clean[1, 2] = 0
    expected = embedding_grad_norm_sq(clean, g, mask=mask, backend="reference", **kwargs)
    assert torch.equal(embedding_grad_norm_sq(ids, g, mask=mask, backend="reference", **kwargs), expected)
    padded = embedding_grad_norm_sq(ids, g, padding_idx=bad, num_embeddings=max(bad + 1, 4) if bad >= 0 else 4,
                                    backend="reference")
    assert padded.shape == (3,)
    unchecked = embedding_grad_norm_sq(ids, g, check_ids=False, backend="reference", **kwargs)
    assert torch.isfinite(unchecked).all()


@pytest.mark.parametrize("value", [0, -3, 2.5, True])
def test_num_embeddings_and_check_ids_are_checked(value):
    ids, g, _ = _inputs(10, 2, 3, 4, 5)
    with pytest.raises(ValueError, match="num_embeddings must be a positive integer"):
        embedding_grad_norm_sq(ids, g, num_embeddings=value)
    with pytest.raises(ValueError, match="check_ids must be True or False"):
        embedding_grad_norm_sq(ids, g, check_ids=value if value is not True else 1)
