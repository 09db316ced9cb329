"""MDLM ancestral sampling under the linear schedule used in training, with the ``ddpm_cache`` trick.

Training masks each token with probability t (``models.objectives.schedule.LinearSchedule``, shared
with the objective). The reverse step
from t to s < t on the grid t_i = 1 - i / steps keeps each [MASK] masked with probability s / t and
otherwise unmasks it to a draw from the model's p(x_0 | x_t): with q = p_0 (t - s) + s [MASK],
normalised by t, as in MDLM's ``_ddpm_caching_update``. The last step (s = 0) unmasks everything
left, so no [MASK] survives and no final denoising pass is needed.

Whether a token unmasks does not depend on the model output, so the decisions are drawn first
and the model is called only for a step that changes something. The model has no time input, so
its output is a function of x alone: a step that changes nothing would reuse it (MDLM's
``ddpm_cache``), and here costs no pass at all. With steps >> length most steps change nothing,
and the passes are at most the number of tokens to generate.
"""

from __future__ import annotations

import torch

from models.objectives.schedule import LinearSchedule
from models.sampling.base import DiffusionSampler, LogitsProcessor, SamplingError, noise


class AncestralSampler(DiffusionSampler):
    name = "ancestral"

    def __init__(self, steps: int, *, mask_id: int, processor: LogitsProcessor | None = None):
        super().__init__(mask_id=mask_id, processor=processor)
        if steps < 1:
            raise SamplingError(f"ancestral sampling needs at least 1 step, got {steps}")
        self.steps = steps

    def _sample(self, forward, x, masked, num_masked, generator):
        grid = LinearSchedule.grid(self.steps)  # t_0 = 1 ... t_S = 0
        committed = []
        for t, s in zip(grid[:-1], grid[1:]):
            still = x == self.mask_id  # (B, T)
            if not still.any():
                break
            u = noise(x.shape, generator, x.device)  # (B, T)
            unmask = still & (u < LinearSchedule.unmask_probability(t, s))  # (B, T): each [MASK] with (t - s) / t
            if unmask.any():
                tokens, _ = self._propose(forward(x), unmask, generator)
                x = torch.where(unmask, tokens, x)
            committed.append(unmask.sum(dim=1))
        return x, committed
