"""Downstream evaluation through lm-evaluation-harness, and its table ``downstream.csv``.

``evaluate_downstream(RUN_OR_EXPORT, tasks)`` loads the run as ``experiments.lm_eval_model.CrossoverLM``
and runs ``lm_eval.simple_evaluate`` on the tasks: the local ones shipped in ``experiments/tasks``
(``crossover_code_mc``; no network) and, where the hub can be reached, any lm-eval task. Results
become rows of a sibling of ``results.csv``, keyed by (run_id, epochs, task, metric)::

    run_id, objective, epochs, step, task, metric, value, stderr, samples, num_fewshot, limit,
    mc_samples, mc_se_mean, source

``epochs`` is the number of completed epochs the weights were trained for (the ``epochs`` of the
matching ``results.csv`` row); ``stderr`` is lm-eval's standard error of the metric over
documents; for a diffusion run ``mc_samples`` is the ELBO's Monte Carlo draws per request and
``mc_se_mean`` the mean Monte Carlo standard error (nats) of a request's log-likelihood.
"""

from __future__ import annotations

import contextlib
import functools
import math
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis.table import read_rows, write_rows

DOWNSTREAM_FILE = "downstream.csv"
DOWNSTREAM_COLUMNS = ["run_id", "objective", "epochs", "step", "task", "metric", "value", "stderr", "samples",
                      "num_fewshot", "limit", "mc_samples", "mc_se_mean", "source"]
DOWNSTREAM_KEY = ("run_id", "epochs", "task", "metric")


@dataclass
class DownstreamResult:
    """The rows written for one evaluation, and lm-eval's own results dict."""

    rows: list[dict[str, Any]]
    results: dict[str, Any]


def quiet_lm_eval() -> None:
    """Keep lm-eval's informational chatter (and its per-task warnings about custom datasets) off stderr."""
    import logging

    for name in ("lm_eval", "lm-eval"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _git_hash() -> str | None:
    """lm-eval's ``git describe --always`` of the working directory, without git's complaint on stderr
    when it is not a repository."""
    try:
        return subprocess.check_output(["git", "describe", "--always"], stderr=subprocess.DEVNULL).decode().strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return None


@contextlib.contextmanager
def plain_output() -> Iterator[None]:
    """lm-eval's document bar only on a terminal (tqdm's ``disable=None``: off when the stream is a
    file, so a log gets no redraws) and no ``fatal: not a git repository`` line outside a repository."""
    import lm_eval.api.task as task_module
    import lm_eval.evaluator as evaluator_module
    from tqdm import tqdm

    patches = [(task_module, "tqdm", functools.partial(tqdm, disable=None)),
               (evaluator_module, "get_git_commit_hash", _git_hash)]
    saved = [(m, name, getattr(m, name)) for m, name, _ in patches if hasattr(m, name)]
    for m, name, value in patches:
        if hasattr(m, name):
            setattr(m, name, value)
    try:
        yield
    finally:
        for m, name, value in saved:
            setattr(m, name, value)


def task_manager(tasks: list[str], include_path: str | Path | None = None) -> Any:
    """An lm-eval TaskManager that knows the local tasks (and the built-in ones only when a requested
    task is not local: indexing them takes seconds)."""
    from lm_eval.tasks import TaskManager

    from experiments.tasks import LOCAL_TASKS, TASKS_DIR

    paths = [str(TASKS_DIR)] + ([str(include_path)] if include_path else [])
    return TaskManager(include_path=paths, include_defaults=not set(tasks) <= set(LOCAL_TASKS))


def result_rows(results: dict[str, Any], lm: Any, *, limit: int | None,
                num_fewshot: int | None) -> list[dict[str, Any]]:
    """One row per (task, metric) of lm-eval's ``results`` for the model ``lm`` (a ``CrossoverLM``)."""
    run, mc = lm.run, lm.mc_summary()
    base = {"run_id": run.run_id or (run.path.name if run.path else ""), "objective": run.objective,
            "epochs": run.epochs_trained, "step": run.step, "num_fewshot": "" if num_fewshot is None else num_fewshot,
            "limit": "" if limit is None else limit, "mc_samples": mc.get("mc_samples", ""),
            "mc_se_mean": mc.get("mc_se_mean", ""), "source": str(run.path or "")}
    rows = []
    for task, metrics in sorted(results["results"].items()):
        samples = results.get("n-samples", {}).get(task, {}).get("effective", "")
        for key, value in sorted(metrics.items()):
            name, comma, filt = key.partition(",")  # "acc,none": metric and filter
            if not comma or name.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            se = metrics.get(f"{name}_stderr,{filt}")
            rows.append({**base, "task": task, "metric": name if filt == "none" else f"{name}[{filt}]",
                         "value": value, "samples": samples, "stderr": se if isinstance(se, (int, float)) else ""})
    return rows


def evaluate_downstream(path: Any, tasks: list[str], *, limit: int | None = None, num_fewshot: int | None = None,
                        mc_samples: int = 32, batch_size: int = 16, device: str = "cpu", seed: int = 1234,
                        include_path: str | Path | None = None, **model_args: Any) -> DownstreamResult:
    """Run lm-eval ``tasks`` on the run, checkpoint or export at ``path`` (or a ``LoadedRun``)."""
    import lm_eval

    from experiments.lm_eval_model import CrossoverLM, EvalError
    from experiments.tasks import LOCAL_TASKS

    if not tasks:
        raise EvalError("no tasks given")
    lm = CrossoverLM(path, batch_size=batch_size, device=device, mc_samples=mc_samples, seed=seed, **model_args)
    manager = task_manager(tasks, include_path)
    unknown = [t for t in tasks if not manager.match_tasks([t])]
    if unknown:
        raise EvalError(f"unknown lm-eval task(s) {', '.join(unknown)} (local tasks: {', '.join(LOCAL_TASKS)}; "
                        "hub tasks need their datasets downloaded or cached)")
    with plain_output():
        results = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit,
                                          task_manager=manager, log_samples=False, random_seed=seed,
                                          numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
                                          bootstrap_iters=1000)
    return DownstreamResult(result_rows(results, lm, limit=limit, num_fewshot=num_fewshot), results)


