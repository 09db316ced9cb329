"""Generation from checkpoints (``crossover sample``) and the sampler bench (``crossover bench sample``).

``generate_samples`` decodes a template for a loaded run: a causal (AR) checkpoint left to right
with a KV cache, a bidirectional (diffusion) checkpoint with the chosen sampler from a template
with [MASK] where to generate. The CLI (``experiments.cli``) parses and prints; the speed/quality
figure is drawn by ``analysis.sampling`` from the bench's rows.

``bench_sample`` decodes the same prompt with the AR model and with every diffusion sampler across
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

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from experiments.checkpoint import CheckpointError, LoadedRun, load_checkpoint
from experiments.devices import synchronize
from models.objectives import objective_class, shift_right
from models.sampling import (
    SAMPLER_OPTIONS,
    BlockDiffusionSampler,
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
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8 arrive from argv as lone surrogates
        raise SamplingError(f"the text {text.encode('utf-8', 'replace')[:40]!r}... is not valid UTF-8") from None
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
        if fixed >= seq_len:
            raise SamplingError(f"the given text is {fixed} tokens, which leaves no room to generate within the "
                                f"model's seq_len={seq_len}; shorten it to under {seq_len} tokens")
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


def family(run: LoadedRun) -> str:
    """The run's objective, with its block size for block diffusion (``block_diffusion-b4``)."""
    b = _block_size(run)
    return f"{run.objective}-b{b}" if b else run.objective


def _block_size(run: LoadedRun) -> int | None:
    settings = run.config.get(run.objective) if isinstance(run.config, dict) else None
    return settings.get("block_size") if isinstance(settings, dict) else None


def _diffusion_decoder(run: LoadedRun, sampler: str, options: dict[str, Any], processor: LogitsProcessor,
                       num_masked: int) -> Callable:
    """A masked-diffusion sampler over the whole template; steps default to the tokens to generate."""
    if options.get("steps") is None and "steps" in SAMPLER_OPTIONS[sampler]:
        options = {**options, "steps": num_masked}
    return build_sampler(sampler, mask_id=run.tokenizer.mask_token_id, processor=processor, **options)


def _block_decoder(run: LoadedRun, sampler: str, options: dict[str, Any], processor: LogitsProcessor,
                   num_masked: int) -> Callable:
    """Block diffusion: blocks of the checkpoint's size left to right, ``sampler`` inside each block with
    ``steps`` per block (default: the block size)."""
    b = _block_size(run)
    if options.get("block_length") is not None:
        raise SamplingError(f"--block-length does not apply to a block diffusion checkpoint: its blocks are {b} "
                            "tokens")
    return BlockDiffusionSampler(b, sampler, mask_id=run.tokenizer.mask_token_id, processor=processor,
                                 steps=options.get("steps"), threshold=options.get("threshold"))


#: the samplers of the objectives that do not decode left to right, by their ``Objective.decoding``
DECODERS: dict[str, Callable] = {"parallel": _diffusion_decoder, "blockwise": _block_decoder}


def decoding(run: LoadedRun) -> str:
    """How the run's objective generates (``Objective.decoding``)."""
    return objective_class(run.objective).decoding


def decoder(run: LoadedRun, sampler: str, options: dict[str, Any], processor: LogitsProcessor,
            num_masked: int) -> Callable:
    """``(model, template (B, T), generator) -> SampleResult`` for a non-causal run."""
    if decoding(run) not in DECODERS:
        raise SamplingError(f"objective {run.objective!r} decodes {decoding(run)}: it has no parallel sampler")
    return DECODERS[decoding(run)](run, sampler, {k: v for k, v in options.items() if v is not None}, processor,
                                   num_masked)


def generate_samples(run: LoadedRun, template: Template, num: int, *, processor: LogitsProcessor,
                     sampler: str = "ancestral", options: dict[str, Any] | None = None, seed: int = 0,
                     device: str = "cpu") -> tuple[SampleResult, float]:
    """``num`` samples of ``template`` in one batch, and the seconds they took. ``options`` (steps,
    block_length, threshold; None for the default) apply to the sampler of a non-causal run."""
    if num < 1:
        raise SamplingError(f"--num must be at least 1, got {num}")
    causal = decoding(run) == "left_to_right"
    if causal and template.prompt_length is None:
        raise SamplingError("an AR checkpoint cannot infill: it only continues a prompt (use a diffusion checkpoint)")
    if not causal:
        parallel = decoder(run, sampler, options or {}, processor, template.num_masked)
        parallel.check(template.num_masked)
    dev = torch_device(device)
    model = run.model.to(dev)
    generator = torch.Generator(dev).manual_seed(seed)
    ids = template.ids.to(dev).expand(num, -1)  # (B, T)
    start = time.perf_counter()
    with torch.inference_mode():
        if causal:
            P = template.prompt_length
            result = generate(model, ids[:, :P], ids.shape[1] - P, start_id=run.tokenizer.eos_token_id,
                              processor=processor, generator=generator)
        else:
            result = parallel(model, ids, generator)
    synchronize(dev)
    return result, time.perf_counter() - start


