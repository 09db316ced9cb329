"""``crossover bench train``: tokens/s of two ways of training, as a ratio measured in one run.

``--compare`` picks the pair (reference A, candidate B; the ratio is B / A):

* ``bare`` (default): a bare PyTorch loop against our Lightning training step (``ours``);
* ``before``: our step as it was before the host-overhead changes of 2026-12-05 (``BeforeLitLM``:
  ``train/loss`` logged at every step, AdamW's per-tensor loop on the CPU) against ours;
* ``compile``: ours eager against ours with ``torch.compile``, each run in a fresh process (as a sweep
  cell is), so ``first_step_s`` (seconds from the start of ``fit`` to the end of the first step) holds
  the compilation a cell pays;
* ``layout``: one worker process with every core (``--threads``, 0: all) against one single-thread
  worker per core, all training at once (their tokens/s summed): ``crossover sweep run``'s
  ``--workers 1`` against ``--workers auto`` for small models;
* ``sweep``: ``before`` and ``layout`` together: the old step in one worker with every core (the old
  ``sweep run`` default) against ours in one single-thread worker per core (the new default).

Both sides train the same model (same seed and initialisation), objective, batch and data (random token
rows through the same sampler), with the same AdamW groups, schedule and gradient clipping; ours runs
through ``L.Trainer`` with the loggers, throughput accounting and per-row noise of a real run (no
checkpoint inside the timed window). Runs are interleaved (A, B, B, A, A, B, ...): the medians of the
repeats give ``ratio``, the median of the per-repeat ratios ``paired_ratio``, so slow drifts of a shared
machine hit both alike. Needs no corpus and no ``datasets``: the GPU script runs it on a bare machine.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from data.budget import pack
from experiments.config import OptimArgs
from experiments.devices import resolve_precision, synchronize
from experiments.module import LitLM
from models import ModelConfig, count_params
from models.objectives import OBJECTIVES, build_objective


@dataclass
class TrainBench:
    """Settings of ``crossover bench train`` (its flags)."""

    models: list[str] = field(default_factory=lambda: ["tiny", "small"])
    objectives: list[str] = field(default_factory=lambda: ["diffusion"])
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
    compare: str = "bare"


class BeforeLitLM(LitLM):
    """Our step before the host-overhead changes of 2026-12-05, the reference of ``--compare before``:
    ``train/loss`` logged at every micro-batch, AdamW's default per-tensor loop on the CPU."""

    def _log_loss_now(self) -> bool:
        return True

    def _adamw_kernel(self) -> dict[str, bool]:
        return {"fused": True} if self.device.type == "cuda" else {}


@dataclass(frozen=True)
class Variant:
    """One side of a comparison: which loop, compiled or not, and the process layout (``procs`` 0: in
    this process with ``threads`` threads; else that many processes training at once, ``threads`` each)."""

    name: str
    loop: str  # bare, ours or before
    compile: bool = False
    procs: int = 0
    threads: int = 0


def variants(compare: str, threads: int, compile: bool) -> tuple[Variant, Variant]:
    """(A, B) of ``--compare``; ``threads`` the CPU threads of the one-process side (0: all cores)."""
    cores = threads or os.cpu_count() or 1
    pairs = {
        "bare": (Variant("bare", "bare", compile, 0, cores), Variant("ours", "ours", compile, 0, cores)),
        "before": (Variant("before", "before", compile, 0, cores), Variant("ours", "ours", compile, 0, cores)),
        "compile": (Variant("eager", "ours", False, 1, cores), Variant("compile", "ours", True, 1, cores)),
        "layout": (Variant("one_worker", "ours", compile, 1, cores), Variant("per_core", "ours", compile, cores, 1)),
        "sweep": (Variant("before_one_worker", "before", compile, 1, cores),
                  Variant("per_core", "ours", compile, cores, 1)),
    }
    if compare not in pairs:
        raise ValueError(f"unknown comparison {compare!r}; choose from {', '.join(pairs)}")
    return pairs[compare]


