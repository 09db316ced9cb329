"""CLI verbs ``bench attention`` and ``bench train`` (argparse and printing; the logic is
``experiments.bench_attention`` and ``experiments.bench_train``). ``bench sample`` is in ``cli.sample``.

Neither bench needs a corpus or ``datasets``: both run on a bare GPU machine as
``python -m experiments.cli bench attention|train``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import experiments.bench_attention as ba  # torch, tqdm and models only
from analysis.table import atomic_write_text
from experiments.cli.common import UsageError
from models.config import ModelConfig
from models.objectives import OBJECTIVES

_MODEL_DEFAULTS = ModelConfig()
#: ``crossover bench train --compare`` (``experiments.bench_train.variants``; not imported here: it loads Lightning)
COMPARES = ("bare", "before", "compile", "layout", "sweep")


def _csv(kind: type) -> Callable[[str], list]:
    return lambda text: [kind(part) for part in text.split(",") if part]


def add_attention_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``crossover bench attention``."""
    parser.add_argument("--lengths", type=_csv(int), default=None,
                        help="comma-separated sequence lengths (default: 512..8192 on CPU, 1024..65536 on GPU)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--dtype", choices=sorted(ba.DTYPES), default=None,
                        help="input dtype (default: bfloat16 on CUDA, float32 on CPU)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per case (compilation, caches)")
    parser.add_argument("--methods", type=_csv(str), default=list(ba.METHODS), help=f"subset of {','.join(ba.METHODS)}")
    parser.add_argument("--modes", type=_csv(str), default=["causal", "bidir"], help="causal and/or bidir")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=8, help="query heads")
    parser.add_argument("--kv-heads", type=int, default=2, help="key/value heads (GQA)")
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--block", type=int, default=_MODEL_DEFAULTS.attn_block, help="block size of the sparse kinds")
    parser.add_argument("--topk", type=int, default=_MODEL_DEFAULTS.attn_topk, help="selected blocks (nsa, topk, op)")
    parser.add_argument("--window", type=int, default=_MODEL_DEFAULTS.attn_window,
                        help="sliding window (window, nsa, flex)")
    parser.add_argument("--stride", type=int, default=None, help="NSA compression stride (default: block // 2)")
    parser.add_argument("--backend", choices=["auto", "torch", "triton"], default=None,
                        help=f"block-sparse backend (default: ${ba.BACKEND_ENV} or auto)")
    parser.add_argument("--json", type=Path, default=None, help="write the results as JSON to this path")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")




def cmd_bench_attention(args: argparse.Namespace) -> int:
    """Print the table; exit 1 if interrupted or a case failed with an error (skips and OOM are not)."""
    fields = {f.name for f in dataclasses.fields(ba.AttentionBench)}
    try:
        settings, rows, n_cases, interrupted = ba.run(ba.AttentionBench(**{k: getattr(args, k) for k in fields}),
                                                       json_path=args.json, progress=not args.no_progress)
    except ValueError as e:
        raise UsageError(str(e)) from None
    print(f"# attention benchmark: {', '.join(f'{k}={v}' for k, v in settings.items() if k != 'memory')}")
    print(f"# peak memory: {settings['memory']}")
    print(format_attention_table(rows))
    if interrupted:
        print(f"# interrupted after {len(rows)} of {n_cases} cases")
    if args.json:
        print(f"# wrote {args.json}")
    return int(interrupted or any(r["note"].startswith("error") for r in rows))


