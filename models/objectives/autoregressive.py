"""Autoregressive next-token cross-entropy.

Every token of a sequence is a target, the first one conditioned on the document separator:
input = [EOD, x_0, ..., x_{T-2}], target = [x_0, ..., x_{T-1}]. So an epoch scores each unique
token exactly once, the same tokens the diffusion objective scores, and validation NLL is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.objectives.base import EvalSums, Objective, ObjectiveConfig


def shift_right(x: torch.Tensor, start_id: int) -> torch.Tensor:
    """The AR input for targets ``x`` (B, T): ``[start] + x[:, :-1]`` (B, T)."""
    return torch.cat([torch.full_like(x[:, :1], start_id), x[:, :-1]], dim=1)


@dataclass(frozen=True)
class ARConfig(ObjectiveConfig):
    """Next-token prediction has no settings of its own."""


class AutoregressiveObjective(Objective):
    name = "ar"
    causal = True
    Config = ARConfig

    def token_nll(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """NLL (B, T) of every token of ``x`` (B, T) given the tokens before it."""
        logits = model(shift_right(x, self.ids.eod))  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1).float(), x.flatten(), reduction="none").view_as(x)

    def loss_sum(self, model, x, valid, generator=None, noise=None):
        return (self.token_nll(model, x) * valid).sum()

    def evaluate(self, model, x, valid, generator=None):
        nll = (self.token_nll(model, x).double() * valid).sum()
        return EvalSums(nll, torch.zeros((), dtype=torch.float64, device=x.device), valid.sum().double())
