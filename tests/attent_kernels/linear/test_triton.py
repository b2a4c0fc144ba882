"""Triton kernels of the linear family against the reference (and the reference-free per-example
gradients) on fresh random inputs of odd sizes. Without CUDA they run on CPU tensors under the
Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1), so shapes stay tiny; with CUDA
the same checks run on the GPU."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

import triton.language as tl  # noqa: E402

import attent_kernels as ak  # noqa: E402
from attent_kernels import _cost, _dispatch  # noqa: E402
from attent_kernels._triton_tiles import dot_types, tf32_allowed  # noqa: E402
from attent_kernels.linear import _triton  # noqa: E402

LOW_PRECISION = (torch.bfloat16, torch.float16)
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 1e-2, torch.float64: 1e-10}


def randn(*shape: int, dtype: torch.dtype = torch.float32, device: str = "cpu") -> torch.Tensor:
    return torch.randn(*shape, device=device).to(dtype)


def padding_mask(B: int, T: int, device: str) -> torch.Tensor:
    """Random (B, T) mask with example 1 fully padded and example 0 fully kept."""
    mask = torch.rand(B, T, device=device) > 0.35
    mask[0] = True
    mask[1] = False
    return mask


def assert_matches(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    """Relative agreement at the tolerance of the input dtype, scaled by the largest entry (Gram
    entries can cancel to near zero)."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    tol = TOLERANCE[dtype]
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * scale)


# Shapes (B, T, d, p): T not a multiple of the 16-row interpreter block, several d/p chunks,
# T = 1, sizes that are not powers of two, T an exact multiple of the block.
SHAPES = [(3, 37, 23, 29), (2, 1, 17, 48), (3, 16, 48, 5)]


@pytest.mark.parametrize("dtype", [torch.float32, *LOW_PRECISION])
@pytest.mark.parametrize("path", ["ghost", "direct", "auto"])
def test_norm_matches_reference_across_paths_and_dtypes(device, path, dtype):
    B, T, d, p = SHAPES[0]
    x, g = randn(B, T, d, dtype=dtype, device=device), randn(B, T, p, dtype=dtype, device=device)
    mask = padding_mask(B, T, device)
    args = dict(bias=True, mask=mask, path=path)
    got = ak.linear_grad_norm_sq(x, g, backend="triton", **args)
    assert_matches(got, ak.linear_grad_norm_sq(x, g, backend="reference", **args), dtype)
    assert got[1] == 0


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("path", ["ghost", "direct"])
@pytest.mark.parametrize("bias", [False, True])
def test_norm_odd_shapes_with_and_without_bias(device, shape, path, bias):
    B, T, d, p = shape
    x, g = randn(B, T, d, device=device), randn(B, T, p, device=device)
    got = ak.linear_grad_norm_sq(x, g, bias=bias, path=path, backend="triton")
    assert_matches(got, ak.linear_grad_norm_sq(x, g, bias=bias, path=path, backend="reference"), torch.float32)


def test_norm_equals_per_example_gradients(device):
    """Reference-free oracle: ||g_i^T x_i||^2 + ||sum_t g_i,t||^2 from the explicit per-example
    gradients in float64."""
    B, T, d, p = 3, 21, 13, 19
    x, g = randn(B, T, d, device=device), randn(B, T, p, device=device)
    mask = padding_mask(B, T, device)
    xm = torch.where(mask[..., None], x, 0).double()
    gm = torch.where(mask[..., None], g, 0).double()
    expected = torch.einsum("btp,btd->bpd", gm, xm).square().sum((1, 2)) + gm.sum(1).square().sum(1)
    for path in ("ghost", "direct"):
        got = ak.linear_grad_norm_sq(x, g, bias=True, mask=mask, path=path, backend="triton")
        assert_matches(got.double(), expected, torch.float32)


def test_two_dimensional_inputs_and_float64(device):
    x, g = randn(5, 11, dtype=torch.float64, device=device), randn(5, 7, dtype=torch.float64, device=device)
    mask = torch.tensor([True, False, True, True, False], device=device)
    for path in ("ghost", "direct"):
        got = ak.linear_grad_norm_sq(x, g, bias=True, mask=mask, path=path, backend="triton")
        assert got.dtype == torch.float64
        expected = ak.linear_grad_norm_sq(x, g, bias=True, mask=mask, path=path, backend="reference")
        assert_matches(got, expected, torch.float64)


