"""The results table (DESIGN.md contract 4): its columns, their types, the compute formula and atomic I/O.

This module is the one owner of the table's schema, for the writer (``experiments/``, which may
import analysis) and the readers (``analysis/``) alike. One row per evaluation point::

    run_id, objective, attention, model, params, non_embedding_params, unique_tokens,
    epochs, tokens_seen, flops, val_loss, seed          <- contract 4 (required of any table)
    run_epochs, val_loss_se, val_bpb, ...               <- written by this suite, optional for readers

``epochs`` may be fractional in tables from other tools (``tokens_seen / unique_tokens``);
``flops = 6 * N * tokens_seen`` with N the non-embedding parameter count (contract 3).
Writes go to a temporary file in the same folder, are fsynced and renamed over the target, so a
reader (or a crash) never sees half a file.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

#: Contract-4 columns, required of every table, with the kind of value each holds.
REQUIRED_COLUMNS: dict[str, str] = {
    "run_id": "str",
    "objective": "str",
    "attention": "str",
    "model": "str",
    "params": "int",
    "non_embedding_params": "int",
    "unique_tokens": "int",
    "epochs": "float",  # the epoch evaluated; integer for this suite's runs, fractional in other tables
    "tokens_seen": "int",
    "flops": "float",
    "val_loss": "float",
    "seed": "int",
}

#: Optional columns this suite writes, with their kinds (readers treat a missing one as unknown).
EXTRA_COLUMNS: dict[str, str] = {
    "run_epochs": "float",  # length of the run the row was evaluated in (keeps runs of different length apart)
    "val_loss_se": "float",  # Monte Carlo standard error of val_loss (0 for exact AR NLL)
    "val_bpb": "float",
    "val_tokens": "int",
    "mc_samples": "int",
    "elbo_weight": "str",
    "mask_eps": "float",
    "curriculum": "str",  # diffusion: "fraction@max_t" of the easy-to-hard masking curriculum (empty: off)
    "block_size": "int",  # block diffusion: tokens per block (empty for other objectives)
    "input_mask_rate": "float",  # AR: fraction of training inputs replaced by [MASK] (fair-baseline control)
    "step": "int",
    "train_time_s": "float",
    "eval_time_s": "float",
    "seq_len": "int",
    "vocab_size": "int",
    "batch_size": "int",
    "lr": "float",
    "schedule": "str",
    "weight_decay": "float",
    "ema_decay": "float",  # 0: the raw weights were evaluated; > 0: their exponential moving average
    "resid_dropout": "float",  # dropout on the attention and MLP outputs (models.config.DROPOUT_SITES)
    "attn_dropout": "float",  # dropout on the attention probabilities
    "embd_dropout": "float",  # dropout on the token embeddings
    "corpus": "str",
    "corpus_fingerprint": "str",
    "tokenizer_hash": "str",
}

#: Column order of the tables this suite writes.
COLUMNS: list[str] = [*REQUIRED_COLUMNS, *EXTRA_COLUMNS]

#: Columns that identify one row.
ROW_KEY: tuple[str, str] = ("run_id", "epochs")


def flops(non_embedding_params: float, unique_tokens: float, epochs: float) -> float:
    """Training compute (contract 3): ``6 * N * tokens_seen`` FLOPs, ``tokens_seen = U * epochs``."""
    return 6.0 * non_embedding_params * unique_tokens * epochs


# --------------------------------------------------------------------------- atomic files
def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], Any]) -> None:
    """Call ``write(file)`` on a temporary file in ``path``'s folder, fsync, then ``os.replace`` it onto
    ``path``: readers see the old file or the new one, never a partial one (nor one left by a full disk)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the file the mode open() would
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


# --------------------------------------------------------------------------- rows
def read_rows(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """The rows of a table as strings (an empty list when the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_rows(path: str | os.PathLike[str], rows: list[dict[str, Any]], columns: list[str] = COLUMNS) -> None:
    """Write ``rows`` (atomically) with ``columns`` in order; keys outside ``columns`` are dropped."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def upsert_row(path: str | os.PathLike[str], row: dict[str, Any]) -> None:
    """Add ``row``, replacing a row with the same ``ROW_KEY`` (a re-evaluated epoch after a resume)."""
    key = tuple(str(row[k]) for k in ROW_KEY)
    rows = [r for r in read_rows(path) if tuple(str(r[k]) for k in ROW_KEY) != key]
    rows.append(row)
    rows.sort(key=lambda r: (str(r["run_id"]), float(r["epochs"])))
    write_rows(path, rows)
