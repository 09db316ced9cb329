"""Reading results tables: every malformed table is one TableError line; any contract-4 table is accepted."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.fits import fit_table
from analysis.law import LawParams
from analysis.results import TableError, aggregate_points, load_results, validate_results
from analysis.synthetic import law_table
from analysis.table import REQUIRED_COLUMNS

TRUTH = {"ar": LawParams(E=1.9, A=500.0, alpha=0.35, B=1500.0, beta=0.35, R_D_star=15.0, R_N_star=5.0)}


def small_table(**kwargs) -> pd.DataFrame:
    return law_table(TRUTH, params=[1e7], budgets=[1e6, 4e6], epochs=[0.5, 1, 2.5, 4.75], **kwargs)


def write(tmp_path: Path, table: pd.DataFrame) -> Path:
    path = tmp_path / "results.csv"
    table.to_csv(path, index=False)
    return path


def assert_one_line_error(path: Path, *fragments: str) -> str:
    with pytest.raises(TableError) as info:
        load_results(path)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_contract_columns_only_are_enough(tmp_path: Path) -> None:
    """A table with exactly the contract-4 columns loads: no SE (unknown), run length from the run's rows."""
    table = small_table()[list(REQUIRED_COLUMNS)]
    loaded = load_results(write(tmp_path, table))
    assert list(loaded.columns[: len(REQUIRED_COLUMNS)]) == list(REQUIRED_COLUMNS)
    assert (loaded["run_epochs"] == 4.75).all()  # derived: the largest epoch evaluated in each run
    points = aggregate_points(loaded)
    assert points["se"].isna().all() and points["mc_se"].isna().all()
    out = fit_table(table, n_bootstrap=0)
    assert out["families"] == ["ar"] and out["crossover"] == []


def test_fractional_epochs_round_trip(tmp_path: Path) -> None:
    table = small_table()
    loaded = load_results(write(tmp_path, table))
    assert sorted(loaded["epochs"].unique()) == [0.5, 1.0, 2.5, 4.75]
    assert loaded["tokens_seen"].tolist() == [round(u * e) for u, e in zip(table["unique_tokens"], table["epochs"])]
    points = aggregate_points(loaded)
    assert sorted(points["epochs"].unique()) == [0.5, 1.0, 2.5, 4.75]
    # epochs printed to two decimals (0.33 for a third of an epoch) still satisfy tokens_seen = U * epochs
    third = table.iloc[:1].assign(epochs=0.33, tokens_seen=333_333, flops=6.0 * 1e7 * 333_333, run_id="third")
    assert load_results(write(tmp_path, third))["epochs"].iloc[0] == 0.33


def test_a_run_named_nan_is_a_name(tmp_path: Path) -> None:
    table = small_table()
    table["run_id"] = table["run_id"].where(table["unique_tokens"] != 1_000_000, "nan")
    table["model"] = "NA"
    loaded = load_results(write(tmp_path, table))
    assert "nan" in set(loaded["run_id"]) and set(loaded["model"]) == {"NA"}


