"""``crossover`` command line: train, sweep, report, fit, sample, bench.

Bad input (unknown names, missing files, impossible budgets) ends with one line on stderr naming
the problem and exit code 2, before anything is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

EXIT_USAGE = 2


class UsageError(ValueError):
    """Bad input from the user: reported as one line, exit code 2."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from data import BudgetError, CorpusError
    from experiments.checkpoint import CheckpointError
    from experiments.config import ConfigError
    from models.sampling import SamplingError

    return (UsageError, ConfigError, CorpusError, BudgetError, CheckpointError, SamplingError, FileNotFoundError,
            MisconfigurationException)


# --------------------------------------------------------------------------- train
def _parse_value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def add_run_config_arguments(p: argparse.ArgumentParser) -> None:
    """One ``--flag`` per RunConfig field, with the field's help; defaults stay unset (None) so a
    YAML config can supply them and only flags actually given override it."""
    from experiments.config import RunConfig

    for f in dataclasses.fields(RunConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_ = f"{f.metadata['help']} (default: {default!r})"
        if f.type == "bool":
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif f.type in ("list", "dict"):
            p.add_argument(flag, dest=f.name, type=_parse_value, default=None, metavar="YAML", help=help_)
        else:
            p.add_argument(flag, dest=f.name, type={"int": int, "float": float, "str": str}[f.type], default=None,
                           help=help_)


def run_config_from_args(args: argparse.Namespace, model_args: list[str] | None = None):
    from experiments.config import RunConfig

    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig)
                 if getattr(args, f.name, None) is not None}
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
    return RunConfig.from_dict(overrides)


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
    print(json.dumps(fit_table(path, attention=args.attention, fit_points=args.fit_points,
                               n_bootstrap=args.bootstrap), indent=2))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from analysis.report import write_report

    folder = Path(args.dir)
    results = folder / "results.csv" if folder.is_dir() else folder
    if not results.is_file():
        raise UsageError(f"no results table at {str(results)!r}")
    out = Path(args.out) if args.out else results.parent / "report"
    print(write_report(results, out, fit_points=args.fit_points, n_bootstrap=args.bootstrap))
    print(f"report written to {out}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- sweep
def cmd_sweep_run(args: argparse.Namespace) -> int:
    from experiments import sweep

    spec = sweep.SweepSpec.load(args.spec)
    cells = spec.cells()  # refuses unknown axes, empty axes and bad cell configs
    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    sweep.check_cells(cells)  # budgets against the corpus, before any cell starts
    root = Path(args.out or Path("runs") / spec.name)
    sweep.init_folder(root, spec)
    print(f"sweep {spec.name}: {len(cells)} cells in {root}", file=sys.stderr)
    if args.executor == "local":
        results = sweep.run_local(root, cells, args.workers, progress=not args.no_progress)
    else:
        results = sweep.run_submitit(root, cells, spec.slurm, cluster="local" if args.executor == "submitit-local" else None)
    failed = sorted(k for k, v in results.items() if v != "done")
    if any(v == "done" for v in results.values()):
        args.dir, args.out = str(root), None
        cmd_report(args)
    if failed:
        print(f"{len(failed)} cell(s) did not finish: {', '.join(failed)} (see crossover sweep status {root})",
              file=sys.stderr)
        return 1
    return 0


def cmd_sweep_status(args: argparse.Namespace) -> int:
    from experiments import sweep

    root = Path(args.dir)
    if not (root / "sweep.yaml").is_file():
        raise UsageError(f"{str(root)!r} is not a sweep folder (no sweep.yaml)")
    table = sweep.status_table(root)
    width = max(len(c) for c, _, _ in table)
    for cell_id, state, detail in table:
        print(f"{cell_id:<{width}}  {state:<11}  {detail}")
    counts = {s: sum(1 for _, x, _ in table if x == s) for s in ("done", "running", "failed", "interrupted", "pending")}
    print(", ".join(f"{v} {k}" for k, v in counts.items()))
    return 0


def cmd_sweep_list(args: argparse.Namespace) -> int:
    from experiments import sweep

    for name in sweep.preset_names():
        spec = sweep.SweepSpec.load(name)
        print(f"{name:<12} {len(spec.cells()):>4} cells  {spec.description}")
    return 0


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crossover",
        description="When does masked diffusion beat autoregression as unique data runs out? "
                    "Train both on exact unique-token budgets, fit the data-constrained laws, plot the crossover.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train one run (AR or diffusion) on an exact unique-token budget",
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
        p.add_argument("--fit-points", choices=["up_to_best", "all"], default="up_to_best",
                       help="points the data-constrained law is fitted to: each curve up to its best epoch "
                            "(default), or all")
        p.add_argument("--bootstrap", type=int, default=200, help="bootstrap refits for R_D* uncertainty")

    sw = sub.add_parser("sweep", help="run a grid of runs (a preset or a YAML spec) and report; status of a sweep")
    swsub = sw.add_subparsers(dest="sweep_command", required=True, metavar="SWEEP_COMMAND")
    p = swsub.add_parser("run", help="train every cell of a sweep (skipping done cells, resuming interrupted ones), "
                                     "then write the report")
    p.add_argument("spec", help="preset name (crossover sweep list) or a sweep YAML file")
    p.add_argument("--out", help="sweep folder (default: runs/<name>)")
    p.add_argument("--workers", type=int, default=1, help="cells trained at once (local executor); each gets "
                                                          "cores // workers threads")
    p.add_argument("--executor", choices=["local", "slurm", "submitit-local"], default="local",
                   help="local subprocesses, a SLURM job array through submitit, or submitit's local executor")
    p.add_argument("--no-progress", action="store_true", help="no progress display")
    p.set_defaults(func=cmd_sweep_run, fit_points="up_to_best", bootstrap=200)
    p = swsub.add_parser("status", help="done / running / failed / interrupted / pending cells of a sweep folder")
    p.add_argument("dir", help="sweep folder")
    p.set_defaults(func=cmd_sweep_status)
    p = swsub.add_parser("list", help="the sweep presets shipped with the package")
    p.set_defaults(func=cmd_sweep_list)

    from experiments import sample

    p = sub.add_parser("sample", help="generate from a checkpoint (diffusion: parallel samplers; AR: KV cache)")
    sample.add_sample_arguments(p)
    p.set_defaults(func=sample.cmd_sample)

    bench = sub.add_parser("bench", help="benchmarks: sample (speed/quality), attention, train")
    bsub = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCH")
    p = bsub.add_parser("sample", help="diffusion samplers against AR: tokens/s, passes per token, generative NLL")
    sample.add_bench_sample_arguments(p)
    p.set_defaults(func=sample.cmd_bench_sample)

    from experiments import bench_attention, bench_train

    p = bsub.add_parser("attention", help="forward / forward+backward time and memory: dense SDPA, FlexAttention, "
                                          "our block-sparse kinds")
    bench_attention.add_arguments(p)
    p.set_defaults(func=bench_attention.run)
    p = bsub.add_parser("train", help="tokens/s of our Lightning training step against a bare PyTorch loop")
    bench_train.add_arguments(p)
    p.set_defaults(func=bench_train.run)

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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except _user_errors() as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"crossover {args.command}: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"crossover {args.command}: interrupted (rerun the same command to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
