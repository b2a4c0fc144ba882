"""Waste testbeds: training pools where uniform training spends compute on examples that do not help,
each with a clean validation set, a clean holdout for a reference model (:class:`ReferenceRecipe`),
and ``info`` marking the wasted examples (for tests and analysis, never for training).

- ``digits_noisy``: digits x10 (:func:`digits_augmented`), 30% of the pool's labels replaced by a
  class drawn uniformly (it may draw the true one).
- ``digits_flipped``: digits x10 with structured flips: about half of the 3s labelled 5 and half of
  the 9s labelled 7 (each 3 or 9 flipped with probability 1/2).
- ``digits_off_target``: digits x10 with all 10 classes in the pool, validation (and the holdout) on
  the digits 0-4 only.
- ``prose_lm``: a byte LM whose pool is 30% windows of English prose (the documentation topics the
  standard library ships in ``pydoc_data.topics``) and 70% windows of Python source (the standard
  library's ``*.py`` files), validated on held-out prose.
- ``icl_corrupted``: in-context linear regression seen once (one epoch over a large pool of fresh
  prompts), 30% of the prompts corrupted (every y of the prompt, pairs and query, replaced by an
  independent N(0, 1) draw: nothing in the prompt determines the target).

Digits: the 1,437 training images' sources are split once (``HOLDOUT_SPLIT_SEED``) into 80% for the
pool and 20% whose ten copies, with their clean labels, are the holdout; the noise is drawn from
the seed. The reference for the digits tasks is a small MLP (64-64-10), for ``prose_lm`` a one-block
GPT-2 of width 32, for ``icl_corrupted`` in-context ridge regression (two parameters: the ridge and a scale).
"""
from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn
from torch.utils.data import TensorDataset

from .._extras import require
from ._task import ReferenceRecipe, Task, TrainDefaults
from .digits import digits_augmented
from .icl_regression import _build_model as _build_icl_model
from .icl_regression import make_prompts
from .stdlib_lm import ByteTokenizer, WindowDataset, _build_gpt2, _token_stream, corpus_files

__all__ = ["NOISE_RATE", "HOLDOUT_FRACTION", "TARGET_SHARE", "TARGET_CLASSES", "InContextRidge",
           "digits_noisy", "digits_flipped", "digits_off_target", "prose_lm", "icl_corrupted"]

NOISE_RATE = 0.3
HOLDOUT_FRACTION = 0.2
HOLDOUT_SPLIT_SEED = 0
TARGET_SHARE = 0.3
TARGET_CLASSES = 5
PROSE_GROUPS = 5  # topic i: validation when i % 5 == 0, holdout when i % 5 == 1, pool otherwise


