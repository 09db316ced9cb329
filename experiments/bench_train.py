"""``crossover bench train``: tokens/s of our Lightning training step against a bare PyTorch loop.

Both train the same model (same seed and initialisation), objective, batch and data (random token
rows through the same sampler), with the same AdamW groups, schedule and gradient clipping; ours
runs through ``L.Trainer`` with the loggers, throughput accounting and per-row noise of a real
run (no checkpoint inside the timed window). Runs are interleaved (ours, bare, ours, bare, ...) and
the median of the repeats is reported, so slow drifts of a shared machine hit both alike.
Needs no corpus and no ``datasets``: the GPU script runs it on a bare machine.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field

import torch

from data.budget import pack
from experiments.config import OptimArgs
from experiments.devices import resolve_precision, synchronize
from models import ModelConfig, count_params
from models.objectives import OBJECTIVES, build_objective


@dataclass
class TrainBench:
    """Settings of ``crossover bench train`` (its flags)."""

    models: list[str] = field(default_factory=lambda: ["tiny", "small"])
    objective: str = "diffusion"
    attention: str = "dense"
    batch_size: int = 8
    seq_len: int | None = None  # None: the preset's
    vocab_size: int = 4096
    steps: int = 40  # timed steps per run
    warmup: int = 5  # untimed steps before timing
    repeats: int = 3  # interleaved runs of each (median reported)
    precision: str = "auto"
    compile: bool = False
    peak_flops: float = 0.0
    threads: int = 0


def _setup(args, preset: str, device: torch.device):
    from experiments.datamodule import BudgetDataModule
    from experiments.module import LitLM

    overrides = {"seq_len": args.seq_len} if args.seq_len else {}
    mcfg = ModelConfig.from_name(preset, vocab_size=args.vocab_size, attention=args.attention,
                                 causal=OBJECTIVES[args.objective].causal, **overrides)
    n_rows = args.batch_size * (args.warmup + args.steps + 1)
    g = torch.Generator().manual_seed(0)
    train = pack(torch.randint(3, args.vocab_size, (n_rows * mcfg.seq_len,), generator=g).numpy(), mcfg.seq_len, 0)
    optim = OptimArgs(lr=1e-3, schedule="cosine", warmup_steps=10)
    total = args.warmup + args.steps

    def lit() -> LitLM:
        torch.manual_seed(0)
        return LitLM(mcfg, build_objective(args.objective), optim, total, seed=0, compile=args.compile,
                     log_every_n_steps=10, peak_flops=args.peak_flops)

    data = BudgetDataModule(train, args.batch_size, 1, seed=0)
    return mcfg, lit, data, total


class _StepTimer:
    """Lightning callback: wall time from the start of step ``warmup`` to the end of the last step."""

    def __init__(self, warmup: int, device: torch.device):
        import lightning as L

        class Timer(L.Callback):
            def on_train_batch_start(cb, trainer, *a):
                if trainer.global_step == warmup:
                    synchronize(device)
                    self.t0 = time.perf_counter()

            def on_train_end(cb, trainer, *a):
                synchronize(device)
                self.t1 = time.perf_counter()

        self.callback = Timer()
        self.t0 = self.t1 = 0.0


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
    for step, batch in enumerate(loader):
        if step == total:
            break
        if step == args.warmup:
            synchronize(device)
            t0 = time.perf_counter()
        x, valid = batch.tokens.to(device), batch.valid.to(device)
        with autocast:
            loss = objective.loss_sum(forward_model, x, valid, gen) / valid.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    synchronize(device)
    return args.steps * args.batch_size * mcfg.seq_len / (time.perf_counter() - t0)


def run(args: TrainBench) -> dict:
    """Interleaved repeats of ours and the bare loop per model; the report (medians, ratio, MFU)."""
    from experiments.module import default_peak_flops

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = resolve_precision(args.precision)
    results = []
    for preset in args.models:
        ours, bare = [], []
        for _ in range(args.repeats):
            ours.append(run_ours(args, preset, device, precision))
            bare.append(run_bare(args, preset, device, precision))
        mcfg = ModelConfig.from_name(preset, vocab_size=args.vocab_size, attention=args.attention,
                                     **({"seq_len": args.seq_len} if args.seq_len else {}))
        n = count_params(mcfg, non_embedding=True)
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
    return {"device": device_name, "torch": torch.__version__, "steps": args.steps, "repeats": args.repeats,
            "ratio": min(r["ratio"] for r in results),  # the worst model's ours / bare
            "ours_tokens_per_s": {r["model"]: r["ours_tokens_per_s"] for r in results},
            "bare_tokens_per_s": {r["model"]: r["bare_tokens_per_s"] for r in results}, "results": results}
