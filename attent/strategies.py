"""Selection strategies: how a teacher turns the scores it holds into the subset an epoch trains on.

A strategy is a small object registered under a name; ``Teacher(N, strategy="soft")`` builds the
registered class with its defaults, ``Teacher(N, strategy=Soft(temperature=0.5))`` takes an
instance. A new strategy is one class::

    @attent.register_strategy("my-rule")
    @dataclass(frozen=True)
    class MyRule(attent.Strategy):
        def select(self, scores, m, generator):
            return my_indices(scores.values, scores.unknown, m, generator), None

The teacher hands every strategy the same view of its scores (:class:`ScoreView`: float64 values,
and a mask of the examples without a usable score: never scored, or NaN/inf) and the subset size m
of the selection point (m = max(1, floor(ratio * N))). Unknown examples count as maximally
informative: score-reading strategies take them first. A strategy returns the chosen indices (any
order; the teacher sorts them) and per-example loss weights aligned with them (None when
unweighted).

Built in (see each class): ``"hard"`` (alias ``"greedy"``), ``"soft"``, ``"random"``,
``"importance"``, ``"infobatch"``. A strategy that sizes its own subsets (InfoBatch) also supplies
its own epoch plan through :meth:`Strategy.plan`.
"""
from __future__ import annotations

import abc
import math
import numbers
from dataclasses import asdict, dataclass
from typing import Any, Callable, ClassVar, Literal

import torch
import torch.nn.functional as F

from .schedules import IntervalSchedule, RatioSchedule, ScaledRatio, TeachingPlan, check_count, check_fraction

__all__ = [
    "DEFAULT_RATIO",
    "ScoreView",
    "Strategy",
    "Hard",
    "Soft",
    "Random",
    "Importance",
    "InfoBatch",
    "STRATEGIES",
    "register_strategy",
    "strategy_from",
    "fraction_count",
]


def fraction_count(fraction: float, total: int) -> int:
    """floor(fraction * total), robust to the float error of products like 0.29 * 100."""
    return math.floor(fraction * total + 1e-9)


@dataclass(frozen=True)
class ScoreView:
    """What a strategy sees: ``values`` (N,) float64 latest scores (larger = more informative) and
    ``unknown`` (N,) bool, True where an example has no usable score (never scored, NaN or inf)."""

    values: torch.Tensor
    unknown: torch.Tensor

    @property
    def num_examples(self) -> int:
        return self.values.numel()


@dataclass(frozen=True)
class PlanRequest:
    """The schedule arguments a teacher was given, for :meth:`Strategy.plan`."""

    epochs: int | None
    warmup_epochs: int
    anneal_epochs: int
    cycles: int | None
    ratio: float | RatioSchedule | ScaledRatio | None
    interval: int | IntervalSchedule | None
    reselect_each_epoch: bool


class Strategy(abc.ABC):
    """Base class of the selection strategies (see the module docstring).

    Subclasses set ``name`` through :func:`register_strategy`, implement :meth:`select`, and may set
    ``reads_scores = False`` (no refresh pass is needed) or override :meth:`plan`.
    """

    name: ClassVar[str] = ""
    reads_scores: ClassVar[bool] = True
    sizes_own_subsets: ClassVar[bool] = False

    @abc.abstractmethod
    def select(self, scores: ScoreView, m: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(indices (k,) int64, weights (k,) float64 or None) of one selection point."""

    def plan(self, request: PlanRequest) -> TeachingPlan:
        """The epoch plan: warm-up, cycles of ``interval`` subset epochs at ``ratio``, annealing."""
        return TeachingPlan(
            epochs=request.epochs,
            warmup_epochs=request.warmup_epochs,
            anneal_epochs=request.anneal_epochs,
            cycles=request.cycles,
            ratio=_ratio_schedule(request.ratio),
            interval=_interval_schedule(request.interval, request.epochs),
            reselect_each_epoch=request.reselect_each_epoch,
        )

    def describe(self) -> dict[str, Any]:
        """The strategy as plain values (its name and options), for logs and records."""
        return {"name": self.name, **(asdict(self) if hasattr(self, "__dataclass_fields__") else {})}


STRATEGIES: dict[str, type[Strategy]] = {}


def register_strategy(name: str, *, aliases: tuple[str, ...] = ()) -> Callable[[type[Strategy]], type[Strategy]]:
    """Register a :class:`Strategy` subclass under ``name`` (and ``aliases``); use as a decorator."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a strategy name must be a non-empty string, got {name!r}")

    def decorator(cls: type[Strategy]) -> type[Strategy]:
        if not (isinstance(cls, type) and issubclass(cls, Strategy)):
            raise TypeError(f"register_strategy takes a Strategy subclass, got {cls!r}")
        cls.name = name
        for key in (name, *aliases):
            STRATEGIES[key] = cls
        return cls

    return decorator


