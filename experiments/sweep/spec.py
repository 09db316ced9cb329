"""Sweep specs: a YAML grid of runs, expanded into cells with stable ids.

::

    name: quick
    axes:                      # the grid: every combination is one cell
      objective: [ar, diffusion]
      unique_tokens: [25000, 50000, 100000]
      epochs: [64]             # or `compute: [1e12, ...]` (FLOPs): epochs = ceil(C / (6 N U))
      model: [small]
      attention: [dense]
      seed: [0]
      weight_decay: {ar: [0.1, 0.5], diffusion: [0.1]}   # per objective: tuned separately, no overrides
    settings:                  # RunConfig keys shared by every cell (flat or grouped)
      batch_size: 8
      diffusion: {mc_samples: 4}   # an objective's settings apply to its cells only
    overrides:                 # optional: settings for the cells matching `where`
      - where: {objective: ar}
        set: {epochs: 16}
    slurm: {partition: gpu, gpus_per_node: 1, timeout_min: 240}   # submitit parameters

Expanding a spec builds no model: parameter counts come in closed form (``models.count_params``).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from experiments.config import ConfigError, RunConfig, flat_keys, lookup, merge
from models import count_params
from models.objectives import OBJECTIVES

AXES = ("objective", "unique_tokens", "epochs", "compute", "model", "attention", "seed")


@functools.cache
def setting_axes() -> frozenset[str]:
    """Other run-config keys that may be axes (``lr``, ``weight_decay``, ``ema_decay``, ...): each cell
    id then names the value (``-lr0.002``)."""
    return frozenset(k for k, where in flat_keys().items()
                     if where not in ("", "objective", "run") and k not in ("corpus", "eval_epochs"))


@functools.cache
def objective_axes() -> dict[str, set[str]]:  # cached: callers only read it
    """Axes that set an objective's own setting (e.g. ``block_size``) -> the objectives that have it.
    Such an axis applies to those objectives' cells only ("tune per objective"); other cells ignore it."""
    out: dict[str, set[str]] = {}
    for name, cls in OBJECTIVES.items():
        for f in dataclasses.fields(cls.Config):
            out.setdefault(f.name, set()).add(name)
    return out
SPEC_KEYS = {"name", "description", "axes", "settings", "overrides", "slurm"}


@dataclass
class Cell:
    id: str
    config: RunConfig

    def folder(self, root: Path) -> Path:
        return root / "cells" / self.id


def preset_names() -> list[str]:
    folder = resources.files("experiments") / "presets"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def _mapping(value: Any, what: str, source: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"sweep spec {source!r}: {what} must be a mapping, got {value!r}")
    return value


