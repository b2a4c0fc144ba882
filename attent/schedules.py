"""Ratio and interval schedules, and the epoch plan they make with warm-up, cycles and annealing.

A teaching run of ``epochs`` epochs is laid out as

    [warm-up: full data] [cycle 0] [cycle 1] ... [cycle C-1] [annealing: full data]

Each cycle starts with a *selection point*: the teacher picks a subset of ``ratio`` of the examples,
the learner trains on it for ``interval`` epochs, then on the full data for the rest of the cycle.
The teaching span (the epochs between warm-up and annealing) is split into ``cycles`` cycles whose
lengths differ by at most one epoch (the first ``span % cycles`` cycles get the extra epoch). Cycle
``c`` of ``C`` sits at progress ``c / (C - 1)`` (1.0 when ``C`` is 1), which sets its ratio and its
interval:

- ratio ``constant``: ``initial``; ``incremental``: linear from ``initial`` to ``final``;
  ``cosine``: ``initial + (final - initial) (1 - cos(pi * progress)) / 2``. Values are clamped to
  the range between ``initial`` and ``final``.
- interval ``fixed``: ``initial``; ``incremental``: ``initial + floor((maximum - initial) *
  progress)``. A cycle never trains on its subset for more epochs than it has.

This is the layout of the published AtteNT code (``AtteNTComplex``): one full-data epoch, then
``total_cycles=10`` cycles of ``(epochs - 1) // total_cycles`` epochs, each training ``interval``
epochs on the subset selected at its start and the rest on the full data; ratio ``cosine`` from
0.2 to 0.8; interval ``fixed`` at 5 (``incremental`` up to ``max_interval=10``). The published code
leaves the ``(epochs - 1) % total_cycles`` remaining epochs untrained; here they lengthen the first
cycles, so a run has exactly ``epochs`` epochs. With ``reselect_each_epoch`` every subset epoch is
a selection point of its own, as the published soft strategy does.

Without a known number of epochs the plan is open-ended: after warm-up, a selection point every
``interval`` epochs at a constant ratio (no cycles, no annealing).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "RATIO_KINDS",
    "INTERVAL_KINDS",
    "PHASES",
    "PUBLISHED_CYCLES",
    "RatioSchedule",
    "ScaledRatio",
    "IntervalSchedule",
    "EpochPlan",
    "TeachingPlan",
    "check_count",
    "check_fraction",
    "budget_sizes",
    "progress_of",
]

RATIO_KINDS: tuple[str, ...] = ("constant", "incremental", "cosine")
INTERVAL_KINDS: tuple[str, ...] = ("fixed", "incremental")
PHASES: tuple[str, ...] = ("warmup", "subset", "full", "anneal")
PUBLISHED_CYCLES = 10


def check_fraction(name: str, value: float) -> float:
    """``value`` as a float in (0, 1], else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")
    return float(value)


