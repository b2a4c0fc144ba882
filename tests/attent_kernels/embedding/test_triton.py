"""Triton kernel of the embedding family against the reference and against per-example gradients
of a real nn.Embedding, on random inputs of odd sizes. Without CUDA it runs on CPU tensors under
the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1), so shapes stay tiny.

Both backends accumulate in float32 from the same (possibly bfloat16/float16) input values, so
every input dtype is held to the float32 tolerance of ``assert_matches``."""
from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("triton")

from attent_kernels import _dispatch, embedding_grad_norm_sq  # noqa: E402
from attent_kernels.embedding import _triton  # noqa: E402
from tests.attent_kernels._oracle import (  # noqa: E402
    assert_matches,
    assert_nan_only_at,
    per_example_grads,
    randn,
    random_mask,
    sq_norms,
    zero_where_masked,
)

LOW_PRECISION = (torch.bfloat16, torch.float16)
# (B, T, vocab, d): T past one 16-row interpreter block and not a multiple of it, d over several
# 16-wide chunks; T an exact multiple of the block; T = 1. Small vocabularies so that ids repeat
# inside a block and across blocks.
SHAPES = [(3, 37, 7, 23), (2, 16, 5, 48), (3, 1, 4, 17)]


def _inputs(seed: int, B: int, T: int | None, vocab: int, d: int, device: str, dtype: torch.dtype = torch.float32):
    """ids (B, T) (or (B,) when T is None), g (..., d) and a mask whose example 0 is fully padded."""
    gen = torch.Generator().manual_seed(seed)
    lead = (B,) if T is None else (B, T)
    ids = torch.randint(0, vocab, lead, generator=gen)
    g = randn(gen, *lead, d, dtype=dtype)
    mask = random_mask(gen, *lead, empty_row=0)
    return ids.to(device), g.to(device), mask.to(device)


@pytest.fixture(params=["pairs", "sorted", "auto"])
def path(request) -> str:
    """Every test runs each Triton path: the pair kernel, the sorted kernel and the cost model's choice."""
    return request.param


def _both(ids, g, path, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        embedding_grad_norm_sq(ids, g, path=path, backend="triton", **kwargs),
        embedding_grad_norm_sq(ids, g, backend="reference", **kwargs),
    )


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
def test_matches_reference_on_odd_shapes(device, shape, masked, path):
    ids, g, mask = _inputs(1, *shape, device)
    got, expected = _both(ids, g, path, mask=mask if masked else None, padding_idx=1)
    assert got.shape == (shape[0],) and got.dtype == torch.float32
    assert_matches(got, expected, torch.float32)
    if masked:
        assert got[0] == 0


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_low_precision_matches_reference_on_the_same_values(device, dtype, path):
    ids, g, mask = _inputs(2, *SHAPES[0], device, dtype)
    got, expected = _both(ids, g, path, mask=mask, padding_idx=3)
    assert got.dtype == torch.float32
    assert_matches(got, expected, torch.float32)


def test_float64_accumulates_in_float64(device, path):
    ids, g, mask = _inputs(3, *SHAPES[0], device, torch.float64)
    got, expected = _both(ids, g, path, mask=mask)
    assert got.dtype == torch.float64
    assert_matches(got, expected, torch.float64)


@pytest.mark.parametrize("T", [None, 29], ids=["1-D ids", "2-D ids"])
def test_equals_per_example_gradients_of_nn_embedding(device, T, path):
    """Reference-free oracle: the per-example gradient of the table, from torch.func in float64."""
    vocab, padding_idx = 6, 2
    ids, g, mask = _inputs(4, 3, T, vocab, 19, device)
    got = embedding_grad_norm_sq(ids, g, mask=mask, padding_idx=padding_idx, path=path, backend="triton")
    table = nn.Embedding(vocab, g.shape[-1], padding_idx=padding_idx).double()
    expected = sq_norms(per_example_grads(table, ids.cpu(), zero_where_masked(g.double().cpu(), mask.cpu())))
    assert_matches(got.cpu(), expected, torch.float32)


def test_one_id_repeated_everywhere_and_all_ids_distinct(device, path):
    """All positions of one id: ||sum_t g_t||^2, which needs every off-diagonal block pair; all ids
    distinct: sum_t ||g_t||^2, the diagonal only."""
    B, T, d = 2, 37, 21
    gen = torch.Generator().manual_seed(5)
    g = randn(gen, B, T, d).to(device)
    same = torch.full((B, T), 3, device=device)
    distinct = torch.arange(T, device=device).expand(B, T)
    one_id = embedding_grad_norm_sq(same, g, path=path, backend="triton")
    assert_matches(one_id, g.double().sum(1).square().sum(1), torch.float32)
    all_distinct = embedding_grad_norm_sq(distinct, g, path=path, backend="triton")
    assert_matches(all_distinct, g.double().square().sum((1, 2)), torch.float32)


