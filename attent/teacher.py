"""The AtteNT teacher: one score per training example, and the subset each epoch trains on.

A plain PyTorch loop adopts it in three lines::

    teacher = attent.Teacher(len(ds), epochs=E)
    data = attent.IndexedDataset(ds)                     # yields (index, item)
    loader = DataLoader(data, batch_size=64, sampler=teacher.sampler(data))
    ...  # per step, with the batch's example indices idx and per-example losses:
    teacher.observe(idx, per_example_loss.detach())

``sampler(data)`` checks what the loop would otherwise get silently wrong: that the loader's
dataset has N examples and yields ``(index, item)`` pairs, and (each epoch) that the loop does not
run past the teacher's planned epochs (``epochs=None`` builds an open-ended teacher). With the weighted strategies
(``"importance"``, ``"infobatch"``) the loop also multiplies each example's loss by
``teacher.loss_weights(idx)`` before averaging.

The teacher owns selection only: it sees example indices and score tensors, no model, no loss, no
data loader, and not which score it is fed (that is the scorer's business: :class:`attent.Scorer`,
driven by :func:`attent.fit`, the Hugging Face trainer, or your loop).

Scores. ``observe(indices, scores)`` records each example's latest score (larger = more
informative, kept in float64) and the step it was measured at; an index repeated within one call
(a batch drawn with replacement) gets the mean of its scores. Scores arrive for free from training
steps, and, with ``refresh``, from scoring passes run before a selection point:
``refresh_indices(epoch)`` names the examples to re-score (``"cycle"``: all of them, as the
published code does; a fraction f: the ``ceil(f * N)`` stalest; None: online scores only). A
plain loop runs that pass itself (``attent.score_pass``), see the README.

Examples never scored, and examples whose latest score is NaN or infinite, count as maximally
informative: the greedy and soft teachers take them first, importance sampling gives them the
largest finite score's probability, InfoBatch never prunes them. So a teacher without scores
(before the first observation, or without warm-up) still selects — the unscored ones, in a seeded
random order. NaN/inf scores are counted in ``stats`` and warned about once per selection. A
``prior`` given to ``select`` scores the never-scored examples instead: :class:`attent.Teaching`
gives a learnability teacher one from the reference (the learner's typical loss less each
example's reference loss), so that unseen examples the reference finds unlearnable (mislabelled,
off target) are not taken first.

Strategies (``attent.strategies``; at a selection point of target ratio r, m = max(1, floor(r N))
of N examples): ``"soft"`` (the default: Gumbel-top-k, ``Soft(temperature, normalize)``),
``"hard"`` (alias ``"greedy"``: the m largest scores, Algorithm 1), ``"random"``, ``"importance"`` (draws with
replacement and unbiased weights, ``Importance(uniform_mix)``) and ``"infobatch"`` (InfoBatch's
rescaled pruning, ``InfoBatch(prune_ratio, delta)``). Pass a name for the defaults or an instance;
``attent.register_strategy`` adds one.

Schedules. ``attent.schedules`` lays the epochs out as warm-up, cycles (each: a selection point,
``interval`` subset epochs, then full data) and annealing, with a constant, incremental or cosine
ratio and a fixed or incremental interval. ``select(epoch)`` between selection points returns the
subset of the last selection point; full-data epochs return every index with ``is_full=True``.

The published AtteNT code, and how it maps here (``Teacher.published`` builds both recipes):

====================================================  ============================================
published (``AtteNTComplex``, ViT pre-training)       attent
====================================================  ============================================
``selection_strategy`` random / hard (default) / soft  ``strategy`` "random" / "hard" / "soft"
``ratio_schedule`` cosine (default) / incremental,     ``ratio=RatioSchedule("cosine", 0.2, 0.8)``
``initial_ratio`` 0.2, ``final_ratio`` 0.8             (the default when ``epochs`` is given)
``interval_schedule`` fixed (default) / incremental,   ``interval=IntervalSchedule("fixed", 5, 10)``
``initial_interval`` 5, ``max_interval`` 10            (the default)
``total_cycles`` 10                                    ``cycles=None`` resolves to 10
one full-data epoch before the cycles                  ``warmup_epochs=1``
forward pass over all data at each selection point     ``refresh="cycle"`` (default None: online)
per-sample loss (sum over tasks)                       the trainer's ``score="loss"`` (default "fgrad")
``num_select = max(1, int(N * ratio))``                m = max(1, floor(N r))
``soft_normalization`` softmax (default) / sigmoid     ``Soft(normalize="softmax" / "sigmoid")``
soft: re-score and redraw at each subset epoch         ``reselect_each_epoch=True``
``gumbel_temperature`` 1.0                             ``Soft(temperature=1.0)``
====================================================  ============================================

The published ``AtteNTSimple`` (LLM LoRA fine-tuning) trains one full epoch recording each
example's mean token loss, then keeps the ``attent_ratio=0.7`` highest-loss examples for every
remaining epoch: ``Teacher(N, epochs=E, ratio=0.7, cycles=1, interval=E - 1)`` fed loss scores.

Three deliberate differences. The published soft teacher divides the Gumbel-perturbed
log-probability by the temperature, which leaves its top-k unchanged, so its temperature has no
effect; here the temperature scales the log-probabilities before the noise is added. The published
code leaves the ``(epochs - 1) % total_cycles`` last epochs untrained; here they lengthen the first
cycles. And the published loop runs every cycle's full subset interval even when the cycle is
shorter than the interval, overrunning the epoch count: at E = 40 (cycles of 3 epochs, interval 5)
it makes 51 passes and, on the 1,437 training images of the digits task, trains 37,337 examples,
while here each cycle's subset epochs are capped at the cycle's length, so the run has exactly E
epochs (40 epochs, 29,008 examples); the subsets chosen at each selection point are the same.

Determinism. Every random draw comes from a ``torch.Generator`` seeded from (``seed``, epoch of
the selection point, purpose), never from the global RNG: the same observe/select calls give the
same selections, and a teacher restored with ``load_state_dict`` selects exactly what an
uninterrupted one selects.

Distributed. Inside a ``torch.distributed`` process group, ``observe`` all-gathers every rank's
(indices, scores) (batches of unequal size are padded for the collective), so every rank holds the
same scores and makes the same selection; ``sampler()`` yields this rank's shard of it (padded to
equal length, as ``DistributedSampler`` does) and ``refresh_indices`` this rank's share of the
examples to re-score. Every rank must call ``observe`` the same number of times (it is a
collective; an empty batch is fine).
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import numbers
import warnings
from typing import Any, Iterator, Literal, Mapping, Sequence, Union

import torch
from torch.utils.data import Sampler

from . import _distributed
from ._teacher_state import COUNTERS, STATE_VERSION, Selection, checked_state, selection_state
from .schedules import EpochPlan, IntervalSchedule, RatioSchedule, ScaledRatio, TeachingPlan, check_count, check_fraction
from .strategies import DEFAULT_RATIO, Hard, PlanRequest, ScoreView, Strategy, fraction_count, strategy_from

__all__ = ["Selection", "Teacher", "TeacherSampler", "SELECTION_WHEN", "learnability_prior", "selection_decision"]


# When a driver lets a teacher or a pooled selection select (``when=``): see :class:`Teacher`.
SELECTION_WHEN = ("evidence", "always")


def selection_decision(when: str, reference: Any, score_kind: str) -> tuple[bool, str]:
    """(whether a run selects, why) under ``when`` for the run's reference (an
    :class:`attent.Reference`, reference losses, or None) and score kind: ``"always"`` selects;
    ``"evidence"`` selects only where the reference's evidence finds waste in the data."""
    if when == "always":
        return True, "when='always'"
    evidence = getattr(reference, "evidence", None)
    if evidence is None:
        return False, (f"no reference model with evidence (score {score_kind!r}): selection pays only where a reference "
                       "finds waste in the data (attent.Reference); when='always' selects anyway")
    return bool(evidence.selects), evidence.reason


