"""Training objectives on the shared backbone: autoregressive, masked diffusion and block diffusion.

``OBJECTIVES`` is the registry: name -> objective class. Each class carries its settings class
(``Objective.Config``), its attention direction (``causal``) and its loss, evaluation and results
columns. A new objective is one module in this folder and one line below.
"""

from __future__ import annotations

from typing import Any

from models.objectives.autoregressive import ARConfig, AutoregressiveObjective, shift_right
from models.objectives.base import EvalSums, Objective, ObjectiveConfig, TokenIds
from models.objectives.block_diffusion import BlockDiffusionConfig, BlockDiffusionObjective
from models.objectives.diffusion import DiffusionConfig, MaskedDiffusionObjective
from models.objectives.schedule import LinearSchedule

OBJECTIVES: dict[str, type[Objective]] = {
    AutoregressiveObjective.name: AutoregressiveObjective,
    MaskedDiffusionObjective.name: MaskedDiffusionObjective,
    BlockDiffusionObjective.name: BlockDiffusionObjective,
}


def objective_class(name: str) -> type[Objective]:
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise KeyError(f"unknown objective {name!r}; choose from {', '.join(OBJECTIVES)}") from None


def build_objective(name: str, config: ObjectiveConfig | None = None, ids: TokenIds = TokenIds(),
                    **settings: Any) -> Objective:
    """The objective ``name`` with ``config`` (or its ``Config(**settings)``; unknown settings are refused)."""
    cls = objective_class(name)
    if config is None:
        config = cls.Config(**settings)
    elif settings:
        raise TypeError("give either a config or settings, not both")
    return cls(config, ids)


__all__ = ["OBJECTIVES", "ARConfig", "AutoregressiveObjective", "BlockDiffusionConfig", "BlockDiffusionObjective",
           "DiffusionConfig", "EvalSums", "LinearSchedule",
           "MaskedDiffusionObjective", "Objective", "ObjectiveConfig", "TokenIds", "build_objective",
           "objective_class", "shift_right"]
