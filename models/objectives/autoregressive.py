"""Autoregressive next-token cross-entropy.

Every token of a sequence is a target, the first one conditioned on the document separator:
input = [EOD, x_0, ..., x_{T-2}], target = [x_0, ..., x_{T-1}]. So an epoch scores each unique
token exactly once, the same tokens the diffusion objective scores, and validation NLL is exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from models.objectives.base import EvalSums, Objective, ObjectiveConfig


def shift_right(x: torch.Tensor, start_id: int) -> torch.Tensor:
    """The AR input for targets ``x`` (B, T): ``[start] + x[:, :-1]`` (B, T)."""
    return torch.cat([torch.full_like(x[:, :1], start_id), x[:, :-1]], dim=1)


@dataclass(frozen=True)
class ARConfig(ObjectiveConfig):
    """Next-token prediction; ``input_mask_rate`` is a fair-baseline control (Gao et al. 2025: masking
    AR inputs explains most of diffusion's advantage on repeated data)."""

    input_mask_rate: float = field(default=0.0, metadata={
        "help": "ar: fraction of training input tokens replaced by [MASK] (every next token is still a target; "
                "0 = plain AR; validation is never masked)"})

    def __post_init__(self) -> None:
        if not 0 <= self.input_mask_rate < 1:
            raise ValueError(f"input_mask_rate must lie in [0, 1), got {self.input_mask_rate}")


class AutoregressiveObjective(Objective):
    name = "ar"
    causal = True
    decoding = "left_to_right"
    Config = ARConfig

    @property
    def uses_training_noise(self) -> bool:
        return self.config.input_mask_rate > 0

    def describe(self):
        return {**super().describe(), "input_mask_rate": self.config.input_mask_rate}

    def training_noise(self, row_generators, positions, group, offset_generator, seq_len, progress=1.0):
        """Uniforms (B, T) per row: input position i is masked where u < input_mask_rate."""
        if not self.uses_training_noise:
            return None
        return {"u": torch.stack([torch.rand(seq_len, generator=g) for g in row_generators])}

    def token_nll(self, model: nn.Module, x: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        """NLL (B, T) of every token of ``x`` (B, T) given the tokens before it; with uniforms ``u`` (B, T),
        the inputs where u < input_mask_rate are [MASK] (never the start token; the targets stay)."""
        inp = shift_right(x, self.ids.eod)  # (B, T)
        if u is not None:
            drop = u.to(x.device) < self.config.input_mask_rate
            drop[:, 0] = False
            inp = torch.where(drop, torch.full_like(inp, self.ids.mask), inp)
        logits = model(inp)  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1).float(), x.flatten(), reduction="none").view_as(x)

    def loss_sum(self, model, x, valid, generator=None, noise=None):
        u = None
        if self.uses_training_noise:
            u = noise["u"] if noise is not None else torch.rand(x.shape, generator=generator)
        return (self.token_nll(model, x, u) * valid).sum()

    def evaluate(self, model, x, valid, generator=None):
        nll = (self.token_nll(model, x).double() * valid).sum()
        return EvalSums(nll, torch.zeros((), dtype=torch.float64, device=x.device), valid.sum().double())
