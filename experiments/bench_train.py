"""``crossover bench train``: tokens/s of our Lightning training step against a bare PyTorch loop.

Both train the same model (same seed and initialisation), objective, batch and data (random token
rows through the same sampler), with the same AdamW groups, schedule and gradient clipping; ours
runs through ``L.Trainer`` with the loggers, throughput accounting and per-row noise of a real
run (no checkpoint inside the timed window). Runs are interleaved (ours, bare, ours, bare, ...) and
the median of the repeats is reported, so slow drifts of a shared machine hit both alike.
Needs no corpus and no ``datasets``: the GPU script runs it on a bare machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from data.budget import pack
from models import ModelConfig, Transformer
from models.objectives import OBJECTIVES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", nargs="+", default=["tiny", "small"], help="model presets to measure")
    p.add_argument("--objective", choices=sorted(OBJECTIVES), default="diffusion")
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
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: all cores)")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON to this file")


def _setup(args, preset: str, device: torch.device):
    from experiments.datamodule import BudgetDataModule
    from experiments.module import LitLM

    overrides = {"seq_len": args.seq_len} if args.seq_len else {}
    mcfg = ModelConfig.from_name(preset, vocab_size=args.vocab_size, attention=args.attention,
                                 causal=OBJECTIVES[args.objective].causal, **overrides)
    n_rows = args.batch_size * (args.warmup + args.steps + 1)
    g = torch.Generator().manual_seed(0)
    train = pack(torch.randint(3, args.vocab_size, (n_rows * mcfg.seq_len,), generator=g).numpy(), mcfg.seq_len, 0)
    optim = {"lr": 1e-3, "schedule": "cosine", "warmup_steps": 10, "min_lr_ratio": 0.1, "decay_fraction": 0.2,
             "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.95}
    total = args.warmup + args.steps

    def lit() -> LitLM:
        torch.manual_seed(0)
        return LitLM(mcfg.to_dict(), args.objective, {"bos_id": 2, "mask_id": 1}, optim, total, seed=0,
                     compile=args.compile, log_every_n_steps=10, peak_flops=args.peak_flops)

    data = BudgetDataModule(train, args.batch_size, 1, seed=0)
    return mcfg, lit, data, total


class _StepTimer:
    """Lightning callback: wall time from the start of step ``warmup`` to the end of the last step."""

    def __init__(self, warmup: int, device: torch.device):
        import lightning as L

        class Timer(L.Callback):
            def on_train_batch_start(cb, trainer, *a):
                if trainer.global_step == warmup:
                    _sync(device)
                    self.t0 = time.perf_counter()

            def on_train_end(cb, trainer, *a):
                _sync(device)
                self.t1 = time.perf_counter()

        self.callback = Timer()
        self.t0 = self.t1 = 0.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_ours(args, preset, device, precision) -> float:
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from experiments.module import quiet_lightning

    quiet_lightning()
    mcfg, make_lit, data, total = _setup(args, preset, device)
    timer = _StepTimer(args.warmup, device)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(max_steps=total, accelerator=device.type if device.type == "cpu" else "gpu", devices=1,
                            precision=precision, gradient_clip_val=1.0, logger=[CSVLogger(tmp, name="m")],
                            callbacks=[timer.callback], log_every_n_steps=10, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                            limit_val_batches=0, use_distributed_sampler=False)
        trainer.fit(make_lit(), datamodule=data)
    return args.steps * args.batch_size * mcfg.seq_len / (timer.t1 - timer.t0)


def run_bare(args, preset, device, precision) -> float:
    """The loop a researcher writes by hand: same model, objective, optimiser, schedule and clipping."""
    from experiments.datamodule import EpochBatchSampler, RowDataset

    mcfg, make_lit, data, total = _setup(args, preset, device)
    lit = make_lit().to(device)
    model, objective = lit.model, lit.objective
    forward_model = torch.compile(model) if args.compile else model
    opt_cfg = lit.configure_optimizers()
    opt, sched = opt_cfg["optimizer"], opt_cfg["lr_scheduler"]["scheduler"]
    sampler = EpochBatchSampler(data.train.valid.sum(1).numpy(), args.batch_size, seed=0)
    loader = torch.utils.data.DataLoader(RowDataset(data.train), batch_sampler=sampler)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision.startswith("bf16"))
    gen = torch.Generator().manual_seed(0)
    model.train()
    t0 = 0.0
    for step, (x, valid, *_rest) in enumerate(loader):
        if step == total:
            break
        if step == args.warmup:
            _sync(device)
            t0 = time.perf_counter()
        x, valid = x.to(device), valid.to(device)
        with autocast:
            loss = objective.loss_sum(forward_model, x, valid, gen) / valid.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    _sync(device)
    return args.steps * args.batch_size * mcfg.seq_len / (time.perf_counter() - t0)


def run(args: argparse.Namespace) -> int:
    from experiments.module import default_peak_flops

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = args.precision if args.precision != "auto" else ("bf16-mixed" if device.type == "cuda" else "32-true")
    results = []
    for preset in args.models:
        ours, bare = [], []
        for _ in range(args.repeats):
            ours.append(run_ours(args, preset, device, precision))
            bare.append(run_bare(args, preset, device, precision))
        mcfg = ModelConfig.from_name(preset, vocab_size=args.vocab_size,
                                     **({"seq_len": args.seq_len} if args.seq_len else {}))
        n = Transformer(mcfg).num_params(non_embedding=True)
        o, b = statistics.median(ours), statistics.median(bare)
        peak = args.peak_flops or default_peak_flops(device)
        results.append({
            "model": preset, "objective": args.objective, "attention": args.attention, "non_embedding_params": n,
            "batch_size": args.batch_size, "seq_len": mcfg.seq_len, "precision": precision, "compile": args.compile,
            "ours_tokens_per_s": o, "bare_tokens_per_s": b, "ratio": o / b,
            "ours_runs": ours, "bare_runs": bare,
            "model_flops_per_s": 6 * n * o, "mfu": 6 * n * o / peak if peak else None,
        })
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    report = {"device": device_name, "torch": torch.__version__, "steps": args.steps, "repeats": args.repeats,
              "ratio": min(r["ratio"] for r in results),  # the worst model's ours / bare
              "ours_tokens_per_s": {r["model"]: r["ours_tokens_per_s"] for r in results},
              "bare_tokens_per_s": {r["model"]: r["bare_tokens_per_s"] for r in results}, "results": results}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"device {report['device']}, {args.objective}, {args.steps} steps x {args.repeats} interleaved repeats")
        print(f"{'model':<8} {'N':>10} {'ours tok/s':>12} {'bare tok/s':>12} {'ratio':>7} {'MFU':>7}")
        for r in results:
            mfu = f"{r['mfu']:.1%}" if r["mfu"] else "-"
            print(f"{r['model']:<8} {r['non_embedding_params']:>10,} {r['ours_tokens_per_s']:>12,.0f} "
                  f"{r['bare_tokens_per_s']:>12,.0f} {r['ratio']:>7.3f} {mfu:>7}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m experiments.bench_train")
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
