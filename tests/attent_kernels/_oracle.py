"""Brute-force oracles shared by the reference-op tests.

A real module is driven by the per-example loss l_i = sum(module(input_i) * out_grad_i), whose
gradient w.r.t. the module output is exactly out_grad_i; per-example parameter gradients come
from ``torch.func.vmap(grad(...))`` over ``functional_call``, in float64 on the inputs' own values.
Nothing here calls attent_kernels.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

# Relative tolerance per input dtype. The reference ops upcast every input to float32 (float64
# stays float64) before any arithmetic, so bfloat16 inputs are held to the float32 tolerance
# against an oracle run on the same bfloat16 values upcast.
RTOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 1e-4}
DTYPES = (torch.float32, torch.float64, torch.bfloat16)


def result_dtype(*inputs: torch.Tensor) -> torch.dtype:
    """The dtype every op returns: float64 when an input is float64, else float32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in inputs) else torch.float32


def randn(gen: torch.Generator, *shape: int, dtype: torch.dtype = torch.float32, scale: float = 1.0) -> torch.Tensor:
    """Standard normal (times scale) from ``gen``, rounded to ``dtype``."""
    return (scale * torch.randn(*shape, generator=gen, dtype=torch.float64)).to(dtype)


def random_mask(gen: torch.Generator, *shape: int, empty_row: int | None = 0) -> torch.Tensor:
    """A bool mask of ``shape`` (leading dim = batch) with about a third of positions False,
    at least one True in every other row, and row ``empty_row`` (if any) all False."""
    mask = torch.rand(*shape, generator=gen) > 0.35
    mask.view(shape[0], -1)[:, 0] = True
    if empty_row is not None:
        mask[empty_row] = False
    return mask


def zero_where_masked(t: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """t (B, ..., k) with the positions where mask (B,) / (B, T) is False set to zero."""
    if mask is None:
        return t
    keep = mask.bool().reshape(*mask.shape, *([1] * (t.dim() - mask.dim())))
    return torch.where(keep, t, torch.zeros((), dtype=t.dtype))


def per_example_grads(module: nn.Module, inputs: torch.Tensor, out_grads: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-example gradients of every parameter of ``module`` for l_i = sum(module(inputs[i]) * out_grads[i]).

    Args:
        module: any module whose forward takes one batched tensor.
        inputs: (B, ...) one row per example (ids or features).
        out_grads: (B, ...) the gradient w.r.t. each example's output.

    Returns:
        name -> (B, *param.shape) per-example gradient.
    """
    params = {name: p.detach() for name, p in module.named_parameters()}

    def example_loss(params: dict[str, torch.Tensor], inp: torch.Tensor, out_grad: torch.Tensor) -> torch.Tensor:
        return (functional_call(module, params, (inp[None],)) * out_grad[None]).sum()

    return vmap(grad(example_loss), in_dims=(None, 0, 0))(params, inputs, out_grads)


def flat_grads(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, P): each example's gradients of all parameters, flattened and concatenated."""
    return torch.cat([g.flatten(1) for g in grads.values()], dim=1)


def sq_norms(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B,): each example's squared gradient norm over all parameters."""
    return flat_grads(grads).square().sum(dim=1)


def assert_matches(actual: torch.Tensor, expected: torch.Tensor, input_dtype: torch.dtype) -> None:
    """actual equals the float64 oracle to the tolerance of ``input_dtype``, relative to the
    largest expected magnitude, and has the dtype the ops promise."""
    rtol = RTOL[input_dtype]
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=rtol * scale + 1e-30)


def assert_nan_only_at(result: torch.Tensor, clean: torch.Tensor, bad: int) -> None:
    """Row ``bad`` of result (and column ``bad`` too for a square B x B result) is NaN; every
    other entry equals the result on clean input."""
    nan_rows = torch.zeros_like(result, dtype=torch.bool)
    nan_rows[bad] = True
    if result.dim() == 2 and result.shape[0] == result.shape[1]:
        nan_rows[:, bad] = True
    assert bool(result[nan_rows].isnan().all()), "the example with a NaN input must score NaN"
    torch.testing.assert_close(result[~nan_rows], clean[~nan_rows], rtol=1e-6, atol=0.0)
