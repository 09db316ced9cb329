"""``crossover sample`` and ``crossover bench sample``: samples and the speed/quality frontier.

``sample`` loads a checkpoint, reads its objective, and decodes ``--num`` samples (one batch): an
AR checkpoint left to right with a KV cache, a diffusion checkpoint with the chosen sampler from a
template with [MASK] where to generate. Samples go to stdout (prompt included); forward passes,
tokens per forward pass and tokens/s to stderr.

``bench sample`` decodes the same prompt with the AR model and with every diffusion sampler across
steps and thresholds, one sample at a time (batch 1, so passes per token are exact per sample), and
scores every sample by its generative NLL under the AR model plus its unigram entropy.

Templates: ``--prompt TEXT`` is followed by ``--length`` [MASK]s; ``--infill TEXT`` is a whole
template in which ``[MASK]`` stands for one token to generate and ``[MASK:N]`` for N tokens (text
between placeholders is tokenised piece by piece, so BPE merges never cross a placeholder).

[EOD] handling: [EOD] separates documents in the packed training stream, so both models learned
where documents end and begin; it stays sampleable (shown as ``[EOD]`` in the output) and
``--no-eod`` suppresses it. [MASK] and [PAD] are always suppressed.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from experiments.checkpoint import CheckpointError, LoadedRun, load_checkpoint
from models.sampling import (
    SAMPLER_OPTIONS,
    SAMPLERS,
    LogitsProcessor,
    SampleResult,
    SamplingError,
    build_sampler,
    generate,
)

PLACEHOLDER = re.compile(r"\[MASK(?::(\d+))?\]")
DEFAULT_LENGTH = 64


# --------------------------------------------------------------------------- templates
@dataclass
class Template:
    """Token ids (T,) with [MASK] where to generate; ``prompt_length`` is the number of leading
    fixed tokens when every [MASK] follows them (a prompt to continue), else None (infilling)."""

    ids: torch.Tensor
    prompt_length: int | None
    num_masked: int


def _encode_text(tokenizer, text: str) -> list[int]:
    ids = tokenizer.encode(text, add_special_tokens=False)
    if tokenizer.mask_token_id in ids or tokenizer.pad_token_id in ids:
        raise SamplingError(f"{text!r} holds a literal [MASK] or [PAD] token; use --infill placeholders")
    return ids


def build_template(tokenizer, *, prompt: str | None = None, infill: str | None = None,
                   length: int | None = None, seq_len: int) -> Template:
    """The template of ``--prompt`` + ``--length`` [MASK]s, or of an ``--infill`` text; at most seq_len."""
    if infill is not None:
        if prompt is not None or length is not None:
            raise SamplingError("--infill is a whole template: it takes no --prompt or --length")
        ids: list[int] = []
        pos = 0
        for m in PLACEHOLDER.finditer(infill):
            ids += _encode_text(tokenizer, infill[pos:m.start()]) if m.start() > pos else []
            n = int(m.group(1) or 1)
            if n < 1:
                raise SamplingError(f"placeholder {m.group(0)!r} must stand for at least one token")
            ids += [tokenizer.mask_token_id] * n
            pos = m.end()
        ids += _encode_text(tokenizer, infill[pos:]) if pos < len(infill) else []
        if tokenizer.mask_token_id not in ids:
            raise SamplingError("--infill template has no [MASK] or [MASK:N] placeholder to generate")
    else:
        length = DEFAULT_LENGTH if length is None else length
        if length < 1:
            raise SamplingError(f"--length must be at least 1, got {length}")
        ids = (_encode_text(tokenizer, prompt) if prompt else []) + [tokenizer.mask_token_id] * length
    if len(ids) > seq_len:
        fixed = sum(i != tokenizer.mask_token_id for i in ids)
        raise SamplingError(f"{len(ids)} tokens ({fixed} given + {len(ids) - fixed} to generate) exceed the model's "
                            f"seq_len={seq_len}; generate at most {seq_len - fixed}")
    t = torch.tensor(ids, dtype=torch.long)
    masked = (t == tokenizer.mask_token_id).nonzero().flatten()
    first = int(masked[0])
    prefix = bool((t[first:] == tokenizer.mask_token_id).all())
    return Template(t, first if prefix else None, len(masked))


def make_processor(tokenizer, *, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                   allow_eod: bool = True) -> LogitsProcessor:
    suppress = [tokenizer.mask_token_id, tokenizer.pad_token_id] + ([] if allow_eod else [tokenizer.eos_token_id])
    return LogitsProcessor(tuple(suppress), temperature, top_k, top_p)


# --------------------------------------------------------------------------- generation
def torch_device(name: str) -> torch.device:
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise SamplingError(f"unknown device {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SamplingError(f"device {name!r} requested but CUDA is not available")
    return dev


def generate_samples(run: LoadedRun, template: Template, num: int, *, processor: LogitsProcessor,
                     sampler: str = "ancestral", options: dict[str, Any] | None = None, seed: int = 0,
                     device: str = "cpu") -> tuple[SampleResult, float]:
    """``num`` samples of ``template`` in one batch, and the seconds they took."""
    if num < 1:
        raise SamplingError(f"--num must be at least 1, got {num}")
    if run.objective == "ar" and template.prompt_length is None:
        raise SamplingError("an AR checkpoint cannot infill: it only continues a prompt (use a diffusion checkpoint)")
    if run.objective == "diffusion":
        diffusion = build_sampler(sampler, mask_id=run.tokenizer.mask_token_id, processor=processor,
                                  **(options or {}))
    dev = torch_device(device)
    model = run.model.to(dev)
    generator = torch.Generator(dev).manual_seed(seed)
    ids = template.ids.to(dev).expand(num, -1)  # (B, T)
    start = time.perf_counter()
    with torch.inference_mode():
        if run.objective == "ar":
            P = template.prompt_length
            result = generate(model, ids[:, :P], ids.shape[1] - P, bos_id=run.tokenizer.eos_token_id,
                              processor=processor, generator=generator)
        else:
            result = diffusion(model, ids, generator)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return result, time.perf_counter() - start


def sampler_options(sampler: str, *, steps: int | None, block_length: int | None, threshold: float | None,
                    num_masked: int) -> dict[str, Any]:
    """The options given for ``sampler``; steps default to the number of tokens to generate."""
    if steps is None and "steps" in SAMPLER_OPTIONS[sampler]:
        steps = num_masked
    return {"steps": steps, "block_length": block_length, "threshold": threshold}


# --------------------------------------------------------------------------- crossover sample
def add_sample_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="run folder (its checkpoints/last.ckpt) or a .ckpt file")
    p.add_argument("--sampler", choices=sorted(SAMPLERS), help="diffusion sampler (default: ancestral; AR ignores it)")
    p.add_argument("--steps", type=int, help="ancestral / remask: denoising steps (default: tokens to generate)")
    p.add_argument("--block-length", type=int,
                   help="remask / threshold: semi-autoregressive block, in [MASK] tokens (default: one block)")
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
    sampler, options = args.sampler or "ancestral", {}
    if run.objective == "diffusion":
        options = sampler_options(sampler, steps=args.steps, block_length=args.block_length,
                                  threshold=args.threshold, num_masked=template.num_masked)
    result, seconds = generate_samples(run, template, args.num, processor=processor, sampler=sampler,
                                       options=options, seed=args.seed, device=args.device)
    for i, row in enumerate(result.tokens.tolist()):
        print(f"--- sample {i + 1}/{args.num} ---")
        print(run.tokenizer.decode(row, skip_special_tokens=False))
    if run.objective == "ar":
        ignored = ["--" + k.replace("_", "-") for k in ("sampler", "steps", "block_length", "threshold")
                   if getattr(args, k) is not None]
        cache = "with a KV cache" if run.model.supports_kv_cache else "recomputing (attention kind has no KV cache)"
        print(f"autoregressive checkpoint: decoded left to right {cache}"
              + (f"; ignored {', '.join(ignored)} (diffusion only)" if ignored else ""), file=sys.stderr)
    per_step = result.committed[result.committed > 0].double()  # steps that commit, per sample
    name = "ar" if run.objective == "ar" else " ".join([sampler] + [f"{k}={v}" for k, v in options.items() if v])
    print(f"{name}: {result.forward_passes} forward passes (batch of {args.num}), "
          f"{result.tokens_per_pass:.2f} tokens per forward pass (per sample), "
          f"{result.generated * args.num / seconds:.1f} tokens/s ({result.generated * args.num:.0f} tokens in "
          f"{seconds:.2f} s); tokens per committing step: mean {per_step.mean():.2f}, max {per_step.max():.0f}",
          file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- scoring
@torch.no_grad()
def generative_nll(ar_model: torch.nn.Module, tokens: torch.Tensor, prompt_length: int, bos_id: int) -> torch.Tensor:
    """Mean NLL (nats) per generated token (B,) of ``tokens`` (B, P + L) under the AR model, given the prompt."""
    inp = torch.cat([torch.full_like(tokens[:, :1], bos_id), tokens[:, :-1]], dim=1)  # (B, P + L)
    logp = ar_model(inp).double().log_softmax(dim=-1)  # (B, P + L, V)
    nll = -logp.gather(-1, tokens[..., None]).squeeze(-1)  # (B, P + L)
    return nll[:, prompt_length:].mean(dim=1)


def unigram_entropy(tokens: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each row's token frequencies (B,): low values flag repetition."""
    out = []
    for row in tokens:
        p = row.unique(return_counts=True)[1].double() / row.numel()
        out.append(-(p * p.log()).sum())
    return torch.stack(out)


