"""LightningDataModule over one exact budget: every valid token is seen once per epoch.

Rows are shuffled each epoch by a permutation seeded with (seed, epoch), so a resumed run sees the
same order as an uninterrupted one. With several ranks, each global batch is split across the
ranks without the padding duplicates of ``DistributedSampler``: a rank whose share of the last
batch is empty gets a placeholder row whose tokens are all marked invalid (it contributes nothing
to the loss but keeps the ranks in step), so every unique token is trained on exactly once per
epoch across all ranks.
"""

from __future__ import annotations

from typing import NamedTuple

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from data.budget import Packed

PLACEHOLDER = -1


class Batch(NamedTuple):
    """What the LightningModule receives (collated: a leading batch dimension B on every field)."""

    tokens: torch.Tensor  # (B, T) int64
    valid: torch.Tensor  # (B, T) bool: real tokens (padding and placeholder rows are False)
    step_tokens: torch.Tensor  # (B,) valid tokens of the whole optimiser step (all ranks, micro-batches)
    rows: torch.Tensor  # (B,) row index in the budget (PLACEHOLDER for a placeholder row)
    positions: torch.Tensor  # (B,) position of the row in its global batch


class RowDataset(Dataset):
    """Items are (row, valid tokens of its optimiser step, position in the global batch) from
    ``EpochBatchSampler``; returns one ``Batch`` row."""

    def __init__(self, packed: Packed):
        self.packed = packed

    def __len__(self) -> int:
        return len(self.packed)

    def __getitem__(self, item: tuple[int, int, int]):
        i, step_tokens, position = item
        if i == PLACEHOLDER:
            return Batch(self.packed.tokens[0], torch.zeros_like(self.packed.valid[0]), step_tokens, i, position)
        return Batch(self.packed.tokens[i], self.packed.valid[i], step_tokens, i, position)


class EpochBatchSampler(Sampler[list[tuple[int, int, int]]]):
    """This rank's micro-batches of each global batch of a seeded per-epoch permutation.

    Each global batch of ``global_batch`` rows is split over ``world_size`` ranks (rank r takes rows
    r, r + world, ...) and each rank's share into ``accumulation`` micro-batches. Every row appears in
    exactly one micro-batch of one rank per epoch; empty shares get one placeholder row. Items carry
    the valid-token count of the whole global batch, which the loss is normalised by, and the row's
    position in it (for noise stratified across the global batch).
    """

    def __init__(self, valid_counts: np.ndarray, global_batch: int, seed: int, rank: int = 0, world_size: int = 1,
                 accumulation: int = 1):
        self.valid_counts, self.global_batch, self.seed = np.asarray(valid_counts), global_batch, seed
        self.rank, self.world_size, self.accumulation, self.epoch = rank, world_size, accumulation, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def steps(self) -> int:
        return -(-len(self.valid_counts) // self.global_batch)

    def __len__(self) -> int:
        return self.steps * self.accumulation

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.valid_counts))
        for start in range(0, len(order), self.global_batch):
            rows = order[start : start + self.global_batch]
            step_tokens = int(self.valid_counts[rows].sum())
            positions = np.arange(len(rows))[self.rank :: self.world_size]
            share = rows[self.rank :: self.world_size]
            splits = zip(np.array_split(share, self.accumulation), np.array_split(positions, self.accumulation))
            for micro, pos in splits:
                yield [(int(i), step_tokens, int(p)) for i, p in zip(micro, pos)] or [(PLACEHOLDER, step_tokens, 0)]


class BudgetDataModule(L.LightningDataModule):
    def __init__(self, train: Packed, global_batch: int, accumulation: int, seed: int):
        super().__init__()
        self.train, self.global_batch, self.accumulation, self.seed = train, global_batch, accumulation, seed

    def train_dataloader(self) -> DataLoader:
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        sampler = EpochBatchSampler(self.train.valid.sum(dim=1).numpy(), self.global_batch, self.seed, rank, world,
                                    self.accumulation)
        return DataLoader(RowDataset(self.train), batch_sampler=sampler, num_workers=0)
