"""The LightningModule: a backbone and an objective, AdamW and a warmup schedule. Nothing else.

Objective-specific logic lives in ``models.objectives``; this module only normalises the summed
loss by the valid tokens of the whole optimiser step (across ranks and micro-batches, counted by
the sampler), so one process, several ranks and gradient accumulation compute the same gradient.
Training noise (diffusion masks and noise levels) comes from generators seeded by (seed, epoch,
row) and (seed, epoch, step): a resumed run, several ranks or gradient accumulation draw what one
uninterrupted process does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins import TorchCheckpointIO

from analysis.table import atomic_write, atomic_write_text
from experiments.config import OptimArgs
from experiments.datamodule import Batch
from models import ModelConfig, Transformer
from models.objectives import Objective


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


#: bf16 dense peak FLOP/s of common accelerators, for MFU (matched against the device name)
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "4090": 165e12}


def default_peak_flops(device: torch.device) -> float:
    if device.type != "cuda":
        return 0.0
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), 0.0)


class Diverged(RuntimeError):
    """Training produced a non-finite loss, gradient norm or validation loss."""

    def __init__(self, what: str, step: int, value: float):
        super().__init__(f"run diverged: non-finite {what} ({value}) at step {step}")
        self.what, self.step, self.value = what, step, value


class EMA:
    """Exponential moving average of a module's parameters with Adam's bias correction: after the n-th
    optimiser step ``avg = decay * avg + (1 - decay) * param`` from ``avg = 0``, and the weights used are
    ``avg / (1 - decay**n)``, a weighted mean of the n weights seen so far (none from before training,
    so evaluations early in a run are not pulled toward the initialisation). ``decay = 0`` follows the
    raw weights exactly; before the first step the average is the raw weights."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.steps = 0
        self.avg = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in module.named_parameters()}  # fp32

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        names, params = zip(*module.named_parameters())
        avg = [self.avg[n] for n in names]
        torch._foreach_lerp_(avg, [p.detach().to(a.dtype) for p, a in zip(params, avg)], 1.0 - self.decay)
        self.steps += 1

    def weights(self, module: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The averaged weights (bias-corrected); the module's own before the first update."""
        if self.steps == 0:
            return {n: p.detach().float().clone() for n, p in module.named_parameters()}
        scale = 1.0 / (1.0 - self.decay**self.steps)
        return {n: a * scale for n, a in self.avg.items()}

    @contextlib.contextmanager
    def applied(self, module: torch.nn.Module):
        """The module with the averaged weights inside the block, its own weights again after it."""
        raw = {n: p.detach().clone() for n, p in module.named_parameters()}
        averaged = self.weights(module)
        with torch.no_grad():
            for n, p in module.named_parameters():
                p.copy_(averaged[n])
        try:
            yield module
        finally:
            with torch.no_grad():
                for n, p in module.named_parameters():
                    p.copy_(raw[n])

    def state_dict(self) -> dict:
        return {"avg": {n: t.detach().cpu() for n, t in self.avg.items()}, "steps": self.steps}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        self.avg = {n: t.to(device) for n, t in state["avg"].items()}
        self.steps = int(state["steps"])

    def to(self, device: torch.device) -> EMA:
        self.avg = {n: t.to(device) for n, t in self.avg.items()}
        return self


class LitLM(L.LightningModule):
    """A backbone and an objective; ``optim`` the optimiser settings; ``total_steps`` for the schedule."""

    def __init__(self, model: ModelConfig, objective: Objective, optim: OptimArgs, total_steps: int, seed: int,
                 compile: bool = False, log_every_n_steps: int = 10, peak_flops: float = 0.0):
        super().__init__()
        # plain values only, so checkpoints load without this package's classes (experiments.checkpoint)
        self.save_hyperparameters({"model_config": model.to_dict(), "objective": objective.name,
                                   "objective_config": objective.config.to_dict(), "optim": dataclasses.asdict(optim),
                                   "total_steps": total_steps, "seed": seed, "log_every_n_steps": log_every_n_steps,
                                   "peak_flops": peak_flops})
        self.optim = optim
        self.model = Transformer(model)
        self.objective = objective
        # the compiled wrapper is kept out of the module tree so checkpoints hold plain `model.*` keys
        object.__setattr__(self, "_forward_model", torch.compile(self.model) if compile else self.model)
        self.flops_per_token = 6 * self.model.num_params(non_embedding=True)  # contract 3
        self.train_time_s = 0.0  # seconds in training steps, cumulative over resumes (in the checkpoint)
        self.tokens_before = 0  # valid tokens trained before this attempt (from the checkpoint)
        self.tokens_local = torch.zeros((), dtype=torch.long)  # valid tokens this rank trained in this attempt
        self.run_info: dict[str, Any] = {}  # run id, config and tokenizer, saved into checkpoints
        self._t0 = 0.0
        self._window = [0, 0.0]  # valid tokens (global, by the sampler) and seconds since the last log
        # first non-finite training value, kept on the device (no host sync per step): [step, value, kind]
        self._bad = torch.full((3,), -1.0, dtype=torch.float64)
        self._pending_tokens = 0  # valid tokens of the batch being trained (set when it is moved to the device)
        self.ema = EMA(self.model, optim.ema_decay) if optim.ema_decay > 0 else None

    def _seeded(self, *key: int) -> torch.Generator:
        state = np.random.SeedSequence([self.hparams.seed, self.current_epoch, *key]).generate_state(1, np.uint64)
        return torch.Generator().manual_seed(int(state[0] >> 1))

    def _noise(self, batch: Batch):
        """Training noise as a function of (seed, epoch, row) and (seed, step) only: the same draws
        for one process, several ranks or gradient accumulation, and after a resume."""
        if not self.objective.uses_training_noise:
            return None  # plain AR: no generators, nothing drawn
        gens = [self._seeded(0, max(int(r), 0)) for r in batch.rows.tolist()]  # placeholder rows (-1): all invalid
        return self.objective.training_noise(gens, batch.positions.cpu().float(), self.trainer.datamodule.global_batch,
                                             self._seeded(1, self.global_step), batch.tokens.shape[1],
                                             progress=self.global_step / max(1, self.hparams.total_steps))

    def _watch(self, kind: int, value: torch.Tensor) -> None:
        """Remember the first non-finite ``value`` (kind 0: loss, 1: gradient norm) without a host sync."""
        dev = value.device
        bad = ~torch.isfinite(value.detach()) & (self._bad[0] < 0).to(dev)
        new = torch.stack([torch.full((), float(self.global_step), device=dev, dtype=torch.float64),
                           value.detach().double(), torch.full((), float(kind), device=dev, dtype=torch.float64)])
        self._bad = torch.where(bad, new, self._bad.to(dev))

    def check_finite(self) -> None:
        """Raise ``Diverged`` if a non-finite loss or gradient norm was seen (one host sync)."""
        step, value, kind = self._bad.tolist()
        if step >= 0:
            raise Diverged(("training loss", "gradient norm")[int(kind)], int(step), value)

    def training_step(self, batch: Batch, batch_idx):
        x, valid = batch.tokens, batch.valid  # (B, T) each
        total = self.objective.loss_sum(self._forward_model, x, valid, noise=self._noise(batch))
        self._watch(0, total)
        # Normalise by the valid tokens of the whole optimiser step (all ranks, all micro-batches).
        # DDP averages gradients over ranks and Lightning divides by the accumulation steps: undo both.
        scale = self.trainer.world_size * self.trainer.accumulate_grad_batches
        n_step = batch.step_tokens[0].clamp_min(1)
        n_local = valid.sum()
        self.tokens_local += self._pending_tokens
        if self._log_loss_now():
            self.log("train/loss", total.detach() / n_local.clamp_min(1), prog_bar=True, on_step=True, on_epoch=False,
                     batch_size=x.shape[0])
        return total * scale / n_step

    def _log_loss_now(self) -> bool:
        """Whether this micro-batch's loss can reach a logger or a progress line: Lightning writes step
        values only on its logging steps (every ``log_every_n_steps``) and the progress line reads the
        epoch's last. Each ``self.log`` costs ~0.2 ms of host time (benchmarks/RESULTS.md, "Throughput of
        the quick settings"), so the other steps skip it; metrics.csv is the same."""
        trainer = self.trainer
        connector = getattr(trainer, "_logger_connector", None)  # its test, else log every step as before
        return bool(getattr(connector, "should_update_logs", True) or trainer.is_last_batch or trainer.fast_dev_run)

    def on_train_epoch_start(self):
        # Lightning calls set_epoch on a DataLoader's sampler, not on a batch sampler: do it here (the
        # epoch's iterator is created after this hook), so every epoch gets its own seeded order.
        batch_sampler = getattr(self.trainer.train_dataloader, "batch_sampler", None)
        if hasattr(batch_sampler, "set_epoch"):
            batch_sampler.set_epoch(self.current_epoch)

    def on_fit_start(self):
        if self.ema is not None:
            self.ema.to(self.device)

    def evaluation_weights(self):
        """Context: the weights validation scores (the EMA when ``ema_decay`` > 0, else the raw ones)."""
        return self.ema.applied(self.model) if self.ema is not None else contextlib.nullcontext(self.model)

    def on_train_end(self):
        self.final_tokens_trained = self.tokens_trained()  # before teardown moves the module off its device

    def on_train_batch_start(self, batch, batch_idx):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        dt = time.perf_counter() - self._t0  # optimiser steps only, not evaluation
        self.train_time_s += dt
        self._window[1] += dt
        if (batch_idx + 1) % self.trainer.accumulate_grad_batches == 0:  # an optimiser step just ended
            if self.ema is not None:
                self.ema.update(self.model)
            self._window[0] += int(batch.step_tokens[0])
            if self.trainer.global_step % self.hparams.log_every_n_steps != 0:
                return
            self.check_finite()
            if self._window[1] > 0:
                tokens_per_s = self._window[0] / self._window[1]
                metrics = {"perf/tokens_per_s": tokens_per_s,
                           "perf/model_flops_per_s": tokens_per_s * self.flops_per_token}
                peak = self.hparams.peak_flops or default_peak_flops(self.device)
                if peak:
                    metrics["perf/mfu"] = tokens_per_s * self.flops_per_token / (peak * self.trainer.world_size)
                self.log_dict(metrics, on_step=True, on_epoch=False, rank_zero_only=True)
                self._window = [0, 0.0]

    def tokens_trained(self) -> int:
        """Valid tokens trained by all ranks, over every attempt (a collective: call on all ranks)."""
        local = self.tokens_local.to(self.device, copy=True)  # all_reduce works in place
        total = self.trainer.strategy.reduce(local, reduce_op="sum") if self.trainer.world_size > 1 else local
        return self.tokens_before + int(total)

    def on_save_checkpoint(self, checkpoint):
        checkpoint["train_time_s"] = self.train_time_s
        checkpoint["tokens_trained"] = self.tokens_trained()  # every rank dumps the checkpoint: safe to reduce
        checkpoint["crossover"] = self.run_info
        if self.ema is not None:  # the evaluated weights: what sampling and export load; the state to resume
            checkpoint["ema"] = {n: t.detach().cpu() for n, t in self.ema.weights(self.model).items()}
            checkpoint["ema_state"] = self.ema.state_dict()

    def on_load_checkpoint(self, checkpoint):
        self.train_time_s = checkpoint.get("train_time_s", 0.0)
        self.tokens_before = checkpoint.get("tokens_trained", 0)
        if self.ema is not None and "ema_state" in checkpoint:
            self.ema.load_state_dict(checkpoint["ema_state"], self.device)
        elif self.ema is not None and "ema" in checkpoint:  # written before the bias correction: the plain
            self.ema.load_state_dict({"avg": checkpoint["ema"], "steps": 10**9}, self.device)  # average goes on

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        """Only tokens and their mask go to the device; the bookkeeping (step tokens, rows, positions)
        stays on the CPU, where the noise generators and the throughput counters read it without a sync."""
        if isinstance(batch, Batch):
            self._pending_tokens = int(batch.valid.sum())  # counted on the CPU, before the copy
            return batch._replace(tokens=batch.tokens.to(device, non_blocking=True),
                                  valid=batch.valid.to(device, non_blocking=True))
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Called by Lightning every step: one gradient-norm computation both clips (when ``grad_clip`` is
        set; with an infinite bound it scales by exactly 1) and is watched for divergence."""
        scaled = getattr(self.trainer.precision_plugin, "scaler", None) is not None
        if scaled or self.trainer.strategy.__class__.__name__.startswith("FSDP"):
            # fp16 loss scaling: inf norms on overflow steps are expected (the scaler skips them);
            # FSDP: the norm needs the sharded model's own clipping. Lightning's path, nothing watched.
            return self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
        params = self.trainer.precision_plugin.main_params(optimizer)
        self._watch(1, torch.nn.utils.clip_grad_norm_(params, gradient_clip_val or float("inf")))

    def _adamw_kernel(self) -> dict[str, bool]:
        """AdamW's implementation: fused (one kernel per step) on CUDA; on the CPU foreach, the same
        arithmetic as the default per-tensor loop (bit-identical weights) with less host time. The CPU's
        fused kernel is faster still but rounds differently (a quick diffusion cell ends 0.025 nats away)."""
        return {"fused": True} if self.device.type == "cuda" else {"foreach": True}

    def configure_optimizers(self):
        o = self.optim
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        opt = torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), **self._adamw_kernel())
        f = lr_lambda(o.schedule, self.hparams.total_steps, o.warmup_steps, o.min_lr_ratio, o.decay_fraction)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, f)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class _WriteGuard:
    """A file wrapper that remembers the first OSError of a write: torch.save turns a full disk into a
    RuntimeError ("unexpected pos ..."); the guard lets the real cause (ENOSPC) surface."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def __getattr__(self, name):
        return getattr(self.f, name)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file and renamed: a kill mid-write never corrupts ``last.ckpt``,
    and a full disk leaves the previous one in place (raising the OSError, not torch's RuntimeError)."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        def write(f):
            guard = _WriteGuard(f)
            try:
                torch.save(checkpoint, guard)
            except RuntimeError:
                if guard.error is not None:
                    raise guard.error from None
                raise

        atomic_write(Path(path), write)


class DivergenceGuard(L.Callback):
    """Stops a diverging run before anything of the epoch is written: first in the callback list, it
    checks at every epoch end, before the evaluation row and the checkpoint."""

    def on_train_epoch_end(self, trainer, pl_module):
        pl_module.check_finite()


class ProgressFile(L.Callback):
    """Writes ``{"epoch", "epochs", "step"}`` after every epoch, for sweep progress displays."""

    def __init__(self, path, epochs: int):
        self.path, self.epochs = path, epochs

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            atomic_write_text(self.path, json.dumps({"epoch": trainer.current_epoch + 1, "epochs": self.epochs,
                                                     "step": trainer.global_step}))


def quiet_lightning() -> None:
    """Keep Lightning's start-up chatter (accelerator lines, tips) and known-harmless warnings off stderr."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*overridden `transfer_batch_to_device`.*")  # on purpose: LitLM's
