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
- ``"learnability"``: l_i - r_i, the learner's loss minus a reference model's loss on the same
  example (RHO-LOSS's reducible loss; for MSE the difference of the two mean squared errors). The
  reference losses r (one per training example, :class:`attent.Reference`) are given to the
  :class:`Scorer`, which looks them up by example index: from the training step's own losses
  (online, free) and from scoring passes; a per-draw reference (augmented data) is run on the
  batch being scored instead.

A :class:`Scorer` owns the score kind, the objective and (for ``"gradnorm"``) the probe: every
trainer asks it for a training step's scores and for the scores of a refresh pass. Given the
model's output head (an ``nn.Linear``), its ``"loss"`` and ``"fgrad"`` refresh passes for the
cross-entropy losses never form the logits: the head's input goes to
``attent_kernels.linear_cross_entropy_scores`` (see :meth:`Scorer.score_batch`).

This module also holds the batch conventions the trainers share: a batch is an ``(input, target)``
pair, or a mapping whose ``label_key`` entry is the target and whose other entries are the model's
keyword arguments; a model's prediction is its output tensor, the ``logits`` of a Hugging Face
``ModelOutput`` or mapping, or the first element of a tuple.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils.collate import default_collate

from attent_kernels import CEScores, accum_dtype, cross_entropy_scores, linear_cross_entropy_scores, mse_scores

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
    "is_linear_head",
    "split_batch",
    "forward_batch",
    "gradnorm_scores",
    "eval_mode",
    "Scorer",
    "score_batch",
    "score_pass",
]

