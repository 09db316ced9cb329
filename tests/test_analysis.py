"""Tests of analysis/: tables generated from known laws and planted crossovers (no training, no network)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import fit_table, load_results, write_report
from analysis.crossover import find_crossovers
from analysis.fits import analyse, fit_c_crit, select_fit_points
from analysis.law import effective_data
from analysis.plotkit import format_sci, format_tokens
from analysis.report import build_summary
from analysis.results import TableError, aggregate_points, validate_results

EPOCHS = sorted({int(round(e)) for e in np.logspace(0, np.log10(500), 20)})
LAW = {"E": 1.8, "A": 400.0, "alpha": 0.34, "B": 1400.0, "beta": 0.35}
R_STAR = {"ar": 15.0, "diffusion": 400.0}
PARAMS = ("E", "A", "alpha", "B", "beta", "R_D_star", "R_N_star")
LAW_KEYS = {*PARAMS, *(f"{p}_err" for p in PARAMS), "status", "protocol", "protocol_used", "fit_points", "ci68", "ci95",
            "at_bound", "fixed", "unidentified", "n_points", "n_excluded", "n_runs", "n_single_epoch", "n_bootstrap",
            "r2", "rmse_log", "note"}


def row(objective: str, n: int, u: int, epochs: int, loss: float, *, se: float = 0.0, seed: int = 0,
        attention: str = "dense") -> dict[str, object]:
    """One results-table row obeying contracts 1 and 3."""
    return {
        "run_id": f"{attention}-{objective}-{n}-{u}-s{seed}",
        "objective": objective,
        "attention": attention,
        "model": f"m{n}",
        "params": n + 1_000_000,
        "non_embedding_params": n,
        "unique_tokens": u,
        "epochs": epochs,
        "tokens_seen": u * epochs,
        "flops": 6.0 * n * u * epochs,
        "val_loss": loss,
        "val_loss_se": se,
        "val_bpb": loss / math.log(2) / 4.0,
        "seed": seed,
    }


def law_table(ns: tuple[int, ...], us: tuple[int, ...], noise: float = 0.002, seed: int = 0) -> pd.DataFrame:
    """Losses from Muennighoff's law without an excess-parameter limit (R_N* = inf: N' = N; R_D* 15 for AR,
    400 for diffusion) with multiplicative noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for objective, r_star in R_STAR.items():
        for n in ns:
            for u in us:
                for e in EPOCHS:
                    d_prime = effective_data(u, u * e, r_star)
                    loss = LAW["E"] + LAW["A"] / n ** LAW["alpha"] + LAW["B"] / d_prime ** LAW["beta"]
                    rows.append(row(objective, n, u, e, float(loss * math.exp(noise * rng.standard_normal()))))
    return pd.DataFrame(rows)


def planted_table(budgets: dict[int, float], *, n: int = 10_000_000, se: float = 1e-4,
                  epochs: list[int] | None = None) -> pd.DataFrame:
    """AR best 3.0 at epoch 3; diffusion linear in log C, crossing 3.0 at the planted compute per U.

    ``budgets`` maps U to the planted crossover compute (FLOPs), or to ``inf`` for no crossover.
    """
    epochs = epochs or sorted({int(round(e)) for e in np.logspace(0, 3, 25)} | {3})
    rows = []
    for u, c_star in budgets.items():
        for e in epochs:
            flops = 6.0 * n * u * e
            rows.append(row("ar", n, u, e, 3.0 + 0.3 * math.log(e / 3) ** 2))
            diffusion = 3.5 if math.isinf(c_star) else 3.0 + 0.2 * math.log(c_star / flops)
            rows.append(row("diffusion", n, u, e, diffusion, se=se))
    return pd.DataFrame(rows)


