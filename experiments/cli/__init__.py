"""``crossover`` command line: train, sweep, report, fit, sample, bench.

The CLI layer owns argparse and printing; each module registers its verbs (``runs``: train,
sweep, fit, report; ``sample``: sample and bench sample; ``bench``: bench attention and train).
Bad input (unknown names, missing files, impossible budgets, malformed tables) ends with one line
on stderr naming the problem and exit code 2, before anything is written.
"""

from __future__ import annotations

import sys

from experiments.cli.common import EXIT_DIVERGED, EXIT_IO, EXIT_USAGE, IO_ERRNOS, Parser, UsageError


def _user_errors() -> tuple[type[BaseException], ...]:
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from analysis.results import TableError
    from data import BudgetError, CorpusError
    from experiments.checkpoint import CheckpointError
    from experiments.config import ConfigError
    from models.sampling import SamplingError

    return (UsageError, TableError, ConfigError, CorpusError, BudgetError, CheckpointError, SamplingError,
            FileNotFoundError, MisconfigurationException)


def build_parser() -> Parser:
    from experiments.cli import bench, runs, sample

    parser = Parser(
        prog="crossover",
        description="When does masked diffusion beat autoregression as unique data runs out? "
                    "Train both on exact unique-token budgets, fit the data-constrained laws, plot the crossover.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    runs.register(sub)
    sample.register(sub)
    bench.register(sub)
    from experiments.cli import ecosystem  # export (Hugging Face) and eval (lm-evaluation-harness)

    ecosystem.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one verb. Expected failures end as one line on stderr: bad input exit 2, a diverged run 3,
    a full disk or missing permission 74 (nothing half-written is left: every write is atomic); a
    traceback is printed only for a bug, with a line asking for a report."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a one-line usage error (2)
        return int(e.code or 0)
    prefix = f"crossover {args.command}"
    try:
        return args.func(args)
    except _user_errors() as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"{prefix}: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted (rerun the same command to resume)", file=sys.stderr)
        return 130
    except Exception as e:
        from experiments.module import Diverged

        if isinstance(e, Diverged):
            print(f"{prefix}: {e}; the last finite checkpoint and the finite rows are kept", file=sys.stderr)
            return EXIT_DIVERGED
        if isinstance(e, OSError) and e.errno in IO_ERRNOS:
            where = f" ({e.filename})" if e.filename else ""
            print(f"{prefix}: error: {e.strerror}{where}; nothing half-written was left (writes are atomic)",
                  file=sys.stderr)
            return EXIT_IO
        import traceback

        traceback.print_exc()
        print(f"{prefix}: internal error (a bug): please report it with the traceback above", file=sys.stderr)
        return 1