# --------------------------------------------------------------------------- scoring
@torch.no_grad()
def generative_nll(ar_model: torch.nn.Module, tokens: torch.Tensor, prompt_length: int, start_id: int) -> torch.Tensor:
    """Mean NLL (nats) per generated token (B,) of ``tokens`` (B, P + L) under the AR model, given the prompt."""
    logp = ar_model(shift_right(tokens, start_id)).double().log_softmax(dim=-1)  # (B, P + L, V)
    nll = -logp.gather(-1, tokens[..., None]).squeeze(-1)  # (B, P + L)
    return nll[:, prompt_length:].mean(dim=1)


def unigram_entropy(tokens: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each row's token frequencies (B,): low values flag repetition."""
    out = []
    for row in tokens:
        p = row.unique(return_counts=True)[1].double() / row.numel()
        out.append(-(p * p.log()).sum())
    return torch.stack(out)


# --------------------------------------------------------------------------- bench sample
def load_kind(path: str, decodings: tuple[str, ...], role: str) -> LoadedRun:
    """The run at ``path``, refused unless its objective decodes in one of ``decodings`` (``role`` names it)."""
    run = load_checkpoint(path)
    if decoding(run) not in decodings:
        raise CheckpointError(f"{role} {path!r} holds a {run.objective!r} run, which decodes {decoding(run)}; "
                              f"{role} must decode {' or '.join(decodings)}")
    return run


def bench_points(run: LoadedRun, samplers: list[str], steps: list[int], thresholds: list[float],
                 block_length: int | None, num_masked: int) -> list[tuple[str, dict[str, Any]]]:
    """(sampler, options) of every point of the bench for a non-causal ``run``. ``steps`` are total
    denoising steps; a block-diffusion run spreads them over its blocks (ceil(steps / blocks) each)."""
    b = _block_size(run)
    blocks = -(-num_masked // b) if b else 1
    points = []
    for name in samplers:
        if name == "threshold":
            extra = {} if b else {"block_length": block_length}
            points += [(name, {"threshold": t, **extra}) for t in thresholds]
        else:
            extra = {"block_length": block_length} if name == "remask" and not b else {}
            points += [(name, {"steps": -(-s // blocks), **extra}) for s in steps]
    return list({repr(p): p for p in points}.values())  # per-block steps may coincide


def bench_sample(ar: LoadedRun, parallel: list[LoadedRun], template: Template,
                 points: list[list[tuple[str, dict[str, Any]]]], *, num: int, seed: int, processor: LogitsProcessor,
                 device: str = "cpu") -> list[dict[str, Any]]:
    """One row for AR's point, then one per (run, sampler, options) point of each non-causal run in
    ``parallel`` (its points in ``points``), all scored by the AR model.

    Every point decodes the same ``num`` seeds one sample at a time (batch 1), so forward passes per
    token are exact per sample and tokens/s is single-sequence throughput, as Fast-dLLM measures it.
    """
    if template.prompt_length is None:
        raise SamplingError("bench sample needs a prompt template (AR cannot infill)")
    for run, run_points in zip(parallel, points):  # refuse impossible settings before decoding anything
        for name, options in run_points:
            decoder(run, name, options, processor, template.num_masked).check(template.num_masked)
    todo = [(ar, "ar", {})] + [(run, n, o) for run, run_points in zip(parallel, points) for n, o in run_points]
    return [_bench_row(ar, run, name, options, template, num=num, seed=seed, processor=processor, device=device)
            for run, name, options in todo]


def _bench_row(ar: LoadedRun, run: LoadedRun, name: str, options: dict[str, Any], template: Template, *, num: int,
               seed: int, processor: LogitsProcessor, device: str) -> dict[str, Any]:
    results, seconds = [], 0.0
    for i in range(num):
        result, s = generate_samples(run, template, 1, processor=processor, sampler=name, options=options,
                                     seed=seed + i, device=device)
        results.append(result)
        seconds += s
    tokens = torch.cat([r.tokens for r in results])  # (num, P + L)
    nll = generative_nll(ar.model.to(tokens.device), tokens, template.prompt_length, ar.tokenizer.eos_token_id).cpu()
    generated = num * template.num_masked
    return {
        "model": family(run), "steps_unit": "steps/block" if decoding(run) == "blockwise" else "steps",
        "sampler": name, "steps": options.get("steps"), "threshold": options.get("threshold"),
        "block_length": options.get("block_length"), "samples": num, "new_tokens": template.num_masked,
        "forward_passes_per_token": sum(r.forward_passes for r in results) / generated,
        "tokens_per_s": generated / seconds,
        "gen_nll": nll.mean().item(), "gen_nll_se": (nll.std() / math.sqrt(num)).item() if num > 1 else 0.0,
        "gen_ppl": math.exp(nll.mean().item()),
        "entropy": unigram_entropy(tokens[:, template.prompt_length:].cpu()).mean().item(),
    }
