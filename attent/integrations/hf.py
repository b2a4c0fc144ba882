"""Hugging Face ``Trainer`` integration: the teacher picks each epoch's training examples.

Adoption is one class name::

    from attent import Teacher
    from attent.integrations.hf import AtteNTTrainer

    teacher = Teacher(len(train_dataset), score="fgrad", epochs=int(args.num_train_epochs))
    trainer = AtteNTTrainer(model=model, args=args, train_dataset=train_dataset,
                            eval_dataset=eval_dataset, teacher=teacher)   # any Trainer argument
    trainer.train()

A ``TrainerCallback`` cannot do this job: callbacks see neither the train sampler (the Trainer builds
its DataLoader once, before any callback event) nor per-example losses (``compute_loss`` reduces
them to one number), so the integration is a ``Trainer`` subclass. :class:`AtteNTMixin` holds all of
it, for combining with another ``Trainer`` subclass: ``class MyTrainer(AtteNTMixin, SFTTrainer)``.

What it changes:

- Sampling: each epoch starts with the teacher's refresh pass (when configured; a forward pass over
  the examples it names, through the Trainer's own collator and device placement) and selection;
  the epoch then iterates the teacher's sampler over the selected examples only, so subset epochs
  run fewer steps.
- Loss: per-example losses (``loss="lm"`` for causal LMs: mean over each example's shifted labels
  that are not -100; ``"cross_entropy"`` otherwise; or any :class:`attent.scores.Objective` loss),
  times the teacher's ``loss_weights``, averaged over the batch. The examples' scores (``loss`` or
  ``fgrad`` from the logits) go to ``teacher.observe`` from the same forward.
- Logs: ``attent_ratio`` (the epoch's selected fraction) and ``attent_selection_time`` (seconds
  spent in refresh passes, selection and scoring) join every log record.

Works with peft LoRA models (the published "AtteNTSimple" LLM recipe) like any other model.

Limits: the Trainer sizes its learning-rate schedule and progress bar for full-data epochs, so a
decaying schedule ends above its floor when subset epochs are shorter (pass ``lr_scheduler_type=
"constant"`` or your own scheduler where that matters); with ``gradient_accumulation_steps > 1`` a
subset epoch whose batch count is not a multiple of it carries its last partial accumulation into
the next epoch's first step; resuming from a Trainer checkpoint does not restore the teacher.
The ``gradnorm`` score needs the probe around the backward, which the Trainer runs itself: use
``attent.fit`` for it. Dataset items must be mappings (as every Hugging Face dataset yields).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Iterator, Mapping

import torch
from torch.utils.data import Dataset, Sampler, Subset
from transformers import Trainer
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from ..scores import LossSpec, Objective, distinct, eval_mode, move_to, prediction_of, score_batch, split_batch

__all__ = ["INDEX_KEY", "AtteNTMixin", "AtteNTTrainer"]

# The batch entry that carries each example's dataset index from the sampler to compute_loss.
INDEX_KEY = "attent_index"
HF_SCORE_KINDS = ("loss", "fgrad")


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


class _TeachingSampler(Sampler[int]):
    """The train sampler: at each epoch's first iteration the trainer refreshes and selects, then the
    teacher's order for the epoch is iterated."""

    def __init__(self, trainer: "AtteNTMixin"):
        self.trainer = trainer
        self.epoch = 0
        self.order: torch.Tensor | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.order) if self.order is not None else self.trainer.teacher.num_examples

    def __iter__(self) -> Iterator[int]:
        self.order = self.trainer.attent_begin_epoch(self.epoch)
        return iter(self.order.tolist())


