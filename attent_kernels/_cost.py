"""Cost model of the Triton kernels on a GPU: which kernel (path) a call runs, and how finely a
call is split so that enough programs fill the device.

A kernel's predicted time is the waves in which its grid's programs run
(``ceil(programs / (SM_COUNT * RESIDENT_PROGRAMS))``) times each program's time,
``work / RATE + PROGRAM_S``, its work the flops it does with its operands padded to whole tiles: a
grid too small to fill the device, tiles padded past the data and each program's fixed cost all
count. The ghost kernels do half of the Gram products (the block pairs sb <= tb), and that is
what is counted. The fused weight-gradient kernel also pays ``FUSED_EXAMPLE_S`` per example a
program walks (each example ends in a wait for its last dot, a square-sum and a running-sum update;
in the kernel the record measured, its pipeline also drained and refilled there, which the
one-loop kernel no longer does: the constant is to be refitted) and ``FUSED_SLICE_S`` per element of the
sum of its batch slices; cuBLAS's weight-gradient GEMM is ``flops / GEMM_RATE + GEMM_LAUNCH_S``.

The constants are fitted to an H200 record of ``bench/gpu/run.py`` (bfloat16, 2026-12-04) by
``bench/gpu/fit_cost.py``, whose output, ``bench/results/cost_fit_h200.json``, holds them with
every row's prediction and every decision; a test keeps the two equal. On that record ``auto``
picks the measured fastest path at every shape or within the regret the fit reports. The gradient
Gram's "materialize" route never won there (6.6x slower than the pair kernel at ViT-B/16), so
its ``auto`` always runs the pair kernel.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator, Sequence

# Streaming multiprocessors of an H100 / H200 SXM (the device's count).
SM_COUNT = 132
# The constants below are bench/gpu/fit_cost.py's fit of the H200 record (see the docstring).
# Programs of a tile kernel resident on one SM at a time: the value in 1..4 that fits best.
RESIDENT_PROGRAMS = 1
# Tiles the autotuner chose most often in the record.
PAIR_BLOCK_T = 64
FEATURE_BLOCK = 128
FEATURE_BLOCK_T = 64
# Per-slot flop rates and fixed costs (seconds) of each kernel.
GEMM_RATE = 7.52e+14
GEMM_LAUNCH_S = 1.26e-05
GHOST_RATE = 3.31e+12
GHOST_PROGRAM_S = 8.53e-06
DIRECT_RATE = 3.78e+12
DIRECT_PROGRAM_S = 7.37e-07
FUSED_RATE = 3.38e+12
FUSED_EXAMPLE_S = 8.25e-07
FUSED_SLICE_S = 3.35e-12
EMBEDDING_PAIR_RATE = 2.53e+12
SORT_S = 1.1e-07
# Programs a split call aims for (the vocabulary split of cross-entropy, the batch slices of the
# fused weight gradient): four per SM, a policy, not a measurement.
TARGET_PROGRAMS = 4 * SM_COUNT


def _slots() -> int:
    return SM_COUNT * RESIDENT_PROGRAMS


@contextlib.contextmanager
def constants(**values: float) -> Iterator[None]:
    """The model with some constants replaced while open (``bench/gpu/fit_cost.py`` fits them)."""
    unknown = sorted(set(values) - set(globals()))
    if unknown:
        raise ValueError(f"unknown cost-model constants {unknown}")
    saved = {name: globals()[name] for name in values}
    globals().update(values)
    try:
        yield
    finally:
        globals().update(saved)


def _blocks(n: int, block: int) -> int:
    return max(1, math.ceil(n / block))


def _padded(n: int, block: int) -> int:
    return _blocks(n, block) * block


def persistent_programs(units: int) -> int:
    """Programs of a persistent launch of ``units`` work units: as many as the device holds at
    once (its slots), at most one per unit."""
    return max(1, min(units, _slots()))


def waves(programs: int) -> int:
    return math.ceil(max(programs, 1) / _slots())


def _pairs(T: int) -> int:
    n = _blocks(T, PAIR_BLOCK_T)
    return n * (n + 1) // 2


# Each kernel's terms: the model's time is their dot product with the kernel's coefficients
# (1 / RATE for work, seconds for the others), as ``predict`` computes and the fit fits.


def ghost_terms(B: int, T: int, d: int, widths: Sequence[int]) -> tuple[float, float]:
    """(work, waves) of the ghost kernel: one program per (example, block pair sb <= tb) forms an
    x Gram tile over d and a g Gram tile over each p_k."""
    n = waves(B * _pairs(T))
    per_program = 2.0 * PAIR_BLOCK_T**2 * (_padded(d, PAIR_BLOCK_T) + sum(_padded(p, PAIR_BLOCK_T) for p in widths))
    return n * per_program, float(n)


def direct_terms(B: int, T: int, d: int, widths: Sequence[int]) -> tuple[float, float]:
    """(work, waves) of the direct kernel, one launch per layer: one program per (example, p tile,
    d tile) accumulates its tile of g^T x over the sequence padded to FEATURE_BLOCK_T rows."""
    work, count = 0.0, 0.0
    for p in widths:
        n = waves(B * _blocks(p, FEATURE_BLOCK) * _blocks(d, FEATURE_BLOCK))
        work += n * 2.0 * FEATURE_BLOCK**2 * _padded(T, FEATURE_BLOCK_T)
        count += n
    return work, count


def fused_slices(B: int, d: int, p: int) -> int:
    """Batch slices of the fused kernel: enough (tile, slice) programs for TARGET_PROGRAMS, at most
    one per example."""
    return splits(_blocks(p, FEATURE_BLOCK) * _blocks(d, FEATURE_BLOCK), B)


def fused_terms(B: int, T: int, d: int, p: int, slices: int | None = None) -> tuple[float, float, float]:
    """(work, example walks, slice-sum elements) of the fused weight-gradient kernel: one program
    per (slice, p tile, d tile) walks its slice's examples, each padded to FEATURE_BLOCK_T rows;
    the slices' gradients are then summed."""
    slices = fused_slices(B, d, p) if slices is None else slices
    n = waves(slices * _blocks(p, FEATURE_BLOCK) * _blocks(d, FEATURE_BLOCK))
    examples = math.ceil(B / slices)
    return (n * examples * 2.0 * FEATURE_BLOCK**2 * _padded(T, FEATURE_BLOCK_T), float(n * examples),
            float(slices * d * p) if slices > 1 else 0.0)


