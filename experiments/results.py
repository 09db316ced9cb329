"""The results table (DESIGN contract 4): one row per evaluation point, written atomically."""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

#: Columns in order; the first twelve are contract 4, the rest provenance and uncertainty.
COLUMNS = [
    "run_id", "objective", "attention", "model", "params", "non_embedding_params", "unique_tokens",
    "epochs", "tokens_seen", "flops", "val_loss", "seed",
    "run_epochs", "val_loss_se", "val_bpb", "val_tokens", "mc_samples", "elbo_weight", "mask_eps", "step", "train_time_s", "eval_time_s",
    "seq_len", "vocab_size", "batch_size", "lr", "schedule", "corpus", "corpus_fingerprint", "tokenizer_hash",
]


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Call ``write(file)`` on a temporary file in ``path``'s folder, fsync, then ``os.replace`` it onto
    ``path``: readers see the old file or the new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def read_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_rows(path: Path, rows: list[dict[str, Any]], columns: list[str] = COLUMNS) -> None:
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def upsert_row(path: Path, row: dict[str, Any], key: tuple[str, ...] = ("run_id", "epochs")) -> None:
    """Add ``row``, replacing a row with the same key (a re-evaluated epoch after a resume)."""
    rows = [r for r in read_rows(path) if tuple(str(r[k]) for k in key) != tuple(str(row[k]) for k in key)]
    rows.append(row)
    rows.sort(key=lambda r: (str(r["run_id"]), int(r["epochs"])))
    write_rows(path, rows)
