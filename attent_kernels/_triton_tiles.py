"""Tile helpers shared by the Triton kernels of every op family (``attent_kernels/<family>/_triton.py``):
the dtype choices of a call, the autotuning configurations, the partial-sum buffers and launch
grids on the host, and the masked row and tile loads, Gram tiles and tile orders on the device.

Conventions the families' kernels keep with these helpers:
- Tiles are loaded with ``tl.load(..., mask=row_valid & col_in_bounds, other=0)``: a padded or
  out-of-range position is never read, so a NaN there cannot leak into any sum.
- The dtype policy of ``tl.dot`` (``dot_types``): operands are rounded to one operand dtype, and
  accumulation is float32 (float64 when an input is float64, ``accum_dtype``):
  * any bfloat16 / float16 input: the 16-bit type (bfloat16 when both occur), so a mixed call
    as under autocast (float32 x, bfloat16 g) runs a 16-bit tensor-core dot; its float32 operand
    is rounded to 16 bits, a relative error of about 2^-8 per element (results within about 1e-2
    of the float32 reference);
  * float32 only: a float32 dot in TF32 when ``torch.backends.cuda.matmul.allow_tf32`` is on
    (operands rounded to 10 mantissa bits, results within about 1e-3), IEEE otherwise (to
    rounding);
  * float64: an IEEE float64 dot.
  Products of 16-bit operands are exact in float32: only the summation order differs from the
  reference. The interpreter's ``tl.dot`` cannot multiply bfloat16 (numpy has no such type), so
  under ``TRITON_INTERPRET=1`` tiles are rounded to bfloat16 and then multiplied in float32: the
  same products (the interpreter rounds towards zero where a GPU rounds to nearest).
- Per-example results are written as partial sums to small buffers, one slot per program, and
  reduced with ``torch.sum``: deterministic, bitwise reproducible, no atomics.
- Grids are one-dimensional with the example index slowest (program id = example * tiles +
  tile), so the programs resident together work on one example's tiles and share its rows in
  L2, and a batch may exceed the 65535 programs of a grid's second and third axes; feature
  tiles run in grouped (swizzled) order.
- Block sizes are autotuned on GPU (``autotune``: the results kept on disk across processes),
  keyed on the sizes rounded up to powers of two (one tuning
  per shape family, so a new sequence length within the family does not re-tune); under the
  interpreter one small configuration is used, because autotuning there is far too slow. The
  choice is made when a family's module is imported.
"""
from __future__ import annotations

import contextlib
import inspect
from typing import Any, Callable, Iterator, NamedTuple

import torch
import triton
import triton.language as tl

from ._checks import accum_dtype
from ._dispatch import interpreter_on

TL_DTYPES = {
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
    torch.float32: tl.float32,
    torch.float64: tl.float64,
}

# Rows of feature tiles that run next to each other in the grouped tile order (``grouped_tile``).
TILE_GROUP = tl.constexpr(8)


# ---------------------------------------------------------------------------------------------
# Host side
# ---------------------------------------------------------------------------------------------


# Whether the installed Triton can keep tuning results on disk (``autotune(cache_results=)``).
CACHES_TUNING = "cache_results" in inspect.signature(triton.autotune).parameters


def autotune(**kwargs: Any) -> Callable[[Any], Any]:
    """``triton.autotune`` with its tuning results kept on disk (``cache_results``, where the
    installed Triton has it): a new process reuses earlier processes' timings instead of
    benchmarking every configuration again, as Triton already reuses their compiled kernels."""
    if CACHES_TUNING:
        kwargs.setdefault("cache_results", True)
    return triton.autotune(**kwargs)


def autotune_configs(
    interpreted: dict[str, int], tuned: list[tuple[dict[str, int], int, int]]
) -> list[triton.Config]:
    """One small configuration under the interpreter; on GPU the tuning list of (blocks,
    num_warps, num_stages)."""
    if interpreter_on():
        return [triton.Config(interpreted, num_warps=1, num_stages=1)]
    return [triton.Config(blocks, num_warps=warps, num_stages=stages) for blocks, warps, stages in tuned]


# (t, s) sequence tiling of the kernels that form T x T Gram tiles: the linear ghost norm and
# gradient Gram, the embedding norm.
PAIR_CONFIGS = autotune_configs(
    {"BLOCK_T": 16, "BLOCK_K": 16},
    [
        ({"BLOCK_T": 32, "BLOCK_K": 64}, 4, 3),
        ({"BLOCK_T": 64, "BLOCK_K": 32}, 4, 3),
        ({"BLOCK_T": 64, "BLOCK_K": 64}, 4, 3),
        ({"BLOCK_T": 128, "BLOCK_K": 32}, 8, 3),
        ({"BLOCK_T": 128, "BLOCK_K": 64}, 8, 2),
    ],
)


# Largest dynamic shared memory one block may use on sm_90 (CUDA programming guide, "Technical
# Specifications per Compute Capability"): 227 KiB.
SHARED_MEMORY_BYTES = 227 * 1024


