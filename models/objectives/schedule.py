"""The masking schedule shared by the diffusion objective (forward process) and its samplers (reverse).

Linear schedule: at noise level t in [0, 1] each token is [MASK] with probability t (alpha_t = 1 - t).
Training draws t = eps + (1 - eps) * s for s in [0, 1); the reverse step from t to s < t unmasks each
[MASK] with probability (t - s) / t (MDLM's ancestral update under this schedule).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LinearSchedule:
    eps: float = 1e-3  # smallest masking probability used in training

    def __post_init__(self) -> None:
        if not 0 < self.eps < 1:
            raise ValueError(f"eps must lie in (0, 1), got {self.eps}")

    def mask_probability(self, strata: torch.Tensor) -> torch.Tensor:
        """Noise level t for uniforms ``strata`` in [0, 1): t = eps + (1 - eps) * s."""
        return self.eps + (1 - self.eps) * strata

    @staticmethod
    def unmask_probability(t: float, s: float) -> float:
        """Probability that a token masked at level t is unmasked at level s < t."""
        return (t - s) / t

    @staticmethod
    def grid(steps: int) -> list[float]:
        """Noise levels 1 = t_0 > t_1 > ... > t_steps = 0 of ``steps`` equal reverse steps."""
        return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).tolist()
