"""CLI verbs ``sample`` and ``bench sample`` (argparse and printing; the logic is experiments.sampling)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from analysis.table import atomic_write_text
from experiments.checkpoint import CheckpointError, load_checkpoint
from experiments.sampling import (
    DECODERS,
    DEFAULT_LENGTH,
    bench_points,
    bench_sample,
    build_template,
    decoding,
    family,
    generate_samples,
    load_kind,
    make_processor,
)
from models.sampling import SAMPLERS, SamplingError


def add_sample_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="run folder (its checkpoints/last.ckpt) or a .ckpt file")
    p.add_argument("--sampler", choices=sorted(SAMPLERS), help="diffusion sampler (default: ancestral; AR ignores it)")
    p.add_argument("--steps", type=int, help="ancestral / remask: denoising steps (default: tokens to generate; "
                                             "block diffusion: steps per block, default the block size)")
    p.add_argument("--block-length", type=int,
                   help="remask / threshold: semi-autoregressive block, in [MASK] tokens (default: one block; a "
                        "block diffusion checkpoint has its own)")
    p.add_argument("--threshold", type=float,
                   help="threshold: commit every token with confidence >= this (default 0.9)")
    p.add_argument("--length", type=int, help=f"tokens to generate after the prompt (default {DEFAULT_LENGTH})")
    p.add_argument("--prompt", help="text to continue (included in the output)")
    p.add_argument("--infill", metavar="TEMPLATE",
                   help="diffusion only: text with [MASK] (one token) or [MASK:N] (N tokens) where to generate")
    p.add_argument("--num", type=int, default=4, help="samples, decoded as one batch (default 4)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature, 0 = greedy (default 1)")
    p.add_argument("--top-k", type=int, help="sample among the k most likely tokens only (every sampler)")
    p.add_argument("--top-p", type=float,
                   help="sample from the smallest set of tokens holding this probability (nucleus; every sampler)")
    p.add_argument("--no-eod", dest="allow_eod", action="store_false",
                   help="never generate [EOD] (the document separator; allowed by default)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")


def cmd_sample(args: argparse.Namespace) -> int:
    run = load_checkpoint(args.checkpoint)
    template = build_template(run.tokenizer, prompt=args.prompt, infill=args.infill, length=args.length,
                              seq_len=run.model.config.seq_len)
    processor = make_processor(run.tokenizer, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                               allow_eod=args.allow_eod)
    sampler = args.sampler or "ancestral"
    causal = decoding(run) == "left_to_right"
    options = {} if causal else {"steps": args.steps, "block_length": args.block_length, "threshold": args.threshold}
    result, seconds = generate_samples(run, template, args.num, processor=processor, sampler=sampler,
                                       options=options, seed=args.seed, device=args.device)
    for i, row in enumerate(result.tokens.tolist()):
        print(f"--- sample {i + 1}/{args.num} ---")
        print(run.tokenizer.decode(row, skip_special_tokens=False))
    if causal:
        ignored = ["--" + k.replace("_", "-") for k in ("sampler", "steps", "block_length", "threshold")
                   if getattr(args, k) is not None]
        cache = "with a KV cache" if run.model.supports_kv_cache else "recomputing (attention kind has no KV cache)"
        print(f"autoregressive checkpoint: decoded left to right {cache}"
              + (f"; ignored {', '.join(ignored)} (diffusion only)" if ignored else ""), file=sys.stderr)
    per_step = result.committed[result.committed > 0].double()  # steps that commit, per sample
    name = "ar" if causal else " ".join([family(run), sampler] + [f"{k}={v}" for k, v in options.items() if v])
    print(f"{name}: {result.forward_passes} forward passes (batch of {args.num}), "
          f"{result.tokens_per_pass:.2f} tokens per forward pass (per sample), "
          f"{result.generated * args.num / seconds:.1f} tokens/s ({result.generated * args.num:.0f} tokens in "
          f"{seconds:.2f} s); tokens per committing step: mean {per_step.mean():.2f}, max {per_step.max():.0f}",
          file=sys.stderr)
    return 0


def add_bench_sample_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("ar_checkpoint", help="autoregressive run folder or .ckpt (also scores the samples)")
    p.add_argument("parallel_checkpoints", nargs="+", metavar="DIFF_CKPT",
                   help="diffusion or block-diffusion run folders or .ckpt files (one or more)")
    p.add_argument("--length", type=int, default=DEFAULT_LENGTH, help=f"tokens to generate (default {DEFAULT_LENGTH})")
    p.add_argument("--prompt", help="text to continue (default: none)")
    p.add_argument("--num", type=int, default=8, help="samples per point, decoded one at a time (default 8)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature for every sampler (default 1)")
    p.add_argument("--steps", type=int, nargs="+",
                   help="ancestral / remask total steps (default: length/1, /2, /4, /8; block diffusion spreads "
                        "them over its blocks)")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.7, 0.9, 0.95],
                   help="threshold sampler confidences (default 0.5 0.7 0.9 0.95)")
    p.add_argument("--block-length", type=int, help="remask / threshold block length (default: one block)")
    p.add_argument("--samplers", nargs="+", choices=sorted(SAMPLERS), default=sorted(SAMPLERS),
                   help="diffusion samplers to bench (default: all)")
    p.add_argument("--no-eod", dest="allow_eod", action="store_false", help="never generate [EOD]")
    p.add_argument("--out", help="folder for bench_sample.json, bench_sample.png and bench_sample.pdf")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'model':<20} {'sampler':<10} {'steps':>5} {'tau':>5} {'pass/tok':>8} {'tok/s':>9} {'gen NLL':>13} "
            f"{'gen PPL':>8} {'entropy':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        steps = "" if r["steps"] is None else str(r["steps"])
        tau = "" if r["threshold"] is None else f"{r['threshold']:g}"
        lines.append(f"{r['model']:<20} {r['sampler']:<10} {steps:>5} {tau:>5} {r['forward_passes_per_token']:>8.3f} "
                     f"{r['tokens_per_s']:>9.1f} {r['gen_nll']:>7.3f} ± {r['gen_nll_se']:.3f} "
                     f"{r['gen_ppl']:>8.1f} {r['entropy']:>7.3f}")
    return "\n".join(lines)


def cmd_bench_sample(args: argparse.Namespace) -> int:
    from analysis.sampling import plot_frontier
    from data.tokenizer import tokenizer_hash

    ar = load_kind(args.ar_checkpoint, ("left_to_right",), "AR_CKPT")
    parallel = [load_kind(p, tuple(DECODERS), "DIFF_CKPT") for p in args.parallel_checkpoints]
    if any(tokenizer_hash(ar.tokenizer) != tokenizer_hash(run.tokenizer) for run in parallel):
        raise CheckpointError("the AR and diffusion checkpoints use different tokenizers: the AR model cannot score "
                              "the diffusion samples")
    if args.num < 1:
        raise SamplingError(f"--num must be at least 1, got {args.num}")
    seq_len = min(run.model.config.seq_len for run in [ar, *parallel])
    template = build_template(ar.tokenizer, prompt=args.prompt, length=args.length, seq_len=seq_len)
    steps = args.steps or sorted({max(1, template.num_masked // d) for d in (1, 2, 4, 8)}, reverse=True)
    points = [bench_points(run, args.samplers, steps, args.thresholds, args.block_length, template.num_masked)
              for run in parallel]
    processor = make_processor(ar.tokenizer, temperature=args.temperature, allow_eod=args.allow_eod)
    rows = bench_sample(ar, parallel, template, points, num=args.num, seed=args.seed, processor=processor,
                        device=args.device)
    print(format_table(rows))
    if args.out:
        out = Path(args.out)
        settings = {k: getattr(args, k) for k in ("ar_checkpoint", "parallel_checkpoints", "length", "prompt", "num",
                                                   "seed", "temperature", "block_length", "allow_eod")}
        title = (f"{args.num} samples of {template.num_masked} tokens, temperature {args.temperature:g}"
                 + (f", prompt {args.prompt!r}" if args.prompt else ""))
        out.mkdir(parents=True, exist_ok=True)
        paths = plot_frontier(rows, out, title)
        atomic_write_text(out / "bench_sample.json", json.dumps({"settings": settings, "rows": rows}, indent=2) + "\n")
        print(f"wrote {out / 'bench_sample.json'}, {', '.join(str(p) for p in paths)}", file=sys.stderr)
    return 0


def register(sub: Any) -> None:
    """``sample`` on the ``crossover`` subparsers and ``bench sample`` on the bench subparsers."""
    p = sub.add_parser("sample", help="generate from a checkpoint (diffusion: parallel samplers; AR: KV cache)")
    add_sample_arguments(p)
    p.set_defaults(func=cmd_sample)


def register_bench(bsub: Any) -> None:
    p = bsub.add_parser("sample", help="diffusion samplers against AR: tokens/s, passes per token, generative NLL")
    add_bench_sample_arguments(p)
    p.set_defaults(func=cmd_bench_sample)
