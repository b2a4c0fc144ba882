"""A reference model: the teacher's estimate of f* where the training labels are not it.

    reference = attent.Reference.fit(lambda: nn.Linear(64, 10), pool, loss="cross_entropy", holdout=clean)
    attent.fit(model, reference.train, ..., score="learnability", reference=reference,
               pool=attent.PoolSelection(keep=0.25))
    attent.fit(model, reference.filtered(0.5), ...)  # or a one-off static filter, then uniform training

A small model (its own factory: a logistic regression or small MLP for images, a bigram table for
bytes, a linear map for regression) is trained on data the learner does not train on, early-stopped
on its own validation loss, and scores every training example once: its reference loss. The
learner's loss minus the reference loss is the example's *learnability* (RHO-LOSS's reducible
loss, Mindermann et al. 2022): high where the learner is wrong and the reference right (learnable),
low where both are wrong (noise, off-target data).

Where the reference's data comes from (``holdout``):

- a Dataset: a clean holdout the task supplies; the reference trains on it and scores the whole
  pool, which stays the learner's training set;
- a fraction f in (0, 1) (default 0.15): ``floor(f * N)`` examples of the pool, drawn from the seed,
  are split off for the reference, which scores the rest; the learner trains on the rest
  (``Reference.train``);
- ``"cross-fit"``: no holdout; the pool is split into two halves drawn from the seed, a model is
  trained on each and scores the other half (every training example is scored by a model that
  never saw it); the learner trains on the whole pool.

Each model's data is split once more (``val_fraction``, from the seed) into its training and
validation part; it trains for at most ``max_epochs`` epochs and keeps the parameters of its best
validation loss, stopping after ``patience`` epochs without improvement.

Augmented data (``per_draw=True``): where the pool's ``__getitem__`` draws a new view of an
example every time (random crops, noise), the loss table scored at fit time is one draw's. With
``per_draw`` the learnability of a batch is the learner's loss minus the reference's loss on the
*same drawn inputs*: the scorer runs the model that scores that example (its fold's, when
cross-fitting) on the batch it scores (:meth:`Reference.draw_losses`), at a small model's forward per
example, counted in ``drawn_examples`` and ``draw_time``. The table still decides the evidence and
the static filter.

Its cost is counted (:class:`ReferenceCost`: training steps, examples and seconds, validation
forwards, scoring forwards and seconds), so that a run's budget and wall time can include it
(cold) or leave it out (amortised, when the reference is reused).

Evidence (:attr:`Reference.evidence`): selection by learnability pays only where the pool holds
examples the reference finds harder than its own held-out data (noise, off-target examples). The
rule: the pool's mean reference loss exceeds the mean reference loss on the reference's own
validation examples by more than ``EVIDENCE_STDERRS`` standard errors of their difference and by
more than ``EVIDENCE_MARGIN`` of the validation mean. Without that evidence pooled selection trains
uniformly and says so (:class:`attent.PoolSelection`).
"""
from __future__ import annotations

import copy
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, Union

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from .scores import (
    LossSpec,
    Objective,
    Scorer,
    eval_mode,
    example_indices,
    forward_batch,
    indexed_loader,
    loader_batches,
    move_to,
    split_batch,
    take_examples,
)

__all__ = ["Reference", "ReferenceCost", "Evidence", "EVIDENCE_MARGIN", "EVIDENCE_STDERRS", "DEFAULT_HOLDOUT"]

DEFAULT_HOLDOUT = 0.15
EVIDENCE_MARGIN = 0.05
EVIDENCE_STDERRS = 3.0
Holdout = Union[Dataset, float, Literal["cross-fit"]]


def _first_tensor(batch: Any) -> torch.Tensor | None:
    """The first tensor inside a batch (nested tuples, lists, mappings), or None."""
    if isinstance(batch, torch.Tensor):
        return batch
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (tuple, list)) else ()
    for value in values:
        found = _first_tensor(value)
        if found is not None:
            return found
    return None


