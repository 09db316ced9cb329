"""Training objectives, each a small module: ``ar`` (next-token CE) and ``diffusion`` (masked ELBO)."""

from __future__ import annotations

from typing import Any

from models.objectives.autoregressive import AutoregressiveObjective
from models.objectives.base import EvalSums, Objective
from models.objectives.diffusion import MaskedDiffusionObjective

OBJECTIVES: dict[str, type] = {
    AutoregressiveObjective.name: AutoregressiveObjective,
    MaskedDiffusionObjective.name: MaskedDiffusionObjective,
}


def build_objective(name: str, **kwargs: Any) -> Objective:
    """``kwargs``: ``bos_id`` (AR), ``mask_id``, ``eps``, ``mc_samples`` (diffusion); extras are ignored."""
    try:
        cls = OBJECTIVES[name]
    except KeyError:
        raise KeyError(f"unknown objective {name!r}; choose from {', '.join(OBJECTIVES)}") from None
    return cls(**kwargs)


__all__ = ["OBJECTIVES", "AutoregressiveObjective", "EvalSums", "MaskedDiffusionObjective",
           "Objective", "build_objective"]