def shared_memory_pruning(operand_elements: Callable[[dict[str, int]], int]) -> dict[str, Any]:
    """``prune_configs_by`` of a dot kernel's autotuner: before tuning, drop the configurations
    whose pipelined operand tiles, num_stages * operand_elements(blocks) elements of the call's
    OPERAND dtype, exceed SHARED_MEMORY_BYTES. That bounds the compiler's shared allocation (a
    launch above the limit fails), so float64 and TF32 calls skip their largest tiles; every
    list keeps tiles that fit for every dtype (``bench/tools/compile_check.py`` checks it)."""

    def estimate(config: triton.Config, element_bytes: int) -> int:
        return config.num_stages * operand_elements(config.kwargs) * element_bytes

    def prune(configs: list[triton.Config], named_args: dict[str, Any], **kwargs: Any) -> list[triton.Config]:
        element_bytes = kwargs["OPERAND"].primitive_bitwidth // 8
        return [c for c in configs if estimate(c, element_bytes) <= SHARED_MEMORY_BYTES]

    return {"early_config_prune": prune}


# Operand elements of one pipeline stage of the pair kernels: two row blocks of BLOCK_K features.
PAIR_PRUNING = shared_memory_pruning(lambda b: 2 * b["BLOCK_T"] * b["BLOCK_K"])


def tune_key(n: int) -> int:
    """Autotuning key of a size: rounded up to a power of two."""
    return triton.next_power_of_2(max(1, n))


def block_count(n: int, block: int) -> int:
    """Blocks of ``block`` covering n, at least one: an empty dimension still gets a program,
    which writes its zero."""
    return triton.cdiv(max(n, 1), block)


def pair_count(n_blocks: int) -> int:
    """Block pairs (tb, sb) with sb <= tb of n_blocks row blocks: the lower triangle."""
    return n_blocks * (n_blocks + 1) // 2


def smallest_block(configs: list[triton.Config], block: str) -> int:
    return min(c.kwargs[block] for c in configs)


def largest_block(configs: list[triton.Config], block: str) -> int:
    return max(c.kwargs[block] for c in configs)


def pair_grid(T: int, B: int) -> Callable[[dict[str, Any]], tuple[int]]:
    """Grid of a (row block, column block) pair kernel: the lower-triangle pairs of the sequence
    blocks of every example, the example slowest (``example_pair`` decodes a program id)."""
    return lambda meta: (pair_count(block_count(T, meta["BLOCK_T"])) * B,)


def pair_slots(T: int, configs: list[triton.Config]) -> int:
    """Partial-sum slots of a pair kernel: its pairs under the smallest BLOCK_T of the configurations."""
    return pair_count(block_count(T, smallest_block(configs, "BLOCK_T")))


def feature_tiles(p: int, d: int, meta: dict[str, Any]) -> int:
    return block_count(p, meta["BLOCK_P"]) * block_count(d, meta["BLOCK_D"])


def feature_grid(p: int, d: int, slow: int) -> Callable[[dict[str, Any]], tuple[int]]:
    """Grid of a (p, d) feature-tile kernel: the tiles (in grouped order) of each of ``slow``
    examples or batch slices, those slowest."""
    return lambda meta: (feature_tiles(p, d, meta) * slow,)


def column_grid(d: int, B: int) -> Callable[[dict[str, Any]], tuple[int]]:
    """Grid of a kernel with one program per (example, BLOCK_D feature tile), the example slowest."""
    return lambda meta: (block_count(d, meta["BLOCK_D"]) * B,)


def feature_slots(p: int, d: int, configs: list[triton.Config]) -> int:
    """Partial-sum slots of a feature-tile kernel: its tiles under the smallest blocks."""
    smallest = {name: smallest_block(configs, name) for name in ("BLOCK_P", "BLOCK_D")}
    return feature_tiles(p, d, smallest)


