"""Kernel microbenchmarks: every attent_kernels op against its reference, its Triton kernel (on
CUDA), per-example gradients from torch.func, Opacus's hooks and plain PyTorch, with pytest-benchmark.

Run through ``attent bench kernels`` (one table and a JSON record), or directly:
``python -m pytest bench/kernels --kernel-set quick``. Before a case is timed its results are
checked against the reference backend's, so every figure is for a correct computation.
"""
from __future__ import annotations

import torch

from bench.kernels._cases import Call, Case, Results, build, reference_results, work
from bench.kernels._memory import peak_extra_bytes


def _tolerance(case: Case) -> float:
    """bfloat16 baselines compute (and round) in bfloat16; on CUDA float32 matmuls may use tf32."""
    if case.dtype == "bfloat16":
        return 5e-2
    return 1e-2 if case.device.startswith("cuda") else 1e-3


def assert_agrees(results: Results, expected: Results, case: Case) -> None:
    rtol = _tolerance(case)
    for name, value in results.items():
        want = expected[name].float()
        torch.testing.assert_close(value.float(), want, rtol=rtol, atol=rtol * float(want.abs().max()), msg=lambda m: f"{case.id} {name}: {m}")


def _synchronized(call: Call) -> Call:
    def timed() -> Results:
        results = call()
        torch.cuda.synchronize()
        return results

    return timed


def test_kernel(benchmark, case: Case) -> None:
    run = build(case)
    assert_agrees(run.call(), reference_results(case, run.inputs), case)
    flops, nbytes = work(case)
    benchmark.group = f"{case.op} {case.shape_label} {case.dtype}"
    benchmark.extra_info.update(
        case=case.id,
        op=case.op,
        method=case.method_label,
        sizes=case.size,
        dtype=case.dtype,
        device=case.device,
        flops=flops,
        bytes=nbytes,
        peak_extra_bytes=peak_extra_bytes(case, run),
    )
    benchmark(_synchronized(run.call) if case.device.startswith("cuda") else run.call)
