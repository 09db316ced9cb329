"""Progress output: bars on a terminal, bounded plain lines (no carriage returns) in files."""

from __future__ import annotations

import io
import subprocess
import sys

import lightning as L
import pytest
import torch
import yaml

from experiments import progress as pg

pytestmark = pytest.mark.usefixtures("single_thread")


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


class Toy(L.LightningModule):
    """A linear layer on random (x, valid) batches, logging ``train/loss`` like the suite's module."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, valid = batch
        loss = self.lin(x.float()).pow(2).mean()
        self.log("train/loss", loss, on_step=True, on_epoch=False)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        x = torch.randn(12, 4)
        valid = torch.ones(12, 4, dtype=torch.bool)
        return torch.utils.data.DataLoader(list(zip(x, valid)), batch_size=4)


def fit(epochs: int, callback: L.Callback) -> None:
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_model_summary=False, enable_progress_bar=False, callbacks=[callback],
                        log_every_n_steps=1)
    trainer.fit(Toy())


def test_interactive_only_on_a_terminal(monkeypatch):
    monkeypatch.setenv("TERM", "xterm")
    assert pg.is_interactive(TTY()) and not pg.is_interactive(io.StringIO())
    monkeypatch.setenv("TERM", "dumb")
    assert not pg.is_interactive(TTY())
    monkeypatch.setenv("TERM", "xterm")
    callbacks, bar = pg.progress_callbacks(True, steps_per_epoch=100, stream=TTY())
    assert bar and isinstance(callbacks[0], pg.BarProgress) and callbacks[0].refresh_rate == 5
    callbacks, bar = pg.progress_callbacks(True, stream=io.StringIO())
    assert not bar and isinstance(callbacks[0], pg.LineProgress)
    assert pg.progress_callbacks(False, stream=TTY()) == ([], False)


def test_line_progress_writes_a_bounded_number_of_plain_lines():
    out = io.StringIO()
    fit(40, pg.LineProgress(stream=out, max_epoch_lines=8, interval_s=3600))
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    epochs = [int(line.split("/")[0].split()[1]) for line in lines]
    assert epochs == [1, 5, 10, 15, 20, 25, 30, 35, 40]  # every ceil(40 / 8) = 5th epoch, first and last
    last = lines[-1]
    assert last.startswith("epoch 40/40, step 120/120, loss ") and "tokens/s" in last and "elapsed" in last


def test_heartbeat_lines_inside_long_epochs():
    out = io.StringIO()
    fit(2, pg.LineProgress(stream=out, interval_s=0.0))
    lines = out.getvalue().splitlines()
    assert sum("(in progress)" in line for line in lines) == 6  # every step: the interval is 0
    assert [line.split(",")[0] for line in lines if "(in progress)" not in line] == ["epoch 1/2", "epoch 2/2"]


# --------------------------------------------------------------------------- wired into training
TRAIN = ["--model", "tiny", "--model-arg", "seq_len=32", "--vocab-size", "320", "--batch-size", "4",
         "--val-tokens", "256", "--threads", "1"]


def test_training_log_in_a_file_has_lines_not_redraws(corpus_spec, tmp_path):
    """``crossover train ... > file`` (a SLURM log): progress lines, no carriage returns."""
    log = tmp_path / "train.log"
    with open(log, "w") as f:
        subprocess.run([sys.executable, "-m", "experiments.cli", "train", "--objective", "ar", "--unique-tokens",
                        "2000", "--epochs", "3", "--corpus", corpus_spec, "--out", str(tmp_path / "run"), *TRAIN],
                       stdout=f, stderr=subprocess.STDOUT, check=True)
    text = log.read_text()
    assert "\r" not in text and len(text.splitlines()) < 60
    assert any(line.startswith("epoch 3/3, step") for line in text.splitlines()), text


def test_sweep_cell_log_has_lines_not_redraws(corpus_spec, tmp_path):
    """A sweep cell as the local executor runs it (``python -m experiments.sweep ROOT CELL THREADS``,
    stdout and stderr in ``cells/<id>.log``): progress lines, no redraws."""
    from experiments import sweep

    spec = {"name": "p", "axes": {"objective": ["diffusion"], "unique_tokens": [1500], "epochs": [2]},
            "settings": {"model": "tiny", "model_args": {"seq_len": 32}, "vocab_size": 320, "batch_size": 4,
                         "val_tokens": 256, "corpus": corpus_spec, "eval_epochs": [2]}}
    path, root = tmp_path / "spec.yaml", tmp_path / "sw"
    path.write_text(yaml.safe_dump(spec))
    loaded = sweep.SweepSpec.load(str(path))
    sweep.init_folder(root, loaded)
    cell = loaded.cells()[0].id
    log = root / "cells" / f"{cell}.log"
    with open(log, "w") as f:
        subprocess.run([sys.executable, "-m", "experiments.sweep", str(root), cell, "1"], stdout=f,
                       stderr=subprocess.STDOUT, check=True)
    text = log.read_text()
    assert "\r" not in text and len(text.splitlines()) < 200
    assert any(line.startswith("epoch 2/2, step") for line in text.splitlines()), text
