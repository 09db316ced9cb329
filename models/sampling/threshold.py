"""Fast-dLLM confidence-threshold parallel decoding, with semi-autoregressive blocks.

Blocks are formed as in ``remask``. Within a block every step predicts all its [MASK]s and commits
each one whose confidence is at least ``threshold``, and always the most confident one, so a step
commits at least one token and a block of n tokens takes between 1 and n passes. A confident model
therefore needs fewer forward passes than tokens. There is no step count: a block loops until it
is fully decoded. Fast-dLLM's Theorem 1: when every committed marginal exceeds 1 - eps with
(n + 1) eps <= 1, greedy parallel decoding equals greedy sequential decoding.
"""

from __future__ import annotations

import torch

from models.sampling.base import DiffusionSampler, LogitsProcessor, SamplingError, block_ids, most_confident


class ThresholdSampler(DiffusionSampler):
    name = "threshold"

    def __init__(self, threshold: float = 0.9, *, mask_id: int, block_length: int | None = None,
                 processor: LogitsProcessor | None = None):
        super().__init__(mask_id=mask_id, processor=processor)
        if not 0 < threshold <= 1:
            raise SamplingError(f"threshold must lie in (0, 1], got {threshold}")
        if block_length is not None and block_length < 1:
            raise SamplingError(f"block length must be at least 1, got {block_length}")
        self.threshold, self.block_length = threshold, block_length

    def _sample(self, forward, x, masked, num_masked, generator):
        k = self.block_length or num_masked
        block = block_ids(masked, k)  # (B, T)
        committed = []
        for b in range(-(-num_masked // k)):
            eligible = (block == b) & (x == self.mask_id)  # (B, T)
            while eligible.any():
                tokens, confidence = self._propose(forward(x), eligible, generator)
                commit = eligible & ((confidence >= self.threshold) | most_confident(confidence, 1))
                x = torch.where(commit, tokens, x)
                committed.append(commit.sum(dim=1))
                eligible = eligible & ~commit
        return x, committed