def default_table(path: str | Path) -> Path:
    """Where a run's downstream rows go: ``downstream.csv`` in its run folder or export folder."""
    p = Path(path)
    if p.is_file():  # RUN/checkpoints/x.ckpt -> RUN
        p = p.parent.parent if p.parent.name == "checkpoints" else p.parent
    return p / DOWNSTREAM_FILE


def write_downstream(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Add ``rows`` to the table at ``path`` (atomically), replacing rows with the same key."""
    keys = {tuple(str(r[k]) for k in DOWNSTREAM_KEY) for r in rows}
    kept = [r for r in read_rows(path) if tuple(str(r[k]) for k in DOWNSTREAM_KEY) not in keys]
    merged = sorted(kept + rows, key=lambda r: (str(r["run_id"]), float(r["epochs"]), str(r["task"]), str(r["metric"])))
    write_rows(path, merged, columns=DOWNSTREAM_COLUMNS)


def format_rows(rows: list[dict[str, Any]]) -> str:
    """Rows as aligned text lines: ``task metric value ± stderr`` (plus the ELBO's Monte Carlo note)."""
    lines = []
    for r in rows:
        known = r["stderr"] not in ("", None) and not math.isnan(float(r["stderr"]))
        se = f" ± {float(r['stderr']):.4f}" if known else ""
        lines.append(f"{r['task']:<24} {r['metric']:<10} {float(r['value']):.4f}{se}  "
                     f"({r['objective']}, {r['run_id']}, epoch {r['epochs']}, n={r['samples']})")
    if rows and rows[0]["mc_samples"] != "":
        lines.append(f"diffusion log-likelihoods: Monte Carlo conditional ELBO, {rows[0]['mc_samples']} draws per "
                     f"request, mean MC standard error {float(rows[0]['mc_se_mean']):.4f} nats per request")
    return "\n".join(lines)
