"""Load a trained model from a run's Lightning checkpoint, without Lightning or the corpus.

Checkpoints are self-contained: besides the weights they hold the model config, the objective,
the run config and the tokenizer (``checkpoint["crossover"]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or not a crossover run, with a one-line reason."""


@dataclass
class LoadedRun:
    model: torch.nn.Module  # models.Transformer in eval mode
    objective: str  # "ar" or "diffusion"
    tokenizer: Any  # transformers.PreTrainedTokenizerFast
    config: dict[str, Any]  # the run's resolved RunConfig
    step: int
    epoch: int


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run folder (its ``checkpoints/last.ckpt``)."""
    p = Path(path)
    if p.is_dir():
        p = p / "checkpoints" / "last.ckpt"
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    return p


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> LoadedRun:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from data.tokenizer import EOD, MASK, PAD
    from models import ModelConfig, Transformer

    p = resolve_checkpoint(path)
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=False)
    except Exception as e:
        raise CheckpointError(f"checkpoint {str(p)!r} is not readable ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else 'corrupt file'})") from None
    if not isinstance(ckpt, dict) or "crossover" not in ckpt or "hyper_parameters" not in ckpt:
        raise CheckpointError(f"checkpoint {str(p)!r} is not a crossover training checkpoint")
    hp, info = ckpt["hyper_parameters"], ckpt["crossover"]
    model = Transformer(ModelConfig(**hp["model_config"]))
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {str(p)!r} does not match its model config: {str(e).splitlines()[0]}") from None
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(info["tokenizer_json"]), pad_token=PAD,
                                        mask_token=MASK, eos_token=EOD, sep_token=EOD,
                                        clean_up_tokenization_spaces=False)
    return LoadedRun(model.eval(), hp["objective"], tokenizer, info["config"], ckpt.get("global_step", 0),
                     ckpt.get("epoch", 0))
