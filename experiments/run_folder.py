"""The run folder: one class that knows its files, its status and its lock (used by train and sweeps).

::

    config.yaml        resolved run config (defaults + YAML + CLI)
    run.json           derived quantities, provenance, status (running | done | diverged)
    results.csv        one row per evaluation (contract 4)
    progress.json      epoch / epochs / step, after every epoch
    tokenizer/         the tokenizer (save_pretrained)
    metrics/attempt-N/ Lightning CSV logs (and TensorBoard events when installed), one per (re)start
    checkpoints/last.ckpt
    lock.json          {pid, host, started} of the process training it (sweeps), flock-ed while it lives
    error.txt          traceback of a failed attempt (sweeps); ``<folder>.error.txt`` beside it when the
                       run failed before its folder existed

The lock is an ``flock`` held for the trainer's lifetime, so it ends with its process however that
dies (no stale lock on the same host, no pid reuse to guess at); a lock of another host (a shared
file system) is trusted while its heartbeat, the file's mtime, is younger than ``FOREIGN_STALE_S``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from analysis.table import atomic_write_text, read_rows
from experiments.config import ConfigError, RunConfig, upgrade_legacy

#: statuses of a run folder, as ``sweep status`` shows them
STATUSES = ("done", "diverged", "running", "failed", "interrupted", "pending")
#: seconds between refreshes of a held lock's mtime, and the age after which another host's lock is stale
HEARTBEAT_S = 60.0
FOREIGN_STALE_S = 15 * 60.0


class FolderBusy(RuntimeError):
    """Another live process holds the folder's lock."""

    def __init__(self, folder: Path, owner: dict[str, Any]):
        super().__init__(f"{folder} is being trained by pid {owner.get('pid')} on {owner.get('host')}")
        self.owner = owner


def _read_json(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


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
            old = RunConfig.from_dict(upgrade_legacy(yaml.safe_load(self.config_file.read_text()))).identity()
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
        """The live process holding the lock, or None.

        On this host the lock is an ``flock`` held for the trainer's lifetime: it dies with its process,
        so a killed trainer never leaves a live-looking lock. Another host's lock is trusted while its
        heartbeat (the file's mtime, refreshed every ``HEARTBEAT_S``) is younger than ``FOREIGN_STALE_S``."""
        try:
            fd = os.open(self.lock_file, os.O_RDONLY)
        except OSError:
            return None
        try:
            owner = _read_json(fd)
            if owner.get("host") not in (None, socket.gethostname()):
                fresh = time.time() - os.fstat(fd).st_mtime < FOREIGN_STALE_S
                return owner if fresh else None
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return owner or {"pid": "?", "host": socket.gethostname()}  # held; its content may be mid-write
            except OSError:  # no flock on this file system: fall back to the heartbeat
                return owner if owner and time.time() - os.fstat(fd).st_mtime < FOREIGN_STALE_S else None
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

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
        """Hold the folder's lock until ``release_lock`` or the end of this process: a second trainer of
        the same folder gets ``FolderBusy`` instead of training twice. A heartbeat thread keeps the lock's
        mtime fresh for runners on other hosts."""
        owner = self.lock_owner()
        if owner is not None and owner.get("host") != socket.gethostname():
            raise FolderBusy(self.path, owner)
        fd = os.open(self.lock_file, os.O_CREAT | os.O_RDWR, 0o644)
        for attempt in range(20):  # a reader's brief shared lock (lock_owner) is not an owner: retry
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == 19:
                    owner = _read_json(fd)
                    os.close(fd)
                    raise FolderBusy(self.path, owner) from None
                time.sleep(0.05)
            except OSError:  # no flock on this file system (e.g. Lustre noflock): the heartbeat alone guards it
                break
        os.ftruncate(fd, 0)
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        os.pwrite(fd, json.dumps(owner).encode(), 0)
        self._lock_fd = fd
        self._heartbeat = threading.Event()
        threading.Thread(target=self._beat, args=(fd, self._heartbeat), daemon=True).start()

    @staticmethod
    def _beat(fd: int, stop: threading.Event) -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                os.utime(fd)
            except OSError:
                continue  # a transient error of a network file system: try again at the next beat

    def release_lock(self) -> None:
        fd = getattr(self, "_lock_fd", None)
        if fd is None:
            return
        self._heartbeat.set()
        os.ftruncate(fd, 0)  # the file stays (unlinking a locked file races with the next taker)
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        self._lock_fd = None

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
