"""The LightningModule: a backbone and an objective, AdamW and a warmup schedule. Nothing else.

Objective-specific logic lives in ``models.objectives``; this module only normalises the summed
loss by the valid tokens of the whole optimiser step (across ranks), so one process and several
ranks compute the same gradient. Training noise (diffusion masks and noise levels) comes from a
generator seeded by (seed, epoch, batch, rank): a resumed run draws what an uninterrupted one does.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import json
import logging
import os
import tempfile
import warnings

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import TQDMProgressBar

from models import ModelConfig, Transformer
from models.objectives import build_objective


def lr_lambda(schedule: str, total_steps: int, warmup_steps: int, min_ratio: float, decay_fraction: float):
    """Multiplier of the peak learning rate at a step: linear warmup, then cosine / constant / wsd."""
    warmup = min(warmup_steps, total_steps // 10)
    decay_start = total_steps - int(decay_fraction * total_steps)

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if schedule == "constant":
            return 1.0
        if schedule == "cosine":
            progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
            return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        if schedule == "wsd":
            if step < decay_start:
                return 1.0
            return 1 - (1 - min_ratio) * min(1.0, (step - decay_start) / max(1, total_steps - decay_start))
        raise ValueError(f"unknown schedule {schedule!r}")

    return f


class LitLM(L.LightningModule):
    def __init__(self, model_config: dict[str, Any], objective: str, objective_args: dict[str, Any],
                 optim: dict[str, Any], total_steps: int, seed: int):
        super().__init__()
        self.save_hyperparameters()
        self.model = Transformer(ModelConfig(**model_config))
        self.objective = build_objective(objective, **objective_args)
        self.train_time_s = 0.0  # seconds in training steps, cumulative over resumes (in the checkpoint)
        self._t0 = 0.0
        self.run_info: dict[str, Any] = {}  # run id, config and tokenizer, saved into checkpoints

    def _generator(self, batch_idx: int) -> torch.Generator:
        seed = np.random.SeedSequence([self.hparams.seed, self.current_epoch, batch_idx, self.global_rank])
        return torch.Generator().manual_seed(int(seed.generate_state(1, np.uint64)[0] >> 1))

    def training_step(self, batch, batch_idx):
        x, valid = batch  # (B, T) int64, (B, T) bool
        total = self.objective.loss_sum(self.model, x, valid, self._generator(batch_idx))
        n = valid.sum()
        if self.trainer.world_size > 1:  # DDP averages gradients over ranks: divide by the mean count
            n = self.trainer.strategy.reduce(n.float(), reduce_op="mean")
        loss = total / n.clamp_min(1)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=x.shape[0])
        return loss

    def on_train_batch_start(self, batch, batch_idx):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.train_time_s += time.perf_counter() - self._t0  # optimiser steps only, not evaluation

    def on_save_checkpoint(self, checkpoint):
        checkpoint["train_time_s"] = self.train_time_s
        checkpoint["crossover"] = self.run_info

    def on_load_checkpoint(self, checkpoint):
        self.train_time_s = checkpoint.get("train_time_s", 0.0)

    def configure_optimizers(self):
        o = self.hparams.optim
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": o["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
        opt = torch.optim.AdamW(groups, lr=o["lr"], betas=(o["beta1"], o["beta2"]), **o.get("adamw_kwargs", {}))
        f = lr_lambda(o["schedule"], self.hparams.total_steps, o["warmup_steps"], o["min_lr_ratio"],
                      o["decay_fraction"])
        sched = torch.optim.lr_scheduler.LambdaLR(opt, f)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file and renamed: a kill mid-write never corrupts ``last.ckpt``."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class ProgressFile(L.Callback):
    """Writes ``{"epoch", "epochs", "step"}`` after every epoch, for sweep progress displays."""

    def __init__(self, path, epochs: int):
        self.path, self.epochs = path, epochs

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            from experiments.results import atomic_write_text

            atomic_write_text(self.path, json.dumps({"epoch": trainer.current_epoch + 1, "epochs": self.epochs,
                                                     "step": trainer.global_step}))


class ProgressBar(TQDMProgressBar):
    """Lightning's bar without the logger version number."""

    def get_metrics(self, trainer, pl_module):
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


def quiet_lightning() -> None:
    """Keep Lightning's start-up chatter (accelerator lines, tips) and known-harmless warnings off stderr."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
