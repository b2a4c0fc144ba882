"""Offline compile check: build every Triton kernel of ``attent_kernels`` for an NVIDIA GPU on a
machine without one, and print one table of what compiled, with its resource use.

    python bench/tools/compile_check.py                      # sm_90 (H100): every kernel, config, dtype policy
    python bench/tools/compile_check.py --arch 80            # sm_80 (A100)
    python bench/tools/compile_check.py --kernel _norm_grad_norm_kernel --dtype float32

How it works:
- A stand-in Triton driver reports a CUDA target of the chosen compute capability, so Triton's own
  pipeline (frontend, LLVM, the ptxas bundled with Triton) compiles for that GPU; nothing is
  loaded or launched.
- Each family's host functions (``attent_kernels/<family>/_triton.py``) are called on small CPU
  tensors while every autotuned kernel's launch is recorded instead of run. The recorded arguments
  are those of a real call (pointer dtypes, constexpr flags, the dot and accumulator dtypes), and
  the kernel is compiled with them for every configuration of its autotune list
  (``JITFunction.warmup``), once per dtype policy (float32 IEEE and TF32, bfloat16, float16,
  float64, and mixed float32 / bfloat16 as under autocast) and per variant (the set of constexpr
  flags the calls produce, e.g. with and without a mask).
- Compilation goes to a fresh cache directory, so ptxas runs for every row and its report gives
  the registers and spill bytes; the shared memory is Triton's dynamic allocation, checked against
  the GPU's per-block limit (a launch above it fails with OutOfResources); the mma column names
  the tensor-core instruction in the PTX: wgmma (Hopper's warpgroup MMA), mma (mma.sync, for
  tiles below wgmma's 64 rows, and float64's FP64 tensor cores) or - (none: FMA, as for IEEE
  float32 dots, and for kernels without a dot).

It must run without ``TRITON_INTERPRET=1``: each family picks its autotune list when imported, and
under the interpreter that list is one small configuration. Sizes are multiples of 16, so the
kernels are specialized as for typical GPU shapes (aligned pointers and strides, unit inner
strides). Configurations the autotuner prunes before tuning (their shared-memory estimate is
above the limit, e.g. the largest float64 tiles) are listed as PRUNED and not compiled. Exit
status: 0 when every other row compiled and fits, 1 otherwise.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import io
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import triton  # noqa: E402
from triton import knobs  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime import driver  # noqa: E402
from triton.runtime.autotuner import Autotuner, Config  # noqa: E402

from attent_kernels._triton_tiles import tf32_allowed  # noqa: E402


@dataclasses.dataclass(frozen=True)
class InputTypes:
    """The dtypes of a call: ``first`` for x / x_hat / logits / hidden, ``second`` for g / the head
    weight, and whether float32 dots may use TF32 (``torch.backends.cuda.matmul.allow_tf32``)."""

    first: torch.dtype
    second: torch.dtype
    tf32: bool = False


# Every dtype policy of ``attent_kernels._triton_tiles.dot_types``: IEEE and TF32 float32, the
# 16-bit types, float64, and a mixed call as under autocast (float32 x, bfloat16 g).
DTYPES = {
    "float32": InputTypes(torch.float32, torch.float32),
    "tf32": InputTypes(torch.float32, torch.float32, tf32=True),
    "bfloat16": InputTypes(torch.bfloat16, torch.bfloat16),
    "float16": InputTypes(torch.float16, torch.float16),
    "float64": InputTypes(torch.float64, torch.float64),
    "mixed": InputTypes(torch.float32, torch.bfloat16),
}
# Largest dynamic shared memory a block may opt into (CUDA programming guide, "Technical
# Specifications per Compute Capability"): 227 KiB on 9.0, 163 KiB on 8.0.
SHARED_LIMIT = {90: 227 * 1024, 80: 163 * 1024}
WARP_SIZE = 32


class StandInDriver:
    """The part of a Triton driver that compiling (not launching) asks for: the target to compile
    for, and a current device and stream (never used, as nothing is launched)."""

    def __init__(self, capability: int) -> None:
        self.target = GPUTarget("cuda", capability, WARP_SIZE)

    def get_current_target(self) -> GPUTarget:
        return self.target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0


# ---------------------------------------------------------------------------------------------
# Recording the launches of the families' host functions
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Launch:
    """One recorded launch: the kernel, the input dtype of the call, and its arguments."""

    name: str
    kernel: Autotuner
    dtype: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    @property
    def variant(self) -> str:
        """The constexpr flags of the call (bools and tuples of bools), e.g. ``HAS_BIAS=1 HAS_MASK=0``."""
        flags = []
        for name, value in self.kwargs.items():
            if isinstance(value, bool):
                flags.append(f"{name}={int(value)}")
            elif isinstance(value, tuple) and all(isinstance(v, bool) for v in value):
                flags.append(f"{name}=({','.join(str(int(v)) for v in value)})")
        return " ".join(flags) or "-"


@contextlib.contextmanager
def recording(kernels: dict[str, Autotuner], dtype: str, launches: list[Launch]) -> Iterator[None]:
    """While open, ``kernel[grid](...)`` of each kernel appends a Launch instead of tuning and
    running it (the launch proxy calls the instance's ``run``, shadowed here)."""

    def recorder(name: str, kernel: Autotuner) -> Callable[..., None]:
        def run(*args: Any, grid: Any, warmup: bool, **kwargs: Any) -> None:
            launches.append(Launch(name, kernel, dtype, args, kwargs))

        return run

    for name, kernel in kernels.items():
        kernel.run = recorder(name, kernel)
    try:
        yield
    finally:
        for kernel in kernels.values():
            del kernel.run


def _randn(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(*shape).to(dtype)


def _mask(*shape: int) -> torch.Tensor:
    return torch.rand(*shape) > 0.25


# Calls of each family's host functions, with every constexpr variant the public ops produce.
B, T, D, P, V, N = 2, 64, 64, 48, 512, 64


def _exercise_linear(module: ModuleType, types: InputTypes) -> None:
    x, g, g_k = _randn(B, T, D, dtype=types.first), _randn(B, T, P, dtype=types.second), _randn(B, T, 16, dtype=types.second)
    mask = _mask(B, T)
    module.grouped_linear_grad_norm_sq(x, [g, g_k], [True, False], mask, "ghost")
    module.grouped_linear_grad_norm_sq(x, [g, g_k, g], [False] * 3, None, "ghost")  # the probe's q, k and v
    module.linear_grad_norm_sq(x, g, False, None, "ghost")
    module.linear_grad_norm_sq(x, g, True, mask, "direct")
    module.linear_grad_norm_sq(x, g, False, None, "direct")
    module.linear_weight_grad_and_norm_sq(x, g, mask, "fused")
    module.linear_weight_grad_and_norm_sq(x, g, None, "fused")
    module.linear_grad_gram(x, g, mask, x, g, mask, True, "pairs")
    module.linear_grad_gram(x, g, None, x[:1], g[:1], mask[:1], False, "pairs")


def _exercise_embedding(module: ModuleType, types: InputTypes) -> None:
    ids, g = torch.randint(0, 100, (B, T)), _randn(B, T, D, dtype=types.second)
    for path in ("pairs", "sorted"):
        module.embedding_grad_norm_sq(ids, g, _mask(B, T), path)
        module.embedding_grad_norm_sq(ids, g, None, path)


def _exercise_norm(module: ModuleType, types: InputTypes) -> None:
    x_hat, g = _randn(B, T, D, dtype=types.first), _randn(B, T, D, dtype=types.second)
    module.norm_grad_norm_sq(x_hat, g, True, _mask(B, T))
    module.norm_grad_norm_sq(x_hat, g, False, None)


def _exercise_loss_scores(module: ModuleType, types: InputTypes) -> None:
    """Both cross-entropy routes (a small call's fixed configuration; the tuned kernel, with
    SMALL_LOGITS lowered) and both endings of the tuned kernels: vocabulary slices merged on the
    host, and one slice finished in the kernel (rows enough to fill the device alone)."""
    from attent_kernels import _cost

    def one_slice_rows(configs: list[Config]) -> int:
        return _cost.TARGET_PROGRAMS * max(c.kwargs["BLOCK_N"] for c in configs)

    module.cross_entropy_token_scores(_randn(N, V, dtype=types.first), torch.randint(0, V, (N,)), -100)
    small = module.SMALL_LOGITS
    module.SMALL_LOGITS = 0
    try:
        for rows in (N, one_slice_rows(module._CE_CONFIGS)):
            module.cross_entropy_token_scores(_randn(rows, V, dtype=types.first), torch.randint(0, V, (rows,)), -100)
    finally:
        module.SMALL_LOGITS = small
    weight, bias = _randn(V, D, dtype=types.second), _randn(V, dtype=types.second)
    for rows in (N, one_slice_rows(module._HEAD_CONFIGS)):
        hidden, targets = _randn(rows, D, dtype=types.first), torch.randint(0, V, (rows,))
        module.linear_cross_entropy_token_scores(hidden, weight, bias, targets, -100)
        module.linear_cross_entropy_token_scores(hidden, weight, None, targets, -100)


EXERCISES: dict[str, Callable[[ModuleType, InputTypes], None]] = {
    "linear": _exercise_linear,
    "embedding": _exercise_embedding,
    "norm": _exercise_norm,
    "loss_scores": _exercise_loss_scores,
}


def family_modules() -> dict[str, ModuleType]:
    """Every ``attent_kernels/<family>/_triton.py``, imported, by family name."""
    root = REPO / "attent_kernels"
    return {
        path.parent.name: importlib.import_module(f"attent_kernels.{path.parent.name}._triton")
        for path in sorted(root.glob("*/_triton.py"))
    }


def autotuned_kernels(module: ModuleType) -> dict[str, Autotuner]:
    return {name: value for name, value in vars(module).items() if isinstance(value, Autotuner)}


# ---------------------------------------------------------------------------------------------
# Compiling and reporting
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    """One line of the table; ``error`` is the full message of a failure (None when it compiled and fits)."""

    kernel: str
    variant: str
    dtype: str
    config: str
    registers: int | None = None
    spill_bytes: int | None = None
    shared_bytes: int | None = None
    mma: str | None = None
    error: str | None = None
    pruned: bool = False

    @property
    def status(self) -> str:
        if self.pruned:
            return "PRUNED: the autotuner skips it (shared-memory estimate above the limit)"
        return "OK" if self.error is None else f"FAILED: {_headline(self.error)}"


def _config_label(config: Config) -> str:
    blocks = " ".join(f"{name}={value}" for name, value in config.kwargs.items())
    return f"{blocks} w{config.num_warps} s{config.num_stages}"


def _headline(error: str) -> str:
    """The line of an error message that names the problem: ptxas's first ``ptxas error`` line, else
    the first line, with the exception type, and the last one (a Triton CompilationError shows the
    source between them)."""
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    ptxas = [line for line in lines if line.startswith("ptxas") and "error" in line]
    if ptxas:
        return ptxas[0][:160]
    if len(lines) > 1:
        return f"{lines[0]} ... {lines[-1]}"[:160]
    return lines[0][:160] if lines else "(no message)"


def _ptxas_report(log: str) -> tuple[int | None, int | None]:
    """(registers, spill store bytes) from ptxas's ``-v`` report, or None where it is absent."""
    registers = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores", log)
    return (int(registers.group(1)) if registers else None, int(spills.group(1)) if spills else None)


def _matrix_instructions(ptx: str) -> str:
    """Which tensor-core instruction the PTX multiplies with: "wgmma" (Hopper's warpgroup MMA),
    "mma" (mma.sync: tiles below wgmma's 64 rows, float64) or "-" (no tensor core: FMA)."""
    if "wgmma.mma_async" in ptx:
        return "wgmma"
    return "mma" if "mma.sync" in ptx else "-"


def kept_configs(launch: Launch) -> list[Config]:
    """The configurations the autotuner tunes over for this call: its list, less those its
    early_config_prune (``attent_kernels._triton_tiles.shared_memory_pruning``) drops."""
    prune = launch.kernel.early_config_prune
    return prune(launch.kernel.configs, {}, **launch.kwargs) if prune else launch.kernel.configs


def compile_row(launch: Launch, config: Config, capability: int) -> Row:
    """Compile one launch for one configuration; ptxas's report (printed by Triton when
    TRITON_DUMP_PTXAS_LOG is on) is captured from stdout, with the PTX Triton prints on failure."""
    row = Row(launch.name, launch.variant, launch.dtype, _config_label(config))
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            compiled = launch.kernel.fn.warmup(*launch.args, grid=(1,), **launch.kwargs, **config.all_kwargs())
    except Exception as error:  # every compiler failure (frontend, MLIR passes, ptxas) is a row
        row.error = f"{type(error).__name__}: {error}"
        return row
    row.registers, row.spill_bytes = _ptxas_report(printed.getvalue())
    row.shared_bytes = compiled.metadata.shared
    row.mma = _matrix_instructions(compiled.asm["ptx"])
    limit = SHARED_LIMIT[capability]
    if row.shared_bytes > limit:
        row.error = f"OutOfResources: shared memory {row.shared_bytes} B > {limit} B per block on sm_{capability}"
    return row


COLUMNS = [("kernel", 30), ("variant", 26), ("dtype", 8), ("config", 36), ("regs", 4), ("spill B", 7), ("shared B", 8),
           ("mma", 5)]


def _format(values: Sequence[object], status: str) -> str:
    cells = [str(v).ljust(w) if i < 4 else str(v).rjust(w) for i, (v, (_, w)) in enumerate(zip(values, COLUMNS))]
    return "  ".join([*cells, status])


def _print_row(row: Row) -> None:
    def number(value: int | None) -> str:
        return "-" if value is None else str(value)

    values = [row.kernel, row.variant, row.dtype, row.config, number(row.registers), number(row.spill_bytes)]
    print(_format([*values, number(row.shared_bytes), row.mma or "-"], row.status), flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compile_check", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", type=int, choices=sorted(SHARED_LIMIT, reverse=True), default=90,
                        help="compute capability to compile for: 90 (H100) or 80 (A100); default 90")
    parser.add_argument("--kernel", action="append", default=[], metavar="NAME",
                        help="compile only this kernel (repeatable; default: every kernel)")
    parser.add_argument("--dtype", action="append", default=[], choices=list(DTYPES),
                        help="compile only for these input dtypes (repeatable; default: all of them)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("compile_check: unset TRITON_INTERPRET: under the interpreter each family imports a single "
              "small configuration instead of its autotune list, and nothing is compiled", file=sys.stderr)
        return 2
    driver.set_active(StandInDriver(args.arch))
    modules = family_modules()
    kernels = {family: autotuned_kernels(module) for family, module in modules.items()}
    known = {name for by_name in kernels.values() for name in by_name}
    unknown = sorted(set(args.kernel) - known)
    if unknown:
        parser.error(f"unknown kernel(s) {', '.join(unknown)}; the kernels are {', '.join(sorted(known))}")
    selected = set(args.kernel) or known
    dtypes = args.dtype or list(DTYPES)

    launches: dict[tuple[str, str, str], Launch] = {}
    for family, module in modules.items():
        if family not in EXERCISES:
            continue
        for dtype in dtypes:
            recorded: list[Launch] = []
            with recording(kernels[family], dtype, recorded), tf32_allowed(DTYPES[dtype].tf32):
                EXERCISES[family](module, DTYPES[dtype])
            for launch in recorded:
                launches.setdefault((launch.name, launch.variant, dtype), launch)
    launched = {name for name, _, _ in launches}
    for by_name in kernels.values():
        for kernel in by_name.values():
            # Forget what an earlier call in this process compiled, and for which target.
            kernel.fn.device_caches.clear()

    print(f"Triton {triton.__version__}, target sm_{args.arch} (cuda, capability {args.arch}, warp {WARP_SIZE}), "
          f"shared memory limit {SHARED_LIMIT[args.arch]} B per block")
    print(_format([name for name, _ in COLUMNS], "status"), flush=True)
    rows: list[Row] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache, knobs.cache.scope(), knobs.nvidia.scope():
        knobs.cache.dir = cache
        knobs.nvidia.dump_ptxas_log = True
        for launch in launches.values():
            if launch.name in selected:
                kept = kept_configs(launch)
                for config in launch.kernel.configs:
                    if config in kept:
                        rows.append(compile_row(launch, config, args.arch))
                    else:
                        rows.append(Row(launch.name, launch.variant, launch.dtype, _config_label(config), pruned=True))
                    _print_row(rows[-1])
                if not kept:
                    rows.append(Row(launch.name, launch.variant, launch.dtype, "-", error="the autotuner prunes every configuration"))
                    _print_row(rows[-1])
    for name in sorted(selected - launched):
        rows.append(Row(name, "-", "-", "-", error="not exercised: no host call of its family launches it"))
        _print_row(rows[-1])

    failed = [row for row in rows if row.error is not None]
    pruned = [row for row in rows if row.pruned]
    spilling = [row for row in rows if row.error is None and row.spill_bytes]
    wgmma = [row for row in rows if row.mma == "wgmma"]
    print(f"\n{len(rows)} rows in {time.perf_counter() - start:.0f} s: {len(rows) - len(failed) - len(pruned)} OK "
          f"({len(spilling)} of them spill registers, {len(wgmma)} use wgmma), {len(pruned)} PRUNED, {len(failed)} FAILED")
    errors = sorted({row.error for row in failed if row.error is not None})
    for error in errors:
        print(f"\n--- {sum(row.error == error for row in failed)} row(s) failed with:\n"
              + "\n".join(error.splitlines()[:20]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