def strategy_from(spec: "str | Strategy") -> Strategy:
    """A strategy from its registered name (default options) or an instance (returned as is)."""
    if isinstance(spec, Strategy):
        return spec
    if isinstance(spec, str) and spec in STRATEGIES:
        return STRATEGIES[spec]()
    raise ValueError(f"strategy must be one of {tuple(STRATEGIES)} or a Strategy instance, got {spec!r}")


DEFAULT_RATIO = RatioSchedule.constant(0.5)
"""The ratio of ``ratio=None``: the same share at every selection point (with a budget, its shape)."""


def _ratio_schedule(ratio: float | RatioSchedule | ScaledRatio | None) -> RatioSchedule | ScaledRatio:
    if ratio is None:
        return DEFAULT_RATIO
    if isinstance(ratio, (RatioSchedule, ScaledRatio)):
        return ratio
    return RatioSchedule.constant(check_fraction("ratio", ratio))


def _interval_schedule(interval: int | IntervalSchedule | None, epochs: int | None) -> IntervalSchedule:
    """``interval=None``: a subset for the whole of each cycle (no full-data remainder)."""
    if interval is None:
        return IntervalSchedule.fixed(epochs or 1)
    if isinstance(interval, IntervalSchedule):
        return interval
    return IntervalSchedule.fixed(check_count("interval", interval, 1))


def _check_real(name: str, value: Any, low: float, high: float, *, low_open: bool, high_open: bool) -> float:
    inside = isinstance(value, numbers.Real) and not isinstance(value, bool) and (
        (low < value if low_open else low <= value) and (value < high if high_open else value <= high))
    if not inside:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    return float(value)


def _top_m(keys: torch.Tensor, m: int, generator: torch.Generator) -> torch.Tensor:
    """Positions of the m largest keys (float64 (N,)); ties broken by a permutation from ``generator``."""
    order = torch.randperm(keys.numel(), generator=generator)
    ranked = torch.sort(keys[order], descending=True, stable=True).indices
    return order[ranked[:m]]


def _gumbel(n: int, generator: torch.Generator) -> torch.Tensor:
    uniform = torch.rand(n, generator=generator, dtype=torch.float64).clamp_min(torch.finfo(torch.float64).tiny)
    return -torch.log(-torch.log(uniform))


@register_strategy("hard", aliases=("greedy",))
@dataclass(frozen=True)
class Hard(Strategy):
    """The m largest scores, the paper's Algorithm 1; ties broken by a permutation from the seed.

    ``random_share``: the fraction of the m drawn uniformly from the examples the top-k left out
    instead (0: pure top-k; score-based pruning loses to random at high compression unless it is
    randomized, Ayed & Hayou 2023)."""

    random_share: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "random_share", _check_real("random_share", self.random_share, 0.0, 1.0,
                                                             low_open=False, high_open=False))

    def select(self, scores: ScoreView, m: int, generator: torch.Generator) -> tuple[torch.Tensor, None]:
        uniform = round(self.random_share * m)
        ranked = _top_m(scores.values.masked_fill(scores.unknown, math.inf), scores.num_examples, generator)
        top, rest = ranked[: m - uniform], ranked[m - uniform:]
        return torch.cat([top, rest[torch.randperm(rest.numel(), generator=generator)[:uniform]]]), None


@register_strategy("soft")
@dataclass(frozen=True)
class Soft(Strategy):
    """Gumbel-top-k: m draws without replacement with probabilities proportional to
    ``p_i ** (1 / temperature)``, p = softmax(scores) or sigmoid(scores) (``normalize``).
    Temperature -> 0 gives ``"hard"``, a large temperature a uniform subset."""

    temperature: float = 1.0
    normalize: Literal["softmax", "sigmoid"] = "softmax"

    def __post_init__(self) -> None:
        object.__setattr__(self, "temperature", _check_real("temperature", self.temperature, 0.0, math.inf,
                                                            low_open=True, high_open=True))
        if self.normalize not in ("softmax", "sigmoid"):
            raise ValueError(f"normalize must be 'softmax' or 'sigmoid', got {self.normalize!r}")

    def select(self, scores: ScoreView, m: int, generator: torch.Generator) -> tuple[torch.Tensor, None]:
        known = ~scores.unknown
        log_probs = torch.zeros_like(scores.values)
        values = scores.values[known]
        log_probs[known] = torch.log_softmax(values, dim=0) if self.normalize == "softmax" else F.logsigmoid(values)
        keys = (log_probs / self.temperature + _gumbel(scores.num_examples, generator)).masked_fill(scores.unknown, math.inf)
        return _top_m(keys, m, generator), None