def assert_schema(out: dict[str, object]) -> None:
    """``fit_table`` output matches the documented JSON shape and survives a JSON round trip."""
    assert json.loads(json.dumps(out, allow_nan=False)) == out
    assert set(out) == {"attention", "units", "families", "laws", "crossover", "c_crit", "c_crit_from_laws",
                        "fair_comparison", "extrapolated_crossover"}
    assert set(out["laws"]) == set(out["families"])
    for law in out["laws"].values():
        assert set(law) == LAW_KEYS
        assert all(law[k] is None or type(law[k]) is float for k in PARAMS)
        assert law["status"] in ("ok", "at_bound", "degenerate", "no_fit")
        assert all(type(law[k]) is int for k in ("n_points", "n_excluded", "n_runs", "n_single_epoch"))
    for entry in out["crossover"]:
        assert set(entry) == {"family", "unique_tokens", "flops", "flops_interp", "significant"}
        assert type(entry["unique_tokens"]) is int
        assert entry["flops"] is None or type(entry["flops"]) is float
    for fit in out["c_crit"].values():
        assert fit is None or type(fit["exponent"]) is float
    for fair in out["fair_comparison"]:
        assert set(fair) == {"family", "unique_tokens", "gap", "mc_se", "seed_se", "combined_se", "verdict", "ar",
                             "other"}
        assert fair["gap"] == pytest.approx(fair["other"]["loss"] - fair["ar"]["loss"])
    for ext in out["extrapolated_crossover"]:
        assert type(ext["supported"]) is bool and (ext["supported"] == (not ext["reasons"]))
        assert ext["flops"] is None or type(ext["flops"]) is float
        assert ext["n_refits_crossing"] + ext["n_refits_no_crossing"] == ext["n_refits"]


def test_law_fit_recovers_planted_parameters_and_reports_r_n_star_at_bound() -> None:
    """Data without an excess-parameter limit (R_N* = inf): R_D*, alpha, beta, E recovered, and R_N* runs to
    its upper bound, reported as such with no error bar."""
    out = fit_table(law_table(ns=(20_000_000, 100_000_000, 500_000_000), us=(10**7, 10**8, 10**9)), n_bootstrap=20)
    assert_schema(out)
    for objective, r_star in R_STAR.items():
        fit = out["laws"][objective]
        assert fit["R_D_star"] == pytest.approx(r_star, rel=0.1)
        assert fit["alpha"] == pytest.approx(LAW["alpha"], rel=0.1)
        assert fit["beta"] == pytest.approx(LAW["beta"], rel=0.1)
        assert fit["E"] == pytest.approx(LAW["E"], rel=0.1)
        lo, hi = fit["ci95"]["R_D_star"]  # the run bootstrap's 95 % interval covers the truth
        assert lo < r_star and (hi is None or r_star < hi)
        assert objective != "ar" or 0.0 < fit["R_D_star_err"] < 0.2 * r_star  # 9 runs pin down AR's 15, not 400
        # the truth (R_N* = inf) lies past the bound: a large value, no error bar, an interval open above
        assert fit["R_N_star"] > 1e4 and fit["R_N_star_err"] is None and fit["ci95"]["R_N_star"][1] is None
        assert fit["status"] in ("ok", "at_bound") and set(fit["at_bound"]) <= {"R_N_star"}
        assert fit["n_runs"] == 9 and fit["n_bootstrap"] >= 10


def test_too_few_points_give_nulls_and_a_note() -> None:
    table = law_table(ns=(10**8,), us=(10**8,))
    table = table[(table["objective"] == "ar") | (table["epochs"] <= 2)]
    out = fit_table(table, n_bootstrap=0)
    assert_schema(out)
    diffusion = out["laws"]["diffusion"]
    assert all(diffusion[k] is None for k in PARAMS) and diffusion["status"] == "no_fit"
    assert "too few points" in diffusion["note"]
    assert out["laws"]["ar"]["R_D_star"] is not None


def test_fit_points_up_to_best_drops_overfitted_epochs() -> None:
    points = aggregate_points(validate_results(planted_table({10**6: math.inf})))
    ar = points[points["objective"] == "ar"]
    kept = ar[select_fit_points(ar, "up_to_best")]
    assert kept["epochs"].max() == 3 and len(kept) == (ar["epochs"] <= 3).sum()
    assert select_fit_points(ar, "all").all()
    with pytest.raises(ValueError, match="fit_points"):
        select_fit_points(ar, "late")


def test_crossover_found_at_planted_compute() -> None:
    n, u, e_star = 10_000_000, 1_000_000, 77.7
    c_star = 6.0 * n * u * e_star
    table = planted_table({u: c_star}, n=n)
    (cross,) = find_crossovers(aggregate_points(validate_results(table)), "dense")
    diffusion_flops = np.sort(table.loc[table["objective"] == "diffusion", "flops"].to_numpy())
    assert cross.ar_best == pytest.approx(3.0)
    assert cross.flops == diffusion_flops[diffusion_flops > c_star][0]
    assert cross.flops_interp == pytest.approx(c_star, rel=1e-9)
    assert 3.0 - cross.frontier_loss > 0.01 and cross.significant and cross.flops_significant == cross.flops
    assert cross.family == "diffusion"
    assert fit_table(table, n_bootstrap=0)["crossover"] == [
        {"family": "diffusion", "unique_tokens": u, "flops": cross.flops, "flops_interp": cross.flops_interp,
         "significant": True}]


