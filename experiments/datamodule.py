"""LightningDataModule over one exact budget: every valid token is seen once per epoch.

Rows are shuffled each epoch by a permutation seeded with (seed, epoch), so a resumed run sees the
same order as an uninterrupted one. With several ranks, each global batch of ``batch_size`` rows is
split across the ranks without padding duplicates: a rank whose share of the last batch is empty
gets a placeholder row whose tokens are all marked invalid (it contributes nothing to the loss but
keeps the ranks in step).
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from data.budget import Packed

PLACEHOLDER = -1


class RowDataset(Dataset):
    def __init__(self, packed: Packed):
        self.packed = packed

    def __len__(self) -> int:
        return len(self.packed)

    def __getitem__(self, i: int):
        if i == PLACEHOLDER:
            return self.packed.tokens[0], torch.zeros_like(self.packed.valid[0])
        return self.packed.tokens[i], self.packed.valid[i]


class EpochBatchSampler(Sampler[list[int]]):
    """Yields this rank's row indices for each global batch of a seeded per-epoch permutation."""

    def __init__(self, num_rows: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.num_rows, self.batch_size, self.seed = num_rows, batch_size, seed
        self.rank, self.world_size, self.epoch = rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.num_rows // self.batch_size)

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_rows)
        for start in range(0, self.num_rows, self.batch_size):
            share = order[start : start + self.batch_size][self.rank :: self.world_size].tolist()
            yield share or [PLACEHOLDER]


class BudgetDataModule(L.LightningDataModule):
    def __init__(self, train: Packed, val: Packed, batch_size: int, seed: int):
        super().__init__()
        self.train, self.val, self.batch_size, self.seed = train, val, batch_size, seed

    def train_dataloader(self) -> DataLoader:
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        sampler = EpochBatchSampler(len(self.train), self.batch_size, self.seed, rank, world)
        return DataLoader(RowDataset(self.train), batch_sampler=sampler, num_workers=0)