def test_mixed_input_dtypes_and_strided_inputs(device):
    """Mixed bfloat16 x and float32 g (as under autocast) run a bfloat16 dot: the float32 operand
    is rounded to bfloat16, so the result is held to the documented 16-bit tolerance."""
    B, T, d, p = 2, 19, 10, 12
    x = randn(B, d, T, dtype=torch.bfloat16, device=device).transpose(1, 2)
    g = randn(B, T, 2 * p, device=device)[..., ::2]
    assert not x.is_contiguous() and not g.is_contiguous()
    for path in ("ghost", "direct"):
        got = ak.linear_grad_norm_sq(x, g, bias=True, path=path, backend="triton")
        assert_matches(got, ak.linear_grad_norm_sq(x, g, bias=True, path=path, backend="reference"), torch.bfloat16)


@pytest.mark.parametrize(
    "widths, biases", [([9], [True]), ([9, 20], [False, True]), ([9, 20, 6], [True, False, True])]
)
@pytest.mark.parametrize("path", ["ghost", "direct"])
def test_grouped_matches_reference_and_the_sum_of_single_layers(device, widths, biases, path):
    B, T, d = 3, 23, 15
    x = randn(B, T, d, device=device)
    fused = randn(B, T, sum(widths), device=device)
    gs = list(fused.split(widths, dim=-1))
    mask = padding_mask(B, T, device)
    got = ak.grouped_linear_grad_norm_sq(x, gs, biases=biases, mask=mask, path=path, backend="triton")
    expected = ak.grouped_linear_grad_norm_sq(x, gs, biases=biases, mask=mask, path=path, backend="reference")
    assert_matches(got, expected, torch.float32)
    singles = sum(
        ak.linear_grad_norm_sq(x, g, bias=b, mask=mask, path=path, backend="reference") for g, b in zip(gs, biases)
    )
    assert_matches(got, singles, torch.float32)
    rows = ak.grouped_linear_grad_norm_sq(x, gs, biases=biases, mask=mask, path=path, backend="triton", per_layer=True)
    assert rows.shape == (len(widths), B)
    for k, (g, b) in enumerate(zip(gs, biases)):
        assert_matches(rows[k], ak.linear_grad_norm_sq(x, g, bias=b, mask=mask, path=path, backend="reference"), torch.float32)


@pytest.mark.parametrize("path, T", [("ghost", 5), ("direct", 5), ("auto", 5), ("auto", 1)])
def test_grouped_per_layer_with_coinciding_sizes(device, path, T):
    # B == T == one layer's width, a width-1 layer; at T = 1 "auto" takes the closed form.
    B = 5
    x = randn(B, T, 7, device=device)
    gs = [randn(B, T, p, device=device) for p in (B, 1, 19)]
    rows = ak.grouped_linear_grad_norm_sq(x, gs, biases=[True, True, False], path=path, backend="triton", per_layer=True)
    expected = ak.grouped_linear_grad_norm_sq(x, gs, biases=[True, True, False], backend="reference", per_layer=True)
    assert_matches(rows, expected, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, *LOW_PRECISION])
def test_grouped_low_precision(device, dtype):
    B, T, d = 2, 18, 20
    x = randn(B, T, d, dtype=dtype, device=device)
    gs = [randn(B, T, p, dtype=dtype, device=device) for p in (7, 11, 7)]
    got = ak.grouped_linear_grad_norm_sq(x, gs, biases=True, path="ghost", backend="triton")
    assert_matches(got, ak.grouped_linear_grad_norm_sq(x, gs, biases=True, path="ghost", backend="reference"), dtype)


