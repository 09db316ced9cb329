"""Load a trained model from a run's Lightning checkpoint, without Lightning or the corpus.

Checkpoints are self-contained: besides the weights they hold the model config, the objective,
the run config and the tokenizer (``checkpoint["crossover"]``). A Hugging Face folder written by
``crossover export`` loads the same way (``experiments.export.load_export``), so every consumer
(``crossover sample``, ``crossover eval``) takes a run folder, a ``.ckpt`` file or an export.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    epoch: int  # Lightning's 0-based index of the last completed epoch
    run_id: str = ""  # the run's id in results tables ("" when the checkpoint does not say)
    path: Path | None = None  # the checkpoint file or export folder it was loaded from
    info: dict[str, Any] = field(default_factory=dict)  # an export's crossover.json ({} for a checkpoint)

    @property
    def epochs_trained(self) -> int:
        """Completed epochs (checkpoints are written at the end of every epoch): ``epoch + 1``,
        the ``epochs`` value of the results row evaluated on these weights."""
        return self.epoch + 1


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, an exported folder (itself), or a run folder (its ``checkpoints/last.ckpt``)."""
    p = Path(path)
    if p.is_dir() and (p / "crossover.json").is_file():
        return p
    if p.is_dir():
        if not (p / "checkpoints" / "last.ckpt").is_file():
            raise CheckpointError(f"{str(path)!r} is neither a run folder (no checkpoints/last.ckpt) nor a crossover "
                                  "export (no crossover.json)")
        p = p / "checkpoints" / "last.ckpt"
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    return p


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> LoadedRun:
    from data.tokenizer import from_json
    from models import ModelConfig, Transformer

    p = resolve_checkpoint(path)
    if p.is_dir():
        from experiments.export import load_export

        return load_export(p, map_location)
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
    state.update(ckpt.get("ema") or {})  # a run with --ema-decay was evaluated with the averaged weights
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {str(p)!r} does not match its model config: "
                              f"{str(e).splitlines()[0]}") from None
    return LoadedRun(model.eval(), hp["objective"], from_json(info["tokenizer_json"]), info["config"],
                     ckpt.get("global_step", 0),
                     ckpt.get("epoch", 0), run_id=info.get("run_id", ""), path=p)
