"""Stdlib LM: a small GPT-2 causal language model on the Python standard library's own source files.

The corpus is on every machine with Python: the ``*.py`` files directly under
``sysconfig.get_paths()["stdlib"]``, sorted by name; every ``VAL_EVERY``-th file (positions 0,
8, 16, ...) is held out for validation, the others are for training, so no file is in both.
Text is tokenized bytewise (:class:`ByteTokenizer`: the 256 byte values plus an end-of-file
token that separates files), nothing to download. Examples are fixed-length windows: training
windows start at offsets drawn from the seed, validation windows are evenly spaced (the same for
every seed). The model is Hugging Face ``GPT2LMHeadModel`` built from a tiny ``GPT2Config``.
"""
from __future__ import annotations

import sysconfig
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import Dataset

from .._extras import require
from ._task import Task, TrainDefaults

__all__ = ["VAL_EVERY", "ByteTokenizer", "WindowDataset", "corpus_files", "stdlib_lm"]

VAL_EVERY = 8


class ByteTokenizer:
    """Byte-level tokenizer: token t < 256 is the byte t of the UTF-8 text; ``eos_id`` (256) ends a document."""

    eos_id = 256
    vocab_size = 257

    def encode(self, text: str, *, eos: bool = False) -> torch.Tensor:
        """(n,) int64 token ids of ``text``'s UTF-8 bytes, followed by ``eos_id`` when ``eos``."""
        ids = list(text.encode("utf-8")) + ([self.eos_id] if eos else [])
        return torch.tensor(ids, dtype=torch.int64)

    def decode(self, ids: torch.Tensor) -> str:
        """The text of (n,) token ids (end-of-file tokens become newlines; invalid UTF-8 is replaced)."""
        if ids.dim() != 1:
            raise ValueError(f"ids must have shape (n,), got {tuple(ids.shape)}")
        data = bytes(ord("\n") if int(t) == self.eos_id else int(t) for t in ids.tolist())
        return data.decode("utf-8", errors="replace")


class WindowDataset(Dataset):
    """Fixed-length windows of a token stream, as ``(ids (length,) int64, labels (length,) int64)``
    pairs with labels equal to ids (``loss="lm"`` shifts them: position t predicts token t + 1).

    Args:
        tokens: (n,) int64 token stream (not copied; not modified).
        starts: (m,) int64 window start offsets, each in [0, n - length].
        length: window length.
    """

    def __init__(self, tokens: torch.Tensor, starts: torch.Tensor, length: int):
        if tokens.dim() != 1 or starts.dim() != 1:
            raise ValueError(f"tokens and starts must be 1-D, got tokens {tuple(tokens.shape)} and starts {tuple(starts.shape)}")
        if starts.numel() and (int(starts.min()) < 0 or int(starts.max()) > tokens.numel() - length):
            raise ValueError(f"starts must lie in [0, {tokens.numel() - length}] for {tokens.numel()} tokens and length {length}")
        self.tokens, self.starts, self.length = tokens, starts, length

    def __len__(self) -> int:
        return self.starts.numel()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = int(self.starts[index])
        window = self.tokens[start : start + self.length]
        return window, window


def corpus_files(stdlib: str | Path | None = None) -> tuple[list[Path], list[Path]]:
    """(training files, validation files) of the corpus: the sorted ``*.py`` files directly under
    ``stdlib`` (default: this interpreter's standard library), every ``VAL_EVERY``-th held out."""
    root = Path(stdlib if stdlib is not None else sysconfig.get_paths()["stdlib"])
    files = sorted(root.glob("*.py"))
    if len(files) < 2:
        raise ValueError(f"stdlib={str(root)!r} holds {len(files)} *.py files; the corpus needs at least 2")
    return [f for i, f in enumerate(files) if i % VAL_EVERY], files[::VAL_EVERY]


def _token_stream(files: list[Path], tokenizer: ByteTokenizer) -> torch.Tensor:
    return torch.cat([tokenizer.encode(f.read_text(encoding="utf-8", errors="replace"), eos=True) for f in files])


def _build_gpt2(*, vocab_size: int, length: int, width: int, depth: int, heads: int, eos_id: int):
    transformers = require("transformers", "hf")
    config = transformers.GPT2Config(
        vocab_size=vocab_size, n_positions=length, n_embd=width, n_layer=depth, n_head=heads, n_inner=2 * width,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=eos_id, eos_token_id=eos_id, use_cache=False,
    )
    return transformers.GPT2LMHeadModel(config)


def stdlib_lm(*, seed: int = 0, quick: bool = False, stdlib: str | Path | None = None) -> Task:
    """The stdlib language-modelling task.

    Args:
        seed: draws the training windows' start offsets.
        quick: a tiny version for smoke tests (short windows, few examples, a one-block model).
        stdlib: the folder to read (default: this interpreter's standard library).

    Returns:
        Task with items ``(ids (L,) int64, labels (L,) int64)``, loss ``"lm"`` and metric
        ``"val_loss"`` (nats per token; ``val_ppl`` is its exponential).
    """
    tokenizer = ByteTokenizer()
    train_files, val_files = corpus_files(stdlib)
    if quick:
        length, n_train, n_val, size = 16, 96, 32, dict(width=16, depth=1, heads=2)
    else:
        length, n_train, n_val, size = 64, 3072, 512, dict(width=64, depth=2, heads=4)
    train_tokens, val_tokens = _token_stream(train_files, tokenizer), _token_stream(val_files, tokenizer)
    for name, stream in (("training", train_tokens), ("validation", val_tokens)):
        if stream.numel() < length:
            raise ValueError(f"the {name} files hold {stream.numel()} tokens, fewer than one window of {length}")
    generator = torch.Generator().manual_seed(seed)
    train_starts = torch.randint(0, train_tokens.numel() - length + 1, (n_train,), generator=generator)
    val_starts = torch.linspace(0, val_tokens.numel() - length, n_val).long()
    defaults = (
        TrainDefaults(epochs=2, batch_size=32, lr=3e-3, weight_decay=0.01, warmup_epochs=0, eval_every=2)
        if quick
        else TrainDefaults(epochs=12, batch_size=32, lr=3e-3, weight_decay=0.01, warmup_epochs=1, eval_every=24)
    )
    return Task(
        name="stdlib_lm",
        train=WindowDataset(train_tokens, train_starts, length),
        val=WindowDataset(val_tokens, val_starts, length),
        model_factory=partial(_build_gpt2, vocab_size=tokenizer.vocab_size, length=length, eos_id=tokenizer.eos_id, **size),
        loss="lm",
        metric="val_loss",
        defaults=defaults,
        info={"tokenizer": tokenizer, "train_files": [f.name for f in train_files], "val_files": [f.name for f in val_files],
              "window": length, "train_tokens": train_tokens.numel(), "val_tokens": val_tokens.numel()},
    )
