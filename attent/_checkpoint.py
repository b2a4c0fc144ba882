"""fit's checkpoints: the RNG states of every generator a run draws from, and one atomic file holding
the state of each stateful part (model, optimizer, scheduler, scaler, teacher) and the run's own.

The file holds tensors and plain Python values only (numpy's and Python's RNG states are stored as
int64 tensors and numbers), so it is read with ``torch.load(weights_only=True)``, which builds no
object a file names and runs no code. A file that needs more (one written by an attent before
checkpoint format 2, or by a part whose ``state_dict()`` holds other objects) is refused unless the
caller trusts it."""
from __future__ import annotations

import os
import pickle
import random
import re
import warnings
from pathlib import Path
from typing import Any, Collection, Mapping

import numpy as np
import torch

__all__ = ["CHECKPOINT_NAME", "FORMAT_VERSION", "rng_state", "set_rng_state", "seed_everything", "write", "read"]

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 2  # 1 (no "format" key): numpy's and Python's RNG states pickled as they come
PARTS = ("model", "optimizer", "lr_scheduler", "scaler", "teacher")
PAYLOAD_KEYS = {"format", *PARTS, "state", "rng"}
RNG_KEYS = {"torch", "cuda", "numpy", "python"}
NUMPY_KEYS = {"algorithm", "key", "pos", "has_gauss", "cached_gaussian"}
PYTHON_KEYS = {"version", "internal", "gauss_next"}


