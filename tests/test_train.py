"""End-to-end training runs, reproducibility, resume, and refusal of bad input."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.cli import main

TINY = ["--model", "tiny", "--model-arg", "seq_len=32", "--vocab-size", "320", "--batch-size", "8",
        "--val-tokens", "512", "--no-progress", "--threads", "1"]


def train_args(corpus_spec, out, objective="ar", unique=1500, epochs=2, *extra):
    return ["train", "--objective", objective, "--unique-tokens", str(unique), "--epochs", str(epochs),
            "--corpus", corpus_spec, "--out", str(out), *TINY, *extra]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def train_losses(run: Path) -> list[str]:
    return [r["train/loss"] for r in read_csv(run / "metrics" / "attempt-0" / "metrics.csv") if r.get("train/loss")]


@pytest.mark.parametrize("objective", ["ar", "diffusion"])
def test_train_writes_a_complete_run_folder(corpus_spec, tmp_path, objective):
    out = tmp_path / objective
    assert main(train_args(corpus_spec, out, objective, 1500, 3, "--log-every-n-steps", "1")) == 0
    for name in ("config.yaml", "run.json", "results.csv", "tokenizer/tokenizer.json", "checkpoints/last.ckpt",
                 "metrics/attempt-0/metrics.csv"):
        assert (out / name).exists(), name
    rows = read_csv(out / "results.csv")
    assert [int(r["epochs"]) for r in rows] == [1, 2, 3]  # powers of two and the last epoch
    for r in rows:
        assert int(r["tokens_seen"]) == 1500 * int(r["epochs"])
        assert float(r["flops"]) == 6 * int(r["non_embedding_params"]) * int(r["tokens_seen"])
        assert 0 < float(r["val_loss"]) < 8 and float(r["val_bpb"]) > 0
        assert (float(r["val_loss_se"]) > 0) == (objective == "diffusion")
    assert int(rows[-1]["step"]) == 3 * -(-(-(-1500 // 32)) // 8)  # ceil(ceil(U / T) / batch) steps per epoch


def test_same_seed_gives_identical_losses(corpus_spec, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for out, seed in ((a, "0"), (b, "0"), (c, "1")):
        assert main(train_args(corpus_spec, out, "diffusion", 1200, 2, "--seed", seed, "--log-every-n-steps", "1")) == 0
    assert train_losses(a) == train_losses(b) and len(train_losses(a)) == 10
    assert [r["val_loss"] for r in read_csv(a / "results.csv")] == [r["val_loss"] for r in read_csv(b / "results.csv")]
    assert train_losses(a) != train_losses(c)


def test_rerun_skips_a_complete_run_and_refuses_a_different_one(corpus_spec, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(corpus_spec, out, "ar", 800, 1)) == 0
    before = (out / "results.csv").read_text()
    assert main(train_args(corpus_spec, out, "ar", 800, 1)) == 0
    assert "already complete" in capsys.readouterr().err
    assert (out / "results.csv").read_text() == before
    assert main(train_args(corpus_spec, out, "ar", 900, 1)) == 2
    assert "different config (unique_tokens: 800 -> 900)" in capsys.readouterr().err


def test_resume_from_checkpoint_matches_uninterrupted(corpus_spec, tmp_path, monkeypatch):
    """Killed after epoch 3's row was written but before its checkpoint: the rerun resumes from
    epoch 2's checkpoint, replaces row 3, and ends with the table of an uninterrupted run."""
    from experiments.evaluation import EvaluationCallback

    extra = ("--eval-epochs", "[1, 2, 3, 4]")
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(train_args(corpus_spec, full, "diffusion", 1000, 4, *extra)) == 0

    original = EvaluationCallback.on_train_epoch_end

    def crash_after_epoch_3(self, trainer, pl_module):
        original(self, trainer, pl_module)
        if trainer.current_epoch + 1 == 3:
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(EvaluationCallback, "on_train_epoch_end", crash_after_epoch_3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(train_args(corpus_spec, part, "diffusion", 1000, 4, *extra))
    assert [r["epochs"] for r in read_csv(part / "results.csv")] == ["1", "2", "3"]
    import torch

    assert torch.load(part / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 1  # saved after epoch 2
    monkeypatch.setattr(EvaluationCallback, "on_train_epoch_end", original)
    assert main(train_args(corpus_spec, part, "diffusion", 1000, 4, *extra)) == 0

    def table(run):
        return [(r["epochs"], r["step"], r["val_loss"], r["val_loss_se"]) for r in read_csv(run / "results.csv")]

    assert table(part) == table(full) and len(table(full)) == 4
    assert (part / "metrics" / "attempt-0" / "metrics.csv").exists() and (part / "metrics" / "attempt-1").exists()


def test_each_epoch_has_its_own_order_and_covers_the_budget(corpus_spec, tmp_path, monkeypatch):
    from experiments.module import LitLM

    seen: dict[int, list[int]] = {}
    original = LitLM.training_step

    def record(self, batch, batch_idx):
        seen.setdefault(self.current_epoch, []).extend(batch[3].tolist())
        return original(self, batch, batch_idx)

    monkeypatch.setattr(LitLM, "training_step", record)
    assert main(train_args(corpus_spec, tmp_path / "r", "ar", 1000, 3)) == 0
    rows = -(-1000 // 32)
    assert all(sorted(order) == list(range(rows)) for order in seen.values()) and len(seen) == 3
    assert seen[0] != seen[1] != seen[2]


@pytest.mark.parametrize("change, message", [
    (["--objective", "gpt"], "unknown objective 'gpt'"),
    (["--model", "huge"], "unknown model 'huge'"),
    (["--attention", "magic"], "unknown attention kind 'magic'"),
    (["--corpus", "nope"], "unknown corpus 'nope'"),
    (["--corpus", "files:/nonexistent/**/*.txt"], "no files match"),
    (["--unique-tokens", "0"], "must be positive"),
    (["--unique-tokens", "-5"], "must be positive"),
    (["--epochs", "0"], "must be positive"),
    (["--unique-tokens", "100000000"], "exceeds the training split"),
    (["--config", "/nonexistent.yaml"], "does not exist"),
    (["--model-arg", "n_layers=3"], "model_args"),
    (["--model-arg", "seq_len=0"], "seq_len must be a positive integer"),
    (["--vocab-size", "100"], "vocab_size must be at least 259"),
    (["--eval-epochs", "['a']"], "eval_epochs must be a list of positive integers"),
    (["--batch-size", "7", "--devices", "2"], "does not split over 2 ranks"),
    (["--accelerator", "gpu"], "gpu backend"),
])
def test_bad_input_is_one_line_exit_2_and_no_folder(corpus_spec, tmp_path, capsys, change, message):
    out = tmp_path / "never"
    args = train_args(corpus_spec, out, "ar", 1000, 1) + change
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_console_script_exit_code(tmp_path):
    out = tmp_path / "x"
    p = subprocess.run([sys.executable, "-m", "experiments.cli", "train", "--objective", "bogus", "--out", str(out)],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "unknown objective 'bogus'" in p.stderr and not out.exists()


def test_unreachable_hf_corpus_is_one_line(tmp_path):
    """Offline (as in CI), an hf: corpus that is not cached fails with one line and exit code 2."""
    import os

    out = tmp_path / "hf"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    p = subprocess.run([sys.executable, "-m", "experiments.cli", "train", "--corpus", "hf:nonexistent/dataset",
                        "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 2 and not out.exists()
    assert len(p.stderr.strip().splitlines()) == 1 and p.stderr.startswith("crossover train: error: corpus 'hf:nonexistent/dataset' "
                                                        "could not be loaded")