def gemm_terms(B: int, T: int, d: int, p: int) -> tuple[float, float]:
    """(flops, 1) of the weight-gradient GEMM over the B T rows through cuBLAS."""
    return 2.0 * B * T * d * p, 1.0


def embedding_pair_terms(B: int, T: int, d: int) -> tuple[float]:
    """(work,) of the embedding's pair kernel: the ghost kernel's g Gram over the block pairs."""
    return (waves(B * _pairs(T)) * 2.0 * PAIR_BLOCK_T**2 * _padded(d, PAIR_BLOCK_T),)


def embedding_sorted_terms(B: int, T: int, d: int) -> tuple[float]:
    """(id passes per slot,) of the sorted embedding kernel: each example's ids sorted, then every
    run of equal ids summed in order, both O(T log T) per example."""
    return (B * T * math.log2(max(T, 2)) / _slots(),)


_COEFFICIENTS = {
    "gemm": lambda: (1.0 / GEMM_RATE, GEMM_LAUNCH_S),
    "ghost": lambda: (1.0 / GHOST_RATE, GHOST_PROGRAM_S),
    "direct": lambda: (1.0 / DIRECT_RATE, DIRECT_PROGRAM_S),
    "fused": lambda: (1.0 / FUSED_RATE, FUSED_EXAMPLE_S, FUSED_SLICE_S),
    "embedding pairs": lambda: (1.0 / EMBEDDING_PAIR_RATE,),
    "embedding sorted": lambda: (SORT_S,),
}


def predict(kernel: str, terms: Sequence[float]) -> float:
    """Predicted seconds of ``kernel`` (a key of the model: "gemm", "ghost", "direct", "fused",
    "embedding pairs", "embedding sorted") from its terms."""
    return sum(c * t for c, t in zip(_COEFFICIENTS[kernel](), terms))


def ghost_time(B: int, T: int, d: int, widths: Sequence[int]) -> float:
    return predict("ghost", ghost_terms(B, T, d, widths))


def direct_time(B: int, T: int, d: int, widths: Sequence[int]) -> float:
    return predict("direct", direct_terms(B, T, d, widths))


def linear_path(B: int, T: int, d: int, widths: Sequence[int]) -> str:
    """The path of ``path="auto"``: "closed" (T = 1: ||x||^2 ||g||^2, no tiles at all), else the
    faster of "ghost" and "direct"."""
    if T == 1:
        return "closed"
    return "ghost" if ghost_time(B, T, d, widths) <= direct_time(B, T, d, widths) else "direct"


def fused_weight_grad_wins(B: int, T: int, d: int, p: int) -> bool:
    """Whether the fused kernel (the weight gradient and the norms in one pass) beats the separate
    computation: the weight-gradient GEMM through cuBLAS over the B T rows, then the norms on the
    path ``linear_path`` picks."""
    path = linear_path(B, T, d, [p])
    norms = 0.0 if path == "closed" else (ghost_time if path == "ghost" else direct_time)(B, T, d, [p])
    return predict("fused", fused_terms(B, T, d, p)) <= predict("gemm", gemm_terms(B, T, d, p)) + norms


def embedding_sorts(B: int, T: int, d: int) -> bool:
    """Whether the sorted embedding kernel (O(T log T) per example) beats the pair kernel (O(T^2 d)
    over the block pairs sb <= tb)."""
    return predict("embedding sorted", embedding_sorted_terms(B, T, d)) < predict("embedding pairs",
                                                                                  embedding_pair_terms(B, T, d))


def splits(work_programs: int, most: int) -> int:
    """How many slices to split a call into so that ``work_programs`` programs per slice reach
    TARGET_PROGRAMS: at least one, at most ``most``."""
    return max(1, min(most, math.ceil(TARGET_PROGRAMS / max(work_programs, 1))))


def aligned_slices(n: int, work_programs: int, align: int) -> tuple[int, int]:
    """(length, count): the range [0, n) cut into ``count`` slices of ``length``, a multiple of
    ``align`` (the largest tile, so that no tile of any configuration crosses a slice), enough
    slices for ``work_programs`` programs per slice to reach TARGET_PROGRAMS."""
    wanted = splits(work_programs, _blocks(n, align))
    length = _blocks(_blocks(n, wanted), align) * align
    return length, _blocks(n, length)
