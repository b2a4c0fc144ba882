"""Selection from a presampled pool: per optimizer step, score nB candidates, train on the best nb.

    reference = attent.Reference.fit(small_model, pool, loss="cross_entropy", holdout=clean_holdout)
    attent.fit(model, reference.train, loss="cross_entropy", optimizer=opt, epochs=E, budget=0.5,
               batch_size=32, score="learnability", reference=reference, pool=attent.PoolSelection(keep=0.25))

This is the second place selection can happen (RHO-LOSS, selective backprop, JEST), beside the
per-epoch selection of :class:`attent.Teaching`: fresh scores every step, paid for with a forward
per candidate. With a training batch of nb = ``batch_size`` examples and keep ratio r, each step
draws nB = ceil(nb / r) candidates, scores them with a no-grad forward in eval mode (the
:class:`attent.Scorer` of the run: ``"learnability"`` with a reference, or ``"loss"`` / ``"fgrad"``;
a scorer with a head takes the fused linear-cross-entropy scores), and trains on nb of them chosen
by a strategy: ``"hard"`` (the nb largest scores), ``"soft"`` (Gumbel-top-k on the softmax of the
scores) or ``"random"`` (a control that pays for the forwards and ignores them).

Candidates. The candidates are the pool visited in passes, each a seeded permutation
(``torch.randperm(N, generator=seeded(seed + pass))``, as full data's epochs), cut into chunks of
nB; a pass's last chunk may be shorter (c < nB candidates, also when the pool is smaller than nB),
and keeps ceil(c * nb / nB) of them. A run at budget b trains exactly ``floor(b * epochs * N)``
examples, the full-data budget: the passes continue until that many are trained, and the last
chunk is cut to the fewest candidates that keep what is left. :meth:`PoolSelection.pass_sizes` gives
the candidates of each pass, so the number of optimizer steps (one per chunk) is known in advance
and the learning-rate schedule ends at the last one.

Cost. Every candidate's forward is counted (``FitResult.examples_scored``) and timed as selection
(``FitResult.selection_time``, inside ``wall_time``): a forward is about a third of a training step,
so keeping r of the candidates breaks even only with 1 + (1 / r) / 3 times fewer steps.

When it selects (``when``): ``"evidence"`` (default) selects only when the reference finds waste
in the pool (:attr:`attent.Reference.evidence`); otherwise, or without a reference, the run trains
uniformly on full data's shortened schedule (no candidate forwards) and warns that it did, and each
epoch's selection record says why. ``"always"`` selects whatever the evidence.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
from torch import nn

from .schedules import budget_sizes, check_count, check_fraction
from .scores import Scorer, eval_mode, move_to, split_batch, take_examples
from .strategies import ScoreView, Strategy, strategy_from
from .teacher import SELECTION_WHEN, _derived_generator, selection_decision
from .teaching import EpochStart, Teaching

__all__ = ["PoolSelection", "PoolTeaching", "POOL_SCORE_KINDS", "take_examples"]

POOL_SCORE_KINDS = ("loss", "fgrad", "learnability")
POOL_STRATEGIES = ("hard", "soft", "random")


@dataclass(frozen=True)
class PoolSelection:
    """Per-step selection from nB = ceil(nb / keep) candidates (see the module docstring).

    keep: the share of the candidates trained on, in (0, 1] (0.5, 0.25, 0.1 are the usual ones).
    strategy: ``"hard"``, ``"soft"``, ``"random"`` or an instance of one of them
        (:class:`attent.Hard`, :class:`attent.Soft`, :class:`attent.Random`).
    when: ``"evidence"`` (select only when the reference finds waste) or ``"always"``.
    """

    keep: float = 0.25
    strategy: str | Strategy = "hard"
    when: Literal["evidence", "always"] = "evidence"

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep", check_fraction("keep", self.keep))
        strategy = strategy_from(self.strategy)
        if strategy.name not in POOL_STRATEGIES:
            raise ValueError(f"PoolSelection strategy must be one of {POOL_STRATEGIES} (a strategy that weights or "
                             f"sizes its subsets does not apply to a batch), got {strategy.name!r}")
        object.__setattr__(self, "strategy", strategy)
        if self.when not in SELECTION_WHEN:
            raise ValueError(f"when must be one of {SELECTION_WHEN}, got {self.when!r}")

    def candidates(self, batch_size: int) -> int:
        """nB: the candidates of a step that trains ``batch_size`` examples, ceil(nb / keep)."""
        nb = check_count("batch_size", batch_size, 1)
        return max(nb, math.ceil(nb / self.keep - 1e-9))

    def kept(self, count: int, batch_size: int) -> int:
        """Examples trained from a chunk of ``count`` candidates: nb from nB, ceil(count * nb / nB)
        from a shorter chunk."""
        total = self.candidates(batch_size)
        if not 1 <= count <= total:
            raise ValueError(f"a chunk holds 1 to nB = {total} candidates, got {count}")
        return batch_size if count == total else math.ceil(count * batch_size / total)

    def pass_sizes(self, epochs: int, num_examples: int, budget: float, batch_size: int) -> list[int]:
        """Candidates of each pass over the pool for a run that trains ``floor(budget * epochs *
        num_examples)`` examples (the full-data budget, at least 1) in batches of ``batch_size``."""
        target = sum(budget_sizes(epochs, num_examples, budget))
        total = self.candidates(batch_size)
        chunks = [total] * (num_examples // total) + ([num_examples % total] if num_examples % total else [])
        sizes: list[int] = []
        trained = 0
        while trained < target:
            size = 0
            for chunk in chunks:
                need = target - trained
                if self.kept(chunk, batch_size) >= need:
                    chunk = next(c for c in range(1, chunk + 1) if self.kept(c, batch_size) >= need)
                trained, size = trained + self.kept(chunk, batch_size), size + chunk
                if trained == target:
                    break
            sizes.append(size)
        return sizes

    def decide(self, scorer: Scorer, reference: Any) -> tuple[bool, str]:
        """(whether the run selects, why) under ``when`` for the run's scorer and reference."""
        return selection_decision(self.when, reference, scorer.kind)

    def describe(self) -> dict[str, Any]:
        """The options as plain values, for logs and records."""
        return {"keep": self.keep, "strategy": self.strategy.describe(), "when": self.when}


