"""Autoregressive next-token cross-entropy.

Every token of a sequence is a target, the first one conditioned on the document separator:
input = [SEP, x_0, ..., x_{T-2}], target = [x_0, ..., x_{T-1}]. So an epoch scores each unique
token exactly once, the same tokens the diffusion objective scores, and validation NLL is exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.objectives.base import EvalSums


class AutoregressiveObjective:
    name = "ar"
    causal = True

    def __init__(self, *, bos_id: int, **_: object):
        self.bos_id = bos_id

    def _token_nll(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        inp = torch.cat([torch.full_like(x[:, :1], self.bos_id), x[:, :-1]], dim=1)  # (B, T)
        logits = model(inp)  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1).float(), x.flatten(), reduction="none").view_as(x)

    def loss_sum(self, model, x, valid, generator=None, noise=None):
        return (self._token_nll(model, x) * valid).sum()

    def evaluate(self, model, x, valid, generator=None):
        nll = (self._token_nll(model, x).double() * valid).sum()
        return EvalSums(nll.double(), torch.zeros((), dtype=torch.float64, device=x.device),
                        valid.sum().double())
