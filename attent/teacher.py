"""The AtteNT teacher: one score per training example, and the subset each epoch trains on.

A plain PyTorch loop adopts it in three lines::

    teacher = attent.Teacher(len(ds), score="loss", epochs=E)
    loader = DataLoader(IndexedDataset(ds), batch_size=64, sampler=teacher.sampler())
    ...  # per step, with the batch's example indices idx and per-example losses:
    teacher.observe(idx, per_example_loss.detach())

(``attent.scores.IndexedDataset`` yields ``(index, item)``.) With the weighted strategies
(``"importance"``, ``"infobatch"``) the loop also multiplies each example's loss by
``teacher.loss_weights(idx)`` before averaging.

The teacher sees example indices and score tensors only: no model, no loss, no data loader.

Scores. ``observe(indices, scores)`` records each example's latest score (larger = more
informative) and the step it was measured at. Scores arrive for free from training steps, and,
with ``refresh``, from forward-only passes the trainer runs before a selection point:
``refresh_indices(epoch)`` names the examples to re-score (``"cycle"``: all of them, as the
published code does; a fraction f: the ``ceil(f * N)`` stalest; None: online scores only).
``score`` is a label telling the trainer what to feed: ``"loss"``, ``"fgrad"`` (the functional-
gradient norm, the paper's rule) or ``"gradnorm"`` (the per-example parameter-gradient norm).

Examples never scored, and examples whose latest score is NaN or infinite, count as maximally
informative: the greedy and soft teachers take them first, importance sampling gives them the
largest finite score's probability, InfoBatch never prunes them. So a teacher without scores
(before the first observation, or without warm-up) still selects — the unscored ones, in a seeded
random order. NaN/inf scores are counted in ``stats`` and warned about once per selection.

Strategies (at a selection point of target ratio r, m = max(1, floor(r N)) of N examples):

- ``"hard"`` (alias ``"greedy"``): the m largest scores, the paper's Algorithm 1. Ties are broken
  by a permutation drawn from the seed.
- ``"soft"``: Gumbel-top-k, m draws without replacement with probabilities proportional to
  ``p_i ** (1 / temperature)``, where p = softmax(scores) or sigmoid(scores) (``normalize``).
  Temperature -> 0 gives ``"hard"``, a large temperature a uniform subset.
- ``"random"``: a uniform subset of m examples.
- ``"importance"``: m draws with replacement with q_i = (1 - u) s_i / sum(s) + u / N (u =
  ``uniform_mix``, scores clamped at 0), each weighted 1 / (N q_i): the weighted mean loss over the
  draws is an unbiased estimate of the full-data mean loss. An example drawn twice appears twice.
- ``"infobatch"`` (InfoBatch, Qin et al., ICLR 2024): at every epoch, of the scored examples below
  the mean score a random ``1 - prune_ratio`` fraction is kept with loss weight
  ``1 / (1 - prune_ratio)``, the others are pruned; every other example is kept with weight 1.
  Pruning stops at epoch floor(``delta`` * epochs); ratio, interval and cycles do not apply.

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
per-sample loss (sum over tasks)                       ``score="loss"`` (default "fgrad")
``num_select = max(1, int(N * ratio))``                m = max(1, floor(N r))
``soft_normalization`` softmax (default) / sigmoid     ``normalize`` "softmax" / "sigmoid"
soft: re-score and redraw at each subset epoch         ``reselect_each_epoch=True``
``gumbel_temperature`` 1.0                             ``temperature=1.0``
====================================================  ============================================

The published ``AtteNTSimple`` (LLM LoRA fine-tuning) trains one full epoch recording each
example's mean token loss, then keeps the ``attent_ratio=0.7`` highest-loss examples for every
remaining epoch: ``Teacher(N, score="loss", epochs=E, ratio=0.7, cycles=1, interval=E - 1)``.

Two deliberate differences: the published soft teacher divides the Gumbel-perturbed log-probability
by the temperature, which leaves its top-k unchanged, so its temperature has no effect; here the
temperature scales the log-probabilities before the noise is added. And the published code leaves
the ``(epochs - 1) % total_cycles`` last epochs untrained; here they lengthen the first cycles.

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

import hashlib
import math
import numbers
import warnings
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Mapping, Sequence, Union

import torch
import torch.nn.functional as F
from torch.utils.data import Sampler

from attent import _distributed
from attent.schedules import IntervalSchedule, RatioSchedule, TeachingPlan, check_count, check_fraction

__all__ = [
    "SCORE_KINDS",
    "STRATEGIES",
    "NORMALIZATIONS",
    "Selection",
    "Teacher",
    "TeacherSampler",
]

SCORE_KINDS: tuple[str, ...] = ("loss", "fgrad", "gradnorm")
STRATEGIES: tuple[str, ...] = ("hard", "greedy", "soft", "random", "infobatch", "importance")
NORMALIZATIONS: tuple[str, ...] = ("softmax", "sigmoid")
_STATE_VERSION = 1
_STATE_KEYS = (
    "version", "num_examples", "scores", "score_steps", "observe_calls", "subset", "active", "active_epoch", "counters"
)

IndexLike = Union[torch.Tensor, Sequence[int]]
ScoreLike = Union[torch.Tensor, Sequence[float]]


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


def _derived_generator(seed: int, epoch: int, purpose: str) -> torch.Generator:
    digest = hashlib.blake2b(f"{seed}/{epoch}/{purpose}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))


def _fraction_count(fraction: float, total: int) -> int:
    """floor(fraction * total), robust to the float error of products like 0.29 * 100."""
    return math.floor(fraction * total + 1e-9)


def _top_m(keys: torch.Tensor, m: int, generator: torch.Generator) -> torch.Tensor:
    """Positions of the m largest keys (float64 (N,)); ties broken by a permutation from ``generator``."""
    order = torch.randperm(keys.numel(), generator=generator)
    ranked = torch.sort(keys[order], descending=True, stable=True).indices
    return order[ranked[:m]]


def _gumbel(n: int, generator: torch.Generator) -> torch.Tensor:
    uniform = torch.rand(n, generator=generator, dtype=torch.float64).clamp_min(torch.finfo(torch.float64).tiny)
    return -torch.log(-torch.log(uniform))


def _select_hard(scores: torch.Tensor, unknown: torch.Tensor, m: int, generator: torch.Generator) -> torch.Tensor:
    return _top_m(scores.masked_fill(unknown, math.inf), m, generator)


def _select_soft(
    scores: torch.Tensor,
    unknown: torch.Tensor,
    m: int,
    generator: torch.Generator,
    *,
    temperature: float,
    normalize: str,
) -> torch.Tensor:
    known = ~unknown
    log_probs = torch.zeros_like(scores)
    known_scores = scores[known]
    log_probs[known] = torch.log_softmax(known_scores, dim=0) if normalize == "softmax" else F.logsigmoid(known_scores)
    keys = (log_probs / temperature + _gumbel(scores.numel(), generator)).masked_fill(unknown, math.inf)
    return _top_m(keys, m, generator)


def _select_importance(
    scores: torch.Tensor, unknown: torch.Tensor, m: int, generator: torch.Generator, *, uniform_mix: float
) -> tuple[torch.Tensor, torch.Tensor]:
    n = scores.numel()
    mass = scores.clamp_min(0.0)
    known = ~unknown
    mass = mass.masked_fill(unknown, mass[known].max().item() if known.any() else 1.0)
    total = mass.sum()
    proportional = mass / total if total > 0 else torch.full_like(mass, 1.0 / n)
    probs = (1.0 - uniform_mix) * proportional + uniform_mix / n
    cdf = torch.cumsum(probs, dim=0)
    targets = torch.rand(m, generator=generator, dtype=torch.float64) * cdf[-1]
    draws = torch.searchsorted(cdf, targets, right=True).clamp_max(n - 1)
    return draws, 1.0 / (n * probs[draws])


def _select_infobatch(
    scores: torch.Tensor, unknown: torch.Tensor, generator: torch.Generator, *, prune_ratio: float
) -> tuple[torch.Tensor, torch.Tensor]:
    known = ~unknown
    below_mean = known & (scores < scores[known].mean()) if known.any() else torch.zeros_like(known)
    candidates = below_mean.nonzero().flatten()
    keep = _fraction_count(1.0 - prune_ratio, candidates.numel())
    kept = candidates[torch.randperm(candidates.numel(), generator=generator)[:keep]]
    always = (~below_mean).nonzero().flatten()
    weights = torch.ones(always.numel() + kept.numel(), dtype=torch.float64)
    weights[always.numel():] = 1.0 / (1.0 - prune_ratio)
    return torch.cat([always, kept]), weights


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _index_tensor(indices: IndexLike, name: str) -> torch.Tensor:
    """``indices`` as a (b,) int64 CPU tensor (a copy when it lives elsewhere or has another dtype)."""
    index = indices.detach() if isinstance(indices, torch.Tensor) else torch.as_tensor(indices)
    if index.numel() == 0:
        index = index.to(torch.int64)
    if index.dtype == torch.bool or index.is_floating_point() or index.is_complex():
        raise ValueError(f"{name} must hold integer example indices, got dtype {index.dtype}")
    if index.dim() != 1:
        raise ValueError(f"{name} must have shape (b,), got {_shape(index)}")
    return index.to(device="cpu", dtype=torch.int64)


def _score_tensor(scores: ScoreLike) -> torch.Tensor:
    values = scores.detach() if isinstance(scores, torch.Tensor) else torch.as_tensor(scores)
    if values.dtype == torch.bool or values.is_complex():
        raise ValueError(f"scores must be real numbers, got dtype {values.dtype}")
    if values.dim() != 1:
        raise ValueError(f"scores must have shape (b,), got {_shape(values)}")
    return values.to(device="cpu", dtype=torch.float32)


def _check_unique(index: torch.Tensor) -> None:
    ordered = torch.sort(index).values
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    if repeated.numel():
        raise ValueError(
            f"indices must not repeat within one observe call, got repeated {torch.unique(repeated)[:8].tolist()}"
        )


def _last_per_index(index: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each index once, with the value of its last occurrence (ranks' batches may overlap)."""
    unique, inverse = torch.unique(index, return_inverse=True)
    positions = torch.arange(index.numel())
    last = torch.full((unique.numel(),), -1, dtype=torch.int64).scatter_reduce(0, inverse, positions, reduce="amax")
    return unique, values[last]


