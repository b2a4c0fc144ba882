"""GPU timing and launch records shared by the kernel benchmarks (``bench/kernels`` and
``bench/gpu``): ``triton.testing.do_bench`` statistics, and which autotuned kernels a call
launched with which configuration."""
from __future__ import annotations

import statistics
from typing import Callable

import triton
from triton.runtime.autotuner import Autotuner

from attent_kernels.embedding import _triton as embedding_triton
from attent_kernels.linear import _triton as linear_triton
from attent_kernels.loss_scores import _triton as loss_triton
from attent_kernels.norm import _triton as norm_triton

METHOD = (
    "triton.testing.do_bench: CUDA events around each repeat, the L2 cache flushed before each one; "
    "median, 20th / 80th percentiles, mean and standard deviation of the repeats"
)
KERNELS: dict[str, Autotuner] = {
    name: value
    for module in (linear_triton, embedding_triton, norm_triton, loss_triton)
    for name, value in vars(module).items()
    if isinstance(value, Autotuner)
}


def do_bench_stats(call: Callable[[], object], warmup_ms: int = 10, rep_ms: int = 40) -> dict:
    """Seconds: {median, p20, p80, min, mean, stddev, rounds} of do_bench's repeats of ``call``."""
    times = sorted(t / 1e3 for t in triton.testing.do_bench(call, warmup=warmup_ms, rep=rep_ms, return_mode="all"))
    return {
        "median": statistics.median(times),
        "p20": times[int(0.2 * (len(times) - 1))],
        "p80": times[int(0.8 * (len(times) - 1))],
        "min": times[0],
        "mean": statistics.fmean(times),
        "stddev": statistics.pstdev(times),
        "rounds": len(times),
    }


def config_label(config: triton.Config) -> str:
    blocks = " ".join(f"{name}={size}" for name, size in config.kwargs.items())
    return f"{blocks} w{config.num_warps} s{config.num_stages}"


def launched_configs(call: Callable[[], object]) -> tuple[object, str]:
    """(result of ``call``, "kernel: configuration; ..." of the autotuned kernels it launched).
    An autotuner records its configuration on every launch (``best_config``); it is cleared first."""
    for kernel in KERNELS.values():
        kernel.best_config = None
    result = call()
    chosen = [f"{name}: {config_label(k.best_config)}" for name, k in KERNELS.items() if k.best_config is not None]
    return result, "; ".join(chosen) or "-"
