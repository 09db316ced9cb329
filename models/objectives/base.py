"""What every training objective provides, and the special token ids it may use.

An objective is a small class with a typed ``Config`` (its settings, validated where they are
declared) and the three things the trainer needs: ``loss_sum`` for training, ``evaluate`` for the
deterministic validation loss, and ``describe`` for the columns it adds to a results row. A new
objective is one file in this folder plus one line in ``OBJECTIVES`` (``__init__.py``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal, NamedTuple

import torch
from torch import nn


class TokenIds(NamedTuple):
    """Special token ids of the tokenizer (``data.tokenizer`` fixes them: [PAD] 0, [MASK] 1, [EOD] 2)."""

    pad: int = 0
    mask: int = 1
    eod: int = 2  # document separator; the AR objective's start token


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


@dataclass(frozen=True)
class ObjectiveConfig:
    """Base of the objectives' settings; each objective subclasses it with its own fields."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Objective:
    """Base class of the objectives (see the module docstring)."""

    #: registry name, written into results tables
    name: ClassVar[str]
    #: attention direction the backbone must use with this objective
    causal: ClassVar[bool]
    #: how a trained model generates: token by token (``left_to_right``), a whole template in parallel
    #: (``parallel``: the masked-diffusion samplers), or blocks left to right, parallel inside (``blockwise``)
    decoding: ClassVar[Literal["left_to_right", "parallel", "blockwise"]]
    #: the objective's settings class
    Config: ClassVar[type[ObjectiveConfig]] = ObjectiveConfig
    #: whether the objective passes its own attention mask to the backbone (only some attention kinds take one)
    needs_attention_mask: ClassVar[bool] = False

    def __init__(self, config: ObjectiveConfig | None = None, ids: TokenIds = TokenIds()):
        self.config = config if config is not None else self.Config()
        if not isinstance(self.config, self.Config):
            raise TypeError(f"objective {self.name!r} takes a {self.Config.__name__}, got {type(self.config).__name__}")
        self.ids = ids

    @property
    def uses_training_noise(self) -> bool:
        """Whether ``training_noise`` draws anything (the trainer skips making generators otherwise)."""
        return False

    @property
    def eval_passes(self) -> int:
        """Forward passes of the backbone per validation sequence."""
        return 1

    def describe(self) -> dict[str, Any]:
        """Columns this objective adds to every results row (``analysis.table.EXTRA_COLUMNS``)."""
        return {"mc_samples": self.eval_passes, "elbo_weight": "", "mask_eps": ""}

    def training_noise(self, row_generators: list[torch.Generator], positions: torch.Tensor, group: int,
                       offset_generator: torch.Generator, seq_len: int,
                       progress: float = 1.0) -> dict[str, torch.Tensor] | None:
        """Random inputs of a training batch drawn from per-row generators and a per-step one, so that
        the draws do not depend on how a global batch is split over ranks and micro-batches; None for
        objectives without randomness. ``progress`` (step / total steps) lets the noise follow a
        curriculum."""
        return None

    def loss_sum(self, model: nn.Module, x: torch.Tensor, valid: torch.Tensor,
                 generator: torch.Generator | None = None, noise: dict | None = None) -> torch.Tensor:
        """Training loss summed over the valid tokens of ``x`` (B, T); ``valid`` (B, T) bool marks real
        tokens. Dividing by the number of valid tokens gives the per-token loss."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, x: torch.Tensor, valid: torch.Tensor,
                 generator: torch.Generator | None = None) -> EvalSums:
        """Deterministic (given ``generator``) validation sums on ``x``."""
        raise NotImplementedError