ScoreKind = Literal["loss", "fgrad", "gradnorm", "learnability"]
SCORE_KINDS: tuple[str, ...] = ("loss", "fgrad", "gradnorm", "learnability")
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

    def output_scores(self, pred: torch.Tensor, targets: Any, kind: str, *, targets_checked: bool = False) -> torch.Tensor:
        """Per-example ``"loss"`` or ``"fgrad"`` scores from the prediction, detached: (B,) float32,
        float64 for a float64 prediction.

        Cross-entropy goes through ``attent_kernels.cross_entropy_scores`` (loss and fgrad in one
        pass over the vocabulary), MSE through ``attent_kernels.mse_scores``, a user loss through
        one ``torch.autograd.grad`` of its sum w.r.t. a detached copy of the prediction.
        ``targets_checked``: the targets already went through this objective's ``losses`` (a
        training step's ``F.cross_entropy`` refuses any out of range), so the score skips its own
        host-side range check, a device synchronization on CUDA.
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
        scores = cross_entropy_scores(pred, targets, ignore_index=self.ignore_index, check_targets=not targets_checked)
        return _cross_entropy_output_scores(scores, kind)

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


def _cross_entropy_output_scores(scores: CEScores, kind: str) -> torch.Tensor:
    """(B,) ``"loss"`` or ``"fgrad"`` scores from per-example cross-entropy scores: the mean token
    loss, or sqrt(fgrad_sq) / n_i over the n_i valid tokens (0 for an example with none)."""
    if kind == "loss":
        return scores.loss
    return scores.fgrad_sq.sqrt() / scores.count.clamp(min=1).to(scores.fgrad_sq.dtype)


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


def take_examples(batch: Any, positions: torch.Tensor, count: int) -> Any:
    """The batch's examples at ``positions`` (k,) int64: every tensor in it (nested tuples, lists,
    mappings) indexed along its first dimension, which must be the batch's ``count``; other
    values are kept as they are."""
    if isinstance(batch, torch.Tensor):
        if batch.dim() == 0 or batch.shape[0] != count:
            raise ValueError(f"taking examples indexes every tensor of a batch of {count} examples along its first "
                             f"dimension; got a tensor of shape {tuple(batch.shape)}")
        return batch[positions.to(batch.device)]
    if isinstance(batch, Mapping):
        return {key: take_examples(value, positions, count) for key, value in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(take_examples(value, positions, count) for value in batch)
    return batch


def example_indices(indices: Any, count: int, n: int, covers: str) -> torch.Tensor:
    """``indices`` as (count,) int64 on the CPU, checked: 1-D integers (not bool), one per example,
    each in [0, n); ``covers`` says what n counts (``{n}`` is filled in) in the range error."""
    given = torch.as_tensor(indices).detach()
    if given.is_floating_point() or given.is_complex() or given.dtype == torch.bool or given.shape != (count,):
        raise ValueError(f"indices must be ({count},) integer example indices, one per example of the batch; got dtype "
                         f"{given.dtype} and shape {tuple(given.shape)}")
    index = given.cpu().long()
    if count and (int(index.min()) < 0 or int(index.max()) >= n):
        raise ValueError(f"indices must lie in [0, {n}) ({covers.format(n=n)}), got values in "
                         f"[{int(index.min())}, {int(index.max())}]")
    return index


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
    """Run the block with ``model`` in eval mode, restoring after it every submodule's own mode
    (a submodule the user keeps in eval inside a training model, a frozen BatchNorm, stays so).

    Where no module overrides ``nn.Module.train``, the flags are set directly (no recursive
    ``train()`` calls: a pooled run switches modes twice per optimizer step); otherwise
    ``model.eval()`` and ``model.train(mode)`` run, so that the overrides see the switch, and then
    every flag is set back to its recorded value.
    """
    modules = list(model.modules())
    modes = [module.training for module in modules]
    overridden = any(type(module).train is not nn.Module.train for module in modules)
    if overridden:
        model.eval()
    else:
        for module in modules:
            module.training = False
    try:
        yield
    finally:
        if overridden:
            model.train(modes[0])
        for module, mode in zip(modules, modes):
            module.training = mode


# The objectives whose scores a Scorer can take from the output head's input, and the score kinds.
_HEAD_LOSSES: tuple[str, ...] = ("cross_entropy", "lm")
_OUTPUT_KINDS: tuple[str, ...] = ("loss", "fgrad", "learnability")


def _reference_losses(kind: str, reference: Any) -> torch.Tensor | None:
    """The (N,) float32 CPU reference losses of a ``"learnability"`` scorer (a copy), None otherwise."""
    if kind != "learnability":
        if reference is not None:
            raise ValueError(f"reference is for score kind 'learnability', got it with kind={kind!r}")
        return None
    if reference is None:
        raise ValueError("score kind 'learnability' needs reference= (an attent.Reference or the (N,) reference losses "
                         "of the training examples)")
    losses = getattr(reference, "losses", reference)
    if not isinstance(losses, torch.Tensor) or losses.dim() != 1 or not losses.numel() or not (
            losses.is_floating_point()):
        got = f"a tensor of shape {_shape(losses)} and dtype {losses.dtype}" if isinstance(losses, torch.Tensor) else type(losses).__name__
        raise ValueError(f"reference must be an attent.Reference or (N,) real reference losses, N >= 1; got {got}")
    if not bool(torch.isfinite(losses).all()):
        raise ValueError(f"reference losses must be finite; {int((~torch.isfinite(losses)).sum())} of {losses.numel()} are not")
    return losses.detach().to(device="cpu", dtype=torch.float32).clone()


def is_linear_head(module: Any) -> bool:
    """Whether ``module`` can be a :class:`Scorer`'s head: an ``nn.Linear`` that runs
    ``nn.Linear``'s own forward (no subclass override, no forward replaced on the instance), so
    its output is hidden @ weight.T + bias."""
    return isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward and "forward" not in vars(module)


def _check_head(head: Any, what: str) -> None:
    if not is_linear_head(head):
        detail = "a forward of its own" if isinstance(head, nn.Linear) else type(head).__name__
        raise ValueError(f"{what} must be an nn.Linear running nn.Linear's forward (the output head whose output is "
                         f"the model's prediction), got {detail}")


@dataclass
class _HeadCall:
    """One call of the recording head: its input, the weight and bias it read, the placeholder it
    returned, and the version counters of those tensors at the call."""

    hidden: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    output: torch.Tensor
    versions: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.versions = tuple(t._version for t in self.tensors())

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return tuple(t for t in (self.output, self.hidden, self.weight, self.bias) if t is not None)

    def modified(self) -> bool:
        """Whether any of the call's tensors was modified in place since the call."""
        return tuple(t._version for t in self.tensors()) != self.versions


