"""Load and validate the results table (DESIGN.md contract 4) and average seeds per evaluation point.

The results table has one row per evaluation point. ``load_results`` checks the columns analysis
needs, their types and the contract identities ``tokens_seen = U * epochs`` and
``flops = 6 * N * tokens_seen`` (N = non-embedding parameters), and raises one ``ValueError``
that names the first problem. ``aggregate_points`` then turns rows into points: one per
(attention, objective, model, N, U, epochs), averaged over seeds, with a standard error.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

OBJECTIVES: tuple[str, str] = ("ar", "diffusion")

#: Columns analysis reads, with the kind of value each must hold.
REQUIRED_COLUMNS: dict[str, str] = {
    "run_id": "str",
    "objective": "str",
    "attention": "str",
    "model": "str",
    "params": "int",
    "non_embedding_params": "int",
    "unique_tokens": "int",
    "epochs": "int",
    "tokens_seen": "int",
    "flops": "float",
    "val_loss": "float",
    "val_loss_se": "float",
    "seed": "int",
}

#: Keys of one evaluation point; rows that share them (different seeds) are replicates.
POINT_KEYS: list[str] = ["attention", "objective", "model", "non_embedding_params", "unique_tokens", "epochs"]

_FLOPS_RTOL = 1e-3  # CSV writers may round floats; a wrong N is off by far more than this


def _check(df: pd.DataFrame, column: str, bad: pd.Series, expected: str) -> None:
    """Raise a ValueError naming ``column``, the first row flagged in ``bad`` and its value."""
    flagged = bad.to_numpy().nonzero()[0]
    if flagged.size:
        row = flagged[0]
        raise ValueError(
            f"results table: column {column!r} has bad value {df[column].iloc[row]!r} in data row {row} "
            f"(run_id {df['run_id'].iloc[row]!r}): expected {expected}"
        )


def _as_numeric(df: pd.DataFrame, column: str, kind: str) -> pd.Series:
    """``df[column]`` as int64 or float, after checking every value is a finite number."""
    num = pd.to_numeric(df[column], errors="coerce").astype(float)
    _check(df, column, ~np.isfinite(num), f"a finite {'integer' if kind == 'int' else 'number'}")
    if kind == "int":
        _check(df, column, num != np.round(num), "an integer")
        return num.astype(np.int64)
    return num


def validate_results(df: pd.DataFrame) -> pd.DataFrame:
    """Check a results table and return a copy with the required columns in canonical types.

    Raises ``ValueError`` naming the missing column(s), or the first bad value (column, row,
    run_id). Extra columns are kept unchanged.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"results table is missing required column(s): {', '.join(missing)}")
    if df.empty:
        raise ValueError("results table has no rows")
    out = df.reset_index(drop=True).copy()
    out["run_id"] = out["run_id"].astype(str)  # so error messages can name the run
    for column, kind in REQUIRED_COLUMNS.items():
        if kind == "str":
            _check(out, column, out[column].isna() | (out[column].astype(str).str.strip() == ""), "a non-empty string")
            out[column] = out[column].astype(str).str.strip()
        else:
            out[column] = _as_numeric(out, column, kind)

    _check(out, "objective", ~out["objective"].isin(OBJECTIVES), f"one of {', '.join(OBJECTIVES)}")
    for column in ("params", "non_embedding_params", "unique_tokens", "tokens_seen", "flops", "val_loss"):
        _check(out, column, out[column] <= 0, "a positive number")
    _check(out, "epochs", out["epochs"] < 1, "an integer >= 1")
    _check(out, "val_loss_se", out["val_loss_se"] < 0, "a standard error >= 0")
    _check(out, "non_embedding_params", out["non_embedding_params"] > out["params"], "at most params (total)")
    _check(out, "tokens_seen", out["tokens_seen"] != out["unique_tokens"] * out["epochs"], "unique_tokens * epochs")
    expected_flops = 6.0 * out["non_embedding_params"] * out["tokens_seen"]
    _check(
        out,
        "flops",
        (out["flops"] - expected_flops).abs() > _FLOPS_RTOL * expected_flops,
        "6 * non_embedding_params * tokens_seen",
    )
    _check(out, "epochs", out.duplicated(["run_id", "epochs"]), "one row per (run_id, epochs); this one repeats")
    return out


def load_results(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read ``results.csv`` and validate it (see ``validate_results``)."""
    df = pd.read_csv(path, dtype={c: str for c, kind in REQUIRED_COLUMNS.items() if kind == "str"})
    return validate_results(df)


def aggregate_points(df: pd.DataFrame) -> pd.DataFrame:
    """Average replicate rows (seeds) into one point per ``POINT_KEYS`` (and ``run_epochs``, the
    length of the run a row was evaluated in, when the table has it).

    Returned columns: the keys, ``params``, ``tokens_seen``, ``flops``, ``val_loss`` (seed mean),
    ``mc_se`` (Monte Carlo SE of the seed mean, sqrt(sum se_i^2) / n), ``seed_std`` (sample SD
    over seeds, NaN with one seed), ``n_seeds`` and ``se``, the total standard error of the mean:
    sqrt(mc_se^2 + seed_std^2 / n), which is ``mc_se`` alone with a single seed (seed-to-seed
    spread unknown; 0 for AR with one seed).
    """
    keys = POINT_KEYS + ["run_epochs"] * ("run_epochs" in df.columns)  # runs of different length stay apart
    grouped = df.groupby(keys, sort=True)
    out = grouped.agg(
        params=("params", "first"),
        tokens_seen=("tokens_seen", "first"),
        flops=("flops", "mean"),
        val_loss=("val_loss", "mean"),
        seed_std=("val_loss", "std"),
        n_seeds=("val_loss", "size"),
        se_sq=("val_loss_se", lambda s: float(np.sum(np.square(s)))),
    ).reset_index()
    out["mc_se"] = np.sqrt(out.pop("se_sq")) / out["n_seeds"]
    seed_var = np.where(out["n_seeds"] > 1, out["seed_std"].fillna(0.0) ** 2 / out["n_seeds"], 0.0)
    out["se"] = np.sqrt(out["mc_se"] ** 2 + seed_var)
    return out


def default_attention(kinds: Sequence[str]) -> str:
    """The attention kind used when one is not named: "dense" if present, else the first sorted."""
    kinds = sorted(set(kinds))
    if not kinds:
        raise ValueError("no attention kinds in the table")
    return "dense" if "dense" in kinds else kinds[0]
