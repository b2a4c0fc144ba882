"""fit's checkpoints: the RNG states of every generator a run draws from, and one atomic file holding
the state of each stateful part (model, optimizer, scheduler, scaler, teacher) and the run's own."""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

__all__ = ["CHECKPOINT_NAME", "rng_state", "set_rng_state", "seed_everything", "write", "read"]

CHECKPOINT_NAME = "checkpoint.pt"
PARTS = ("model", "optimizer", "lr_scheduler", "scaler", "teacher")


def rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and Python RNG states."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def write(folder: Path, parts: Mapping[str, Any], state: dict[str, Any], rng: list[dict[str, Any]]) -> Path:
    """Write ``folder/checkpoint.pt`` atomically: each part's ``state_dict()`` (None for an absent
    part), the run's ``state`` and every rank's RNG states."""
    payload = {name: None if parts[name] is None else parts[name].state_dict() for name in PARTS}
    payload.update(state=state, rng=rng)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CHECKPOINT_NAME
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def read(resume_from: str | os.PathLike, parts: Mapping[str, Any], world: int) -> tuple[dict[str, Any], list]:
    """Load a checkpoint (a file, or a folder holding ``checkpoint.pt``) into ``parts``; returns the
    run's state and the ranks' RNG states. Raises a ValueError naming the file when it does not fit
    the run (no such file, a teacher where the run has none or the reverse, another world size)."""
    path = Path(resume_from)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise ValueError(f"resume_from: no checkpoint at {path}")
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if (payload["teacher"] is None) != (parts["teacher"] is None):
        had = "with" if payload["teacher"] is not None else "without"
        raise ValueError(f"resume_from: the checkpoint {path} was written by a run {had} a teacher; pass the same kind of run")
    if len(payload["rng"]) != world:
        raise ValueError(f"resume_from: the checkpoint {path} was written by {len(payload['rng'])} processes, "
                         f"this run has {world}")
    for name in PARTS:
        if parts[name] is not None and payload[name] is not None:
            parts[name].load_state_dict(payload[name])
    return payload["state"], payload["rng"]