@pytest.mark.parametrize("path", ["pairs", "materialize"])
@pytest.mark.parametrize("dtype", [torch.float32, *LOW_PRECISION])
@pytest.mark.parametrize("bias", [False, True])
def test_gram_without_second_set_is_symmetric_with_the_norms_on_its_diagonal(device, dtype, bias, path):
    B, T, d, p = 3, 33, 14, 22
    x, g = randn(B, T, d, dtype=dtype, device=device), randn(B, T, p, dtype=dtype, device=device)
    mask = padding_mask(B, T, device)
    got = ak.linear_grad_gram(x, g, mask=mask, bias=bias, path=path, backend="triton")
    assert_matches(got, ak.linear_grad_gram(x, g, mask=mask, bias=bias, backend="reference"), dtype)
    assert torch.equal(got, got.T)
    norms = ak.linear_grad_norm_sq(x, g, bias=bias, mask=mask, path="ghost", backend="triton")
    assert_matches(got.diagonal(), norms, dtype)


@pytest.mark.parametrize("path", ["pairs", "materialize"])
@pytest.mark.parametrize("masks", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_gram_with_second_set(device, masks, bias, path):
    B, T, B2, T2, d, p = 3, 21, 2, 35, 17, 9
    x, g = randn(B, T, d, device=device), randn(B, T, p, device=device)
    x2, g2 = randn(B2, T2, d, device=device), randn(B2, T2, p, device=device)
    kwargs = dict(x2=x2, g2=g2, bias=bias, path=path)
    if masks:
        kwargs.update(mask=padding_mask(B, T, device), mask2=torch.rand(B2, T2, device=device) > 0.5)
    got = ak.linear_grad_gram(x, g, backend="triton", **kwargs)
    assert got.shape == (B, B2)
    assert_matches(got, ak.linear_grad_gram(x, g, backend="reference", **kwargs), torch.float32)


def test_gram_of_a_set_with_an_equal_copy_of_itself(device):
    """Passing the same data as a second set (not the same tensors) runs the full (B, B) grid."""
    x, g = randn(3, 9, 6, device=device), randn(3, 9, 8, device=device)
    symmetric = ak.linear_grad_gram(x, g, bias=True, path="pairs", backend="triton")
    full = ak.linear_grad_gram(x, g, x2=x.clone(), g2=g.clone(), bias=True, path="pairs", backend="triton")
    assert_matches(full, symmetric, torch.float32)


WEIGHT_GRAD_PATHS = ["fused", "separate", "auto"]


@pytest.mark.parametrize("path", WEIGHT_GRAD_PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, *LOW_PRECISION])
@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[1]])
def test_weight_grad_and_norm_matches_reference(device, dtype, shape, path):
    B, T, d, p = shape
    x, g = randn(B, T, d, dtype=dtype, device=device), randn(B, T, p, dtype=dtype, device=device)
    mask = padding_mask(B, T, device)
    grad, norm_sq = ak.linear_weight_grad_and_norm_sq(x, g, mask=mask, path=path, backend="triton")
    grad_ref, norm_sq_ref = ak.linear_weight_grad_and_norm_sq(x, g, mask=mask, backend="reference")
    assert grad.shape == (p, d)
    assert_matches(grad, grad_ref, dtype)
    assert_matches(norm_sq, norm_sq_ref, dtype)


@pytest.mark.parametrize("path", WEIGHT_GRAD_PATHS)
def test_weight_grad_equals_autograd_of_the_layer(device, path):
    """Reference-free oracle: the weight gradient autograd computes for sum(y * g)."""
    B, T, d, p = 3, 17, 11, 26
    x, g = randn(B, T, d, device=device), randn(B, T, p, device=device)
    weight = torch.zeros(p, d, device=device, requires_grad=True)
    (torch.nn.functional.linear(x, weight) * g).sum().backward()
    grad, _ = ak.linear_weight_grad_and_norm_sq(x, g, path=path, backend="triton")
    assert_matches(grad, weight.grad, torch.float32)


