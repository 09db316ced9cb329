"""LLaDA low-confidence remasking with semi-autoregressive blocks.

The [MASK] positions are split, left to right, into blocks of ``block_length`` (default: one
block), decoded one after the other with ``steps / blocks`` steps each. Every step predicts all
[MASK]s of the current block, commits the ``n`` most confident predictions and leaves (remasks)
the others; ``n`` follows an even split of the block over its steps, so with steps equal to the
number of [MASK]s exactly one token is committed per step. Confidence is the model probability of
the drawn token (``LogitsProcessor.draw``).
"""

from __future__ import annotations

import torch

from models.sampling.base import DiffusionSampler, LogitsProcessor, SamplingError, block_ids, even_split, most_confident


class RemaskSampler(DiffusionSampler):
    name = "remask"

    def __init__(self, steps: int, *, mask_id: int, block_length: int | None = None,
                 processor: LogitsProcessor | None = None):
        super().__init__(mask_id=mask_id, processor=processor)
        if steps < 1:
            raise SamplingError(f"remask needs at least 1 step, got {steps}")
        if block_length is not None and block_length < 1:
            raise SamplingError(f"block length must be at least 1, got {block_length}")
        self.steps, self.block_length = steps, block_length

    def check(self, num_masked: int) -> None:
        super().check(num_masked)
        self.schedule(num_masked)

    def schedule(self, num_masked: int) -> list[list[int]]:
        """Tokens to commit at each step of each block; refuses settings that cannot split evenly."""
        k = self.block_length or num_masked
        if num_masked % k:
            raise SamplingError(f"remask: {num_masked} tokens to generate are not a multiple of the block "
                                f"length {k}")
        blocks = num_masked // k
        if self.steps > num_masked or self.steps % blocks:
            raise SamplingError(f"remask: steps ({self.steps}) must be a multiple of the {blocks} block(s) and at "
                                f"most the {num_masked} tokens to generate (one token per step at least)")
        return [even_split(k, self.steps // blocks) for _ in range(blocks)]

    def _sample(self, forward, x, masked, num_masked, generator):
        schedule = self.schedule(num_masked)
        block = block_ids(masked, self.block_length or num_masked)  # (B, T)
        committed = []
        for b, counts in enumerate(schedule):
            for n in counts:
                eligible = (block == b) & (x == self.mask_id)  # (B, T)
                tokens, confidence = self._propose(forward(x), eligible, generator)
                commit = most_confident(confidence, n)  # (B, T), n per row
                x = torch.where(commit, tokens, x)
                committed.append(commit.sum(dim=1))
        return x, committed
