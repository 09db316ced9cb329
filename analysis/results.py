"""Load and validate a results table (DESIGN.md contract 4) and average seeds into points.

``load_results`` accepts any table with the contract-4 columns (``analysis.table.REQUIRED_COLUMNS``;
other columns are kept and never required). Every problem is one ``TableError`` whose message is a
single line naming the column, the row and run, the value found and what was expected; the CLI
prints it and exits with status 2. Checks:

* the file exists, is readable text with a header and at least one row;
* string columns are non-empty (read as text: a run named ``nan`` is a name, not a missing value);
* numeric columns are finite numbers (integers where the schema says ``int``) and positive; a
  non-finite ``val_loss`` is refused naming its row, never dropped;
* ``tokens_seen = unique_tokens * epochs`` (contract 1, real-valued: ``epochs`` may be fractional),
  within 0.1 % of tokens_seen plus 0.005 epochs (tables that print epochs to two decimals pass);
* ``flops = analysis.table.flops(N, U, tokens_seen / U) = 6 N tokens_seen`` within 0.1 %
  (contract 3, N = non-embedding parameters);
* one row per (run_id, epochs), and every run has one objective, attention, model, N, U, seed,
  ``run_epochs`` and ``block_size``;
* optional columns the analysis reads, when present and non-empty: ``val_loss_se`` (>= 0),
  ``run_epochs`` (>= epochs), ``block_size`` and ``seq_len`` (positive integers). An empty cell or
  a missing column is unknown, never an error.

The validated frame gains two columns:

* ``family``: the analysed model family, the objective name plus ``-b{block_size}`` when the row
  has a block size (``block_diffusion-b4``). Objectives are free strings; ``ar`` is the reference
  that every other family is compared with.
* ``run_epochs``: the length (in epochs) of the run the row was evaluated in; where the table does
  not say, the largest epoch evaluated in that run_id. It keeps runs of different lengths apart.

``aggregate_points`` turns rows into points: one per (attention, family, model, N, U, epochs,
run_epochs), averaged over seeds, with a standard error, and numbered by ``curve`` (one run, or
seeds of one run configuration): the unit that point selection and the bootstrap work on.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis.table import EXTRA_COLUMNS, REQUIRED_COLUMNS, flops


class TableError(ValueError):
    """A malformed results table. The message is one line: the problem, column, row, value, expectation."""


#: Optional columns the analysis reads, with their kinds (missing or empty = unknown).
OPTIONAL_COLUMNS: dict[str, str] = {"run_epochs": "float", "val_loss_se": "float", "block_size": "int",
                                    "seq_len": "int"}

#: Reference family: every other family is compared with it.
REFERENCE_FAMILY = "ar"

#: Training settings that make two runs different curves, not seed replicates, when a table has them
#: (a sweep over learning rates or regularisers); tables without them group as before.
SETTING_COLUMNS: tuple[str, ...] = ("lr", "schedule", "batch_size", "seq_len", "vocab_size", "input_mask_rate",
                                    "weight_decay", "resid_dropout", "attn_dropout", "embd_dropout", "ema_decay",
                                    "curriculum", "mask_eps", "mc_samples", "elbo_weight", "corpus")

#: Columns that identify one run (curve); rows of one curve that differ only in epochs are its points.
CURVE_KEYS: list[str] = ["attention", "family", "model", "non_embedding_params", "unique_tokens", "run_epochs",
                         "settings"]

#: Keys of one evaluation point; rows that share them (different seeds) are replicates.
POINT_KEYS: list[str] = [*CURVE_KEYS, "epochs"]

_RTOL = 1e-3  # CSV writers may round floats; a wrong N or epoch count is off by far more than this
_EPOCHS_ATOL = 5e-3  # epochs printed to two decimals
_RUN_CONSTANT = ["objective", "attention", "model", "non_embedding_params", "unique_tokens", "seed", "run_epochs",
                 "block_size"]


def _fail(df: pd.DataFrame, column: str, bad: pd.Series | np.ndarray, expected: str, source: str) -> None:
    """Raise a TableError naming ``column``, the first row flagged in ``bad``, its run and its value."""
    flagged = np.asarray(bad, dtype=bool).nonzero()[0]
    if flagged.size:
        i = int(flagged[0])
        value = df[column].iloc[i]
        raise TableError(
            f"{source}: column {column!r} has {_show(value)} in row {i + 1} (run_id {str(df['run_id'].iloc[i])!r}); "
            f"expected {expected}" + (f" ({flagged.size} rows like this)" if flagged.size > 1 else "")
        )


def _show(value: object) -> str:
    if (isinstance(value, float) and np.isnan(value)) or (isinstance(value, str) and not value.strip()):
        return "an empty value"
    return repr(value.item() if isinstance(value, np.generic) else value)


def _is_text(series: pd.Series) -> bool:
    """Object or string dtype (pandas >= 3 reads ``dtype=str`` columns as its string dtype)."""
    return series.dtype == object or pd.api.types.is_string_dtype(series.dtype)


def _numbers(df: pd.DataFrame, column: str, kind: str, source: str, *, optional: bool = False) -> pd.Series:
    """``df[column]`` as float (int-valued where ``kind == "int"``) after checking each value.

    Empty cells are NaN (unknown) in optional columns and an error in required ones.
    """
    raw = df[column]
    text = raw.astype(str).str.strip() if _is_text(raw) else None
    empty = raw.isna() | (text == "") if text is not None else raw.isna()
    num = pd.to_numeric(raw.where(~empty), errors="coerce").astype(float)
    what = "integer" if kind == "int" else "number"
    _fail(df, column, ~np.isfinite(num) & (~empty if optional else True), f"a finite {what}", source)
    if kind == "int":
        _fail(df, column, np.isfinite(num) & (num != np.round(num)), "an integer", source)
    return num


def _strings(df: pd.DataFrame, column: str, source: str) -> pd.Series:
    """Required text column: every cell non-empty (NaN only arrives in frames built in memory)."""
    raw = df[column]
    text = raw.astype(str).str.strip()
    _fail(df, column, raw.isna() | (text == ""), "a non-empty string", source)
    return text


def _check_identities(out: pd.DataFrame, source: str) -> None:
    """Contracts 1 and 3 (see the module docstring for the tolerances)."""
    for column in ("params", "non_embedding_params", "unique_tokens", "tokens_seen", "flops", "val_loss", "epochs"):
        _fail(out, column, out[column] <= 0, "a number > 0", source)
    _fail(out, "non_embedding_params", out["non_embedding_params"] > out["params"], "at most params (total)", source)
    seen, u = out["tokens_seen"], out["unique_tokens"]
    off = (seen - u * out["epochs"]).abs() > _RTOL * seen + _EPOCHS_ATOL * u + 1.0
    _fail(out, "tokens_seen", off, "unique_tokens * epochs (contract 1)", source)
    expected = flops(out["non_embedding_params"], u, seen / u)
    _fail(out, "flops", (out["flops"] - expected).abs() > _RTOL * expected,
          "6 * non_embedding_params * tokens_seen (contract 3)", source)


def _check_optional(out: pd.DataFrame, source: str) -> None:
    if "val_loss_se" in out:
        _fail(out, "val_loss_se", out["val_loss_se"] < 0, "a standard error >= 0", source)
    if "run_epochs" in out:
        _fail(out, "run_epochs", out["run_epochs"] < out["epochs"] * (1 - _RTOL),
              "a run length >= the row's epochs", source)
    for column in ("block_size", "seq_len"):
        if column in out:
            _fail(out, column, out[column] <= 0, "a positive integer", source)


def _check_runs(out: pd.DataFrame, source: str) -> None:
    """One row per (run_id, epochs); a run's identifying columns are constant over its rows."""
    for column in (c for c in _RUN_CONSTANT if c in out):
        counts = out.groupby("run_id")[column].nunique(dropna=False)
        varies = out["run_id"].map(counts) > 1
        _fail(out, column, varies, "one value per run_id (this run has several)", source)
    _fail(out, "epochs", out.duplicated(["run_id", "epochs"]), "one row per (run_id, epochs); this one repeats",
          source)


