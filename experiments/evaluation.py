"""Evaluation at chosen epochs: deterministic validation loss, one results row per point.

Runs in a callback, before Lightning's checkpoint callback at the end of the epoch, so a row is
written before the checkpoint that follows it; a run resumed from the previous checkpoint
re-evaluates that epoch and replaces the row (same value: evaluation is deterministic).

The validation masks and noise levels come from generators seeded by ``EVAL_SEED`` and the batch
index only, so every run on the same validation set scores the same masked inputs.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from analysis.table import flops, upsert_row
from data.budget import Packed
from experiments.module import Diverged
from models.objectives import EvalSums

EVAL_SEED = 1234


@torch.no_grad()
def evaluate(model: torch.nn.Module, objective, val: Packed, batch_size: int, byte_lengths: np.ndarray,
             rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu", reduce=None) -> dict[str, float]:
    """Validation loss in nats/token (with its Monte Carlo standard error) and bits per byte."""
    was_training = model.training
    model.eval()
    sums = EvalSums(*(torch.zeros((), dtype=torch.float64, device=device) for _ in range(3)))
    for b, start in enumerate(range(0, len(val), batch_size)):
        if b % world_size != rank:
            continue
        x = val.tokens[start : start + batch_size].to(device)
        valid = val.valid[start : start + batch_size].to(device)
        g = torch.Generator().manual_seed(EVAL_SEED * 1_000_003 + b)
        sums = sums + objective.evaluate(model, x, valid, g)
    model.train(was_training)
    if reduce is not None:
        sums = EvalSums(reduce(sums.nll), reduce(sums.mc_var), reduce(sums.tokens))
    n_bytes = float(byte_lengths[val.tokens[val.valid].numpy()].sum())
    nll, var, n = float(sums.nll), float(sums.mc_var), float(sums.tokens)
    return {"val_loss": nll / n, "val_loss_se": math.sqrt(var) / n, "val_bpb": nll / math.log(2) / n_bytes,
            "val_tokens": int(n)}


class EvaluationCallback(L.Callback):
    """Evaluates after each epoch in ``epochs`` and appends a results row to ``results_path``."""

    def __init__(self, val: Packed, epochs: list[int], batch_size: int, byte_lengths: np.ndarray,
                 row_base: dict[str, Any], results_path: Path):
        self.val, self.epochs, self.batch_size = val, set(epochs), batch_size
        self.byte_lengths, self.row_base, self.results_path = byte_lengths, row_base, results_path

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        epoch = trainer.current_epoch + 1
        if epoch not in self.epochs:
            return
        t0 = time.perf_counter()
        reduce = (lambda t: trainer.strategy.reduce(t, reduce_op="sum")) if trainer.world_size > 1 else None
        with trainer.precision_plugin.forward_context(), pl_module.evaluation_weights():
            metrics = evaluate(pl_module.model, pl_module.objective, self.val, self.batch_size, self.byte_lengths,
                               trainer.global_rank, trainer.world_size, pl_module.device, reduce)
        eval_time = time.perf_counter() - t0
        pl_module.log_dict({"val/loss": metrics["val_loss"], "val/loss_se": metrics["val_loss_se"],
                            "val/bpb": metrics["val_bpb"]}, on_step=False, on_epoch=True, rank_zero_only=True)
        if not math.isfinite(metrics["val_loss"]):
            raise Diverged("validation loss", trainer.global_step, metrics["val_loss"])
        if trainer.is_global_zero:
            u, n = self.row_base["unique_tokens"], self.row_base["non_embedding_params"]
            row = {**self.row_base, **metrics, "epochs": epoch, "tokens_seen": u * epoch, "flops": flops(n, u, epoch),
                   "step": trainer.global_step, "train_time_s": round(pl_module.train_time_s, 3),
                   "eval_time_s": round(eval_time, 3)}
            upsert_row(self.results_path, row)
            trainer.print(f"epoch {epoch:>5}: val_loss {metrics['val_loss']:.4f} ± {metrics['val_loss_se']:.4f} "
                          f"nats/token, {metrics['val_bpb']:.4f} bits/byte ({eval_time:.1f}s)")
