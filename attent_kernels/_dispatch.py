"""Backend choice shared by every op: CUDA tensors go to Triton, CPU tensors to the reference."""
from __future__ import annotations

import importlib.util
import os
from types import ModuleType
from typing import Literal

import torch

Backend = Literal["auto", "triton", "reference"]
BACKENDS = ("auto", "triton", "reference")


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_backend(op: str, backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS}, got {backend!r}")


def use_triton(op: str, backend: str, *tensors: torch.Tensor | None) -> bool:
    """Decide whether ``op`` runs its Triton kernel.

    "reference" never does; "auto" does when every tensor is on a CUDA device and Triton is
    installed; "triton" always does, and on CPU tensors needs ``TRITON_INTERPRET=1`` set before
    Triton is first imported (the interpreter), else it raises.
    """
    check_backend(op, backend)
    if backend == "reference":
        return False
    on_cuda = all(t.is_cuda for t in tensors if t is not None)
    if backend == "auto":
        return on_cuda and triton_available()
    if not triton_available():
        raise RuntimeError(f"{op}: backend='triton' needs the triton package, which is not installed")
    if not on_cuda and not interpreter_on():
        raise RuntimeError(
            f"{op}: backend='triton' on CPU tensors runs under the Triton interpreter; "
            "set TRITON_INTERPRET=1 in the environment before triton is imported"
        )
    return True


def uses_triton(*tensors: torch.Tensor | None, backend: Backend = "auto") -> bool:
    """Whether an op called on ``tensors`` with ``backend`` runs its Triton kernel (for "auto":
    every tensor on a CUDA device, and Triton installed); the rule of :func:`use_triton`."""
    return use_triton("uses_triton", backend, *tensors)


def implementation(op: str, backend: str, family: str, *tensors: torch.Tensor | None) -> ModuleType:
    """The module that runs ``op`` for an op family package: ``family._triton`` or ``family._reference``."""
    name = "_triton" if use_triton(op, backend, *tensors) else "_reference"
    return importlib.import_module(f"{family}.{name}")
