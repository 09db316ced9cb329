"""Crossover sweeps: a YAML grid of runs, an idempotent resumable runner, one results table.

A sweep spec::

    name: quick
    axes:                      # the grid: every combination is one cell
      objective: [ar, diffusion]
      unique_tokens: [25000, 50000, 100000]
      epochs: [64]             # or `compute: [1e12, ...]` (FLOPs): epochs = ceil(C / (6 N U))
      model: [small]
      attention: [dense]
      seed: [0]
    settings:                  # RunConfig keys shared by every cell
      batch_size: 8
      schedule: constant
    overrides:                 # optional: settings for the cells matching `where`
      - where: {objective: ar}
        set: {epochs: 16}
    slurm: {partition: gpu, gpus_per_node: 1, timeout_min: 240}   # submitit parameters

Each cell is one run folder ``DIR/cells/<cell id>`` trained by ``experiments.train.train``, which
skips a finished run and resumes an interrupted one from its last checkpoint. ``DIR/results.csv``
is rebuilt (atomically) from the cells' tables after every cell, so rows are never duplicated or
lost. A cell that fails writes ``error.txt`` and the others go on.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from experiments.config import ConfigError, RunConfig
from analysis.table import COLUMNS, atomic_write_text, read_rows, write_rows

AXES = ("objective", "unique_tokens", "epochs", "compute", "model", "attention", "seed")
SPEC_KEYS = {"name", "description", "axes", "settings", "overrides", "slurm"}


@dataclass
class Cell:
    id: str
    config: RunConfig

    def folder(self, root: Path) -> Path:
        return root / "cells" / self.id


@dataclass
class SweepSpec:
    name: str
    axes: dict[str, list[Any]]
    settings: dict[str, Any] = field(default_factory=dict)
    overrides: list[dict[str, Any]] = field(default_factory=list)
    slurm: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, preset_or_file: str) -> SweepSpec:
        """A preset name (``experiments/presets/<name>.yaml``) or a YAML file."""
        path = Path(preset_or_file)
        if not path.is_file():
            preset = resources.files("experiments") / "presets" / f"{preset_or_file}.yaml"
            if not preset.is_file():
                raise ConfigError(f"no sweep preset or file {preset_or_file!r}; presets: {', '.join(preset_names())}")
            text = preset.read_text()
        else:
            text = path.read_text()
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
        for name, values in axes.items():
            if name not in AXES:
                raise ConfigError(f"sweep spec {source!r}: unknown axis {name!r}; axes are {', '.join(AXES)}")
            if not isinstance(values, list) or not values:
                raise ConfigError(f"sweep spec {source!r}: axis {name!r} is empty (give a non-empty list)")
        if "epochs" in axes and "compute" in axes:
            raise ConfigError(f"sweep spec {source!r}: give either an 'epochs' or a 'compute' axis, not both")
        settings = data.get("settings") or {}
        clash = sorted(set(settings) & set(axes))
        if clash:
            raise ConfigError(f"sweep spec {source!r}: {', '.join(clash)} is both an axis and a setting")
        for o in data.get("overrides") or []:
            if not isinstance(o, dict) or set(o) != {"where", "set"}:
                raise ConfigError(f"sweep spec {source!r}: each override needs exactly 'where' and 'set'")
        return cls(name=str(data.get("name") or Path(source).stem), axes=axes, settings=settings,
                   overrides=data.get("overrides") or [], slurm=data.get("slurm") or {},
                   description=str(data.get("description") or ""))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # ------------------------------------------------------------------ cells
    def cells(self) -> list[Cell]:
        """Every combination of the axes as a validated RunConfig with a stable, readable id."""
        names = list(self.axes)
        cells, seen = [], set()
        for values in itertools.product(*(self.axes[n] for n in names)):
            point = dict(zip(names, values))
            cfg_dict = {**self.settings, **{k: v for k, v in point.items() if k != "compute"}}
            for o in self.overrides:
                if all(point.get(k, cfg_dict.get(k)) == v for k, v in o["where"].items()):
                    cfg_dict.update(o["set"])
            if "compute" in point:
                if "unique_tokens" not in cfg_dict:
                    raise ConfigError("sweep spec: a 'compute' axis needs unique_tokens (an axis or a setting)")
                cfg_dict["epochs"] = 1  # placeholder to build the model and count N
                n = _non_embedding_params(RunConfig.from_dict(cfg_dict))
                cfg_dict["epochs"] = max(1, math.ceil(float(point["compute"]) / (6 * n * cfg_dict["unique_tokens"])))
            try:
                cfg = RunConfig.from_dict(cfg_dict)
            except ConfigError as e:
                raise ConfigError(f"sweep cell {point}: {e}") from None
            cell_id = _cell_id(cfg, point)
            if cell_id in seen:
                continue
            seen.add(cell_id)
            cells.append(Cell(cell_id, cfg))
        return cells


def _non_embedding_params(cfg: RunConfig) -> int:
    from models import Transformer

    return Transformer(cfg.model_config()).num_params(non_embedding=True)


def _cell_id(cfg: RunConfig, point: dict[str, Any]) -> str:
    parts = [cfg.objective, f"U{cfg.unique_tokens}", f"E{cfg.epochs}", cfg.model]
    if "compute" in point:
        parts.append(f"C{float(point['compute']):.0e}".replace("+", ""))
    parts += [cfg.attention, f"s{cfg.seed}"]
    return "-".join(str(p) for p in parts)


def preset_names() -> list[str]:
    folder = resources.files("experiments") / "presets"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


# --------------------------------------------------------------------------- checks before any cell
def check_cells(cells: list[Cell]) -> None:
    """Corpus-dependent checks of every cell (budget within the training split) before anything runs."""
    from data import check_budget, get_tokenizer, load_corpus, token_streams

    available: dict[tuple[str, int, int], int] = {}
    for cell in cells:
        c = cell.config
        key = (c.corpus, c.vocab_size, c.order_seed)
        if key not in available:
            corpus = load_corpus(c.corpus)
            tok = get_tokenizer(corpus, c.vocab_size)
            available[key] = len(token_streams(corpus, tok, c.order_seed).train)
        try:
            check_budget(c.unique_tokens, c.epochs, available[key])
        except ValueError as e:
            raise ConfigError(f"sweep cell {cell.id}: {e}") from None


# --------------------------------------------------------------------------- folder state
def init_folder(root: Path, spec: SweepSpec) -> None:
    """Create (or reopen) a sweep folder; refuse one that holds a different sweep."""
    spec_file = root / "sweep.yaml"
    if spec_file.exists():
        old = yaml.safe_load(spec_file.read_text())
        if old != spec.to_dict():
            raise ConfigError(f"{str(root)!r} holds a different sweep ({old.get('name')!r}); use another --out")
    elif root.exists() and any(root.iterdir()):
        raise ConfigError(f"output folder {str(root)!r} exists and is not a sweep folder")
    (root / "cells").mkdir(parents=True, exist_ok=True)
    atomic_write_text(spec_file, yaml.safe_dump(spec.to_dict(), sort_keys=False))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed worker whose parent died too lingers as a zombie until reaped
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def cell_status(folder: Path) -> str:
    """done | running | failed | interrupted | pending."""
    info = folder / "run.json"
    if info.exists() and json.loads(info.read_text()).get("status") == "done":
        return "done"
    lock = folder / "lock.json"
    if lock.exists():
        owner = json.loads(lock.read_text())
        if owner.get("host") == socket.gethostname() and _pid_alive(int(owner["pid"])):
            return "running"
        if owner.get("host") != socket.gethostname():
            return "running"  # another node's job: trust its lock
    if (folder / "error.txt").exists() or error_file(folder).exists():
        return "failed"
    if (folder / "checkpoints" / "last.ckpt").exists():
        return "interrupted"
    return "pending"


def error_file(folder: Path) -> Path:
    """Where a cell that failed before its run folder existed records its error (beside the folder)."""
    return folder.parent / f"{folder.name}.error.txt"


def aggregate(root: Path, cells: list[Cell]) -> int:
    """Rebuild ``DIR/results.csv`` from every cell's rows; returns the number of rows."""
    rows = []
    for cell in cells:
        rows += [{**r, "cell": cell.id} for r in read_rows(cell.folder(root) / "results.csv")]
    rows.sort(key=lambda r: (r["objective"], int(r["unique_tokens"]), r["run_id"], int(r["epochs"])))
    write_rows(root / "results.csv", rows, columns=COLUMNS + ["cell"])
    return len(rows)