@contextlib.contextmanager
def _recording_head(head: nn.Linear, calls: list[_HeadCall]):
    """Run the block with ``head``'s forward replaced by one that appends a :class:`_HeadCall` to
    ``calls`` and returns a placeholder of the logits' shape and dtype that holds one element (a
    zero, expanded); the forward is restored after, also on error."""

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        weight, bias = head.weight, head.bias
        # F.linear on an empty slice: the output dtype of the real call (autocast included), and its
        # error when hidden does not fit the weight.
        dtype = F.linear(hidden.unsqueeze(-2)[..., :0, :], weight[:0], None if bias is None else bias[:0]).dtype
        output = torch.zeros((), dtype=dtype, device=hidden.device).expand(*hidden.shape[:-1], weight.shape[0])
        calls.append(_HeadCall(hidden, weight, bias, output))
        return output

    head.forward = forward
    try:
        yield
    finally:
        del head.forward


def _unfused_reason(calls: list[_HeadCall], pred: torch.Tensor) -> str | None:
    """Why the scores cannot come from the recorded head call (None when they can): the head must
    have run once, the prediction must be its output as it is, and neither that output nor the
    head's input, weight or bias may have been modified in place after the call."""
    if len(calls) != 1:
        return f"the head ran {len(calls)} times in the model's forward (the fused scores need exactly one call)"
    if pred is not calls[0].output:
        return "the model's prediction is not the head's output as it is (the model transforms, casts or slices the logits)"
    if calls[0].modified():
        return "the model's forward modified the head's output, input, weight or bias in place after the head ran"
    return None


Batches = Iterable[tuple[torch.Tensor, Any, Any]]
"""(example indices (b,) int64, model inputs, targets) per batch, already on the model's device."""


