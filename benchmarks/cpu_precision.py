"""fp32 against bf16 autocast for CPU training steps (diffusion objective, one thread).

    python benchmarks/cpu_precision.py

Prints training tokens/s for the tiny and small presets, vocab 4096 and 1024, batch 8 and 32.
"""
import time, torch, sys
from models import ModelConfig, Transformer
from models.objectives import build_objective
torch.set_num_threads(1)
for preset in ["tiny", "small"]:
  for vocab in [4096, 1024]:
    for B in [8, 32]:
      for prec in ["fp32", "bf16"]:
        cfg = ModelConfig.from_name(preset, vocab_size=vocab, causal=False)
        m = Transformer(cfg); opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
        obj = build_objective("diffusion", mask_id=1)
        x = torch.randint(3, vocab, (B, cfg.seq_len)); v = torch.ones_like(x, dtype=torch.bool)
        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec=="bf16"):
                loss = obj.loss_sum(m, x, v, torch.Generator().manual_seed(0)) / v.sum()
            loss.backward(); opt.step(); opt.zero_grad()
        for _ in range(3): step()
        n=10; t=time.perf_counter()
        for _ in range(n): step()
        dt=(time.perf_counter()-t)/n
        print(f"{preset:6} V{vocab:5} B{B:3} {prec}: {B*cfg.seq_len/dt:8.0f} tok/s", flush=True)
