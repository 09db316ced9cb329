"""The run configuration: one typed dataclass, loadable from YAML, overridable from the CLI.

Every field has a ``help`` string (it becomes ``crossover train --help``). ``model_args``
overrides fields of the model preset (``models.config.ModelConfig``), e.g. ``{n_layer: 6}``.
The resolved config (defaults + YAML + CLI) is saved in every run folder as ``config.yaml``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from models.config import ModelConfig


class ConfigError(ValueError):
    """A configuration that cannot run, with a one-line reason."""


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class RunConfig:
    # what is trained
    objective: str = _f("ar", "training objective: ar (next-token) or diffusion (masked diffusion)")
    unique_tokens: int = _f(100_000, "unique-token budget U: the first U tokens of the seeded training order")
    epochs: int = _f(4, "passes over the budget; tokens_seen = unique_tokens * epochs")
    model: str = _f("tiny", "model preset (models.config.PRESETS)")
    attention: str = _f("dense", "attention kind (dense, window, nsa, topk)")
    model_args: dict = _f({}, "overrides of the model preset's fields, e.g. {n_layer: 6, dropout: 0.1}")
    seed: int = _f(0, "seed of initialisation, data order within epochs and diffusion noise")
    # data
    corpus: str = _f("stdlib", "corpus: stdlib (embedded default), files:GLOB or hf:NAME[:CONFIG]")
    vocab_size: int = _f(4096, "BPE vocabulary size, special tokens included")
    order_seed: int = _f(0, "seed of the fixed training-document order (keep fixed: budgets nest only under one order)")
    val_tokens: int = _f(16_384, "validation tokens scored at every evaluation (the first of the validation split)")
    # optimisation
    batch_size: int = _f(32, "sequences per optimiser step (global, across devices)")
    lr: float = _f(1e-3, "peak learning rate")
    schedule: str = _f("cosine", "learning-rate schedule after warmup: cosine, constant or wsd (warmup-stable-decay)")
    warmup_steps: int = _f(100, "linear warmup steps (at most a tenth of the run)")
    min_lr_ratio: float = _f(0.1, "final learning rate as a fraction of lr (cosine, wsd)")
    decay_fraction: float = _f(0.2, "wsd: fraction of the steps spent in the final linear decay")
    weight_decay: float = _f(0.1, "AdamW weight decay on matrices (not on norms)")
    beta1: float = _f(0.9, "AdamW beta1")
    beta2: float = _f(0.95, "AdamW beta2")
    grad_clip: float = _f(1.0, "gradient-norm clipping (0 disables)")
    # evaluation
    eval_epochs: list = _f([], "epochs after which to evaluate (empty: powers of two and the last epoch)")
    mc_samples: int = _f(4, "diffusion: Monte Carlo draws per validation sequence for the ELBO")
    diffusion_eps: float = _f(1e-3, "diffusion: smallest masking probability t")
    elbo_estimator: str = _f("count", "diffusion validation ELBO estimator: count (exactly l masked, weight L/l; "
                                      "lower variance) or time (t-stratified, weight 1/t)")
    train_estimator: str = _f("time", "diffusion training loss: time (t ~ U(eps, 1) stratified, i.i.d. masks, "
                                      "weight 1/t) or count (exactly l masked, weight L/l)")
    eval_batch_size: int = _f(32, "validation sequences per forward batch (diffusion: times mc_samples rows)")
    # execution
    batch_tokens: int = _f(0, "global batch in tokens (0: batch_size sequences); sets batch_size = batch_tokens / seq_len")
    micro_batch_size: int = _f(0, "sequences per device per forward pass (0: the whole per-device batch); "
                                  "gradient accumulation = per-device batch / micro_batch_size", resolved=False)
    precision: str = _f("auto", "Lightning precision: auto (bf16-mixed on GPU, 32-true on CPU), 32-true, bf16-mixed",
                        resolved=False)
    accelerator: str = _f("auto", "Lightning accelerator: auto, cpu, gpu", resolved=False)
    devices: int = _f(1, "devices per node (ranks); more than one trains data-parallel", resolved=False)
    num_nodes: int = _f(1, "nodes (multi-node through Lightning's SLURM support)", resolved=False)
    strategy: str = _f("auto", "auto (DDP for several devices), ddp, fsdp (large models)", resolved=False)
    compile: bool = _f(False, "torch.compile the backbone", resolved=False)
    peak_flops: float = _f(0.0, "peak FLOP/s per device for MFU (0: known GPUs' bf16 dense peak, none on CPU)",
                           resolved=False)
    threads: int = _f(0, "torch CPU threads (0: all cores)", resolved=False)
    log_every_n_steps: int = _f(10, "training-metric logging interval in optimiser steps", resolved=False)
    progress: bool = _f(True, "show a progress bar", resolved=False)

    # ------------------------------------------------------------------ helpers
    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes

    def batch_layout(self, seq_len: int) -> tuple[int, int, int]:
        """(global batch, per-device batch, accumulation steps) in sequences; refuses uneven splits."""
        if self.batch_tokens:
            if self.batch_tokens % seq_len:
                raise ConfigError(f"batch_tokens {self.batch_tokens} is not a multiple of seq_len {seq_len}")
            global_batch = self.batch_tokens // seq_len
        else:
            global_batch = self.batch_size
        if global_batch % self.world_size:
            raise ConfigError(f"global batch of {global_batch} sequences does not split over {self.world_size} ranks")
        per_device = global_batch // self.world_size
        micro = self.micro_batch_size or per_device
        if per_device % micro:
            raise ConfigError(f"per-device batch {per_device} is not a multiple of micro_batch_size {micro}")
        return global_batch, per_device, per_device // micro

    def model_config(self, vocab_size: int | None = None) -> ModelConfig:
        """The backbone config: preset + model_args + attention + causal flag from the objective."""
        from models.objectives import OBJECTIVES

        causal = OBJECTIVES[self.objective].causal
        args = {**self.model_args, "attention": self.attention, "causal": causal,
                "vocab_size": vocab_size or self.vocab_size}
        return ModelConfig.from_name(self.model, **args)

    def resolved_eval_epochs(self) -> list[int]:
        if self.eval_epochs:
            return sorted({int(e) for e in self.eval_epochs if 0 < int(e) <= self.epochs} | {self.epochs})
        powers = {2**i for i in range(self.epochs.bit_length()) if 2**i <= self.epochs}
        return sorted(powers | {self.epochs})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """Fields that define the run's results (execution-only fields such as threads left out)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("resolved", True)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown config key(s): {', '.join(unknown)}")
        cfg = cls(**d)
        cfg.validate()
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> RunConfig:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {str(p)!r} must hold a mapping of config keys")
        return cls.from_dict({**data, **overrides})

    def validate(self) -> None:
        """Cheap checks of names and ranges (corpus-dependent checks happen when data is prepared)."""
        from models.attention import attention_kinds
        from models.config import PRESETS
        from models.objectives import OBJECTIVES

        for name, f in ((f.name, f) for f in dataclasses.fields(self)):
            want = {"int": int, "float": (int, float), "str": str, "bool": bool, "list": list, "dict": dict}[f.type]
            value = getattr(self, name)
            if not isinstance(value, want) or (f.type in ("int", "float") and isinstance(value, bool)):
                raise ConfigError(f"config key {name!r} must be {f.type}, got {value!r}")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"unknown objective {self.objective!r}; choose from {', '.join(OBJECTIVES)}")
        if self.model not in PRESETS:
            raise ConfigError(f"unknown model {self.model!r}; choose from {', '.join(PRESETS)}")
        if self.attention not in attention_kinds():
            raise ConfigError(f"unknown attention kind {self.attention!r}; choose from {', '.join(attention_kinds())}")
        if self.schedule not in ("cosine", "constant", "wsd"):
            raise ConfigError(f"unknown schedule {self.schedule!r}; choose from cosine, constant, wsd")
        if self.unique_tokens <= 0:
            raise ConfigError(f"unique_tokens must be positive, got {self.unique_tokens}")
        if self.epochs <= 0:
            raise ConfigError(f"epochs must be positive, got {self.epochs}")
        for name in ("batch_size", "val_tokens", "mc_samples", "eval_batch_size", "log_every_n_steps"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.vocab_size < 259:
            raise ConfigError(f"vocab_size must be at least 259 (256 bytes + 3 special tokens), got {self.vocab_size}")
        if self.threads < 0:
            raise ConfigError(f"threads must not be negative, got {self.threads}")
        if not all(isinstance(e, int) and not isinstance(e, bool) and e > 0 for e in self.eval_epochs):
            raise ConfigError(f"eval_epochs must be a list of positive integers, got {self.eval_epochs!r}")
        if self.elbo_estimator not in ("count", "time") or self.train_estimator not in ("count", "time"):
            raise ConfigError(f"unknown ELBO estimator {self.elbo_estimator!r} / {self.train_estimator!r}; "
                              "use count or time")
        if not 0 < self.diffusion_eps < 1:
            raise ConfigError(f"diffusion_eps must lie in (0, 1), got {self.diffusion_eps}")
        if not 0 <= self.decay_fraction <= 1 or not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError("decay_fraction and min_lr_ratio must lie in [0, 1]")
        if self.precision not in ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "64-true"):
            raise ConfigError(f"unknown precision {self.precision!r}; use auto, 32-true, bf16-mixed or 16-mixed")
        if self.strategy not in ("auto", "ddp", "fsdp", "ddp_spawn"):
            raise ConfigError(f"unknown strategy {self.strategy!r}; use auto, ddp or fsdp")
        for name in ("devices", "num_nodes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("batch_tokens", "micro_batch_size"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}")
        try:
            self.model_config()
        except (TypeError, ValueError) as e:
            raise ConfigError(f"model_args: {e}") from None
