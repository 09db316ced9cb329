"""The run configuration: typed groups, loadable from YAML, overridable from the CLI.

``RunConfig`` holds what is trained (objective, budget, epochs, model, attention, seed) and one
group per concern, each a dataclass whose field ``help`` strings become ``crossover train --help``::

    objective: diffusion             # registry name (models.objectives.OBJECTIVES)
    diffusion: {eps: 0.001, ...}     # the objective's own settings (its Config), under its name
    unique_tokens: 100000
    epochs: 4
    model: tiny                      # preset (models.config.PRESETS)
    attention: dense                 # + attn_block, attn_topk, attn_window, attn_stride
    model_args: {n_layer: 6}         # other overrides of the preset's fields
    data:  {corpus, vocab_size, order_seed, val_tokens}
    optim: {batch_size, batch_tokens, lr, schedule, ...}
    eval:  {eval_epochs, eval_batch_size}
    run:   {precision, devices, threads, ...}   # execution only: not part of the run's identity

Input may also give a group's keys flat (``lr: 2e-3`` for ``optim: {lr: 2e-3}``; every key name
is unique), and settings of objectives other than the chosen one (``ar: {}``, ``diffusion: {...}``),
which are ignored, so that one file serves a sweep over objectives. The resolved config (saved in
every run folder as ``config.yaml``) is the nested form. Types are checked from the annotations
(``Literal`` choices included); ranges are checked by the group that declares the field.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from models.config import DROPOUT_SITES, ModelConfig
from models.objectives import OBJECTIVES, ObjectiveConfig, objective_class


class ConfigError(ValueError):
    """A configuration that cannot run, with a one-line reason."""


def _f(default: Any, help: str) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def _positive(obj: Any, *names: str) -> None:
    for name in names:
        if getattr(obj, name) <= 0:
            raise ConfigError(f"{name} must be positive, got {getattr(obj, name)}")


def _non_negative(obj: Any, *names: str) -> None:
    for name in names:
        if getattr(obj, name) < 0:
            raise ConfigError(f"{name} must not be negative, got {getattr(obj, name)}")


# --------------------------------------------------------------------------- groups
@dataclass
class DataArgs:
    corpus: str = _f("stdlib", "corpus: stdlib (embedded default), files:GLOB or hf:NAME[:CONFIG]")
    vocab_size: int = _f(4096, "BPE vocabulary size, special tokens included")
    order_seed: int = _f(0, "seed of the fixed training-document order (keep fixed: budgets nest only under one order)")
    val_tokens: int = _f(16_384, "validation tokens scored at every evaluation (the first of the validation split)")

    def check(self) -> None:
        _positive(self, "val_tokens")
        if self.vocab_size < 259:
            raise ConfigError(f"vocab_size must be at least 259 (256 bytes + 3 special tokens), got {self.vocab_size}")


@dataclass
class OptimArgs:
    batch_size: int = _f(32, "sequences per optimiser step (global, across devices)")
    batch_tokens: int = _f(0, "global batch in tokens (0: batch_size sequences); "
                              "sets batch_size = batch_tokens / seq_len")
    lr: float = _f(1e-3, "peak learning rate")
    schedule: Literal["cosine", "constant", "wsd"] = _f("cosine", "learning-rate schedule after warmup: cosine, "
                                                                  "constant or wsd (warmup-stable-decay)")
    warmup_steps: int = _f(100, "linear warmup steps (at most a tenth of the run)")
    min_lr_ratio: float = _f(0.1, "final learning rate as a fraction of lr (cosine, wsd)")
    decay_fraction: float = _f(0.2, "wsd: fraction of the steps spent in the final linear decay")
    weight_decay: float = _f(0.1, "AdamW weight decay on matrices (not on norms)")
    beta1: float = _f(0.9, "AdamW beta1")
    beta2: float = _f(0.95, "AdamW beta2")
    grad_clip: float = _f(1.0, "gradient-norm clipping (0 disables)")
    ema_decay: float = _f(0.0, "exponential moving average of the weights, updated every optimiser step and "
                               "bias-corrected (no weight from the initialisation); validation, sampling and "
                               "export use the average (0: off, the raw weights)")
    # dropout per site (regularisers like weight_decay; they set the backbone's fields of the same name)
    resid_dropout: float | None = _f(None, "dropout on the attention and MLP outputs before each residual add "
                                           "(None: model_args' dropout, else 0)")
    attn_dropout: float | None = _f(None, "dropout on the attention probabilities, dense attention only "
                                          "(None: model_args' dropout, else 0)")
    embd_dropout: float | None = _f(None, "dropout on the token embeddings (None: model_args' dropout, else 0)")

    def check(self) -> None:
        _positive(self, "batch_size", "lr")
        _non_negative(self, "batch_tokens", "warmup_steps", "weight_decay", "grad_clip")
        for name in ("decay_fraction", "min_lr_ratio"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        for name in ("beta1", "beta2", "ema_decay", *DROPOUT_SITES):
            if getattr(self, name) is not None and not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} must lie in [0, 1), got {getattr(self, name)}")


@dataclass
class EvalArgs:
    eval_epochs: list[int] = _f([], "epochs after which to evaluate (empty: powers of two and the last epoch)")
    eval_batch_size: int = _f(32, "validation sequences per forward batch (diffusion: times mc_samples rows)")

    def check(self) -> None:
        _positive(self, "eval_batch_size")
        if not all(e > 0 for e in self.eval_epochs):
            raise ConfigError(f"eval_epochs must be a list of positive integers, got {self.eval_epochs!r}")

    def epochs_for(self, run_epochs: int) -> list[int]:
        """The epochs evaluated in a run of ``run_epochs`` epochs (always including the last)."""
        if self.eval_epochs:
            return sorted({e for e in self.eval_epochs if e <= run_epochs} | {run_epochs})
        return sorted({2**i for i in range(run_epochs.bit_length()) if 2**i <= run_epochs} | {run_epochs})


@dataclass
class ExecArgs:
    """How a run executes: none of it changes the run's results (left out of its identity)."""

    micro_batch_size: int = _f(0, "sequences per device per forward pass (0: the whole per-device batch); "
                                  "gradient accumulation = per-device batch / micro_batch_size")
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "64-true"] = _f(
        "auto", "Lightning precision: auto (bf16-mixed on GPU, 32-true on CPU), 32-true, bf16-mixed")
    accelerator: Literal["auto", "cpu", "gpu", "cuda"] = _f("auto", "Lightning accelerator: auto, cpu, gpu")
    devices: int = _f(1, "devices per node (ranks); more than one trains data-parallel")
    num_nodes: int = _f(1, "nodes (multi-node through Lightning's SLURM support)")
    strategy: Literal["auto", "ddp", "fsdp", "ddp_spawn"] = _f("auto", "auto (DDP for several devices), ddp, "
                                                                        "fsdp (large models)")
    compile: bool = _f(False, "torch.compile the backbone")
    peak_flops: float = _f(0.0, "peak FLOP/s per device for MFU (0: known GPUs' bf16 dense peak, none on CPU)")
    threads: int = _f(0, "torch CPU threads (0: all cores)")
    log_every_n_steps: int = _f(10, "training-metric logging interval in optimiser steps")
    progress: bool = _f(True, "show a progress bar")

    def check(self) -> None:
        _positive(self, "devices", "num_nodes", "log_every_n_steps")
        _non_negative(self, "micro_batch_size", "threads", "peak_flops")

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes


