"""The run folder: one class that knows its files, its status and its lock (used by train and sweeps).

::

    config.yaml        resolved run config (defaults + YAML + CLI)
    run.json           derived quantities, provenance, status (running | done | diverged)
    results.csv        one row per evaluation (contract 4)
    progress.json      epoch / epochs / step, after every epoch
    tokenizer/         the tokenizer (save_pretrained)
    metrics/attempt-N/ Lightning CSV logs (and TensorBoard events when installed), one per (re)start
    checkpoints/last.ckpt
    lock.json          {pid, host, started}: the process training it (sweeps)
    error.txt          traceback of a failed attempt (sweeps); ``<folder>.error.txt`` beside it when the
                       run failed before its folder existed

A lock is stale when its host is this one and its process is gone (or is another process that
reused the pid: the lock records the process's start time); locks of other hosts are trusted.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import yaml

from analysis.table import atomic_write_text, read_rows
from experiments.config import ConfigError, RunConfig

#: statuses of a run folder, as ``sweep status`` shows them
STATUSES = ("done", "diverged", "running", "failed", "interrupted", "pending")


class FolderBusy(RuntimeError):
    """Another live process holds the folder's lock."""

    def __init__(self, folder: Path, owner: dict[str, Any]):
        super().__init__(f"{folder} is being trained by pid {owner.get('pid')} on {owner.get('host')}")
        self.owner = owner


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot), None when it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return "unknown"  # no /proc (not Linux): alive, start time unknown
    return None if fields[0] == "Z" else fields[19]


class RunFolder:
    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    # ------------------------------------------------------------------ files
    config_file = property(lambda self: self.path / "config.yaml")
    info_file = property(lambda self: self.path / "run.json")
    results = property(lambda self: self.path / "results.csv")
    progress_file = property(lambda self: self.path / "progress.json")
    checkpoint = property(lambda self: self.path / "checkpoints" / "last.ckpt")
    tokenizer_dir = property(lambda self: self.path / "tokenizer")
    lock_file = property(lambda self: self.path / "lock.json")

    @property
    def error_file(self) -> Path:
        """Where a failure is recorded: inside the folder once it is a run folder, else beside it."""
        if self.config_file.exists():
            return self.path / "error.txt"
        return self.path.parent / f"{self.path.name}.error.txt"

    def exists(self) -> bool:
        return self.config_file.exists()

    def rows(self) -> list[dict[str, str]]:
        return read_rows(self.results)

    def info(self) -> dict[str, Any]:
        try:
            return json.loads(self.info_file.read_text())
        except (OSError, ValueError):
            return {}

    def write_info(self, info: dict[str, Any]) -> None:
        atomic_write_text(self.info_file, json.dumps(info, indent=2))

    def update_info(self, **changes: Any) -> None:
        self.write_info({**self.info(), **changes})

    def next_attempt(self) -> str:
        """Name of this (re)start's metrics folder, so a resumed run logs beside, not over, the last one."""
        return f"attempt-{len(list((self.path / 'metrics').glob('attempt-*')))}"

    # ------------------------------------------------------------------ creation
    def check_reusable(self, cfg: RunConfig) -> str | None:
        """Status of an existing folder holding the same run (None: a new or empty folder).

        Refuses a path that is a file, a foreign non-empty folder, or a run with a different config."""
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"output folder {str(self.path)!r} is a file")
        if not self.path.exists():
            return None
        if not self.config_file.exists():
            if any(p.name != "lock.json" for p in self.path.iterdir()):
                raise ConfigError(f"output folder {str(self.path)!r} exists and is not a crossover run folder")
            return None
        try:
            old = RunConfig.from_dict(yaml.safe_load(self.config_file.read_text())).identity()
        except (ConfigError, yaml.YAMLError, AttributeError) as e:
            raise ConfigError(f"{str(self.path)!r} holds a run whose config.yaml cannot be read ({e}); "
                              "use another --out") from None
        new = cfg.identity()
        diff = [k for k in new if old.get(k) != new[k]]
        if diff:
            k = diff[0]
            raise ConfigError(f"{str(self.path)!r} holds a run with a different config ({k}: {old.get(k)!r} -> "
                              f"{new[k]!r}); use another --out")
        return self.info().get("status", "running")

    def create(self, cfg: RunConfig, tokenizer: Any) -> None:
        """Make the folder (checking it can be written) with config.yaml and the tokenizer."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create output folder {str(self.path)!r}: {e.strerror}") from None
        if not os.access(self.path, os.W_OK):
            raise ConfigError(f"output folder {str(self.path)!r} is not writable")
        atomic_write_text(self.config_file, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        if not self.tokenizer_dir.exists():
            tokenizer.save_pretrained(self.tokenizer_dir)

    # ------------------------------------------------------------------ status and lock
    def lock_owner(self) -> dict[str, Any] | None:
        """The live process holding the lock, or None (no lock, or a stale one)."""
        try:
            owner = json.loads(self.lock_file.read_text())
        except (OSError, ValueError):
            return None
        if owner.get("host") != socket.gethostname():
            return owner  # another node's job: trust its lock
        start = _process_start(int(owner.get("pid", -1)))
        if start is None or (owner.get("start") not in (None, start) and start != "unknown"):
            return None  # gone, or the pid now belongs to another process
        return owner

    def status(self) -> str:
        """done | diverged | running | failed | interrupted | pending (see ``STATUSES``)."""
        state = self.info().get("status")
        if state in ("done", "diverged"):
            return state
        if self.lock_owner() is not None:
            return "running"
        if self.error_file.exists():
            return "failed"
        if self.checkpoint.exists() or self.rows():
            return "interrupted"
        return "pending"

    def take_lock(self) -> None:
        """O_EXCL lock: a second process on the same folder gets ``FolderBusy`` instead of training twice."""
        owner = self.lock_owner()
        if owner is not None:
            raise FolderBusy(self.path, owner)
        self.lock_file.unlink(missing_ok=True)  # stale: its process is gone
        try:
            fd = os.open(self.lock_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            raise FolderBusy(self.path, self.lock_owner() or {}) from None
        pid = os.getpid()
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": pid, "host": socket.gethostname(), "start": _process_start(pid),
                       "started": time.time()}, f)

    def release_lock(self) -> None:
        try:
            if json.loads(self.lock_file.read_text()).get("pid") == os.getpid():
                self.lock_file.unlink()
        except (OSError, ValueError):
            pass

    def record_error(self, text: str) -> None:
        atomic_write_text(self.error_file, text)

    def clear_errors(self) -> None:
        (self.path / "error.txt").unlink(missing_ok=True)
        (self.path.parent / f"{self.path.name}.error.txt").unlink(missing_ok=True)

    def last_error(self) -> str:
        try:
            lines = self.error_file.read_text().strip().splitlines()
        except OSError:
            return ""
        return lines[-1][:160] if lines else ""