@dataclass(frozen=True)
class ReferenceCost:
    """What building a reference cost.

    train_steps, train_examples: optimizer steps and examples processed by its training (all models,
    all epochs). val_examples: examples forwarded for early stopping. train_time: seconds of
    training and early-stopping validation. scored_examples, score_time: examples of the learner's
    training set scored (one forward each) and the seconds it took.
    """

    train_steps: int
    train_examples: int
    val_examples: int
    train_time: float
    scored_examples: int
    score_time: float

    @property
    def time(self) -> float:
        """Seconds in all: training, validation and scoring."""
        return self.train_time + self.score_time

    def as_dict(self) -> dict[str, float]:
        return {"train_steps": self.train_steps, "train_examples": self.train_examples, "val_examples": self.val_examples,
                "train_time": self.train_time, "scored_examples": self.scored_examples, "score_time": self.score_time,
                "time": self.time}


@dataclass(frozen=True)
class Evidence:
    """Whether the pool holds waste the reference can see (see the module docstring).

    pool_mean, holdout_mean: mean reference loss over the scored training examples and over the
    reference's own validation examples; stderr: the standard error of their difference; selects:
    True when the rule finds waste; reason: the rule's reading in words.
    """

    pool_mean: float
    holdout_mean: float
    stderr: float
    selects: bool
    reason: str


