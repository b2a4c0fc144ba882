"""Run training methods on a task and compare them by the wall time they need to reach a target.

A :class:`Method` is a way to pick what each epoch trains on: full data, an ``attent.Teacher``
built from options, or the published AtteNT recipe (``Teacher.published``). :func:`run_method`
trains a task's model with one of them under the task's recipe (every method gets the same model
initialization, data, optimizer, schedule, epochs and evaluation points for a given seed), and
:func:`summarize` turns the runs into rows: final metric, wall time to reach the baseline's final
metric (:func:`time_to_target`), time saved, examples seen and selection overhead. Wall time is the
trainer's: training steps plus every scoring pass and selection, evaluation excluded.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

from ..scores import SCORE_KINDS
from ..teacher import Teacher
from ..trainer import FitResult, fit
from ._task import Task, higher_is_better

__all__ = ["Method", "FULL_DATA", "PUBLISHED", "RunSummary", "run_method", "time_to_target", "summarize", "format_table"]


@dataclass(frozen=True)
class Method:
    """A way to train on a task.

    name: the label in tables and plots. kind: ``"full"`` (every example every epoch, no teacher),
    ``"teacher"`` (``Teacher(N, epochs=E, seed=s, **options)``) or ``"published"``
    (``Teacher.published(N, epochs=E, seed=s, **options)``). options: keyword arguments of that
    constructor (besides the example count, epochs and seed). score: what the training steps feed
    the teacher (``fit``'s ``score``; the published recipe's is ``"loss"``).
    """

    name: str
    kind: Literal["full", "teacher", "published"] = "teacher"
    options: Mapping[str, Any] = field(default_factory=dict)
    score: str = "fgrad"

    def __post_init__(self) -> None:
        if self.kind not in ("full", "teacher", "published"):
            raise ValueError(f"kind must be 'full', 'teacher' or 'published', got {self.kind!r}")
        if self.kind == "full" and self.options:
            raise ValueError(f"a full-data method takes no teacher options, got {dict(self.options)}")
        if self.score not in SCORE_KINDS:
            raise ValueError(f"score must be one of {SCORE_KINDS}, got {self.score!r}")

    def teacher(self, num_examples: int, *, epochs: int, seed: int) -> Teacher | None:
        """The teacher of a run over ``num_examples`` examples and ``epochs`` epochs (None for full data)."""
        if self.kind == "full":
            return None
        if self.kind == "published":
            return Teacher.published(num_examples, epochs=epochs, seed=seed, **self.options)
        return Teacher(num_examples, epochs=epochs, seed=seed, **self.options)

    def describe(self) -> dict[str, Any]:
        """The method as plain values (schedules and strategies by their repr), for JSON records."""
        plain = (str, int, float, bool, type(None))
        return {"name": self.name, "kind": self.kind, "score": self.score,
                "options": {k: v if isinstance(v, plain) else repr(v) for k, v in self.options.items()}}


FULL_DATA = Method("full data", "full")
PUBLISHED = Method("published AtteNT", "published", score="loss")


def run_method(
    task: Task,
    method: Method,
    *,
    seed: int = 0,
    epochs: int | None = None,
    device: str | None = None,
    progress: bool = False,
    out_dir: str | os.PathLike | None = None,
) -> FitResult:
    """Train a fresh model of ``task`` with ``method`` under the task's recipe.

    The model is initialized from ``seed`` (:meth:`Task.model`), trained for ``epochs`` epochs
    (default: the task's) with the task's optimizer, per-epoch warm-up + cosine schedule,
    gradient clipping, batch size and evaluation interval, and ``fit`` runs with ``seed``.

    Returns:
        The :class:`attent.trainer.FitResult`; its ``history`` holds ``task.metric`` at every evaluation.
    """
    recipe = task.defaults
    epochs = recipe.epochs if epochs is None else epochs
    model = task.model(seed)
    optimizer = task.optimizer(model)
    return fit(
        model, task.train, loss=task.loss, optimizer=optimizer,
        teacher=method.teacher(len(task.train), epochs=epochs, seed=seed), score=method.score, epochs=epochs,
        batch_size=recipe.batch_size, eval_data=task.val, lr_scheduler=task.lr_scheduler(optimizer, epochs),
        lr_scheduler_interval="epoch", max_grad_norm=recipe.max_grad_norm, eval_every=recipe.eval_every,
        device=device, progress=progress, out_dir=out_dir, seed=seed,
    )


def time_to_target(history: Sequence[Mapping[str, Any]], metric: str, target: float, *, time_key: str = "wall_time") -> float | None:
    """The first ``time_key`` at which ``metric`` reaches ``target``, or None if it never does.

    "Reaches" follows the metric's direction: ``>= target`` for accuracy, ``<= target`` for losses
    and perplexity (see ``attent.tasks.METRIC_GOALS``). Records without a finite ``metric`` are skipped.
    """
    upward = higher_is_better(metric)
    for record in history:
        value = record.get(metric)
        if value is None or not math.isfinite(value):
            continue
        if (value >= target) if upward else (value <= target):
            return float(record[time_key])
    return None


@dataclass(frozen=True)
class RunSummary:
    """One run against a baseline's final metric (the target).

    final: the run's last ``metric``. time_to_target: wall seconds to reach the target (None: never
    reached). time_saved: 1 - time_to_target / the baseline's time_to_target (None when either is
    None). wall_time: the run's total wall seconds. examples_seen: training examples forwarded.
    selection_overhead: selection seconds / wall seconds.
    """

    method: str
    final: float
    time_to_target: float | None
    time_saved: float | None
    wall_time: float
    examples_seen: int
    selection_overhead: float


def summarize(results: Mapping[str, FitResult], *, metric: str, baseline: str) -> list[RunSummary]:
    """One :class:`RunSummary` per run, in ``results`` order; the target is the final ``metric`` of
    ``results[baseline]`` (the baseline's own time to target is when it first reached its final value)."""
    if baseline not in results:
        raise ValueError(f"baseline {baseline!r} is not among the runs {list(results)}")
    for name, result in results.items():
        if not result.history or metric not in result.final:
            raise ValueError(f"run {name!r} recorded no {metric!r}: give the runs evaluation data")
    target = results[baseline].final[metric]
    reference = time_to_target(results[baseline].history, metric, target)
    rows = []
    for name, result in results.items():
        reached = time_to_target(result.history, metric, target)
        saved = None if reached is None or not reference else 1.0 - reached / reference
        rows.append(RunSummary(name, float(result.final[metric]), reached, saved, result.wall_time, result.examples_seen,
                               result.selection_overhead))
    return rows


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: the header, a rule, then the rows, columns padded to their widest cell
    (the first column left-aligned, the others right-aligned)."""
    if any(len(row) != len(header) for row in rows):
        raise ValueError(f"every row must have {len(header)} cells like the header")
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(row) for row in rows)])
