"""The teaching protocol: one object that every trainer drives (``attent.fit``, the Hugging Face
trainer, or a loop of your own).

    teaching = attent.Teaching(teacher, attent.Scorer("fgrad", "cross_entropy"), num_examples=N)
    teaching.check_epochs(E)                                  # the run's length fits the teacher's plan
    for epoch in range(E):
        start = teaching.begin_epoch(epoch, step=step, model=model, batches=refresh_batches)
        for idx, (x, y) in batches_in(start.order):           # this rank's example order
            pred = model(x); losses = loss(pred, y)           # (B,) per-example losses
            weights = teaching.loss_weights(idx)              # the teacher's unbiasing weights (or 1)
            ... backward of (losses * weights).mean(), optimizer step ...
            teaching.observe(idx, teaching.scorer.step_scores(pred, y, losses), step=step)
    teaching.flush()                                          # before saving or reading the teacher

``begin_epoch`` runs what the teacher asks for before a selection (a scoring pass over
``teacher.refresh_indices(epoch)``, batched by the trainer's ``batches(indices)`` callable), selects,
orders and shards the epoch, and returns an :class:`EpochStart` (this rank's order and a record for
logs). Without a teacher the protocol is plain full-data training: every epoch a seeded
permutation, weights of 1, nothing observed; so a trainer has one code path for both.

Whether the teacher selects at all is decided once, when the protocol is built, by the teacher's
``when`` and the run's ``reference`` (:func:`attent.teacher.selection_decision`): a teacher with
``when="evidence"`` (the default) selects only where the reference finds waste in the data;
otherwise the run is full data's shortened schedule at the teacher's budget (``selects`` False,
``reason`` why, a warning, and ``uniform`` in every epoch's record), and the teacher is never fed.

``observe`` only keeps the step's scores where they are (on the model's device: no copy to the
host, no synchronization, no collective per step); ``flush`` hands everything kept to the teacher
in one ``Teacher.observe`` (each score with its own step), and ``begin_epoch`` flushes first, so
every selection reads every score observed before it. A trainer flushes before it saves or reads
the teacher's state (a checkpoint, the end of training).

With ``"learnability"`` scores, the examples the learner has not been scored on are ranked by a
prior at each selection, their learnability estimated as the learner's typical loss (the mean
loss of the examples scored, scores plus reference losses) less their reference loss: the first
selection ranks by the reference alone (the static filter's order), later ones put unseen and
seen examples on one footing. Without it the teacher takes unseen examples first, every
mislabelled one included, before learnability steers.

``planned_sizes`` / ``planned_steps`` give the work the run will do, from the teacher's plan, so
learning-rate schedules and progress counters can be sized for the epochs the run actually takes.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from . import _distributed
from .schedules import budget_sizes
from .scores import Batches, Scorer
from .teacher import Teacher, learnability_prior, selection_decision

__all__ = ["EpochStart", "Teaching", "HISTOGRAM_BINS"]

HISTOGRAM_BINS = 40


@dataclass(frozen=True)
class EpochStart:
    """What :meth:`Teaching.begin_epoch` hands the trainer.

    order: (k,) int64 this rank's example indices for the epoch, in training order. record: the
    epoch's selection record for logs: ``epoch`` (1-based: the epoch's number, as an evaluation at
    its end counts epochs completed), ``step``, ``ratio``, ``selected`` (examples, all
    ranks), ``is_full``, ``refreshed`` (examples re-scored), and at a teacher's selection points
    ``histogram`` (counts and bin edges of the finite scores it held then).
    """

    order: torch.Tensor
    record: dict[str, Any]

    @property
    def refreshed(self) -> int:
        return int(self.record["refreshed"])


class Teaching:
    """The teaching protocol (see the module docstring).

    Args:
        teacher: an :class:`attent.Teacher`, or None for full-data training.
        scorer: the :class:`attent.Scorer` whose scores the teacher is fed.
        num_examples: the training set's length (checked against the teacher's).
        seed: the full-data order: epoch e visits ``torch.randperm(N, generator=seeded(seed + e))``.
        full_sizes: without a teacher, the examples of each epoch (``schedules.budget_sizes``: a
            budget's shortened schedule ends with a partial epoch, the start of that order);
            None: every epoch is whole.
        reference: the run's :class:`attent.Reference` (or reference losses, or None), read for
            its evidence when the teacher's ``when`` is ``"evidence"``.
    """

    def __init__(self, teacher: Teacher | None, scorer: Scorer, *, num_examples: int, seed: int = 0,
                 full_sizes: list[int] | None = None, reference: Any = None):
        if teacher is not None and not isinstance(teacher, Teacher):
            raise TypeError(f"teacher must be an attent.Teacher or None, got {type(teacher).__name__}")
        if num_examples < 1:
            raise ValueError("the training data is empty")
        if teacher is not None and teacher.num_examples != num_examples:
            raise ValueError(f"teacher was built for {teacher.num_examples} examples but the training data has {num_examples}")
        if full_sizes is not None and (teacher is not None or not all(0 < s <= num_examples for s in full_sizes)):
            raise ValueError(f"full_sizes are for full-data training, each in [1, {num_examples}], got {full_sizes}")
        self.planned_teacher = teacher
        self.selects, self.reason = True, None
        if teacher is not None:
            self.selects, self.reason = selection_decision(teacher.when, reference, scorer.kind)
            if not self.selects:
                full_sizes = self._uniform_sizes(teacher, num_examples)
                warnings.warn(f"this run trains uniformly (full data's shortened schedule at the teacher's budget, the "
                              f"teacher unused): {self.reason}", RuntimeWarning, stacklevel=3)
                teacher = None
        self.teacher, self.scorer = teacher, scorer
        self.num_examples, self.seed, self.full_sizes = num_examples, seed, full_sizes
        self._pending: list[tuple[torch.Tensor, torch.Tensor, int]] = []

    @staticmethod
    def _uniform_sizes(teacher: Teacher, num_examples: int) -> list[int] | None:
        """Full data's epochs in place of a teacher that does not select: its budget's shortened
        schedule over its planned epochs (None: whole epochs, as many as the run asks)."""
        epochs, budget = teacher.plan.epochs, teacher.budget
        if epochs is None or budget is None or budget == 1.0:
            return None if epochs is None else [num_examples] * epochs
        return budget_sizes(epochs, num_examples, budget)

    @property
    def passes(self) -> int | None:
        """Epochs the run takes: the full-data epochs of a run without a selecting teacher (or
        the teacher's plan where it selects); None when open-ended."""
        if self.teacher is not None:
            return self.teacher.plan.epochs
        return None if self.full_sizes is None else len(self.full_sizes)

    def check_epochs(self, epochs: int) -> None:
        """Raise a ValueError unless a run of ``epochs`` epochs fits the teacher's plan (a teacher
        built for another length would crash at its end or silently cut its schedule)."""
        planned = None if self.planned_teacher is None else self.planned_teacher.plan.epochs
        if planned is not None and planned != epochs:
            raise ValueError(f"teacher plans {planned} epochs but the run is asked for {epochs}; build the teacher "
                             f"with epochs={epochs} (or epochs=None for an open-ended plan)")

    def begin_epoch(self, epoch: int, *, step: int, model: nn.Module | None = None,
                    batches: Callable[[torch.Tensor], Batches] | None = None,
                    autocast_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                    shard: bool = True) -> EpochStart:
        """Refresh what the teacher asks, select, order and shard epoch ``epoch``.

        Args:
            epoch: 0-based epoch. step: optimizer steps taken so far (the refresh scores' step).
            model: the model, for scoring passes. batches: ``batches(indices)`` yields
                ``(indices, inputs, targets)`` over those examples on the model's device (the
                trainer's collation and placement); needed when the teacher refreshes.
            autocast_context: the trainer's autocast, for scoring passes.
            shard: under torch.distributed, return this rank's shard of the order (False: the whole
                order, for trainers whose data loader splits batches between processes itself).
        """
        self.flush()
        teacher = self.teacher
        if teacher is None:
            order = torch.randperm(self.num_examples, generator=torch.Generator().manual_seed(self.seed + epoch))
            order = order[: self._full_size(epoch)]
            record = {"epoch": epoch + 1, "step": step, "ratio": len(order) / self.num_examples,
                      "selected": len(order), "is_full": len(order) == self.num_examples, "refreshed": 0}
            if self.planned_teacher is not None:
                record["uniform"] = self.reason
            return EpochStart(_distributed.shard(order) if shard else order, record)
        refresh = teacher.refresh_indices(epoch)
        refreshed = 0 if refresh is None else int(refresh.numel())
        if refreshed:
            if model is None or batches is None:
                raise ValueError(f"the teacher asks for a scoring pass over {refreshed} examples before epoch {epoch}: "
                                 "begin_epoch needs model= and batches=")
            indices, scores = self.scorer.score_batches(model, batches(refresh), autocast_context=autocast_context)
            teacher.observe(indices, scores, step=step)
        prior = self._learnability_prior()
        selection = teacher.select(epoch) if prior is None else teacher.select(epoch, prior=prior)
        record = {"epoch": epoch + 1, "step": step, "ratio": float(selection.ratio), "selected": len(selection),
                  "is_full": bool(selection.is_full), "refreshed": refreshed}
        if teacher.plan.at(epoch).is_selection_point:
            record["histogram"] = self._histogram()
        return EpochStart(teacher.epoch_order(epoch, shard=shard), record)

    def _learnability_prior(self) -> torch.Tensor | None:
        """For ``"learnability"``: :func:`attent.teacher.learnability_prior` of the scorer's
        reference losses (the module docstring); None for other kinds."""
        if self.scorer.kind != "learnability":
            return None
        return learnability_prior(self.teacher, self.scorer.reference_losses)

    def _histogram(self) -> dict[str, list[float]]:
        held = self.teacher.scores[self.teacher.score_steps >= 0]
        finite = held[torch.isfinite(held)].numpy()
        counts, edges = np.histogram(finite, bins=HISTOGRAM_BINS) if finite.size else (np.zeros(0), np.zeros(0))
        return {"counts": counts.tolist(), "edges": edges.tolist()}

    def loss_weights(self, indices: torch.Tensor) -> torch.Tensor:
        """(b,) float32 per-example loss weights of a batch under the epoch's selection (1 without a
        teacher), on the device of ``indices``."""
        if self.teacher is None:
            return torch.ones(indices.numel(), dtype=torch.float32, device=indices.device)
        return self.teacher.loss_weights(indices)

    @property
    def observes(self) -> bool:
        """True when training steps' scores are wanted (there is a teacher)."""
        return self.teacher is not None

    def observe(self, indices: torch.Tensor, scores: torch.Tensor, *, step: int) -> None:
        """Keep a training step's scores for the teacher (nothing without one) until the next
        :meth:`flush`: indices (b,) integers, scores (b,) real, on any device; step: the optimizer
        step they were measured at."""
        if self.teacher is None:
            return
        if indices.shape != scores.shape or indices.dim() != 1:
            raise ValueError(f"indices and scores must have the same shape (b,), got indices {tuple(indices.shape)} and "
                             f"scores {tuple(scores.shape)}")
        self._pending.append((indices.detach(), scores.detach(), step))

    @property
    def pending(self) -> int:
        """Scores observed and not yet handed to the teacher."""
        return sum(int(indices.numel()) for indices, _, _ in self._pending)

    def flush(self) -> None:
        """Hand every kept score to the teacher in one ``Teacher.observe`` (one copy to the host;
        under torch.distributed one collective, so every rank must call it at the same point)."""
        if self.teacher is None:
            return
        pending, self._pending = self._pending, []
        if not pending and not _distributed.is_distributed():
            return
        if pending:  # one concatenation where the tensors live, then one copy to the host
            indices = torch.cat([indices for indices, _, _ in pending]).cpu()
            scores = torch.cat([scores for _, scores, _ in pending]).cpu()
            sizes = torch.tensor([int(kept.numel()) for kept, _, _ in pending], dtype=torch.int64)
            steps = torch.tensor([step for _, _, step in pending], dtype=torch.int64).repeat_interleave(sizes)
        else:  # under torch.distributed a rank with nothing kept still joins the collective
            indices, scores, steps = (torch.zeros(0, dtype=dtype) for dtype in (torch.int64, torch.float64, torch.int64))
        self.teacher.observe(indices, scores, step=steps)

    def planned_sizes(self, epochs: int) -> list[int | None]:
        """Examples each of the run's ``epochs`` epochs trains on (all ranks together), None where
        the strategy sizes the subset from the scores (InfoBatch)."""
        if self.teacher is None:
            return [self._full_size(epoch) for epoch in range(epochs)]
        return [self.teacher.planned_size(epoch) for epoch in range(epochs)]

    def _full_size(self, epoch: int) -> int:
        """Examples of a full-data epoch: ``full_sizes[epoch]`` where given, else every example."""
        sizes = self.full_sizes or []
        return sizes[epoch] if epoch < len(sizes) else self.num_examples

    def planned_steps(self, epochs: int, steps_of: Callable[[int], int]) -> int:
        """Optimizer steps of a run of ``epochs`` epochs: the sum of ``steps_of(examples)`` (the
        trainer's batching, sharding and accumulation) over the planned epoch sizes; an epoch whose
        size is not known in advance (InfoBatch) counts as full data, an upper bound."""
        return sum(steps_of(self.num_examples if size is None else size) for size in self.planned_sizes(epochs))
