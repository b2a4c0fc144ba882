"""Sparse Contextual Bigram (SCB, Ren et al., NeurIPS 2024): next-token prediction with a known ground truth.

A sequence is ``context`` tokens drawn uniformly from a vocabulary of ``vocab`` tokens. Its last
token k decides *where* to look: a sparse attention pattern ``attention[k]`` puts weight on
``sparsity`` of the earlier positions (every other position gets 0). The token at a looked-at
position j decides *what* comes next through a transition matrix ``transition`` whose rows are
sparse distributions over ``support`` tokens. The next token is drawn from

    p(y | x) = sum_j attention[x_last, j] * transition[x_j, y],

which :func:`next_token_distribution` computes. The pattern and the transition matrix
(:func:`ground_truth`) and the training and validation sequences are drawn from the seed. The
learner is a small transformer that reads the sequence and predicts the next token from its last
position; the metric is the validation cross-entropy, whose floor is the Bayes loss
``info["bayes_val_loss"]`` (the mean of -log p(y | x) over the validation set under the ground truth).
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.utils.data import TensorDataset

from ._sequence_model import LastPositionTransformer
from ._task import Task, TrainDefaults

__all__ = ["next_token_distribution", "ground_truth", "scb"]


def _sparse_stochastic(rows: int, cols: int, nonzero: int, generator: torch.Generator) -> torch.Tensor:
    """(rows, cols) float64 row-stochastic matrix; each row puts flat-Dirichlet weights on
    ``nonzero`` distinct columns drawn uniformly, 0 elsewhere."""
    matrix = torch.zeros(rows, cols, dtype=torch.float64)
    for row in range(rows):
        support = torch.randperm(cols, generator=generator)[:nonzero]
        weights = -torch.log(torch.rand(nonzero, generator=generator, dtype=torch.float64).clamp_min(1e-300))
        matrix[row, support] = weights / weights.sum()
    return matrix


def ground_truth(*, vocab: int, context: int, sparsity: int, support: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The SCB model drawn from ``seed``.

    Returns:
        transition: (vocab, vocab) float64, row a the next-token distribution a looked-at token a
            induces (``support`` non-zeros per row).
        attention: (vocab, context) float64, row k the weights a last token k puts on the
            positions 0 .. context - 2 (``sparsity`` non-zeros per row; the last column is 0).
    """
    if not 1 <= sparsity <= context - 1:
        raise ValueError(f"sparsity must be in [1, context - 1 = {context - 1}], got {sparsity}")
    if not 1 <= support <= vocab:
        raise ValueError(f"support must be in [1, vocab = {vocab}], got {support}")
    generator = torch.Generator().manual_seed(seed)
    transition = _sparse_stochastic(vocab, vocab, support, generator)
    attention = torch.zeros(vocab, context, dtype=torch.float64)
    attention[:, : context - 1] = _sparse_stochastic(vocab, context - 1, sparsity, generator)
    return transition, attention


def next_token_distribution(inputs: torch.Tensor, transition: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """p(y | x) of every sequence under the SCB model.

    Args:
        inputs: (B, T) int64 token ids in [0, V).
        transition: (V, V) row-stochastic transition matrix.
        attention: (V, T) attention pattern (row k: weights of a last token k over the positions).

    Returns:
        (B, V) next-token probabilities in ``transition``'s dtype.
    """
    if inputs.dim() != 2 or transition.dim() != 2 or transition.shape[0] != transition.shape[1]:
        raise ValueError(f"need inputs (B, T) and transition (V, V), got inputs {tuple(inputs.shape)} and transition {tuple(transition.shape)}")
    if attention.shape != (transition.shape[0], inputs.shape[1]):
        raise ValueError(f"attention must have shape (V, T) = {(transition.shape[0], inputs.shape[1])}, got {tuple(attention.shape)}")
    weights = attention[inputs[:, -1]]
    return torch.einsum("bt,btv->bv", weights, transition[inputs])


def _sample(count: int, transition: torch.Tensor, attention: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    vocab, context = attention.shape
    inputs = torch.randint(0, vocab, (count, context), generator=generator)
    targets = torch.multinomial(next_token_distribution(inputs, transition, attention), 1, generator=generator).squeeze(1)
    return inputs, targets


def _build_model(*, vocab: int, context: int, width: int, depth: int, heads: int) -> LastPositionTransformer:
    return LastPositionTransformer(nn.Embedding(vocab, width), width=width, depth=depth, heads=heads, max_len=context,
                                   out_features=vocab)


def scb(*, seed: int = 0, quick: bool = False, vocab: int = 16, context: int = 12, sparsity: int = 2, support: int = 3) -> Task:
    """The SCB task.

    Args:
        seed: draws the ground truth and the sequences.
        quick: a tiny version for smoke tests (few sequences, a one-block model, 2 epochs).
        vocab, context, sparsity, support: the SCB model's vocabulary size, sequence length,
            looked-at positions per last token and non-zeros per transition row.

    Returns:
        Task with items ``(tokens (context,) int64, next token () int64)``, loss
        ``"cross_entropy"`` and metric ``"val_loss"``; ``info`` holds ``transition``,
        ``attention`` and ``bayes_val_loss``.
    """
    transition, attention = ground_truth(vocab=vocab, context=context, sparsity=sparsity, support=support, seed=seed)
    n_train, n_val = (128, 64) if quick else (6144, 1024)
    generator = torch.Generator().manual_seed(seed + 1)
    train_inputs, train_targets = _sample(n_train, transition, attention, generator)
    val_inputs, val_targets = _sample(n_val, transition, attention, generator)
    truth = next_token_distribution(val_inputs, transition, attention)
    bayes_val_loss = float(-truth.gather(1, val_targets[:, None]).log().mean())
    size = dict(width=16, depth=1, heads=2) if quick else dict(width=64, depth=2, heads=4)
    defaults = (
        TrainDefaults(epochs=2, batch_size=32, lr=3e-3, weight_decay=0.01, warmup_epochs=0, eval_every=2)
        if quick
        else TrainDefaults(epochs=20, batch_size=64, lr=3e-3, weight_decay=0.01, warmup_epochs=1, eval_every=24)
    )
    return Task(
        name="scb",
        train=TensorDataset(train_inputs, train_targets),
        val=TensorDataset(val_inputs, val_targets),
        model_factory=partial(_build_model, vocab=vocab, context=context, **size),
        loss="cross_entropy",
        metric="val_loss",
        defaults=defaults,
        info={"transition": transition, "attention": attention, "bayes_val_loss": bayes_val_loss, "vocab": vocab,
              "context": context, "sparsity": sparsity, "support": support},
    )