def test_weight_grad_separate_path_on_mixed_dtypes_and_2d_inputs(device):
    """The separate path rounds a mixed call's float32 operand to bfloat16 as the kernels do, and
    returns a float32 gradient; 2-D inputs are T = 1."""
    x, g = randn(5, 9, device=device), randn(5, 4, dtype=torch.bfloat16, device=device)
    mask = torch.tensor([True, False, True, True, True], device=device)
    for path in ("fused", "separate"):
        grad, norm_sq = ak.linear_weight_grad_and_norm_sq(x, g, mask=mask, path=path, backend="triton")
        grad_ref, norm_sq_ref = ak.linear_weight_grad_and_norm_sq(x, g, mask=mask, backend="reference")
        assert grad.dtype == norm_sq.dtype == torch.float32
        assert_matches(grad, grad_ref, torch.bfloat16)
        assert_matches(norm_sq, norm_sq_ref, torch.bfloat16)


def _nan_cases(x, g, mask):
    """Each op as a function of (x, g) -> tensor of per-example results, first axis = example."""
    return {
        "ghost": lambda a, b: ak.linear_grad_norm_sq(a, b, bias=True, mask=mask, path="ghost", backend="triton"),
        "direct": lambda a, b: ak.linear_grad_norm_sq(a, b, bias=True, mask=mask, path="direct", backend="triton"),
        "grouped": lambda a, b: ak.grouped_linear_grad_norm_sq(
            a, [b, 2 * b], biases=True, mask=mask, path="ghost", backend="triton"
        ),
        "weight_grad": lambda a, b: ak.linear_weight_grad_and_norm_sq(a, b, mask=mask, path="fused", backend="triton")[1],
        "weight_grad_separate": lambda a, b: ak.linear_weight_grad_and_norm_sq(
            a, b, mask=mask, path="separate", backend="triton"
        )[1],
        "gram": lambda a, b: ak.linear_grad_gram(a, b, mask=mask, bias=True, path="pairs", backend="triton"),
        "gram_materialized": lambda a, b: ak.linear_grad_gram(a, b, mask=mask, bias=True, path="materialize", backend="triton"),
    }


def test_nan_in_one_example_leaves_the_others_exact(device):
    B, T, d, p = 3, 20, 9, 13
    x, g = randn(B, T, d, device=device), randn(B, T, p, device=device)
    mask = torch.ones(B, T, dtype=torch.bool, device=device)
    x_nan = x.clone()
    x_nan[2, 5, 3] = float("nan")
    others = [0, 1]
    for name, op in _nan_cases(x, g, mask).items():
        clean, poisoned = op(x, g), op(x_nan, g)
        assert torch.isnan(poisoned[2]).all(), name
        if name.startswith("gram"):
            assert torch.equal(poisoned[others][:, others], clean[others][:, others]), name
        else:
            assert torch.equal(poisoned[others], clean[others]), name


def test_nan_at_a_padded_position_does_not_leak(device):
    B, T, d, p = 3, 20, 9, 13
    x, g = randn(B, T, d, device=device), randn(B, T, p, device=device)
    mask = padding_mask(B, T, device)
    mask[2, 7] = False
    x_nan, g_nan = x.clone(), g.clone()
    x_nan[2, 7] = float("nan")
    g_nan[1] = float("nan")
    for name, op in _nan_cases(x, g, mask).items():
        clean, guarded = op(x, g), op(x_nan, g_nan)
        assert torch.isfinite(guarded).all(), name
        assert torch.equal(guarded, clean), name
    for path in ("fused", "separate"):
        grad_clean, _ = ak.linear_weight_grad_and_norm_sq(x, g, mask=mask, path=path, backend="triton")
        grad_guarded, _ = ak.linear_weight_grad_and_norm_sq(x_nan, g_nan, mask=mask, path=path, backend="triton")
        assert torch.equal(grad_guarded, grad_clean), path


def test_empty_sequence_and_empty_batch(device):
    x, g = randn(2, 0, 5, device=device), randn(2, 0, 3, device=device)
    assert torch.equal(ak.linear_grad_norm_sq(x, g, bias=True, backend="triton"), torch.zeros(2, device=device))
    x, g = randn(0, 4, 5, device=device), randn(0, 4, 3, device=device)
    assert ak.linear_grad_norm_sq(x, g, backend="triton").shape == (0,)
    grad, norm_sq = ak.linear_weight_grad_and_norm_sq(x, g, backend="triton")
    assert torch.equal(grad, torch.zeros(3, 5, device=device)) and norm_sq.shape == (0,)


