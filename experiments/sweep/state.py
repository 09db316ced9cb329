"""A sweep folder's state: its spec, its cells' run folders, and the sweep table rebuilt from them.

::

    DIR/sweep.yaml           the spec (a rerun with another spec is refused)
    DIR/cells/<cell id>/     one run folder per cell (``experiments.run_folder``)
    DIR/cells/<cell id>.log  the cell worker's output
    DIR/results.csv          every finished evaluation row of every cell (diverged cells left out)

``DIR/results.csv`` is rebuilt atomically from the cells' tables (``rebuild_table``) at the start
and end of every ``sweep run``, after every cell, and by ``sweep status --rebuild``: it never lags
the cells, and rows are never duplicated or lost.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import yaml

from analysis.table import COLUMNS, atomic_write_text, write_rows
from experiments.config import ConfigError, upgrade_legacy
from experiments.run_folder import FolderBusy, RunFolder
from experiments.sweep.spec import Cell, SweepSpec


def init_folder(root: Path, spec: SweepSpec) -> None:
    """Create (or reopen) a sweep folder; refuse one that holds a different sweep, or a file."""
    spec_file = root / "sweep.yaml"
    if root.exists() and not root.is_dir():
        raise ConfigError(f"sweep folder {str(root)!r} is a file")
    if spec_file.exists():
        old = yaml.safe_load(spec_file.read_text())
        if old != spec.to_dict() and not _same_cells(old, spec):
            raise ConfigError(f"{str(root)!r} holds a different sweep ({old.get('name')!r}); use another --out")
    elif root.exists() and any(root.iterdir()):
        raise ConfigError(f"output folder {str(root)!r} exists and is not a sweep folder")
    try:
        (root / "cells").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create sweep folder {str(root)!r}: {e.strerror}") from None
    atomic_write_text(spec_file, yaml.safe_dump(spec.to_dict(), sort_keys=False))


def _same_cells(old: dict, spec: SweepSpec) -> bool:
    """Whether a spec saved by an older version (flat diffusion settings) has the same cells as ``spec``."""
    try:
        settings = upgrade_legacy({"objective": "diffusion", **(old.get("settings") or {})})
        settings = {k: v for k, v in settings.items() if k != "objective" or "objective" in (old.get("settings") or {})}
        upgraded = SweepSpec.from_dict({**old, "settings": settings})
        return ({c.id: c.config.identity() for c in upgraded.cells()}
                == {c.id: c.config.identity() for c in spec.cells()})
    except (ConfigError, TypeError, AttributeError):
        return False


def load_spec(root: Path) -> SweepSpec:
    spec_file = root / "sweep.yaml"
    if not spec_file.is_file():
        raise ConfigError(f"{str(root)!r} is not a sweep folder (no sweep.yaml)")
    return SweepSpec.from_dict(yaml.safe_load(spec_file.read_text()), str(spec_file))


def check_cells(cells: list[Cell]) -> None:
    """Corpus-dependent checks of every cell (budget within the training split) before anything runs."""
    from data import check_budget, get_tokenizer, load_corpus, token_streams

    available: dict[tuple[str, int, int], int] = {}
    for cell in cells:
        d = cell.config.data
        key = (d.corpus, d.vocab_size, d.order_seed)
        if key not in available:
            corpus = load_corpus(d.corpus)
            available[key] = len(token_streams(corpus, get_tokenizer(corpus, d.vocab_size), d.order_seed).train)
        try:
            check_budget(cell.config.unique_tokens, cell.config.epochs, available[key],
                         cell.config.model_config().seq_len)
        except ValueError as e:
            raise ConfigError(f"sweep cell {cell.id}: {e}") from None


def rebuild_table(root: Path, cells: list[Cell]) -> int:
    """Rebuild ``DIR/results.csv`` from every cell's rows (diverged cells left out); returns the row count."""
    rows = []
    for cell in cells:
        folder = RunFolder(cell.folder(root))
        if folder.status() != "diverged":
            rows += [{**r, "cell": cell.id} for r in folder.rows()]
    rows.sort(key=lambda r: (r["objective"], int(r["unique_tokens"]), r["run_id"], float(r["epochs"])))
    write_rows(root / "results.csv", rows, columns=COLUMNS + ["cell"])
    return len(rows)


def status_table(root: Path) -> list[tuple[str, str, str]]:
    """(cell id, status, detail) of every cell of the sweep in ``root``."""
    out = []
    for cell in load_spec(root).cells():
        folder = RunFolder(cell.folder(root))
        state = folder.status()
        rows = folder.rows()
        detail = (f"epoch {rows[-1]['epochs']}/{cell.config.epochs} val_loss {float(rows[-1]['val_loss']):.4f}"
                  if rows else "")
        if state == "failed":
            detail = folder.last_error()
        elif state == "diverged":
            d = folder.info().get("diverged", {})
            detail = f"non-finite {d.get('what')} ({d.get('value')}) at step {d.get('step')}; " + detail
        elif state == "running":
            owner = folder.lock_owner() or {}
            detail = f"pid {owner.get('pid')} on {owner.get('host')}; " + detail
        out.append((cell.id, state, detail))
    return out


def _global_rank() -> int:
    """This process's rank in a multi-device or multi-node cell (0 for a single process): only rank 0 locks."""
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def run_cell(root: str | Path, cell_id: str, threads: int = 0) -> str:
    """Train one cell in this process (used by workers and SLURM jobs); returns its final status.
    ``threads`` applies unless the cell's config sets its own."""
    import dataclasses

    from experiments.train import Diverged, train

    root = Path(root)
    cell = next(c for c in load_spec(root).cells() if c.id == cell_id)
    folder = RunFolder(cell.folder(root))
    folder.path.parent.mkdir(parents=True, exist_ok=True)
    run = dataclasses.replace(cell.config.run, threads=cell.config.run.threads or threads)
    cfg = dataclasses.replace(cell.config, run=run)
    try:
        train(cfg, folder.path, run_id=cell.id, on_start=lambda _: folder.take_lock() if _global_rank() == 0 else None)
        folder.clear_errors()
        return "done"
    except FolderBusy as e:
        print(f"cell {cell.id}: {e}; left alone", file=sys.stderr)
        return "running"
    except Diverged as e:
        print(f"cell {cell.id}: {e}; kept its last finite checkpoint", file=sys.stderr)
        return "diverged"
    except Exception:
        traceback.print_exc()  # into the cell's log
        folder.record_error(traceback.format_exc())
        return "failed"
    finally:
        folder.release_lock()
