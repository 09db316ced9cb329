"""Executors: cell workers as local subprocesses, or a job array through submitit (SLURM or local).

Local workers die with their runner: each is started with the parent-death signal set (Linux
``prctl(PR_SET_PDEATHSIG, SIGTERM)``), so a runner killed even by SIGKILL takes its workers down
and a rerun can resume their cells at once (their locks are then stale: their pid is gone). A cell
another live process is training is waited for, not skipped: the rerun of a killed runner, or a
second runner on the same folder, ends with every cell finished and a true account of each.

``workers="auto"`` (the CLI's default) trains small models in as many single-thread workers as
there are cores, larger ones in one worker with every core (``auto_workers``).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from experiments.run_folder import RunFolder
from experiments.sweep.spec import Cell
from experiments.sweep.state import rebuild_table, run_cell

POLL_S = 0.5
#: ``auto_workers``: largest non-embedding parameter count N trained with one thread per cell worker.
#: Below it, small matrices leave a second intra-op thread mostly idle, so one single-thread worker per
#: core trains more tokens/s in all (benchmarks/RESULTS.md, "Throughput of the quick settings").
AUTO_MAX_PARAMS = 1_000_000


def auto_workers(cells: list[Cell], cores: int | None = None, max_params: int = AUTO_MAX_PARAMS) -> int:
    """Workers for ``workers="auto"``: one single-thread worker per core (never more than cells) when
    every cell's model has at most ``max_params`` non-embedding parameters and trains on the CPU with
    the threads it is given; else one worker with every core."""
    from models import count_params

    def small_cpu_cell(cell: Cell) -> bool:
        run = cell.config.run
        gpu = run.accelerator in ("gpu", "cuda") or (run.accelerator == "auto" and _cuda_available())
        return (not gpu and run.threads <= 1
                and count_params(cell.config.model_config(), non_embedding=True) <= max_params)

    cores = cores or os.cpu_count() or 1
    if not cells or not all(small_cpu_cell(c) for c in cells):
        return 1
    return max(1, min(cores, len(cells)))


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _cost(cell: Cell) -> float:
    """A cell's training cost in FLOPs: contract 3's 6 N D, but with N counting the embedding too (the tied
    output layer is much of a small model's work)."""
    from analysis.table import flops
    from models import count_params

    return flops(count_params(cell.config.model_config()), cell.config.unique_tokens, cell.config.epochs)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: workers may outlive a SIGKILLed runner (their locks then keep reruns waiting)


def _start(root: Path, cell: Cell, threads: int) -> subprocess.Popen:
    with open(root / "cells" / f"{cell.id}.log", "a") as log:
        cmd = [sys.executable, "-m", "experiments.sweep", str(root), cell.id, str(threads)]
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)


def run_local(root: Path, cells: list[Cell], workers: int | str, report: Callable[[str], None] = print,
              progress: Callable[[int, str], None] | None = None) -> dict[str, str]:
    """Run every unfinished cell in ``workers`` subprocesses (cores // workers threads each; ``"auto"``:
    ``auto_workers`` of the unfinished cells); returns each cell's final status. ``report`` gets one
    line per event, ``progress(done, postfix)`` updates."""
    folders = {c.id: RunFolder(c.folder(root)) for c in cells}
    final = {c.id: s for c in cells if (s := folders[c.id].status()) in ("done", "diverged")}
    todo = sorted((c for c in cells if c.id not in final), key=lambda c: -_cost(c))  # longest first: no long tail
    auto = workers == "auto"
    workers = auto_workers(todo) if auto else workers
    threads = max(1, (os.cpu_count() or 1) // workers)
    if auto and todo:
        report(f"workers: {workers} x {threads} thread(s) (auto)")
    waiting: set[str] = set()  # cells trained by another live process
    running: dict[str, subprocess.Popen] = {}
    try:
        while todo or running or waiting:
            for cell in list(todo):
                if len(running) >= workers:
                    break
                if folders[cell.id].status() == "running":  # another process holds its lock
                    if cell.id not in waiting:
                        owner = folders[cell.id].lock_owner() or {}
                        report(f"cell {cell.id} is being trained by pid {owner.get('pid')} on {owner.get('host')}; "
                               "waiting for it")
                    waiting.add(cell.id)
                    continue
                todo.remove(cell)
                waiting.discard(cell.id)
                running[cell.id] = _start(root, cell, threads)
            time.sleep(POLL_S)
            for cid, proc in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[cid]
                final[cid] = folders[cid].status()
                rebuild_table(root, cells)
                if final[cid] != "done":
                    report(f"cell {cid} {final[cid]}: see {root / 'cells' / (cid + '.log')}")
            for cid in list(waiting):
                state = folders[cid].status()
                if state in ("done", "diverged"):  # the other process finished it
                    waiting.discard(cid)
                    todo[:] = [c for c in todo if c.id != cid]
                    final[cid] = state
                    rebuild_table(root, cells)
            if progress is not None:
                progress(len(final), " | ".join(_cell_progress(folders[c]) for c in running))
    except KeyboardInterrupt:
        for proc in running.values():
            proc.send_signal(signal.SIGINT)
        for proc in running.values():
            proc.wait()
        raise
    return final


def _cell_progress(folder: RunFolder) -> str:
    try:
        d = json.loads(folder.progress_file.read_text())
        return f"{folder.path.name} epoch {d['epoch']}/{d['epochs']}"
    except (OSError, ValueError, KeyError):
        return f"{folder.path.name} starting"


def run_submitit(root: Path, cells: list[Cell], slurm: dict[str, Any], cluster: str | None = None,
                 report: Callable[[str], None] = print) -> dict[str, str]:
    """One job array through submitit (``cluster="local"`` runs the jobs as local processes)."""
    import submitit

    folders = {c.id: RunFolder(c.folder(root)) for c in cells}
    todo = [c for c in cells if folders[c.id].status() not in ("done", "diverged", "running")]
    executor = submitit.AutoExecutor(folder=root / "slurm" / "%j", cluster=cluster)
    params = {"timeout_min": 60 * 24, "slurm_array_parallelism": 64, **slurm}
    if cluster == "local":
        params = {k: v for k, v in params.items() if k in ("timeout_min", "gpus_per_node", "cpus_per_task", "nodes")}
    executor.update_parameters(name=f"crossover-{root.name}", **params)
    jobs = executor.map_array(run_cell, [str(root)] * len(todo), [c.id for c in todo])
    report(f"submitted {len(jobs)} cell(s) as job array {jobs[0].job_id.split('_')[0] if jobs else '-'}")
    results = {c.id: folders[c.id].status() for c in cells if c not in todo}
    for cell, job in zip(todo, jobs):
        try:
            results[cell.id] = job.result()
        except Exception:  # the job itself died (time limit, node failure): record it
            results[cell.id] = "failed"
            folders[cell.id].record_error(traceback.format_exc())
        rebuild_table(root, cells)
    return results