GROUPS: dict[str, type] = {"data": DataArgs, "optim": OptimArgs, "eval": EvalArgs, "run": ExecArgs}

#: fields of ModelConfig with a first-class flag; ``model_args`` may not set them
FIRST_CLASS_MODEL_FIELDS = ("attention", "attn_block", "attn_topk", "attn_window", "attn_stride", "causal",
                            "vocab_size", *DROPOUT_SITES)


@dataclass
class RunConfig:
    objective: str = _f("ar", "training objective: " + ", ".join(OBJECTIVES))
    unique_tokens: int = _f(100_000, "unique-token budget U: the first U tokens of the seeded training order")
    epochs: int = _f(4, "passes over the budget; tokens_seen = unique_tokens * epochs")
    model: str = _f("tiny", "model preset (models.config.PRESETS)")
    attention: str = _f("dense", "attention kind (dense, window, nsa, topk)")
    attn_block: int | None = _f(None, "block size in tokens of the block-sparse kinds (None: the preset's, 64)")
    attn_topk: int | None = _f(None, "key blocks selected per query block, nsa and topk (None: the preset's, 4)")
    attn_window: int | None = _f(None, "sliding window in tokens, window and nsa (None: the preset's, 128)")
    attn_stride: int | None = _f(None, "NSA compression stride in tokens (None: attn_block // 2)")
    model_args: dict = _f({}, "other overrides of the model preset's fields, e.g. {n_layer: 6, d_model: 96}")
    seed: int = _f(0, "seed of initialisation, data order within epochs and diffusion noise")
    objective_config: ObjectiveConfig | None = field(default=None, metadata={"help": "the objective's settings"})
    data: DataArgs = field(default_factory=DataArgs)
    optim: OptimArgs = field(default_factory=OptimArgs)
    eval: EvalArgs = field(default_factory=EvalArgs)
    run: ExecArgs = field(default_factory=ExecArgs)

    def __post_init__(self) -> None:
        if self.objective_config is None and self.objective in OBJECTIVES:
            self.objective_config = OBJECTIVES[self.objective].Config()

    # ------------------------------------------------------------------ derived
    def model_config(self, vocab_size: int | None = None) -> ModelConfig:
        """The backbone config: preset + model_args + attention and dropout settings + the objective's causal flag."""
        attn = {k: getattr(self, k) for k in FIRST_CLASS_MODEL_FIELDS[1:5] if getattr(self, k) is not None}
        drop = {k: getattr(self.optim, k) for k in DROPOUT_SITES if getattr(self.optim, k) is not None}
        args = {**self.model_args, **attn, **drop, "attention": self.attention,
                "causal": objective_class(self.objective).causal, "vocab_size": vocab_size or self.data.vocab_size}
        return ModelConfig.from_name(self.model, **args)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "objective_config":
                out[self.objective] = value.to_dict()
            else:
                out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        return out

    def identity(self) -> dict[str, Any]:
        """What defines the run's results (the execution group left out)."""
        return {k: v for k, v in self.to_dict().items() if k != "run"}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """Nested or flat keys (see the module docstring); refuses unknown keys and wrong types or ranges."""
        top, groups, objective_blocks = _split_keys(d)
        name = top.get("objective", "ar")
        if not isinstance(name, str) or name not in OBJECTIVES:
            raise ConfigError(f"unknown objective {name!r}; choose from {', '.join(OBJECTIVES)}")
        settings = objective_blocks.get(name, {})
        try:
            built = {g: _build(GROUPS[g], values, g) for g, values in groups.items()}
            for other, values in objective_blocks.items():  # settings of other objectives are checked too
                _build(OBJECTIVES[other].Config, values, other)
            obj_cfg = _build(OBJECTIVES[name].Config, settings, name)
            _check_types(cls, top, "")
        except (TypeError, ValueError) as e:
            raise ConfigError(str(e)) from None
        cfg = cls(**top, **built, objective_config=obj_cfg)
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
        name = overrides.get("objective", data.get("objective", "ar"))
        where = flat_keys()
        own = {k: v for k, v in overrides.items() if where.get(k) == "objective"}
        if own and isinstance(name, str):  # an objective flag goes to that objective's block, beating the file's
            overrides = {**{k: v for k, v in overrides.items() if k not in own}, name: own}
        return cls.from_dict(merge(data, overrides))  # merge nests both: a flag beats either form in the file

    def validate(self) -> None:
        """Cheap checks of names and ranges (corpus-dependent checks happen when data is prepared)."""
        from models.attention import attention_kinds
        from models.attention.registry import supports_mask
        from models.config import PRESETS

        if self.model not in PRESETS:
            raise ConfigError(f"unknown model {self.model!r}; choose from {', '.join(PRESETS)}")
        if self.attention not in attention_kinds():
            raise ConfigError(f"unknown attention kind {self.attention!r}; choose from {', '.join(attention_kinds())}")
        _positive(self, "unique_tokens", "epochs")
        if objective_class(self.objective).needs_attention_mask and not supports_mask(self.attention):
            masked = ", ".join(k for k in attention_kinds() if supports_mask(k))
            raise ConfigError(f"objective {self.objective!r} needs an attention kind that takes a mask ({masked}), "
                              f"not {self.attention!r}")
        for group in (self.data, self.optim, self.eval, self.run):
            group.check()
        if self.optim.ema_decay > 0 and self.run.strategy == "fsdp":
            raise ConfigError("ema_decay needs the whole weights on every rank: not with strategy fsdp")
        clash = sorted(set(self.model_args) & set(FIRST_CLASS_MODEL_FIELDS))
        if clash:
            raise ConfigError(f"model_args may not set {', '.join(clash)}: use --{clash[0].replace('_', '-')}"
                              + (" (set by the objective)" if clash[0] == "causal" else "")
                              + (" (set from the tokenizer; use --vocab-size)" if clash[0] == "vocab_size" else ""))
        try:
            self.model_config()
        except (TypeError, ValueError) as e:
            raise ConfigError(f"model settings (model_args, attn_*): {e}") from None