@dataclass
class Reference:
    """A trained reference and its losses (build it with :meth:`fit`).

    losses: (N,) float32 reference loss of each example of ``train`` (the learner's training set).
    train: the learner's training set: the pool, or the pool without the reference's split.
    train_indices: (N,) int64 positions of ``train``'s examples in the pool.
    holdout_indices: (h,) int64 positions in the pool the reference trained on (empty for a clean
        holdout Dataset; both halves' positions for cross-fitting).
    fold: (N,) int64 which model scored each training example (0, or 0/1 when cross-fitting).
    models: the trained models (in eval mode). val_losses: each model's validation loss per epoch.
    cost: :class:`ReferenceCost`. evidence: :class:`Evidence`.
    objective: the loss the models were trained and score with. per_draw: learnability takes the
    reference loss of each drawn batch (:meth:`draw_losses`) instead of ``losses``.
    drawn_examples, draw_time: examples scored by :meth:`draw_losses` so far and the seconds it took.
    """

    losses: torch.Tensor
    train: Dataset
    train_indices: torch.Tensor
    holdout_indices: torch.Tensor
    fold: torch.Tensor
    models: list[nn.Module]
    val_losses: list[list[float]]
    cost: ReferenceCost
    evidence: Evidence
    objective: Objective | None = None
    per_draw: bool = False
    drawn_examples: int = 0
    draw_time: float = 0.0

    def __len__(self) -> int:
        return self.losses.numel()

    @torch.no_grad()
    def draw_losses(self, inputs: Any, targets: Any, indices: Any) -> torch.Tensor:
        """The reference losses of one drawn batch: (B,) float32 on the batch's device.

        Args:
            inputs: the batch's model inputs as the learner gets them (a tensor, or a mapping of
                keyword arguments), every tensor with the batch's B examples along dimension 0.
            targets: its targets (B, ...).
            indices: (B,) integer positions of the batch's examples in :attr:`train` (they pick
                the model that scores each example: its fold's).

        Each fold's model runs once, in eval mode (each submodule's own mode restored after), on
        that fold's examples of the batch, one forward per example; the models move to the
        device of the batch's first tensor (inputs first, then targets).
        """
        if self.objective is None:
            raise ValueError("draw_losses needs the reference's objective; build the Reference with Reference.fit")
        start = time.perf_counter()
        first = _first_tensor(inputs)
        if first is None:
            first = _first_tensor(targets)
        if first is None or first.dim() == 0:
            raise ValueError("draw_losses needs a batch: inputs or targets holding a tensor with the examples along "
                             "dimension 0")
        count = first.shape[0]
        index = example_indices(indices, count, len(self), "positions in the reference's train set, {n} examples")
        folds = self.fold[index]
        losses = torch.zeros(count, dtype=torch.float32, device=first.device)
        for k in sorted(set(folds.tolist())):
            positions = torch.nonzero(folds == k).flatten()
            model = self.models[k].to(first.device)
            with eval_mode(model):
                values = self.objective.losses(forward_batch(model, take_examples(inputs, positions, count)),
                                               take_examples(targets, positions, count))
            losses[positions.to(first.device)] = values.float()
        self.drawn_examples += int(index.numel())
        self.draw_time += time.perf_counter() - start
        return losses

    def filtered(self, keep: float) -> Subset:
        """The static filter: the ``max(1, floor(keep * N))`` examples of :attr:`train` with the
        lowest reference loss (ties in index order), as a ``Subset`` of ``train`` whose ``indices``
        (positions in ``train``) ascend.

        Train on it uniformly, with full data's schedule shortened to your budget, where the pool
        holds waste the reference recognises (noisy labels, off-target or corrupted examples): it
        costs nothing per step, and on the waste testbeds recorded it reaches full-data quality
        sooner than pooled selection, which trains to better quality per example (README,
        Benchmarks). ``keep``: the share kept, in (0, 1].
        """
        if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 < keep <= 1:
            raise ValueError(f"keep must be a number in (0, 1], got {keep!r}")
        count = max(1, math.floor(keep * len(self) + 1e-9))
        kept = torch.sort(self.losses.argsort(stable=True)[:count]).values
        return Subset(self.train, kept.tolist())

    @classmethod
    def fit(
        cls,
        model_factory: Callable[[], nn.Module],
        pool: Dataset,
        *,
        loss: LossSpec | Objective,
        holdout: Holdout = DEFAULT_HOLDOUT,
        max_epochs: int = 50,
        patience: int = 5,
        batch_size: int = 64,
        lr: float = 1e-2,
        weight_decay: float = 0.0,
        val_fraction: float = 0.2,
        seed: int = 0,
        per_draw: bool = False,
        device: torch.device | str | None = None,
        collate_fn: Callable[[list], Any] | None = None,
        label_key: str = "labels",
        ignore_index: int = -100,
    ) -> "Reference":
        """Train the reference and score the learner's training set once.

        Args:
            model_factory: builds a fresh small model (called under ``torch.manual_seed(seed)`` per model).
            pool: the training pool, a map-style dataset of ``(input, target)`` pairs or mappings.
            loss: the training loss (a name, a per-example callable or an Objective), as for ``fit``.
            holdout: a clean Dataset, a fraction of the pool in (0, 1), or ``"cross-fit"`` (see
                the module docstring).
            max_epochs, patience: early stopping on the validation loss.
            batch_size, lr, weight_decay: AdamW training of the reference.
            val_fraction: the share of each model's data held out for early stopping, in (0, 1).
            seed: the splits, the initializations and the training order.
            per_draw: learnability takes each drawn batch's reference loss from the models
                (augmented data; see the module docstring) instead of the table ``losses``.
            device: where it trains and scores (default: CPU).

        Returns:
            The :class:`Reference`; ``losses[i]`` is the reference loss of ``train[i]``.
        """
        objective = Objective.resolve(loss, ignore_index=ignore_index)
        if not isinstance(per_draw, bool):
            raise ValueError(f"per_draw must be True or False, got {per_draw!r}")
        n = _pool_size(pool)
        _check_int("max_epochs", max_epochs, 1)
        _check_int("patience", patience, 1)
        _check_int("batch_size", batch_size, 1)
        _check_open_fraction("val_fraction", val_fraction)
        if not (isinstance(lr, (int, float)) and 0 < lr < math.inf):
            raise ValueError(f"lr must be a positive number, got {lr!r}")
        device = torch.device(device) if device is not None else torch.device("cpu")
        generator = torch.Generator().manual_seed(seed)
        train_options = dict(objective=objective, max_epochs=max_epochs, patience=patience, batch_size=batch_size, lr=lr,
                             weight_decay=weight_decay, val_fraction=val_fraction, device=device,
                             collate_fn=collate_fn, label_key=label_key)
        if isinstance(holdout, str):
            if holdout != "cross-fit":
                raise ValueError(f"holdout must be a Dataset, a fraction in (0, 1) or 'cross-fit', got {holdout!r}")
            if n < 4:
                raise ValueError(f"cross-fitting needs a pool of at least 4 examples (2 per half), got {n}")
            order = torch.randperm(n, generator=generator)
            halves = [torch.sort(order[: n // 2]).values, torch.sort(order[n // 2:]).values]
            train_indices = torch.arange(n)
            holdout_indices = train_indices
            fold = torch.zeros(n, dtype=torch.int64)
            fold[halves[0]] = 1  # the half-0 model scores half 1 and the other way round
            fits = [_train_one(model_factory, Subset(pool, halves[k].tolist()), seed=seed + k, **train_options)
                    for k in range(2)]
            scored = [halves[1], halves[0]]
        else:
            if isinstance(holdout, Dataset):
                _pool_size(holdout, "holdout")
                data, train_indices, holdout_indices = holdout, torch.arange(n), torch.zeros(0, dtype=torch.int64)
            else:
                if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0 < holdout < 1:
                    raise ValueError(f"holdout must be a Dataset, a fraction in (0, 1) or 'cross-fit', got {holdout!r}")
                count = math.floor(holdout * n + 1e-9)
                if count < 2 or count > n - 1:
                    raise ValueError(f"holdout={holdout} of a pool of {n} examples is {count}; the reference needs at "
                                     f"least 2 and the learner at least 1")
                order = torch.randperm(n, generator=generator)
                holdout_indices, train_indices = torch.sort(order[:count]).values, torch.sort(order[count:]).values
                data = Subset(pool, holdout_indices.tolist())
            fits = [_train_one(model_factory, data, seed=seed, **train_options)]
            fold = torch.zeros(train_indices.numel(), dtype=torch.int64)
            scored = [train_indices]
        start = time.perf_counter()
        losses = torch.empty(train_indices.numel(), dtype=torch.float32)
        position = {int(p): i for i, p in enumerate(train_indices.tolist())}
        scorer = Scorer("loss", objective)
        for trained, positions in zip(fits, scored):
            batches = loader_batches(indexed_loader(pool, batch_size=max(batch_size, 256), sampler=positions.tolist(),
                                                    collate_fn=collate_fn), device, label_key)
            indices, values = scorer.score_batches(trained.model, batches)
            losses[[position[int(p)] for p in indices.tolist()]] = values
        score_time = time.perf_counter() - start
        train = pool if train_indices.numel() == n else Subset(pool, train_indices.tolist())
        cost = ReferenceCost(
            train_steps=sum(f.steps for f in fits), train_examples=sum(f.examples for f in fits),
            val_examples=sum(f.val_examples for f in fits), train_time=sum(f.seconds for f in fits),
            scored_examples=int(train_indices.numel()), score_time=score_time,
        )
        val_losses = torch.cat([f.best_val_losses for f in fits])
        return cls(losses=losses, train=train, train_indices=train_indices, holdout_indices=holdout_indices, fold=fold,
                   models=[f.model for f in fits], val_losses=[f.history for f in fits], cost=cost,
                   evidence=evidence_of(losses, val_losses), objective=objective, per_draw=per_draw)


def evidence_of(pool_losses: torch.Tensor, holdout_losses: torch.Tensor) -> Evidence:
    """The evidence rule (module docstring) from the reference losses of the training examples
    (n,) and of the reference's own validation examples (m,), n, m >= 1."""
    pool_values, held_values = pool_losses.double().tolist(), holdout_losses.double().tolist()
    if not pool_values or not held_values:
        raise ValueError(f"evidence needs reference losses on both sides, got {len(pool_values)} training and "
                         f"{len(held_values)} validation values")
    pool_mean, held_mean = statistics.fmean(pool_values), statistics.fmean(held_values)
    variance = sum((statistics.variance(v) / len(v) if len(v) > 1 else 0.0) for v in (pool_values, held_values))
    stderr = math.sqrt(variance)
    gap = pool_mean - held_mean
    needed = max(EVIDENCE_STDERRS * stderr, EVIDENCE_MARGIN * abs(held_mean))
    selects = gap > needed
    reason = (f"the training examples' mean reference loss {pool_mean:.4g} is {gap:+.4g} from the reference's held-out "
              f"{held_mean:.4g} ({'more' if selects else 'not more'} than the {needed:.4g} the rule asks: "
              f"{EVIDENCE_STDERRS:g} standard errors of {stderr:.3g} and {EVIDENCE_MARGIN:.0%} of the held-out loss)")
    return Evidence(pool_mean, held_mean, stderr, selects, reason)


@dataclass
class _Trained:
    model: nn.Module
    history: list[float]
    best_val_losses: torch.Tensor
    steps: int
    examples: int
    val_examples: int
    seconds: float


def _train_one(model_factory: Callable[[], nn.Module], data: Dataset, *, seed: int, objective: Objective,
               max_epochs: int, patience: int, batch_size: int, lr: float, weight_decay: float, val_fraction: float,
               device: torch.device, collate_fn: Callable[[list], Any] | None, label_key: str) -> _Trained:
    """One reference model on ``data``: split off ``val_fraction`` for early stopping, train with
    AdamW, keep the parameters of the best validation loss."""
    start = time.perf_counter()
    n = len(data)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    n_val = max(1, math.floor(val_fraction * n + 1e-9))
    if n - n_val < 1:
        raise ValueError(f"a reference model's data of {n} examples leaves none to train on after val_fraction={val_fraction}")
    val_positions, fit_positions = order[:n_val].tolist(), order[n_val:].tolist()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_factory()
    if not isinstance(model, nn.Module) or not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"model_factory must build an nn.Module with trainable parameters, got {type(model).__name__}")
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scorer = Scorer("loss", objective)
    best, best_state, best_losses, history, since = math.inf, None, None, [], 0
    steps = examples = val_examples = 0
    for _ in range(max_epochs):
        model.train()
        shuffled = [fit_positions[i] for i in torch.randperm(len(fit_positions), generator=generator).tolist()]
        for _, batch in indexed_loader(data, batch_size=batch_size, sampler=shuffled, collate_fn=collate_fn):
            inputs, targets = split_batch(move_to(batch, device), label_key)
            losses = objective.losses(forward_batch(model, inputs), targets)
            optimizer.zero_grad(set_to_none=True)
            losses.mean().backward()
            optimizer.step()
            steps, examples = steps + 1, examples + losses.numel()
        _, val_losses = scorer.score_batches(model, loader_batches(
            indexed_loader(data, batch_size=max(batch_size, 256), sampler=val_positions, collate_fn=collate_fn), device, label_key))
        val_examples += len(val_positions)
        value = float(val_losses.double().mean())
        history.append(value)
        if value < best:
            best, best_state, best_losses, since = value, copy.deepcopy(model.state_dict()), val_losses, 0
        else:
            since += 1
            if since >= patience:
                break
    if best_state is None:
        raise ValueError(f"the reference's validation loss was never finite (history {history})")
    model.load_state_dict(best_state)
    model.eval()
    return _Trained(model, history, best_losses, steps, examples, val_examples, time.perf_counter() - start)


def _pool_size(data: Any, name: str = "pool") -> int:
    if not hasattr(data, "__len__") or not hasattr(data, "__getitem__"):
        raise ValueError(f"{name} must be a map-style dataset (with __len__ and __getitem__), got {type(data).__name__}")
    if len(data) < 2:
        raise ValueError(f"{name} has {len(data)} examples; a reference needs at least 2")
    return len(data)


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _check_open_fraction(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")