def _setup(args, preset: str, objective: str, device: torch.device, compile: bool = False,
           lit_cls: type[LitLM] = LitLM):
    from experiments.datamodule import BudgetDataModule

    overrides = {"seq_len": args.seq_len} if args.seq_len else {}
    mcfg = ModelConfig.from_name(preset, vocab_size=args.vocab_size, attention=args.attention,
                                 causal=OBJECTIVES[objective].causal, **overrides)
    n_rows = args.batch_size * (args.warmup + args.steps + 1)
    g = torch.Generator().manual_seed(0)
    train = pack(torch.randint(3, args.vocab_size, (n_rows * mcfg.seq_len,), generator=g).numpy(), mcfg.seq_len, 0)
    optim = OptimArgs(lr=1e-3, schedule="cosine", warmup_steps=10)
    total = args.warmup + args.steps

    def lit() -> LitLM:
        torch.manual_seed(0)
        return lit_cls(mcfg, build_objective(objective), optim, total, seed=0, compile=compile,
                       log_every_n_steps=10, peak_flops=args.peak_flops)

    data = BudgetDataModule(train, args.batch_size, 1, seed=0)
    return mcfg, lit, data, total


class _StepTimer:
    """Lightning callback: wall time from the start of step ``warmup`` to the end of the last step, and
    from the start of ``fit`` to the end of the first step (compilation included)."""

    def __init__(self, warmup: int, device: torch.device):
        import lightning as L

        class Timer(L.Callback):
            def on_fit_start(cb, trainer, *a):
                self.fit0 = time.perf_counter()

            def on_train_batch_start(cb, trainer, *a):
                if trainer.global_step == warmup:
                    synchronize(device)
                    self.t0 = time.perf_counter()

            def on_train_batch_end(cb, trainer, *a):
                if trainer.global_step == 1 and not self.first_step_s:
                    synchronize(device)
                    self.first_step_s = time.perf_counter() - self.fit0

            def on_train_end(cb, trainer, *a):
                synchronize(device)
                self.t1 = time.perf_counter()

        self.callback = Timer()
        self.t0 = self.t1 = self.fit0 = self.first_step_s = 0.0


