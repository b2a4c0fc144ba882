"""Hugging Face ``Trainer`` integration: the teacher picks each epoch's training examples.

Adoption is one class name::

    from attent import Teacher
    from attent.integrations.hf import AtteNTTrainer

    teacher = Teacher(len(train_dataset), epochs=int(args.num_train_epochs))
    trainer = AtteNTTrainer(model=model, args=args, train_dataset=train_dataset,
                            eval_dataset=eval_dataset, teacher=teacher, score="fgrad")   # any Trainer argument
    trainer.train()

A ``TrainerCallback`` cannot do this job: callbacks see neither the train sampler (the Trainer builds
its DataLoader once, before any callback event) nor per-example losses (``compute_loss`` reduces
them to one number), so the integration is a ``Trainer`` subclass. :class:`AtteNTMixin` holds all of
it, for combining with another ``Trainer`` subclass: ``class MyTrainer(AtteNTMixin, SFTTrainer)``.
It is a thin adapter over :class:`attent.Teaching`, the protocol ``attent.fit`` drives too, so both
make the same selections from the same scores.

What it changes:

- Epochs: each epoch starts with the protocol's begin-epoch (the teacher's scoring pass when it asks
  for one, through the Trainer's collator and device; selection; order), and the epoch then runs
  exactly the selected examples' batches: the Trainer's epoch counter advances by one per teacher
  epoch, a partial gradient accumulation closes within its epoch, and the learning-rate schedule is
  sized for the optimizer steps the teacher's plan will take (``max_steps`` from the plan; an
  InfoBatch epoch, whose size depends on the scores, counts as full data), so a decaying rate
  reaches its floor at the last step.
- Loss: per-example losses (``loss="lm"`` for causal LMs: mean over each example's shifted labels
  that are not -100; ``"cross_entropy"`` otherwise; or any :class:`attent.scores.Objective` loss),
  times the teacher's ``loss_weights``, averaged over the batch. The examples' scores (``loss`` or
  ``fgrad`` from the logits, or ``learnability``: the loss less a reference model's loss on the
  example, ``reference=`` an :class:`attent.Reference` or (N,) reference losses of the training
  examples) go to ``teacher.observe`` from the same forward. A teacher selects only where its
  ``when`` allows (by default only with a reference that finds waste in the data); otherwise the
  Trainer runs full data's shortened schedule at the teacher's budget and warns that it did.
- Scoring passes: with ``loss="lm"`` or ``"cross_entropy"`` on a model whose head runs the Triton
  kernels (CUDA), the output head (``get_output_embeddings()``, when it is an ``nn.Linear``) goes
  to the scorer, so a refresh pass scores each batch from the head's input with
  ``attent_kernels.linear_cross_entropy_scores`` instead of forming the (B, T, V) logits; a model
  that changes the head's output (softcapping, scaling) is scored from its logits after one
  warning. ``score_head=`` names a head (a module or its dotted name; on a CPU too, where the
  reference bounds the memory but is slower than the logits at small vocabularies) or, ``False``,
  turns this off.
- Selection from a presampled pool (``pool=attent.PoolSelection(...)`` instead of ``teacher=``;
  ``score="learnability"`` with ``reference=``, or ``"loss"`` / ``"fgrad"``): the train dataloader
  yields chunks of nB = ceil(per_device_train_batch_size / keep) candidates, each pass over the pool
  a seeded permutation, and ``compute_loss`` scores them with a no-grad forward in eval mode and
  trains on the per-device batch size best of them (see :mod:`attent.pool`); the Trainer's epochs
  are the candidate passes of ``num_train_epochs`` epochs' worth of training examples, its
  ``max_steps`` their chunks. Without the reference's evidence of waste it trains uniformly (and
  warns). One process, no gradient accumulation.
- Logs: ``attent_ratio`` (the epoch's selected fraction), ``attent_selection_time`` (seconds
  spent in scoring passes, selection and scoring) and ``attent_candidates`` (candidates scored by
  pooled selection) join every log record.

Works with peft LoRA models (the published "AtteNTSimple" LLM recipe) like any other model.

Limits: ``score="gradnorm"`` is refused: the probe must run the training backward, which the
Trainer runs itself (``attent.fit`` supports it). Resuming from a Trainer checkpoint is refused (the
teacher's state is not in it). The teacher's ``epochs`` must equal ``num_train_epochs`` (or be None
for an open-ended plan, where ``max_steps`` may end the run). Under ``torch.distributed`` the
sampler yields the whole epoch order and accelerate splits its batches between the processes.
Dataset items must be mappings (as every Hugging Face dataset yields). Written against the
Trainer's ``_run_epoch`` / ``set_initial_training_values`` (transformers 5).
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from attent_kernels import uses_triton

from .._extras import require

transformers = require("transformers", "hf")
from transformers import Trainer  # noqa: E402
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES  # noqa: E402

from ..pool import PoolSelection, PoolTeaching  # noqa: E402
from ..scores import LossSpec, Objective, Scorer, is_linear_head, move_to, prediction_of, split_batch  # noqa: E402
from ..teacher import Teacher  # noqa: E402
from ..teaching import Teaching  # noqa: E402

__all__ = ["INDEX_KEY", "HF_SCORE_KINDS", "AtteNTMixin", "AtteNTTrainer"]

# The batch entry that carries each example's dataset index from the sampler to compute_loss.
INDEX_KEY = "attent_index"
HF_SCORE_KINDS = ("loss", "fgrad", "learnability")


class _IndexTagged(Dataset):
    """The train dataset with each mapping item's index added under INDEX_KEY."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.dataset[index]
        if not isinstance(item, Mapping):
            raise ValueError(f"AtteNTTrainer needs dataset items that are mappings (column -> value), got {type(item).__name__}")
        return {**item, INDEX_KEY: int(index)}