class Scorer:
    """Turns a model's outputs into per-example scores of one kind (see the module docstring).

    Args:
        kind: ``"loss"``, ``"fgrad"``, ``"gradnorm"`` or ``"learnability"``.
        loss: the training loss: a name, a callable ``(prediction, targets) -> Tensor[B]`` or an
            :class:`Objective`.
        reference: for ``"learnability"`` (and only for it): the reference losses of the training
            examples, an :class:`attent.Reference` or a (N,) real tensor (copied), looked up by
            example index.
        probe_params: for ``"gradnorm"``: the parameters (or names) the probe covers (default:
            every trainable parameter).
        ignore_index: target value the cross-entropy losses skip.
        head: for ``"loss"``, ``"fgrad"`` and ``"learnability"`` with the ``"cross_entropy"`` or ``"lm"`` loss: the
            model's output head, an ``nn.Linear`` (V, d) submodule whose output is the model's
            prediction, or its dotted name in the model (``model.get_submodule``). Scoring passes
            then take the scores from the head's input and weight, never forming the (B, T, V)
            logits (see :meth:`score_batch`). None: scores from the logits.

    ``attach(model)`` attaches the gradient-norm probe (``"gradnorm"`` only) and checks the head
    against ``model``; ``detach()`` removes the probe; ``with scorer.attached(model):`` does both.
    ``head_fallback`` is None while the head may be fused, else the reason it is not (set by the
    first batch that fell back; later batches are scored from the logits).
    """

    def __init__(self, kind: ScoreKind = "fgrad", loss: "LossSpec | Objective" = "cross_entropy", *,
                 probe_params: Any = None, ignore_index: int = -100, head: nn.Linear | str | None = None,
                 reference: Any = None):
        _check_score_kind(kind)
        self.kind = kind
        self.objective = Objective.resolve(loss, ignore_index=ignore_index)
        self.probe_params = probe_params
        self.probe: Any = None
        self.reference_losses = _reference_losses(kind, reference)
        self.draw_reference = reference if self.reference_losses is not None and getattr(reference, "per_draw", False) else None
        if head is not None:
            if kind not in _OUTPUT_KINDS or self.objective.name not in _HEAD_LOSSES:
                raise ValueError(f"head is for score kinds 'loss' and 'fgrad' (and 'learnability') with loss {' or '.join(map(repr, _HEAD_LOSSES))}; "
                                 f"got head with kind={kind!r} and loss={self.objective.name!r}")
            if not isinstance(head, str):
                _check_head(head, "head")
        self.head = head
        self.head_fallback: str | None = None

    @property
    def needs_probe(self) -> bool:
        """True for ``"gradnorm"``: training steps must run their backward through the probe."""
        return self.kind == "gradnorm"

    def attach(self, model: nn.Module) -> None:
        """Attach the probe to ``model`` (``"gradnorm"``) and check that the head, when given, is
        one of ``model``'s submodules (ValueError otherwise)."""
        if self.head is not None:
            self._head_in(model)
        if self.needs_probe and self.probe is None:
            from .probe import GradNormProbe

            self.probe = GradNormProbe(model, self.probe_params)

    def detach(self) -> None:
        """Remove the probe, if one is attached."""
        if self.probe is not None:
            self.probe.remove()
            self.probe = None

    def _head_in(self, model: nn.Module) -> nn.Linear:
        """The head module in ``model``: the given module, or the submodule of the given name."""
        head = self.head
        if isinstance(head, str):
            try:
                head = model.get_submodule(head)
            except AttributeError:
                raise ValueError(f"head={self.head!r}: {type(model).__name__} has no submodule of that name") from None
            _check_head(head, f"head={self.head!r}")
        elif not any(module is head for module in model.modules()):
            raise ValueError(f"head (an {type(head).__name__} of shape ({head.out_features}, {head.in_features})) "
                             f"is not a submodule of the model ({type(model).__name__})")
        return head

    def _fall_back(self, reason: str) -> None:
        self.head_fallback = reason
        warnings.warn(f"Scorer: the output head is not fused into the scores: {reason}; this batch and the later ones "
                      "are scored from the logits", RuntimeWarning, stacklevel=4)

    def _head_scores(self, model: nn.Module, inputs: Any, targets: Any,
                     autocast_context: Callable[[], contextlib.AbstractContextManager]) -> torch.Tensor | None:
        """The batch's scores from the head's input, or None after falling back (see :meth:`score_batch`)."""
        head = self._head_in(model)
        if not is_linear_head(head):
            self._fall_back("the head no longer runs nn.Linear's forward (a forward was set on it after the Scorer "
                            "was built, e.g. by a wrapper or another probe)")
            return None
        calls: list[_HeadCall] = []
        try:
            with torch.no_grad(), _recording_head(head, calls), autocast_context():
                pred = forward_batch(model, inputs)
        except RuntimeError as error:
            self._fall_back(f"the model's forward failed on the head's placeholder output ({error})")
            return None
        reason = _unfused_reason(calls, pred)
        if reason is not None:
            self._fall_back(reason)
            return None
        call = calls[0]
        self.objective.aligned(call.output, targets)  # the logits' shape checks and messages of the plain path
        hidden, targets = self.objective.aligned(call.hidden, targets)  # the same alignment, on the head's input
        scores = linear_cross_entropy_scores(hidden, call.weight, targets, bias=call.bias,
                                             ignore_index=self.objective.ignore_index)
        return _cross_entropy_output_scores(scores, self._output_kind).float()

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

    @property
    def _output_kind(self) -> str:
        """The kind :meth:`Objective.output_scores` computes for this scorer (learnability: the loss)."""
        return "loss" if self.kind == "learnability" else self.kind

    @property
    def num_examples(self) -> int | None:
        """The training examples the reference losses cover (``"learnability"``), else None."""
        return None if self.reference_losses is None else self.reference_losses.numel()

    def _minus_reference(self, scores: torch.Tensor, indices: Any, inputs: Any = None, targets: Any = None) -> torch.Tensor:
        """``scores`` (B,) less the reference losses of the examples ``indices`` (B,) (learnability):
        looked up in the table, or, for a per-draw reference, its losses on the batch's ``inputs``
        and ``targets`` (:meth:`attent.Reference.draw_losses`)."""
        if indices is None:
            raise ValueError("score kind 'learnability' needs the batch's example indices (indices=) to look up the "
                             "reference losses")
        index = example_indices(indices, scores.numel(), self.reference_losses.numel(),
                                "the reference losses cover {n} training examples")
        if self.draw_reference is not None:
            if inputs is None or targets is None:
                raise ValueError("a per-draw reference (Reference(per_draw=True)) scores the batch it is given: "
                                 "learnability needs the batch's inputs= and targets=")
            reference = self.draw_reference.draw_losses(inputs, targets, index)
        else:
            reference = self.reference_losses[index]
        return scores - reference.to(device=scores.device, dtype=scores.dtype, non_blocking=True)

    def step_scores(self, pred: torch.Tensor, targets: Any, losses: torch.Tensor, *,
                    norms_sq: torch.Tensor | None = None, coefficients: torch.Tensor | None = None,
                    indices: Any = None, inputs: Any = None) -> torch.Tensor:
        """(B,) detached scores of a training step: the losses, fgrad from the prediction, gradnorm
        from the probe's squared norms ``norms_sq`` of the losses scaled by ``coefficients`` (see
        :func:`gradnorm_scores`), or learnability: the losses less the reference losses of the
        examples ``indices`` (B,) (a per-draw reference scores the step's ``inputs``)."""
        if self.kind == "loss":
            return losses.detach()
        if self.kind == "learnability":
            return self._minus_reference(losses.detach(), indices, inputs, targets)
        if self.kind == "fgrad":
            return self.objective.output_scores(pred, targets, "fgrad", targets_checked=True)
        if norms_sq is None or coefficients is None:
            raise ValueError("gradnorm step scores need norms_sq (from Scorer.backward) and the losses' coefficients")
        return gradnorm_scores(norms_sq, coefficients)

    def score_batch(self, model: nn.Module, inputs: Any, targets: Any, *,
                    autocast_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                    indices: Any = None) -> torch.Tensor:
        """Scores of one batch with the model in its current mode, no parameter gradient touched.

        ``"loss"``, ``"fgrad"`` and ``"learnability"``: a forward under ``torch.no_grad``
        (learnability: the loss less the reference losses of the batch's examples ``indices``
        (B,)); ``"gradnorm"``: a forward and ``probe.score`` (the probe must be attached).

        With a head: the forward runs with the head's forward replaced (restored after, also on
        error) by one that records its input ``hidden`` (..., d) and returns a one-element
        placeholder expanded to the logits' shape (..., V) and dtype; when the model's prediction
        is that placeholder, unmodified, from the head's only call, the scores come from
        ``attent_kernels.linear_cross_entropy_scores(hidden, head.weight, targets, bias=head.bias)``
        with the objective's alignment (``"lm"``: hidden[:, :-1] with targets[:, 1:]), accumulated
        in float32 (float64 for a float64 model) from hidden and the weight at their own dtypes:
        under autocast the logits are not rounded to the autocast dtype as the plain path rounds
        them. Otherwise (the model transforms, casts or slices the logits, or modifies them in
        place; the head runs zero or several times; the forward raises a RuntimeError on the
        placeholder) the batch's forward reruns unchanged and
        is scored from its logits, ``head_fallback`` records why, one warning says it, and later
        batches go straight to the logits.

        Returns:
            (B,) float32 scores, detached, on the model's device.
        """
        if self.needs_probe:
            if self.probe is None:
                raise ValueError("score kind 'gradnorm' needs the probe: attach it with Scorer.attach(model)")
            with autocast_context():
                pred = forward_batch(model, inputs)
            return self.probe.score(self.objective.losses(pred, targets)).detach().float().clamp(min=0).sqrt()
        scores = None
        if self.head is not None and self.head_fallback is None:
            scores = self._head_scores(model, inputs, targets, autocast_context)
        if scores is None:
            with torch.no_grad(), autocast_context():
                pred = forward_batch(model, inputs)
            scores = self.objective.output_scores(pred, targets, self._output_kind).float()
        return self._minus_reference(scores, indices, inputs, targets) if self.kind == "learnability" else scores

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
                scores.append(self.score_batch(model, inputs, targets, autocast_context=autocast_context,
                                               indices=batch_indices).cpu())
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