def _digits_mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def _digits_parts(seed: int, quick: bool) -> tuple[Task, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(digits x10 task, its images, labels, and (n,) bool: in the holdout)."""
    base = digits_augmented(seed=seed, quick=quick)
    images, labels = base.train.tensors
    source = base.info["source_index"]
    sources = int(source.max()) + 1
    held = torch.zeros(sources, dtype=torch.bool)
    chosen = torch.randperm(sources, generator=torch.Generator().manual_seed(HOLDOUT_SPLIT_SEED))
    held[chosen[: math.floor(HOLDOUT_FRACTION * sources)]] = True
    return base, images, labels, held[source]


def _digits_task(name: str, seed: int, quick: bool, noise: str) -> Task:
    base, images, labels, in_holdout = _digits_parts(seed, quick)
    pool_images, clean = images[~in_holdout], labels[~in_holdout]
    generator = torch.Generator().manual_seed(seed + 1)
    observed = clean.clone()
    val, holdout = base.val, TensorDataset(images[in_holdout], labels[in_holdout])
    if noise == "uniform":
        hit = torch.rand(clean.numel(), generator=generator) < NOISE_RATE
        observed[hit] = torch.randint(0, 10, (int(hit.sum()),), generator=generator)
    elif noise == "structured":
        coin = torch.rand(clean.numel(), generator=generator) < 0.5
        observed[(clean == 3) & coin] = 5
        observed[(clean == 9) & coin] = 7
    else:  # off-target: the labels are right, half of the classes are not asked for
        val_images, val_labels = base.val.tensors
        on_target = val_labels < TARGET_CLASSES
        val = TensorDataset(val_images[on_target], val_labels[on_target])
        held_labels = labels[in_holdout]
        holdout = TensorDataset(images[in_holdout][held_labels < TARGET_CLASSES], held_labels[held_labels < TARGET_CLASSES])
    wasted = observed != clean if noise != "off-target" else clean >= TARGET_CLASSES
    defaults = base.defaults if quick else TrainDefaults(epochs=6, batch_size=32, lr=2e-3, weight_decay=0.05,
                                                         warmup_epochs=1, eval_every=150)
    return Task(
        name=name, train=TensorDataset(pool_images, observed), val=val, model_factory=base.model_factory,
        loss="cross_entropy", metric="val_accuracy", defaults=defaults,
        info={"wasted": wasted, "clean_labels": clean, "holdout": holdout, "pool_examples": clean.numel(),
              "holdout_examples": len(holdout)},
        reference=ReferenceRecipe(_digits_mlp, holdout=holdout, lr=1e-2, batch_size=256, max_epochs=20, patience=3),
    )


def digits_noisy(*, seed: int = 0, quick: bool = False) -> Task:
    """Digits x10 with 30% uniform label noise in the pool (module docstring)."""
    return _digits_task("digits_noisy", seed, quick, "uniform")


def digits_flipped(*, seed: int = 0, quick: bool = False) -> Task:
    """Digits x10 with half of the pool's 3s labelled 5 and half of its 9s labelled 7."""
    return _digits_task("digits_flipped", seed, quick, "structured")


def digits_off_target(*, seed: int = 0, quick: bool = False) -> Task:
    """Digits x10, all classes in the pool, validation and holdout on the digits 0-4."""
    return _digits_task("digits_off_target", seed, quick, "off-target")


def _prose_streams(tokenizer: ByteTokenizer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pool, holdout, validation) token streams of the documentation topics, split by topic."""
    topics = require("pydoc_data.topics", "tasks").topics
    groups: list[list[torch.Tensor]] = [[], [], []]
    for i, key in enumerate(sorted(topics)):
        group = 2 if i % PROSE_GROUPS == 0 else 1 if i % PROSE_GROUPS == 1 else 0
        groups[group].append(tokenizer.encode(topics[key], eos=True))
    return tuple(torch.cat(group) for group in groups)


def _random_starts(count: int, low: int, high: int, generator: torch.Generator) -> torch.Tensor:
    """(count,) int64 window starts drawn uniformly in [low, high]."""
    return torch.randint(low, high + 1, (count,), generator=generator)


def prose_lm(*, seed: int = 0, quick: bool = False) -> Task:
    """Byte LM on a pool of 30% English prose and 70% Python source, validated on held-out prose.

    Returns:
        Task with items ``(ids (L,) int64, labels (L,) int64)``, loss ``"lm"``, metric ``"val_loss"``;
        ``info["wasted"]`` marks the source windows.
    """
    tokenizer = ByteTokenizer()
    prose, holdout_prose, val_prose = _prose_streams(tokenizer)
    code = _token_stream(corpus_files()[0], tokenizer)
    if quick:
        length, n_pool, n_holdout, n_val, size = 16, 96, 64, 32, dict(width=16, depth=1, heads=2)
    else:
        length, n_pool, n_holdout, n_val, size = 64, 3072, 768, 512, dict(width=64, depth=2, heads=4)
    generator = torch.Generator().manual_seed(seed)
    n_prose = round(TARGET_SHARE * n_pool)
    tokens = torch.cat([prose, code])
    starts = torch.cat([_random_starts(n_prose, 0, prose.numel() - length, generator),
                        _random_starts(n_pool - n_prose, prose.numel(), tokens.numel() - length, generator)])
    holdout = WindowDataset(holdout_prose, _random_starts(n_holdout, 0, holdout_prose.numel() - length, generator), length)
    val = WindowDataset(val_prose, torch.linspace(0, val_prose.numel() - length, n_val).long(), length)
    defaults = (
        TrainDefaults(epochs=2, batch_size=32, lr=3e-3, weight_decay=0.01, warmup_epochs=0, eval_every=2)
        if quick
        else TrainDefaults(epochs=12, batch_size=32, lr=3e-3, weight_decay=0.01, warmup_epochs=1, eval_every=24)
    )
    wasted = torch.arange(n_pool) >= n_prose
    return Task(
        name="prose_lm", train=WindowDataset(tokens, starts, length), val=val,
        model_factory=partial(_build_gpt2, vocab_size=tokenizer.vocab_size, length=length, eos_id=tokenizer.eos_id, **size),
        loss="lm", metric="val_loss", defaults=defaults,
        info={"wasted": wasted, "window": length, "holdout": holdout, "prose_tokens": prose.numel(),
              "code_tokens": code.numel(), "val_tokens": val_prose.numel()},
        reference=ReferenceRecipe(partial(_build_gpt2, vocab_size=tokenizer.vocab_size, length=length,
                                          eos_id=tokenizer.eos_id, width=32, depth=1, heads=2),
                                  holdout=holdout, lr=1e-2, batch_size=64, max_epochs=20, patience=2),
    )


class InContextRidge(nn.Module):
    """Ridge regression on each prompt's own (x, y) pairs, predicting its query: the reference of
    ``icl_corrupted``. Prompts (B, pairs + 1, dim + 2) in the layout of :func:`make_prompts`;
    w = (X^T X + exp(log_ridge) I)^-1 X^T y per prompt, prediction ``scale * x_query . w``, (B, 1)."""

    def __init__(self, dim: int, pairs: int):
        super().__init__()
        self.dim, self.pairs = dim, pairs
        self.log_ridge = nn.Parameter(torch.zeros(()))
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, prompts: torch.Tensor) -> torch.Tensor:
        xs, ys = prompts[:, : self.pairs, : self.dim], prompts[:, : self.pairs, self.dim]
        query = prompts[:, self.pairs, : self.dim]
        gram = xs.transpose(1, 2) @ xs + self.log_ridge.exp() * torch.eye(self.dim, dtype=xs.dtype, device=xs.device)
        weights = torch.linalg.solve(gram, (xs.transpose(1, 2) @ ys.unsqueeze(-1))).squeeze(-1)
        return self.scale * (query * weights).sum(dim=1, keepdim=True)


def _corrupted(prompts: torch.Tensor, targets: torch.Tensor, rate: float, dim: int, pairs: int,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Copies with a ``rate`` share of the prompts' y values (pairs and query) replaced by N(0, 1)."""
    prompts, targets = prompts.clone(), targets.clone()
    hit = torch.rand(prompts.shape[0], generator=generator) < rate
    count = int(hit.sum())
    prompts[hit, :pairs, dim] = torch.randn(count, pairs, generator=generator)
    targets[hit] = torch.randn(count, 1, generator=generator)
    return prompts, targets, hit


def icl_corrupted(*, seed: int = 0, quick: bool = False, dim: int = 5, pairs: int = 11) -> Task:
    """In-context regression seen once, 30% of the pool's prompts corrupted (module docstring).

    Returns:
        Task with items ``(prompt (pairs + 1, dim + 2) float32, y_query (1,) float32)``, loss
        ``"mse"``, metric ``"val_loss"`` (clean validation MSE); one epoch over the pool.
    """
    n_pool, n_holdout, n_val = (256, 64, 64) if quick else (49152, 2048, 1024)
    generator = torch.Generator().manual_seed(seed)
    prompts, targets, _ = make_prompts(n_pool, dim=dim, pairs=pairs, generator=generator)
    prompts, targets, hit = _corrupted(prompts, targets, NOISE_RATE, dim, pairs, generator)
    holdout = TensorDataset(*make_prompts(n_holdout, dim=dim, pairs=pairs, generator=generator)[:2])
    val = TensorDataset(*make_prompts(n_val, dim=dim, pairs=pairs, generator=generator)[:2])
    size = dict(width=16, depth=1, heads=2) if quick else dict(width=64, depth=3, heads=4)
    defaults = (
        TrainDefaults(epochs=1, batch_size=32, lr=1e-3, weight_decay=0.01, warmup_epochs=0, eval_every=2)
        if quick
        else TrainDefaults(epochs=1, batch_size=64, lr=1e-3, weight_decay=0.01, warmup_epochs=0, eval_every=64)
    )
    return Task(
        name="icl_corrupted", train=TensorDataset(prompts, targets), val=val,
        model_factory=partial(_build_icl_model, dim=dim, pairs=pairs, **size), loss="mse", metric="val_loss",
        defaults=defaults, info={"wasted": hit, "holdout": holdout, "dim": dim, "pairs": pairs},
        reference=ReferenceRecipe(partial(InContextRidge, dim, pairs), holdout=holdout, lr=3e-2, batch_size=256,
                                  max_epochs=20, patience=3),
    )
