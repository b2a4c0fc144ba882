"""Per-example scores of a batch (layer 4): from a model's outputs, or from the gradient-norm probe.

Every score is for the example's own loss l_i, the mean of its per-token (or per-element) losses
over its valid positions, whatever reduction training applies to the batch:

- ``"loss"``: l_i.
- ``"fgrad"``: ||dl_i / df(S_i)||, the norm of the loss gradient w.r.t. the example's outputs, the
  paper's selection rule. Softmax cross-entropy: sqrt(sum_t ||p_t - e_{y_t}||^2) / n_i over the
  n_i valid tokens; MSE: 2 ||f - y|| / n_i over the n_i elements; a user loss: one
  ``torch.autograd.grad`` w.r.t. the outputs (example i's loss must depend on output i only).
- ``"gradnorm"``: ||dl_i / dtheta||, the per-example parameter-gradient norm over the parameters the
  probe covers (the square root of the probe's g_i^T K_theta g_i); a by-product of the training
  backward, or a backward w.r.t. activations only in scoring passes.

A :class:`Scorer` owns the score kind, the objective and (for ``"gradnorm"``) the probe: every
trainer asks it for a training step's scores and for the scores of a refresh pass.

This module also holds the batch conventions the trainers share: a batch is an ``(input, target)``
pair, or a mapping whose ``label_key`` entry is the target and whose other entries are the model's
keyword arguments; a model's prediction is its output tensor, the ``logits`` of a Hugging Face
``ModelOutput`` or mapping, or the first element of a tuple.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils.collate import default_collate

from attent_kernels import accum_dtype, cross_entropy_scores, mse_scores

__all__ = [
    "SCORE_KINDS",
    "LOSS_NAMES",
    "AMP_MODES",
    "ScoreKind",
    "LossSpec",
    "Objective",
    "IndexedDataset",
    "autocast",
    "indexed_loader",
    "move_to",
    "prediction_of",
    "split_batch",
    "forward_batch",
    "gradnorm_scores",
    "eval_mode",
    "Scorer",
    "score_batch",
    "score_pass",
]

ScoreKind = Literal["loss", "fgrad", "gradnorm"]
SCORE_KINDS: tuple[str, ...] = ("loss", "fgrad", "gradnorm")
LOSS_NAMES: tuple[str, ...] = ("cross_entropy", "lm", "mse")
AMP_MODES: tuple[str, ...] = ("bf16", "fp16")
PerExampleLoss = Callable[[torch.Tensor, Any], torch.Tensor]
LossSpec = Union[str, PerExampleLoss]


def _shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def _check_score_kind(kind: str) -> None:
    if kind not in SCORE_KINDS:
        raise ValueError(f"score kind must be one of {SCORE_KINDS}, got {kind!r}")


@dataclass(frozen=True)
class Objective:
    """A training loss in per-example form.

    name: ``"cross_entropy"`` (logits (B, C) with class ids (B,), or (B, T, V) with (B, T) token
    ids: the example's loss is the mean over its tokens whose target is not ``ignore_index``),
    ``"lm"`` (causal LM: logits (B, T, V) and labels (B, T) aligned with the inputs; position t
    predicts label t + 1, the Hugging Face convention), ``"mse"`` (prediction and target of one
    shape (B, ...); the example's loss is the mean over its elements) or ``"callable"`` (``fn``).
    """

    name: str
    fn: PerExampleLoss | None = None
    ignore_index: int = -100

    @classmethod
    def resolve(cls, loss: "LossSpec | Objective", *, ignore_index: int = -100) -> "Objective":
        """An Objective from a loss name, a callable ``(prediction, targets) -> Tensor[B]`` or an
        Objective (returned as is)."""
        if isinstance(loss, Objective):
            return loss
        if callable(loss):
            return cls("callable", loss, ignore_index)
        if loss not in LOSS_NAMES:
            raise ValueError(f"loss must be one of {LOSS_NAMES} or a callable (prediction, targets) -> Tensor[B], got {loss!r}")
        return cls(loss, None, ignore_index)

    @property
    def is_classification(self) -> bool:
        """True for the cross-entropy losses, whose predictions have an accuracy."""
        return self.name in ("cross_entropy", "lm")

    def aligned(self, pred: torch.Tensor, targets: Any) -> tuple[torch.Tensor, Any]:
        """(prediction, targets) with the causal shift applied for ``"lm"``, after checking shapes."""
        if self.name in ("cross_entropy", "lm"):
            if not isinstance(targets, torch.Tensor) or targets.is_floating_point():
                raise ValueError(f"loss={self.name!r} needs integer class-id targets, got {type(targets).__name__}"
                                 + (f" of dtype {targets.dtype}" if isinstance(targets, torch.Tensor) else ""))
            if self.name == "lm":
                if pred.dim() != 3 or targets.shape != pred.shape[:2]:
                    raise ValueError(f"loss='lm' needs logits (B, T, V) and labels (B, T); got logits {_shape(pred)} and labels {_shape(targets)}")
                return pred[:, :-1], targets[:, 1:]
            if pred.dim() not in (2, 3) or targets.shape != pred.shape[:-1]:
                raise ValueError(
                    f"loss='cross_entropy' needs logits (B, C) with targets (B,) or logits (B, T, V) with targets (B, T); "
                    f"got logits {_shape(pred)} and targets {_shape(targets)}"
                )
        elif self.name == "mse":
            if not isinstance(targets, torch.Tensor) or targets.shape != pred.shape:
                got = _shape(targets) if isinstance(targets, torch.Tensor) else type(targets).__name__
                raise ValueError(f"loss='mse' needs targets of the prediction's shape {_shape(pred)}, got {got}")
        return pred, targets

    def losses(self, pred: torch.Tensor, targets: Any) -> torch.Tensor:
        """Differentiable per-example losses, (B,) float32 (float64 for float64 predictions).

        Args:
            pred: the model's prediction (B, ...), see the class docstring for each loss.
            targets: the batch's targets.
        """
        pred, targets = self.aligned(pred, targets)
        if self.name == "callable":
            losses = self.fn(pred, targets)
            if not isinstance(losses, torch.Tensor) or losses.shape != pred.shape[:1]:
                got = _shape(losses) if isinstance(losses, torch.Tensor) else type(losses).__name__
                raise ValueError(f"loss callable must return per-example losses of shape ({pred.shape[0]},), got {got}")
            return _accumulated(losses)
        if self.name == "mse":
            sq = (pred - targets).square().reshape(pred.shape[0], -1)
            return _accumulated(sq).mean(dim=1)
        tokens = F.cross_entropy(pred.flatten(0, -2), targets.flatten(), ignore_index=self.ignore_index, reduction="none")
        tokens = _accumulated(tokens).reshape(pred.shape[0], -1)
        count = (targets != self.ignore_index).reshape(pred.shape[0], -1).sum(dim=1)
        return tokens.sum(dim=1) / count.clamp(min=1).to(tokens.dtype)

    def output_scores(self, pred: torch.Tensor, targets: Any, kind: str) -> torch.Tensor:
        """Per-example ``"loss"`` or ``"fgrad"`` scores from the prediction, detached: (B,) float32,
        float64 for a float64 prediction.

        Cross-entropy goes through ``attent_kernels.cross_entropy_scores`` (loss and fgrad in one
        pass over the vocabulary), MSE through ``attent_kernels.mse_scores``, a user loss through
        one ``torch.autograd.grad`` of its sum w.r.t. a detached copy of the prediction.
        """
        if kind not in ("loss", "fgrad"):
            raise ValueError(f"output_scores computes 'loss' or 'fgrad' scores, got kind={kind!r}; 'gradnorm' needs the probe")
        pred, targets = self.aligned(pred.detach(), targets)
        if self.name == "callable":
            leaf = pred.requires_grad_(True)
            with torch.enable_grad():
                losses = self.losses(leaf, targets)
                if kind == "loss":
                    return losses.detach()
                (grad,) = torch.autograd.grad(losses.sum(), leaf)
            return _accumulated(grad).reshape(grad.shape[0], -1).norm(dim=1)
        if self.name == "mse":
            scores = mse_scores(pred, targets)
            count = pred[0].numel()
            return scores.loss if kind == "loss" else scores.fgrad_sq.sqrt() / count
        scores = cross_entropy_scores(pred, targets, ignore_index=self.ignore_index)
        if kind == "loss":
            return scores.loss
        return scores.fgrad_sq.sqrt() / scores.count.clamp(min=1).to(scores.fgrad_sq.dtype)

    def correct(self, pred: torch.Tensor, targets: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example (correct predictions, counted predictions), each (B,) int64, for the
        cross-entropy losses: argmax == target over the valid positions."""
        pred, targets = self.aligned(pred.detach(), targets)
        valid = (targets != self.ignore_index).reshape(pred.shape[0], -1)
        hits = (pred.argmax(dim=-1) == targets).reshape(pred.shape[0], -1) & valid
        return hits.sum(dim=1), valid.sum(dim=1)

    def token_counts(self, pred: torch.Tensor, targets: Any) -> torch.Tensor:
        """Per-example number of positions that carry loss, (B,) int64 (1 per example for a
        callable loss, the element count for MSE)."""
        pred, targets = self.aligned(pred, targets)
        batch = pred.shape[0]
        if self.name in ("cross_entropy", "lm"):
            return (targets != self.ignore_index).reshape(batch, -1).sum(dim=1)
        per_example = pred[0].numel() if self.name == "mse" else 1
        return torch.full((batch,), per_example, dtype=torch.int64, device=pred.device)


def _accumulated(t: torch.Tensor) -> torch.Tensor:
    """t in the accumulation dtype of ``attent_kernels.accum_dtype`` (reduced precision never accumulates)."""
    return t.to(accum_dtype(t))


def gradnorm_scores(norms_sq: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """Per-example ||dl_i/dtheta|| from the probe's squared norms of the scaled losses c_i * l_i.

    Args:
        norms_sq: (B,) squared norms the probe returned for the losses it was given.
        coefficients: (B,) the non-zero factors c_i those losses carried (loss weight, loss scale,
            1/accumulated batch size).

    Returns:
        (B,) float32 ||dl_i/dtheta|| = sqrt(norms_sq_i) / |c_i|.
    """
    return norms_sq.float().clamp(min=0).sqrt() / coefficients.float().abs()


# ---------------------------------------------------------------- batch conventions


class IndexedDataset(Dataset):
    """A map-style dataset whose items are ``(index, item)``: the index travels with the example
    through shuffling and collation, so per-example scores reach the teacher under the right index."""

    def __init__(self, dataset: Dataset):
        if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
            raise ValueError(f"dataset must be a map-style dataset (with __len__ and __getitem__), got {type(dataset).__name__}")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, Any]:
        return int(index), self.dataset[index]


def _indexed_collate(collate_fn: Callable[[list], Any]) -> Callable[[list], tuple[torch.Tensor, Any]]:
    def collate(pairs: list[tuple[int, Any]]) -> tuple[torch.Tensor, Any]:
        return torch.tensor([i for i, _ in pairs], dtype=torch.long), collate_fn([item for _, item in pairs])

    return collate


def indexed_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    sampler: Iterable[int] | None = None,
    collate_fn: Callable[[list], Any] | None = None,
    seed: int = 0,
    num_workers: int = 0,
) -> DataLoader:
    """A DataLoader over ``dataset`` yielding ``(indices (b,) int64, batch)`` in ``sampler``'s order
    (every index in order when None). Its generator is seeded, so creating it does not draw from
    the global RNG."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    order = range(len(dataset)) if sampler is None else sampler
    return DataLoader(
        IndexedDataset(dataset),
        batch_size=batch_size,
        sampler=order,
        collate_fn=_indexed_collate(collate_fn or default_collate),
        generator=torch.Generator().manual_seed(seed),
        num_workers=num_workers,
    )


def move_to(batch: Any, device: torch.device) -> Any:
    """The batch with every tensor inside (nested tuples, lists, mappings) moved to ``device``;
    mappings come back as plain dicts."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(move_to(v, device) for v in batch)
    return batch


def split_batch(batch: Any, label_key: str = "labels") -> tuple[Any, Any]:
    """(model input, targets) of a batch: an ``(input, target)`` pair, or a mapping whose
    ``label_key`` entry is the target (the input is then the mapping without it)."""
    if isinstance(batch, Mapping):
        if label_key not in batch:
            raise ValueError(f"a mapping batch needs its targets under label_key={label_key!r}; its keys are {sorted(batch)}")
        return {k: v for k, v in batch.items() if k != label_key}, batch[label_key]
    if isinstance(batch, Sequence) and not isinstance(batch, (str, bytes)) and len(batch) == 2:
        return batch[0], batch[1]
    raise ValueError(f"a batch must be an (input, target) pair or a mapping with a {label_key!r} entry, got {type(batch).__name__}")


def prediction_of(outputs: Any) -> torch.Tensor:
    """The prediction tensor of a model's outputs: the tensor itself, ``outputs.logits`` /
    ``outputs["logits"]`` (Hugging Face), or the first element of a tuple or list."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, Mapping) and "logits" in outputs:
        return outputs["logits"]
    logits = getattr(outputs, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], torch.Tensor):
        return outputs[0]
    raise ValueError(f"cannot find the prediction in model outputs of type {type(outputs).__name__}: "
                     "return a tensor, a tuple whose first element is one, or an object with .logits")


def forward_batch(model: nn.Module, inputs: Any) -> torch.Tensor:
    """The model's prediction for one batch's inputs: ``model(**inputs)`` for a mapping, else ``model(inputs)``."""
    outputs = model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
    return prediction_of(outputs)


def autocast(device: torch.device, amp: str | None) -> contextlib.AbstractContextManager:
    """The autocast context of an ``amp`` mode: None (full precision), ``"bf16"`` or ``"fp16"``."""
    if amp is None:
        return contextlib.nullcontext()
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be None or one of {AMP_MODES}, got {amp!r}")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Run the block with ``model`` in eval mode, restoring its mode after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


Batches = Iterable[tuple[torch.Tensor, Any, Any]]
"""(example indices (b,) int64, model inputs, targets) per batch, already on the model's device."""


class Scorer:
    """Turns a model's outputs into per-example scores of one kind (see the module docstring).

    Args:
        kind: ``"loss"``, ``"fgrad"`` or ``"gradnorm"``.
        loss: the training loss: a name, a callable ``(prediction, targets) -> Tensor[B]`` or an
            :class:`Objective`.
        probe_params: for ``"gradnorm"``: the parameters (or names) the probe covers (default:
            every trainable parameter).
        ignore_index: target value the cross-entropy losses skip.

    ``attach(model)`` attaches the gradient-norm probe (``"gradnorm"`` only) and ``detach()``
    removes it; ``with scorer.attached(model):`` does both.
    """

    def __init__(self, kind: ScoreKind = "fgrad", loss: "LossSpec | Objective" = "cross_entropy", *,
                 probe_params: Any = None, ignore_index: int = -100):
        _check_score_kind(kind)
        self.kind = kind
        self.objective = Objective.resolve(loss, ignore_index=ignore_index)
        self.probe_params = probe_params
        self.probe: Any = None

    @property
    def needs_probe(self) -> bool:
        """True for ``"gradnorm"``: training steps must run their backward through the probe."""
        return self.kind == "gradnorm"

    def attach(self, model: nn.Module) -> None:
        """Attach the probe to ``model`` (``"gradnorm"``; nothing for the other kinds)."""
        if self.needs_probe and self.probe is None:
            from .probe import GradNormProbe

            self.probe = GradNormProbe(model, self.probe_params)

    def detach(self) -> None:
        """Remove the probe, if one is attached."""
        if self.probe is not None:
            self.probe.remove()
            self.probe = None

    @contextlib.contextmanager
    def attached(self, model: nn.Module):
        """The block runs with the probe attached to ``model`` (``"gradnorm"``), removed after."""
        owned = self.probe is None
        self.attach(model)
        try:
            yield self
        finally:
            if owned:
                self.detach()

    def backward(self, weighted: torch.Tensor) -> torch.Tensor | None:
        """The training backward of ``weighted.sum()`` ((B,) losses times their coefficients):
        through the attached probe (``"gradnorm"``; returns the (B,) squared norms of the weighted
        losses), a plain ``backward()`` otherwise (returns None)."""
        if self.probe is not None:
            return self.probe.backward(weighted, reduction="sum")
        weighted.sum().backward()
        return None

    def step_scores(self, pred: torch.Tensor, targets: Any, losses: torch.Tensor, *,
                    norms_sq: torch.Tensor | None = None, coefficients: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) detached scores of a training step: the losses, fgrad from the prediction, or
        gradnorm from the probe's squared norms ``norms_sq`` of the losses scaled by ``coefficients``
        (see :func:`gradnorm_scores`)."""
        if self.kind == "loss":
            return losses.detach()
        if self.kind == "fgrad":
            return self.objective.output_scores(pred, targets, "fgrad")
        if norms_sq is None or coefficients is None:
            raise ValueError("gradnorm step scores need norms_sq (from Scorer.backward) and the losses' coefficients")
        return gradnorm_scores(norms_sq, coefficients)

    def score_batch(self, model: nn.Module, inputs: Any, targets: Any, *,
                    autocast_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> torch.Tensor:
        """Scores of one batch with the model in its current mode, no parameter gradient touched.

        ``"loss"`` and ``"fgrad"``: a forward under ``torch.no_grad``; ``"gradnorm"``: a forward and
        ``probe.score`` (the probe must be attached).

        Returns:
            (B,) float32 scores, detached, on the model's device.
        """
        if self.needs_probe:
            if self.probe is None:
                raise ValueError("score kind 'gradnorm' needs the probe: attach it with Scorer.attach(model)")
            with autocast_context():
                pred = forward_batch(model, inputs)
            return self.probe.score(self.objective.losses(pred, targets)).detach().float().clamp(min=0).sqrt()
        with torch.no_grad(), autocast_context():
            pred = forward_batch(model, inputs)
        return self.objective.output_scores(pred, targets, self.kind).float()

    def score_batches(self, model: nn.Module, batches: Batches, *,
                      autocast_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """A scoring pass: every batch scored with the model in eval mode (restored after).

        Returns:
            (indices (n,) int64, scores (n,) float32), both on the CPU, in the batches' order.
        """
        indices, scores = [], []
        with self.attached(model), eval_mode(model):
            for batch_indices, inputs, targets in batches:
                scores.append(self.score_batch(model, inputs, targets, autocast_context=autocast_context).cpu())
                indices.append(torch.as_tensor(batch_indices, dtype=torch.long).cpu())
        if not indices:
            return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.float32)
        return torch.cat(indices), torch.cat(scores)


def loader_batches(loader: Iterable[tuple[torch.Tensor, Any]], device: torch.device, label_key: str = "labels") -> Batches:
    """:data:`Batches` from an :func:`indexed_loader`: each batch moved to ``device`` and split
    into inputs and targets."""
    for indices, batch in loader:
        inputs, targets = split_batch(move_to(batch, device), label_key)
        yield indices, inputs, targets


def score_batch(
    model: nn.Module,
    inputs: Any,
    targets: Any,
    kind: ScoreKind,
    objective: "LossSpec | Objective",
    *,
    probe: Any = None,
    autocast_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> torch.Tensor:
    """Scores of one batch (see :meth:`Scorer.score_batch`); ``probe``: a ``GradNormProbe``
    attached to ``model``, needed for ``"gradnorm"``."""
    scorer = Scorer(kind, objective)
    scorer.probe = probe
    return scorer.score_batch(model, inputs, targets, autocast_context=autocast_context)


def score_pass(
    model: nn.Module,
    dataset: Dataset,
    kind: ScoreKind,
    *,
    loss: LossSpec | Objective,
    indices: torch.Tensor | Sequence[int] | None = None,
    batch_size: int = 256,
    collate_fn: Callable[[list], Any] | None = None,
    device: torch.device | str | None = None,
    amp: str | None = None,
    label_key: str = "labels",
    probe: Any = None,
) -> torch.Tensor:
    """Score examples of ``dataset`` with the model in eval mode (a refresh pass).

    ``"loss"`` and ``"fgrad"`` need a forward only, run under ``torch.no_grad``; ``"gradnorm"`` runs
    ``probe.score`` (a backward w.r.t. activations only: no weight-gradient work, ``.grad``
    untouched); ``probe`` is a ``GradNormProbe`` attached to ``model`` (one is attached for the pass
    and removed after it when None).

    Args:
        model: the model; its train/eval mode is restored afterwards.
        dataset: map-style dataset of ``(input, target)`` pairs or mappings (see the module docstring).
        kind: ``"loss"``, ``"fgrad"`` or ``"gradnorm"``.
        loss: the training loss (name, callable or Objective).
        indices: (n,) example indices to score (e.g. ``teacher.refresh_indices(epoch)``); all of
            ``dataset`` when None.
        batch_size, collate_fn: how the examples are batched.
        device: where the model runs (default: the device of its first parameter).
        amp: None, ``"bf16"`` or ``"fp16"`` autocast.
        label_key: the targets' key in mapping batches.

    Returns:
        (n,) float32 scores on the CPU, in the order of ``indices``.
    """
    scorer = Scorer(kind, loss)
    scorer.probe = probe
    device = torch.device(device) if device is not None else next(model.parameters()).device
    order = torch.arange(len(dataset)) if indices is None else torch.as_tensor(indices, dtype=torch.long).reshape(-1)
    if order.numel() and (int(order.min()) < 0 or int(order.max()) >= len(dataset)):
        raise ValueError(f"indices must lie in [0, {len(dataset)}) for a dataset of {len(dataset)} examples, "
                         f"got values in [{int(order.min())}, {int(order.max())}]")
    loader = indexed_loader(dataset, batch_size=batch_size, sampler=order.tolist(), collate_fn=collate_fn)
    _, scores = scorer.score_batches(model, loader_batches(loader, device, label_key),
                                     autocast_context=lambda: autocast(device, amp))
    return scores