class PoolTeaching(Teaching):
    """The teaching protocol of a pooled run: each epoch is a pass over the pool's candidates
    (``begin_epoch``: the seeded permutation, cut to :meth:`PoolSelection.pass_sizes`), and
    :meth:`choose` picks the examples a step trains on from a chunk of candidates. When the
    selection does not select (``selects`` False, ``reason`` why), the epochs are full data's
    shortened schedule and :meth:`choose` is not called (``candidates_per_step`` equals the batch).

    Args:
        pool: the :class:`PoolSelection`. scorer: the run's scorer (kind in ``POOL_SCORE_KINDS``).
        num_examples, epochs, budget, batch_size: the run's training set, recipe, budget and nb.
        seed: the passes' permutations and the strategies' draws.
        reference: the run's :class:`attent.Reference` (or None), read for its evidence.
    """

    def __init__(self, pool: PoolSelection, scorer: Scorer, *, num_examples: int, epochs: int, budget: float,
                 batch_size: int, seed: int = 0, reference: Any = None):
        if not isinstance(pool, PoolSelection):
            raise TypeError(f"pool must be an attent.PoolSelection, got {type(pool).__name__}")
        if scorer.kind not in POOL_SCORE_KINDS:
            raise ValueError(f"pooled selection scores candidates with a forward: score must be one of {POOL_SCORE_KINDS}, "
                             f"got {scorer.kind!r}")
        self.pool, self.batch_size = pool, batch_size
        selects, reason = pool.decide(scorer, reference)
        if selects:
            self.candidates_per_step = pool.candidates(batch_size)
            sizes = pool.pass_sizes(epochs, num_examples, budget, batch_size)
        else:
            self.candidates_per_step = batch_size
            sizes = budget_sizes(epochs, num_examples, budget)
            warnings.warn(f"PoolSelection: this run trains uniformly (full data's shortened schedule, no candidate "
                          f"forwards): {reason}", RuntimeWarning, stacklevel=3)
        super().__init__(None, scorer, num_examples=num_examples, seed=seed, full_sizes=sizes)
        self.selects, self.reason = selects, reason

    def _kept_of_pass(self, size: int) -> int:
        if not self.selects:
            return size
        full, rest = divmod(size, self.candidates_per_step)
        return full * self.batch_size + (self.pool.kept(rest, self.batch_size) if rest else 0)

    def begin_epoch(self, epoch: int, *, step: int, shard: bool = True, **_: Any) -> EpochStart:
        """The pass's candidate order; its record's ``selected`` and ``ratio`` count the examples
        it trains, ``candidates`` those it scores, ``pool`` the selection and whether it selects."""
        start = super().begin_epoch(epoch, step=step, shard=shard)
        size = int(start.order.numel())
        kept = self._kept_of_pass(size)
        record = {**start.record, "selected": kept, "ratio": kept / self.num_examples,
                  "candidates": size if self.selects else 0,
                  "pool": {**self.pool.describe(), "selects": self.selects, "reason": self.reason}}
        return EpochStart(start.order, record)

    def choose(self, model: nn.Module, indices: torch.Tensor, batch: Any, *, step: int, device: torch.device,
               label_key: str = "labels",
               autocast_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
               ) -> tuple[torch.Tensor, Any]:
        """The examples a step trains on, from a chunk of candidates.

        Args:
            model: the learner (scored in eval mode, restored after, under ``torch.no_grad``).
            indices: (c,) int64 the candidates' example indices. batch: their collated batch.
            step: the optimizer step (seeds the strategy's draw with the run's seed).
            device: where the model runs; label_key: the targets' key in mapping batches.

        Returns:
            (kept indices (k,) int64 on the CPU, the kept examples' batch on ``device``), in
            candidate order; k = :meth:`PoolSelection.kept` (c).
        """
        count = int(indices.numel())
        kept = self.pool.kept(count, self.batch_size)
        batch = move_to(batch, device)
        inputs, targets = split_batch(batch, label_key)
        with eval_mode(model):
            scores = self.scorer.score_batch(model, inputs, targets, indices=indices,
                                             autocast_context=autocast_context).detach().double().cpu()
        view = ScoreView(scores, ~torch.isfinite(scores))
        positions, _ = self.pool.strategy.select(view, kept, _derived_generator(self.seed, step, "pool"))
        positions = torch.sort(positions).values
        return indices.cpu()[positions], take_examples(batch, positions, count)