def test_crossover_not_significant_with_large_monte_carlo_error() -> None:
    table = planted_table({1_000_000: 6.0 * 10_000_000 * 1_000_000 * 77.7}, se=1.0)
    (cross,) = find_crossovers(aggregate_points(validate_results(table)), "dense")
    assert cross.flops is not None and cross.significant is False and cross.flops_significant is None


def test_no_crossover_reports_largest_diffusion_compute() -> None:
    table = planted_table({1_000_000: math.inf})
    (cross,) = find_crossovers(aggregate_points(validate_results(table)), "dense")
    assert cross.flops is None and cross.flops_interp is None and cross.significant is False
    assert cross.max_diffusion_flops == table.loc[table["objective"] == "diffusion", "flops"].max()
    out = fit_table(table, n_bootstrap=0)
    assert out["crossover"] == [{"family": "diffusion", "unique_tokens": 1_000_000, "flops": None,
                                 "flops_interp": None, "significant": False}]
    assert out["c_crit"] == {"diffusion": None}


def test_c_crit_fit_recovers_planted_exponent() -> None:
    n, k, c = 10_000_000, 1.6, 7.5e4
    budgets = {u: c * u**k for u in (1_000_000, 4_000_000, 16_000_000, 64_000_000)}
    table = planted_table(budgets, n=n)
    crossovers = find_crossovers(aggregate_points(validate_results(table)), "dense")
    fit = fit_c_crit(crossovers)
    assert fit is not None and fit.n_points == 4
    assert fit.exponent == pytest.approx(k, rel=1e-6)
    assert fit.prefactor == pytest.approx(c, rel=1e-4)
    assert fit_c_crit(crossovers, "first").exponent == pytest.approx(k, rel=0.1)
    assert fit_table(table, n_bootstrap=0)["c_crit"]["diffusion"]["exponent"] == pytest.approx(k, rel=1e-6)
    assert fit_c_crit(crossovers[:1]) is None


def test_load_results_rejects_a_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    planted_table({10**6: math.inf}).drop(columns=["val_loss"]).to_csv(path, index=False)
    with pytest.raises(TableError, match="missing required column.*val_loss"):
        load_results(path)


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("objective", "", "objective"),
        ("epochs", "two", "epochs"),
        ("val_loss", -1.0, "val_loss"),
        ("flops", 1.0, "6 \\* non_embedding_params"),
    ],
)
def test_load_results_rejects_bad_values(tmp_path: Path, column: str, value: object, message: str) -> None:
    table = planted_table({10**6: math.inf})
    table[column] = table[column].astype(object)
    table.loc[5, column] = value
    path = tmp_path / "results.csv"
    table.to_csv(path, index=False)
    with pytest.raises(TableError, match=message):
        load_results(path)


def test_load_results_round_trip_and_seed_average(tmp_path: Path) -> None:
    table = pd.DataFrame([row("diffusion", 10**7, 10**6, 4, 3.0, se=0.03, seed=0),
                          row("diffusion", 10**7, 10**6, 4, 3.2, se=0.04, seed=1)])
    path = tmp_path / "results.csv"
    table.to_csv(path, index=False)
    loaded = load_results(path)
    assert pd.api.types.is_float_dtype(loaded["epochs"]) and pd.api.types.is_string_dtype(loaded["run_id"])
    (point,) = aggregate_points(loaded).itertuples(index=False)
    assert point.val_loss == pytest.approx(3.1) and point.n_seeds == 2
    assert point.mc_se == pytest.approx(0.025)  # sqrt(0.03^2 + 0.04^2) / 2
    assert point.se == pytest.approx(math.sqrt(0.025**2 + np.var([3.0, 3.2], ddof=1) / 2))