def _selection_state(selection: Selection | None) -> dict[str, Any] | None:
    if selection is None:
        return None
    return {
        "indices": selection.indices.clone(),
        "weights": None if selection.weights is None else selection.weights.clone(),
        "ratio": selection.ratio,
        "is_full": selection.is_full,
        "selected_at": selection.selected_at,
    }


def _selection_from_state(state: Mapping[str, Any] | None) -> Selection | None:
    if state is None:
        return None
    weights = state["weights"]
    return Selection(
        indices=state["indices"].to(torch.int64).clone(),
        weights=None if weights is None else weights.to(torch.float32).clone(),
        ratio=float(state["ratio"]),
        is_full=bool(state["is_full"]),
        selected_at=state["selected_at"],
    )


class Teacher:
    """Holds one score per training example and picks the subset each epoch trains on.

    Args:
        num_examples: N, the training set's length; examples are the indices 0 .. N-1.
        score: ``"loss"``, ``"fgrad"`` or ``"gradnorm"``: which per-example score the trainer feeds.
        strategy: ``"hard"`` / ``"greedy"``, ``"soft"``, ``"random"``, ``"importance"`` or
            ``"infobatch"`` (see the module docstring).
        ratio: the fraction selected at a selection point: a float in (0, 1] (constant), a
            ``RatioSchedule``, or None for the published cosine 0.2 -> 0.8 (needs ``epochs``).
        interval: subset epochs per selection point: an int (fixed), an ``IntervalSchedule``, or
            None for the published fixed 5.
        warmup_epochs: full-data epochs before teaching starts (published: 1).
        anneal_epochs: full-data epochs that end the run (needs ``epochs``).
        epochs: the run's length; None for an open-ended run (constant ratio, fixed interval).
        cycles: selection cycles the teaching span is split into; None: 10 (published) when
            ``epochs`` is given, open-ended selection every ``interval`` epochs otherwise.
        refresh: None (online scores only), ``"cycle"`` (re-score every example at each
            selection point) or a fraction in (0, 1] (re-score the stalest fraction).
        reselect_each_epoch: make every subset epoch its own selection point (published soft).
        temperature: soft: the Gumbel-top-k temperature, > 0.
        normalize: soft: ``"softmax"`` (published default) or ``"sigmoid"`` of the scores.
        prune_ratio: infobatch: the fraction of below-mean examples pruned, in [0, 1) (0.5).
        delta: infobatch: pruning stops at epoch floor(delta * epochs), in (0, 1] (0.875).
        uniform_mix: importance: the weight of the uniform floor in the sampling law, in (0, 1].
        seed: seeds every random draw.
    """

    def __init__(
        self,
        num_examples: int,
        *,
        score: Literal["loss", "fgrad", "gradnorm"] = "fgrad",
        strategy: Literal["hard", "greedy", "soft", "random", "infobatch", "importance"] = "hard",
        ratio: float | RatioSchedule | None = None,
        interval: int | IntervalSchedule | None = None,
        warmup_epochs: int = 1,
        anneal_epochs: int = 0,
        epochs: int | None = None,
        cycles: int | None = None,
        refresh: None | Literal["cycle"] | float = None,
        reselect_each_epoch: bool = False,
        temperature: float = 1.0,
        normalize: Literal["softmax", "sigmoid"] = "softmax",
        prune_ratio: float = 0.5,
        delta: float = 0.875,
        uniform_mix: float = 0.1,
        seed: int = 0,
    ):
        if isinstance(num_examples, bool) or not isinstance(num_examples, numbers.Integral) or num_examples < 1:
            raise ValueError(f"num_examples must be a positive integer (the dataset is empty?), got {num_examples!r}")
        if score not in SCORE_KINDS:
            raise ValueError(f"score must be one of {SCORE_KINDS}, got {score!r}")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not 0 < temperature < math.inf:
            raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
        if isinstance(prune_ratio, bool) or not isinstance(prune_ratio, numbers.Real) or not 0 <= prune_ratio < 1:
            raise ValueError(f"prune_ratio must be in [0, 1), got {prune_ratio!r}")
        self.num_examples = int(num_examples)
        self.score = score
        self.strategy = "hard" if strategy == "greedy" else strategy
        self.normalize = normalize
        self.temperature = float(temperature)
        self.prune_ratio = float(prune_ratio)
        self.delta = check_fraction("delta", delta)
        self.uniform_mix = check_fraction("uniform_mix", uniform_mix)
        self.refresh = self._check_refresh(refresh)
        self.seed = check_count("seed", seed, 0)
        self.plan = self._build_plan(
            epochs=epochs,
            warmup_epochs=warmup_epochs,
            anneal_epochs=anneal_epochs,
            cycles=cycles,
            ratio=ratio,
            interval=interval,
            reselect_each_epoch=reselect_each_epoch,
        )
        self._scores = torch.full((self.num_examples,), math.nan, dtype=torch.float32)
        self._score_steps = torch.full((self.num_examples,), -1, dtype=torch.int64)
        self._observe_calls = 0
        self._subset: Selection | None = None
        self._active: Selection | None = None
        self._active_epoch: int | None = None
        self._active_weights: torch.Tensor | None = None
        self._full: Selection | None = None
        self._counters = {"observed": 0, "nonfinite_scores": 0, "selections": 0, "refreshes": 0}

    @classmethod
    def published(
        cls,
        num_examples: int,
        *,
        epochs: int,
        recipe: Literal["complex", "simple"] = "complex",
        strategy: Literal["hard", "greedy", "soft", "random"] = "hard",
        seed: int = 0,
    ) -> "Teacher":
        """A teacher that behaves as the published AtteNT code (see the module docstring).

        recipe ``"complex"`` (``AtteNTComplex``, ViT pre-training): loss scores, re-scored over the
        whole dataset at each selection point, the published cycles and schedules, ``strategy``
        hard, soft (redrawn at each subset epoch) or random. recipe ``"simple"``
        (``AtteNTSimple``, LLM fine-tuning): one full epoch whose training losses score every
        example, then the 70% highest-loss examples for every remaining epoch (hard only).
        """
        epochs = check_count("epochs", epochs, 1)
        if recipe == "complex":
            if strategy not in ("hard", "greedy", "soft", "random"):
                raise ValueError(f"the published complex recipe has strategies hard, soft and random, got {strategy!r}")
            return cls(
                num_examples,
                score="loss",
                strategy=strategy,
                epochs=epochs,
                refresh="cycle",
                reselect_each_epoch=strategy == "soft",
                seed=seed,
            )
        if recipe == "simple":
            if strategy not in ("hard", "greedy"):
                raise ValueError(f"the published simple recipe selects by hard top-k only, got strategy={strategy!r}")
            return cls(
                num_examples,
                score="loss",
                strategy="hard",
                epochs=epochs,
                ratio=0.7,
                cycles=1,
                interval=max(1, epochs - 1),
                seed=seed,
            )
        raise ValueError(f"recipe must be 'complex' or 'simple', got {recipe!r}")

    @staticmethod
    def _check_refresh(refresh: None | str | float) -> None | str | float:
        if refresh is None or refresh == "cycle":
            return refresh
        if isinstance(refresh, str):
            raise ValueError(f"refresh must be None, 'cycle' or a fraction in (0, 1], got {refresh!r}")
        return check_fraction("refresh", refresh)

    def _build_plan(
        self,
        *,
        epochs: int | None,
        warmup_epochs: int,
        anneal_epochs: int,
        cycles: int | None,
        ratio: float | RatioSchedule | None,
        interval: int | IntervalSchedule | None,
        reselect_each_epoch: bool,
    ) -> TeachingPlan:
        if self.strategy != "infobatch":
            return TeachingPlan(
                epochs=epochs,
                warmup_epochs=warmup_epochs,
                anneal_epochs=anneal_epochs,
                cycles=cycles,
                ratio=self._ratio_schedule(ratio, epochs),
                interval=self._interval_schedule(interval),
                reselect_each_epoch=reselect_each_epoch,
            )
        given = {"ratio": ratio, "interval": interval, "cycles": cycles, "reselect_each_epoch": reselect_each_epoch}
        conflicting = {name: value for name, value in given.items() if value is not None and value is not False}
        if conflicting:
            raise ValueError(
                f"{conflicting} do not apply to strategy='infobatch': it prunes at every epoch until "
                "floor(delta * epochs); set prune_ratio and delta instead"
            )
        return self._infobatch_plan(epochs, warmup_epochs, anneal_epochs)

    def _infobatch_plan(self, epochs: int | None, warmup_epochs: int, anneal_epochs: int) -> TeachingPlan:
        """Every epoch after warm-up a selection point, until floor(delta * epochs) (or forever)."""
        warmup_epochs = check_count("warmup_epochs", warmup_epochs, 0)
        anneal_epochs = check_count("anneal_epochs", anneal_epochs, 0)
        every_epoch = IntervalSchedule.fixed(1)
        if epochs is None:
            return TeachingPlan(
                epochs=None, warmup_epochs=warmup_epochs, anneal_epochs=anneal_epochs, ratio=None, interval=every_epoch
            )
        epochs = check_count("epochs", epochs, 1)
        pruning_ends = math.floor(self.delta * epochs + 1e-9)
        anneal = max(anneal_epochs, min(epochs - warmup_epochs, epochs - pruning_ends))
        return TeachingPlan(
            epochs=epochs,
            warmup_epochs=warmup_epochs,
            anneal_epochs=anneal,
            cycles=max(1, epochs - warmup_epochs - anneal),
            ratio=None,
            interval=every_epoch,
        )

    @staticmethod
    def _ratio_schedule(ratio: float | RatioSchedule | None, epochs: int | None) -> RatioSchedule:
        if ratio is None:
            if epochs is None:
                raise ValueError(
                    "ratio=None means the published cosine 0.2 -> 0.8 schedule, which needs epochs; pass "
                    "epochs=... or a constant ratio such as ratio=0.5"
                )
            return RatioSchedule()
        if isinstance(ratio, RatioSchedule):
            return ratio
        return RatioSchedule.constant(check_fraction("ratio", ratio))

    @staticmethod
    def _interval_schedule(interval: int | IntervalSchedule | None) -> IntervalSchedule:
        if interval is None:
            return IntervalSchedule()
        if isinstance(interval, IntervalSchedule):
            return interval
        return IntervalSchedule.fixed(check_count("interval", interval, 1))

    def _check_range(self, index: torch.Tensor, name: str) -> None:
        outside = index[(index < 0) | (index >= self.num_examples)]
        if outside.numel():
            raise ValueError(f"{name} must be in [0, num_examples={self.num_examples}), got {outside[:8].tolist()}")

    def observe(self, indices: IndexLike, scores: ScoreLike, *, step: int | None = None) -> None:
        """Record the scores of a batch of examples.

        indices: (b,) integer example indices, distinct, in [0, N); scores: (b,) real, larger = more
        informative. Either may live on any device; the teacher keeps its state on the CPU and
        never changes the tensors passed in. step: when the scores were measured (default: the
        number of observe calls so far); the staleness order of ``refresh`` follows it. Under
        ``torch.distributed`` this gathers every rank's batch (a collective).
        """
        index = _index_tensor(indices, "indices")
        values = _score_tensor(scores)
        if index.shape != values.shape:
            raise ValueError(
                f"indices and scores must have the same shape (b,), got indices {_shape(index)} and scores "
                f"{_shape(values)}"
            )
        self._check_range(index, "indices")
        _check_unique(index)
        when = self._observe_calls if step is None else check_count("step", step, 0)
        if _distributed.is_distributed():
            index, values = _last_per_index(*_distributed.all_gather_scores(index, values))
        self._scores[index] = values
        self._score_steps[index] = when
        self._observe_calls += 1
        self._counters["observed"] += index.numel()
        self._counters["nonfinite_scores"] += int((~torch.isfinite(values)).sum())

    def refresh_indices(self, epoch: int) -> torch.Tensor | None:
        """The examples to re-score (forward only) and ``observe`` before ``select(epoch)``.

        Returns (k,) int64 ascending, or None when nothing needs re-scoring: no ``refresh``, not a
        selection point, a strategy that reads no scores (``"random"``), or the selection already
        made. Under ``torch.distributed``, this rank's share (every world-size-th index from its
        rank), so that the ranks score disjoint parts and ``observe`` gathers them.
        """
        plan = self.plan.at(epoch)
        if self.refresh is None or not plan.is_selection_point or self.strategy == "random":
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

    def select(self, epoch: int) -> Selection:
        """The examples epoch ``epoch`` (0-based) trains on.

        At a selection point the teacher picks a new subset from the scores it holds; later epochs
        of the same selection reuse it (however many scores arrive meanwhile); full-data epochs
        return every index with ``is_full=True``. The result also sets ``loss_weights``.
        """
        plan = self.plan.at(epoch)
        if plan.is_full:
            if self._full is None:
                self._full = Selection(torch.arange(self.num_examples), None, 1.0, True)
            selection = self._full
        else:
            if self._subset is None or self._subset.selected_at != plan.selection_epoch:
                self._subset = self._choose(plan.selection_epoch, plan.ratio)
            selection = self._subset
        self._activate(selection, epoch)
        return selection

    def _choose(self, selection_epoch: int, ratio: float | None) -> Selection:
        n = self.num_examples
        generator = _derived_generator(self.seed, selection_epoch, "select")
        finite = torch.isfinite(self._scores)
        unknown = (self._score_steps < 0) | ~finite
        nonfinite = int(((self._score_steps >= 0) & ~finite).sum())
        if nonfinite:
            warnings.warn(
                f"{nonfinite} of {n} examples hold NaN or infinite scores; they stay in play as maximally "
                "informative (see Teacher.stats['nonfinite_scores'])",
                RuntimeWarning,
                stacklevel=3,
            )
        scores = self._scores.to(torch.float64)
        weights: torch.Tensor | None = None
        if self.strategy == "infobatch":
            indices, weights = _select_infobatch(scores, unknown, generator, prune_ratio=self.prune_ratio)
        else:
            m = min(n, max(1, _fraction_count(ratio, n)))
            if self.strategy == "hard":
                indices = _select_hard(scores, unknown, m, generator)
            elif self.strategy == "soft":
                indices = _select_soft(
                    scores, unknown, m, generator, temperature=self.temperature, normalize=self.normalize
                )
            elif self.strategy == "random":
                indices = torch.randperm(n, generator=generator)[:m]
            else:
                indices, weights = _select_importance(scores, unknown, m, generator, uniform_mix=self.uniform_mix)
        indices, order = torch.sort(indices, stable=True)
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

    def sampler(self, *, shuffle: bool = True) -> "TeacherSampler":
        """A ``torch.utils.data.Sampler`` over the selected example indices (see ``TeacherSampler``)."""
        return TeacherSampler(self, shuffle=shuffle)

    @property
    def scores(self) -> torch.Tensor:
        """(N,) float32 CPU copy of each example's latest score (NaN for an example never scored)."""
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
            "version": _STATE_VERSION,
            "num_examples": self.num_examples,
            "scores": self._scores.clone(),
            "score_steps": self._score_steps.clone(),
            "observe_calls": self._observe_calls,
            "subset": _selection_state(self._subset),
            "active": _selection_state(self._active),
            "active_epoch": self._active_epoch,
            "counters": dict(self._counters),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a ``state_dict()`` taken from a teacher over the same number of examples."""
        if not isinstance(state_dict, Mapping):
            raise ValueError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        missing = [key for key in _STATE_KEYS if key not in state_dict]
        if missing:
            raise ValueError(f"state_dict lacks {missing}; it is not a Teacher state_dict")
        if state_dict["version"] != _STATE_VERSION:
            raise ValueError(f"state_dict version must be {_STATE_VERSION}, got {state_dict['version']!r}")
        if state_dict["num_examples"] != self.num_examples:
            raise ValueError(
                f"state_dict holds num_examples={state_dict['num_examples']} but this teacher has "
                f"num_examples={self.num_examples}: the dataset length changed"
            )
        for key in ("scores", "score_steps"):
            if _shape(state_dict[key]) != (self.num_examples,):
                raise ValueError(
                    f"state_dict[{key!r}] must have shape ({self.num_examples},), got {_shape(state_dict[key])}"
                )
        self._scores = state_dict["scores"].to(torch.float32).clone()
        self._score_steps = state_dict["score_steps"].to(torch.int64).clone()
        self._observe_calls = int(state_dict["observe_calls"])
        self._subset = _selection_from_state(state_dict["subset"])
        active = _selection_from_state(state_dict["active"])
        if active is not None and self._subset is not None and active.selected_at == self._subset.selected_at:
            active = self._subset
        self._active = None
        self._activate(active, state_dict["active_epoch"])
        self._counters = {key: int(value) for key, value in state_dict["counters"].items()}

    def __repr__(self) -> str:
        return (
            f"Teacher(num_examples={self.num_examples}, score={self.score!r}, strategy={self.strategy!r}, "
            f"refresh={self.refresh!r}, seed={self.seed}, plan={self.plan!r})"
        )


class TeacherSampler(Sampler[int]):
    """Yields the example indices of one epoch's selection, shuffled, and under
    ``torch.distributed`` this rank's shard of them.

    Each pass calls ``teacher.select(epoch)`` when it starts, shuffles the selected indices with a
    generator seeded from (teacher seed, epoch) (so every rank draws the same order), pads them by
    repeating from the start to a multiple of the world size, and yields every world-size-th index
    from this rank's. A completed pass moves to the next epoch; ``set_epoch(epoch)`` sets it
    explicitly (call it before each epoch when resuming, as with ``DistributedSampler``). Both
    ``len()`` and a pass call ``select``: observe the ``refresh_indices(epoch)`` scores first.
    """

    def __init__(self, teacher: Teacher, *, shuffle: bool = True):
        self.teacher = teacher
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next pass yields."""
        self.epoch = check_count("epoch", epoch, 0)

    def _shard(self, epoch: int) -> torch.Tensor:
        order = self.teacher.select(epoch).indices
        if self.shuffle:
            generator = _derived_generator(self.teacher.seed, epoch, "shuffle")
            order = order[torch.randperm(order.numel(), generator=generator)]
        rank, world = _distributed.rank_and_world_size()
        if world == 1:
            return order
        total = math.ceil(order.numel() / world) * world
        padded = order.repeat(math.ceil(total / order.numel()))[:total]
        return padded[rank::world]

    def __iter__(self) -> Iterator[int]:
        epoch = self.epoch
        yield from self._shard(epoch).tolist()
        if self.epoch == epoch:
            self.epoch = epoch + 1

    def __len__(self) -> int:
        _, world = _distributed.rank_and_world_size()
        return math.ceil(len(self.teacher.select(self.epoch)) / world)