@register_strategy("random")
@dataclass(frozen=True)
class Random(Strategy):
    """A uniform subset of m examples; reads no scores."""

    reads_scores: ClassVar[bool] = False

    def select(self, scores: ScoreView, m: int, generator: torch.Generator) -> tuple[torch.Tensor, None]:
        return torch.randperm(scores.num_examples, generator=generator)[:m], None


@register_strategy("importance")
@dataclass(frozen=True)
class Importance(Strategy):
    """m draws with replacement with q_i = (1 - u) s_i / sum(s) + u / N (u = ``uniform_mix``,
    scores clamped at 0; unknown examples get the largest known score), each weighted 1 / (N q_i):
    the weighted mean loss over the draws is an unbiased estimate of the full-data mean loss. An
    example drawn twice appears twice (``Teacher.observe`` averages the scores of repeats)."""

    uniform_mix: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "uniform_mix", check_fraction("uniform_mix", self.uniform_mix))

    def select(self, scores: ScoreView, m: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        n = scores.num_examples
        mass = scores.values.clamp_min(0.0)
        known = ~scores.unknown
        mass = mass.masked_fill(scores.unknown, mass[known].max().item() if known.any() else 1.0)
        total = mass.sum()
        proportional = mass / total if total > 0 else torch.full_like(mass, 1.0 / n)
        probs = (1.0 - self.uniform_mix) * proportional + self.uniform_mix / n
        cdf = torch.cumsum(probs, dim=0)
        targets = torch.rand(m, generator=generator, dtype=torch.float64) * cdf[-1]
        draws = torch.searchsorted(cdf, targets, right=True).clamp_max(n - 1)
        return draws, 1.0 / (n * probs[draws])


@register_strategy("infobatch")
@dataclass(frozen=True)
class InfoBatch(Strategy):
    """InfoBatch (Qin et al., ICLR 2024): at every epoch, of the scored examples below the mean
    score a random ``1 - prune_ratio`` fraction is kept with loss weight ``1 / (1 - prune_ratio)``,
    the others are pruned; every other example is kept with weight 1. Pruning stops at epoch
    floor(``delta`` * epochs); the teacher's ratio, interval and cycles do not apply."""

    prune_ratio: float = 0.5
    delta: float = 0.875
    sizes_own_subsets: ClassVar[bool] = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "prune_ratio", _check_real("prune_ratio", self.prune_ratio, 0.0, 1.0,
                                                            low_open=False, high_open=True))
        object.__setattr__(self, "delta", check_fraction("delta", self.delta))

    def select(self, scores: ScoreView, m: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        known = ~scores.unknown
        below_mean = known & (scores.values < scores.values[known].mean()) if known.any() else torch.zeros_like(known)
        candidates = below_mean.nonzero().flatten()
        keep = fraction_count(1.0 - self.prune_ratio, candidates.numel())
        kept = candidates[torch.randperm(candidates.numel(), generator=generator)[:keep]]
        always = (~below_mean).nonzero().flatten()
        weights = torch.ones(always.numel() + kept.numel(), dtype=torch.float64)
        weights[always.numel():] = 1.0 / (1.0 - self.prune_ratio)
        return torch.cat([always, kept]), weights

    def plan(self, request: PlanRequest) -> TeachingPlan:
        """Every epoch after warm-up a selection point, until floor(delta * epochs) (or forever)."""
        given = {"ratio": request.ratio, "interval": request.interval, "cycles": request.cycles}
        conflicting = {name: value for name, value in given.items() if value is not None}
        if conflicting:
            raise ValueError(
                f"{conflicting} do not apply to strategy='infobatch': it prunes at every epoch until "
                "floor(delta * epochs); set InfoBatch(prune_ratio=..., delta=...) instead"
            )
        warmup = check_count("warmup_epochs", request.warmup_epochs, 0)
        anneal = check_count("anneal_epochs", request.anneal_epochs, 0)
        every_epoch = IntervalSchedule.fixed(1)
        if request.epochs is None:
            return TeachingPlan(epochs=None, warmup_epochs=warmup, anneal_epochs=anneal, ratio=None, interval=every_epoch)
        epochs = check_count("epochs", request.epochs, 1)
        pruning_ends = math.floor(self.delta * epochs + 1e-9)
        anneal = max(anneal, min(epochs - warmup, epochs - pruning_ends))
        span = epochs - warmup - anneal
        return TeachingPlan(epochs=epochs, warmup_epochs=warmup, anneal_epochs=anneal,
                            cycles=span or None, ratio=None, interval=every_epoch)
