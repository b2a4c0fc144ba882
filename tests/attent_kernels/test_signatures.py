"""One signature convention across the public ops: ``backend=`` everywhere (default "auto"),
``bias`` off by default wherever it is a flag, and one accumulation-dtype rule."""
from __future__ import annotations

import inspect

import pytest
import torch

import attent_kernels as ak
from attent_kernels import accum_dtype

OPS = [getattr(ak, name) for name in ak.__all__ if name[0].islower() and name not in ("accum_dtype", "uses_triton")]  # rules, not ops


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.__name__)
def test_every_op_takes_a_keyword_backend_defaulting_to_auto(op):
    parameter = inspect.signature(op).parameters["backend"]
    assert parameter.kind is inspect.Parameter.KEYWORD_ONLY and parameter.default == "auto"


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.__name__)
def test_a_bias_flag_is_off_by_default(op):
    parameter = inspect.signature(op).parameters.get("bias")
    if parameter is not None and isinstance(parameter.default, bool):
        assert parameter.default is False and parameter.kind is inspect.Parameter.KEYWORD_ONLY


def test_norm_and_linear_count_the_bias_only_when_asked():
    gen = torch.Generator().manual_seed(0)
    x, g = torch.randn(3, 5, 4, generator=gen), torch.randn(3, 5, 4, generator=gen)
    bias_term = g.sum(1).square().sum(1)
    for op in (ak.norm_grad_norm_sq, ak.linear_grad_norm_sq):
        torch.testing.assert_close(op(x, g), op(x, g, bias=False))
        torch.testing.assert_close(op(x, g, bias=True) - op(x, g), bias_term)


def test_mse_scores_rejects_an_unknown_backend_and_runs_on_every_known_one():
    pred, target = torch.randn(2, 3), torch.randn(2, 3)
    with pytest.raises(ValueError, match=r"mse_scores: backend must be one of .*'gpu'"):
        ak.mse_scores(pred, target, backend="gpu")
    expected = ak.mse_scores(pred, target)
    for backend in ("reference", "triton"):
        assert torch.equal(ak.mse_scores(pred, target, backend=backend).loss, expected.loss)


def test_accumulation_dtype_rule():
    half, single, double = torch.ones(1, dtype=torch.bfloat16), torch.ones(1), torch.ones(1, dtype=torch.float64)
    assert accum_dtype(half) == accum_dtype(half, single, None) == torch.float32
    assert accum_dtype(half, double) == accum_dtype(None, double) == torch.float64
