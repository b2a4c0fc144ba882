"""The device's roofline, measured in the same run as the benchmarks: the bandwidth of a large
device copy and the throughput of a large matmul per dtype, each the best of a few repeats."""
from __future__ import annotations

import time
from typing import Callable

import torch

from bench.kernels._timing import do_bench_stats

METHOD = (
    "copy: dst.copy_(src) of a float32 buffer, bandwidth = 2 * bytes / time; "
    "matmul: a @ b of square n x n matrices per dtype, 2 n^3 / time; the fastest repeat: "
    "on CUDA of do_bench (CUDA events, L2 flushed), on a CPU of 10 host-timed calls after a warm-up"
)


def _best_seconds(fn: Callable[[], object], device: torch.device, repeats: int = 10) -> float:
    if device.type == "cuda":
        return do_bench_stats(fn)["min"]
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure(device: torch.device, dtypes: list[str], quick: bool) -> dict:
    """{"copy_GBps", "matmul_TFLOPs": {dtype: ...}, "copy_bytes", "matmul_n", "method"}."""
    on_cuda = device.type == "cuda"
    copy_bytes = (1 << 30 if on_cuda else 1 << 27) >> (4 if quick else 0)
    n = (8192 if on_cuda else 2048) >> (2 if quick else 0)
    src = torch.empty(copy_bytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    copy_seconds = _best_seconds(lambda dst=dst, src=src: dst.copy_(src), device)
    del src, dst
    matmul = {}
    for name in dtypes:
        dtype = getattr(torch, name)
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        matmul[name] = 2.0 * n**3 / _best_seconds(lambda a=a, b=b: a @ b, device) / 1e12
    return {
        "copy_GBps": 2.0 * copy_bytes / copy_seconds / 1e9,
        "matmul_TFLOPs": matmul,
        "copy_bytes": copy_bytes,
        "matmul_n": n,
        "method": METHOD,
    }
