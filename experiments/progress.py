"""Progress that reads well wherever it goes: bars on a terminal, plain lines in files.

A TQDM bar redraws itself with carriage returns; in a file (a SLURM log, ``> log``, a sweep cell's
log) every redraw becomes text, thousands of them per run. So the display depends on the stream:

* on a terminal: Lightning's TQDM bar (``BarProgress``), redrawn in place;
* otherwise: ``LineProgress``, one line per epoch (at most ``max_epoch_lines`` of them, spread
  evenly over the run, always the first and the last) plus a heartbeat line inside long epochs
  when no line came for ``max(interval_s, elapsed / 50)`` seconds, each with epoch, step, loss,
  tokens/s, elapsed time and ETA. The growing heartbeat interval keeps long runs' logs short: about
  50 heartbeats in the first 25 minutes, then 50 more per e-fold of the run time (some 200 lines
  for ten hours).

``progress_callbacks`` picks one for a Trainer.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar

#: seconds without a line after which ``LineProgress`` writes a heartbeat line (at least)
DEFAULT_INTERVAL_S = 30.0
#: the heartbeat interval grows to this fraction of the elapsed time
HEARTBEAT_FRACTION = 1 / 50
#: epoch lines per run at most (epochs are sampled evenly when there are more)
DEFAULT_MAX_EPOCH_LINES = 50


def is_interactive(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default stderr, where progress goes) is a terminal that can redraw a bar."""
    stream = stream or sys.stderr
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # closed or not a real stream
        return False
    return bool(tty) and os.environ.get("TERM") != "dumb"


def format_duration(seconds: float) -> str:
    """``h:mm:ss`` (or ``m:ss`` under an hour)."""
    s = int(max(0.0, seconds))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def count_valid_tokens(batch: Any) -> int | torch.Tensor:
    """Tokens of a micro-batch without ``step_tokens`` (other modules' batches): the sum of its valid-token
    mask (a 0-d tensor, read once per line, no per-step sync) or the first tensor's elements."""
    if isinstance(batch, (tuple, list)) and len(batch) > 1 and torch.is_tensor(batch[1]):
        if batch[1].dtype == torch.bool:
            return batch[1].sum()
    first = batch[0] if isinstance(batch, (tuple, list)) else batch
    return int(first.numel()) if torch.is_tensor(first) else 0


class BarProgress(TQDMProgressBar):
    """Lightning's bar without the logger version number (for terminals)."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


class LineProgress(L.Callback):
    """Plain progress lines for files: per epoch (thinned to ``max_epoch_lines``) and a heartbeat
    after ``max(interval_s, elapsed / 50)`` seconds without a line. Written by global rank zero
    only, flushed at once."""

    def __init__(self, *, interval_s: float = DEFAULT_INTERVAL_S, max_epoch_lines: int = DEFAULT_MAX_EPOCH_LINES,
                 stream: TextIO | None = None, loss_key: str = "train/loss",
                 count_tokens: Callable[[Any], int] = count_valid_tokens):
        self.interval_s, self.max_epoch_lines = interval_s, max(1, max_epoch_lines)
        self.stream, self.loss_key, self.count_tokens = stream, loss_key, count_tokens
        self._t_start = self._t_line = self._t_batch = 0.0
        self._start_step = 0
        self._window = [0, 0.0]  # tokens and step seconds since the last line
        self.lines = 0

    # ---- hooks
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t_start = self._t_line = time.perf_counter()
        self._start_step = trainer.global_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t_batch = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        step_tokens = getattr(batch, "step_tokens", None)  # the suite's Batch: the whole step's count, on the CPU
        if step_tokens is None:
            self._window[0] += self.count_tokens(batch) * trainer.world_size
        elif (batch_idx + 1) % trainer.accumulate_grad_batches == 0:
            self._window[0] += int(step_tokens[0])
        self._window[1] += now - self._t_batch
        if now - self._t_line >= max(self.interval_s, (now - self._t_start) * HEARTBEAT_FRACTION):
            self._write(trainer, f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs} (in progress)")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch, total = trainer.current_epoch + 1, trainer.max_epochs or 1
        every = math.ceil(total / self.max_epoch_lines)
        if epoch in (1, total) or epoch % every == 0:
            self._write(trainer, f"epoch {epoch}/{total}")

    # ---- the line
    def _loss(self, trainer: L.Trainer) -> float | None:
        metrics = trainer.callback_metrics
        key = self.loss_key if self.loss_key in metrics else next((k for k in metrics if k.endswith("loss")), None)
        return float(metrics[key]) if key is not None else None

    def describe(self, trainer: L.Trainer, where: str) -> str:
        """The progress line: position, loss, throughput, elapsed time and ETA."""
        now = time.perf_counter()
        step, total = trainer.global_step, trainer.estimated_stepping_batches
        done = step - self._start_step
        parts = [where, f"step {step}/{total if math.isfinite(total) else '?'}"]
        loss = self._loss(trainer)
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        if self._window[1] > 0:
            parts.append(f"{float(self._window[0]) / self._window[1]:,.0f} tokens/s")
        elapsed = now - self._t_start
        parts.append(f"elapsed {format_duration(elapsed)}")
        if done > 0 and math.isfinite(total):
            parts.append(f"eta {format_duration(elapsed / done * max(0, total - step))}")
        return ", ".join(parts)

    def _write(self, trainer: L.Trainer, where: str) -> None:
        if trainer.is_global_zero:
            print(self.describe(trainer, where), file=self.stream or sys.stderr, flush=True)
            self.lines += 1
        self._t_line = time.perf_counter()
        self._window = [0, 0.0]


def progress_callbacks(enabled: bool, *, steps_per_epoch: int = 1, stream: TextIO | None = None,
                       interval_s: float = DEFAULT_INTERVAL_S,
                       max_epoch_lines: int = DEFAULT_MAX_EPOCH_LINES) -> tuple[list[L.Callback], bool]:
    """(callbacks, ``enable_progress_bar`` for the Trainer): a bar refreshed about 20 times per epoch
    on a terminal, ``LineProgress`` elsewhere, nothing when not ``enabled``."""
    if not enabled:
        return [], False
    if is_interactive(stream):
        return [BarProgress(refresh_rate=max(1, steps_per_epoch // 20))], True
    return [LineProgress(interval_s=interval_s, max_epoch_lines=max_epoch_lines, stream=stream)], False