# --------------------------------------------------------------------------- crossover bench sample
def add_bench_sample_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("ar_checkpoint", help="autoregressive run folder or .ckpt (also scores the samples)")
    p.add_argument("diffusion_checkpoint", help="diffusion run folder or .ckpt")
    p.add_argument("--length", type=int, default=DEFAULT_LENGTH, help=f"tokens to generate (default {DEFAULT_LENGTH})")
    p.add_argument("--prompt", help="text to continue (default: none)")
    p.add_argument("--num", type=int, default=8, help="samples per point, decoded one at a time (default 8)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature for every sampler (default 1)")
    p.add_argument("--steps", type=int, nargs="+",
                   help="ancestral / remask steps (default: length/1, /2, /4, /8)")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.7, 0.9, 0.95],
                   help="threshold sampler confidences (default 0.5 0.7 0.9 0.95)")
    p.add_argument("--block-length", type=int, help="remask / threshold block length (default: one block)")
    p.add_argument("--samplers", nargs="+", choices=sorted(SAMPLERS), default=sorted(SAMPLERS),
                   help="diffusion samplers to bench (default: all)")
    p.add_argument("--no-eod", dest="allow_eod", action="store_false", help="never generate [EOD]")
    p.add_argument("--out", help="folder for bench_sample.json, bench_sample.png and bench_sample.pdf")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")


