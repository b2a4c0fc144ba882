"""Argument checks shared by every op: each error names the op, the argument and the shapes."""
from __future__ import annotations

import numbers
from typing import Sequence

import torch

# Largest float32 intermediate (in elements) the reference ops allocate per chunk: 2**24 = 64 MiB.
MAX_CHUNK_ELEMENTS = 1 << 24


def shape_str(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def fail(op: str, message: str) -> None:
    raise ValueError(f"{op}: {message}")


def require_tensor(op: str, name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        fail(op, f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def require_float(op: str, name: str, t: object) -> torch.Tensor:
    t = require_tensor(op, name, t)
    if not t.is_floating_point():
        fail(op, f"{name} must be a floating-point tensor, got dtype {t.dtype} with shape {shape_str(t)}")
    return t


def require_int(op: str, name: str, t: object) -> torch.Tensor:
    t = require_tensor(op, name, t)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        fail(op, f"{name} must be an integer tensor, got dtype {t.dtype} with shape {shape_str(t)}")
    return t


def require_rank(op: str, name: str, t: torch.Tensor, ranks: Sequence[int]) -> None:
    if t.dim() not in ranks:
        allowed = " or ".join(f"{r}-D" for r in ranks)
        fail(op, f"{name} must be {allowed}, got shape {shape_str(t)}")


def require_same_device(op: str, named: dict[str, torch.Tensor | None]) -> None:
    devices = {name: require_tensor(op, name, t).device for name, t in named.items() if t is not None}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        fail(op, f"all tensors must be on one device, got {listing}")


def require_leading(op: str, a_name: str, a: torch.Tensor, b_name: str, b: torch.Tensor, ndim: int) -> None:
    """Require a.shape[:ndim] == b.shape[:ndim] (batch, and sequence when present)."""
    if a.dim() != b.dim() or a.shape[:ndim] != b.shape[:ndim]:
        what = "batch dimension" if ndim == 1 else "batch and sequence dimensions"
        fail(op, f"{a_name} has shape {shape_str(a)} and {b_name} has shape {shape_str(b)}: their {what} must match")


def check_mask(op: str, mask: torch.Tensor | None, shape: torch.Size, ref_name: str) -> torch.Tensor | None:
    """Validate a mask of shape ``shape`` (the example/position dims) and return it as bool."""
    if mask is None:
        return None
    mask = require_tensor(op, "mask", mask)
    if mask.shape != shape:
        fail(op, f"mask has shape {shape_str(mask)} but {ref_name} needs a mask of shape ({', '.join(map(str, shape))})")
    if mask.is_floating_point():
        bad = (mask != 0) & (mask != 1)
        if bool(bad.any()):
            fail(op, "a floating-point mask must hold only 0 and 1")
    return mask.to(torch.bool)


def require_bool(op: str, name: str, value: object) -> None:
    """``value`` must be True or False (not a truthy stand-in)."""
    if not isinstance(value, bool):
        fail(op, f"{name} must be True or False, got {value!r}")


def require_index(op: str, name: str, value: object, *, allow_none: bool) -> None:
    """``value`` must be a Python integer (an id), or None where ``allow_none``."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        fail(op, f"{name} must be an integer{' or None' if allow_none else ''}, got {value!r} ({type(value).__name__})")


def accum_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """The accumulation (and result) dtype of every op, the one rule of the package: float64 if
    any input is float64, else float32 (16-bit inputs accumulate in float32)."""
    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def rows_per_chunk(per_row_elements: int, total_rows: int) -> int:
    """How many rows fit one chunk of at most MAX_CHUNK_ELEMENTS elements (at least one)."""
    return max(1, min(total_rows, MAX_CHUNK_ELEMENTS // max(1, per_row_elements)))
