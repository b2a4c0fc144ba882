"""The thin trainer (layer 5): a plain PyTorch loop that composes a model, a teacher and the scores.

    result = attent.fit(model, train_data, loss="cross_entropy", optimizer=opt, epochs=10,
                        teacher=attent.Teacher(len(train_data), epochs=10), score="fgrad", eval_data=val_data)

``fit`` is a thin adapter over :class:`attent.Teaching`, the protocol every trainer drives: each
epoch the teacher (when given) re-scores the examples it asks for (a scoring pass), selects the
epoch's subset, and the loop trains on that subset only: every example's loss is multiplied by the
teacher's weight for it, and the training step's per-example scores (loss, fgrad from the logits,
or gradnorm from the probe's by-product) are fed back with ``observe``. The scalar options are one
typed :class:`FitOptions` (``attent train --config`` reads the same fields).
Time spent selecting (refresh passes, ``select``, scoring work inside the steps, ``observe``) is
measured apart from training time; evaluation and checkpoint writing are excluded from both and
from ``wall_time``.

No host synchronization per step on CUDA. Each step's times are CUDA events (around the step, and
around the scoring inside it: that part is selection time), its loss sum and a first-non-finite
step stay on the device, and its scores stay there until the teacher's hand-over; all of it is
read at the points the loop waits for the GPU anyway: epoch ends, evaluations, checkpoints and the
end of the run (a CPU run reads them after every step, where reading costs nothing). A pair of
events measures the GPU's timeline between the two points: a step's time includes any wait for the
host (loading its batch), the scoring's is the time its kernels (and any launch gap between them)
take; the sum of the steps' times stays below ``wall_time``, whose host clock is read right after a
synchronization. Exceptions: ``max_time`` is compared with the host clock after every step without
waiting (the GPU may be a queue of work behind it); ``amp="fp16"`` reads the GradScaler's scale
every step, and its ``step`` reads the overflow flag (torch's own synchronization);
``nonfinite_loss="skip"`` reads each step's loss flag before its update; ``pool=`` reads each
step's candidate scores on the host to choose what the step trains on.

A non-finite loss stops the run with a ``FloatingPointError`` naming the first step that had one
(on CUDA: at the next of those points; no checkpoint is written after it), unless
``nonfinite_loss="skip"``. A run whose mean training loss at an evaluation record exceeds
``DIVERGENCE_FACTOR`` times the mean loss of its first step (the untrained model's) gets one
``RuntimeWarning`` that it diverges.

Distributed data parallel: inside an initialized ``torch.distributed`` process group, pass the
model wrapped in ``DistributedDataParallel`` and call ``fit`` on every rank with the same
arguments. Each rank trains on its shard of each epoch (the teacher's sampler shards the
selection; without a teacher the seeded order is split as ``DistributedSampler`` does), refresh
passes split the examples between the ranks, ``observe`` gathers every rank's scores so all
ranks select alike, every rank evaluates the whole eval set, and rank 0 alone writes logs,
checkpoints (holding every rank's RNG state) and plots.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import numbers
import os
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from . import _checkpoint
from ._checkpoint import CHECKPOINT_NAME
from ._distributed import rank_and_world_size
from .pool import PoolSelection, PoolTeaching
from .schedules import budget_sizes
from .scores import (
    AMP_MODES,
    SCORE_KINDS,
    LossSpec,
    Objective,
    Scorer,
    autocast,
    eval_mode,
    forward_batch,
    indexed_loader,
    loader_batches,
    move_to,
    split_batch,
)
from .teacher import Teacher
from .teaching import Teaching

__all__ = ["FitOptions", "FitResult", "fit", "evaluate", "CHECKPOINT_NAME", "METRICS_NAME", "DIVERGENCE_FACTOR"]

METRICS_NAME = "metrics.jsonl"
# A record's mean training loss above this many times the first step's mean loss draws a warning:
# a trained model should not do ten times worse than the untrained one it started as.
DIVERGENCE_FACTOR = 10.0
NONFINITE_LOSS_MODES = ("raise", "skip")
Metric = Callable[[torch.Tensor, Any], torch.Tensor]


@dataclass
class FitResult:
    """What a ``fit`` run did.

    history: one record per evaluation (every epoch end, every ``eval_every`` steps, or the
        ``eval_points``; and the run's last step, where training stops early), each with ``epoch`` (epochs completed, a float), ``step``
        (optimizer steps), ``wall_time`` (training wall-clock seconds, every scoring pass
        included, evaluation excluded), ``train_time``, ``selection_time``, ``examples_seen``
        (training examples forwarded in training steps), ``examples_scored`` (in refresh passes and,
        with ``pool=``, candidate forwards),
        ``ratio`` (the epoch's selected fraction), ``train_loss`` (mean per-example loss since the
        previous record) and the evaluation metrics (``val_loss``; ``val_accuracy`` for
        ``loss="cross_entropy"``; ``val_ppl`` for ``loss="lm"``; ``val_<name>`` for each extra metric).
    selections: one record per epoch: ``epoch`` (the 1-based number of the epoch it starts, the
        same number as that epoch's end-of-epoch ``history`` record), ``step``, ``ratio``, ``selected`` (examples),
        ``is_full``, ``refreshed`` (examples re-scored), ``time`` (seconds), and at a teacher's
        selection points ``histogram`` (counts and bin edges of the finite scores it held then).
    step_times: seconds of each optimizer step's training (forward, backward, update; the step's
        scoring is selection time), one per step, resumed runs included (on CUDA: measured with
        CUDA events, resolved at the loop's synchronization points).
    skipped_steps: the optimizer steps skipped for a non-finite loss (``nonfinite_loss="skip"``).

    ``wall_time``, ``train_time``, ``selection_time``, ``eval_time``, ``examples_seen`` and
    ``examples_scored`` are the last history record's (a run ends with a record at its last step): writing the last checkpoint
    and drawing the plots come after it and count nowhere.
    """

    history: list[dict[str, float]]
    selections: list[dict[str, Any]]
    wall_time: float
    train_time: float
    selection_time: float
    eval_time: float
    examples_seen: int
    examples_scored: int
    steps: int
    epochs_completed: int
    stopped_early: bool
    out_dir: Path | None
    step_times: list[float] = field(default_factory=list)
    skipped_steps: list[int] = field(default_factory=list)

    @property
    def final(self) -> dict[str, float]:
        """The last history record (empty when nothing was recorded)."""
        return self.history[-1] if self.history else {}

    @property
    def selection_overhead(self) -> float:
        """Selection time as a fraction of wall time."""
        return self.selection_time / self.wall_time if self.wall_time > 0 else 0.0

    def wall_time_at_step_price(self, seconds_per_step: float | None = None) -> float:
        """``wall_time`` with every optimizer step's training counted at ``seconds_per_step``
        (default: this run's median step), selection, scoring and the rest as measured: runs of
        the same model and batch size priced at one shared median step time compare their work
        (steps and selection), not the machine's speed while each ran."""
        if not self.step_times:
            return self.wall_time
        price = statistics.median(self.step_times) if seconds_per_step is None else seconds_per_step
        return self.wall_time - sum(self.step_times) + len(self.step_times) * price


def _expect(name: str, value: Any, ok: bool, expected: str) -> None:
    if not ok:
        raise ValueError(f"{name} must be {expected}, got {value!r} ({type(value).__name__})")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass
class FitOptions:
    """The scalar options of :func:`fit` (and of ``attent train --config``), checked on creation.

    epochs: number of epochs of the recipe (a teacher's epoch trains on its selected subset only).
    budget: the fraction of the recipe's ``epochs * N`` training examples the run may process.
        Without a teacher the run is the shortened schedule: ``floor(budget * epochs * N)``
        examples as whole epochs and a last partial one (``schedules.budget_sizes``); a teacher
        must have been built with the same budget (``Teacher(..., budget=)``), which it spends by
        shrinking its subsets over the recipe's epochs.
    score: what training steps feed the teacher: ``"loss"``, ``"fgrad"`` (||dl/dlogits||, the
        paper's rule) or ``"gradnorm"`` (||dl/dtheta||: the probe runs the training backward).
    batch_size: examples per micro-batch; ``grad_accum`` micro-batches make an optimizer step.
    device: where to train (default: CUDA when available, else CPU).
    amp: None, ``"bf16"`` (autocast) or ``"fp16"`` (autocast + GradScaler).
    lr_scheduler_interval: ``"step"`` (the scheduler steps after every optimizer step) or
        ``"epoch"`` (at every epoch end: a schedule in epochs).
    out_dir: when given: ``metrics.jsonl`` (one line per evaluation and per selection),
        ``checkpoint.pt`` (every epoch end, every ``checkpoint_every`` steps and when a budget stops
        training) and the plots of :func:`attent.plots.plot_run` (with the ``plots`` extra).
    progress: show progress on stderr: on a terminal, tqdm bars (the epochs, with the last
        record's loss, ratio, wall time and selection share; the current epoch's batches); elsewhere
        (a log file, a pipe) one plain line per epoch with the same figures, no bars.
    checkpoint_every: also write a checkpoint every this many optimizer steps.
    resume_from: a checkpoint file or a folder holding ``checkpoint.pt``: model, optimizer,
        scheduler, scaler, teacher, position in the epoch and RNG states are restored, so the
        resumed run reproduces the uninterrupted one (with ``num_workers=0``). The file is read
        with ``torch.load(weights_only=True)``: tensors and plain values only, nothing in it runs.
    trust_checkpoint: read ``resume_from`` with full unpickling, which runs any code the file
        names: only for a file you trust that the weights-only read refuses (one written before
        checkpoint format 2, or by a part whose ``state_dict()`` holds other objects).
    seed: seeds torch, numpy and random at the start (not on resume). Without a teacher, epoch e
        visits the examples in the order
        ``torch.randperm(len(train_data), generator=torch.Generator().manual_seed(seed + e))``.
    max_time: stop once the training wall time passes this many seconds.
    max_steps: stop after this many optimizer steps.
    eval_every: also evaluate whenever the run's optimizer step count is a multiple of this (an
        epoch's last step gets its epoch-end record only).
    eval_points: instead of evaluating at every epoch end and every ``eval_every`` steps, evaluate
        at this many evenly spaced optimizer steps of the run's planned steps (the last at its
        final step), so runs of different epoch lengths are measured at the same progress.
    eval_batch_size: batch size of evaluation and refresh passes (default: batch_size).
    max_grad_norm: clip the gradient norm before each step.
    nonfinite_loss: what a NaN or infinite training loss does: ``"raise"`` (the default: the run
        stops with a ``FloatingPointError`` naming the first such step, checked without a per-step
        host synchronization, see the module docstring) or ``"skip"`` (that step makes no update:
        its gradients are dropped, its losses stay out of ``train_loss`` and its scores out of the
        teacher; the step still counts for the step counter, ``examples_seen`` and the learning-rate
        schedule; ``FitResult.skipped_steps`` lists them and one warning at the end counts them).
        Skipping reads each step's finiteness on the host (one synchronization per step on CUDA).
    label_key: the targets' key in mapping items.
    ignore_index: target value the cross-entropy losses skip.
    gradnorm_params: parameters (or names) the ``"gradnorm"`` score covers (default: all trainable).
    score_head: for ``score="loss"`` or ``"fgrad"`` with ``loss="lm"`` or ``"cross_entropy"``: the
        model's output head (an ``nn.Linear`` whose output is the prediction) or its dotted name
        in the model; refresh passes then score from the head's input with
        ``attent_kernels.linear_cross_entropy_scores`` and never form the logits, falling back to
        the logits (with one warning) for a model that changes the head's output (see
        :meth:`attent.Scorer.score_batch`). Training steps score from their logits either way. A
        name is looked up in the model ``fit`` gets (a DDP-wrapped model: ``"module.lm_head"``).
    num_workers: DataLoader worker processes.
    """

    epochs: int
    budget: float = 1.0
    score: str = "fgrad"
    batch_size: int = 64
    device: Any = None
    amp: str | None = None
    grad_accum: int = 1
    lr_scheduler_interval: str = "step"
    out_dir: Any = None
    progress: bool = True
    checkpoint_every: int | None = None
    resume_from: Any = None
    trust_checkpoint: bool = False
    seed: int = 0
    max_time: float | None = None
    max_steps: int | None = None
    eval_every: int | None = None
    eval_points: int | None = None
    eval_batch_size: int | None = None
    max_grad_norm: float | None = None
    nonfinite_loss: str = "raise"
    label_key: str = "labels"
    ignore_index: int = -100
    gradnorm_params: Any = None
    score_head: Any = None
    num_workers: int = 0

    def __post_init__(self) -> None:
        positive = "a positive integer"
        _expect("epochs", self.epochs, _is_int(self.epochs) and self.epochs >= 1, positive)
        _expect("budget", self.budget, _is_real(self.budget) and 0 < self.budget <= 1, "a number in (0, 1]")
        _expect("batch_size", self.batch_size, _is_int(self.batch_size) and self.batch_size >= 1, positive)
        _expect("grad_accum", self.grad_accum, _is_int(self.grad_accum) and self.grad_accum >= 1, positive)
        for name in ("checkpoint_every", "eval_every", "eval_points", "max_steps", "eval_batch_size"):
            value = getattr(self, name)
            _expect(name, value, value is None or (_is_int(value) and value >= 1), f"{positive} or None")
        _expect("num_workers", self.num_workers, _is_int(self.num_workers) and self.num_workers >= 0,
                "a non-negative integer")
        _expect("seed", self.seed, _is_int(self.seed) and self.seed >= 0, "a non-negative integer")
        _expect("ignore_index", self.ignore_index, _is_int(self.ignore_index), "an integer")
        _expect("score", self.score, self.score in SCORE_KINDS, f"one of {SCORE_KINDS}")
        _expect("amp", self.amp, self.amp is None or self.amp in AMP_MODES, f"None or one of {AMP_MODES}")
        _expect("lr_scheduler_interval", self.lr_scheduler_interval, self.lr_scheduler_interval in ("step", "epoch"),
                "'step' or 'epoch'")
        for name in ("progress", "trust_checkpoint"):
            _expect(name, getattr(self, name), isinstance(getattr(self, name), bool), "true or false")
        _expect("nonfinite_loss", self.nonfinite_loss, self.nonfinite_loss in NONFINITE_LOSS_MODES,
                f"one of {NONFINITE_LOSS_MODES}")
        _expect("label_key", self.label_key, isinstance(self.label_key, str), "a string")
        _expect("score_head", self.score_head, self.score_head is None or isinstance(self.score_head, (str, nn.Module)),
                "None, the output head (an nn.Linear) or its dotted name in the model")
        for name in ("max_time", "max_grad_norm"):
            value = getattr(self, name)
            _expect(name, value, value is None or (_is_real(value) and 0 < value < math.inf),
                    "a positive number or None")
        if self.checkpoint_every is not None and self.out_dir is None:
            raise ValueError("checkpoint_every needs out_dir: checkpoints are written to out_dir/" + CHECKPOINT_NAME)

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The option names, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))


@dataclass
class _State:
    """Everything a checkpoint needs besides the model, optimizer, scheduler, scaler and teacher."""

    epoch: int = 0
    batches_done: int = 0
    epoch_order: torch.Tensor | None = None
    ratio: float = 1.0
    step: int = 0
    examples_seen: int = 0
    examples_scored: int = 0
    wall_time: float = 0.0
    train_time: float = 0.0
    selection_time: float = 0.0
    eval_time: float = 0.0
    loss_sum: float = 0.0
    loss_count: int = 0
    initial_loss: float | None = None
    history: list = field(default_factory=list)
    selections: list = field(default_factory=list)
    step_times: list = field(default_factory=list)
    skipped_steps: list = field(default_factory=list)


def evaluate(
    model: nn.Module,
    data: Dataset,
    *,
    loss: LossSpec | Objective,
    batch_size: int = 256,
    collate_fn: Callable[[list], Any] | None = None,
    device: torch.device | str | None = None,
    amp: str | None = None,
    label_key: str = "labels",
    metrics: Mapping[str, Metric] | None = None,
) -> dict[str, float]:
    """Evaluate ``model`` on ``data`` in eval mode under ``torch.no_grad``.

    Returns:
        ``val_loss`` (mean loss per counted position: per token for the cross-entropy losses, per
        example otherwise); ``val_accuracy`` (argmax == target over valid positions) for
        ``loss="cross_entropy"``; ``val_ppl`` = exp(val_loss) for ``loss="lm"``; and for each
        ``metrics`` entry ``name: fn(prediction, targets) -> Tensor[B]`` the mean of its values as
        ``val_<name>``.
    """
    objective = Objective.resolve(loss)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    sums: dict[str, torch.Tensor] = {}  # float64 on the device, read once at the end
    examples = 0
    with eval_mode(model), torch.no_grad():
        for _, batch in indexed_loader(data, batch_size=batch_size, collate_fn=collate_fn):
            inputs, targets = split_batch(move_to(batch, device), label_key)
            with autocast(device, amp):
                pred = forward_batch(model, inputs)
                losses = objective.losses(pred, targets)
            counts = objective.token_counts(pred, targets)
            batch_sums = {"loss": losses.double() * counts, "positions": counts}
            examples += pred.shape[0]
            if objective.name == "cross_entropy":
                batch_sums["correct"], batch_sums["counted"] = objective.correct(pred, targets)
            for name, fn in (metrics or {}).items():
                values = fn(pred, targets)
                if not isinstance(values, torch.Tensor) or values.shape != pred.shape[:1]:
                    raise ValueError(f"metric {name!r} must return per-example values of shape ({pred.shape[0]},)")
                batch_sums[f"val_{name}"] = values.to(pred.device, non_blocking=True)
            for key, values in batch_sums.items():
                total = values.double().sum()
                sums[key] = total if key not in sums else sums[key] + total
    if examples == 0:
        raise ValueError("eval data is empty")
    totals = dict(zip(sums, torch.stack(list(sums.values())).tolist()))
    result = {"val_loss": totals.pop("loss") / max(totals.pop("positions"), 1)}
    if objective.name == "cross_entropy":
        result["val_accuracy"] = totals.pop("correct") / max(totals.pop("counted"), 1)
    if objective.name == "lm":
        result["val_ppl"] = math.exp(min(result["val_loss"], 700.0))
    result.update({key: total / examples for key, total in totals.items()})
    return result


class _HostClock:
    """The loop's clock on a CPU: the work is done when a call returns, so a mark is the host's
    ``perf_counter`` and every step may be settled at once."""

    settles_every_step = True

    def synchronize(self) -> float:
        """Wait for the queued work; the host time after it."""
        return time.perf_counter()

    def mark(self) -> Any:
        """A point in the work queued so far."""
        return time.perf_counter()

    def seconds(self, start: Any, end: Any) -> float:
        """Seconds between two marks (both reached: after ``synchronize``, or ``reached``)."""
        return end - start

    def reached(self, mark: Any) -> bool:
        """Whether the device has done the work queued before ``mark`` (asks, never waits)."""
        return True


class _EventClock(_HostClock):
    """The loop's clock on CUDA: a mark is a timing event recorded on the device's current stream,
    read only after a ``synchronize`` at the loop's synchronization points, so marking a step costs
    no host synchronization."""

    settles_every_step = False

    def __init__(self, device: torch.device):
        self.device = device

    def synchronize(self) -> float:
        torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def mark(self) -> Any:
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))
        return event

    def seconds(self, start: Any, end: Any) -> float:
        return start.elapsed_time(end) / 1000.0

    def reached(self, mark: Any) -> bool:
        return mark.query()