def family_names(df: pd.DataFrame) -> pd.Series:
    """Analysis family per row: the objective, plus ``-b{block_size}`` where a block size is given."""
    family = df["objective"].astype(str)
    if "block_size" in df:
        sized = df["block_size"].notna()
        family = family.where(~sized, family + "-b" + df["block_size"].fillna(0).astype(np.int64).astype(str))
    return family


def setting_labels(df: pd.DataFrame) -> pd.Series:
    """Per row, the ``SETTING_COLUMNS`` the table has as ``key=value`` text ("" when it has none)."""
    present = [c for c in SETTING_COLUMNS if c in df]
    if not present:
        return pd.Series("", index=df.index)
    # within a run, a blank cell takes the run's value (rows written before a column existed)
    filled = {c: df.groupby("run_id")[c].transform("first").where(df[c].isna(), df[c]) for c in present}
    columns = [(c, filled[c].tolist()) for c in present]
    return pd.Series([" ".join(f"{c}={values[i]}" for c, values in columns) for i in range(len(df))], index=df.index)


def validate_results(df: pd.DataFrame, source: str = "results table") -> pd.DataFrame:
    """Check a results table (module docstring) and return a copy with canonical types.

    Required numeric columns become float (int-valued for ``int`` kinds), text columns stripped
    strings; ``family``, ``settings`` and ``run_epochs`` are added. Raises ``TableError`` naming the first problem.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise TableError(f"{source}: missing required column(s) {', '.join(missing)} "
                         f"(contract 4 needs {', '.join(REQUIRED_COLUMNS)})")
    if df.empty:
        raise TableError(f"{source}: the table has a header but no rows")
    out = df.reset_index(drop=True).copy()
    out["run_id"] = _strings(out, "run_id", source)
    for column, kind in REQUIRED_COLUMNS.items():
        out[column] = _strings(out, column, source) if kind == "str" else _numbers(out, column, kind, source)
    for column, kind in OPTIONAL_COLUMNS.items():
        if column in out:
            out[column] = _numbers(out, column, kind, source, optional=True)
    _check_identities(out, source)
    _check_optional(out, source)
    _check_runs(out, source)
    _tidy_extras(out)
    out["family"] = family_names(out)
    out["settings"] = setting_labels(out)
    longest = out.groupby("run_id")["epochs"].transform("max")
    out["run_epochs"] = out["run_epochs"].fillna(longest) if "run_epochs" in out else longest
    return out


def _tidy_extras(out: pd.DataFrame) -> None:
    """Other columns: numeric kinds from the schema parsed leniently, empty text cells made NaN (unknown)."""
    for column in out.columns:
        if column in REQUIRED_COLUMNS or column in OPTIONAL_COLUMNS or not _is_text(out[column]):
            continue
        values = out[column].where(out[column].astype(str).str.strip() != "")
        kind = EXTRA_COLUMNS.get(column, "str")
        out[column] = pd.to_numeric(values, errors="coerce") if kind in ("int", "float") else values


def load_results(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a results CSV (every cell as text, nothing read as missing) and validate it."""
    source = f"results table {str(path)!r}"
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[], skipinitialspace=True)
    except FileNotFoundError:
        raise TableError(f"{source}: no such file") from None
    except IsADirectoryError:
        raise TableError(f"{source}: is a folder, not a CSV file") from None
    except pd.errors.EmptyDataError:
        raise TableError(f"{source}: the file is empty (no header)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as err:
        raise TableError(f"{source}: not a readable CSV table: {' '.join(str(err).split())}") from None
    return validate_results(df, source)


def aggregate_points(df: pd.DataFrame) -> pd.DataFrame:
    """Average replicate rows (seeds) into one point per ``POINT_KEYS``.

    Returned columns: the keys, ``objective``, ``params``, ``tokens_seen``, ``flops``, ``val_loss``
    (seed mean), ``mc_se`` (Monte Carlo SE of the mean, sqrt(sum se_i^2) / n; NaN when any row's SE
    is unknown), ``seed_std`` (sample SD over seeds, NaN with one seed), ``n_seeds``, ``se`` (total
    SE of the mean: sqrt(mc_se^2 + seed_std^2 / n); with unknown MC SE the seed term alone, and NaN
    with one seed), ``block_size`` and ``seq_len`` (NaN when unknown), and ``curve``, an integer id
    per run (``CURVE_KEYS``).
    """
    work = df.assign(
        _se_sq=df["val_loss_se"] ** 2 if "val_loss_se" in df else np.nan,
        block_size=df["block_size"] if "block_size" in df else np.nan,
        seq_len=df["seq_len"] if "seq_len" in df else np.nan,
    )
    out = work.groupby(POINT_KEYS, sort=True).agg(
        objective=("objective", "first"),
        params=("params", "first"),
        tokens_seen=("tokens_seen", "first"),
        flops=("flops", "mean"),
        val_loss=("val_loss", "mean"),
        seed_std=("val_loss", "std"),
        n_seeds=("val_loss", "size"),
        se_sq=("_se_sq", "sum"),
        se_known=("_se_sq", "count"),
        block_size=("block_size", "first"),
        seq_len=("seq_len", "first"),
    ).reset_index()
    se_sq = out.pop("se_sq").where(out.pop("se_known") == out["n_seeds"])
    out["mc_se"] = np.sqrt(se_sq) / out["n_seeds"]
    seed_var = np.where(out["n_seeds"] > 1, out["seed_std"].fillna(0.0) ** 2 / out["n_seeds"], np.nan)
    out["se"] = np.sqrt(np.where(np.isnan(out["mc_se"]), 0.0, out["mc_se"] ** 2) + np.nan_to_num(seed_var))
    out.loc[np.isnan(out["mc_se"]) & np.isnan(seed_var), "se"] = np.nan
    out["curve"] = out.groupby(CURVE_KEYS, sort=True).ngroup()
    return out


def families(points: pd.DataFrame) -> list[str]:
    """The families present, the reference ``ar`` first, then the others sorted."""
    present = sorted(set(points["family"]))
    return sorted(present, key=lambda f: (f != REFERENCE_FAMILY, f))


def default_attention(kinds: Sequence[str]) -> str:
    """The attention kind used when one is not named: "dense" if present, else the first sorted."""
    kinds = sorted(set(kinds))
    if not kinds:
        raise TableError("results table: no attention kinds in the table")
    return "dense" if "dense" in kinds else kinds[0]