class _IndexCollator:
    """Collates tagged items with the user's collator and puts their indices back as a (b,) tensor;
    untagged items (evaluation) go straight to the user's collator."""

    def __init__(self, collate: Callable[[list], Any]):
        self.collate = collate

    def __call__(self, features: list) -> Any:
        if not features or not isinstance(features[0], Mapping) or INDEX_KEY not in features[0]:
            return self.collate(features)
        indices = torch.tensor([f[INDEX_KEY] for f in features], dtype=torch.long)
        batch = self.collate([{k: v for k, v in f.items() if k != INDEX_KEY} for f in features])
        batch[INDEX_KEY] = indices
        return batch


class _EpochOrderSampler(Sampler[int]):
    """The train sampler: yields the order the protocol set for the current epoch."""

    def __init__(self, num_examples: int):
        self.order = torch.arange(num_examples)

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order.tolist())


class AtteNTMixin:
    """The AtteNT part of :class:`AtteNTTrainer`, to put in front of any ``transformers.Trainer``
    subclass. Keyword arguments: ``teacher`` (an ``attent.Teacher`` for ``len(train_dataset)``
    examples), ``score`` (``"loss"``, ``"fgrad"`` (default) or ``"learnability"`` with ``reference``,
    the reference losses of the ``len(train_dataset)`` examples), ``loss`` (default:
    ``"lm"`` for causal-LM models, else ``"cross_entropy"``), ``ignore_index`` (-100),
    ``score_head`` (None: the output embeddings when they are an ``nn.Linear`` on CUDA and the
    loss is ``"lm"`` or ``"cross_entropy"``; a module or dotted name; ``False``: none); everything
    else goes to the Trainer.
    """

    # compute_loss returns a per-batch mean: the Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, teacher: Teacher | None = None, score: str = "fgrad", loss: LossSpec | None = None,
                 ignore_index: int = -100, score_head: nn.Module | str | bool | None = None, reference: Any = None,
                 pool: PoolSelection | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.train_dataset is None:
            raise ValueError("AtteNTTrainer needs a train_dataset")
        for method in ("_run_epoch", "set_initial_training_values"):
            if not hasattr(Trainer, method):
                raise RuntimeError(f"AtteNTTrainer drives the Trainer's {method}, which transformers "
                                   f"{transformers.__version__} lacks; install attent[hf] (transformers 5)")
        if score not in HF_SCORE_KINDS:
            raise ValueError(f"AtteNTTrainer scores examples from the logits: score must be one of {HF_SCORE_KINDS}, "
                             f"got {score!r} ('gradnorm' needs the probe around the backward the Trainer runs "
                             f"itself: use attent.fit)")
        objective = Objective.resolve(loss if loss is not None else self._default_loss(), ignore_index=ignore_index)
        scorer = Scorer(score, objective, head=self._score_head(score_head, objective), reference=reference)
        if scorer.num_examples is not None and scorer.num_examples != len(self.train_dataset):
            raise ValueError(f"reference holds {scorer.num_examples} reference losses but train_dataset has "
                             f"{len(self.train_dataset)} examples")
        if (teacher is None) == (pool is None):
            raise ValueError("AtteNTTrainer needs either teacher= (selection per epoch) or pool= (selection per step "
                             "from candidates), and not both")
        self.attent_candidates = 0
        if pool is not None:
            self.teaching = self._pool_teaching(pool, scorer, reference)
        else:
            self.teaching = Teaching(teacher, scorer, num_examples=len(self.train_dataset), seed=self.args.seed,
                                     reference=reference)
        if teacher is not None and teacher.plan.epochs is not None:
            if self.args.max_steps > 0:
                raise ValueError(f"the teacher plans {teacher.plan.epochs} epochs; pass num_train_epochs="
                                 f"{teacher.plan.epochs} instead of max_steps={self.args.max_steps} (or an open-ended teacher)")
            epochs = self.args.num_train_epochs
            if epochs != int(epochs):
                raise ValueError(f"num_train_epochs must be a whole number of epochs with a teacher, got {epochs}")
            self.teaching.check_epochs(int(epochs))
        self.teacher = teacher
        self.attent_selection_time = 0.0
        self.attent_ratio = 1.0
        self._epoch_sampler = _EpochOrderSampler(len(self.train_dataset))
        self.train_dataset = _IndexTagged(self.train_dataset)
        self.data_collator = _IndexCollator(self.data_collator)

    @property
    def objective(self):
        return self.teaching.scorer.objective

    @property
    def pooled(self) -> bool:
        """True when steps choose from candidates (``pool=`` with the reference's evidence)."""
        return isinstance(self.teaching, PoolTeaching) and self.teaching.selects

    def _pool_teaching(self, pool: PoolSelection, scorer: Scorer, reference: Any) -> PoolTeaching:
        """The protocol of ``pool=``: passes over the candidates for ``num_train_epochs`` epochs'
        worth of training examples; the train dataloader's batches become chunks of nB candidates."""
        args = self.args
        epochs = args.num_train_epochs
        if args.max_steps > 0 or epochs != int(epochs):
            raise ValueError(f"pool= plans whole epochs: pass a whole num_train_epochs and no max_steps, got "
                             f"num_train_epochs={epochs}, max_steps={args.max_steps}")
        if args.gradient_accumulation_steps != 1 or self.accelerator.num_processes != 1:
            raise ValueError(f"pool= needs gradient_accumulation_steps=1 and one process (it chooses within one batch per "
                             f"optimizer step); got {args.gradient_accumulation_steps} and {self.accelerator.num_processes}")
        teaching = PoolTeaching(pool, scorer, num_examples=len(self.train_dataset), epochs=int(epochs), budget=1.0,
                                batch_size=self._train_batch_size, seed=args.seed, reference=reference)
        self._train_batch_size = teaching.candidates_per_step
        return teaching

    def _default_loss(self) -> str:
        model = self.accelerator.unwrap_model(self.model)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        return "lm" if type(base).__name__ in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values() else "cross_entropy"

    def _score_head(self, score_head: nn.Module | str | bool | None, objective: Objective) -> nn.Module | str | None:
        """The scorer's head: ``score_head`` as given, none for ``False``, and for None the model's
        output embeddings when they can be one (:func:`attent.scores.is_linear_head`), run the
        Triton kernels (``attent_kernels.uses_triton``: on a CPU the reference is slower than the
        logits at small vocabularies) and the loss is a cross-entropy."""
        if score_head is False:
            return None
        if score_head is None:
            model = self.accelerator.unwrap_model(self.model)
            head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
            fuses = objective.name in ("lm", "cross_entropy") and is_linear_head(head) and uses_triton(head.weight)
            return head if fuses else None
        if not isinstance(score_head, (str, nn.Module)):
            raise ValueError(f"score_head must be None (the output embeddings), False (none), the output head module or "
                             f"its dotted name, got {score_head!r} ({type(score_head).__name__})")
        return score_head

    def _set_signature_columns_if_needed(self) -> None:
        # The Trainer drops batch entries the model's forward does not take; keep the index.
        super()._set_signature_columns_if_needed()
        if INDEX_KEY not in self._signature_columns:
            self._signature_columns.append(INDEX_KEY)

    def _get_train_sampler(self, train_dataset: Dataset | None = None) -> Sampler[int]:
        return self._epoch_sampler

    def train(self, resume_from_checkpoint: Any = None, *args: Any, **kwargs: Any):
        if resume_from_checkpoint:
            raise ValueError("AtteNTTrainer cannot resume from a Trainer checkpoint: the teacher's state is not in it")
        try:
            return super().train(None, *args, **kwargs)
        finally:
            self.teaching.flush()  # the last epoch's scores, for a teacher read or saved after training

    def _epoch_batches(self, examples: int) -> int:
        """Batches of an epoch of ``examples`` on this process: the order in per-device batches,
        which accelerate deals out to the processes in turn."""
        batch = self._train_batch_size
        total = examples // batch if self.args.dataloader_drop_last else math.ceil(examples / batch)
        return math.ceil(total / self.accelerator.num_processes)

    def _epoch_updates(self, examples: int) -> int:
        return max(1, math.ceil(self._epoch_batches(examples) / self.args.gradient_accumulation_steps))

    def set_initial_training_values(self, args: Any, dataloader: DataLoader):
        """The Trainer's step accounting, with ``max_steps`` from the teacher's plan."""
        values = list(super().set_initial_training_values(args, dataloader))
        epochs = self.teaching.passes
        if epochs is not None:
            values[0], values[-1] = epochs, self.teaching.planned_steps(epochs, self._epoch_updates)  # epochs, max_steps
        return tuple(values)

    def _run_epoch(self, model, epoch, train_dataloader, steps_in_epoch, num_update_steps_per_epoch, *args, **kwargs):
        """One teacher epoch: begin it through the protocol, then run exactly its batches."""
        examples = len(self.attent_begin_epoch(epoch))
        return super()._run_epoch(model, epoch, train_dataloader, self._epoch_batches(examples),
                                  self._epoch_updates(examples), *args, **kwargs)

    def _refresh_batches(self, indices: torch.Tensor):
        loader = DataLoader(Subset(self.train_dataset, indices.tolist()), batch_size=self.args.per_device_eval_batch_size,
                            collate_fn=self.data_collator)
        for batch in loader:
            batch = move_to(batch, self.args.device)
            batch_indices = batch.pop(INDEX_KEY)
            inputs, labels = split_batch(batch, "labels")
            yield batch_indices, inputs, labels

    def attent_begin_epoch(self, epoch: int) -> torch.Tensor:
        """The protocol's begin-epoch (scoring pass, selection, order); sets the sampler's order and
        returns it (int64 indices, the whole epoch: accelerate splits batches between processes)."""
        start = time.perf_counter()
        begun = self.teaching.begin_epoch(epoch, step=self.state.global_step, model=self.model,
                                          batches=self._refresh_batches, autocast_context=self.accelerator.autocast,
                                          shard=False)
        order = self._epoch_sampler.order = begun.order
        self.attent_ratio = float(begun.record["ratio"])
        self.attent_selection_time += time.perf_counter() - start
        return order

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Per-example losses times the teacher's weights, averaged; the batch's scores go to the
        teacher. Batches without indices (evaluation) take the Trainer's own path."""
        if INDEX_KEY not in inputs:
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        indices = inputs.pop(INDEX_KEY).cpu()
        if self.pooled:
            start = time.perf_counter()
            self.attent_candidates += int(indices.numel())
            indices, inputs = self.teaching.choose(model, indices, inputs, step=self.state.global_step,
                                                   device=self.args.device, autocast_context=self.accelerator.autocast)
            self.attent_selection_time += time.perf_counter() - start
        model_inputs, labels = split_batch(inputs, "labels")
        outputs = model(**model_inputs)
        pred = prediction_of(outputs)
        losses = self.objective.losses(pred, labels)
        loss = (losses * self.teaching.loss_weights(indices).to(losses)).mean()
        if self.teaching.observes:
            start = time.perf_counter()
            scores = self.teaching.scorer.step_scores(pred, labels, losses, indices=indices, inputs=model_inputs)
            self.teaching.observe(indices, scores, step=self.state.global_step)
            self.attent_selection_time += time.perf_counter() - start
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        logs["attent_ratio"] = self.attent_ratio
        logs["attent_selection_time"] = self.attent_selection_time
        logs["attent_candidates"] = self.attent_candidates
        super().log(logs, start_time)


