"""End-to-end training runs, reproducibility, resume, and refusal of bad input."""

from __future__ import annotations

import csv
import math
import os
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


@pytest.mark.parametrize("ema", [(), ("--ema-decay", "0.9")], ids=["raw", "ema"])
def test_resume_from_checkpoint_matches_uninterrupted(corpus_spec, tmp_path, monkeypatch, capsys, ema):
    """Killed after epoch 3's row was written but before its checkpoint: the rerun resumes from
    epoch 2's checkpoint (the weight average and its step count too), replaces row 3, and ends with
    the table of an uninterrupted run."""
    from experiments.evaluation import EvaluationCallback

    extra = ("--eval-epochs", "[1, 2, 3, 4]", *ema)
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(train_args(corpus_spec, full, "diffusion", 1000, 4, *extra)) == 0

    original = EvaluationCallback.on_train_epoch_end

    def crash_after_epoch_3(self, trainer, pl_module):
        original(self, trainer, pl_module)
        if trainer.current_epoch + 1 == 3:
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(EvaluationCallback, "on_train_epoch_end", crash_after_epoch_3)
    assert main(train_args(corpus_spec, part, "diffusion", 1000, 4, *extra)) == 1  # a bug: traceback, exit 1
    assert "simulated crash" in capsys.readouterr().err
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
    (["--objective", "gpt"], "invalid choice: 'gpt'"),
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
    (["--eval-epochs", "['a']"], "eval_epochs must be a list of integers"),
    (["--eval-epochs", "[0, 2]"], "eval_epochs must be a list of positive integers"),
    (["--model-arg", "attention=nsa"], "model_args may not set attention: use --attention"),
    (["--schedule", "linear"], "invalid choice: 'linear'"),
    (["--mc-samples", "8"], "'mc_samples' does not apply to objective 'ar'"),
    (["--unique-tokens", "20"], "smaller than one training sequence"),
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
    assert p.returncode == 2 and "invalid choice: 'bogus'" in p.stderr and len(p.stderr.splitlines()) == 1
    assert not out.exists()