# --------------------------------------------------------------------------- helpers
@functools.cache
def flat_keys() -> dict[str, str]:  # cached: callers only read it
    """Flat key -> where it lives: a group name, "" (top level) or "objective"."""
    where = {f.name: "" for f in dataclasses.fields(RunConfig) if f.name not in ("objective_config", *GROUPS)}
    for g, cls in GROUPS.items():
        where.update({f.name: g for f in dataclasses.fields(cls)})
    for obj in OBJECTIVES.values():
        where.update({f.name: "objective" for f in dataclasses.fields(obj.Config)})
    return where


#: flat diffusion keys of configs written before the objectives owned their settings (0900ac3 and older)
_LEGACY_DIFFUSION = {"diffusion_eps": "eps", "mc_samples": "mc_samples", "elbo_estimator": "eval_estimator",
                     "train_estimator": "train_estimator"}


def upgrade_legacy(d: dict[str, Any]) -> dict[str, Any]:
    """A config.yaml of an older run folder in today's form: its flat diffusion settings go to the block
    of its objective when that objective has them (dropped for the others, which never used them)."""
    if not any(k in d for k in ("diffusion_eps", "elbo_estimator")):
        return d
    out = {k: v for k, v in d.items() if k not in _LEGACY_DIFFUSION}
    name = d.get("objective", "ar")
    fields = _fields(OBJECTIVES[name]) if name in OBJECTIVES else set()
    legacy = {new: d[old] for old, new in _LEGACY_DIFFUSION.items() if old in d and new in fields}
    if legacy:
        out[name] = {**legacy, **(d.get(name) or {})}
    return out


