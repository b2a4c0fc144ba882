"""Run training methods on a task at a budget, and compare them the way a user decides: by the
quality each reaches for the wall time it spends.

A :class:`Method` is a way to pick what each epoch trains on: full data, an ``attent.Teacher``
built from options, the published AtteNT recipe (``Teacher.published``), selection from a
presampled pool by a reference's learnability (``attent.PoolSelection``), a one-off static filter by
the same reference then uniform training on what it keeps, or full data with the reference's clean
holdout added to the training set (the baseline that gets the reference's data). :func:`run_method`
trains a task's model with one of them at a budget b (the fraction of the recipe's ``epochs * N``
training examples it may process: full data runs the shortened schedule of ``round(b * epochs)``
epochs, a teacher shrinks its subsets over the recipe's epochs) under the task's recipe (the same
model initialization, data, optimizer, step-exact learning-rate schedule and evaluation points for
a given seed). :mod:`attent.tasks.frontier` turns the runs into quality-vs-time frontiers.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Sequence

from torch.utils.data import ConcatDataset

from ..pool import PoolSelection
from ..schedules import budget_sizes
from ..scores import SCORE_KINDS
from ..teacher import Teacher
from ..trainer import FitResult, fit
from ._task import Task

__all__ = ["Method", "FULL_DATA", "PUBLISHED", "REFERENCE_KINDS", "run_method", "run_cost",
           "final_metric", "format_table", "FINAL_EVALUATIONS", "EVAL_POINTS"]

REFERENCE_KINDS = ("pool", "static")  # the kinds that read the task's reference model

FINAL_EVALUATIONS = 3  # a run's quality: the mean of its last three evaluations (less noise than the last one)
EVAL_POINTS = 20  # evaluations evenly spaced over each run's steps: the last three at 90%, 95% and 100% of it


@dataclass(frozen=True)
class Method:
    """A way to train on a task.

    name: the label in tables and plots. kind: ``"full"`` (every example every epoch, no teacher),
    ``"teacher"`` (``Teacher(N, epochs=E, seed=s, budget=b, **options)``), ``"published"``
    (``Teacher.published(N, epochs=E, seed=s, **options)``, which has no budget: it runs at b = 1
    only), ``"pool"`` (``fit(pool=PoolSelection(**options), reference=...)``), ``"static"`` (the
    ``options["keep"]`` share of the pool with the lowest reference loss, then full data's
    shortened schedule on it at the same number of examples) or ``"holdout"`` (the task's clean
    holdout added to the pool, full data's shortened schedule at the same number of examples).
    options: keyword arguments of that constructor. score: what the training steps feed
    the teacher (``fit``'s ``score``; the published recipe's is ``"loss"``). extra: options that
    depend on the run, ``extra(epochs, budget) -> options`` (e.g. one cycle per epoch). budgeted:
    False for strategies that size their own subsets (InfoBatch): the teacher gets no ``budget=``
    (``extra`` then sets options that approach it; the run records what it really spent).
    A method's teachers select whatever the evidence (``when="always"``, unless its options say
    otherwise): the comparisons measure selection itself.
    """

    name: str
    kind: Literal["full", "teacher", "published"] = "teacher"
    options: Mapping[str, Any] = field(default_factory=dict)
    score: str = "fgrad"
    extra: Callable[[int, float], Mapping[str, Any]] | None = None
    budgeted: bool = True

    def __post_init__(self) -> None:
        if self.kind not in ("full", "teacher", "published", "pool", "static", "holdout"):
            raise ValueError(f"kind must be 'full', 'teacher', 'published', 'pool', 'static' or 'holdout', got {self.kind!r}")
        if self.kind in ("full", "holdout") and self.options:
            raise ValueError(f"a full-data method takes no teacher options, got {dict(self.options)}")
        if self.kind == "pool":
            PoolSelection(**self.options)
        if self.kind == "static" and set(self.options) != {"keep"}:
            raise ValueError(f"a static filter takes options {{'keep': share}}, got {dict(self.options)}")
        if self.score not in SCORE_KINDS:
            raise ValueError(f"score must be one of {SCORE_KINDS}, got {self.score!r}")

    def budgets(self, budgets: Sequence[float]) -> list[float]:
        """The budgets this method runs at, of those asked (the published recipe: 1.0 only)."""
        return [b for b in budgets if b == 1.0] if self.kind == "published" else list(budgets)

    def teacher(self, num_examples: int, *, epochs: int, seed: int, budget: float = 1.0) -> Teacher | None:
        """The teacher of a run over ``num_examples`` examples, ``epochs`` epochs and ``budget``
        (None for full data)."""
        if self.kind not in ("teacher", "published"):
            return None
        if self.kind == "published":
            if budget != 1.0:
                raise ValueError(f"the published recipe has no budget: it runs at budget 1.0, not {budget}")
            return Teacher.published(num_examples, epochs=epochs, seed=seed, **{"when": "always", **self.options})
        options = {"when": "always", **self.options, **(self.extra(epochs, budget) if self.extra is not None else {})}
        if self.budgeted:
            options["budget"] = budget
        return Teacher(num_examples, epochs=epochs, seed=seed, **options)

    def describe(self) -> dict[str, Any]:
        """The method as plain values (schedules and strategies by their repr), for JSON records."""
        plain = (str, int, float, bool, type(None))
        return {"name": self.name, "kind": self.kind, "score": self.score,
                "options": {k: v if isinstance(v, plain) else repr(v) for k, v in self.options.items()},
                "extra": None if self.extra is None else self.extra.__doc__, "budgeted": self.budgeted}


    @property
    def needs_reference(self) -> bool:
        """Whether the method reads the task's reference model (its kind does, or its score is
        ``"learnability"``)."""
        return self.kind in REFERENCE_KINDS or self.score == "learnability"


FULL_DATA = Method("full data", "full")
PUBLISHED = Method("published AtteNT", "published", score="loss")


def _training_plan(task: Task, method: Method, *, epochs: int, budget: float, reference: Any) -> tuple[Any, int, float]:
    """(training set, epochs, budget) of a run: the static filter and the holdout-added baseline
    train full data's shortened schedule on their own set for the examples ``floor(budget * epochs *
    N)`` of the task's pool of N (epochs: enough whole passes over their set, at most ``epochs`` more)."""
    if method.kind == "static":
        data = reference.filtered(method.options["keep"])
    elif method.kind == "holdout":
        holdout = task.info.get("holdout")
        if holdout is None:
            raise ValueError(f"task {task.name!r} has no clean holdout (info['holdout']) to add to its training data")
        data = ConcatDataset([task.train, holdout])
    else:
        return task.train, epochs, budget
    examples = sum(budget_sizes(epochs, len(task.train), budget))
    own_epochs = max(1, math.ceil(examples / len(data)))
    return data, own_epochs, min(1.0, examples / (own_epochs * len(data)))


