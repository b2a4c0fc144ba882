"""Test helpers that watch the code under test: what a teacher was asked to observe (one record per step), which
kernel ops were called with which dtypes, and every host read of a tensor value."""
from __future__ import annotations

from typing import Callable

import torch


def per_step(indices, scores, step) -> list[tuple[torch.Tensor, torch.Tensor, int | None]]:
    """One ``Teacher.observe`` call's arguments as (indices, scores, step) per step, in step order:
    the trainers hand over several steps at once, each score with its own step."""
    indices, scores = torch.as_tensor(indices).clone(), torch.as_tensor(scores).clone()
    if step is None or isinstance(step, int):
        return [(indices, scores, step)]
    steps = torch.as_tensor(step)
    return [(indices[steps == s], scores[steps == s], int(s)) for s in torch.unique(steps).tolist()]


def watch_observe(teacher, observed: list) -> Callable:
    """Replace ``teacher.observe`` by one that appends each step's (indices, scores, step) to
    ``observed`` and passes the call through; returns the original method."""
    original = teacher.observe

    def observe(indices, scores, *, step=None):
        observed.extend(per_step(indices, scores, step))
        return original(indices, scores, step=step)

    teacher.observe = observe
    return original


def spy_calls(monkeypatch, module, names: tuple[str, ...]) -> list[tuple[str, tuple[torch.dtype, ...], dict]]:
    """Replace each function ``module.<name>`` by one that appends (name, the dtypes of its tensor
    arguments, list arguments' tensors included, its keyword arguments) to the returned list and
    passes the call through."""
    seen: list[tuple[str, tuple[torch.dtype, ...], dict]] = []
    for name in names:
        original = getattr(module, name)

        def spy(*args, _name=name, _original=original, **kwargs):
            flat = [t for a in args for t in (a if isinstance(a, (list, tuple)) else [a])]
            seen.append((_name, tuple(t.dtype for t in flat if isinstance(t, torch.Tensor)), kwargs))
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    return seen


HOST_READS = ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__")


def count_host_reads(monkeypatch) -> list[str]:
    """Make every read of a tensor's value on the host (``.item()``, ``.tolist()``, ``bool(t)``,
    ``int(t)``...: a device synchronization on a GPU) append its name to the returned list."""
    reads: list[str] = []
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return reads
