"""Device helpers shared by training, sampling and the benchmarks (torch only: no Lightning)."""

from __future__ import annotations

import torch


def synchronize(device: torch.device | str) -> None:
    """Wait for queued CUDA work on ``device`` (timings); nothing to wait for on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resolve_precision(precision: str, accelerator: str = "auto") -> str:
    """Lightning precision; ``auto``: bf16-mixed on a GPU, 32-true on the CPU (bf16 autocast is far slower
    on CPUs, ``benchmarks/cpu_precision.py``)."""
    if precision != "auto":
        return precision
    use_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return "bf16-mixed" if use_gpu else "32-true"