class AtteNTTrainer(AtteNTMixin, Trainer):
    """``transformers.Trainer`` trained under an AtteNT teacher (see the module docstring).

    Args:
        teacher: an ``attent.Teacher`` built for ``len(train_dataset)`` examples and
            ``num_train_epochs`` epochs (or open-ended); or None with ``pool``.
        pool: an :class:`attent.PoolSelection`: per-step selection from candidates instead of a
            teacher (see the module docstring).
        score: ``"loss"``, ``"fgrad"`` (default) or ``"learnability"``: what each training step feeds
            the teacher.
        reference: for ``"learnability"``: an :class:`attent.Reference` of the training set, or its
            (N,) reference losses.
        loss: per-example loss, default ``"lm"`` for causal-LM models (labels aligned with the
            inputs, shifted here), else ``"cross_entropy"``; ``"mse"`` or a callable
            ``(logits, labels) -> Tensor[B]`` also work.
        ignore_index: label value that carries no loss.
        score_head: the output head scoring passes take their scores from without forming the
            logits (see the module docstring): None (default) for the model's output embeddings
            when they are an ``nn.Linear`` on CUDA and the loss is ``"lm"`` or ``"cross_entropy"``, an
            ``nn.Linear`` submodule or its dotted name, or ``False`` for scores from the logits.
        *args, **kwargs: ``transformers.Trainer`` arguments.
    """
