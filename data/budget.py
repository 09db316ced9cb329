"""Tokenised token streams and exact unique-token budgets (DESIGN contract 1).

Tokenisation runs through ``datasets.Dataset.map(batched=True)`` with an Arrow cache file keyed by
corpus fingerprint and tokenizer hash, so a second run reads the cache. Each document is followed
by ``[EOD]``.

* The **training stream** is the training documents in one fixed seeded order (``order_seed``,
  default 0, the same for every run), concatenated.
* A **budget** of U unique tokens is the first U tokens of that stream, packed into rows of
  ``seq_len``; the last row is padded with ``[PAD]`` and its padding is marked invalid (out of the
  loss), never rounded away. A smaller budget is therefore a prefix of a larger one.
* The **validation set** is the first ``val_tokens`` tokens of the validation documents in name
  order, packed the same way: fixed, disjoint by document, identical for every run on the corpus.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data.corpus import Corpus, Document
from data.tokenizer import cache_root, tokenizer_hash


class BudgetError(ValueError):
    """A budget that cannot be honoured, with a one-line reason."""


@dataclass
class Packed:
    """Rows of token ids with a validity mask: ``tokens`` (n, seq_len) int64, ``valid`` (n, seq_len) bool."""

    tokens: torch.Tensor
    valid: torch.Tensor

    @property
    def num_tokens(self) -> int:
        return int(self.valid.sum())

    def __len__(self) -> int:
        return self.tokens.shape[0]


@dataclass
class TokenStreams:
    train: np.ndarray  # (N_train,) int32, documents in the seeded order, [EOD] after each
    validation: np.ndarray  # (N_val,) int32, documents in name order
    tokenizer_hash: str
    order_seed: int


def _tokenize(docs: list[Document], tokenizer, cache_file: Path, desc: str) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of each document (+ [EOD]) as a flat array and per-document offsets (n_docs + 1,)."""
    import datasets

    eod = tokenizer.eos_token_id

    def encode(batch):
        ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        return {"input_ids": [x + [eod] for x in ids]}

    cache_file.parent.mkdir(parents=True, exist_ok=True)
    datasets.disable_progress_bars()
    ds = datasets.Dataset.from_dict({"text": [d.text for d in docs]}).map(
        encode, batched=True, remove_columns=["text"], cache_file_name=str(cache_file),
        new_fingerprint=cache_file.stem, desc=desc,
    )
    lists = ds.data.column("input_ids").combine_chunks()
    return lists.values.to_numpy().astype(np.int32), lists.offsets.to_numpy()


def token_streams(corpus: Corpus, tokenizer, order_seed: int = 0, cache_dir: Path | None = None) -> TokenStreams:
    thash = tokenizer_hash(tokenizer)
    key = hashlib.sha256(f"{corpus.fingerprint}:{thash}".encode()).hexdigest()[:20]
    folder = (cache_dir or cache_root()) / "tokens" / key
    train_ids, train_off = _tokenize(corpus.train, tokenizer, folder / "train.arrow", "tokenising train")
    val_ids, val_off = _tokenize(corpus.validation, tokenizer, folder / "validation.arrow", "tokenising validation")
    order = np.random.default_rng(order_seed).permutation(len(corpus.train))
    train = np.concatenate([train_ids[train_off[i] : train_off[i + 1]] for i in order])
    return TokenStreams(train=train, validation=val_ids, tokenizer_hash=thash, order_seed=order_seed)


def pack(stream: np.ndarray, seq_len: int, pad_id: int) -> Packed:
    """Pack a 1-D stream into (ceil(n / seq_len), seq_len) rows, padding (and masking) the last row."""
    n = len(stream)
    rows = -(-n // seq_len)
    tokens = np.full(rows * seq_len, pad_id, dtype=np.int64)
    tokens[:n] = stream
    valid = np.arange(rows * seq_len) < n
    return Packed(torch.from_numpy(tokens).view(rows, seq_len), torch.from_numpy(valid).view(rows, seq_len))


def check_budget(unique_tokens: int, epochs: int, available: int | None = None, seq_len: int | None = None) -> None:
    """Raise ``BudgetError`` for a non-positive budget or epoch count, one above ``available``, or one
    smaller than a single training sequence of ``seq_len`` tokens (mostly padding: not a budget)."""
    if unique_tokens <= 0:
        raise BudgetError(f"--unique-tokens must be positive, got {unique_tokens}")
    if epochs <= 0:
        raise BudgetError(f"--epochs must be positive, got {epochs}")
    if available is not None and unique_tokens > available:
        raise BudgetError(
            f"--unique-tokens {unique_tokens:,} exceeds the training split ({available:,} tokens)")
    if seq_len is not None and unique_tokens < seq_len:
        raise BudgetError(f"--unique-tokens {unique_tokens:,} is smaller than one training sequence "
                          f"(seq_len {seq_len}); use at least {seq_len} tokens or a shorter seq_len")


def take_budget(streams: TokenStreams, unique_tokens: int, seq_len: int, pad_id: int) -> Packed:
    """The first ``unique_tokens`` tokens of the training stream, packed: exactly U valid tokens."""
    check_budget(unique_tokens, 1, len(streams.train))
    return pack(streams.train[:unique_tokens], seq_len, pad_id)


def validation_set(streams: TokenStreams, val_tokens: int, seq_len: int, pad_id: int) -> Packed:
    """The first ``val_tokens`` validation tokens (all of them if there are fewer), packed."""
    if val_tokens <= 0:
        raise BudgetError(f"val_tokens must be positive, got {val_tokens}")
    return pack(streams.validation[:val_tokens], seq_len, pad_id)