def status_table(root: Path) -> list[tuple[str, str, str]]:
    spec = SweepSpec.from_dict(yaml.safe_load((root / "sweep.yaml").read_text()), str(root / "sweep.yaml"))
    out = []
    for cell in spec.cells():
        folder = cell.folder(root)
        state = cell_status(folder)
        rows = read_rows(folder / "results.csv")
        detail = f"epoch {rows[-1]['epochs']}/{cell.config.epochs} val_loss {float(rows[-1]['val_loss']):.4f}" if rows else ""
        if state == "failed":
            err = folder / "error.txt" if (folder / "error.txt").exists() else error_file(folder)
            detail = err.read_text().strip().splitlines()[-1][:100]
        out.append((cell.id, state, detail))
    return out


# --------------------------------------------------------------------------- running one cell
class CellBusy(RuntimeError):
    """Another live process holds the cell's lock."""


def run_cell(root: str | Path, cell_id: str, threads: int = 0) -> str:
    """Train one cell in this process (used by workers and SLURM jobs); returns its final status.
    ``threads`` applies unless the cell's config sets its own."""
    from experiments.train import train

    root = Path(root)
    spec = SweepSpec.from_dict(yaml.safe_load((root / "sweep.yaml").read_text()))
    cell = next(c for c in spec.cells() if c.id == cell_id)
    folder = cell.folder(root)
    folder.parent.mkdir(parents=True, exist_ok=True)
    cfg = dataclasses.replace(cell.config, threads=cell.config.threads or threads, progress=False)
    lock = folder / "lock.json"
    owns_lock = False

    def take_lock() -> None:  # O_EXCL: a second runner on the same folder refuses instead of training twice
        nonlocal owns_lock
        if lock.exists() and cell_status(folder) != "running":
            lock.unlink()  # stale: its process is gone
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            raise CellBusy(cell.id) from None
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}, f)
        owns_lock = True

    try:
        train(cfg, folder, run_id=cell.id, on_start=take_lock)
        for stale in (folder / "error.txt", error_file(folder)):
            stale.unlink(missing_ok=True)
        return "done"
    except CellBusy:
        print(f"cell {cell.id} is being trained by another process (lock {lock}); left alone", file=sys.stderr)
        return "running"
    except Exception:
        traceback.print_exc()  # into the cell's log
        target = folder / "error.txt" if (folder / "config.yaml").exists() else error_file(folder)
        atomic_write_text(target, traceback.format_exc())
        return "failed"
    finally:
        if owns_lock:
            lock.unlink(missing_ok=True)


