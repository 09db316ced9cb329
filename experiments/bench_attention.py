"""Attention benchmark (``crossover bench attention``): time and peak memory of dense and sparse attention.

Methods, each causal and bidirectional, over sequence lengths:

* ``dense``  -- ``F.scaled_dot_product_attention`` (PyTorch picks its fused kernel).
* ``flex``   -- FlexAttention (compiled) with the sliding window of ``--window`` tokens as a BlockMask
  built from block lists (no T x T mask); CUDA only (its CPU path has no fused backward): skipped
  with a note elsewhere.
* ``window``, ``nsa``, ``topk`` -- the attention kinds of ``models.attention`` (block lists included).
* ``op``     -- the raw ``block_sparse_attention`` on fixed random lists of ``--topk`` blocks per query
  block (the current one included), i.e. the kernel cost without any list building.

Per case: forward time (under ``torch.no_grad``), forward+backward time (gradients for q, k, v and
the block input x), medians over ``--repeats`` after ``--warmup`` runs; and the peak memory of one
forward and of one forward+backward, *above what was allocated before the call*:
``torch.cuda.max_memory_allocated`` on CUDA; on CPU the running sum of the PyTorch CPU allocator's
allocation/free events recorded by ``torch.profiler`` (profile_memory=True) -- tensors only, no
interpreter or library overhead. The CLI prints the rows as a table and, with ``--json PATH``, they are
saved as JSON with the settings.

Only torch, tqdm and ``models`` are imported (no Lightning, no datasets), so this runs on a bare
GPU machine as ``python -m experiments.cli bench attention``.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from analysis.table import atomic_write_text
from experiments.devices import synchronize
from models.attention import block_sparse_attention, build_attention
from models.attention.block_sparse import BACKEND_ENV, topk_block_lists, window_block_lists
from models.config import ModelConfig

METHODS = ("dense", "flex", "window", "nsa", "topk", "op")
CPU_LENGTHS = (512, 1024, 2048, 4096, 8192)
GPU_LENGTHS = (1024, 2048, 4096, 8192, 16384, 32768, 65536)
FLEX_BLOCK = 128  # FlexAttention's default sparse block size
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_DEFAULTS = ModelConfig()


@dataclass
class AttentionBench:
    """Settings of one attention benchmark (the CLI's ``crossover bench attention`` flags)."""

    lengths: list[int] | None = None  # None: CPU_LENGTHS on CPU, GPU_LENGTHS on CUDA
    device: str | None = None  # None: cuda if available
    dtype: str | None = None  # None: bfloat16 on CUDA, float32 on CPU
    repeats: int = 3
    warmup: int = 1
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    modes: list[str] = field(default_factory=lambda: ["causal", "bidir"])
    batch: int = 1
    heads: int = 8
    kv_heads: int = 2
    head_dim: int = 64
    block: int = _DEFAULTS.attn_block
    topk: int = _DEFAULTS.attn_topk
    window: int = _DEFAULTS.attn_window
    stride: int | None = None
    backend: str | None = None


class Skip(Exception):
    """A method that cannot run in this setting; the message is the note."""


def _median_ms(fn: Callable[[], None], repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _cpu_peak_bytes(fn: Callable[[], None]) -> int:
    """Peak of the running sum of CPU allocator events during ``fn`` (bytes above the start)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == torch._C._autograd.DeviceType.CPU)
    peak = current = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return peak


def _peak_mb(fn: Callable[[], None], device: torch.device) -> float:
    if device.type != "cuda":
        return _cpu_peak_bytes(fn) / 2**20
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def _flex(T: int, causal: bool, window: int, device: torch.device) -> Callable:
    """Compiled FlexAttention over a sliding window, its BlockMask built from window block lists."""
    if device.type != "cuda":
        raise Skip("FlexAttention runs fused (compiled, with backward) on CUDA only")
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    def window_mask(b, h, q_idx, kv_idx):
        dist = q_idx - kv_idx
        return ((dist >= 0) & (dist < window)) if causal else (dist.abs() < window)

    indices, counts = window_block_lists(T, FLEX_BLOCK, window, causal, device)
    n = indices.shape[2]
    full_width = torch.zeros(1, 1, n, n, dtype=torch.int32, device=device)  # flex wants width = #kv blocks
    full_width[..., : indices.shape[3]] = indices
    mask = BlockMask.from_kv_blocks(counts, full_width, BLOCK_SIZE=FLEX_BLOCK, mask_mod=window_mask,
                                    seq_lengths=(T, T))
    compiled = torch.compile(flex_attention)
    return lambda q, k, v, x: compiled(q, k, v, block_mask=mask, enable_gqa=q.shape[1] != k.shape[1])


def _random_lists(B: int, Hkv: int, T: int, args: AttentionBench, causal: bool, device: torch.device):
    """Fixed random lists: the current block plus ``topk - 1`` others (earlier ones only if causal)."""
    n = -(-T // args.block)
    g = torch.Generator(device=device).manual_seed(0)
    scores = torch.rand(B, Hkv, n, n, generator=g, device=device)
    blocks = torch.arange(n, device=device)
    allowed = blocks[None, :] <= blocks[:, None] if causal else None
    return topk_block_lists(scores, args.topk, allowed=allowed, forced=blocks[:, None] == blocks[None, :])


def build_method(method: str, T: int, causal: bool, args: AttentionBench, device: torch.device,
                 dtype: torch.dtype) -> Callable:
    """A callable ``(q, k, v, x) -> (B, Hq, T, D)`` for one benchmark case."""
    if method == "dense":
        return lambda q, k, v, x: F.scaled_dot_product_attention(
            q, k, v, is_causal=causal, enable_gqa=q.shape[1] != k.shape[1])
    if method == "flex":
        return _flex(T, causal, args.window, device)
    if method == "op":
        indices, counts = _random_lists(args.batch, args.kv_heads, T, args, causal, device)
        return lambda q, k, v, x: block_sparse_attention(
            q, k, v, indices, counts, block_size=args.block, causal=causal, backend=args.backend)
    if method in ("window", "nsa", "topk"):
        config = ModelConfig(
            seq_len=T, n_head=args.heads, n_kv_head=args.kv_heads, d_model=args.heads * args.head_dim,
            causal=causal, attention=method, attn_block=args.block, attn_topk=args.topk,
            attn_window=args.window, attn_stride=args.stride,
        )
        return build_attention(config).to(device=device, dtype=dtype)
    raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def bench_case(method: str, T: int, causal: bool, args: AttentionBench, device: torch.device,
               dtype: torch.dtype) -> dict:
    row = dict(method=method, mode="causal" if causal else "bidir", seq_len=T, fwd_ms=None, fwd_bwd_ms=None,
               fwd_peak_mb=None, fwd_bwd_peak_mb=None, note="")
    try:
        fn = build_method(method, T, causal, args, device, dtype)
        B, H, Hkv, D = args.batch, args.heads, args.kv_heads, args.head_dim
        g = torch.Generator(device=device).manual_seed(T)
        q, k, v = (torch.randn(B, h, T, D, generator=g, device=device, dtype=dtype).requires_grad_()
                   for h in (H, Hkv, Hkv))
        x = torch.randn(B, T, H * D, generator=g, device=device, dtype=dtype).requires_grad_()
        grad_out = torch.randn(B, H, T, D, generator=g, device=device, dtype=dtype)
        params = list(fn.parameters()) if isinstance(fn, torch.nn.Module) else []

        def forward():
            with torch.no_grad():
                fn(q, k, v, x)

        def forward_backward():
            for t in (q, k, v, x, *params):
                t.grad = None
            fn(q, k, v, x).backward(grad_out)

        for _ in range(args.warmup):
            forward()
            forward_backward()
        row["fwd_ms"] = _median_ms(forward, args.repeats, device)
        row["fwd_bwd_ms"] = _median_ms(forward_backward, args.repeats, device)
        row["fwd_peak_mb"] = _peak_mb(forward, device)
        row["fwd_bwd_peak_mb"] = _peak_mb(forward_backward, device)
    except Skip as skip:
        row["note"] = f"skipped: {skip}"
    except torch.cuda.OutOfMemoryError:
        row["note"] = "out of memory"
    except Exception as err:  # keep benchmarking the other cases; reported and counted in the exit code
        row["note"] = f"error: {type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def _settings(args: AttentionBench, device: torch.device, dtype: torch.dtype) -> dict:
    try:
        triton_version = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        triton_version = None
    return dict(
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        dtype=str(dtype).removeprefix("torch."), batch=args.batch, heads=args.heads, kv_heads=args.kv_heads,
        head_dim=args.head_dim, block=args.block, topk=args.topk, window=args.window,
        stride=args.stride or args.block // 2, backend=args.backend or os.environ.get(BACKEND_ENV) or "auto",
        repeats=args.repeats, warmup=args.warmup, torch=torch.__version__, triton=triton_version,
        threads=torch.get_num_threads(),
        fwd="median ms under torch.no_grad", fwd_bwd="median ms; grads of q, k, v, x and the kind's parameters",
        memory=("torch.cuda.max_memory_allocated above the allocation before the call" if device.type == "cuda"
                else "peak of torch.profiler CPU allocator events above the start of the call (tensors only)"),
    )


def run(args: AttentionBench, json_path: Path | None = None, progress: bool = True
        ) -> tuple[dict, list[dict], int, bool]:
    """Run the benchmark: (settings, rows, number of cases, interrupted). Rows are also written to
    ``json_path`` after every case, so an interrupted run keeps what it measured."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[args.dtype or ("bfloat16" if device.type == "cuda" else "float32")]
    lengths = args.lengths or list(GPU_LENGTHS if device.type == "cuda" else CPU_LENGTHS)
    unknown = (set(args.methods) - set(METHODS)) | (set(args.modes) - {"causal", "bidir"})
    if unknown:
        raise ValueError(f"unknown methods or modes: {', '.join(sorted(unknown))}")
    if args.heads % args.kv_heads:
        raise ValueError(f"--heads {args.heads} must be a multiple of --kv-heads {args.kv_heads}")
    if "flex" in args.methods and device.type == "cuda":  # FlexAttention compiles one graph per length and mode
        limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
        setattr(torch._dynamo.config, limit, max(getattr(torch._dynamo.config, limit), 64))

    settings = _settings(args, device, dtype)
    cases = [(m, T, mode == "causal") for mode in args.modes for T in lengths for m in args.methods]
    saved_env = os.environ.get(BACKEND_ENV)
    if args.backend:
        os.environ[BACKEND_ENV] = args.backend  # the kinds call the op without a backend argument
    rows, interrupted = [], False
    try:
        for method, T, causal in tqdm(cases, desc="bench attention", disable=not progress, file=sys.stderr):
            rows.append(bench_case(method, T, causal, args, device, dtype))
            if json_path:
                atomic_write_text(json_path, json.dumps(dict(settings=settings, results=rows), indent=2) + "\n")
    except KeyboardInterrupt:  # Ctrl-C or `timeout -s INT`: report the cases measured so far
        interrupted = True
    finally:
        if saved_env is None:
            os.environ.pop(BACKEND_ENV, None)
        else:
            os.environ[BACKEND_ENV] = saved_env
    return settings, rows, len(cases), interrupted
