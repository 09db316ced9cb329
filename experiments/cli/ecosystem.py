"""CLI verbs ``export`` (a Hugging Face folder) and ``eval`` (lm-evaluation-harness tasks).

argparse and printing only; the logic is ``experiments.export`` and ``experiments.downstream``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from experiments.cli.common import UsageError


def cmd_export(args: argparse.Namespace) -> int:
    from experiments.export import export_run

    result = export_run(args.run, args.out, overwrite=args.force, verify=not args.no_verify)
    meta = result.meta
    check = ("" if result.max_abs_diff is None
             else f"; transformers reproduces our logits (max |diff| {result.max_abs_diff:.1e})")
    print(f"exported {meta['objective']} run {meta['run_id'] or args.run} (epoch {meta['epochs_trained']}) to "
          f"{result.out}{check}", file=sys.stderr)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    try:
        from experiments import downstream
        from experiments.lm_eval_model import EvalError
    except ImportError as e:
        raise UsageError(f"crossover eval needs lm-eval ({e.name} is missing): pip install 'crossover[eval]'") from None
    downstream.quiet_lm_eval()
    tasks = [t for item in args.tasks for t in item.split(",") if t]
    try:
        result = downstream.evaluate_downstream(args.run, tasks, limit=args.limit, num_fewshot=args.num_fewshot,
                                                mc_samples=args.mc_samples, batch_size=args.batch_size,
                                                device=args.device, seed=args.seed)
    except EvalError as e:
        raise UsageError(str(e)) from None
    table = Path(args.out) if args.out else downstream.default_table(args.run)
    downstream.write_downstream(table, result.rows)
    print(downstream.format_rows(result.rows))
    print(f"{len(result.rows)} rows written to {table}", file=sys.stderr)
    return 0


def register(sub: Any) -> None:
    """``export`` and ``eval`` on the ``crossover`` subparsers."""
    p = sub.add_parser("export", help="a run as a Hugging Face folder (AR: stock Llama; diffusion: Llama with "
                                      "is_causal=false), verified against our logits")
    p.add_argument("run", help="run folder, .ckpt file or exported folder")
    p.add_argument("--out", required=True, help="folder to write (config.json, model.safetensors, tokenizer, "
                                                "README.md, crossover.json)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    p.add_argument("--no-verify", action="store_true",
                   help="skip loading the export back with transformers to compare its logits with ours")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("eval", help="downstream tasks through lm-evaluation-harness (needs crossover[eval])",
                       description="lm-eval tasks on a run folder, .ckpt or export: exact log-likelihoods for AR, "
                                   "the Monte Carlo conditional ELBO (--mc-samples draws) for diffusion. Rows go to "
                                   "downstream.csv beside the run (key: run_id, epochs, task, metric).")
    p.add_argument("run", help="run folder, .ckpt file or exported folder")
    p.add_argument("--tasks", nargs="+", default=["crossover_code_mc"],
                   help="lm-eval task names, space or comma separated (default: the local crossover_code_mc)")
    p.add_argument("--limit", type=int, help="documents per task (default: all)")
    p.add_argument("--num-fewshot", type=int, help="few-shot examples (default: the task's)")
    p.add_argument("--mc-samples", type=int, default=32, help="diffusion: ELBO draws per request (default 32)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass (default 16)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--seed", type=int, default=1234, help="seed of the ELBO masks and of lm-eval (default 1234)")
    p.add_argument("--out", help="table to add the rows to (default: downstream.csv in the run or export folder)")
    p.set_defaults(func=cmd_eval)