# Steps whose clock marks the loop keeps before it folds those the device has finished.
UNSETTLED_STEPS = 256


def _clock_for(device: torch.device) -> _HostClock:
    return _EventClock(device) if device.type == "cuda" else _HostClock()


def _summary(record: Mapping[str, Any]) -> dict[str, str]:
    """The progress view of an evaluation record: ratio, train loss and the val metrics."""
    keys = ["ratio", "train_loss"] + [key for key in record if key.startswith("val_")]
    return {key: f"{record[key]:.4g}" for key in keys if isinstance(record.get(key), (int, float))}


class _Progress:
    """What ``progress=True`` shows on stderr: on a terminal, tqdm bars (the epochs, and the current
    epoch's batches); elsewhere (a log file, a pipe) no bars, whose carriage returns and escape
    codes would fill the log, but one plain line per epoch."""

    def __init__(self, enabled: bool, epochs: int, done: int):
        self.enabled, self.epochs = enabled, epochs
        self.terminal = enabled and sys.stderr.isatty()
        self.bar = tqdm(total=epochs, initial=done, desc="epochs", unit="epoch", dynamic_ncols=True, disable=not self.terminal)

    def batches(self, epoch: int, total: int, done: int) -> tqdm:
        """The bar of epoch ``epoch``'s batches (disabled off a terminal)."""
        return tqdm(total=total, initial=done, desc=f"epoch {epoch + 1}/{self.epochs}", position=1, leave=False,
                    dynamic_ncols=True, disable=not self.terminal)

    def epoch_done(self, epoch: int, figures: Mapping[str, str]) -> None:
        """Epoch ``epoch`` (1-based) ended with these figures."""
        if self.terminal:
            self.bar.update(1)
            self.bar.set_postfix(figures, refresh=True)
        elif self.enabled:
            print(f"epoch {epoch}/{self.epochs}: " + ", ".join(f"{key} {value}" for key, value in figures.items()),
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        self.bar.close()


class _Run:
    """One ``fit`` call: the options, the live objects and the resumable state."""

    def __init__(self, model: nn.Module, train_data: Dataset, *, loss: Any, optimizer: torch.optim.Optimizer,
                 teacher: Teacher | None, eval_data: Dataset | None, metrics: Mapping[str, Metric] | None,
                 lr_scheduler: Any, collate_fn: Callable[[list], Any] | None, options: FitOptions,
                 reference: Any = None, pool: PoolSelection | None = None):
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if not hasattr(train_data, "__len__") or not hasattr(train_data, "__getitem__"):
            raise ValueError(f"train_data must be a map-style dataset (with __len__ and __getitem__), got {type(train_data).__name__}")
        if len(train_data) == 0:
            raise ValueError("train_data is empty")
        self.options = o = options
        self.model, self.train_data, self.eval_data = model, train_data, eval_data
        self.optimizer, self.metrics, self.collate_fn = optimizer, metrics, collate_fn
        self.objective = Objective.resolve(loss, ignore_index=o.ignore_index)
        self.scorer = Scorer(o.score, self.objective, probe_params=o.gradnorm_params, head=o.score_head, reference=reference)
        if self.scorer.num_examples is not None and self.scorer.num_examples != len(train_data):
            raise ValueError(f"reference holds {self.scorer.num_examples} reference losses but train_data has "
                             f"{len(train_data)} examples")
        if teacher is not None and o.budget != 1.0 and teacher.budget != o.budget:
            raise ValueError(f"fit budget={o.budget} but the teacher was built with budget={teacher.budget}; build it "
                             f"with Teacher(..., epochs={o.epochs}, budget={o.budget})")
        if pool is not None:
            self.teaching = _pool_teaching(pool, teacher, self.scorer, reference, len(train_data), o)
        else:
            full_sizes = None if teacher is not None or o.budget == 1.0 else budget_sizes(o.epochs, len(train_data), o.budget)
            self.teaching = Teaching(teacher, self.scorer, num_examples=len(train_data), seed=o.seed, full_sizes=full_sizes,
                                     reference=reference)
            self.teaching.check_epochs(o.epochs)
        full_sizes = self.teaching.full_sizes
        # the teacher as given (its state is checkpointed), also when the run trains uniformly without it
        self.teacher = teacher
        self.epochs = o.epochs if full_sizes is None else len(full_sizes)
        # pooled selection: the loader yields chunks of nB candidates, train_group keeps nb of each
        self.batch_size = self.teaching.candidates_per_step if pool is not None else o.batch_size
        self.grad_accum = o.grad_accum
        self.eval_batch_size = o.eval_batch_size or o.batch_size
        self.device = torch.device(o.device) if o.device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.out_dir = Path(o.out_dir) if o.out_dir is not None else None
        self.rank, self.world = rank_and_world_size()
        self.step_scheduler_per_epoch = o.lr_scheduler_interval == "epoch"
        self.planned_steps = self.teaching.planned_steps(self.epochs, self.steps_of)
        points = o.eval_points
        self.eval_steps = None if points is None else {max(1, round(k * self.planned_steps / points))
                                                       for k in range(1, points + 1)}
        if callable(lr_scheduler) and not hasattr(lr_scheduler, "step"):
            lr_scheduler = lr_scheduler(optimizer, self.planned_steps)
        self.lr_scheduler = lr_scheduler
        self.clock = _clock_for(self.device)
        self.scaler = torch.amp.GradScaler(self.device.type) if o.amp == "fp16" else None
        self.state = _State()
        self.session_start = 0.0
        self.excluded = 0.0
        # What the steps keep on the device until the next settle(): each step's clock marks (its
        # start and end, and the scoring inside it), the loss sum since the last record, the first
        # step with a non-finite loss (-1: none) and the first step's loss sum and count.
        self.unsettled: list[tuple[Any, Any, list[tuple[Any, Any]]]] = []
        self.loss_total: torch.Tensor | None = None
        self.first_nonfinite: torch.Tensor | None = None
        self.initial_pending: tuple[torch.Tensor, int] | None = None
        self.warned_divergence = False

    def steps_of(self, examples: int) -> int:
        """Optimizer steps of an epoch of ``examples`` (all ranks): this rank's shard in batches,
        grouped by grad_accum."""
        shard = math.ceil(examples / self.world)
        return math.ceil(math.ceil(shard / self.batch_size) / self.grad_accum)

    # ------------------------------------------------------------ bookkeeping

    def wall(self) -> float:
        """Training wall seconds by the host clock (exact after ``settle``, which waits for the GPU)."""
        return self.state.wall_time + (time.perf_counter() - self.session_start) - self.excluded

    def settle(self) -> None:
        """Wait for the queued work, then read what the steps kept on the device: their clock marks
        into ``step_times``, ``train_time`` and ``selection_time``, the loss sum into
        ``state.loss_sum``, the first step's mean loss into ``state.initial_loss``; a non-finite loss
        raises a FloatingPointError naming the first step that had one."""
        self.clock.synchronize()
        self.fold_marks(finished_only=False)
        state = self.state
        state.loss_sum = float(self.loss_total)
        if self.initial_pending is not None:
            total, count = self.initial_pending
            state.initial_loss, self.initial_pending = float(total) / count, None
        first = self.first_nonfinite
        if self.world > 1:  # every rank stops together, naming the run's first non-finite step
            first = torch.where(first >= 0, first, torch.iinfo(torch.int64).max)
            dist.all_reduce(first, op=dist.ReduceOp.MIN)
        bad = int(first) if int(first) != torch.iinfo(torch.int64).max else -1
        if bad >= 0:
            raise FloatingPointError(
                f"fit: the training loss is not finite (NaN or inf) at optimizer step {bad} (0-based; the run stopped at "
                f"step {state.step}, and no checkpoint was written after it); lower the learning rate, clip the "
                f"gradients (max_grad_norm=) or check the data, or pass nonfinite_loss='skip' to skip such steps")

    def fold_marks(self, finished_only: bool) -> None:
        """Fold the kept steps' clock marks into ``step_times``, ``train_time`` and
        ``selection_time``: all of them (after a synchronize), or (``finished_only``) the leading
        steps whose marks the device has reached, which asks without waiting, so a long epoch does
        not hold a timing event per step until its end."""
        state, clock = self.state, self.clock
        done = 0
        for start, end, scoring in self.unsettled:
            if finished_only and not clock.reached(end):
                break
            spent = clock.seconds(start, end)
            inside = sum(clock.seconds(first, last) for first, last in scoring)
            state.train_time += spent - inside
            state.selection_time += inside
            state.step_times.append(spent - inside)
            done += 1
        del self.unsettled[:done]

    def record(self, epoch: float) -> dict[str, float]:
        self.settle()
        self.flush_scores()
        state = self.state
        start = time.perf_counter()
        values = {} if self.eval_data is None else evaluate(
            self.model, self.eval_data, loss=self.objective, batch_size=self.eval_batch_size, collate_fn=self.collate_fn,
            device=self.device, amp=self.options.amp, label_key=self.options.label_key, metrics=self.metrics,
        )
        spent = self.clock.synchronize() - start
        self.excluded += spent
        state.eval_time += spent
        entry = {
            "epoch": epoch,
            "step": state.step,
            "wall_time": self.wall(),
            "train_time": state.train_time,
            "selection_time": state.selection_time,
            "eval_time": state.eval_time,
            "examples_seen": state.examples_seen,
            "examples_scored": state.examples_scored,
            "ratio": state.ratio,
            "train_loss": state.loss_sum / state.loss_count if state.loss_count else float("nan"),
            **values,
        }
        self.warn_if_diverging(entry["train_loss"])
        state.loss_sum, state.loss_count = 0.0, 0
        self.loss_total.zero_()
        state.history.append(entry)
        self.log({"event": "eval", **entry})
        return entry

    def warn_if_diverging(self, train_loss: float) -> None:
        """Warn once when the mean training loss since the previous record exceeds
        DIVERGENCE_FACTOR times the first step's mean loss (where that is positive)."""
        initial = self.state.initial_loss
        if self.warned_divergence or initial is None or initial <= 0 or not train_loss > DIVERGENCE_FACTOR * initial:
            return
        self.warned_divergence = True
        warnings.warn(f"fit: the training loss diverges: its mean before step {self.state.step} is {train_loss:.4g}, more "
                      f"than {DIVERGENCE_FACTOR:g} times the first step's {initial:.4g}; lower the learning rate or clip "
                      f"the gradients (max_grad_norm=)", RuntimeWarning, stacklevel=5)

    def log(self, entry: Mapping[str, Any]) -> None:
        if self.out_dir is None or self.rank != 0:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / METRICS_NAME, "a") as f:
            f.write(json.dumps(entry, default=float) + "\n")

    # ------------------------------------------------------------ checkpoints

    def parts(self) -> dict[str, Any]:
        """The stateful objects a checkpoint holds."""
        return {"model": self.model, "optimizer": self.optimizer, "lr_scheduler": self.lr_scheduler,
                "scaler": self.scaler, "teacher": self.teacher}

    def save_checkpoint(self) -> None:
        """Write out_dir/checkpoint.pt (rank 0; under torch.distributed every rank must call it,
        since it gathers each rank's RNG state)."""
        if self.out_dir is None:
            return
        self.settle()
        self.flush_scores()
        start = time.perf_counter()
        self.state.wall_time = self.wall()
        self.session_start, self.excluded = start, 0.0
        rng = [_checkpoint.rng_state()]
        if self.world > 1:
            rng = [None] * self.world
            dist.all_gather_object(rng, _checkpoint.rng_state())
        if self.rank == 0:
            _checkpoint.write(self.out_dir, self.parts(), asdict(self.state), rng)
        self.excluded += time.perf_counter() - start

    def load_checkpoint(self, resume_from: str | os.PathLike) -> None:
        state, rng = _checkpoint.read(resume_from, self.parts(), self.world, trusted=self.options.trust_checkpoint,
                                      state_keys=[f.name for f in dataclasses.fields(_State)])
        self.state = _State(**state)
        _checkpoint.set_rng_state(rng[self.rank])

    # ------------------------------------------------------------ selection

    def refresh_batches(self, indices: torch.Tensor):
        """Batches of a scoring pass over ``indices`` (the trainer's collation and device)."""
        loader = indexed_loader(self.train_data, batch_size=self.eval_batch_size, sampler=indices.tolist(),
                                collate_fn=self.collate_fn)
        return loader_batches(loader, self.device, self.options.label_key)

    def flush_scores(self) -> None:
        """Hand the steps' kept scores to the teacher (before its state is saved or read); the
        time counts as selection time."""
        start = self.clock.synchronize()
        self.teaching.flush()
        self.state.selection_time += self.clock.synchronize() - start

    def begin_epoch(self, epoch: int) -> torch.Tensor:
        """The epoch's example order (this rank's), from the teaching protocol; records the selection."""
        self.settle()
        state = self.state
        start = time.perf_counter()
        begun = self.teaching.begin_epoch(epoch, step=state.step, model=self.model, batches=self.refresh_batches,
                                          autocast_context=lambda: autocast(self.device, self.options.amp))
        state.examples_scored += begun.refreshed
        spent = self.clock.synchronize() - start
        state.selection_time += spent
        state.ratio = begun.record["ratio"]
        record = {**begun.record, "time": spent}
        state.selections.append(record)
        self.log({"event": "selection", **record})
        return begun.order

    # ------------------------------------------------------------ training

    def train_group(self, group: list[tuple[torch.Tensor, Any]]) -> list[tuple[Any, Any]]:
        """One optimizer step over ``group`` (up to grad_accum micro-batches); returns the clock marks
        around the scoring work inside it (selection time). Nothing is read on the host (but see
        ``nonfinite_loss="skip"`` and fp16): the loss sum, the first non-finite step and the scores
        stay on the device until ``settle`` and the teacher's hand-over."""
        model, objective, scaler, teaching, clock, state = self.model, self.objective, self.scaler, self.teaching, self.clock, self.state
        scoring: list[tuple[Any, Any]] = []
        if isinstance(teaching, PoolTeaching) and teaching.selects:
            group, scoring = self.choose_from_pool(group)
        total = sum(int(indices.numel()) for indices, _ in group)
        pending, loss_sum, loss_scale = [], None, 1.0
        for position, (indices, batch) in enumerate(group):
            inputs, targets = split_batch(move_to(batch, self.device), self.options.label_key)
            # DDP: reduce the gradients once, after the group's last micro-batch.
            accumulating = position < len(group) - 1 and hasattr(model, "no_sync")
            with model.no_sync() if accumulating else contextlib.nullcontext():
                with autocast(self.device, self.options.amp):
                    pred = forward_batch(model, inputs)
                    losses = objective.losses(pred, targets)
                if not losses.requires_grad:
                    raise ValueError("the loss does not depend on the model's trainable parameters (a loss callable "
                                     "that returns detached values, or a model without trainable parameters?)")
                weights = teaching.loss_weights(indices).to(device=losses.device, dtype=losses.dtype, non_blocking=True)
                coefficients = torch.full_like(losses, 1.0 / total) * weights
                loss_scale = scaler.get_scale() if scaler is not None else 1.0
                weighted = losses * coefficients if scaler is None else scaler.scale(losses * coefficients)
                norms_sq = self.scorer.backward(weighted)
            batch_sum = losses.detach().double().sum()
            loss_sum = batch_sum if loss_sum is None else loss_sum + batch_sum
            if not teaching.observes:
                continue
            start = clock.mark()
            scores = self.scorer.step_scores(pred, targets, losses, norms_sq=norms_sq, indices=indices, inputs=inputs,
                                             coefficients=None if norms_sq is None else coefficients * loss_scale)
            pending.append((indices, scores))
            scoring.append((start, clock.mark()))
        # float32 losses summed in float64 cannot overflow: the sum is finite exactly when every loss is
        finite = torch.isfinite(loss_sum)
        skipped = self.options.nonfinite_loss == "skip" and not self.finite_on_every_rank(finite)
        if skipped:
            self.optimizer.zero_grad(set_to_none=True)
            state.skipped_steps.append(state.step)
        else:
            self.update()
            self.loss_total += loss_sum
            state.loss_count += total
            if state.initial_loss is None and self.initial_pending is None:
                self.initial_pending = (loss_sum, total)
            self.first_nonfinite = torch.where(finite | (self.first_nonfinite >= 0), self.first_nonfinite, state.step)
        if self.lr_scheduler is not None and not self.step_scheduler_per_epoch:
            self.lr_scheduler.step()
        state.step += 1
        state.examples_seen += total * self.world
        # fp16: gradnorm scores of a step whose scaled gradients overflowed are not finite; skip them
        overflowed = not skipped and scaler is not None and self.scorer.needs_probe and scaler.get_scale() < loss_scale
        if skipped or overflowed:
            return scoring
        start = clock.mark()
        for indices, scores in pending:
            teaching.observe(indices, scores, step=state.step - 1)
        scoring.append((start, clock.mark()))
        return scoring

    def choose_from_pool(self, group: list[tuple[torch.Tensor, Any]]) -> tuple[list[tuple[torch.Tensor, Any]], list[tuple[Any, Any]]]:
        """Pooled selection: each chunk of candidates becomes the examples it keeps (on the device),
        the candidates' forwards counted in ``examples_scored``; returns the kept group and the
        clock marks around the choice (selection time)."""
        start = self.clock.mark()
        chosen = [self.teaching.choose(self.model, indices, batch, step=self.state.step, device=self.device,
                                       label_key=self.options.label_key,
                                       autocast_context=lambda: autocast(self.device, self.options.amp))
                  for indices, batch in group]
        self.state.examples_scored += sum(int(indices.numel()) for indices, _ in group)
        return chosen, [(start, self.clock.mark())]

    def update(self) -> None:
        """The optimizer step from the accumulated gradients (unscaled and clipped as configured)."""
        scaler = self.scaler
        if scaler is not None:
            scaler.unscale_(self.optimizer)
        if self.options.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.options.max_grad_norm)
        if scaler is not None:
            scaler.step(self.optimizer)
            scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def finite_on_every_rank(self, finite: torch.Tensor) -> bool:
        """Whether a step's loss was finite on every rank (read on the host: a synchronization)."""
        flag = finite.to(torch.int32).reshape(1)
        if self.world > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def out_of_budget(self) -> bool:
        """True once max_steps or max_time is spent (under torch.distributed: on any rank, so that
        every rank stops at the same step)."""
        max_steps, max_time = self.options.max_steps, self.options.max_time
        spent = (max_steps is not None and self.state.step >= max_steps) or (max_time is not None and self.wall() >= max_time)
        if self.world > 1 and max_time is not None:
            flag = torch.tensor([float(spent)])
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            spent = bool(flag.item())
        return spent

    def run(self, resume_from: str | os.PathLike | None) -> FitResult:
        if resume_from is not None:
            self.load_checkpoint(resume_from)
        else:
            _checkpoint.seed_everything(self.options.seed)
        state = self.state
        self.model.to(self.device)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        if self.teaching.observes:
            self.scorer.attach(self.model)
        # the checkpoint's float64 loss sum continues on the device: a resumed run adds what the
        # uninterrupted one adds, in the same order
        self.loss_total = torch.full((), state.loss_sum, dtype=torch.float64, device=self.device)
        self.first_nonfinite = torch.full((), -1, dtype=torch.int64, device=self.device)
        self.session_start, self.excluded = self.clock.synchronize(), 0.0
        stopped, n_batches = False, 1
        progress = _Progress(self.options.progress and self.rank == 0, self.epochs, state.epoch)
        try:
            while state.epoch < self.epochs:
                epoch = state.epoch
                if state.epoch_order is None:
                    state.epoch_order, state.batches_done = self.begin_epoch(epoch), 0
                n_batches = math.ceil(len(state.epoch_order) / self.batch_size)
                rest = state.epoch_order[state.batches_done * self.batch_size:].tolist()
                loader = indexed_loader(self.train_data, batch_size=self.batch_size, sampler=rest, collate_fn=self.collate_fn,
                                        seed=self.options.seed + epoch, num_workers=self.options.num_workers)
                self.run_epoch(epoch, iter(loader), n_batches, progress)
                if state.batches_done >= n_batches:
                    state.epoch, state.epoch_order, state.batches_done = epoch + 1, None, 0
                    if self.lr_scheduler is not None and self.step_scheduler_per_epoch:
                        self.lr_scheduler.step()
                    self.settle()
                    if self.eval_steps is None or state.step in self.eval_steps or state.epoch == self.epochs:
                        self.record(float(state.epoch))
                    progress.epoch_done(state.epoch, self.figures())
                    self.save_checkpoint()
                if self.out_of_budget():
                    stopped = state.epoch < self.epochs
                    break
            if not state.history or state.history[-1]["step"] != state.step:  # stopped between records
                self.record(state.epoch + (0.0 if state.epoch_order is None else state.batches_done / n_batches))
                self.save_checkpoint()
        finally:
            progress.close()
            self.scorer.detach()
        if state.skipped_steps:
            warnings.warn(f"fit: skipped {len(state.skipped_steps)} optimizer steps whose loss was not finite (steps "
                          f"{state.skipped_steps[:8]}{' ...' if len(state.skipped_steps) > 8 else ''})", RuntimeWarning,
                          stacklevel=3)
        return self.result(stopped)

    def run_epoch(self, epoch: int, batches: Iterator, n_batches: int, progress: _Progress) -> None:
        """Train on the rest of an epoch's batches, until they run out or a budget (max_steps,
        max_time) is spent."""
        state, clock = self.state, self.clock
        bar = progress.batches(epoch, n_batches, state.batches_done)
        try:
            while True:
                start = clock.mark()
                group = list(itertools.islice(batches, self.grad_accum))
                if not group:
                    return
                scoring = self.train_group(group)
                self.unsettled.append((start, clock.mark(), scoring))
                if len(self.unsettled) >= UNSETTLED_STEPS:
                    self.fold_marks(finished_only=True)
                state.batches_done += len(group)
                bar.update(len(group))
                if clock.settles_every_step:
                    self.settle()
                every = self.options.checkpoint_every
                if every is not None and state.step % every == 0:
                    self.save_checkpoint()
                if self.out_of_budget():
                    return
                if state.batches_done < n_batches and self.evaluation_due(state.step):
                    self.record(epoch + state.batches_done / n_batches)
        finally:
            bar.close()

    def figures(self) -> dict[str, str]:
        """The progress view at an epoch end (after ``settle``): the step, the record taken at it
        (ratio, train loss, metrics) and the wall time with its selection share."""
        state = self.state
        recorded = bool(state.history) and state.history[-1]["step"] == state.step
        now = state.history[-1] if recorded else {"ratio": state.ratio, "wall_time": self.wall(),
                                                  "selection_time": state.selection_time}
        wall = now["wall_time"]
        return {"step": str(state.step), **_summary(now), "wall": f"{wall:.3g} s",
                "selection": f"{100 * now['selection_time'] / max(wall, 1e-9):.1f}%"}

    def evaluation_due(self, step: int) -> bool:
        """Whether a mid-epoch evaluation falls at ``step`` (eval_points, else eval_every)."""
        if self.eval_steps is not None:
            return step in self.eval_steps
        every = self.options.eval_every
        return every is not None and step % every == 0

    def result(self, stopped: bool) -> FitResult:
        """The run's result; its times are the last record's (the run ends with one), so the last
        checkpoint and the plots drawn here count nowhere."""
        state = self.state
        last = state.history[-1]
        result = FitResult(
            history=list(state.history), selections=list(state.selections), wall_time=last["wall_time"],
            train_time=last["train_time"], selection_time=last["selection_time"], eval_time=last["eval_time"],
            examples_seen=last["examples_seen"], examples_scored=last["examples_scored"], steps=state.step,
            epochs_completed=state.epoch, stopped_early=stopped, out_dir=self.out_dir, step_times=list(state.step_times),
            skipped_steps=list(state.skipped_steps),
        )
        if self.out_dir is not None and self.rank == 0:
            try:
                from .plots import plot_run
            except ImportError as error:  # the run's records are written; only the pictures need matplotlib
                warnings.warn(f"fit: no plots in {self.out_dir}: {error}", RuntimeWarning, stacklevel=3)
            else:
                plot_run(state.history, state.selections, self.out_dir)
        return result


