"""Sweep specs, the resumable runner (SIGKILL mid-cell), status, submitit, and refusals."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from experiments.cli import main
from experiments.config import ConfigError
from experiments.run_folder import RunFolder
from experiments.sweep import SweepSpec, preset_names

TIMING = {"train_time_s", "eval_time_s"}


def spec_file(tmp_path: Path, corpus_spec: str, **changes) -> Path:
    spec = {
        "name": "t",
        "axes": {"objective": ["ar", "diffusion"], "unique_tokens": [600, 1200], "epochs": [3]},
        "settings": {"model": "tiny", "model_args": {"seq_len": 32}, "vocab_size": 320, "batch_size": 8,
                     "val_tokens": 256, "corpus": corpus_spec, "schedule": "constant", "warmup_steps": 2,
                     "eval_epochs": [1, 2, 3]},
    }
    for k, v in changes.items():
        spec[k] = {**spec["settings"], **v} if k == "settings" else v
    path = tmp_path / f"spec-{len(list(tmp_path.glob('spec-*')))}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def table(root: Path) -> list[dict[str, str]]:
    with open(root / "results.csv") as f:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(f)]


def cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "experiments.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_spec_expands_into_stable_cells(tmp_path, corpus_spec):
    spec = SweepSpec.load(str(spec_file(tmp_path, corpus_spec, overrides=[{"where": {"objective": "ar"},
                                                                           "set": {"epochs": 2}}])))
    ids = [c.id for c in spec.cells()]
    assert ids == ["ar-U600-E2-tiny-dense-s0", "ar-U1200-E2-tiny-dense-s0",
                   "diffusion-U600-E3-tiny-dense-s0", "diffusion-U1200-E3-tiny-dense-s0"]
    assert ids == [c.id for c in SweepSpec.load(str(spec_file(tmp_path, corpus_spec, overrides=[
        {"where": {"objective": "ar"}, "set": {"epochs": 2}}]))).cells()]


def test_compute_axis_sets_epochs(tmp_path, corpus_spec):
    axes = {"objective": ["ar"], "unique_tokens": [1000], "compute": [1e9, 4e9]}
    spec = SweepSpec.load(str(spec_file(tmp_path, corpus_spec, axes=axes)))
    cells = spec.cells()
    n = 106_816  # tiny's non-embedding parameters
    assert [c.config.epochs for c in cells] == [-(-int(1e9) // (6 * n * 1000)), -(-int(4e9) // (6 * n * 1000))]


@pytest.mark.parametrize("axes, message", [
    ({"objective": ["ar"], "width": [1]}, "unknown axis 'width'"),
    ({"objective": []}, "axis 'objective' is empty"),
    ({"objective": ["ar"], "unique_tokens": [10**9]}, "exceeds the training split"),
    ({"objective": ["gpt"]}, "unknown objective 'gpt'"),
])
def test_malformed_spec_is_refused_before_any_cell(tmp_path, corpus_spec, capsys, axes, message):
    path = spec_file(tmp_path, corpus_spec)
    data = yaml.safe_load(path.read_text())
    data["axes"] = axes
    path.write_text(yaml.safe_dump(data))
    out = tmp_path / "sweep"
    assert main(["sweep", "run", str(path), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("key, value, message", [
    ("overrides", 5, "'overrides' must be a list"),
    ("settings", [1, 2], "'settings' must be a mapping"),
    ("axes", {"objective": ["ar"], "unique_tokens": [1000], "compute": ["lots"]}, "compute values must be positive"),
    ("overrides", [{"where": {"objective": "ar"}, "set": 3}], "'set' must be a mapping"),
    ("settings", {"lr": "fast"}, "optim.lr must be a number"),
])
def test_malformed_spec_values_are_one_line(tmp_path, corpus_spec, capsys, key, value, message):
    path = spec_file(tmp_path, corpus_spec)
    data = yaml.safe_load(path.read_text())
    data[key] = value
    path.write_text(yaml.safe_dump(data))
    assert main(["sweep", "run", str(path), "--out", str(tmp_path / "sweep"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "sweep").exists()


def test_sigkill_of_the_runner_then_an_immediate_rerun_gives_the_uninterrupted_table(tmp_path, corpus_spec):
    """Only the runner is killed (its worker gets the parent-death signal); the rerun, started at once,
    takes the orphaned cell over (or waits for it), finishes the sweep and rebuilds the table."""
    path = spec_file(tmp_path, corpus_spec, settings={"eval_epochs": [1, 2, 3, 4, 5, 6]},
                     axes={"objective": ["ar", "diffusion"], "unique_tokens": [1500], "epochs": [6]})
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    p = cli("sweep", "run", str(path), "--out", str(clean), "--no-progress")
    assert p.wait(timeout=600) == 0, p.stderr.read()

    p = cli("sweep", "run", str(path), "--out", str(killed), "--no-progress")
    first = killed / "cells" / "ar-U1500-E6-tiny-dense-s0"
    deadline = time.time() + 300
    while time.time() < deadline:  # wait until the first cell is mid-run (>= 2 epochs done, not finished)
        try:
            if json.loads((first / "progress.json").read_text())["epoch"] >= 2:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)  # the runner only, not its process group
    p.wait()
    assert RunFolder(first).status() in ("running", "interrupted")  # its worker may not have died yet
    done_rows = len(table(killed)) if (killed / "results.csv").exists() else 0
    assert done_rows < len(table(clean))

    p = cli("sweep", "run", str(path), "--out", str(killed), "--no-progress")  # at once
    assert p.wait(timeout=600) == 0, p.stderr.read()
    assert table(killed) == table(clean)
    keys = [(r["run_id"], r["epochs"]) for r in table(killed)]
    assert len(keys) == len(set(keys)) == 12
    assert RunFolder(first).status() == "done" and RunFolder(first).lock_owner() is None


def test_a_diverging_cell_leaves_the_others_and_the_report(tmp_path, corpus_spec, capsys):
    path = spec_file(tmp_path, corpus_spec, axes={"objective": ["ar", "diffusion"], "unique_tokens": [600],
                                                  "epochs": [2]},
                     overrides=[{"where": {"objective": "ar"}, "set": {"lr": 1.0e6, "warmup_steps": 0,
                                                                        "grad_clip": 0.0}}])
    out = tmp_path / "d"
    assert main(["sweep", "run", str(path), "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "1 cell(s) diverged: ar-U600-E2-tiny-dense-s0" in err and "leaves out 1 diverged cell" in err
    assert {r["cell"] for r in table(out)} == {"diffusion-U600-E2-tiny-dense-s0"}
    assert (out / "report" / "summary.md").exists()
    assert main(["sweep", "status", str(out)]) == 0
    status = capsys.readouterr().out
    assert "diverged" in status.splitlines()[0] and "1 done, 1 diverged" in status


def test_status_rebuild_brings_a_stale_table_up_to_date(tmp_path, corpus_spec, capsys):
    path = spec_file(tmp_path, corpus_spec, axes={"objective": ["ar"], "unique_tokens": [600], "epochs": [2]})
    out = tmp_path / "r"
    assert main(["sweep", "run", str(path), "--out", str(out), "--no-progress"]) == 0
    full = (out / "results.csv").read_text()
    (out / "results.csv").write_text(full.splitlines()[0] + "\n")  # a table left stale
    assert main(["sweep", "status", str(out), "--rebuild"]) == 0
    assert (out / "results.csv").read_text() == full


def test_local_runner_status_failure_isolation_and_rerun(tmp_path, corpus_spec, capsys):
    from analysis.table import atomic_write_text
    from experiments.sweep import init_folder

    path = spec_file(tmp_path, corpus_spec)
    out = tmp_path / "s"
    spec = SweepSpec.load(str(path))
    init_folder(out, spec)
    # the AR cell at U=1200 holds a corrupt checkpoint (say, a disk fault): it fails, the others finish
    bad = next(c for c in spec.cells() if c.id == "ar-U1200-E3-tiny-dense-s0")
    (bad.folder(out) / "checkpoints").mkdir(parents=True)
    atomic_write_text(bad.folder(out) / "config.yaml", yaml.safe_dump(bad.config.to_dict()))
    (bad.folder(out) / "checkpoints" / "last.ckpt").write_bytes(b"not a checkpoint")

    assert main(["sweep", "run", str(path), "--out", str(out), "--workers", "2", "--no-progress"]) == 1
    capsys.readouterr()
    assert main(["sweep", "status", str(out)]) == 0
    status = capsys.readouterr().out
    assert "3 done" in status and "1 failed" in status
    rows = table(out)
    assert len(rows) == 9
    assert {r["cell"] for r in rows} == {"ar-U600-E3-tiny-dense-s0", "diffusion-U600-E3-tiny-dense-s0",
                                                            "diffusion-U1200-E3-tiny-dense-s0"}
    assert (out / "report" / "summary.md").exists()
    before = (out / "results.csv").read_text()
    assert main(["sweep", "run", str(path), "--out", str(out), "--no-progress"]) == 1  # only the failed cell reruns
    assert (out / "results.csv").read_text() == before


def test_submitit_local_executor(tmp_path, corpus_spec):
    pytest.importorskip("submitit")
    path = spec_file(tmp_path, corpus_spec, axes={"objective": ["ar", "diffusion"], "unique_tokens": [600],
                                                  "epochs": [2]}, settings={"eval_epochs": [1, 2]})
    out = tmp_path / "sub"
    assert main(["sweep", "run", str(path), "--out", str(out), "--executor", "submitit-local", "--no-progress"]) == 0
    assert len(table(out)) == 4 and (out / "slurm").is_dir()


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_expands(name):
    cells = SweepSpec.load(name).cells()  # validates every cell's config; builds no model
    assert {c.config.objective for c in cells} >= {"ar", "diffusion"}
    assert len({c.id for c in cells}) == len(cells) >= 2


def test_overrides_on_an_objective_axis_touch_only_that_objective():
    spec = SweepSpec.from_dict({"axes": {"objective": ["ar", "block_diffusion"], "block_size": [4, 16],
                                         "unique_tokens": [1000], "epochs": [2]},
                                "settings": {"optim": {"lr": 1e-3}},
                                "overrides": [{"where": {"block_size": 4}, "set": {"lr": 5e-3}}]})
    assert {c.id: c.config.optim.lr for c in spec.cells()} == {
        "ar-U1000-E2-tiny-dense-s0": 1e-3, "block_diffusion-block_size4-U1000-E2-tiny-dense-s0": 5e-3,
        "block_diffusion-block_size16-U1000-E2-tiny-dense-s0": 1e-3}


def test_the_lock_dies_with_its_process_and_a_silent_foreign_lock_goes_stale(tmp_path):
    from experiments.run_folder import FolderBusy

    folder = RunFolder(tmp_path)
    code = f"from experiments.run_folder import RunFolder; import time; RunFolder({str(tmp_path)!r}).take_lock(); " \
           "print('held', flush=True); time.sleep(60)"
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    assert folder.lock_owner()["pid"] == p.pid and folder.status() == "running"
    with pytest.raises(FolderBusy):
        folder.take_lock()
    p.kill()
    p.wait()
    assert folder.lock_owner() is None  # SIGKILL leaves no live-looking lock
    folder.take_lock()
    folder.release_lock()
    (tmp_path / "lock.json").write_text(json.dumps({"pid": 1, "host": "another-node"}))
    assert folder.lock_owner()["host"] == "another-node"  # a fresh heartbeat: trusted
    old = time.time() - 3600
    os.utime(tmp_path / "lock.json", (old, old))
    assert folder.lock_owner() is None  # no heartbeat for an hour: stale


def test_any_training_setting_is_an_axis_and_names_its_cells():
    spec = SweepSpec.from_dict({"axes": {"objective": ["ar", "diffusion"], "unique_tokens": [1000], "epochs": [2],
                                         "lr": [1e-3, 2e-3], "input_mask_rate": [0.0, 0.2]}})
    cells = {c.id: c.config for c in spec.cells()}
    assert len(cells) == 6  # input masking applies to AR only: 2 x 2 AR cells, 2 diffusion cells
    cfg = cells["ar-input_mask_rate0.2-U1000-E2-tiny-dense-s0-lr0.002"]
    assert cfg.optim.lr == 2e-3 and cfg.objective_config.input_mask_rate == 0.2
    assert cells["diffusion-U1000-E2-tiny-dense-s0-lr0.001"].optim.lr == 1e-3
    with pytest.raises(ConfigError, match="unknown axis 'corpus'"):
        SweepSpec.from_dict({"axes": {"corpus": ["stdlib"]}})


def test_an_axis_given_per_objective_expands_for_that_objective_only():
    spec = SweepSpec.from_dict({"axes": {"objective": ["ar", "diffusion"], "unique_tokens": [1000],
                                         "epochs": {"ar": [2, 3], "diffusion": [8]},
                                         "weight_decay": {"ar": [0.1, 0.5]}, "resid_dropout": {"ar": [0.0, 0.1]},
                                         "model": {"diffusion": ["tiny", "n220k"]}},
                                "settings": {"weight_decay": 0.2}})
    cells = {c.id: c.config for c in spec.cells()}
    assert len(cells) == 2 * 2 * 2 + 2  # AR: epochs x weight decay x dropout; diffusion: model only
    ar = cells["ar-U1000-E3-tiny-dense-s0-weight_decay0.5-resid_dropout0.1"]
    assert (ar.epochs, ar.optim.weight_decay, ar.model_config().resid_dropout) == (3, 0.5, 0.1)
    diffusion = cells["diffusion-U1000-E8-n220k-dense-s0"]  # not named by the AR-only axes: the settings' value
    assert (diffusion.optim.weight_decay, diffusion.model_config().resid_dropout) == (0.2, 0.0)
    with pytest.raises(ConfigError, match="axis 'lr' names block_diffusion, not an objective of the sweep"):
        SweepSpec.from_dict({"axes": {"objective": ["ar"], "lr": {"block_diffusion": [1e-3]}}})
    with pytest.raises(ConfigError, match="axis 'lr' gives an objective an empty list"):
        SweepSpec.from_dict({"axes": {"objective": ["ar"], "lr": {"ar": []}}})
