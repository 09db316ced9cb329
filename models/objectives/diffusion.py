"""Masked (absorbing-state) diffusion with a linear schedule: the SMDM / LLaDA / MDLM ELBO.

Forward process: each token is replaced by [MASK] independently with probability t, t in [eps, 1].
Training: t ~ U(eps, 1) drawn antithetically (stratified) across the batch,
t_i = eps + (1 - eps) * ((u + i / B) mod 1), and

    loss = sum over masked tokens of CE(x_0 | x_t) / t   /   number of valid tokens,

which is, in expectation over t and the masks, the negative ELBO per token (``loss_sum`` returns
the numerator; the trainer divides by the valid tokens of the whole step, across ranks) (an upper bound on
the NLL). eps = 1e-3 as in MDLM, SMDM and Prabhudesai et al.

Validation: K Monte Carlo draws per sequence with stratified t_k = eps + (1 - eps) (u + k) / K and
masks from a seeded generator, so the estimate is deterministic; the variance of the estimate is
returned with it (sum over sequences of the between-draw variance divided by K).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.objectives.base import EvalSums


class MaskedDiffusionObjective:
    name = "diffusion"
    causal = False

    def __init__(self, *, mask_id: int, eps: float = 1e-3, mc_samples: int = 4, **_: object):
        if not 0 < eps < 1:
            raise ValueError(f"eps must lie in (0, 1), got {eps}")
        if mc_samples < 1:
            raise ValueError(f"mc_samples must be at least 1, got {mc_samples}")
        self.mask_id, self.eps, self.mc_samples = mask_id, eps, mc_samples

    def _weighted_ce(self, model: nn.Module, x, valid, t, u) -> torch.Tensor:
        """Per-sequence sum of CE / t over masked tokens, for noise levels t (B,) and uniforms u (B, T)."""
        masked = (u.to(x.device) < t[:, None]) & valid  # (B, T)
        xt = torch.where(masked, torch.full_like(x, self.mask_id), x)
        logits = model(xt)  # (B, T, V)
        ce = F.cross_entropy(logits[masked].float(), x[masked], reduction="none")  # (M,)
        per_token = torch.zeros(x.shape, dtype=ce.dtype, device=x.device)
        per_token[masked] = ce / t[:, None].expand_as(x)[masked]
        return per_token.sum(dim=1)  # (B,)

    def noise_levels(self, positions: torch.Tensor, group: int, offset: torch.Tensor) -> torch.Tensor:
        """Antithetic t for rows at ``positions`` of a group of ``group`` rows sharing a uniform ``offset``:
        t = eps + (1 - eps) * ((offset + position / group) mod 1)."""
        return self.eps + (1 - self.eps) * ((offset + positions / group) % 1.0)

    def stratified_t(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Antithetic noise levels (B,) evenly spaced across the batch."""
        return self.noise_levels(torch.arange(batch), batch, torch.rand(1, generator=generator))

    def training_noise(self, row_generators: list[torch.Generator], positions: torch.Tensor, group: int,
                       offset_generator: torch.Generator, seq_len: int) -> dict[str, torch.Tensor]:
        """Noise drawn per row (its own generator) and per optimiser step (the shared offset), so the
        draws do not depend on how a global batch is split over ranks and micro-batches."""
        t = self.noise_levels(positions, group, torch.rand(1, generator=offset_generator))
        u = torch.stack([torch.rand(seq_len, generator=g) for g in row_generators])
        return {"t": t, "u": u}

    def loss_sum(self, model, x, valid, generator=None, noise=None):
        """``noise`` ({"t": (B,), "u": (B, T)}) fixes the draws; otherwise they come from ``generator``
        (drawn on the CPU so results do not depend on the device)."""
        if noise is None:
            noise = {"t": self.stratified_t(x.shape[0], generator), "u": torch.rand(x.shape, generator=generator)}
        return self._weighted_ce(model, x, valid, noise["t"].to(x.device), noise["u"]).sum()

    def evaluate(self, model, x, valid, generator):
        B, K = x.shape[0], self.mc_samples
        u = torch.rand(B, 1, generator=generator)  # one offset per sequence
        t = self.eps + (1 - self.eps) * (u + torch.arange(K)) / K  # (B, K), stratified in [eps, 1)
        xs = x.repeat_interleave(K, dim=0)  # (B*K, T): the K draws of a sequence are adjacent
        vs = valid.repeat_interleave(K, dim=0)
        u_mask = torch.rand(xs.shape, generator=generator)
        est = self._weighted_ce(model, xs, vs, t.reshape(-1).to(x.device), u_mask).view(B, K).double()
        var = est.var(dim=1) / K if K > 1 else torch.zeros_like(est[:, 0])  # MC variance of the mean
        return EvalSums(est.mean(dim=1).sum(), var.sum(), valid.sum().double())