def test_triton_backend_on_cpu_without_the_interpreter_raises(monkeypatch):
    monkeypatch.setattr(_dispatch, "interpreter_on", lambda: False)
    x, g = torch.randn(2, 3, 4), torch.randn(2, 3, 5)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        ak.linear_grad_norm_sq(x, g, backend="triton")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        ak.linear_weight_grad_and_norm_sq(x, g, backend="triton")


@pytest.mark.skipif(not _dispatch.interpreter_on(), reason="the interpreter configuration only")
def test_interpreter_uses_one_small_configuration():
    for kernel in (
        _triton._ghost_norm_kernel,
        _triton._direct_norm_kernel,
        _triton._weight_grad_and_norm_kernel,
        _triton._gradient_gram_kernel,
    ):
        assert len(kernel.configs) == 1


# Awkward shapes (B, T, d, p) with coincidences: T == B, d == B, width 1 (d = 1, p = 1), B = 1,
# and T over several 16-row blocks (many block pairs), drawn afresh with every run.
COINCIDENCES = [(3, 3, 3, 7), (1, 29, 5, 1), (4, 18, 1, 4), (2, 7, 2, 2), (1, 1, 9, 1), (2, 53, 3, 5)]


@pytest.mark.parametrize("shape", COINCIDENCES, ids=str)
@pytest.mark.parametrize("path", ["ghost", "direct", "auto"])
def test_norm_on_coincident_shapes(device, shape, path):
    B, T, d, p = shape
    x, g = randn(B, T, d, device=device), randn(B, T, p, device=device)
    mask = torch.rand(B, T, device=device) > 0.3
    for kwargs in (dict(bias=True, mask=mask), dict(bias=False)):
        got = ak.linear_grad_norm_sq(x, g, path=path, backend="triton", **kwargs)
        assert_matches(got, ak.linear_grad_norm_sq(x, g, path=path, backend="reference", **kwargs), torch.float32)


