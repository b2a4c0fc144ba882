"""The Triton kernels on a real GPU (marked ``gpu``, skipped without CUDA; ``bench/gpu/check.sh``
runs them): every autotune configuration of every kernel in bfloat16 against the reference, the
dtype policy (float32 IEEE and TF32, float16, mixed float32 / bfloat16) at its documented
tolerances, and bitwise reproducibility. Shapes are awkward (nothing a multiple of a tile) and
larger than the interpreter tests', so every kernel runs several tiles, block pairs and slices.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import pytest
import torch

pytest.importorskip("triton")

import attent_kernels as ak  # noqa: E402
from attent_kernels._triton_tiles import tf32_allowed  # noqa: E402
from attent_kernels.embedding import _triton as embedding_triton  # noqa: E402
from attent_kernels.linear import _triton as linear_triton  # noqa: E402
from attent_kernels.loss_scores import _triton as loss_triton  # noqa: E402
from attent_kernels.norm import _triton as norm_triton  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

B, T, D, P, V, N = 3, 197, 200, 136, 3001, 257
# Relative tolerances (to the largest reference entry) of the dtype policy: 16-bit inputs multiply
# exactly in float32 (summation order only); float32 in TF32 rounds operands to 10 bits; a mixed
# call rounds its float32 operand to bfloat16.
TOLERANCE = {"bfloat16": 1e-4, "float16": 1e-4, "float32": 1e-5, "tf32": 5e-3, "mixed": 2e-2}
KERNEL_MODULES = (linear_triton, embedding_triton, norm_triton, loss_triton)
KERNELS = {name: kernel for module in KERNEL_MODULES for name, kernel in vars(module).items() if name.endswith("_kernel")}

Pairs = list[tuple[torch.Tensor, torch.Tensor]]


def _randn(*shape: int, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
    return (scale * torch.randn(*shape, device="cuda")).to(dtype)


def _mask(*shape: int) -> torch.Tensor:
    return torch.rand(*shape, device="cuda") > 0.3


def _both(op: Callable[..., object], *args, **kwargs) -> tuple[object, object]:
    return op(*args, backend="triton", **kwargs), op(*args, backend="reference", **kwargs)


def _linear(first: torch.dtype, second: torch.dtype, path: str) -> Pairs:
    x, g, mask = _randn(B, T, D, dtype=first), _randn(B, T, P, dtype=second), _mask(B, T)
    return [_both(ak.linear_grad_norm_sq, x, g, bias=True, mask=mask, path=path)]


def _fused(first: torch.dtype, second: torch.dtype) -> Pairs:
    x, g, mask = _randn(B, T, D, dtype=first), _randn(B, T, P, dtype=second), _mask(B, T)
    (grad, norms), (grad_ref, norms_ref) = _both(ak.linear_weight_grad_and_norm_sq, x, g, mask=mask, path="fused")
    return [(grad, grad_ref), (norms, norms_ref)]


def _gram(first: torch.dtype, second: torch.dtype) -> Pairs:
    x, g, mask = _randn(B, 300, D, dtype=first), _randn(B, 300, P, dtype=second), _mask(B, 300)
    return [_both(ak.linear_grad_gram, x, g, mask=mask, bias=True, path="pairs")]


def _embedding(path: str, dtype: torch.dtype) -> Pairs:
    ids, g, mask = torch.randint(0, 40, (B, T), device="cuda"), _randn(B, T, D, dtype=dtype), _mask(B, T)
    return [_both(ak.embedding_grad_norm_sq, ids, g, mask=mask, padding_idx=3, path=path)]


def _norm(first: torch.dtype, second: torch.dtype) -> Pairs:
    x_hat, g, mask = _randn(B, T, D, dtype=first), _randn(B, T, D, dtype=second), _mask(B, T)
    return [_both(ak.norm_grad_norm_sq, x_hat, g, bias=True, mask=mask)]


def _targets() -> torch.Tensor:
    targets = torch.randint(0, V, (N,), device="cuda")
    return torch.where(torch.rand(N, device="cuda") < 0.1, -100, targets)


def _ce(first: torch.dtype, second: torch.dtype, small: bool) -> Pairs:
    """The small call's one-configuration kernel, or (SMALL_LOGITS lowered) the tuned one."""
    saved = loss_triton.SMALL_LOGITS
    loss_triton.SMALL_LOGITS = N * V if small else 0
    try:
        got, expected = _both(ak.cross_entropy_scores, _randn(N, V, dtype=first, scale=3.0), _targets())
    finally:
        loss_triton.SMALL_LOGITS = saved
    return [(got.loss, expected.loss), (got.fgrad_sq, expected.fgrad_sq)]


def _head(first: torch.dtype, second: torch.dtype) -> Pairs:
    hidden, weight, bias = _randn(N, 96, dtype=first), _randn(V, 96, dtype=second, scale=0.3), _randn(V, dtype=second)
    got, expected = _both(ak.linear_cross_entropy_scores, hidden, weight, _targets(), bias=bias)
    return [(got.loss, expected.loss), (got.fgrad_sq, expected.fgrad_sq)]