def _load_kind(path: str, objective: str, role: str) -> LoadedRun:
    run = load_checkpoint(path)
    if run.objective != objective:
        raise CheckpointError(f"{role} {path!r} holds a {run.objective!r} run; {role} must be a {objective!r} "
                              "checkpoint")
    return run


def bench_points(samplers: list[str], steps: list[int], thresholds: list[float],
                 block_length: int | None) -> list[tuple[str, dict[str, Any]]]:
    """(sampler, options) of every diffusion point of the bench."""
    points = []
    for name in samplers:
        if name == "threshold":
            points += [(name, {"threshold": t, "block_length": block_length}) for t in thresholds]
        else:
            block = {"block_length": block_length} if name == "remask" else {}
            points += [(name, {"steps": s, **block}) for s in steps]
    return points


def bench_sample(ar: LoadedRun, diffusion: LoadedRun, template: Template, points: list[tuple[str, dict[str, Any]]],
                 *, num: int, seed: int, processor: LogitsProcessor, device: str = "cpu") -> list[dict[str, Any]]:
    """One row for AR's point, then one per diffusion (sampler, options) point, all scored by the AR model.

    Every point decodes the same ``num`` seeds one sample at a time (batch 1), so forward passes per
    token are exact per sample and tokens/s is single-sequence throughput, as Fast-dLLM measures it.
    """
    if template.prompt_length is None:
        raise SamplingError("bench sample needs a prompt template (AR cannot infill)")
    for name, options in points:  # refuse impossible settings before decoding anything
        build_sampler(name, mask_id=diffusion.tokenizer.mask_token_id, processor=processor, **options).check(
            template.num_masked)
    rows = []
    for name, options in [("ar", {})] + points:
        run = ar if name == "ar" else diffusion
        results, seconds = [], 0.0
        for i in range(num):
            result, s = generate_samples(run, template, 1, processor=processor, sampler=name, options=options,
                                         seed=seed + i, device=device)
            results.append(result)
            seconds += s
        tokens = torch.cat([r.tokens for r in results])  # (num, P + L)
        nll = generative_nll(ar.model.to(tokens.device), tokens, template.prompt_length,
                             ar.tokenizer.eos_token_id).cpu()
        generated = num * template.num_masked
        rows.append({
            "sampler": name, "steps": options.get("steps"), "threshold": options.get("threshold"),
            "block_length": options.get("block_length"), "samples": num, "new_tokens": template.num_masked,
            "forward_passes_per_token": sum(r.forward_passes for r in results) / generated,
            "tokens_per_s": generated / seconds,
            "gen_nll": nll.mean().item(), "gen_nll_se": (nll.std() / math.sqrt(num)).item() if num > 1 else 0.0,
            "gen_ppl": math.exp(nll.mean().item()),
            "entropy": unigram_entropy(tokens[:, template.prompt_length:].cpu()).mean().item(),
        })
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'sampler':<10} {'steps':>5} {'tau':>5} {'pass/tok':>8} {'tok/s':>9} {'gen NLL':>13} "
            f"{'gen PPL':>8} {'entropy':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        steps = "" if r["steps"] is None else str(r["steps"])
        tau = "" if r["threshold"] is None else f"{r['threshold']:g}"
        lines.append(f"{r['sampler']:<10} {steps:>5} {tau:>5} {r['forward_passes_per_token']:>8.3f} "
                     f"{r['tokens_per_s']:>9.1f} {r['gen_nll']:>7.3f} ± {r['gen_nll_se']:.3f} "
                     f"{r['gen_ppl']:>8.1f} {r['entropy']:>7.3f}")
    return "\n".join(lines)


