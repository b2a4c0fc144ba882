"""Peak extra memory of one call of a benchmark case, with its inputs already allocated.

CUDA: in the benchmark process, ``torch.cuda.max_memory_allocated()`` during the call minus the
memory allocated before it (the inputs, modules and anything cached), after a warm-up call.

CPU: a process allocator keeps freed memory and the resident-set high-water mark never goes
down, so each case runs in a fresh process: ``os.fork()`` of one helper process that has only
imported the libraries (no torch op ran in it, so no thread pool is inherited half-built). In
the fresh process the same op and method first run once at tiny sizes (code and lazy state
loaded), the case's inputs are made, freed heap is returned to the system (``malloc_trim``), the
peak resident set is reset (``/proc/self/clear_refs``), and the call runs once: peak extra =
``VmHWM`` after - ``VmRSS`` before. Where the reset is not permitted the peak is ``ru_maxrss``
after - ``VmRSS`` before, an upper bound (the high-water mark may predate the call).
Resolution: a page, plus about 1-2 MiB of noise from thread stacks and allocator bookkeeping.
Linux only (``/proc/self``, ``os.fork``).
"""
from __future__ import annotations

import atexit
import ctypes
import gc
import importlib
import importlib.util
import multiprocessing
import os
import pickle
import re
import resource
from multiprocessing.connection import Connection
from typing import Any, Callable

import torch

from bench.kernels._cases import Case, Run, build, warmup_case

CUDA_METHOD = (
    "torch.cuda.max_memory_allocated() during one call minus torch.cuda.memory_allocated() before it "
    "(inputs allocated, after a warm-up call)"
)
CPU_METHOD = (
    "fresh process per case (os.fork of a helper that only imported the libraries); tiny-size warm-up of the same "
    "op and method, inputs allocated, malloc_trim(0), peak RSS reset via /proc/self/clear_refs; peak extra = "
    "VmHWM after - VmRSS before (fallback where the reset is refused: ru_maxrss after - VmRSS before, an upper bound)"
)

# Imported once by the helper, so that no fresh process pays for them: Opacus, and what
# torch.func imports on its first call.
PRELOAD = ("opacus", "torch._dynamo")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return int(re.search(rf"^{field}:\s+(\d+) kB", status.read(), re.MULTILINE).group(1))


def _return_freed_heap() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def rss_growth(call: Callable[[], Any]) -> tuple[Any, int]:
    """``call()``'s result and the bytes of peak resident-set growth during it (the process's freed
    heap returned first; meaningful in a process that has run nothing else of size)."""
    _return_freed_heap()
    was_reset = _reset_peak()
    before = _status_kib("VmRSS")
    result = call()
    peak = _status_kib("VmHWM") if was_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return result, max(0, peak - before) * 1024


def cuda_growth(call: Callable[[], Any]) -> tuple[Any, int]:
    """``call()``'s result and the bytes of CUDA memory allocated at its peak beyond what was allocated before."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    result = call()
    torch.cuda.synchronize()
    return result, torch.cuda.max_memory_allocated() - before


def _measure_in_this_process(case: Case) -> int:
    """Bytes of peak resident-set growth during one call of ``case`` (run in a fresh process)."""
    build(warmup_case(case)).call()
    return rss_growth(build(case).call)[1]


def _measure_in_a_fork(case: Case) -> int | BaseException:
    """Fork, measure in the child, return its number (or the exception that stopped it)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        try:
            outcome: int | BaseException = _measure_in_this_process(case)
        except Exception as error:  # handed to the benchmark process, which raises it
            outcome = error
        with os.fdopen(write_fd, "wb") as out:
            pickle.dump(outcome, out)
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as answer:
        data = answer.read()
    _, status = os.waitpid(pid, 0)
    if not data:
        return RuntimeError(f"{case.id}: the measuring process died (wait status {status})")
    return pickle.loads(data)


def _helper_loop(requests: Connection) -> None:
    """The helper process: import the libraries, then fork one fresh child per case received."""
    for name in PRELOAD:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name)
    gc.freeze()  # the imported objects: not scanned by each child's gc.collect(), not copied on write by it
    while (case := requests.recv()) is not None:
        requests.send(_measure_in_a_fork(case))


class _Helper:
    """The long-lived helper process and the pipe to it, started on first use."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipe, child_end = context.Pipe()
        self.process = context.Process(target=_helper_loop, args=(child_end,), name="attent-bench-memory", daemon=True)
        self.process.start()
        child_end.close()
        atexit.register(self.stop)

    def measure(self, case: Case) -> int:
        self.pipe.send(case)
        outcome = self.pipe.recv()
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def stop(self) -> None:
        if self.process.is_alive():
            self.pipe.send(None)
            self.process.join(timeout=10)


_helper: _Helper | None = None


def _cuda_peak(run: Run) -> int:
    run.call()
    return cuda_growth(run.call)[1]


def peak_extra_bytes(case: Case, run: Run) -> int:
    """Peak memory one call of ``case`` needs beyond its inputs: on CUDA measured on ``run`` here,
    on CPU in a fresh process that builds the case again."""
    global _helper
    if case.device.startswith("cuda"):
        return _cuda_peak(run)
    if _helper is None or not _helper.process.is_alive():
        _helper = _Helper()
    return _helper.measure(case)


def shutdown() -> None:
    """Stop the helper process (started again on the next CPU measurement)."""
    global _helper
    if _helper is not None:
        _helper.stop()
        _helper = None


def memory_method(device: str) -> str:
    return CUDA_METHOD if device.startswith("cuda") else CPU_METHOD
