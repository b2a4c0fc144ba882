"""The teacher's resumable state: the :class:`Selection` type, and the checks a ``state_dict`` passes
before ``Teacher.load_state_dict`` restores anything from it."""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Mapping

import torch

__all__ = ["Selection", "STATE_VERSION", "STATE_KEYS", "COUNTERS", "selection_state", "checked_state"]

STATE_VERSION = 2
STATE_KEYS = (
    "version", "num_examples", "scores", "score_steps", "observe_calls", "subset", "active", "active_epoch", "counters"
)
COUNTERS = ("observed", "nonfinite_scores", "selections", "refreshes")


@dataclass(frozen=True)
class Selection:
    """The examples one epoch trains on.

    indices: (m,) int64, ascending (an ``"importance"`` draw may repeat an index). weights: (m,)
    float32 per-example loss weights aligned with ``indices``, or None when unweighted. ratio:
    m / N. is_full: every example, unweighted. selected_at: the epoch of the selection point that
    chose the subset (None for a full-data epoch). Treat the tensors as read-only.
    """

    indices: torch.Tensor
    weights: torch.Tensor | None
    ratio: float
    is_full: bool
    selected_at: int | None = None

    def __len__(self) -> int:
        return self.indices.numel()


def _shape(t: Any) -> tuple[int, ...] | str:
    return tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__


def selection_state(selection: Selection | None) -> dict[str, Any] | None:
    if selection is None:
        return None
    return {
        "indices": selection.indices.clone(),
        "weights": None if selection.weights is None else selection.weights.clone(),
        "ratio": selection.ratio,
        "is_full": selection.is_full,
        "selected_at": selection.selected_at,
    }


def _state_int(state: Mapping[str, Any], key: str, minimum: int, allow_none: bool = False) -> int | None:
    value = state[key]
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"state_dict[{key!r}] must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_range(index: torch.Tensor, num_examples: int, name: str) -> None:
    outside = index[(index < 0) | (index >= num_examples)]
    if outside.numel():
        raise ValueError(f"{name} must be in [0, num_examples={num_examples}), got {outside[:8].tolist()}")


def _selection_from_state(state: Any, key: str, num_examples: int) -> Selection | None:
    if state is None:
        return None
    if not isinstance(state, Mapping) or set(state) != {"indices", "weights", "ratio", "is_full", "selected_at"}:
        raise ValueError(f"state_dict[{key!r}] must be None or a selection mapping, got {state!r:.80}")
    indices = state["indices"]
    if not isinstance(indices, torch.Tensor) or indices.dim() != 1 or indices.is_floating_point() or indices.is_complex():
        raise ValueError(f"state_dict[{key!r}]['indices'] must be a (m,) integer tensor, got {_shape(indices)}")
    _check_range(indices.to(torch.int64), num_examples, f"state_dict[{key!r}]['indices']")
    weights = state["weights"]
    if weights is not None and (not isinstance(weights, torch.Tensor) or weights.shape != indices.shape
                                or not weights.is_floating_point()):
        raise ValueError(f"state_dict[{key!r}]['weights'] must be None or a real tensor of the indices' shape "
                         f"{tuple(indices.shape)}, got {_shape(weights)}")
    return Selection(
        indices=indices.to(torch.int64).clone(),
        weights=None if weights is None else weights.to(torch.float32).clone(),
        ratio=float(state["ratio"]),
        is_full=bool(state["is_full"]),
        selected_at=_state_int(state, "selected_at", 0, allow_none=True),
    )


def checked_state(state_dict: Any, num_examples: int) -> dict[str, Any]:
    """The fields of a ``Teacher.state_dict()`` checked and converted (copies: scores float64,
    steps int64, selections as :class:`Selection`), or a ValueError naming the field."""
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
    missing = [key for key in STATE_KEYS if key not in state_dict]
    if missing:
        raise ValueError(f"state_dict lacks {missing}; it is not a Teacher state_dict")
    if state_dict["version"] != STATE_VERSION:
        raise ValueError(f"state_dict version must be {STATE_VERSION}, got {state_dict['version']!r}")
    if state_dict["num_examples"] != num_examples:
        raise ValueError(
            f"state_dict holds num_examples={state_dict['num_examples']} but this teacher has "
            f"num_examples={num_examples}: the dataset length changed"
        )
    scores, steps = state_dict["scores"], state_dict["score_steps"]
    for key, value in (("scores", scores), ("score_steps", steps)):
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != (num_examples,):
            raise ValueError(f"state_dict[{key!r}] must be a tensor of shape ({num_examples},), got {_shape(value)}")
    if not scores.is_floating_point():
        raise ValueError(f"state_dict['scores'] must hold real floating-point scores, got dtype {scores.dtype}")
    if steps.is_floating_point() or steps.is_complex() or steps.dtype == torch.bool or bool((steps < -1).any()):
        raise ValueError(f"state_dict['score_steps'] must hold integer steps >= -1, got dtype {steps.dtype}")
    counters = state_dict["counters"]
    if not isinstance(counters, Mapping) or set(counters) != set(COUNTERS):
        raise ValueError(f"state_dict['counters'] must have the keys {list(COUNTERS)}, got {counters!r:.80}")
    return {
        "scores": scores.to(torch.float64).clone(),
        "score_steps": steps.to(torch.int64).clone(),
        "observe_calls": _state_int(state_dict, "observe_calls", 0),
        "active_epoch": _state_int(state_dict, "active_epoch", 0, allow_none=True),
        "subset": _selection_from_state(state_dict["subset"], "subset", num_examples),
        "active": _selection_from_state(state_dict["active"], "active", num_examples),
        "counters": {key: _state_int(counters, key, 0) for key in COUNTERS},
    }