def test_direct_last_tile_with_one_output_feature():
    """p = 1 at a fixed shape: the direct kernel's only p tile is mostly padding, d spans three
    16-wide tiles with a partial last one, and only the first d tile adds the bias."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 21, 35, generator=gen)
    g = torch.randn(2, 21, 1, generator=gen)
    expected = torch.einsum("btp,btd->bpd", g.double(), x.double()).square().sum((1, 2)) + g.double().sum(1).square().sum(1)
    got = ak.linear_grad_norm_sq(x, g, bias=True, path="direct", backend="triton")
    assert_matches(got.double(), expected, torch.float32)


def test_t1_closed_form_under_auto(device):
    """T = 1 (2-D inputs) under path="auto" is ||x||^2 ||g||^2 (+ ||g||^2), a NaN at a masked
    example never read."""
    B, d, p = 5, 7, 3
    x, g = randn(B, d, device=device), randn(B, p, device=device)
    mask = torch.tensor([True, False, True, True, False], device=device)
    x[1, 2] = float("nan")
    assert _cost.linear_path(B, 1, d, [p]) == "closed"
    got = ak.linear_grad_norm_sq(x, g, bias=True, mask=mask, backend="triton")
    expected = ak.linear_grad_norm_sq(x, g, bias=True, mask=mask, path="ghost", backend="reference")
    assert_matches(got, expected, torch.float32)
    assert got[1] == 0 and got[4] == 0
    grouped = ak.grouped_linear_grad_norm_sq(x, [g, 2 * g], biases=[False, True], mask=mask, backend="triton")
    expected = ak.grouped_linear_grad_norm_sq(x, [g, 2 * g], biases=[False, True], mask=mask, backend="reference")
    assert_matches(grouped, expected, torch.float32)


@pytest.mark.parametrize("slots", [1, 2, 5, 132])
@pytest.mark.parametrize("target_programs", [1, 2, 3])
@pytest.mark.parametrize("shape", [(5, 9, 6, 4), (1, 17, 3, 1), (4, 4, 4, 19), (3, 33, 35, 18)], ids=str)
def test_weight_grad_batch_slices(device, monkeypatch, target_programs, shape, slots):
    """The fused kernel split into batch slices (one, two with a short last one, or one example
    each) and run by persistent programs walking several (slice, tile) units each (a device of
    1, 2 or 5 slots) or one each: the same gradient and norms, bitwise the same on a second call."""
    monkeypatch.setattr(_cost, "TARGET_PROGRAMS", target_programs)
    monkeypatch.setattr(_cost, "SM_COUNT", slots)
    B, T, d, p = shape
    x, g = randn(B, T, d, device=device), randn(B, T, p, device=device)
    mask = torch.rand(B, T, device=device) > 0.25
    grad, norm_sq = ak.linear_weight_grad_and_norm_sq(x, g, mask=mask, path="fused", backend="triton")
    grad_ref, norm_sq_ref = ak.linear_weight_grad_and_norm_sq(x, g, mask=mask, backend="reference")
    assert_matches(grad, grad_ref, torch.float32)
    assert_matches(norm_sq, norm_sq_ref, torch.float32)
    again = ak.linear_weight_grad_and_norm_sq(x, g, mask=mask, path="fused", backend="triton")
    assert torch.equal(again[0], grad) and torch.equal(again[1], norm_sq)


def test_ghost_and_direct_are_bitwise_reproducible(device):
    x, g = randn(3, 41, 6, device=device), randn(3, 41, 5, device=device)
    for path in ("ghost", "direct"):
        first = ak.linear_grad_norm_sq(x, g, bias=True, path=path, backend="triton")
        assert torch.equal(first, ak.linear_grad_norm_sq(x, g, bias=True, path=path, backend="triton"))


@pytest.mark.parametrize("path", ["pairs", "materialize", "auto"])
@pytest.mark.parametrize("shape", [(3, 3, 3, 2), (1, 19, 4, 1), (2, 1, 2, 5)], ids=str)
def test_gram_paths_on_coincident_shapes(device, path, shape):
    B, T, d, p = shape
    x, g = randn(B, T, d, device=device), randn(B, T, p, device=device)
    mask = torch.rand(B, T, device=device) > 0.3
    got = ak.linear_grad_gram(x, g, mask=mask, bias=True, path=path, backend="triton")
    assert_matches(got, ak.linear_grad_gram(x, g, mask=mask, bias=True, backend="reference"), torch.float32)
    assert torch.equal(got, got.T)


def test_gram_unknown_path_is_a_value_error():
    with pytest.raises(ValueError, match=r"linear_grad_gram: path must be one of .*'ghost'"):
        ak.linear_grad_gram(torch.ones(2, 3), torch.ones(2, 4), path="ghost")


def test_float32_dot_follows_the_tf32_setting():
    x = torch.ones(2, 3)
    with tf32_allowed(False):
        assert dot_types(x, x).PRECISION == "ieee"
    with tf32_allowed(True):
        assert dot_types(x, x).PRECISION == "tf32"
    mixed = dot_types(x, x.to(torch.bfloat16))
    assert mixed.OPERAND == tl.bfloat16 and mixed.ACC == tl.float32
    assert dot_types(x.double(), x.half()).OPERAND == tl.float64
    assert dot_types(x.half(), x).OPERAND == tl.float16


@pytest.mark.parametrize("target_programs", [1, 10_000])
def test_gram_pair_kernel_row_slices(device, monkeypatch, target_programs):
    """The pair kernel with one row slice, or one per 16-row block (the last one short), for a
    second set and for the symmetric case."""
    monkeypatch.setattr(_cost, "TARGET_PROGRAMS", target_programs)
    x, g = randn(2, 45, 5, device=device), randn(2, 45, 3, device=device)
    x2, g2 = randn(3, 20, 5, device=device), randn(3, 20, 3, device=device)
    for kwargs in (dict(bias=True), dict(x2=x2, g2=g2)):
        got = ak.linear_grad_gram(x, g, path="pairs", backend="triton", **kwargs)
        assert_matches(got, ak.linear_grad_gram(x, g, backend="reference", **kwargs), torch.float32)