def format_attention_table(rows: list[dict]) -> str:
    header = ("method", "mode", "T", "fwd ms", "fwd+bwd ms", "fwd MB", "fwd+bwd MB", "note")
    cells = [header]
    for r in rows:
        num = [("-" if r[key] is None else f"{r[key]:.2f}")
               for key in ("fwd_ms", "fwd_bwd_ms", "fwd_peak_mb", "fwd_bwd_peak_mb")]
        cells.append((r["method"], r["mode"], str(r["seq_len"]), *num, r["note"]))
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if 2 <= i <= 6 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in cells]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(line.rstrip() for line in lines)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", nargs="+", default=["tiny", "small"], help="model presets to measure")
    p.add_argument("--objective", "--objectives", dest="objectives", nargs="+", choices=sorted(OBJECTIVES),
                   default=["diffusion"], help="training objective(s) to measure (default: diffusion)")
    p.add_argument("--attention", default="dense", help="attention kind")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per step")
    p.add_argument("--seq-len", type=int, default=None, help="sequence length (default: the preset's)")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--steps", type=int, default=40, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before timing")
    p.add_argument("--repeats", type=int, default=3, help="interleaved runs of each (median reported)")
    p.add_argument("--precision", default="auto", help="auto (bf16-mixed on GPU, 32-true on CPU), 32-true, bf16-mixed")
    p.add_argument("--compile", action="store_true", help="torch.compile the backbone (both loops)")
    p.add_argument("--peak-flops", type=float, default=0.0, help="peak FLOP/s per device for MFU (0: known GPUs)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: all cores); --compare layout and "
                                                          "sweep: one worker of this many threads against this "
                                                          "many single-thread workers")
    p.add_argument("--compare", choices=COMPARES, default="bare",
                   help="the pair measured, A against B (ratio B / A): bare (a bare PyTorch loop, our Lightning "
                        "step), before (our step before the 2026-12-05 host-overhead changes, ours), compile "
                        "(eager, torch.compile; each run a fresh process, first-step seconds reported), layout "
                        "(one worker with every core, one single-thread worker per core, tokens/s summed), "
                        "sweep (the old step in one worker with every core, ours in single-thread workers)")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON to this file")




def cmd_bench_train(args: argparse.Namespace) -> int:
    from experiments.bench_train import TrainBench, run

    fields = {f.name for f in dataclasses.fields(TrainBench)}
    report = run(TrainBench(**{k: getattr(args, k) for k in fields}))
    if args.out:
        atomic_write_text(args.out, json.dumps(report, indent=2))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    a, b = report["a"], report["b"]
    print(f"device {report['device']}, {args.steps} steps x {args.repeats} interleaved repeats, "
          f"A = {a}, B = {b}")
    print(f"{'model':<8} {'objective':<10} {'N':>10} {'A tok/s':>12} {'B tok/s':>12} {'B/A':>7} {'paired':>7} "
          f"{'MFU':>7}")
    for r in report["results"]:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] else "-"
        print(f"{r['model']:<8} {r['objective']:<10} {r['non_embedding_params']:>10,} {r[a + '_tokens_per_s']:>12,.0f} "
              f"{r[b + '_tokens_per_s']:>12,.0f} {r['ratio']:>7.3f} {r['paired_ratio']:>7.3f} {mfu:>7}")
        first = {v: r[f"{v}_first_step_s"] for v in (a, b) if f"{v}_first_step_s" in r}
        if args.compare == "compile" and first:
            print(" " * 9 + "seconds to the first step: " + ", ".join(
                f"{v} {statistics.median(t):.2f} (runs {' '.join(f'{x:.2f}' for x in t)})" for v, t in first.items()))
    return 0


def register(sub: Any) -> None:
    """``bench sample|attention|train`` on the ``crossover`` subparsers."""
    from experiments.cli import sample

    bench = sub.add_parser("bench", help="benchmarks: sample (speed/quality), attention, train")
    bsub = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCH")
    sample.register_bench(bsub)
    p = bsub.add_parser("attention", help="forward / forward+backward time and memory: dense SDPA, FlexAttention, "
                                          "our block-sparse kinds")
    add_attention_arguments(p)
    p.set_defaults(func=cmd_bench_attention)
    p = bsub.add_parser("train", help="tokens/s of our Lightning training step against a bare PyTorch loop")
    add_train_arguments(p)
    p.set_defaults(func=cmd_bench_train)
