"""Quality-vs-time frontiers: what a method buys per unit of wall time, against full data's own.

Every method runs at budgets b (a fraction of the recipe's ``epochs * N`` training examples) over
several seeds; each run is a :class:`Point` (its final quality, the mean of its last evaluations,
and its wall time). Per method, the seed means at each budget, ordered by wall time, are its
frontier. Three readings:

- :func:`time_to_quality`: the least wall time at which a frontier, linearly interpolated between
  its budgets, reaches a target quality: the full-data b = 1 final quality (seed mean) within one
  seed standard deviation of it (:func:`full_data_target`). Its saving is measured against full
  data's own frontier (the shortened schedules), not against the overlong b = 1 run.
- :func:`equal_budget`: a method minus full data at the same budget, per seed (paired: the same
  seed draws the same data and initialization), as mean and spread; positive = better.
- :func:`frontier` itself, for plots.

A run that uses a reference model (:class:`attent.Reference`) records the reference's seconds
apart (``Point.reference_time``): frontiers count them by default (cold: everything counted) and
leave them out with ``amortised=True`` (the reference reused across runs, said so).

All functions know the metric's direction (``higher_is_better``).
"""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

__all__ = ["Point", "FrontierPoint", "mean_std", "frontier", "full_data_target", "time_to_quality", "saving",
           "equal_budget", "SPEND_TOLERANCE"]


@dataclass(frozen=True)
class Point:
    """One run: ``method`` at ``budget`` with ``seed``; ``quality`` its final metric, ``wall_time``
    its training seconds (scoring and selection included, evaluation excluded), ``examples`` the
    training examples it processed, ``selection_overhead`` selection seconds / wall seconds;
    ``steps`` its optimizer steps (None in records written before they were kept);
    ``reference_time`` the seconds its reference model took to train and score (0 without one);
    ``cost`` the run's cost by item (reference training and scoring, candidate forwards, training
    steps, refresh passes, selection), None in older records."""

    method: str
    budget: float
    seed: int
    quality: float
    wall_time: float
    examples: int
    selection_overhead: float
    steps: int | None = None
    reference_time: float = 0.0
    cost: dict[str, float] | None = None

    def total_time(self, *, amortised: bool = False) -> float:
        """Seconds of the run: its wall time plus its reference's (cold), or without it (amortised)."""
        return self.wall_time if amortised else self.wall_time + self.reference_time

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FrontierPoint:
    """A method at one budget, over its seeds: means and sample standard deviations."""

    budget: float
    wall_time: float
    quality: float
    quality_std: float
    examples: float
    seeds: int
    steps: float | None = None


def mean_std(values: Sequence[float]) -> dict[str, float | int | None]:
    """``{"mean", "std", "n"}``: the sample standard deviation (n - 1), 0 for one value; None for none."""
    values = list(values)
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def frontier(points: Iterable[Point], method: str, *, amortised: bool = False) -> list[FrontierPoint]:
    """The method's seed means per budget, ordered by budget (empty when it has no points); wall
    times with the reference's seconds (cold), or without them (``amortised``)."""
    by_budget: dict[float, list[Point]] = {}
    for point in points:
        if point.method == method:
            by_budget.setdefault(point.budget, []).append(point)
    rows = []
    for budget in sorted(by_budget):
        runs = by_budget[budget]
        quality = mean_std([p.quality for p in runs])
        steps = [p.steps for p in runs if p.steps is not None]
        rows.append(FrontierPoint(budget, statistics.fmean(p.total_time(amortised=amortised) for p in runs), quality["mean"],
                                  quality["std"], statistics.fmean(p.examples for p in runs), len(runs),
                                  statistics.fmean(steps) if len(steps) == len(runs) else None))
    return rows


def full_data_target(points: Iterable[Point], *, baseline: str, higher_is_better: bool) -> float:
    """The quality to reach: the baseline's b = 1 seed mean, less one seed standard deviation
    (plus one for a metric where lower is better)."""
    top = [p for p in frontier(points, baseline) if p.budget == 1.0]
    if not top:
        raise ValueError(f"the baseline {baseline!r} has no run at budget 1.0")
    return top[0].quality - top[0].quality_std if higher_is_better else top[0].quality + top[0].quality_std


def _reaches(quality: float, target: float, higher_is_better: bool) -> bool:
    return quality >= target if higher_is_better else quality <= target


def time_to_quality(curve: Sequence[FrontierPoint], target: float, *, higher_is_better: bool) -> float | None:
    """The least wall time at which the frontier ``curve`` reaches ``target``: its points ordered
    by wall time, joined by straight lines (quality against wall time); None if it never does.
    The first point counts from itself (no line from the origin)."""
    ordered = sorted(curve, key=lambda p: p.wall_time)
    for index, point in enumerate(ordered):
        if not _reaches(point.quality, target, higher_is_better):
            continue
        if index == 0:
            return point.wall_time
        before = ordered[index - 1]
        share = (target - before.quality) / (point.quality - before.quality)
        return before.wall_time + share * (point.wall_time - before.wall_time)
    return None


def saving(method_time: float | None, baseline_time: float | None) -> float | None:
    """1 - method_time / baseline_time: the fraction of full data's time to quality saved (None
    when either never reaches the target)."""
    if method_time is None or not baseline_time:
        return None
    return 1.0 - method_time / baseline_time


SPEND_TOLERANCE = 1.02  # a run that processed more than 2% over the baseline's examples is not at its budget


def equal_budget(points: Iterable[Point], *, method: str, baseline: str, budget: float,
                 higher_is_better: bool) -> dict[str, float | int | None]:
    """:func:`mean_std` of the paired per-seed advantage of ``method`` over ``baseline`` at
    ``budget``: quality difference, sign turned so that positive = better. A seed counts only when
    the method processed at most ``SPEND_TOLERANCE`` times the baseline's examples there (InfoBatch
    cannot be held below about half the recipe: its low-budget runs are left out, not compared)."""
    points = list(points)
    mine = {p.seed: p for p in points if p.method == method and p.budget == budget}
    theirs = {p.seed: p for p in points if p.method == baseline and p.budget == budget}
    sign = 1.0 if higher_is_better else -1.0
    paired = [seed for seed in sorted(mine.keys() & theirs.keys())
              if mine[seed].examples <= SPEND_TOLERANCE * theirs[seed].examples]
    return mean_std([sign * (mine[seed].quality - theirs[seed].quality) for seed in paired])