def sweep_table() -> pd.DataFrame:
    """A small sweep: two models, AR overfits, diffusion crosses at two budgets and not at the third."""
    rows = []
    epochs = [1, 2, 4, 8, 16, 32, 64, 128, 256]
    for n in (20_000_000, 80_000_000):
        for u, offset in ((25_000_000, 0.0), (50_000_000, 0.0), (100_000_000, 2.0)):
            for e in epochs:
                base = 1.8 + 400 / n**0.34
                ar = base + 1400 / effective_data(u, u * e, 15.0) ** 0.35 + 0.08 * max(0.0, math.log(e / 10)) ** 2
                diffusion = base + 0.2 + offset + 1400 / effective_data(u, u * e, 400.0) ** 0.35
                rows.append(row("ar", n, u, e, ar) | {"corpus": "synthetic-c4"})
                extra = {"corpus": "synthetic-c4", "mc_samples": 32}
                rows.append(row("diffusion", n, u, e, diffusion, se=0.003) | extra)
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, pd.DataFrame]:
    root = tmp_path_factory.mktemp("sweep")
    table = sweep_table()
    table.to_csv(root / "results.csv", index=False)
    summary = write_report(root / "results.csv", root / "report", n_bootstrap=10)
    return root / "report", summary, table


def test_write_report_writes_every_file(report: tuple[Path, str, pd.DataFrame]) -> None:
    out, summary, _ = report
    for stem in ("loss_vs_compute", "loss_vs_epochs", "law_fit", "c_crit", "data_value"):
        assert (out / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-"
    assert not (out / "block_size.png").exists()  # no block_size column
    assert (out / "summary.md").read_text() == summary
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert_schema(json.loads((out / "fits.json").read_text()))


def test_summary_contains_the_numbers(report: tuple[Path, str, pd.DataFrame]) -> None:
    out, summary, table = report
    fits = json.loads((out / "fits.json").read_text())
    points = aggregate_points(validate_results(table))
    for (u, family), own in points.groupby(["unique_tokens", "family"]):
        best = own.loc[own["val_loss"].idxmin()]
        assert (f"| {format_tokens(u)} | {family} | {best['val_loss']:.4f} | {best['se']:.4f} | "
                f"{int(best['epochs'])} | {best['model']} | {format_sci(best['flops'])} |") in summary
    found = [c for c in fits["crossover"] if c["flops"] is not None]
    assert len(found) == 2 and fits["crossover"][2]["flops"] is None
    for c in found:
        assert f"| diffusion | {format_tokens(c['unique_tokens'])} |" in summary and format_sci(c["flops"]) in summary
    max_flops = table.loc[(table["unique_tokens"] == 100_000_000) & (table["objective"] == "diffusion"), "flops"].max()
    assert f"none up to {format_sci(max_flops)}" in summary
    for objective in ("ar", "diffusion"):
        law = fits["laws"][objective]
        head = f"| {objective} | {law['status']} | {law['protocol_used'].replace('_', '-')} | "
        (line,) = [line for line in summary.splitlines() if line.startswith(head)]
        r_d_cell = line[len(head):].split(" | ")[0]
        assert f"{law['R_D_star']:.4g}" in r_d_cell
        assert ("(at bound)" in r_d_cell) == ("R_D_star" in law["at_bound"])
        assert f"| {law['n_points']} ({law['n_excluded']}), {law['n_runs']} |" in line
    assert fits["laws"]["diffusion"]["status"] == "degenerate"  # U = 100M is 2 nats off the law
    assert f"k = {fits['c_crit']['diffusion']['exponent']:.3f}" in summary
    assert "synthetic-c4" in summary and "32" in summary


def test_several_attention_kinds_are_analysed_separately() -> None:
    dense = planted_table({1_000_000: 6.0 * 10_000_000 * 1_000_000 * 77.7})
    sparse = planted_table({1_000_000: math.inf}).assign(attention="nsa")
    sparse["run_id"] = "nsa-" + sparse["run_id"]
    table = pd.concat([dense, sparse], ignore_index=True)
    assert fit_table(table, n_bootstrap=0)["crossover"][0]["flops"] is not None  # "dense" by default
    nsa = fit_table(table, attention="nsa", n_bootstrap=0)
    assert nsa["attention"] == "nsa" and nsa["crossover"][0]["flops"] is None
    with pytest.raises(TableError, match="attention"):
        fit_table(table, attention="swa", n_bootstrap=0)
    rows = validate_results(table)
    points = aggregate_points(rows)
    analyses = [analyse(points, kind, n_bootstrap=0) for kind in ("dense", "nsa")]
    summary = build_summary(rows, points, analyses, source="results.csv", figures=[], fit_points="up_to_best",
                            n_bootstrap=0)
    assert "## dense attention" in summary and "## nsa attention" in summary
