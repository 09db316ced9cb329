"""What every training objective provides."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn


@dataclass
class EvalSums:
    """Sums over a validation batch, to be added across batches (and ranks).

    ``nll`` is the summed negative log-likelihood (AR) or ELBO estimate (diffusion) in nats;
    ``mc_var`` the variance of that Monte Carlo estimate (zero for exact NLL); ``tokens`` the
    number of scored tokens.
    """

    nll: torch.Tensor
    mc_var: torch.Tensor
    tokens: torch.Tensor

    def __add__(self, other: EvalSums) -> EvalSums:
        return EvalSums(self.nll + other.nll, self.mc_var + other.mc_var, self.tokens + other.tokens)


class Objective(Protocol):
    #: registry name, written into results tables
    name: str
    #: attention direction the backbone must use with this objective
    causal: bool

    def loss_sum(self, model: nn.Module, x: torch.Tensor, valid: torch.Tensor,
                 generator: torch.Generator | None = None, noise: dict | None = None) -> torch.Tensor:
        """Training loss summed over the valid tokens of ``x`` (B, T); ``valid`` (B, T) bool marks real
        tokens. Dividing by the number of valid tokens gives the per-token loss. Objectives with random
        inputs may also offer ``training_noise(...)`` (see the diffusion objective) to fix the draws."""
        ...

    def evaluate(self, model: nn.Module, x: torch.Tensor, valid: torch.Tensor,
                 generator: torch.Generator) -> EvalSums:
        """Deterministic (given ``generator``) validation sums on ``x``."""
        ...