@dataclass
class SweepSpec:
    name: str
    axes: dict[str, list[Any]]
    settings: dict[str, Any] = field(default_factory=dict)
    overrides: list[dict[str, Any]] = field(default_factory=list)
    slurm: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    @classmethod
    def load(cls, preset_or_file: str) -> SweepSpec:
        """A preset name (``experiments/presets/<name>.yaml``) or a YAML file."""
        path = Path(preset_or_file)
        if path.is_file():
            try:
                text = path.read_text()
            except (OSError, UnicodeDecodeError) as e:
                raise ConfigError(f"sweep spec {preset_or_file!r} cannot be read: {e}") from None
        else:
            preset = resources.files("experiments") / "presets" / f"{preset_or_file}.yaml"
            if not preset.is_file():
                raise ConfigError(f"no sweep preset or file {preset_or_file!r}; presets: {', '.join(preset_names())}")
            text = preset.read_text()
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"sweep spec {preset_or_file!r} is not valid YAML: {str(e).splitlines()[0]}") from None
        return cls.from_dict(data, str(preset_or_file))

    @classmethod
    def from_dict(cls, data: Any, source: str = "spec") -> SweepSpec:
        if not isinstance(data, dict):
            raise ConfigError(f"sweep spec {source!r} must be a mapping with 'axes'")
        unknown = sorted(set(data) - SPEC_KEYS)
        if unknown:
            raise ConfigError(f"sweep spec {source!r}: unknown key(s) {', '.join(unknown)}")
        axes = data.get("axes")
        if not isinstance(axes, dict) or not axes:
            raise ConfigError(f"sweep spec {source!r} needs a non-empty 'axes' mapping")
        if isinstance(axes.get("objective"), dict):
            raise ConfigError(f"sweep spec {source!r}: axis 'objective' must be a list of objectives")
        settings = _mapping(data.get("settings"), "'settings'", source)
        objectives = [str(o) for o in _objectives(axes, settings)]
        for name, values in axes.items():
            if isinstance(values, dict):  # per objective: {ar: [...], diffusion: [...]}
                stray = sorted(set(map(str, values)) - set(objectives))
                if stray:
                    raise ConfigError(f"sweep spec {source!r}: axis {name!r} names {', '.join(stray)}, not an "
                                      f"objective of the sweep ({', '.join(objectives)})")
                if not all(isinstance(own, list) and own for own in values.values()):
                    raise ConfigError(f"sweep spec {source!r}: axis {name!r} gives an objective an empty list")
                values = _all_values(values)
            if name not in AXES and name not in objective_axes() and name not in setting_axes():
                raise ConfigError(f"sweep spec {source!r}: unknown axis {name!r}; axes are {', '.join(AXES)}, "
                                  f"the objectives' settings ({', '.join(objective_axes())}) and any other "
                                  "crossover train key (lr, weight_decay, ema_decay, ...)")
            if not isinstance(values, list) or not values:
                raise ConfigError(f"sweep spec {source!r}: axis {name!r} is empty (give a non-empty list)")
        if "epochs" in axes and "compute" in axes:
            raise ConfigError(f"sweep spec {source!r}: give either an 'epochs' or a 'compute' axis, not both")
        for c in _all_values(axes.get("compute", [])):
            if isinstance(c, bool) or not isinstance(c, (int, float, str)) or not _positive_number(c):
                raise ConfigError(f"sweep spec {source!r}: compute values must be positive numbers of FLOPs, got {c!r}")
        clash = sorted(k for k in set(settings) & set(axes) if not isinstance(axes[k], dict))  # per objective:
        # the setting holds for the objectives the axis does not name
        if clash:
            raise ConfigError(f"sweep spec {source!r}: {', '.join(clash)} is both an axis and a setting")
        overrides = data.get("overrides") or []
        if not isinstance(overrides, list):
            raise ConfigError(f"sweep spec {source!r}: 'overrides' must be a list of {{where, set}}, got {overrides!r}")
        for o in overrides:
            if not isinstance(o, dict) or set(o) != {"where", "set"}:
                raise ConfigError(f"sweep spec {source!r}: each override needs exactly 'where' and 'set', got {o!r}")
            _mapping(o["where"], "an override's 'where'", source)
            _mapping(o["set"], "an override's 'set'", source)
        return cls(name=str(data.get("name") or Path(source).stem), axes=axes, settings=settings,
                   overrides=overrides, slurm=_mapping(data.get("slurm"), "'slurm'", source),
                   description=str(data.get("description") or ""))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def cells(self) -> list[Cell]:
        """Every combination of the axes as a validated RunConfig with a stable, readable id."""
        cells: list[Cell] = []
        seen: dict[str, RunConfig] = {}
        for point in self.points():
            try:
                cfg = self._cell_config(point)
            except ConfigError as e:
                raise ConfigError(f"sweep cell {point}: {e}") from None
            cell_id = _cell_id(cfg, point)
            if cell_id in seen:  # an objective-setting axis collapses for objectives without the setting
                if seen[cell_id] != cfg:
                    raise ConfigError(f"sweep cells {cell_id} differ in settings the cell id does not show "
                                      f"(an override matching an axis of another objective?)")
                continue
            seen[cell_id] = cfg
            cells.append(Cell(cell_id, cfg))
        return cells

    def points(self) -> list[dict[str, Any]]:
        """The grid: per objective, the product of the axes' values (a per-objective axis gives that
        objective's own list; an objective it does not name leaves the setting at its default)."""
        out = []
        for objective in _objectives(self.axes, self.settings):
            axes = {n: (v.get(objective) if isinstance(v, dict) else v) for n, v in self.axes.items()}
            axes = {n: ([objective] if n == "objective" else v) for n, v in axes.items() if v is not None}
            names = list(axes)
            out += [dict(zip(names, values)) for values in itertools.product(*(axes[n] for n in names))]
        return out

    def _cell_config(self, point: dict[str, Any]) -> RunConfig:
        per_objective = objective_axes()
        objective = point.get("objective", self.settings.get("objective", "ar"))
        plain = {k: v for k, v in point.items() if k != "compute" and k not in per_objective}
        cfg_dict = merge(self.settings, plain)
        own = {k: v for k, v in point.items() if objective in per_objective.get(k, ())}
        if own:  # this objective's settings from its axes
            cfg_dict = merge(cfg_dict, {objective: own})
        seen = {k: v for k, v in point.items() if k not in per_objective or k in own}  # what `where` may match
        for o in self.overrides:
            if all(seen.get(k, lookup(cfg_dict, k)) == v for k, v in o["where"].items()):
                cfg_dict = merge(cfg_dict, o["set"])
        if "compute" in point:
            if "unique_tokens" not in cfg_dict:
                raise ConfigError("a 'compute' axis needs unique_tokens (an axis or a setting)")
            n = count_params(RunConfig.from_dict({**cfg_dict, "epochs": 1}).model_config(), non_embedding=True)
            cfg_dict["epochs"] = max(1, math.ceil(float(point["compute"]) / (6 * n * cfg_dict["unique_tokens"])))
        return RunConfig.from_dict(cfg_dict)


def _objectives(axes: dict[str, Any], settings: dict[str, Any]) -> list[Any]:
    """The sweep's objectives: its ``objective`` axis, else the one of its settings (default ar)."""
    return axes.get("objective") or [settings.get("objective", "ar")]


def _all_values(values: list[Any] | dict[str, list[Any]]) -> list[Any]:
    return [v for own in values.values() for v in own] if isinstance(values, dict) else values


def _positive_number(value: Any) -> bool:
    try:
        return float(value) > 0 and math.isfinite(float(value))
    except ValueError:
        return False


def _cell_id(cfg: RunConfig, point: dict[str, Any]) -> str:
    settings = cfg.objective_config.to_dict()
    own = [f"{k}{settings[k]}" for k in point if k in objective_axes() and k in settings]  # e.g. block_size4
    parts = [cfg.objective, *own, f"U{cfg.unique_tokens}", f"E{cfg.epochs}", cfg.model]
    if "compute" in point:
        parts.append(f"C{float(point['compute']):.0e}".replace("+", ""))
    parts += [cfg.attention, f"s{cfg.seed}"]
    parts += [f"{k}{point[k]:g}" if isinstance(point[k], float) else f"{k}{point[k]}"
              for k in point if k in setting_axes() and k not in AXES]  # e.g. lr0.002
    return "-".join(str(p) for p in parts)