def _numpy_state(state: tuple) -> dict[str, Any]:
    """``np.random.get_state()`` as a string, an int64 tensor and numbers."""
    algorithm, key, pos, has_gauss, cached_gaussian = state
    return {"algorithm": str(algorithm), "key": torch.from_numpy(np.asarray(key, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)}


def _python_state(state: tuple) -> dict[str, Any]:
    """``random.getstate()`` (version, 625 ints, gauss_next) as numbers and an int64 tensor."""
    version, internal, gauss_next = state
    return {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next}


def rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and Python RNG states, as tensors and plain Python values."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": _numpy_state(np.random.get_state()),
        "python": _python_state(random.getstate()),
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore an :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy = state["numpy"]
    np.random.set_state((numpy["algorithm"], numpy["key"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"],
                         numpy["cached_gaussian"]))
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"].tolist()), python["gauss_next"]))


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _unsafe_types(path: Path, error: Exception | None = None) -> list[str]:
    """The classes and functions the pickle in ``path`` names beyond what a weights-only load
    allows, read from the pickle's opcodes without running it (torch >= 2.5); else, or where that
    finds none, the one that ``error`` (a refused weights-only load) names."""
    lister = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    listed = []
    if lister is not None:
        try:
            listed = lister(path)
        except Exception:  # a file the lister cannot parse: name what the refusal named
            pass
    found = re.search(r"GLOBAL (\S+)", str(error or ""))
    return listed or ([found.group(1)] if found else [])


def write(folder: Path, parts: Mapping[str, Any], state: dict[str, Any], rng: list[dict[str, Any]]) -> Path:
    """Write ``folder/checkpoint.pt`` atomically: each part's ``state_dict()`` (None for an absent
    part), the run's ``state`` and every rank's RNG states (from :func:`rng_state`). The bytes go to
    a temporary file that is synced and then renamed over the previous checkpoint, so a crash at
    any point leaves either the previous checkpoint or the new one; warns when a part's state needs
    more than a weights-only load reads (resuming from it then needs trust_checkpoint=True)."""
    payload = {name: None if parts[name] is None else parts[name].state_dict() for name in PARTS}
    payload.update(format=FORMAT_VERSION, state=state, rng=rng)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CHECKPOINT_NAME
    tmp = path.with_suffix(".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        unsafe = _unsafe_types(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if os.name == "posix":  # the rename itself reaches the disk with the folder's entry
        folder_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(folder_fd)
        finally:
            os.close(folder_fd)
    if unsafe:
        warnings.warn(f"the checkpoint {path} holds {', '.join(unsafe)}, which a weights-only load refuses: a part's "
                      f"state_dict() returns more than tensors and plain values, so resuming from it needs "
                      f"trust_checkpoint=True", stacklevel=2)
    return path


def _load(path: Path, trusted: bool) -> Any:
    """``torch.load`` on the CPU, weights-only unless ``trusted``; a refused or unreadable file
    becomes a ValueError naming it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError as error:
        if trusted:
            raise ValueError(f"resume_from: {path} is not a readable checkpoint: {error}") from error
        unsafe = _unsafe_types(path, error) or ["an object a weights-only load refuses"]
        raise ValueError(
            f"resume_from: the checkpoint {path} holds {', '.join(unsafe)}; a checkpoint is read with "
            f"torch.load(weights_only=True), which refuses anything but tensors and plain values, because "
            f"unpickling other objects can run any code the file names (a checkpoint written by attent before "
            f"checkpoint format {FORMAT_VERSION} holds numpy arrays and is refused too); if you trust the file, "
            f"resume with trust_checkpoint=True (fit or FitOptions), which unpickles it in full"
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise ValueError(f"resume_from: {path} is not a complete checkpoint (a truncated or foreign file?): "
                         f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else 'empty file'}") from error


def _checked_rng(entry: Any, path: Path) -> dict[str, Any]:
    """One rank's RNG states in the current form (a previous-format entry converted), or a
    ValueError naming the file."""

    def refuse(what: str) -> ValueError:
        return ValueError(f"resume_from: the checkpoint {path} has a malformed RNG state: {what}")

    if not isinstance(entry, Mapping) or set(entry) != RNG_KEYS:
        raise refuse(f"expected the keys {sorted(RNG_KEYS)}, got {entry!r:.80}")
    numpy, python = entry["numpy"], entry["python"]
    if isinstance(numpy, tuple) and len(numpy) == 5 and isinstance(python, tuple) and len(python) == 3:
        # format 1 (read only when trusted): the states as numpy and random return them
        numpy, python = _numpy_state(numpy), _python_state(python)
    torch_state, cuda = entry["torch"], entry["cuda"]
    if not (isinstance(torch_state, torch.Tensor) and torch_state.dtype == torch.uint8 and torch_state.dim() == 1):
        raise refuse(f"'torch' must be a 1-D uint8 tensor, got {torch_state!r:.80}")
    if not (isinstance(cuda, list) and all(isinstance(s, torch.Tensor) and s.dtype == torch.uint8 for s in cuda)):
        raise refuse(f"'cuda' must be a list of uint8 tensors, got {cuda!r:.80}")
    if not (isinstance(numpy, Mapping) and set(numpy) == NUMPY_KEYS and isinstance(numpy["algorithm"], str)
            and isinstance(numpy["key"], torch.Tensor) and numpy["key"].dtype == torch.int64
            and all(isinstance(numpy[k], int) for k in ("pos", "has_gauss"))
            and isinstance(numpy["cached_gaussian"], float)):
        raise refuse(f"'numpy' must map {sorted(NUMPY_KEYS)} to a string, an int64 tensor, two ints and a float, "
                     f"got {numpy!r:.80}")
    if not (isinstance(python, Mapping) and set(python) == PYTHON_KEYS and isinstance(python["version"], int)
            and isinstance(python["internal"], torch.Tensor) and python["internal"].dtype == torch.int64
            and (python["gauss_next"] is None or isinstance(python["gauss_next"], float))):
        raise refuse(f"'python' must map {sorted(PYTHON_KEYS)} to an int, an int64 tensor and a float or None, "
                     f"got {python!r:.80}")
    return {"torch": torch_state, "cuda": cuda, "numpy": numpy, "python": python}


def read(resume_from: str | os.PathLike, parts: Mapping[str, Any], world: int,
         trusted: bool = False, state_keys: Collection[str] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Load a checkpoint (a file, or a folder holding ``checkpoint.pt``) into ``parts``; returns the
    run's state and the ranks' RNG states (for :func:`set_rng_state`). Reads it with
    ``torch.load(weights_only=True)`` unless ``trusted`` (then a previous-format file is read
    too). Raises a ValueError naming the file when it is refused (objects beyond tensors and plain
    values, without ``trusted``), unreadable (truncated) or does not fit the run (no such file, a
    teacher where the run has none or the reverse, another world size, a run state with keys
    beyond ``state_keys``); nothing is restored then."""
    path = Path(resume_from)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise ValueError(f"resume_from: no checkpoint at {path}")
    payload = _load(path, trusted)
    expected = PAYLOAD_KEYS - ({"format"} if trusted else set())
    if not isinstance(payload, dict) or not expected <= set(payload) <= PAYLOAD_KEYS:
        raise ValueError(f"resume_from: {path} is not an attent checkpoint (expected the keys {sorted(PAYLOAD_KEYS)}, "
                         f"got {sorted(payload) if isinstance(payload, dict) else type(payload).__name__})")
    if "format" in payload and payload["format"] != FORMAT_VERSION:
        raise ValueError(f"resume_from: the checkpoint {path} has format {payload.get('format')!r}; this attent "
                         f"reads format {FORMAT_VERSION}")
    if not isinstance(payload["state"], dict) or not all(isinstance(key, str) for key in payload["state"]):
        raise ValueError(f"resume_from: the checkpoint {path} holds no run state (got {payload['state']!r:.80})")
    unknown = sorted(set(payload["state"]) - set(state_keys)) if state_keys is not None else []
    if unknown:
        raise ValueError(f"resume_from: the checkpoint {path} holds run-state fields this attent does not know: {unknown}")
    if (payload["teacher"] is None) != (parts["teacher"] is None):
        had = "with" if payload["teacher"] is not None else "without"
        raise ValueError(f"resume_from: the checkpoint {path} was written by a run {had} a teacher; pass the same kind of run")
    if not isinstance(payload["rng"], list) or len(payload["rng"]) != world:
        written = len(payload["rng"]) if isinstance(payload["rng"], list) else "an unknown number of"
        raise ValueError(f"resume_from: the checkpoint {path} was written by {written} processes, this run has {world}")
    rng = [_checked_rng(entry, path) for entry in payload["rng"]]
    for name in PARTS:
        if parts[name] is not None and payload[name] is not None:
            parts[name].load_state_dict(payload[name])
    return payload["state"], rng