# --------------------------------------------------------------------------- executors
def run_local(root: Path, cells: list[Cell], workers: int, progress: bool = True) -> dict[str, str]:
    """Run pending cells in ``workers`` subprocesses, each with cores // workers threads."""
    from tqdm import tqdm

    threads = max(1, (os.cpu_count() or 1) // workers)
    todo = [c for c in cells if cell_status(c.folder(root)) not in ("done", "running")]  # running: another runner
    todo.sort(key=lambda c: -c.config.unique_tokens * c.config.epochs)  # longest first: the last cells end together
    results = {c.id: cell_status(c.folder(root)) for c in cells if c not in todo}
    bar = tqdm(total=len(cells), initial=len(results), desc="cells", unit="cell", disable=not progress,
               dynamic_ncols=True)
    running: dict[str, tuple[subprocess.Popen, Cell]] = {}
    try:
        while todo or running:
            while todo and len(running) < workers:
                cell = todo.pop(0)
                log = open(root / "cells" / f"{cell.id}.log", "a")
                cmd = [sys.executable, "-m", "experiments.sweep", str(root), cell.id, str(threads)]
                running[cell.id] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), cell)
                log.close()
            time.sleep(0.5)
            for cid, (proc, cell) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[cid]
                results[cid] = cell_status(cell.folder(root))
                bar.update(1)
                aggregate(root, cells)
                if results[cid] != "done":
                    tqdm.write(f"cell {cid} {results[cid]}: see {root / 'cells' / (cid + '.log')}")
            if progress:
                bar.set_postfix_str(" | ".join(_cell_progress(root, c) for _, c in running.values()))
    except KeyboardInterrupt:
        for proc, _ in running.values():
            proc.send_signal(signal.SIGINT)
        for proc, _ in running.values():
            proc.wait()
        raise
    finally:
        bar.close()
    aggregate(root, cells)
    return results


def _cell_progress(root: Path, cell: Cell) -> str:
    p = cell.folder(root) / "progress.json"
    try:
        d = json.loads(p.read_text())
        return f"{cell.id} epoch {d['epoch']}/{d['epochs']}"
    except (OSError, ValueError, KeyError):
        return f"{cell.id} starting"


def run_submitit(root: Path, cells: list[Cell], slurm: dict[str, Any], cluster: str | None = None) -> dict[str, str]:
    """One job array through submitit (``cluster="local"`` runs the jobs as local processes)."""
    import submitit

    todo = [c for c in cells if cell_status(c.folder(root)) not in ("done", "running")]
    executor = submitit.AutoExecutor(folder=root / "slurm" / "%j", cluster=cluster)
    params = {"timeout_min": 60 * 24, "slurm_array_parallelism": 64, **slurm}
    if cluster == "local":
        params = {k: v for k, v in params.items() if not k.startswith("slurm_") and k in ("timeout_min", "gpus_per_node",
                                                                                            "cpus_per_task", "nodes")}
    executor.update_parameters(name=f"crossover-{root.name}", **params)
    jobs = executor.map_array(run_cell, [str(root)] * len(todo), [c.id for c in todo])
    print(f"submitted {len(jobs)} cell(s) as job array {jobs[0].job_id.split('_')[0] if jobs else '-'}",
          file=sys.stderr)
    results = {c.id: cell_status(c.folder(root)) for c in cells if c not in todo}
    for cell, job in zip(todo, jobs):
        try:
            results[cell.id] = job.result()
        except Exception:  # the job itself died (time limit, node failure): record it
            results[cell.id] = "failed"
            folder = cell.folder(root)
            atomic_write_text(folder / "error.txt" if (folder / "config.yaml").exists() else error_file(folder),
                              traceback.format_exc())
        aggregate(root, cells)
    return results


if __name__ == "__main__":  # worker entry point: python -m experiments.sweep ROOT CELL_ID THREADS
    status = run_cell(sys.argv[1], sys.argv[2], int(sys.argv[3]))
    sys.exit(0 if status == "done" else 1)