def check_count(name: str, value: int, minimum: int) -> int:
    """``value`` as an int >= ``minimum``, else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def budget_sizes(epochs: int, num_examples: int, budget: float) -> list[int]:
    """The full-data schedule at a budget (the shortened recipe a user would otherwise run): the
    examples of each epoch, whole epochs of ``num_examples`` and a last partial one, ``floor(budget
    * epochs * num_examples)`` in all (at least one)."""
    total = max(1, math.floor(check_fraction("budget", budget) * check_count("epochs", epochs, 1)
                              * check_count("num_examples", num_examples, 1) + 1e-9))
    whole, rest = divmod(total, num_examples)
    return [num_examples] * whole + ([rest] if rest else [])


def progress_of(index: int, count: int) -> float:
    """Progress of item ``index`` of ``count`` through a schedule: ``index / (count - 1)`` in
    [0, 1], and 1.0 when ``count`` is 1 (a single cycle runs at the final value)."""
    if not 0 <= index < count:
        raise ValueError(f"index must be in [0, count={count}), got {index}")
    return index / (count - 1) if count > 1 else 1.0


def _check_progress(progress: float) -> None:
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must be in [0, 1], got {progress!r}")


@dataclass(frozen=True)
class RatioSchedule:
    """The fraction of the examples selected at a selection point, as a function of progress.

    kind: ``"constant"`` (``initial`` throughout; ``final`` must equal it), ``"incremental"``
    (linear from ``initial`` to ``final``) or ``"cosine"`` (half-cosine from ``initial`` to
    ``final``). Ratios are in (0, 1]. The defaults are the published ones: cosine, 0.2 to 0.8.
    """

    kind: Literal["constant", "incremental", "cosine"] = "cosine"
    initial: float = 0.2
    final: float = 0.8

    def __post_init__(self) -> None:
        if self.kind not in RATIO_KINDS:
            raise ValueError(f"ratio schedule kind must be one of {RATIO_KINDS}, got {self.kind!r}")
        object.__setattr__(self, "initial", check_fraction("initial ratio", self.initial))
        object.__setattr__(self, "final", check_fraction("final ratio", self.final))
        if self.kind == "constant" and self.initial != self.final:
            raise ValueError(
                f"a constant ratio schedule has one ratio, got initial={self.initial} and "
                f"final={self.final}; use RatioSchedule.constant(ratio)"
            )

    @classmethod
    def constant(cls, ratio: float) -> "RatioSchedule":
        """``ratio`` at every selection point."""
        return cls("constant", ratio, ratio)

    @classmethod
    def incremental(cls, initial: float = 0.2, final: float = 0.8) -> "RatioSchedule":
        """Linear from ``initial`` to ``final``."""
        return cls("incremental", initial, final)

    @classmethod
    def cosine(cls, initial: float = 0.2, final: float = 0.8) -> "RatioSchedule":
        """Half-cosine from ``initial`` to ``final`` (the published default)."""
        return cls("cosine", initial, final)

    def value(self, progress: float) -> float:
        """The ratio at ``progress`` in [0, 1]."""
        _check_progress(progress)
        if self.kind == "constant":
            return self.initial
        shape = progress if self.kind == "incremental" else (1.0 - math.cos(math.pi * progress)) / 2.0
        ratio = self.initial + (self.final - self.initial) * shape
        return min(max(ratio, min(self.initial, self.final)), max(self.initial, self.final))


@dataclass(frozen=True)
class ScaledRatio:
    """A ratio schedule's shape times ``scale``, capped at 1: what a teacher given a budget runs
    (the scale is solved so the plan spends the budget). Behaves as a :class:`RatioSchedule`."""

    shape: RatioSchedule
    scale: float

    @property
    def kind(self) -> str:
        return self.shape.kind

    @property
    def initial(self) -> float:
        return self.value(0.0)

    @property
    def final(self) -> float:
        return self.value(1.0)

    def value(self, progress: float) -> float:
        """``min(1, scale * shape.value(progress))``."""
        return min(1.0, self.scale * self.shape.value(progress))


@dataclass(frozen=True)
class IntervalSchedule:
    """How many epochs the learner trains on the subset chosen at a selection point.

    kind: ``"fixed"`` (``initial`` epochs; ``maximum`` is not used) or ``"incremental"``
    (``initial + floor((maximum - initial) * progress)`` epochs). The defaults are the published
    ones: fixed at 5, incremental up to 10.
    """

    kind: Literal["fixed", "incremental"] = "fixed"
    initial: int = 5
    maximum: int = 10

    def __post_init__(self) -> None:
        if self.kind not in INTERVAL_KINDS:
            raise ValueError(f"interval schedule kind must be one of {INTERVAL_KINDS}, got {self.kind!r}")
        object.__setattr__(self, "initial", check_count("initial interval", self.initial, 1))
        object.__setattr__(self, "maximum", check_count("maximum interval", self.maximum, 1))
        if self.kind == "incremental" and self.maximum < self.initial:
            raise ValueError(
                f"an incremental interval schedule needs maximum >= initial, got initial={self.initial}, "
                f"maximum={self.maximum}"
            )

    @classmethod
    def fixed(cls, epochs: int) -> "IntervalSchedule":
        """``epochs`` at every selection point."""
        return cls("fixed", epochs, epochs)

    @classmethod
    def incremental(cls, initial: int = 5, maximum: int = 10) -> "IntervalSchedule":
        """From ``initial`` epochs up to ``maximum`` epochs, linearly in progress, rounded down."""
        return cls("incremental", initial, maximum)

    def value(self, progress: float) -> int:
        """The interval in epochs at ``progress`` in [0, 1]."""
        _check_progress(progress)
        if self.kind == "fixed":
            return self.initial
        return self.initial + int((self.maximum - self.initial) * progress)


@dataclass(frozen=True)
class EpochPlan:
    """What one epoch trains on.

    phase: ``"warmup"`` and ``"anneal"`` (full data before and after the teaching span), ``"full"``
    (full data for the rest of a cycle after its subset epochs) or ``"subset"`` (the subset
    selected at ``selection_epoch``). ``cycle`` is the cycle index (None outside cycles); ``ratio``
    is the target fraction of a subset epoch (1.0 in full-data phases; None where the strategy sets
    the subset size itself).
    """

    epoch: int
    phase: Literal["warmup", "subset", "full", "anneal"]
    cycle: int | None
    selection_epoch: int | None
    ratio: float | None

    @property
    def is_full(self) -> bool:
        """True when the epoch trains on every example."""
        return self.phase != "subset"

    @property
    def is_selection_point(self) -> bool:
        """True when the teacher picks a new subset at the start of this epoch."""
        return self.selection_epoch == self.epoch


class TeachingPlan:
    """The phase, cycle, selection point and ratio of every epoch (see the module docstring).

    epochs: the run's length, or None for an open-ended plan (constant ratio, fixed interval, no
    cycles, no annealing). cycles: the number of cycles (None: ``PUBLISHED_CYCLES`` when ``epochs``
    is known, capped at one per teaching epoch; None in an open-ended plan); an explicit count
    larger than the teaching span is an error. ratio: None when the
    strategy sizes its own subsets (every subset epoch then has ``ratio`` None).
    """

    def __init__(
        self,
        *,
        epochs: int | None,
        warmup_epochs: int = 1,
        anneal_epochs: int = 0,
        cycles: int | None = None,
        ratio: RatioSchedule | ScaledRatio | None = RatioSchedule(),
        interval: IntervalSchedule = IntervalSchedule(),
        reselect_each_epoch: bool = False,
    ):
        self.epochs = None if epochs is None else check_count("epochs", epochs, 1)
        self.warmup_epochs = check_count("warmup_epochs", warmup_epochs, 0)
        self.anneal_epochs = check_count("anneal_epochs", anneal_epochs, 0)
        self.ratio = ratio
        self.interval = interval
        self.reselect_each_epoch = bool(reselect_each_epoch)
        if epochs is None:
            self._check_open_ended(cycles)
            self.cycles: int | None = None
            self._epochs: list[EpochPlan] = []
        else:
            if warmup_epochs + anneal_epochs > epochs:
                raise ValueError(
                    f"warmup_epochs + anneal_epochs must be at most epochs, got warmup_epochs={warmup_epochs}, "
                    f"anneal_epochs={anneal_epochs}, epochs={epochs}"
                )
            span = epochs - warmup_epochs - anneal_epochs
            if cycles is None:
                self.cycles = min(PUBLISHED_CYCLES, span)
            else:
                self.cycles = check_count("cycles", cycles, 1)
                if self.cycles > span:
                    raise ValueError(
                        f"cycles={cycles} does not fit the teaching span of {span} epochs (epochs={epochs} minus "
                        f"warmup_epochs={warmup_epochs} and anneal_epochs={anneal_epochs}): each cycle needs an "
                        f"epoch; pass cycles <= {span} or cycles=None"
                    )
            self._epochs = self._lay_out(span)

    def _check_open_ended(self, cycles: int | None) -> None:
        if cycles is not None:
            raise ValueError(f"cycles={cycles} needs epochs: cycles split a run of known length")
        if self.anneal_epochs:
            raise ValueError(f"anneal_epochs={self.anneal_epochs} needs epochs: annealing ends a run of known length")
        if self.ratio is not None and self.ratio.kind != "constant":
            raise ValueError(
                f"a {self.ratio.kind!r} ratio schedule needs epochs to know its progress; pass epochs=... "
                "or a constant ratio"
            )
        if self.interval.kind != "fixed":
            raise ValueError(
                f"an {self.interval.kind!r} interval schedule needs epochs to know its progress; pass "
                "epochs=... or a fixed interval"
            )

    def _lay_out(self, span: int) -> list[EpochPlan]:
        plans = [EpochPlan(e, "warmup", None, None, 1.0) for e in range(self.warmup_epochs)]
        start = self.warmup_epochs
        base, longer = divmod(span, self.cycles) if self.cycles else (0, 0)
        for cycle in range(self.cycles):
            length = base + (1 if cycle < longer else 0)
            progress = progress_of(cycle, self.cycles)
            ratio = None if self.ratio is None else self.ratio.value(progress)
            subset_epochs = min(self.interval.value(progress), length)
            for offset in range(length):
                epoch = start + offset
                if offset < subset_epochs:
                    selection_epoch = epoch if self.reselect_each_epoch else start
                    plans.append(EpochPlan(epoch, "subset", cycle, selection_epoch, ratio))
                else:
                    plans.append(EpochPlan(epoch, "full", cycle, None, 1.0))
            start += length
        plans.extend(EpochPlan(e, "anneal", None, None, 1.0) for e in range(start, start + self.anneal_epochs))
        return plans

    def at(self, epoch: int) -> EpochPlan:
        """The plan of ``epoch`` (0-based)."""
        epoch = check_count("epoch", epoch, 0)
        if self.epochs is not None:
            if epoch >= self.epochs:
                raise ValueError(f"epoch must be in [0, epochs={self.epochs}), got {epoch}")
            return self._epochs[epoch]
        if epoch < self.warmup_epochs:
            return EpochPlan(epoch, "warmup", None, None, 1.0)
        every = self.interval.initial
        cycle = (epoch - self.warmup_epochs) // every
        selection_epoch = epoch if self.reselect_each_epoch else self.warmup_epochs + cycle * every
        ratio = None if self.ratio is None else self.ratio.initial
        return EpochPlan(epoch, "subset", cycle, selection_epoch, ratio)

    def __repr__(self) -> str:
        return (
            f"TeachingPlan(epochs={self.epochs}, warmup_epochs={self.warmup_epochs}, "
            f"anneal_epochs={self.anneal_epochs}, cycles={self.cycles}, ratio={self.ratio}, interval={self.interval}, "
            f"reselect_each_epoch={self.reselect_each_epoch})"
        )
