"""Backend choice: CUDA tensors go to Triton, CPU tensors to the reference, explicit choices obeyed."""
from __future__ import annotations

import pytest
import torch

import attent_kernels as ak
import attent_kernels._dispatch as dispatch
import attent_kernels.linear._reference as linear_reference
from attent_kernels import linear_grad_norm_sq, norm_grad_norm_sq

FAMILIES = ("linear", "embedding", "norm", "loss_scores")


def test_reference_and_auto_on_cpu_pick_the_reference_module():
    x = torch.ones(2, 3)
    for family in FAMILIES:
        package = f"attent_kernels.{family}"
        for backend in ("reference", "auto"):
            assert dispatch.implementation("op", backend, package, x, None).__name__ == f"{package}._reference"


def test_auto_uses_triton_only_when_every_tensor_is_on_cuda(monkeypatch):
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    cpu = torch.ones(2)
    assert not dispatch.use_triton("op", "auto", cpu, None)
    assert not dispatch.use_triton("op", "reference", cpu)


def test_the_public_predicate_says_what_an_op_would_run(monkeypatch):
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    cpu = torch.ones(2)
    assert not ak.uses_triton(cpu, None) and not ak.uses_triton(cpu, backend="reference")
    assert ak.uses_triton(cpu, backend="triton")


def test_auto_without_triton_stays_on_the_reference(monkeypatch):
    monkeypatch.setattr(dispatch, "triton_available", lambda: False)
    assert not dispatch.use_triton("op", "auto", torch.ones(2))


def test_explicit_triton_on_cpu_runs_under_the_interpreter(monkeypatch):
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert dispatch.use_triton("op", "triton", torch.ones(2))


def test_explicit_triton_on_cpu_without_the_interpreter_says_how_to_enable_it(monkeypatch):
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="my_op: .*TRITON_INTERPRET=1"):
        dispatch.use_triton("my_op", "triton", torch.ones(2))


def test_explicit_triton_without_the_package_says_so(monkeypatch):
    monkeypatch.setattr(dispatch, "triton_available", lambda: False)
    with pytest.raises(RuntimeError, match="my_op: backend='triton' needs the triton package"):
        dispatch.use_triton("my_op", "triton", torch.ones(2))


def test_unknown_backend_is_a_value_error_naming_it():
    with pytest.raises(ValueError, match=r"my_op: backend must be one of .*'gpu'"):
        dispatch.use_triton("my_op", "gpu", torch.ones(2))


def test_public_ops_on_cpu_run_the_reference_for_auto_and_reference(monkeypatch):
    calls = []
    original = linear_reference.grouped_linear_grad_norm_sq
    monkeypatch.setattr(linear_reference, "grouped_linear_grad_norm_sq", lambda *a: calls.append(1) or original(*a))
    gen = torch.Generator().manual_seed(0)
    x, g = torch.randn(3, 5, 4, generator=gen), torch.randn(3, 5, 6, generator=gen)
    auto = linear_grad_norm_sq(x, g)
    reference = linear_grad_norm_sq(x, g, backend="reference")
    assert len(calls) == 2
    assert torch.equal(auto, reference)


def test_public_ops_pass_the_backend_through(monkeypatch):
    monkeypatch.setattr(dispatch, "triton_available", lambda: False)
    with pytest.raises(RuntimeError, match="norm_grad_norm_sq: backend='triton' needs the triton package"):
        norm_grad_norm_sq(torch.ones(2, 3), torch.ones(2, 3), backend="triton")
