"""Test helpers that watch a teacher: what it was asked to observe, one record per step."""
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
