"""Masked (absorbing-state) diffusion with a linear schedule: the SMDM / LLaDA / MDLM ELBO.

Forward process: each token is replaced by [MASK] independently with probability t, t in [eps, 1].
Training: t ~ U(eps, 1) (``LinearSchedule``) drawn antithetically (stratified) across the batch,
t_i = eps + (1 - eps) * ((u + i / B) mod 1), and

    loss = sum over masked tokens of CE(x_0 | x_t) / t   /   number of valid tokens,

which is, in expectation over t and the masks, the negative ELBO per token (``loss_sum`` returns
the numerator; the trainer divides by the valid tokens of the whole step, across ranks) (an upper bound on
the NLL). eps = 1e-3 as in MDLM, SMDM and Prabhudesai et al.

Validation: K Monte Carlo draws per sequence, stratified (in the masked count, or in t) and masked
by a seeded generator, so the estimate is deterministic; the variance of the estimate is returned
with it (sum over sequences of the between-draw variance divided by K). See ``evaluate``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from models.objectives.base import EvalSums, Objective, ObjectiveConfig, TokenIds
from models.objectives.schedule import LinearSchedule

Estimator = Literal["count", "time"]


@dataclass(frozen=True)
class DiffusionConfig(ObjectiveConfig):
    """Settings of masked diffusion (the estimators are described in ``MaskedDiffusionObjective``)."""

    eps: float = field(default=1e-3, metadata={"help": "diffusion: smallest masking probability t"})
    mc_samples: int = field(default=4, metadata={"help": "diffusion: Monte Carlo draws per validation sequence "
                                                         "for the ELBO"})
    eval_estimator: Estimator = field(default="count", metadata={
        "help": "diffusion validation ELBO estimator: count (exactly l masked, weight L/l; lower variance) "
                "or time (t-stratified, weight 1/t)"})
    train_estimator: Estimator = field(default="time", metadata={
        "help": "diffusion training loss: time (t ~ U(eps, 1) stratified, i.i.d. masks, weight 1/t) "
                "or count (exactly l masked, weight L/l)"})

    curriculum_fraction: float = field(default=0.0, metadata={
        "help": "diffusion: easy-to-hard curriculum, the share of the training steps during which the masking "
                "rate is capped at curriculum_max_t (0: off; the full ELBO throughout)"})
    curriculum_max_t: float = field(default=0.5, metadata={
        "help": "diffusion: the masking-rate cap during the curriculum"})

    def __post_init__(self) -> None:
        LinearSchedule(self.eps)  # checks eps
        if not 0 <= self.curriculum_fraction <= 1:
            raise ValueError(f"curriculum_fraction must lie in [0, 1], got {self.curriculum_fraction}")
        if not self.eps < self.curriculum_max_t <= 1:
            raise ValueError(f"curriculum_max_t must lie in (eps, 1], got {self.curriculum_max_t}")
        if self.mc_samples < 1:
            raise ValueError(f"mc_samples must be at least 1, got {self.mc_samples}")
        for name in ("eval_estimator", "train_estimator"):
            if getattr(self, name) not in ("count", "time"):
                raise ValueError(f"{name} must be count or time, got {getattr(self, name)!r}")


class MaskedDiffusionObjective(Objective):
    name = "diffusion"
    causal = False
    decoding = "parallel"
    Config = DiffusionConfig

    def __init__(self, config: DiffusionConfig | None = None, ids: TokenIds = TokenIds()):
        super().__init__(config, ids)
        self.schedule = LinearSchedule(self.config.eps)

    @property
    def uses_training_noise(self) -> bool:
        return True

    @property
    def eval_passes(self) -> int:
        return self.config.mc_samples

    def describe(self):
        c = self.config
        return {"mc_samples": c.mc_samples, "elbo_weight": {"count": "L/l", "time": "1/t"}[c.eval_estimator],
                "mask_eps": c.eps, "curriculum": f"{c.curriculum_fraction:g}@{c.curriculum_max_t:g}"
                if c.curriculum_fraction else ""}

    def _weighted_ce(self, model: nn.Module, x, valid, t, u) -> torch.Tensor:
        """Per-sequence sum of CE / t over masked tokens, for noise levels t (B,) and uniforms u (B, T)."""
        masked = (u.to(x.device) < t[:, None]) & valid  # (B, T)
        xt = torch.where(masked, torch.full_like(x, self.ids.mask), x)
        logits = model(xt)  # (B, T, V)
        ce = F.cross_entropy(logits[masked].float(), x[masked], reduction="none")  # (M,)
        per_token = torch.zeros(x.shape, dtype=ce.dtype, device=x.device)
        per_token[masked] = ce / t[:, None].expand_as(x)[masked]
        return per_token.sum(dim=1)  # (B,)

    @staticmethod
    def exact_count(strata: torch.Tensor, u: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(t, u') such that ``u' < t`` masks exactly l = ceil(strata * L) of each row's L valid tokens
        (the l with the smallest ``u``), with weight 1 / t = L / l: the exact-count ("1/l") form."""
        n_valid = valid.sum(dim=1).cpu().clamp_min(1)  # (B,)
        count = torch.ceil(strata * n_valid).clamp_min(1)
        rank = u.masked_fill(~valid.cpu(), 2.0).argsort(dim=1).argsort(dim=1)  # padding ranks last
        return (count / n_valid).float(), (rank.float() + 0.5) / n_valid[:, None]

    @staticmethod
    def strata(positions: torch.Tensor, group: int, offset: torch.Tensor) -> torch.Tensor:
        """Antithetic levels in [0, 1) for rows at ``positions`` of a group of ``group`` rows sharing a
        uniform ``offset``: (offset + position / group) mod 1."""
        return (offset + positions / group) % 1.0

    def training_noise(self, row_generators, positions, group, offset_generator, seq_len, progress=1.0):
        """Noise drawn per row (its own generator) and per optimiser step (the shared offset), so the
        draws do not depend on how a global batch is split over ranks and micro-batches."""
        strata = self.strata(positions, group, torch.rand(1, generator=offset_generator))
        u = torch.stack([torch.rand(seq_len, generator=g) for g in row_generators])
        return {"strata": self.curriculum(strata, progress), "u": u}

    def curriculum(self, strata: torch.Tensor, progress: float) -> torch.Tensor:
        """Easy to hard: before ``curriculum_fraction`` of training (``progress`` in [0, 1]), strata are
        scaled so that t = eps + (1 - eps) s stays at most ``curriculum_max_t``; unchanged afterwards."""
        c = self.config
        if progress >= c.curriculum_fraction:
            return strata
        return strata * (c.curriculum_max_t - c.eps) / (1 - c.eps)

    def loss_sum(self, model, x, valid, generator=None, noise=None):
        """``noise`` ({"strata": (B,) in [0, 1), "u": (B, T)}) fixes the draws; otherwise they come from
        ``generator`` (drawn on the CPU so results do not depend on the device). ``train_estimator``
        "time" (default) maps strata to t = eps + (1 - eps) * strata with i.i.d. masks; "count" masks
        exactly ceil(strata * L) tokens with weight L / l (same expectation, lower variance)."""
        if noise is None:
            B = x.shape[0]
            noise = {"strata": self.strata(torch.arange(B), B, torch.rand(1, generator=generator)),
                     "u": torch.rand(x.shape, generator=generator)}
        if self.config.train_estimator == "count":
            t, u = self.exact_count(noise["strata"], noise["u"], valid)
        else:
            t, u = self.schedule.mask_probability(noise["strata"]), noise["u"]
        return self._weighted_ce(model, x, valid, t.to(x.device), u).sum()

    def evaluate(self, model, x, valid, generator=None):
        """K draws per sequence; the estimator is ``config.eval_estimator``:

        * ``"count"`` (default; LLaDA's estimator): draw k masks exactly l_k = ceil((u + k) / K * L) of the
          L valid tokens (stratified counts) and weight the summed CE by L / l_k;
        * ``"time"`` (MDLM / SMDM): stratified t_k = eps + (1 - eps) (u + k) / K, i.i.d. masks, weight 1 / t_k.

        Both estimate the same continuous-time ELBO (the ``count`` form integrates the binomial mask count
        out exactly, so it has lower variance; ``time`` truncates t below eps)."""
        B, K = x.shape[0], self.config.mc_samples
        u = torch.rand(B, 1, generator=generator)  # one offset per sequence
        strata = (u + torch.arange(K)) / K  # (B, K), stratified in [0, 1)
        xs = x.repeat_interleave(K, dim=0)  # (B*K, T): the K draws of a sequence are adjacent
        vs = valid.repeat_interleave(K, dim=0)
        scores = torch.rand(xs.shape, generator=generator)
        if self.config.eval_estimator == "time":
            t = self.schedule.mask_probability(strata.reshape(-1))
        else:
            t, scores = self.exact_count(strata.reshape(-1), scores, vs)
        est = self._weighted_ce(model, xs, vs, t.to(x.device), scores)
        est = est.view(B, K).double()
        var = est.var(dim=1) / K if K > 1 else torch.zeros_like(est[:, 0])  # MC variance of the mean
        return EvalSums(est.mean(dim=1).sum(), var.sum(), valid.sum().double())