class AtteNTMixin:
    """The AtteNT part of :class:`AtteNTTrainer`, to put in front of any ``transformers.Trainer``
    subclass. Keyword arguments: ``teacher`` (an ``attent.Teacher`` for ``len(train_dataset)``
    examples with score ``"loss"`` or ``"fgrad"``), ``loss`` (default: ``"lm"`` for causal-LM
    models, else ``"cross_entropy"``), ``ignore_index`` (-100); everything else goes to the Trainer.
    """

    # compute_loss returns a per-batch mean: the Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, teacher: Any, loss: LossSpec | None = None, ignore_index: int = -100, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.train_dataset is None:
            raise ValueError("AtteNTTrainer needs a train_dataset")
        if teacher.num_examples != len(self.train_dataset):
            raise ValueError(f"teacher was built for {teacher.num_examples} examples but train_dataset has {len(self.train_dataset)}")
        if teacher.score not in HF_SCORE_KINDS:
            raise ValueError(f"AtteNTTrainer scores examples from the logits: teacher score must be one of {HF_SCORE_KINDS}, "
                             f"got {teacher.score!r} (attent.fit supports 'gradnorm')")
        self.teacher = teacher
        self.objective = Objective.resolve(loss if loss is not None else self._default_loss(), ignore_index=ignore_index)
        self.attent_selection_time = 0.0
        self.attent_ratio = 1.0
        self.train_dataset = _IndexTagged(self.train_dataset)
        self.data_collator = _IndexCollator(self.data_collator)

    def _default_loss(self) -> str:
        model = self.accelerator.unwrap_model(self.model)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        return "lm" if type(base).__name__ in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values() else "cross_entropy"

    def _set_signature_columns_if_needed(self) -> None:
        # The Trainer drops batch entries the model's forward does not take; keep the index.
        super()._set_signature_columns_if_needed()
        if INDEX_KEY not in self._signature_columns:
            self._signature_columns.append(INDEX_KEY)

    def _get_train_sampler(self, train_dataset: Dataset | None = None) -> Sampler[int]:
        return _TeachingSampler(self)

    def attent_begin_epoch(self, epoch: int) -> torch.Tensor:
        """Refresh pass, selection and the epoch's example order (int64 indices)."""
        start = time.perf_counter()
        refresh = self.teacher.refresh_indices(epoch)
        if refresh is not None and refresh.numel():
            self.teacher.observe(*self._refresh_scores(refresh), step=self.state.global_step)
        selection = self.teacher.select(epoch)
        sampler = self.teacher.sampler(shuffle=True)
        sampler.set_epoch(epoch)
        order = torch.as_tensor(list(sampler), dtype=torch.long)
        self.attent_ratio = float(selection.ratio)
        self.attent_selection_time += time.perf_counter() - start
        return order

    def _refresh_scores(self, refresh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loader = self.get_test_dataloader(Subset(self.train_dataset, refresh.tolist()))
        indices, scores = [], []
        with eval_mode(self.model):
            for batch in loader:
                batch = move_to(batch, self.args.device)
                batch_indices = batch.pop(INDEX_KEY)
                inputs, labels = split_batch(batch, "labels")
                scores.append(score_batch(self.model, inputs, labels, self.teacher.score, self.objective,
                                          autocast_context=self.accelerator.autocast).cpu())
                indices.append(batch_indices.cpu())
        return torch.cat(indices), torch.cat(scores)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Per-example losses times the teacher's weights, averaged; the batch's scores go to the
        teacher. Batches without indices (evaluation) take the Trainer's own path."""
        if INDEX_KEY not in inputs:
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        indices = inputs.pop(INDEX_KEY).cpu()
        model_inputs, labels = split_batch(inputs, "labels")
        outputs = model(**model_inputs)
        pred = prediction_of(outputs)
        losses = self.objective.losses(pred, labels)
        loss = (losses * self.teacher.loss_weights(indices).to(losses)).mean()
        start = time.perf_counter()
        scores = losses.detach() if self.teacher.score == "loss" else self.objective.output_scores(pred, labels, "fgrad")
        self.teacher.observe(*distinct(indices, scores.cpu()), step=self.state.global_step)
        self.attent_selection_time += time.perf_counter() - start
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        logs["attent_ratio"] = self.attent_ratio
        logs["attent_selection_time"] = self.attent_selection_time
        super().log(logs, start_time)


class AtteNTTrainer(AtteNTMixin, Trainer):
    """``transformers.Trainer`` trained under an AtteNT teacher (see the module docstring).

    Args:
        teacher: an ``attent.Teacher`` built for ``len(train_dataset)`` examples; its score must be
            ``"loss"`` or ``"fgrad"``.
        loss: per-example loss, default ``"lm"`` for causal-LM models (labels aligned with the
            inputs, shifted here), else ``"cross_entropy"``; ``"mse"`` or a callable
            ``(logits, labels) -> Tensor[B]`` also work.
        ignore_index: label value that carries no loss.
        *args, **kwargs: ``transformers.Trainer`` arguments.
    """