def run_ours(args, preset, device, precision, objective: str | None = None, compile: bool | None = None,
             lit_cls: type[LitLM] = LitLM, before_fit: Callable[[], object] | None = None) -> tuple[float, float]:
    """(tokens/s of the timed steps, seconds from ``fit`` to the end of the first step) of our step."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from experiments.module import quiet_lightning

    quiet_lightning()
    compile = args.compile if compile is None else compile
    mcfg, make_lit, data, total = _setup(args, preset, objective or args.objectives[0], device, compile, lit_cls)
    timer = _StepTimer(args.warmup, device)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(max_steps=total, accelerator=device.type if device.type == "cpu" else "gpu", devices=1,
                            precision=precision, gradient_clip_val=1.0, logger=[CSVLogger(tmp, name="m")],
                            callbacks=[timer.callback], log_every_n_steps=10, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                            limit_val_batches=0, use_distributed_sampler=False)
        lit = make_lit()
        if before_fit is not None:
            before_fit()
        trainer.fit(lit, datamodule=data)
    return args.steps * args.batch_size * mcfg.seq_len / (timer.t1 - timer.t0), timer.first_step_s


def run_bare(args, preset, device, precision, objective: str | None = None) -> float:
    """The loop a researcher writes by hand: same model, objective, optimiser, schedule and clipping."""
    from experiments.datamodule import EpochBatchSampler, RowDataset

    mcfg, make_lit, data, total = _setup(args, preset, objective or args.objectives[0], device)
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


_LOOPS = {"ours": LitLM, "before": BeforeLitLM}


def _run_here(args, preset, objective, device, precision, v: Variant, before_fit=None) -> tuple[float, float | None]:
    torch.set_num_threads(v.threads)
    if v.loop == "bare":
        return run_bare(dataclasses.replace(args, compile=v.compile), preset, device, precision, objective), None
    if v.compile:
        torch._dynamo.reset()
    return run_ours(args, preset, device, precision, objective, v.compile, _LOOPS[v.loop], before_fit)


def run_variant(args, preset, objective, device, precision, v: Variant) -> tuple[float, float | None]:
    """(tokens/s, first-step seconds) of one run of a variant; several processes: their tokens/s summed
    (they start their steps together) and the slowest first step."""
    if v.procs == 0:
        return _run_here(args, preset, objective, device, precision, v)
    job = json.dumps({"args": dataclasses.asdict(args), "preset": preset, "objective": objective,
                      "device": device.type, "precision": precision, "variant": dataclasses.asdict(v)})
    procs = [subprocess.Popen([sys.executable, "-m", "experiments.bench_train", job], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(v.procs)]
    try:
        for p in procs:  # every worker set up (imports, model, data) before any starts training
            _read(p, v)
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [json.loads(_read(p, v)) for p in procs]
    except BaseException:
        for p in procs:
            p.kill()
        raise
    finally:
        for p in procs:
            p.wait()
    return sum(r[0] for r in results), max(r[1] or 0.0 for r in results)


_MARK = "@@bench "


def _read(p: subprocess.Popen, v: Variant) -> str:
    """The next protocol line of a worker (other output is passed through)."""
    for line in p.stdout:
        if line.startswith(_MARK):
            return line[len(_MARK):].strip()
        print(line, end="")
    raise RuntimeError(f"a worker of {v.name} ended without a result (exit code {p.wait()}); see its output above")


def _worker(job: str) -> None:
    """``python -m experiments.bench_train JOB``: one worker process of a variant. Prints ``ready`` once set
    up, trains when a line arrives on stdin, prints its (tokens/s, first-step seconds) as JSON."""
    d = json.loads(job)
    args = TrainBench(**d["args"])

    def ready() -> None:
        print(_MARK + "ready", flush=True)
        sys.stdin.readline()

    result = _run_here(args, d["preset"], d["objective"], torch.device(d["device"]), d["precision"],
                       Variant(**d["variant"]), ready)
    print(_MARK + json.dumps(result), flush=True)


def run(args: TrainBench) -> dict:
    """Interleaved repeats of the two variants per (model, objective); the report (medians, ratios, MFU)."""
    from experiments.module import default_peak_flops

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = resolve_precision(args.precision)
    a, b = variants(args.compare, args.threads, args.compile)
    results = []
    for preset in args.models:
        for objective in args.objectives:
            runs: dict[str, list] = {a.name: [], b.name: []}
            first: dict[str, list] = {a.name: [], b.name: []}
            for i in range(args.repeats):
                for v in (a, b) if i % 2 == 0 else (b, a):  # A B B A A B ...: no side always goes first
                    tps, first_s = run_variant(args, preset, objective, device, precision, v)
                    runs[v.name].append(tps)
                    first[v.name].append(first_s)
            mcfg = ModelConfig.from_name(preset, vocab_size=args.vocab_size, attention=args.attention,
                                         **({"seq_len": args.seq_len} if args.seq_len else {}))
            n = count_params(mcfg, non_embedding=True)
            ma, mb = statistics.median(runs[a.name]), statistics.median(runs[b.name])
            peak = args.peak_flops or default_peak_flops(device)
            row = {
                "model": preset, "objective": objective, "attention": args.attention, "non_embedding_params": n,
                "batch_size": args.batch_size, "seq_len": mcfg.seq_len, "precision": precision,
                "compile": args.compile, "compare": args.compare, "a": dataclasses.asdict(a),
                "b": dataclasses.asdict(b), f"{a.name}_tokens_per_s": ma, f"{b.name}_tokens_per_s": mb,
                "ratio": mb / ma,
                "paired_ratio": statistics.median(y / x for x, y in zip(runs[a.name], runs[b.name])),
                f"{a.name}_runs": runs[a.name], f"{b.name}_runs": runs[b.name],
                "model_flops_per_s": 6 * n * mb, "mfu": 6 * n * mb / peak if peak else None,
            }
            for v in (a, b):
                if v.loop != "bare":
                    row[f"{v.name}_first_step_s"] = first[v.name]
            results.append(row)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{os.cpu_count()}"
    key = (lambda r: r["model"]) if len(args.objectives) == 1 else (lambda r: f"{r['model']}/{r['objective']}")
    return {"device": device_name, "torch": torch.__version__, "compare": args.compare, "a": a.name, "b": b.name,
            "threads": args.threads, "steps": args.steps, "repeats": args.repeats,
            "ratio": min(r["ratio"] for r in results),  # the worst case's B / A
            f"{a.name}_tokens_per_s": {key(r): r[f"{a.name}_tokens_per_s"] for r in results},
            f"{b.name}_tokens_per_s": {key(r): r[f"{b.name}_tokens_per_s"] for r in results}, "results": results}


if __name__ == "__main__":
    _worker(sys.argv[1])
