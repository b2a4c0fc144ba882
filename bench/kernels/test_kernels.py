"""Kernel microbenchmarks: every attent_kernels op against its reference, its Triton kernel (on
CUDA), per-example gradients from torch.func, Opacus's hooks, the weight-gradient GEMM and plain
PyTorch: timed by pytest-benchmark on a CPU, by triton.testing.do_bench (CUDA events, L2 flushed)
on CUDA; the path the call took and the autotuned configuration are recorded.

Run through ``attent bench kernels`` (one table and a JSON record), or directly:
``python -m pytest bench/kernels --kernel-set quick``. Before a case is timed its results are
checked against the reference backend's, so every figure is for a correct computation.
"""
from __future__ import annotations

import torch

from bench.kernels._cases import Case, Results, build, chosen_path, reference_results, work
from bench.kernels._memory import peak_extra_bytes
from bench.kernels._timing import do_bench_stats, launched_configs


def _tolerance(case: Case) -> float:
    """bfloat16 baselines compute (and round) in bfloat16; on CUDA float32 matmuls may use tf32."""
    if case.dtype == "bfloat16":
        return 5e-2
    return 1e-2 if case.device.startswith("cuda") else 1e-3


def assert_agrees(results: Results, expected: Results, case: Case) -> None:
    """Every result the reference also returns agrees with it (the gemm yardstick of a norm op
    returns only the weight gradient, which the norm's reference does not)."""
    rtol = _tolerance(case)
    for name in results.keys() & expected.keys():
        value = results[name]
        want = expected[name].float()
        torch.testing.assert_close(value.float(), want, rtol=rtol, atol=rtol * float(want.abs().max()),
                                   msg=lambda m, name=name: f"{case.id} {name}: {m}")


def test_kernel(benchmark, case: Case) -> None:
    run = build(case)
    on_cuda = case.device.startswith("cuda")
    if on_cuda:
        results, config = launched_configs(run.call)
    else:
        results, config = run.call(), "-"
    assert_agrees(results, reference_results(case, run.inputs), case)
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
        path=chosen_path(case),
        config=config,
    )
    if on_cuda:
        # CUDA: do_bench (CUDA events, L2 flushed) times the call; pytest-benchmark runs it once.
        benchmark.extra_info["cuda_time_s"] = do_bench_stats(run.call)
        benchmark.pedantic(run.call, rounds=1, iterations=1)
    else:
        benchmark(run.call)