def run_method(
    task: Task,
    method: Method,
    *,
    seed: int = 0,
    budget: float = 1.0,
    epochs: int | None = None,
    device: str | None = None,
    progress: bool = False,
    out_dir: str | os.PathLike | None = None,
    reference: Any = None,
) -> FitResult:
    """Train a fresh model of ``task`` with ``method`` at ``budget`` under the task's recipe.

    The model is initialized from ``seed`` (:meth:`Task.model`), the recipe has ``epochs`` epochs
    (default: the task's) with the task's optimizer, its warm-up + cosine schedule over the
    optimizer steps the run takes (warming up for the recipe's share of them), gradient clipping and
    batch size; ``EVAL_POINTS`` evaluations evenly spaced over the run's steps (so that runs whose
    epochs differ in length are measured at the same progress); ``fit`` runs with ``seed`` and
    ``budget``. ``reference``: the task's :class:`attent.Reference` for the methods that read it
    (a static filter needs one; pooled selection without one has no evidence of waste and trains
    full data's shortened schedule, scored by ``"loss"``, saying so).

    Returns:
        The :class:`attent.trainer.FitResult`; its ``history`` holds ``task.metric`` at every evaluation.
    """
    recipe = task.defaults
    epochs = recipe.epochs if epochs is None else epochs
    if method.kind == "static" and reference is None:
        raise ValueError(f"method {method.name!r} filters by the task's reference model: pass reference=")
    data, run_epochs, run_budget = _training_plan(task, method, epochs=epochs, budget=budget, reference=reference)
    teacher = method.teacher(len(data), epochs=run_epochs, seed=seed, budget=budget)
    score = method.score if method.kind != "pool" or reference is not None else "loss"
    selection = {"pool": PoolSelection(**method.options)} if method.kind == "pool" else {}
    if score == "learnability":
        selection["reference"] = reference
    model = task.model(seed)
    return fit(
        model, data, loss=task.loss, optimizer=task.optimizer(model), teacher=teacher, score=score,
        epochs=run_epochs, budget=run_budget if teacher is None or teacher.budget is not None else 1.0,
        batch_size=recipe.batch_size, eval_data=task.val, lr_scheduler=task.lr_schedule(epochs),
        max_grad_norm=recipe.max_grad_norm, eval_points=EVAL_POINTS, device=device, progress=progress,
        out_dir=out_dir, seed=seed, **selection,
    )


def run_cost(result: FitResult, method: Method, reference: Any) -> dict[str, float]:
    """A run's cost by item: the reference's training and scoring (seconds and examples, charged to
    each run that reads it: cold), candidate forwards (pooled selection's scored examples) and
    refresh-pass examples, training steps and examples, training and selection seconds."""
    uses = method.needs_reference and reference is not None
    cost = reference.cost if uses else None
    pooled = method.kind == "pool"
    return {
        "reference_train_s": cost.train_time if uses else 0.0, "reference_score_s": cost.score_time if uses else 0.0,
        "reference_train_examples": cost.train_examples if uses else 0,
        "reference_scored_examples": cost.scored_examples if uses else 0,
        "candidate_forwards": result.examples_scored if pooled else 0,
        "refresh_examples": 0 if pooled else result.examples_scored,
        "train_steps": result.steps, "train_examples": result.examples_seen,
        "train_s": result.train_time, "selection_s": result.selection_time,
    }


def final_metric(history: Sequence[Mapping[str, Any]], metric: str, last: int = FINAL_EVALUATIONS) -> float:
    """The mean of ``metric`` over the last ``last`` evaluations that hold a finite value (fewer
    when the run made fewer); a ValueError when none does."""
    values = [float(r[metric]) for r in history if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])]
    if not values:
        raise ValueError(f"the history holds no finite {metric!r}: give the run evaluation data")
    tail = values[-last:]
    return sum(tail) / len(tail)


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: the header, a rule, then the rows, columns padded to their widest cell
    (the first column left-aligned, the others right-aligned)."""
    if any(len(row) != len(header) for row in rows):
        raise ValueError(f"every row must have {len(header)} cells like the header")
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(row) for row in rows)])
