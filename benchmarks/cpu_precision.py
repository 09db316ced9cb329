"""fp32 against bf16 autocast for CPU training steps (diffusion objective, one thread).

    python benchmarks/cpu_precision.py

Prints training tokens/s for the tiny and small presets, vocab 4096 and 1024, batch 8 and 32.
"""

import itertools
import time

import torch

from models import ModelConfig, Transformer
from models.objectives import build_objective


def tokens_per_s(preset: str, vocab: int, batch: int, precision: str, steps: int = 10) -> float:
    cfg = ModelConfig.from_name(preset, vocab_size=vocab, causal=False)
    model = Transformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    objective = build_objective("diffusion")
    x = torch.randint(3, vocab, (batch, cfg.seq_len))
    valid = torch.ones_like(x, dtype=torch.bool)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = objective.loss_sum(model, x, valid, torch.Generator().manual_seed(0)) / valid.sum()
        loss.backward()
        opt.step()
        opt.zero_grad()

    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch * cfg.seq_len / (time.perf_counter() - t0)


if __name__ == "__main__":
    torch.set_num_threads(1)
    grid = itertools.product(["tiny", "small"], [4096, 1024], [8, 32], ["fp32", "bf16"])
    for preset, vocab, batch, precision in grid:
        speed = tokens_per_s(preset, vocab, batch, precision)
        print(f"{preset:6} V{vocab:5} B{batch:3} {precision}: {speed:8.0f} tok/s", flush=True)