HARMFUL_RATIO = 0.5  # pure top-k subsets below this share draw the warning (the teacher study's harmful regime)
IndexLike = Union[torch.Tensor, Sequence[int]]
ScoreLike = Union[torch.Tensor, Sequence[float]]


def _derived_generator(seed: int, epoch: int, purpose: str) -> torch.Generator:
    digest = hashlib.blake2b(f"{seed}/{epoch}/{purpose}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))


def _shape(t: Any) -> tuple[int, ...] | str:
    return tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__


def _as_tensor(value: Any, name: str, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach()
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{name} must be a (b,) tensor or sequence of {what}, got {value!r:.80}") from error


# What indices that are not example indices usually mean in a plain loop.
_NOT_INDICES = ("; a batch of inputs where the example indices belong? A loader over the bare dataset yields (x, y), not "
                "(index, (x, y)): wrap it, data = attent.IndexedDataset(ds), and pass data to both DataLoader(data, ...) and "
                "teacher.sampler(data)")


def _index_tensor(indices: IndexLike, name: str) -> torch.Tensor:
    """``indices`` as a (b,) int64 CPU tensor (a copy when it lives elsewhere or has another dtype)."""
    index = _as_tensor(indices, name, "integer example indices")
    if index.numel() == 0:
        index = index.to(torch.int64)
    if index.dtype == torch.bool or index.is_floating_point() or index.is_complex():
        raise ValueError(f"{name} must hold integer example indices, got dtype {index.dtype}" + _NOT_INDICES)
    if index.dim() != 1:
        raise ValueError(f"{name} must have shape (b,), got {_shape(index)}" + _NOT_INDICES)
    return index.to(device="cpu", dtype=torch.int64)


def _is_example_index(value: Any, index: int) -> bool:
    """Whether ``value`` (an item's first element) is the integer ``index``."""
    if isinstance(value, torch.Tensor):
        return value.dim() == 0 and not (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool) \
            and int(value) == index
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) == index


def _score_tensor(scores: ScoreLike, name: str = "scores") -> torch.Tensor:
    values = _as_tensor(scores, name, "real numbers")
    if values.dtype == torch.bool or values.is_complex():
        raise ValueError(f"{name} must be real numbers, got dtype {values.dtype}")
    if values.dim() != 1:
        raise ValueError(f"{name} must have shape (b,), got {_shape(values)}")
    return values.to(device="cpu", dtype=torch.float64)


def _step_tensor(step: int | IndexLike, count: int) -> torch.Tensor:
    """``step`` as (count,) int64 non-negative steps: one int for every score, or one per score."""
    if isinstance(step, numbers.Integral) and not isinstance(step, bool):
        return torch.full((count,), check_count("step", step, 0), dtype=torch.int64)
    steps = _as_tensor(step, "step", "integer steps")
    if steps.numel() == 0:
        steps = steps.to(torch.int64)
    if steps.dtype == torch.bool or steps.is_floating_point() or steps.is_complex() or steps.dim() != 1:
        raise ValueError(f"step must be an int or a (b,) tensor of integer steps, got {steps.dtype} of shape {_shape(steps)}")
    steps = steps.to(device="cpu", dtype=torch.int64)
    if steps.numel() != count:
        raise ValueError(f"step must be an int or hold one step per score, got shape {_shape(steps)} for {count} scores")
    if steps.numel() and int(steps.min()) < 0:
        raise ValueError(f"step must be non-negative, got {steps[steps < 0][:8].tolist()}")
    return steps


def _mean_per_index(index: torch.Tensor, values: torch.Tensor, steps: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each index once, with the mean of its values at its latest step (a draw with replacement,
    or ranks' padded shards, can hold an example more than once in a step; the scores of several
    steps observed at once, an example more than once across them)."""
    unique, inverse = torch.unique(index, return_inverse=True)
    if unique.numel() == index.numel():
        return index, values, steps
    latest = torch.full((unique.numel(),), -1, dtype=torch.int64).scatter_reduce_(0, inverse, steps, "amax")
    keep = steps == latest[inverse]
    sums = torch.zeros(unique.numel(), dtype=values.dtype).index_add_(0, inverse[keep], values[keep])
    counts = torch.bincount(inverse[keep], minlength=unique.numel()).to(values.dtype)
    return unique, sums / counts, latest


class Teacher:
    """Holds one score per training example and picks the subset each epoch trains on.

    Args:
        num_examples: N, the training set's length; examples are the indices 0 .. N-1.
        strategy: a registered name (``"soft"``, the default: Gumbel-top-k on the softmax of the
            scores; ``"hard"`` / ``"greedy"``, ``"random"``, ``"importance"``, ``"infobatch"``) or a
            :class:`attent.strategies.Strategy` instance carrying its options
            (``Soft(temperature=0.5)``, ``InfoBatch(prune_ratio=0.7)``). The teacher study
            (``bench/results/teacher_study.json``) found soft the one strategy never far below a
            random subset on its four tasks; pure top-k falls far below it where some examples
            cannot be learned (the SCB task's randomly drawn tokens).
        ratio: the fraction selected at a selection point: a float in (0, 1] (constant), a
            ``RatioSchedule``, or None: 0.5 at every selection point. With ``budget``, the shape of
            the ratios, scaled to spend the budget (None: the same share every epoch).
        interval: subset epochs per selection point: an int (fixed), an ``IntervalSchedule``, or
            None: the whole cycle (published: a fixed 5, then full data for the cycle's rest).
        warmup_epochs: full-data epochs before teaching starts (published: 1).
        anneal_epochs: full-data epochs that end the run (needs ``epochs``).
        epochs: the run's length; None for an open-ended run (constant ratio, fixed interval).
        cycles: selection cycles the teaching span is split into; None: 10 (published, at most one
            per teaching epoch) when ``epochs`` is given, open-ended selection every ``interval``
            epochs otherwise.
        refresh: None (online scores only), ``"cycle"`` (re-score every example at each
            selection point) or a fraction in (0, 1] (re-score the stalest fraction).
        budget: None, or a fraction b in (0, 1] of the recipe's full-data total ``epochs * N``
            training examples: the subset ratios are the ``ratio`` shape times the largest scale
            whose plan trains at most ``floor(b * epochs * N)`` examples (needs ``epochs``; full-data
            epochs of the plan count too). Not for strategies that size their own subsets
            (InfoBatch: set its prune ratio instead).
        reselect_each_epoch: make every subset epoch its own selection point (the default; the
            published code does so for soft only, and holds hard subsets for the interval).
        seed: seeds every random draw.
        when: which runs of a driver (``attent.fit``, the Hugging Face trainer, any loop driving
            :class:`attent.Teaching`) select: ``"evidence"`` (the default) only those whose
            reference model finds waste in the data (:attr:`attent.Reference.evidence`); any other
            run trains full data's shortened schedule at the teacher's budget, warns that it did
            and says why in each epoch's record: the frontier records show selection by the
            learner's own scores never reliably beating that schedule, and losing to it on some
            tasks. ``"always"``: select whatever the evidence. A loop that calls
            :meth:`sampler` / :meth:`select` itself gets the teacher's selection either way.
    """

    def __init__(
        self,
        num_examples: int,
        *,
        strategy: str | Strategy = "soft",
        ratio: float | RatioSchedule | None = None,
        interval: int | IntervalSchedule | None = None,
        warmup_epochs: int = 0,
        anneal_epochs: int = 0,
        epochs: int | None = None,
        cycles: int | None = None,
        refresh: None | Literal["cycle"] | float = None,
        reselect_each_epoch: bool = True,
        budget: float | None = None,
        seed: int = 0,
        when: Literal["evidence", "always"] = "evidence",
    ):
        if when not in SELECTION_WHEN:
            raise ValueError(f"when must be one of {SELECTION_WHEN}, got {when!r}")
        self.when = when
        if isinstance(num_examples, bool) or not isinstance(num_examples, numbers.Integral) or num_examples < 1:
            raise ValueError(f"num_examples must be a positive integer (the dataset is empty?), got {num_examples!r}")
        self.num_examples = int(num_examples)
        self.strategy = strategy_from(strategy)
        self.refresh = self._check_refresh(refresh)
        self.seed = check_count("seed", seed, 0)
        request = PlanRequest(epochs=epochs, warmup_epochs=warmup_epochs, anneal_epochs=anneal_epochs, cycles=cycles,
                              ratio=ratio, interval=interval, reselect_each_epoch=bool(reselect_each_epoch))
        self.budget = None if budget is None else check_fraction("budget", budget)
        self.plan = self.strategy.plan(request) if budget is None else self._budget_plan(request)
        self._scores = torch.full((self.num_examples,), math.nan, dtype=torch.float64)
        self._score_steps = torch.full((self.num_examples,), -1, dtype=torch.int64)
        self._observe_calls = 0
        self._subset: Selection | None = None
        self._active: Selection | None = None
        self._active_epoch: int | None = None
        self._active_weights: torch.Tensor | None = None
        self._full: Selection | None = None
        self._counters = dict.fromkeys(COUNTERS, 0)
        self._warn_if_harmful()

    def _warn_if_harmful(self) -> None:
        """Warn about the regime the teacher study found harmful: pure top-k on a subset smaller than
        ``HARMFUL_RATIO`` of the examples, worst when it is trained on for several epochs in a row
        (a class-skewed set of the hardest examples) and, re-selected every epoch, on data holding
        examples no model can learn (the largest scores are theirs)."""
        strategy = self.strategy
        if not isinstance(strategy, Hard) or strategy.random_share > 0 or self.plan.epochs is None:
            return
        runs: dict[int, list[float]] = {}
        for plan in map(self.plan.at, range(self.plan.epochs)):
            if not plan.is_full and plan.ratio is not None:
                runs.setdefault(plan.selection_epoch, []).append(plan.ratio)
        small = [ratios for ratios in runs.values() if ratios[0] < HARMFUL_RATIO]
        if not small:
            return
        held = [ratios[0] for ratios in small if len(ratios) > 1]
        regime = (f"trains for several epochs in a row on a pure top-k subset of {min(held):.0%} of the examples: "
                  f"a class-skewed set of the hardest ones, which the teacher study found can end far below a random "
                  f"subset" if held else
                  f"selects a pure top-k subset of {min(r[0] for r in small):.0%} of the examples: where some examples "
                  f"cannot be learned (noisy labels, random tokens) they hold the largest scores, and the teacher study "
                  f"found this far below a random subset (SCB)")
        warnings.warn(
            f"this plan {regime} (bench/results/teacher_study.json). Randomize the selection: strategy='soft' "
            f"(the default) or Hard(random_share=0.3)" + (", and re-select every epoch (reselect_each_epoch=True)"
                                                         if held else "")
            + ". This concerns the learner's own scores (loss, fgrad, gradnorm): fed learnability, where the reference "
              "gives unlearnable examples the lowest scores, top-k is RHO-LOSS's selection",
            UserWarning, stacklevel=3)

    @classmethod
    def published(
        cls,
        num_examples: int,
        *,
        epochs: int,
        recipe: Literal["complex", "simple"] = "complex",
        strategy: Literal["hard", "greedy", "soft", "random"] = "hard",
        seed: int = 0,
        when: Literal["evidence", "always"] = "evidence",
    ) -> "Teacher":
        """A teacher that behaves as the published AtteNT code (see the module docstring); feed it
        loss scores (``fit(..., score="loss")``), as the published code does.

        recipe ``"complex"`` (``AtteNTComplex``, ViT pre-training): re-scored over the whole
        dataset at each selection point, the published cycles and schedules, ``strategy`` hard,
        soft (redrawn at each subset epoch) or random. recipe ``"simple"`` (``AtteNTSimple``, LLM
        fine-tuning): one full epoch whose training losses score every example, then the 70%
        highest-loss examples for every remaining epoch (hard only). ``when`` as for the
        constructor.
        """
        epochs = check_count("epochs", epochs, 1)
        if recipe == "complex":
            if strategy not in ("hard", "greedy", "soft", "random"):
                raise ValueError(f"the published complex recipe has strategies hard, soft and random, got {strategy!r}")
            with warnings.catch_warnings():  # asked for by name: the held top-k subsets are the recipe
                warnings.filterwarnings("ignore", message="this plan (trains|selects)", category=UserWarning)
                return cls(num_examples, strategy=strategy, epochs=epochs, ratio=RatioSchedule(), interval=IntervalSchedule(),
                           warmup_epochs=1, refresh="cycle", reselect_each_epoch=strategy == "soft", seed=seed,
                           when=when)
        if recipe == "simple":
            if strategy not in ("hard", "greedy"):
                raise ValueError(f"the published simple recipe selects by hard top-k only, got strategy={strategy!r}")
            return cls(num_examples, strategy="hard", epochs=epochs, ratio=0.7, cycles=1 if epochs > 1 else None,
                       interval=max(1, epochs - 1), warmup_epochs=1, reselect_each_epoch=False, seed=seed, when=when)
        raise ValueError(f"recipe must be 'complex' or 'simple', got {recipe!r}")

    def _budget_plan(self, request: PlanRequest) -> TeachingPlan:
        """The plan whose ratios are the requested shape times the largest scale that spends at
        most ``floor(budget * epochs * N)`` examples (bisection: the spend grows with the scale)."""
        if request.epochs is None:
            raise ValueError("budget needs epochs: it is a fraction of the recipe's epochs * N training examples")
        if self.strategy.sizes_own_subsets:
            raise ValueError(f"strategy {self.strategy.name!r} sizes its subsets from the scores, so a budget cannot "
                             f"be planned; set its own options (InfoBatch(prune_ratio=...)) instead")
        if isinstance(request.ratio, numbers.Real):
            raise ValueError(f"ratio={request.ratio} and budget={self.budget} both fix the subset sizes; pass a "
                             "RatioSchedule (the shape the budget scales) or ratio=None")
        shape = DEFAULT_RATIO if request.ratio is None else request.ratio
        allowed = math.floor(self.budget * request.epochs * self.num_examples + 1e-9)

        def plan_at(scale: float) -> tuple[TeachingPlan, int]:
            plan = self.strategy.plan(dataclasses.replace(request, ratio=ScaledRatio(shape, scale)))
            sizes = [self.num_examples if p.is_full else self._subset_size(p.ratio) for p in map(plan.at, range(request.epochs))]
            return plan, sum(sizes)

        low, high = 0.0, 1.0 / min(shape.value(0.0), shape.value(1.0), shape.value(0.5))
        plan, spent = plan_at(low)
        if spent > allowed:
            raise ValueError(f"budget={self.budget} allows {allowed} training examples, but this plan's full-data epochs "
                             f"and one-example subsets already take {spent}; lower warmup_epochs / anneal_epochs or "
                             f"shorten the intervals' full-data remainder")
        widest, spent = plan_at(high)
        if spent <= allowed:
            return widest
        for _ in range(60):
            middle = (low + high) / 2
            if plan_at(middle)[1] <= allowed:
                low = middle
            else:
                high = middle
        return plan_at(low)[0]

    @staticmethod
    def _check_refresh(refresh: None | str | float) -> None | str | float:
        if refresh is None or refresh == "cycle":
            return refresh
        if isinstance(refresh, str):
            raise ValueError(f"refresh must be None, 'cycle' or a fraction in (0, 1], got {refresh!r}")
        return check_fraction("refresh", refresh)

    def _check_range(self, index: torch.Tensor, name: str) -> None:
        outside = index[(index < 0) | (index >= self.num_examples)]
        if outside.numel():
            raise ValueError(f"{name} must be in [0, num_examples={self.num_examples}), got {outside[:8].tolist()}")

    def observe(self, indices: IndexLike, scores: ScoreLike, *, step: int | IndexLike | None = None) -> None:
        """Record the scores of a batch of examples (or of several steps' batches at once).

        indices: (b,) integer example indices in [0, N); scores: (b,) real, larger = more
        informative, kept in float64. Either may live on any device; the teacher keeps its state
        on the CPU and never changes the tensors passed in. step: when the scores were measured,
        an int for all of them or (b,) non-negative ints, one per score (default: the number of
        observe calls so far); the staleness order of ``refresh`` follows it. An index repeated in
        one call keeps the mean of its scores at its latest step. Under ``torch.distributed`` this
        gathers every rank's batch (a collective).
        """
        index = _index_tensor(indices, "indices")
        values = _score_tensor(scores)
        if index.shape != values.shape:
            raise ValueError(
                f"indices and scores must have the same shape (b,), got indices {_shape(index)} and scores "
                f"{_shape(values)}"
            )
        self._check_range(index, "indices")
        when = _step_tensor(self._observe_calls if step is None else step, index.numel())
        index, values, when = _mean_per_index(index, values, when)
        if _distributed.is_distributed():
            index, values, when = _mean_per_index(*_distributed.all_gather_scores(index, values, when))
        self._scores[index] = values
        self._score_steps[index] = when
        self._observe_calls += 1
        self._counters["observed"] += index.numel()
        self._counters["nonfinite_scores"] += int((~torch.isfinite(values)).sum())

    def _plan_at(self, epoch: int) -> EpochPlan:
        """The plan of epoch ``epoch`` (0-based); past the planned epochs a ValueError that says how
        to build a teacher for a longer loop."""
        epochs = self.plan.epochs
        if epochs is not None and isinstance(epoch, numbers.Integral) and epoch >= epochs:
            raise ValueError(f"epoch {epoch} (0-based) is past the teacher's plan of {epochs} epochs: build the teacher "
                             f"with epochs= the loop's length, or epochs=None for an open-ended teacher")
        return self.plan.at(epoch)

    def refresh_indices(self, epoch: int) -> torch.Tensor | None:
        """The examples to re-score (forward only) and ``observe`` before ``select(epoch)``.

        Returns (k,) int64 ascending, or None when nothing needs re-scoring: no ``refresh``, not a
        selection point, a strategy that reads no scores (``"random"``), or the selection already
        made. Under ``torch.distributed``, this rank's share (every world-size-th index from its
        rank), so that the ranks score disjoint parts and ``observe`` gathers them.
        """
        plan = self._plan_at(epoch)
        if self.refresh is None or not plan.is_selection_point or not self.strategy.reads_scores:
            return None
        if self._subset is not None and self._subset.selected_at == epoch:
            return None
        if self.refresh == "cycle":
            stale = torch.arange(self.num_examples)
        else:
            count = max(1, math.ceil(self.refresh * self.num_examples - 1e-9))
            stale = torch.sort(torch.sort(self._score_steps, stable=True).indices[:count]).values
        self._counters["refreshes"] += 1
        rank, world = _distributed.rank_and_world_size()
        return stale[rank::world]

    def planned_size(self, epoch: int) -> int | None:
        """How many examples ``select(epoch)`` will return: N on full-data epochs, m = max(1,
        floor(ratio N)) on subset epochs, None where the strategy sizes its subsets from the
        scores (InfoBatch)."""
        plan = self._plan_at(epoch)
        if plan.is_full:
            return self.num_examples
        if self.strategy.sizes_own_subsets or plan.ratio is None:
            return None
        return self._subset_size(plan.ratio)

    def _subset_size(self, ratio: float) -> int:
        """m = max(1, floor(ratio N)), at most N: the size of a subset at ``ratio``."""
        return min(self.num_examples, max(1, fraction_count(ratio, self.num_examples)))

    def select(self, epoch: int, *, prior: torch.Tensor | None = None) -> Selection:
        """The examples epoch ``epoch`` (0-based) trains on.

        At a selection point the teacher picks a new subset from the scores it holds; later epochs
        of the same selection reuse it (however many scores arrive meanwhile); full-data epochs
        return every index with ``is_full=True``. The result also sets ``loss_weights``.

        prior: None, or (N,) real scores assumed, at a new selection, for the examples never
        scored (in place of "maximally informative"; NaN keeps that for an example). Not stored:
        :class:`attent.Teaching` passes learnability's prior (the learner's typical loss less each
        example's reference loss) at every selection.
        """
        plan = self._plan_at(epoch)
        if plan.is_full:
            if self._full is None:
                self._full = Selection(torch.arange(self.num_examples), None, 1.0, True)
            selection = self._full
        else:
            if self._subset is None or self._subset.selected_at != plan.selection_epoch:
                self._subset = self._choose(plan.selection_epoch, self.planned_size(epoch), self._prior_of(prior))
            selection = self._subset
        self._activate(selection, epoch)
        return selection

    def _prior_of(self, prior: torch.Tensor | None) -> torch.Tensor | None:
        if prior is None:
            return None
        values = _score_tensor(prior, "prior")
        if values.shape != (self.num_examples,):
            raise ValueError(f"prior must hold one score per example, shape ({self.num_examples},), got {_shape(values)}")
        return values

    def _choose(self, selection_epoch: int, m: int | None, prior: torch.Tensor | None = None) -> Selection:
        n = self.num_examples
        finite = torch.isfinite(self._scores)
        nonfinite = int(((self._score_steps >= 0) & ~finite).sum())
        if nonfinite:
            warnings.warn(
                f"{nonfinite} of {n} examples hold NaN or infinite scores; they stay in play as maximally "
                "informative (see Teacher.stats['nonfinite_scores'])",
                RuntimeWarning,
                stacklevel=3,
            )
        values, unscored = self._scores.clone(), self._score_steps < 0
        if prior is not None:
            values[unscored] = prior[unscored]
            unscored = torch.zeros_like(unscored)
        view = ScoreView(values, unscored | ~torch.isfinite(values))
        generator = _derived_generator(self.seed, selection_epoch, "select")
        indices, weights = self.strategy.select(view, n if m is None else m, generator)
        indices, order = torch.sort(indices.to(torch.int64), stable=True)
        if weights is not None:
            weights = weights[order].to(torch.float32)
        self._counters["selections"] += 1
        return Selection(
            indices=indices,
            weights=weights,
            ratio=indices.numel() / n,
            is_full=weights is None and indices.numel() == n,
            selected_at=selection_epoch,
        )

    def _activate(self, selection: Selection | None, epoch: int | None) -> None:
        self._active_epoch = epoch
        if selection is self._active and selection is not None:
            return
        self._active = selection
        if selection is None or selection.weights is None:
            self._active_weights = None
        else:
            dense = torch.ones(self.num_examples, dtype=torch.float32)
            dense[selection.indices] = selection.weights
            self._active_weights = dense

    def loss_weights(self, indices: IndexLike) -> torch.Tensor:
        """Per-example loss weights of a batch under the current selection (the last ``select``).

        indices: (b,) integer example indices in [0, N) (repeats allowed). Returns (b,) float32 on
        the device of ``indices``: all 1 when the selection is unweighted; the trainer multiplies
        the per-example losses by them before averaging.
        """
        index = _index_tensor(indices, "indices")
        self._check_range(index, "indices")
        device = indices.device if isinstance(indices, torch.Tensor) else torch.device("cpu")
        if self._active_weights is None:
            return torch.ones(index.numel(), dtype=torch.float32, device=device)
        return self._active_weights[index].to(device)

    def sampler(self, data: Any = None, *, shuffle: bool = True, reference: Any = None) -> "TeacherSampler":
        """A ``torch.utils.data.Sampler`` over the selected example indices (see ``TeacherSampler``).

        data: the map-style dataset the DataLoader reads, ``attent.IndexedDataset(ds)``. Checked
        here: it has N examples (a teacher built for fewer would never train the rest; for more,
        the loader would ask for items that do not exist), and its first and last items are
        ``(index, item)`` pairs (a loader over the bare dataset yields ``(x, y)``, and the loop's
        ``idx`` would be a batch of inputs). Omitted: nothing can be checked, and a warning says so.
        reference: for a loop that observes learnability (the learner's losses less these): an
            :class:`attent.Reference` or its (N,) reference losses; each selection then ranks the
            examples not yet scored by :func:`learnability_prior`, as ``fit`` does.
        """
        if data is None:
            warnings.warn("teacher.sampler() without the loader's dataset cannot check that it has num_examples="
                          f"{self.num_examples} examples yielded as (index, item) pairs; pass it: teacher.sampler(data) "
                          "with data = attent.IndexedDataset(ds)", UserWarning, stacklevel=2)
        else:
            self._check_loader_data(data)
        losses = None if reference is None else getattr(reference, "losses", reference)
        if losses is not None:
            learnability_prior(self, losses)  # checked here, where the loop is built
        return TeacherSampler(self, shuffle=shuffle, reference_losses=losses)

    def _check_loader_data(self, data: Any) -> None:
        if not hasattr(data, "__len__") or not hasattr(data, "__getitem__"):
            raise ValueError(f"data must be the map-style dataset the DataLoader reads (attent.IndexedDataset(ds)), got "
                             f"{type(data).__name__}")
        n = len(data)
        if n != self.num_examples:
            consequence = (f"examples {self.num_examples} to {n - 1} would never be trained" if n > self.num_examples else
                           f"the sampler would ask for examples {n} to {self.num_examples - 1}, which do not exist")
            raise ValueError(f"the loader's dataset has {n} examples but the teacher was built for num_examples="
                             f"{self.num_examples}: {consequence}; build it as Teacher(len(data), ...)")
        for index in sorted({0, n - 1}):
            item = data[index]
            if not (isinstance(item, (tuple, list)) and len(item) == 2 and _is_example_index(item[0], index)):
                first = type(item[0]).__name__ if isinstance(item, (tuple, list)) and item else type(item).__name__
                raise ValueError(f"the loader's dataset must yield (index, item) pairs, so that each batch carries its "
                                 f"examples' indices; item {index} is a {type(item).__name__} starting with a {first}. "
                                 "Wrap it: data = attent.IndexedDataset(ds), and pass data to both DataLoader(data, ...) "
                                 "and teacher.sampler(data)")

    def epoch_order(self, epoch: int, *, shuffle: bool = True, shard: bool = True) -> torch.Tensor:
        """The example order of ``epoch``: the selection, shuffled with a generator seeded from
        (seed, epoch) so every rank draws the same order, then (``shard``) this rank's shard of it
        (:func:`attent._distributed.shard`). (k,) int64."""
        order = self.select(epoch).indices
        if shuffle:
            order = order[torch.randperm(order.numel(), generator=_derived_generator(self.seed, epoch, "shuffle"))]
        return _distributed.shard(order) if shard else order

    @property
    def scores(self) -> torch.Tensor:
        """(N,) float64 CPU copy of each example's latest score (NaN for an example never scored)."""
        return self._scores.clone()

    @property
    def score_steps(self) -> torch.Tensor:
        """(N,) int64 CPU copy of the step each example's latest score was measured at (-1: never)."""
        return self._score_steps.clone()

    @property
    def stats(self) -> dict[str, Any]:
        """Counters and the current selection, as plain Python numbers.

        observed: scores received (all ranks); nonfinite_scores: NaN/inf scores received;
        unscored: examples never scored; nonfinite_held: examples whose latest score is NaN/inf;
        selections: subsets chosen; refreshes: re-scoring requests issued; selection_epoch,
        selection_size, selection_ratio, selection_is_full: the last ``select`` (None before any).
        """
        active = self._active
        return {
            **self._counters,
            "unscored": int((self._score_steps < 0).sum()),
            "nonfinite_held": int(((self._score_steps >= 0) & ~torch.isfinite(self._scores)).sum()),
            "selection_epoch": self._active_epoch,
            "selection_size": None if active is None else len(active),
            "selection_ratio": None if active is None else active.ratio,
            "selection_is_full": None if active is None else active.is_full,
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to select what an uninterrupted run selects (CPU tensors
        and plain Python values; the configuration itself is the constructor's)."""
        return {
            "version": STATE_VERSION,
            "num_examples": self.num_examples,
            "scores": self._scores.clone(),
            "score_steps": self._score_steps.clone(),
            "observe_calls": self._observe_calls,
            "subset": selection_state(self._subset),
            "active": selection_state(self._active),
            "active_epoch": self._active_epoch,
            "counters": dict(self._counters),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a ``state_dict()`` taken from a teacher over the same number of examples; every
        field is checked before any is restored."""
        state = checked_state(state_dict, self.num_examples)
        self._scores, self._score_steps = state["scores"], state["score_steps"]
        self._observe_calls, self._subset = state["observe_calls"], state["subset"]
        active = state["active"]
        if active is not None and self._subset is not None and active.selected_at == self._subset.selected_at:
            active = self._subset
        self._active = None
        self._activate(active, state["active_epoch"])
        self._counters = state["counters"]

    def __repr__(self) -> str:
        return (f"Teacher(num_examples={self.num_examples}, strategy={self.strategy!r}, refresh={self.refresh!r}, "
                f"budget={self.budget}, seed={self.seed}, when={self.when!r}, plan={self.plan!r})")


def learnability_prior(teacher: Teacher, reference_losses: torch.Tensor) -> torch.Tensor:
    """(N,) float64: the learnability assumed for an example the learner has not been scored on,
    the learner's typical loss less the example's reference loss, for ``Teacher.select(prior=)``.

    The typical loss is the mean of the learner losses the teacher holds (each example's
    learnability score plus its reference loss; NaN/inf ones left out), 0 before any: the first
    selection then ranks by the reference alone (the static filter's order), later ones put unseen
    and seen examples on one footing (both stale by as much) instead of taking every unseen
    example, mislabelled ones included, first. ``reference_losses``: (N,) the losses the scores
    were computed against. Read from the teacher's state only, so a resumed run gets the same.
    """
    reference = torch.as_tensor(reference_losses).detach().to(device="cpu", dtype=torch.float64).reshape(-1)
    if reference.numel() != teacher.num_examples:
        raise ValueError(f"reference losses must hold one loss per example, ({teacher.num_examples},), got "
                         f"{tuple(torch.as_tensor(reference_losses).shape)}")
    held = teacher.score_steps >= 0
    learner = teacher.scores[held] + reference[held]
    learner = learner[torch.isfinite(learner)]
    typical = learner.mean() if learner.numel() else torch.zeros((), dtype=torch.float64)
    return typical - reference


class TeacherSampler(Sampler[int]):
    """Yields the example indices of one epoch's selection, shuffled, and under
    ``torch.distributed`` this rank's shard of them (:meth:`Teacher.epoch_order`).

    Each pass yields ``teacher.epoch_order(epoch)``; a completed pass moves to the next epoch;
    ``set_epoch(epoch)`` sets it explicitly (call it before each epoch when resuming, as with
    ``DistributedSampler``). ``len()`` is the length of the current epoch's shard, 0 once the
    epochs of a teacher with a known length are over; iterating past them raises a ValueError (a
    loop longer than the plan would otherwise train on nothing; ``Teacher(..., epochs=None)`` is
    open-ended). Both call ``select``: observe the ``refresh_indices(epoch)`` scores first.
    """

    def __init__(self, teacher: Teacher, *, shuffle: bool = True, reference_losses: torch.Tensor | None = None):
        self.teacher = teacher
        self.shuffle = shuffle
        self.reference_losses = reference_losses
        self.epoch = 0

    def _select(self, epoch: int) -> Selection:
        if self.reference_losses is None:
            return self.teacher.select(epoch)
        return self.teacher.select(epoch, prior=learnability_prior(self.teacher, self.reference_losses))

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next pass yields."""
        self.epoch = check_count("epoch", epoch, 0)

    def _finished(self) -> bool:
        return self.teacher.plan.epochs is not None and self.epoch >= self.teacher.plan.epochs

    def __iter__(self) -> Iterator[int]:
        if self._finished():
            epochs = self.teacher.plan.epochs
            raise ValueError(f"the loop starts epoch {self.epoch} (0-based) but the teacher plans {epochs} epochs; build "
                             f"it with epochs= the loop's length, or epochs=None for an open-ended teacher")
        epoch = self.epoch
        self._select(epoch)  # the selection epoch_order reads: made here, with the prior where there is one
        yield from self.teacher.epoch_order(epoch, shuffle=self.shuffle).tolist()
        if self.epoch == epoch:
            self.epoch = epoch + 1

    def __len__(self) -> int:
        if self._finished():
            return 0
        _, world = _distributed.rank_and_world_size()
        return math.ceil(len(self._select(self.epoch)) / world)
