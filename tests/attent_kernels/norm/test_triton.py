"""Triton kernel of the norm-layer family against the reference and against per-example gradients
of a real nn.LayerNorm, on random inputs of odd sizes. Without CUDA it runs on CPU tensors under
the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1), so shapes stay tiny.

Both backends accumulate in float32 from the same (possibly bfloat16/float16) input values, so
every input dtype is held to the float32 tolerance of ``assert_matches``."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("triton")

from attent_kernels import _dispatch, norm_grad_norm_sq  # noqa: E402
from attent_kernels.norm import _triton  # noqa: E402
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
# (B, T, d): T past one 16-row interpreter block and not a multiple of it, d over several 16-wide
# feature tiles and not a multiple of them; T = 1; T and d exact multiples of the blocks.
SHAPES = [(3, 37, 45), (2, 1, 17), (3, 16, 48)]


def _inputs(seed: int, B: int, T: int | None, d: int, device: str, dtype: torch.dtype = torch.float32):
    """x_hat and g of shape (B, T, d) (or (B, d) when T is None) and a mask whose example 0 is fully padded."""
    gen = torch.Generator().manual_seed(seed)
    lead = (B,) if T is None else (B, T)
    x_hat, g = randn(gen, *lead, d, dtype=dtype), randn(gen, *lead, d, dtype=dtype)
    return x_hat.to(device), g.to(device), random_mask(gen, *lead, empty_row=0).to(device)


def _both(x_hat, g, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        norm_grad_norm_sq(x_hat, g, backend="triton", **kwargs),
        norm_grad_norm_sq(x_hat, g, backend="reference", **kwargs),
    )


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("bias", [False, True], ids=["rmsnorm", "layernorm"])
@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
def test_matches_reference_on_odd_shapes(device, shape, bias, masked):
    x_hat, g, mask = _inputs(1, *shape, device)
    got, expected = _both(x_hat, g, bias=bias, mask=mask if masked else None)
    assert got.shape == (shape[0],) and got.dtype == torch.float32
    assert_matches(got, expected, torch.float32)
    if masked:
        assert got[0] == 0


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_low_precision_matches_reference_on_the_same_values(device, dtype):
    x_hat, g, mask = _inputs(2, *SHAPES[0], device, dtype)
    got, expected = _both(x_hat, g, mask=mask)
    assert got.dtype == torch.float32
    assert_matches(got, expected, torch.float32)


def test_float64_and_mixed_input_dtypes(device):
    x_hat, g, mask = _inputs(3, *SHAPES[0], device, torch.float64)
    got, expected = _both(x_hat, g, mask=mask)
    assert got.dtype == torch.float64
    assert_matches(got, expected, torch.float64)
    got, expected = _both(x_hat.to(torch.bfloat16), g.float(), mask=mask)
    assert got.dtype == torch.float32
    assert_matches(got, expected, torch.float32)


def test_two_dimensional_inputs_with_a_mask(device):
    x_hat, g, mask = _inputs(4, 5, None, 29, device)
    got, expected = _both(x_hat, g, mask=mask)
    assert_matches(got, expected, torch.float32)
    assert got[0] == 0


@pytest.mark.parametrize("T", [None, 21], ids=["2-D", "3-D"])
def test_equals_per_example_gradients_of_nn_layer_norm(device, T):
    """Reference-free oracle: weight and bias gradients of a real LayerNorm per example, from
    torch.func in float64, with the kernel fed the layer's normalized input."""
    d = 26
    gen = torch.Generator().manual_seed(5)
    lead = (3,) if T is None else (3, T)
    x, g = randn(gen, *lead, d, dtype=torch.float64, scale=3.0), randn(gen, *lead, d)
    mask = random_mask(gen, *lead, empty_row=1)
    layer = nn.LayerNorm(d, dtype=torch.float64)
    expected = sq_norms(per_example_grads(layer, x, zero_where_masked(g.double(), mask)))
    x_hat = F.layer_norm(x, (d,)).float()
    got = norm_grad_norm_sq(x_hat.to(device), g.to(device), bias=True, mask=mask.to(device), backend="triton")
    assert_matches(got.cpu(), expected, torch.float32)


def test_strided_inputs(device):
    B, T, d = 3, 19, 22
    gen = torch.Generator().manual_seed(6)
    x_hat = randn(gen, B, d, T).to(device).transpose(1, 2)
    g = randn(gen, B, T, 2 * d).to(device)[..., ::2]
    assert not x_hat.is_contiguous() and not g.is_contiguous()
    got, expected = _both(x_hat, g)
    assert_matches(got, expected, torch.float32)


@pytest.mark.parametrize("bias", [False, True])
def test_nan_in_one_example_stays_in_that_example(device, bias):
    x_hat, g, _ = _inputs(7, *SHAPES[0], device)
    clean = norm_grad_norm_sq(x_hat, g, bias=bias, backend="triton")
    x_bad = x_hat.clone()
    x_bad[2, 33, 40] = float("nan")
    assert_nan_only_at(norm_grad_norm_sq(x_bad, g, bias=bias, backend="triton").cpu(), clean.cpu(), 2)


def test_nan_at_a_masked_position_is_never_read(device):
    x_hat, g, mask = _inputs(8, *SHAPES[0], device)
    mask[2, 20] = False
    x_bad, g_bad = x_hat.clone(), g.clone()
    x_bad[2, 20] = float("nan")
    g_bad[0] = float("nan")
    clean = norm_grad_norm_sq(x_hat, g, mask=mask, backend="triton")
    assert torch.equal(norm_grad_norm_sq(x_bad, g_bad, mask=mask, backend="triton"), clean)


def test_empty_batch_and_empty_sequence(device):
    x = torch.zeros(0, 4, 3, device=device)
    assert norm_grad_norm_sq(x, x, backend="triton").shape == (0,)
    x = torch.zeros(2, 0, 3, device=device)
    assert torch.equal(norm_grad_norm_sq(x, x, backend="triton"), torch.zeros(2, device=device))


def test_inputs_are_not_modified(device):
    x_hat, g, mask = _inputs(9, *SHAPES[0], device, torch.bfloat16)
    before = [t.clone() for t in (x_hat, g, mask)]
    norm_grad_norm_sq(x_hat, g, mask=mask, backend="triton")
    for t, saved in zip((x_hat, g, mask), before):
        assert torch.equal(t, saved)


@pytest.mark.skipif(not _dispatch.interpreter_on(), reason="the interpreter configuration only")
def test_interpreter_uses_one_small_configuration():
    assert len(_triton._norm_grad_norm_kernel.configs) == 1