def partials(rows: int | tuple[int, ...], slots: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Zeroed (*rows, slots) buffer of per-program partial sums (rows: B, or (K, B) for one row
    per layer); slots no configuration's grid reaches stay zero."""
    return torch.zeros(*((rows,) if isinstance(rows, int) else rows), slots, dtype=dtype, device=device)


class DotTypes(NamedTuple):
    """The tl.dot policy of a call (module docstring): OPERAND, what tiles are rounded to; DOT,
    what tl.dot multiplies (OPERAND, except float32 for bfloat16 under the interpreter); ACC, the
    accumulator; PRECISION, tl.dot's input_precision for float32 operands."""

    OPERAND: tl.dtype
    DOT: tl.dtype
    ACC: tl.dtype
    PRECISION: str


def operand_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """The dtype the operands of a call's products are rounded to (module docstring): float64 if
    any input is float64, else the 16-bit type of any 16-bit input (bfloat16 when both occur),
    else float32."""
    dtypes = {t.dtype for t in tensors if t is not None and t.is_floating_point()}
    for dtype in (torch.float64, torch.bfloat16, torch.float16):
        if dtype in dtypes:
            return dtype
    return torch.float32


def dot_types(*tensors: torch.Tensor | None) -> DotTypes:
    """The dtype policy of a call on these tensors, as constexpr keyword arguments of a kernel."""
    operand = operand_dtype(*tensors)
    dot = torch.float32 if operand == torch.bfloat16 and interpreter_on() else operand
    tf32 = operand == torch.float32 and torch.backends.cuda.matmul.allow_tf32
    return DotTypes(TL_DTYPES[operand], TL_DTYPES[dot], TL_DTYPES[accum_dtype(*tensors)], "tf32" if tf32 else "ieee")


@contextlib.contextmanager
def tf32_allowed(allowed: bool) -> Iterator[None]:
    """``torch.backends.cuda.matmul.allow_tf32``, which ``dot_types`` follows for float32 calls,
    set to ``allowed`` while open."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def mask_args(mask: torch.Tensor | None, stand_in: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(pointer, batch stride, position stride) of a bool mask, as an int32 copy (B * T words; the
    float64 tl.dot lowering of Triton 3.8 rejects tiles masked through a byte load); a stand-in
    pointer, never read, when there is no mask."""
    if mask is None:
        return stand_in, 0, 0
    as_int = mask.to(torch.int32)
    return as_int, as_int.stride(0), as_int.stride(1)


# ---------------------------------------------------------------------------------------------
# Device side
# ---------------------------------------------------------------------------------------------


@triton.jit
def rows_valid(mask_base, stride_mt, rows, T, HAS_MASK: tl.constexpr):
    """(BLOCK,) bool: row inside the sequence and, with a mask, not padded."""
    valid = rows < T
    if HAS_MASK:
        valid = valid & (tl.load(mask_base + rows.to(tl.int64) * stride_mt, mask=valid, other=0) != 0)
    return valid


@triton.jit
def load_tile(base, stride_row, stride_col, rows, valid, cols, n_cols, OPERAND: tl.constexpr, DOT: tl.constexpr):
    """(len(rows), len(cols)) tile rounded to OPERAND, as DOT; invalid rows and columns out of
    range read as 0."""
    ptrs = base + rows.to(tl.int64)[:, None] * stride_row + cols.to(tl.int64)[None, :] * stride_col
    tile = tl.load(ptrs, mask=valid[:, None] & (cols[None, :] < n_cols), other=0.0)
    return tile.to(OPERAND).to(DOT)


@triton.jit
def gram_tile(
    acc,
    a_base, a_stride_row, a_stride_col, a_rows, a_valid,
    b_base, b_stride_row, b_stride_col, b_rows, b_valid,
    n_cols,
    BLOCK_K: tl.constexpr, OPERAND: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr,
):
    """acc + A[a_rows] @ B[b_rows]^T: the (len(a_rows), len(b_rows)) tile of row inner products,
    summed over the n_cols features in chunks of BLOCK_K."""
    for c0 in range(0, n_cols, BLOCK_K):
        cols = c0 + tl.arange(0, BLOCK_K)
        a = load_tile(a_base, a_stride_row, a_stride_col, a_rows, a_valid, cols, n_cols, OPERAND, DOT)
        b = load_tile(b_base, b_stride_row, b_stride_col, b_rows, b_valid, cols, n_cols, OPERAND, DOT)
        acc = tl.dot(a, tl.trans(b), acc, input_precision=PRECISION)
    return acc


@triton.jit
def example_pair(pid, T, BLOCK_T: tl.constexpr):
    """(example, pair index, tb, sb) of program pid of a ``pair_grid``."""
    n_blocks = tl.maximum(tl.cdiv(T, BLOCK_T), 1)
    n_pairs = n_blocks * (n_blocks + 1) // 2
    pair = pid % n_pairs
    tb, sb = block_pair(pair)
    return (pid // n_pairs).to(tl.int64), pair, tb, sb


@triton.jit
def example_column(pid, d, BLOCK_D: tl.constexpr):
    """(example, feature tile) of program pid of a ``column_grid``."""
    n_tiles = tl.maximum(tl.cdiv(d, BLOCK_D), 1)
    return (pid // n_tiles).to(tl.int64), pid % n_tiles


@triton.jit
def block_pair(k):
    """The k-th (tb, sb) block pair with sb <= tb, in row-major order of the lower triangle:
    tb = floor((sqrt(8 k + 1) - 1) / 2), corrected by one where float32 rounding misses (from
    a few thousand row blocks on). Exact while tb (tb + 1) fits int32: below 46341 row blocks."""
    tb = ((tl.sqrt(8.0 * k.to(tl.float32) + 1.0) - 1.0) * 0.5).to(tl.int32)
    tb = tl.where(tb * (tb + 1) // 2 > k, tb - 1, tb)
    tb = tl.where((tb + 1) * (tb + 2) // 2 <= k, tb + 1, tb)
    return tb, k - tb * (tb + 1) // 2


@triton.jit
def grouped_tile(pid, n_rows, n_cols, GROUP: tl.constexpr):
    """(row tile, column tile) of program pid in grouped order: GROUP row tiles sweep the column
    tiles together, so neighbouring programs share operand tiles in L2."""
    per_group = GROUP * n_cols
    first_row = (pid // per_group) * GROUP
    rows_here = tl.minimum(n_rows - first_row, GROUP)
    within = pid % per_group
    return first_row + within % rows_here, within // rows_here