def test_empty_and_header_only_files(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    path.write_text("")
    assert_one_line_error(path, "empty")
    path.write_text(",".join(REQUIRED_COLUMNS) + "\n")
    assert_one_line_error(path, "no rows")
    assert_one_line_error(tmp_path / "missing.csv", "no such file")
    path.write_bytes(b"\xff\xfe\x00garbage\x00\xff")
    with pytest.raises(TableError):
        load_results(path)


def test_missing_column_is_named(tmp_path: Path) -> None:
    message = assert_one_line_error(write(tmp_path, small_table().drop(columns=["val_loss"])), "missing", "val_loss")
    assert "val_loss_se" not in message.split("contract")[0]


@pytest.mark.parametrize(
    ("column", "value", "fragments"),
    [
        ("val_loss", "nan", ("'val_loss'", "'nan'", "row 4", "finite")),
        ("val_loss", "inf", ("'val_loss'", "'inf'", "row 4")),
        ("val_loss", "-inf", ("'val_loss'", "row 4")),
        ("val_loss", "oops", ("'val_loss'", "'oops'", "row 4")),
        ("val_loss", "", ("'val_loss'", "empty", "row 4")),
        ("val_loss", "-1", ("'val_loss'", "> 0")),
        ("epochs", "two", ("'epochs'", "'two'", "row 4")),
        ("seed", "1.5", ("'seed'", "integer")),
        ("tokens_seen", "12345", ("'tokens_seen'", "unique_tokens * epochs")),
        ("flops", "1.0", ("'flops'", "6 * non_embedding_params")),
        ("objective", " ", ("'objective'", "non-empty")),
        ("val_loss_se", "-0.1", ("'val_loss_se'", ">= 0")),
        ("run_epochs", "1", ("'run_epochs'", ">= the row's epochs")),
    ],
)
def test_bad_values_name_column_row_and_value(tmp_path: Path, column: str, value: str,
                                              fragments: tuple[str, ...]) -> None:
    table = small_table().astype({column: object})
    table.loc[3, column] = value  # data row 4 (line 5 of the file)
    assert_one_line_error(write(tmp_path, table), *fragments)


def test_duplicates_and_inconsistent_runs(tmp_path: Path) -> None:
    table = small_table()
    assert_one_line_error(write(tmp_path, pd.concat([table, table.iloc[[2]]])), "one row per (run_id, epochs)")
    mixed = table.assign(run_id="one-run")  # two budgets under one run id
    assert_one_line_error(write(tmp_path, mixed), "'unique_tokens'", "one value per run_id")


def test_extra_columns_are_optional_and_lenient(tmp_path: Path) -> None:
    """Empty optional cells are unknown; unknown columns and bad values in unused extras are ignored."""
    table = small_table().assign(val_bpb="n/a", my_note="x")
    table["val_loss_se"] = table["val_loss_se"].astype(object)
    table.loc[0, "val_loss_se"] = ""
    loaded = load_results(write(tmp_path, table))
    assert math.isnan(loaded["val_loss_se"].iloc[0]) and loaded["val_bpb"].isna().all()
    assert set(loaded["my_note"]) == {"x"}


def test_any_objective_name_and_block_size_families(tmp_path: Path) -> None:
    table = small_table()
    other = table.assign(objective="block_diffusion", block_size=4, run_id=table["run_id"] + "-bd4")
    plain = table.assign(block_size="")
    loaded = load_results(write(tmp_path, pd.concat([plain, other], ignore_index=True)))
    assert set(loaded["family"]) == {"ar", "block_diffusion-b4"}
    bad = other.astype({"block_size": object})
    bad.loc[1, "block_size"] = "four"
    assert_one_line_error(write(tmp_path, bad), "'block_size'", "'four'")


def test_validate_frames_built_in_memory() -> None:
    table = small_table()
    table.loc[2, "val_loss"] = np.nan
    with pytest.raises(TableError, match="'val_loss' has an empty value in row 3"):
        validate_results(table)
    table = small_table()
    table.loc[0, "model"] = None
    with pytest.raises(TableError, match="'model'"):
        validate_results(table)


def test_runs_that_differ_in_a_setting_are_two_curves_not_two_seeds() -> None:
    rows = []
    for lr, loss in ((1e-3, 5.0), (2e-3, 4.0)):
        for epochs in (1, 2):
            rows.append({"run_id": f"ar-lr{lr}", "objective": "ar", "attention": "dense", "model": "tiny",
                         "params": 200, "non_embedding_params": 100, "unique_tokens": 1000, "epochs": epochs,
                         "tokens_seen": 1000 * epochs, "flops": 6 * 100 * 1000 * epochs, "val_loss": loss,
                         "seed": 0, "lr": lr})
    points = aggregate_points(validate_results(pd.DataFrame(rows)))
    assert len(points) == 4 and set(points["n_seeds"]) == {1} and points["curve"].nunique() == 2
    assert sorted(points["val_loss"].unique()) == [4.0, 5.0]  # not averaged into 4.5


def test_a_run_resumed_across_a_new_column_stays_one_curve() -> None:
    rows = []
    for epochs, ema in ((1, ""), (2, "0.0")):  # the column did not exist when epoch 1 was written
        rows.append({"run_id": "ar-1", "objective": "ar", "attention": "dense", "model": "tiny", "params": 200,
                     "non_embedding_params": 100, "unique_tokens": 1000, "epochs": epochs,
                     "tokens_seen": 1000 * epochs, "flops": 6 * 100 * 1000 * epochs, "val_loss": 5.0 - epochs,
                     "seed": 0, "ema_decay": ema})
    table = pd.DataFrame(rows).astype(str)
    points = aggregate_points(validate_results(table))
    assert points["curve"].nunique() == 1
