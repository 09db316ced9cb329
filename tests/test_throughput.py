"""Throughput choices that must not change results or behaviour: the sweep's automatic worker layout
(a pure function of the cells), the step's host-overhead changes (the same losses and weights as the
step before them) and ``crossover bench train --compare``'s pairs. Nothing here is timed."""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path

import pytest
import torch

from experiments.cli import build_parser
from experiments.sweep import SweepSpec
from experiments.sweep.executors import AUTO_MAX_PARAMS, auto_workers

pytestmark = pytest.mark.usefixtures("single_thread")


def cells(*models: str, **settings):
    spec = {"name": "t", "axes": {"objective": ["ar", "diffusion"], "unique_tokens": [1000], "model": list(models)},
            "settings": {"vocab_size": 1024, **settings}}
    return SweepSpec.from_dict(spec).cells()


def test_auto_workers_small_models_get_one_single_thread_worker_per_core():
    assert auto_workers(cells("tiny"), cores=2) == 2  # 2 cells, 2 cores
    assert auto_workers(cells("tiny", "n400k", "small"), cores=2) == 2
    assert auto_workers(cells("tiny", "small"), cores=16) == 4  # never more workers than cells
    assert auto_workers(cells("tiny"), cores=1) == 1


def test_auto_workers_one_worker_with_every_core_for_larger_models():
    assert auto_workers(cells("tiny", "base"), cores=2) == 1  # one large cell: every cell gets all cores
    assert auto_workers(cells("p7m"), cores=8) == 1
    assert auto_workers([], cores=2) == 1
    # the threshold is on non-embedding parameters (tiny: 106,816; small: 803,968)
    assert auto_workers(cells("small"), cores=2, max_params=803_967) == 1
    assert auto_workers(cells("small"), cores=2, max_params=803_968) == 2
    assert AUTO_MAX_PARAMS >= 803_968  # every CPU preset up to small trains in single-thread workers


def test_model_args_count_towards_the_threshold():
    wide = cells("tiny", model_args={"d_model": 512, "n_head": 8})  # ~6.3M non-embedding parameters
    assert auto_workers(wide, cores=2) == 1


def test_auto_workers_leaves_gpu_cells_and_cells_with_their_own_threads_in_one_worker():
    assert auto_workers(cells("tiny", accelerator="gpu"), cores=2) == 1  # the workers would share the device
    assert auto_workers(cells("tiny", threads=2), cores=2) == 1  # 2 x 2 threads would oversubscribe the cores
    assert auto_workers(cells("tiny", threads=1), cores=2) == 2


def test_sweep_run_workers_defaults_to_auto():
    parser = build_parser()
    assert parser.parse_args(["sweep", "run", "quick"]).workers == "auto"
    assert parser.parse_args(["sweep", "run", "quick", "--workers", "3"]).workers == 3
    with pytest.raises(SystemExit):
        parser.parse_args(["sweep", "run", "quick", "--workers", "many"])


def test_bench_compare_pairs():
    from experiments.bench_train import variants
    from experiments.cli.bench import COMPARES

    for compare in COMPARES:
        a, b = variants(compare, threads=4, compile=False)
        assert a.name != b.name
    a, b = variants("layout", threads=4, compile=False)
    assert (a.procs, a.threads, b.procs, b.threads) == (1, 4, 4, 1)  # 1 x 4 threads against 4 x 1
    a, b = variants("sweep", threads=2, compile=False)
    assert (a.loop, a.procs, a.threads, b.loop, b.procs, b.threads) == ("before", 1, 2, "ours", 2, 1)
    a, b = variants("compile", threads=1, compile=False)
    assert (a.compile, b.compile, a.procs, b.procs) == (False, True, 1, 1)  # fresh processes: compile time counts
    with pytest.raises(ValueError, match="unknown comparison"):
        variants("nope", threads=1, compile=False)


def _train(lit_cls, objective: str, log_every: int = 4):
    """Three epochs of 15 steps of the tiny model through Lightning: (train/loss rows of metrics.csv, the
    weights, the steps trained)."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from experiments.bench_train import TrainBench, _setup
    from experiments.module import quiet_lightning

    quiet_lightning()
    args = TrainBench(models=["tiny"], objectives=[objective], vocab_size=64, batch_size=4, seq_len=16, steps=14,
                      warmup=0)  # 60 rows: 15 steps per epoch
    _, make_lit, data, _ = _setup(args, "tiny", objective, torch.device("cpu"), lit_cls=lit_cls)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(max_epochs=3, accelerator="cpu", devices=1, precision="32-true", gradient_clip_val=1.0,
                            logger=[CSVLogger(tmp, name="m", version=0)], log_every_n_steps=log_every,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            num_sanity_val_steps=0, limit_val_batches=0, use_distributed_sampler=False)
        lit = make_lit()
        trainer.fit(lit, datamodule=data)
        with open(Path(tmp) / "m" / "version_0" / "metrics.csv") as f:
            rows = [(r["step"], r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    return rows, torch.cat([p.detach().flatten() for p in lit.model.parameters()]), trainer.global_step


@pytest.mark.parametrize("objective", ["ar", "diffusion"])
def test_step_changes_keep_losses_and_weights_bit_identical(objective):
    from experiments.bench_train import BeforeLitLM
    from experiments.module import LitLM

    rows, weights, steps = _train(LitLM, objective)
    old_rows, old_weights, _ = _train(BeforeLitLM, objective)
    assert steps == 45 and len(rows) == 11  # a train/loss row every 4th step (epochs end at steps 15, 30, 45)
    assert rows == old_rows  # the same rows, the same values: only unwritten logs were skipped
    assert torch.equal(weights, old_weights)  # foreach AdamW: the per-tensor loop's arithmetic


def test_adamw_kernels():
    from experiments.bench_train import BeforeLitLM
    from experiments.config import OptimArgs
    from experiments.module import LitLM
    from models import ModelConfig
    from models.objectives import build_objective

    def optimizer(cls):
        lit = cls(ModelConfig.from_name("tiny", vocab_size=64), build_objective("ar"), OptimArgs(), 10, seed=0)
        return lit.configure_optimizers()["optimizer"]

    assert optimizer(LitLM).defaults["foreach"] is True
    assert not optimizer(BeforeLitLM).defaults.get("foreach") and not optimizer(BeforeLitLM).defaults.get("fused")