# kernel -> the public call that launches it, for (first, second) input dtypes.
CALLS: dict[str, Callable[[torch.dtype, torch.dtype], Pairs]] = {
    "_ghost_norm_kernel": lambda a, b: _linear(a, b, "ghost"),
    "_direct_norm_kernel": lambda a, b: _linear(a, b, "direct"),
    "_weight_grad_and_norm_kernel": _fused,
    "_gradient_gram_kernel": _gram,
    "_embedding_norm_kernel": lambda a, b: _embedding("pairs", b),
    "_sorted_embedding_norm_kernel": lambda a, b: _embedding("sorted", b),
    "_norm_grad_norm_kernel": _norm,
    "_cross_entropy_kernel": lambda a, b: _ce(a, b, small=False),
    "_small_cross_entropy_kernel": lambda a, b: _ce(a, b, small=True),
    "_linear_cross_entropy_kernel": _head,
}
DTYPES = {
    "bfloat16": (torch.bfloat16, torch.bfloat16, False),
    "float16": (torch.float16, torch.float16, False),
    "float32": (torch.float32, torch.float32, False),
    "tf32": (torch.float32, torch.float32, True),
    "mixed": (torch.float32, torch.bfloat16, False),
}


@contextlib.contextmanager
def pinned(kernel, configs) -> Iterator[None]:
    """The autotuned kernel restricted to ``configs`` (a fresh tuning cache) while open."""
    saved, saved_cache = kernel.configs, kernel.cache
    kernel.configs, kernel.cache = list(configs), {}
    try:
        yield
    finally:
        kernel.configs, kernel.cache = saved, saved_cache


def _assert_close(pairs: Pairs, tolerance: float, what: str) -> None:
    for got, expected in pairs:
        assert got.dtype == expected.dtype and got.shape == expected.shape, what
        assert bool(torch.isfinite(got).all()), what
        scale = float(expected.abs().max())
        torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance * scale, msg=lambda m: f"{what}: {m}")


CONFIG_CASES = [(name, i) for name in CALLS for i in range(len(KERNELS[name].configs))]


def test_every_kernel_has_a_call_that_launches_it():
    assert set(KERNELS) == set(CALLS)


@pytest.mark.parametrize("name, index", CONFIG_CASES, ids=[f"{n}-{i}" for n, i in CONFIG_CASES])
def test_every_autotune_configuration_in_bfloat16(name, index):
    kernel = KERNELS[name]
    config = kernel.configs[index]  # read before pinning: inside, the kernel's list holds this one configuration
    with pinned(kernel, [config]):
        _assert_close(CALLS[name](torch.bfloat16, torch.bfloat16), TOLERANCE["bfloat16"], f"{name} {config}")


@pytest.mark.parametrize("slots", [1, 3])
def test_persistent_fused_programs_walking_several_units(monkeypatch, slots):
    """Every persistent configuration of the fused kernel with the device shrunk to 1 or 3 slots,
    so each program walks several (slice, tile) units; with more slices than the batch needs."""
    from attent_kernels import _cost

    monkeypatch.setattr(_cost, "SM_COUNT", slots)
    monkeypatch.setattr(_cost, "RESIDENT_PROGRAMS", 1)
    monkeypatch.setattr(_cost, "TARGET_PROGRAMS", 10_000)
    kernel = KERNELS["_weight_grad_and_norm_kernel"]
    for config in [c for c in kernel.configs if c.kwargs["PERSISTENT"]]:
        with pinned(kernel, [config]):
            _assert_close(_fused(torch.bfloat16, torch.bfloat16), TOLERANCE["bfloat16"], f"persistent {config}")


@pytest.mark.parametrize("policy", list(DTYPES))
@pytest.mark.parametrize("name", list(CALLS))
def test_dtype_policy_at_its_documented_tolerance(name, policy):
    first, second, allow_tf32 = DTYPES[policy]
    kernel = KERNELS[name]
    with pinned(kernel, kernel.configs[:1]), tf32_allowed(allow_tf32):
        _assert_close(CALLS[name](first, second), TOLERANCE[policy], f"{name} {policy}")


def test_split_kernels_are_bitwise_reproducible():
    x, g = _randn(5, T, 768, dtype=torch.bfloat16), _randn(5, T, 768, dtype=torch.bfloat16)
    first = ak.linear_weight_grad_and_norm_sq(x, g, path="fused")
    again = ak.linear_weight_grad_and_norm_sq(x, g, path="fused")
    assert linear_triton.batch_slices(5, 768, 768)[1] > 1
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    norms = [ak.linear_grad_norm_sq(x, g, path="ghost") for _ in range(2)]
    assert torch.equal(norms[0], norms[1])
    hidden, weight, targets = _randn(N, 96, dtype=torch.bfloat16), _randn(V, 96, dtype=torch.bfloat16), _targets()
    scores = [ak.linear_cross_entropy_scores(hidden, weight, targets) for _ in range(2)]
    assert torch.equal(scores[0].loss, scores[1].loss) and torch.equal(scores[0].fgrad_sq, scores[1].fgrad_sq)


@pytest.mark.parametrize("policy", list(DTYPES))
def test_separate_weight_gradient_rounds_like_the_fused_kernel(policy):
    """The separate path (cuBLAS GEMM with a float32 output, then the norm kernels) against the
    reference at the policy's tolerance, and against the fused kernel to rounding: both round
    the operands the same way."""
    first, second, allow_tf32 = DTYPES[policy]
    x, g, mask = _randn(B, T, D, dtype=first), _randn(B, T, P, dtype=second), _mask(B, T)
    with tf32_allowed(allow_tf32):
        separate = ak.linear_weight_grad_and_norm_sq(x, g, mask=mask, path="separate")
        fused = ak.linear_weight_grad_and_norm_sq(x, g, mask=mask, path="fused")
        reference = ak.linear_weight_grad_and_norm_sq(x, g, mask=mask, backend="reference")
    _assert_close(list(zip(separate, reference)), TOLERANCE[policy], f"separate {policy}")
    if not allow_tf32:
        _assert_close(list(zip(separate, fused)), 1e-4, f"separate against fused {policy}")
