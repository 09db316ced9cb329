"""CLI verbs over runs: ``train``, ``sweep run|status|list``, ``fit``, ``report`` (argparse and printing)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from functools import partial
from pathlib import Path
from typing import Any

from experiments.cli.common import UsageError


# --------------------------------------------------------------------------- train
def _parse_value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def _add_field(p: Any, f: dataclasses.Field, hint: Any, suffix: str = "") -> None:
    """One ``--flag`` for a config field, typed and with its choices; default unset (None), so a YAML
    config can supply the value and only flags actually given override it."""
    from experiments.config import choices

    flag = "--" + f.name.replace("_", "-")
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    help_ = f"{f.metadata.get('help', '')} (default: {default!r}){suffix}"
    options = choices(hint)
    structured = typing.get_origin(hint) in (list, dict) or hint in (list, dict)
    scalars = [t for t in (bool, int, float, str) if hint is t or t in typing.get_args(hint)]
    base = None if structured or not scalars else scalars[0]
    if options is not None:
        p.add_argument(flag, dest=f.name, choices=options, default=None, help=help_)
    elif hint is bool:
        p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_)
    elif base is None:  # lists and mappings
        p.add_argument(flag, dest=f.name, type=_parse_value, default=None, metavar="YAML", help=help_)
    else:
        p.add_argument(flag, dest=f.name, type=base, default=None, help=help_)


def add_run_config_arguments(p: argparse.ArgumentParser) -> None:
    """Flags for every RunConfig key, grouped as the config is (flat names: each is unique)."""
    from experiments.config import GROUPS, RunConfig
    from models.objectives import OBJECTIVES

    hints = typing.get_type_hints(RunConfig)
    top = p.add_argument_group("what is trained")
    for f in dataclasses.fields(RunConfig):
        if f.name == "objective":
            top.add_argument("--objective", choices=list(OBJECTIVES), default=None, help=f.metadata["help"])
        elif f.name not in ("objective_config", *GROUPS):
            _add_field(top, f, hints[f.name])
    owners: dict[str, list[str]] = {}  # objective setting -> the objectives that have it
    for name, cls in OBJECTIVES.items():
        for f in dataclasses.fields(cls.Config):
            owners.setdefault(f.name, []).append(name)
    g = p.add_argument_group("objective settings (each applies to the objectives named in its help)")
    for field_name, names in owners.items():
        cls = OBJECTIVES[names[0]].Config
        f = next(f for f in dataclasses.fields(cls) if f.name == field_name)
        _add_field(g, f, typing.get_type_hints(cls)[f.name], suffix=f" [{', '.join(names)}]")
    for name, cls in GROUPS.items():
        g = p.add_argument_group({"data": "data", "optim": "optimiser", "eval": "evaluation",
                                  "run": "execution (not part of the run's identity)"}[name])
        for f in dataclasses.fields(cls):
            _add_field(g, f, typing.get_type_hints(cls)[f.name])


def run_config_from_args(args: argparse.Namespace, model_args: list[str] | None = None):
    from experiments.config import RunConfig, flat_keys, merge

    overrides = {k: getattr(args, k) for k in flat_keys() if getattr(args, k, None) is not None}
    if model_args:
        extra = dict(overrides.get("model_args") or {})
        for item in model_args:
            key, sep, value = item.partition("=")
            if not sep:
                raise UsageError(f"--model-arg expects KEY=VALUE, got {item!r}")
            extra[key] = _parse_value(value)
        overrides["model_args"] = extra
    if args.config:
        return RunConfig.from_yaml(args.config, **overrides)
    return RunConfig.from_dict(merge({}, overrides))


def cmd_train(args: argparse.Namespace) -> int:
    from experiments.train import train

    cfg = run_config_from_args(args, args.model_arg)
    rows = train(cfg, Path(args.out), run_id=args.run_id)  # checks everything before the folder exists
    last = rows[-1] if rows else None
    if last:
        print(json.dumps({k: last[k] for k in ("run_id", "objective", "unique_tokens", "epochs", "val_loss",
                                               "val_loss_se", "val_bpb", "flops")}))
    return 0


# --------------------------------------------------------------------------- fit / report
def cmd_fit(args: argparse.Namespace) -> int:
    from analysis.fits import fit_table

    path = Path(args.results)
    if not path.is_file():
        raise UsageError(f"results table {str(path)!r} does not exist")
    print(json.dumps(fit_table(path, attention=args.attention, **_law_options(args)), indent=2))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from analysis.report import write_report

    folder = Path(args.dir)
    results = folder / "results.csv" if folder.is_dir() else folder
    if not results.is_file():
        raise UsageError(f"no results table at {str(results)!r}")
    out = Path(args.out) if args.out else results.parent / "report"
    print(write_report(results, out, **_law_options(args)))
    print(f"report written to {out}", file=sys.stderr)
    return 0


def _law_options(args: argparse.Namespace) -> dict[str, Any]:
    """The law-fit options of ``fit``, ``report`` and ``sweep run`` (see ``fit_options``)."""
    return {"fit_points": args.fit_points, "n_bootstrap": args.bootstrap, "protocol": args.protocol,
            "base": args.base_law}


# --------------------------------------------------------------------------- sweep
def _report_sweep(root: Path, args: argparse.Namespace) -> None:
    from analysis.report import write_report
    from experiments import sweep

    diverged = [c for c, state, _ in sweep.status_table(root) if state == "diverged"]
    if sweep.rebuild_table(root, sweep.load_spec(root).cells()) == 0:
        print("no finished evaluation rows yet: no report", file=sys.stderr)
        return
    out = root / "report"
    print(write_report(root / "results.csv", out, **_law_options(args)))
    if diverged:
        print(f"the report leaves out {len(diverged)} diverged cell(s): {', '.join(diverged)}", file=sys.stderr)
    print(f"report written to {out}", file=sys.stderr)


def cmd_sweep_run(args: argparse.Namespace) -> int:
    from experiments import sweep

    spec = sweep.SweepSpec.load(args.spec)
    cells = spec.cells()  # refuses unknown axes, empty axes and bad cell configs
    if args.workers != "auto" and args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    sweep.check_cells(cells)  # budgets against the corpus, before any cell starts
    root = Path(args.out or Path("runs") / spec.name)
    sweep.init_folder(root, spec)
    sweep.rebuild_table(root, cells)  # a table left stale by a killed runner is brought up to date first
    print(f"sweep {spec.name}: {len(cells)} cells in {root}", file=sys.stderr)
    report = partial(print, file=sys.stderr)
    if args.executor == "local":
        with _CellBar(len(cells), enabled=not args.no_progress) as bar:
            results = sweep.run_local(root, cells, args.workers, report=bar.write, progress=bar.update_to)
    else:
        cluster = "local" if args.executor == "submitit-local" else None
        results = sweep.run_submitit(root, cells, spec.slurm, cluster=cluster, report=report)
    sweep.rebuild_table(root, cells)
    if any(v == "done" for v in results.values()):
        _report_sweep(root, args)
    failed = sorted(k for k, v in results.items() if v not in ("done", "diverged"))
    diverged = sorted(k for k, v in results.items() if v == "diverged")
    if diverged:
        print(f"{len(diverged)} cell(s) diverged: {', '.join(diverged)}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} cell(s) failed: {', '.join(failed)} (see crossover sweep status {root})",
              file=sys.stderr)
    return 1 if failed or diverged else 0


class _CellBar:
    """tqdm bar of finished cells on a terminal; in a log file, a plain line when a cell finishes and at
    most one a minute otherwise (no carriage-return redraws)."""

    EVERY_S = 60.0

    def __init__(self, total: int, enabled: bool):
        from tqdm import tqdm

        self.tty = enabled and sys.stderr.isatty()
        self.bar = tqdm(total=total, desc="cells", unit="cell", disable=not self.tty, dynamic_ncols=True)
        self.done, self.last = -1, 0.0

    def update_to(self, done: int, postfix: str) -> None:
        import time

        if self.tty:
            self.bar.n = done
            self.bar.set_postfix_str(postfix)
        elif done != self.done or time.monotonic() - self.last >= self.EVERY_S:
            print(f"cells done: {done}/{self.bar.total}" + (f"; running: {postfix}" if postfix else ""),
                  file=sys.stderr, flush=True)
            self.last = time.monotonic()
        self.done = done

    def write(self, line: str) -> None:
        (self.bar.write if self.tty else partial(print, file=sys.stderr, flush=True))(line)

    def __enter__(self) -> _CellBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()


def cmd_sweep_status(args: argparse.Namespace) -> int:
    from experiments import sweep

    root = Path(args.dir)
    table = sweep.status_table(root)  # refuses a folder without sweep.yaml
    width = max(len(c) for c, _, _ in table)
    for cell_id, state, detail in table:
        print(f"{cell_id:<{width}}  {state:<11}  {detail}")
    from experiments.run_folder import STATUSES

    counts = {s: sum(1 for _, x, _ in table if x == s) for s in STATUSES}
    print(", ".join(f"{v} {k}" for k, v in counts.items()))
    if args.rebuild:
        n = sweep.rebuild_table(root, sweep.load_spec(root).cells())
        print(f"rebuilt {root / 'results.csv'}: {n} rows", file=sys.stderr)
    return 0


def cmd_sweep_list(args: argparse.Namespace) -> int:
    from experiments import sweep

    for name in sweep.preset_names():
        spec = sweep.SweepSpec.load(name)
        print(f"{name:<12} {len(spec.cells()):>4} cells  {spec.description}")
    return 0


# --------------------------------------------------------------------------- parsers
def _workers(text: str) -> int | str:
    """``--workers``: a count or ``auto`` (``experiments.sweep.executors.auto_workers``)."""
    return text if text == "auto" else int(text)


def register(sub: Any) -> None:
    """The verbs of this module on the ``crossover`` subparsers ``sub``."""
    p = sub.add_parser("train", help="train one run (AR, diffusion or block diffusion) on an exact unique-token budget",
                       description="Train one run. Flags override --config (YAML), which overrides the defaults. "
                                   "Rerunning on the same --out resumes it (or does nothing when complete).")
    p.add_argument("--out", required=True, help="run folder (created; resumed if it holds the same run)")
    p.add_argument("--config", help="YAML file of run-config keys")
    p.add_argument("--run-id", help="run id in the results table (default: the folder name)")
    p.add_argument("--model-arg", action="append", metavar="KEY=VALUE",
                   help="override one field of the model preset, e.g. --model-arg n_layer=6 (repeatable)")
    add_run_config_arguments(p)
    p.set_defaults(func=cmd_train)

    def fit_options(p: argparse.ArgumentParser) -> None:
        g = p.add_argument_group("data-constrained law fit (analysis/fits.py)")
        g.add_argument("--fit-points", choices=["up_to_best", "up_to_best_config", "all"], default="up_to_best",
                       help="points the law is fitted to: each run up to its best epoch (default), each "
                            "(model, U) curve up to its best epoch, or all")
        g.add_argument("--protocol", choices=["two_stage", "one_stage"], default="two_stage",
                       help="two_stage (default): E, A, alpha, B, beta on single-epoch points, then R_D*, R_N*; "
                            "one_stage: all at once (better when few single-epoch runs span little U)")
        g.add_argument("--base-law", metavar="JSON", default=None,
                       help="fix E, A, alpha, B, beta from this file (top level, per family, or a fits.json)")
        g.add_argument("--bootstrap", type=int, default=200, help="bootstrap refits (resampling runs) for the "
                                                                  "parameters' intervals")

    sw = sub.add_parser("sweep", help="run a grid of runs (a preset or a YAML spec) and report; status of a sweep")
    swsub = sw.add_subparsers(dest="sweep_command", required=True, metavar="SWEEP_COMMAND")
    p = swsub.add_parser("run", help="train every cell of a sweep (skipping done cells, resuming interrupted ones), "
                                     "then write the report")
    p.add_argument("spec", help="preset name (crossover sweep list) or a sweep YAML file")
    p.add_argument("--out", help="sweep folder (default: runs/<name>)")
    p.add_argument("--workers", type=_workers, default="auto",
                   help="cells trained at once (local executor); each gets cores // workers threads. auto "
                        "(default): one single-thread worker per core when every cell trains a model of at most "
                        "1M non-embedding parameters on the CPU (more tokens/s in all), else 1 worker with every "
                        "core")
    p.add_argument("--executor", choices=["local", "slurm", "submitit-local"], default="local",
                   help="local subprocesses, a SLURM job array through submitit, or submitit's local executor")
    p.add_argument("--no-progress", action="store_true", help="no progress display")
    fit_options(p)
    p.set_defaults(func=cmd_sweep_run)
    p = swsub.add_parser("status", help="done / running / failed / interrupted / pending cells of a sweep folder")
    p.add_argument("dir", help="sweep folder")
    p.add_argument("--rebuild", action="store_true", help="rebuild DIR/results.csv from the cells' tables")
    p.set_defaults(func=cmd_sweep_status)
    p = swsub.add_parser("list", help="the sweep presets shipped with the package")
    p.set_defaults(func=cmd_sweep_list)

    p = sub.add_parser("fit", help="fit the data-constrained laws and the crossover of a results table (JSON)")
    p.add_argument("results", help="results.csv")
    p.add_argument("--attention", help="attention kind to analyse (default: the only one, else dense)")
    fit_options(p)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("report", help="figures and summary.md from a sweep folder's results.csv")
    p.add_argument("dir", help="sweep folder (or a results.csv)")
    p.add_argument("--out", help="report folder (default: DIR/report)")
    fit_options(p)
    p.set_defaults(func=cmd_report)
