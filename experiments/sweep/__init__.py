"""Crossover sweeps: a YAML grid of runs (``spec``), the sweep folder's state and table (``state``),
and the executors that train its cells (``executors``). Idempotent: finished cells are skipped,
interrupted ones resume from their checkpoint, the table is rebuilt from the cells."""

from experiments.sweep.executors import run_local, run_submitit
from experiments.sweep.spec import AXES, Cell, SweepSpec, preset_names
from experiments.sweep.state import check_cells, init_folder, load_spec, rebuild_table, run_cell, status_table

__all__ = ["AXES", "Cell", "SweepSpec", "check_cells", "init_folder", "load_spec", "preset_names", "rebuild_table",
           "run_cell", "run_local", "run_submitit", "status_table"]