def nest(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` with flat group keys moved into their groups (``lr`` -> ``optim: {lr}``), so that mappings
    merge key by key whichever form each used; objective settings stay as given (their objective may
    not be known yet). A key given both flat and in its group is refused."""
    where = flat_keys()
    out: dict[str, Any] = {}
    for key, value in d.items():
        group = where.get(key)
        if group in GROUPS:
            nested = d.get(group)
            if isinstance(nested, dict) and key in nested:
                raise ConfigError(f"config key {key!r} is given both flat and as {group}.{key}")
            out.setdefault(group, {})[key] = value
        elif key in GROUPS and isinstance(value, dict):
            out[key] = {**out.get(key, {}), **value}
        else:
            out[key] = value
    return out


def lookup(d: dict[str, Any], key: str) -> Any:
    """The value of flat ``key`` in nested-or-flat ``d`` (None when absent)."""
    if key in d:
        return d[key]
    group = flat_keys().get(key)
    nested = d.get(group) if group in GROUPS else None
    return nested.get(key) if isinstance(nested, dict) else None


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` on top (both nested first, see ``nest``); groups and objective blocks
    merge key by key."""
    return _deep_merge(nest(base), nest(overrides))


def _deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in overrides.items():
        both = isinstance(v, dict) and isinstance(out.get(k), dict) and k != "model_args"
        out[k] = _deep_merge(out[k], v) if both else v
    return out


def _split_keys(d: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict], dict[str, dict]]:
    """(top-level fields, group -> keys, objective name -> settings) of nested-or-flat input ``d``."""
    where = flat_keys()
    top: dict[str, Any] = {}
    groups: dict[str, dict] = {g: {} for g in GROUPS}
    blocks: dict[str, dict] = {}
    name = d.get("objective", "ar")
    if not isinstance(name, str):
        raise ConfigError(f"config key 'objective' must be one objective name, got {name!r}")
    for key, value in d.items():
        if key in GROUPS or key in OBJECTIVES:
            if not isinstance(value, dict):
                raise ConfigError(f"config key {key!r} must be a mapping of its settings, got {value!r}")
            target = groups[key] if key in GROUPS else blocks.setdefault(key, {})
            for k in value:
                if (key in GROUPS and where.get(k) != key) or (key in OBJECTIVES and k not in _fields(OBJECTIVES[key])):
                    raise ConfigError(f"unknown config key {key}.{k}")
            target.update(value)
        elif where.get(key) == "objective":
            if name in OBJECTIVES and key not in _fields(OBJECTIVES[name]):
                raise ConfigError(f"config key {key!r} does not apply to objective {name!r}")
            block = d.get(name) if isinstance(d.get(name), dict) else {}
            if key in block and block[key] != value:
                raise ConfigError(f"config key {key!r} is given both flat and as {name}.{key}")
            blocks.setdefault(name, {})[key] = value
        elif key in where:
            (top if where[key] == "" else groups[where[key]])[key] = value
        else:
            raise ConfigError(f"unknown config key(s): {key}")
    return top, groups, blocks


def _fields(obj_cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(obj_cls.Config)}


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    _check_types(cls, values, prefix + ".")
    return cls(**values)


def _check_types(cls: type, values: dict[str, Any], prefix: str) -> None:
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        if not _matches(value, hints[name]):
            raise ConfigError(f"config key {prefix}{name} must be {_describe(hints[name])}, got {value!r}")


def _matches(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return value in args
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin is list:
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value) if args else isinstance(value, list)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # nested dataclasses are built, not passed in


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin is list:
        return f"a list of {_describe(args[0]).removeprefix('an ').removeprefix('a ')}s" if args else "a list"
    if args:
        return " or ".join(_describe(a) for a in args)
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a mapping",
            type(None): "null"}.get(hint, getattr(hint, "__name__", str(hint)))


def choices(hint: Any) -> tuple[Any, ...] | None:
    """The Literal choices of a field's type, for the CLI."""
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else None