def plot_frontier(rows: list[dict[str, Any]], out: Path, title: str) -> list[Path]:
    """Generative NLL against forward passes per token (left) and tokens/s (right); AR's point starred.

    The left panel labels each point with its steps or threshold; points that coincide there (e.g.
    thresholds a model never reaches) share one label. The right panel shows the same points."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig = Figure(figsize=(10, 4.2), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    names = [n for n in SAMPLERS if any(r["sampler"] == n for r in rows)]
    ar = next(r for r in rows if r["sampler"] == "ar")
    for ax, key, label in ((axes[0], "forward_passes_per_token", "forward passes per generated token"),
                           (axes[1], "tokens_per_s", "throughput (generated tokens/s, batch 1)")):
        for name in names:
            pts = sorted((r for r in rows if r["sampler"] == name), key=lambda r: r[key])
            ax.plot([r[key] for r in pts], [r["gen_nll"] for r in pts], marker="o", label=name)
        ax.scatter([ar[key]], [ar["gen_nll"]], marker="*", s=220, color="black", zorder=5, label="AR (KV cache)")
        # passes per token fall on powers of two (steps = length/1, /2, /4, ...); plain numbers on both axes
        ax.set_xscale("log", base=2 if key == "forward_passes_per_token" else 10)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.margins(x=0.12)
        ax.set_xlabel(label)
        ax.grid(True, which="both", alpha=0.3)
    ax = axes[0]
    steps: dict[tuple[float, float], list[int]] = {}
    taus: dict[tuple[float, float], list[float]] = {}
    for r in rows:
        xy = (r["forward_passes_per_token"], r["gen_nll"])
        if r["sampler"] == "threshold":
            taus.setdefault(xy, []).append(r["threshold"])
        elif r["sampler"] != "ar":
            steps.setdefault(xy, []).append(r["steps"])
    lo, hi = (math.log(v) for v in ax.get_xlim())
    for xy in {**steps, **taus}:
        t = sorted(taus.get(xy, []))
        text = ", ".join(([f"{'/'.join(map(str, steps[xy]))} steps"] if xy in steps else [])
                         + ([f"τ={t[0]:g}" + (f"…{t[-1]:g} ({len(t)})" if len(t) > 1 else "")] if t else []))
        right = (math.log(xy[0]) - lo) / (hi - lo) > 0.7  # label to the left of points near the right edge
        ax.annotate(text, xy, textcoords="offset points", xytext=(-4 if right else 4, 4),
                    ha="right" if right else "left", fontsize=7)
    ax.set_ylabel("generative NLL under the AR model (nats/token)")
    ax.legend()
    fig.suptitle(title)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "bench_sample.png", out / "bench_sample.pdf"]
    for path in paths:
        fig.savefig(path, dpi=150)
    return paths


def cmd_bench_sample(args: argparse.Namespace) -> int:
    from data.tokenizer import tokenizer_hash

    ar = _load_kind(args.ar_checkpoint, "ar", "AR_CKPT")
    diffusion = _load_kind(args.diffusion_checkpoint, "diffusion", "DIFF_CKPT")
    if tokenizer_hash(ar.tokenizer) != tokenizer_hash(diffusion.tokenizer):
        raise CheckpointError("the AR and diffusion checkpoints use different tokenizers: the AR model cannot score "
                              "the diffusion samples")
    if args.num < 1:
        raise SamplingError(f"--num must be at least 1, got {args.num}")
    seq_len = min(ar.model.config.seq_len, diffusion.model.config.seq_len)
    template = build_template(ar.tokenizer, prompt=args.prompt, length=args.length, seq_len=seq_len)
    steps = args.steps or sorted({max(1, template.num_masked // d) for d in (1, 2, 4, 8)}, reverse=True)
    points = bench_points(args.samplers, steps, args.thresholds, args.block_length)
    processor = make_processor(ar.tokenizer, temperature=args.temperature, allow_eod=args.allow_eod)
    rows = bench_sample(ar, diffusion, template, points, num=args.num, seed=args.seed, processor=processor,
                        device=args.device)
    print(format_table(rows))
    if args.out:
        out = Path(args.out)
        settings = {k: getattr(args, k) for k in ("ar_checkpoint", "diffusion_checkpoint", "length", "prompt", "num",
                                                   "seed", "temperature", "block_length", "allow_eod")}
        title = (f"{args.num} samples of {template.num_masked} tokens, temperature {args.temperature:g}"
                 + (f", prompt {args.prompt!r}" if args.prompt else ""))
        paths = plot_frontier(rows, out, title)
        (out / "bench_sample.json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=2) + "\n")
        print(f"wrote {out / 'bench_sample.json'}, {', '.join(str(p) for p in paths)}", file=sys.stderr)
    return 0