def test_padding_idx_alone_and_strided_inputs(device, path):
    """An example made only of padding ids scores 0; g may be a non-contiguous view and ids int32."""
    B, T, d = 3, 23, 13
    gen = torch.Generator().manual_seed(6)
    ids = torch.randint(0, 5, (B, T), generator=gen).to(device, torch.int32)
    ids[2] = 4
    g = randn(gen, B, d, 2 * T).to(device).transpose(1, 2)[:, ::2]
    assert not g.is_contiguous()
    got, expected = _both(ids, g, path, padding_idx=4)
    assert_matches(got, expected, torch.float32)
    assert got[2] == 0 and bool((got[:2] > 0).all())


def test_nan_in_one_example_stays_in_that_example(device, path):
    ids, g, _ = _inputs(7, *SHAPES[0], device)
    clean = embedding_grad_norm_sq(ids, g, path=path, backend="triton")
    g_bad = g.clone()
    g_bad[1, 30, 4] = float("nan")
    assert_nan_only_at(embedding_grad_norm_sq(ids, g_bad, path=path, backend="triton").cpu(), clean.cpu(), 1)


def test_nan_at_a_masked_position_is_never_read(device, path):
    ids, g, mask = _inputs(8, *SHAPES[0], device)
    mask[2, 20] = False
    g_bad = g.clone()
    g_bad[2, 20] = float("nan")
    g_bad[0] = float("nan")
    clean = embedding_grad_norm_sq(ids, g, mask=mask, path=path, backend="triton")
    assert torch.equal(embedding_grad_norm_sq(ids, g_bad, mask=mask, path=path, backend="triton"), clean)


def test_empty_batch_and_empty_sequence(device, path):
    ids, g = torch.zeros(0, 4, dtype=torch.long, device=device), torch.zeros(0, 4, 3, device=device)
    assert embedding_grad_norm_sq(ids, g, path=path, backend="triton").shape == (0,)
    ids, g = torch.zeros(2, 0, dtype=torch.long, device=device), torch.zeros(2, 0, 3, device=device)
    assert torch.equal(embedding_grad_norm_sq(ids, g, path=path, backend="triton"), torch.zeros(2, device=device))


def test_inputs_are_not_modified(device, path):
    ids, g, mask = _inputs(9, *SHAPES[0], device, torch.bfloat16)
    before = [t.clone() for t in (ids, g, mask)]
    embedding_grad_norm_sq(ids, g, mask=mask, padding_idx=0, path=path, backend="triton")
    for t, saved in zip((ids, g, mask), before):
        assert torch.equal(t, saved)


@pytest.mark.skipif(not _dispatch.interpreter_on(), reason="the interpreter configuration only")
def test_interpreter_uses_one_small_configuration():
    assert len(_triton._embedding_norm_kernel.configs) == len(_triton._sorted_embedding_norm_kernel.configs) == 1


# Coincidences (B, T, vocab, d): T == B, d == B, d = 1, B = 1, T = 1, and runs of one id longer
# than a 16-row chunk (vocab 2), so the sorted kernel carries a run across several chunks.
COINCIDENCES = [(3, 3, 3, 3), (1, 40, 2, 1), (2, 2, 9, 2), (4, 1, 3, 5), (2, 53, 2, 18)]


@pytest.mark.parametrize("shape", COINCIDENCES, ids=str)
def test_coincident_shapes_and_runs_across_chunks(device, shape, path):
    ids, g, mask = _inputs(11, *shape, device)
    for kwargs in (dict(mask=mask), dict(padding_idx=0), {}):
        got, expected = _both(ids, g, path, **kwargs)
        assert_matches(got, expected, torch.float32)


def test_sorted_runs_put_kept_out_positions_first():
    ids = torch.tensor([[5, 2, 5, 7, 2], [1, 1, 1, 1, 1]])
    keep = torch.tensor([[True, True, False, True, True], [False, True, True, False, True]])
    run, order = _triton._sorted_runs(ids, keep)
    assert run.tolist() == [[-1, 1, 1, 2, 3], [-1, -1, 1, 1, 1]]
    assert torch.equal(ids.gather(1, order)[:, 1:], torch.tensor([[2, 2, 5, 7], [1, 1, 1, 1]]))


def test_ids_beyond_int32_and_unchecked_negative_ids(device, path):
    """Runs are numbered after sorting, so ids need not fit 32 bits; with the host check off
    (check_ids=False) the kernels treat a negative id as one more label, as the reference does."""
    gen = torch.Generator().manual_seed(12)
    ids = torch.tensor([[2**40, -3, 2**40, 7, -3, -3]], device=device)
    g = randn(gen, 1, 6, 4).to(device)
    got, expected = _both(ids, g, path, check_ids=False)
    assert_matches(got, expected, torch.float32)
    with pytest.raises(ValueError, match=r"found \[-3\]"):
        _both(ids, g, path)


def test_unknown_path_is_a_value_error():
    with pytest.raises(ValueError, match=r"embedding_grad_norm_sq: path must be one of .*'ghost'"):
        embedding_grad_norm_sq(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3, 4), path="ghost")