def test_unreachable_hf_corpus_is_one_line(tmp_path):
    """Offline (as in CI), an hf: corpus that is not cached fails with one line and exit code 2."""
    out = tmp_path / "hf"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    p = subprocess.run([sys.executable, "-m", "experiments.cli", "train", "--corpus", "hf:nonexistent/dataset",
                        "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 2 and not out.exists()
    assert len(p.stderr.strip().splitlines()) == 1
    assert p.stderr.startswith("crossover train: error: corpus 'hf:nonexistent/dataset' could not be loaded")


def test_a_diverging_run_stops_keeps_its_last_finite_checkpoint_and_writes_no_nan_row(corpus_spec, tmp_path,
                                                                                       monkeypatch, capsys):
    """A loss that turns NaN in epoch 3: exit 3, status diverged, the epoch-2 checkpoint kept and finite."""
    import json

    import torch

    from models.objectives import MaskedDiffusionObjective

    original = MaskedDiffusionObjective.loss_sum

    def nan_in_epoch_3(self, model, x, valid, generator=None, noise=None):
        loss = original(self, model, x, valid, generator, noise)
        return loss * float("nan") if self.epoch_hook() >= 2 else loss

    out = tmp_path / "nan"
    monkeypatch.setattr(MaskedDiffusionObjective, "loss_sum", nan_in_epoch_3)
    from experiments.module import LitLM

    start = LitLM.on_train_epoch_start

    def track(self):
        self.objective.epoch_hook = lambda: self.current_epoch
        return start(self)

    monkeypatch.setattr(LitLM, "on_train_epoch_start", track)
    assert main(train_args(corpus_spec, out, "diffusion", 1000, 4, "--eval-epochs", "[1, 2, 3, 4]")) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert "run diverged: non-finite training loss (nan) at step" in err[-1]
    assert json.loads((out / "run.json").read_text())["status"] == "diverged"
    rows = read_csv(out / "results.csv")
    assert [r["epochs"] for r in rows] == ["1", "2"] and all(float(r["val_loss"]) < 10 for r in rows)
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    from experiments.checkpoint import load_checkpoint

    assert load_checkpoint(out).objective == "diffusion"
    assert main(train_args(corpus_spec, out, "diffusion", 1000, 4, "--eval-epochs", "[1, 2, 3, 4]")) == 3  # again
    assert "run diverged: non-finite training loss (nan) at step" in capsys.readouterr().err


def test_huge_learning_rate_diverges_through_the_console(corpus_spec, tmp_path):
    out = tmp_path / "lr"
    p = subprocess.run([sys.executable, "-m", "experiments.cli", *train_args(corpus_spec, out, "ar", 1000, 3),
                        "--lr", "1e6", "--warmup-steps", "1", "--grad-clip", "0"], capture_output=True, text=True)
    assert p.returncode == 3, p.stderr
    assert "run diverged: non-finite" in p.stderr.strip().splitlines()[-1] and "Traceback" not in p.stderr
    import json

    assert json.loads((out / "run.json").read_text())["status"] == "diverged"
    rows = read_csv(out / "results.csv") if (out / "results.csv").exists() else []
    assert all(math.isfinite(float(r["val_loss"])) for r in rows)  # no NaN row, whenever it diverged


def test_out_that_is_a_file_or_unwritable_is_one_line(corpus_spec, tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert main(train_args(corpus_spec, a_file, "ar", 1000, 1)) == 2
    assert "is a file" in capsys.readouterr().err
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code = main(train_args(corpus_spec, locked / "run", "ar", 1000, 1))
        err = capsys.readouterr().err.strip().splitlines()
        if os.geteuid() == 0:  # root writes anywhere: the run just works
            assert code == 0
        else:
            assert code == 2 and len(err) == 1 and "cannot create output folder" in err[0]
    finally:
        locked.chmod(0o700)


def test_full_disk_leaves_the_previous_checkpoint_and_table_intact(corpus_spec, tmp_path, capsys):
    """On a tmpfs that holds one checkpoint but not two (the atomic write needs both): exit 74, one line,
    and the epoch-1 checkpoint and results table are unchanged. Needs root to mount (skipped otherwise)."""
    import shutil

    probe = tmp_path / "probe"
    assert main(train_args(corpus_spec, probe, "ar", 1000, 1)) == 0
    ckpt_size = (probe / "checkpoints" / "last.ckpt").stat().st_size
    used = sum(p.stat().st_size for p in probe.rglob("*") if p.is_file())
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    size_kb = (used + ckpt_size // 2) // 1024 + 64
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        out = mnt / "run"
        capsys.readouterr()
        code = main(train_args(corpus_spec, out, "ar", 1000, 3, "--eval-epochs", "[1, 2, 3]"))
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 74 and "No space left on device" in err[-1], "\n".join(err[-12:])
        assert "Traceback" not in "\n".join(err)
        import torch

        assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 0  # epoch 1's
        assert [r["epochs"] for r in read_csv(out / "results.csv")] in (["1"], ["1", "2"])
        assert not [p for p in out.rglob(".*") if p.is_file()]  # no temporary file left behind
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        shutil.rmtree(mnt, ignore_errors=True)


def test_ar_input_masking_is_a_flag_and_a_results_column(corpus_spec, tmp_path):
    plain, masked = tmp_path / "plain", tmp_path / "masked"
    assert main(train_args(corpus_spec, plain, "ar", 1000, 1, "--log-every-n-steps", "1")) == 0
    assert main(train_args(corpus_spec, masked, "ar", 1000, 1, "--input-mask-rate", "0.3",
                           "--log-every-n-steps", "1")) == 0
    rows = read_csv(masked / "results.csv")
    assert rows[0]["input_mask_rate"] == "0.3" and read_csv(plain / "results.csv")[0]["input_mask_rate"] == "0.0"
    assert train_losses(plain) != train_losses(masked)


def test_ema_follows_its_formula_and_restores_the_raw_weights():
    import torch

    from experiments.module import EMA

    model = torch.nn.Linear(3, 2)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    zero, half = EMA(model, 0.0), EMA(model, 0.5)
    assert all(torch.equal(half.weights(model)[n], p) for n, p in start.items())  # no step yet: the raw weights
    seen = []
    for _ in range(2):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        seen.append({n: p.detach().clone() for n, p in model.named_parameters()})
        zero.update(model)
        half.update(model)
    for n, p in model.named_parameters():
        assert torch.equal(zero.weights(model)[n], p.detach())  # decay 0: the raw weights
        # bias-corrected: (0.5 * 0.5 * w1 + 0.5 * w2) / (1 - 0.5**2), nothing of the initial weights
        assert torch.allclose(half.weights(model)[n], (0.25 * seen[0][n] + 0.5 * seen[1][n]) / 0.75)
    raw = [p.detach().clone() for p in model.parameters()]
    averaged = half.weights(model)
    with half.applied(model):
        assert all(torch.allclose(p, averaged[n]) for n, p in model.named_parameters())
    assert all(torch.equal(p, r) for p, r in zip(model.parameters(), raw))


def test_ema_run_evaluates_and_saves_the_averaged_weights(corpus_spec, tmp_path):
    import torch

    from experiments.checkpoint import load_checkpoint

    plain, ema = tmp_path / "plain", tmp_path / "ema"
    assert main(train_args(corpus_spec, plain, "ar", 1000, 2)) == 0
    assert main(train_args(corpus_spec, ema, "ar", 1000, 2, "--ema-decay", "0.9")) == 0
    rows, raw_rows = read_csv(ema / "results.csv"), read_csv(plain / "results.csv")
    assert rows[-1]["ema_decay"] == "0.9" and raw_rows[-1]["ema_decay"] == "0.0"
    assert rows[-1]["val_loss"] != raw_rows[-1]["val_loss"]  # same seed and data: only the weights evaluated differ
    ckpt = torch.load(ema / "checkpoints" / "last.ckpt", weights_only=False)
    loaded = load_checkpoint(ema).model.state_dict()
    assert all(torch.equal(loaded[n], t) for n, t in ckpt["ema"].items())
    assert not all(torch.equal(ckpt["state_dict"]["model." + n], t) for n, t in ckpt["ema"].items())


def test_ema_keeps_an_fp32_average_of_low_precision_weights():
    import torch

    from experiments.module import EMA

    model = torch.nn.Linear(4, 4).to(torch.bfloat16)
    ema = EMA(model, 0.5)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)  # bf16 weights, fp32 average: no dtype error
    assert ema.avg["weight"].dtype == ema.weights(model)["weight"].dtype == torch.float32