def _pool_teaching(pool: PoolSelection, teacher: Teacher | None, scorer: Scorer, reference: Any, num_examples: int,
                   options: FitOptions) -> PoolTeaching:
    """The teaching protocol of ``fit(pool=)``, after refusing what pooled selection cannot do."""
    if teacher is not None:
        raise ValueError("pass either teacher= (selection per epoch) or pool= (selection per step from candidates), not both")
    if options.grad_accum != 1 or rank_and_world_size()[1] > 1:
        raise ValueError(f"pool= needs grad_accum=1 and a single process (it chooses within one batch per optimizer "
                         f"step); got grad_accum={options.grad_accum} and {rank_and_world_size()[1]} processes")
    return PoolTeaching(pool, scorer, num_examples=num_examples, epochs=options.epochs, budget=options.budget,
                        batch_size=options.batch_size, seed=options.seed, reference=reference)


def fit(
    model: nn.Module,
    train_data: Dataset,
    *,
    loss: LossSpec,
    optimizer: torch.optim.Optimizer,
    teacher: Teacher | None = None,
    reference: Any = None,
    pool: PoolSelection | None = None,
    eval_data: Dataset | None = None,
    metrics: Mapping[str, Metric] | None = None,
    lr_scheduler: Any = None,
    collate_fn: Callable[[list], Any] | None = None,
    options: FitOptions | None = None,
    **option_values: Any,
) -> FitResult:
    """Train ``model`` on ``train_data``, with a teacher selecting what each epoch trains on.

    Args:
        model: any ``nn.Module``; moved to the device and trained in place.
        train_data: map-style dataset of ``(input, target)`` pairs or of mappings (the target under
            ``label_key``, the other entries the model's keyword arguments); batches are built by
            ``collate_fn`` (default: torch's default collate).
        loss: ``"cross_entropy"`` (logits (B, C) / (B, T, V), targets (B,) / (B, T)),
            ``"lm"`` (causal LM: logits (B, T, V), labels (B, T) aligned with the inputs, shifted
            here; ``ignore_index`` positions skipped), ``"mse"`` or a callable
            ``(prediction, targets) -> Tensor[B]`` of per-example losses. The batch loss is
            sum_i w_i l_i / (examples in the optimizer step), with w_i the teacher's
            ``loss_weights`` (1 without a teacher): the mean of per-example losses.
        optimizer: a torch optimizer over the model's parameters.
        teacher: an ``attent.Teacher`` built for ``len(train_data)`` examples and the run's
            ``epochs`` (or open-ended), or None (plain training). It selects only where its
            ``when`` allows: by default (``"evidence"``) only with a ``reference`` that finds
            waste in the data; otherwise the run trains full data's shortened schedule at the
            budget, warns that it did, and each ``FitResult.selections`` record says why
            (``"uniform"``).
        reference: for ``score="learnability"``: an :class:`attent.Reference` whose ``train`` is
            ``train_data``, or the (N,) reference losses of its examples.
        pool: an :class:`attent.PoolSelection`: instead of a teacher's per-epoch subsets, every
            optimizer step scores ``ceil(batch_size / keep)`` candidates with a no-grad forward and
            trains on ``batch_size`` of them (``score`` ``"learnability"``, ``"loss"`` or ``"fgrad"``;
            ``grad_accum=1``, one process); a run at ``budget`` trains full data's number of examples,
            its epochs are passes over the candidates, and the candidates' forwards count in
            ``examples_scored`` and the selection time (see :mod:`attent.pool`).
        eval_data, metrics: evaluation set and extra per-example metrics (see :func:`evaluate`).
        lr_scheduler: a scheduler, stepped after every optimizer step
            (``lr_scheduler_interval="step"``) or at every epoch end (``"epoch"``); or a callable
            ``(optimizer, planned_steps) -> scheduler``, called once the run's optimizer steps are
            known from the teacher's plan (so a decay ends exactly at the run's last step).
        collate_fn: how items are batched.
        options: a :class:`FitOptions`; or give its fields as keyword arguments (``epochs=``,
            ``score=``, ``batch_size=``, ...), not both.

    Returns:
        FitResult (see its docstring); ``history[-1]`` holds the final evaluation.
    """
    if options is not None and option_values:
        raise ValueError(f"pass either options= or option keywords, not both (got also {sorted(option_values)})")
    if options is None:
        unknown = sorted(set(option_values) - set(FitOptions.keys()))
        if unknown:
            raise TypeError(f"fit() got unknown options {unknown}; the options are {list(FitOptions.keys())}")
        if "epochs" not in option_values:
            raise TypeError("fit() needs epochs=")
        options = FitOptions(**option_values)
    run = _Run(model, train_data, loss=loss, optimizer=optimizer, teacher=teacher, eval_data=eval_data, metrics=metrics,
               lr_scheduler=lr_scheduler, collate_fn=collate_fn, options=options, reference=reference, pool=pool)
    return run.run(options.resume_from)
