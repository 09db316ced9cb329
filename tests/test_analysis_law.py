"""The full data-constrained law: formula, recovery of planted truths, bounds, run grouping, bootstrap, base laws."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.fits import BaseLawError, fit_family, fit_table, law_c_crit, law_frontier, select_fit_points
from analysis.law import (
    MUENNIGHOFF,
    LawParams,
    compute_optimal_params,
    effective_data,
    effective_params,
    predict,
    value_of_repeats,
)
from analysis.lawfit import resample_runs
from analysis.results import TableError, aggregate_points, validate_results
from analysis.synthetic import law_table

TRUTHS = {
    "ar": LawParams(E=1.9, A=500.0, alpha=0.35, B=1500.0, beta=0.35, R_D_star=15.0, R_N_star=5.0),
    "diffusion": LawParams(E=2.1, A=600.0, alpha=0.33, B=2000.0, beta=0.36, R_D_star=200.0, R_N_star=80.0),
}
PARAMS = (2e6, 8e6, 30e6, 120e6, 500e6)
BUDGETS = (1e8, 3e8, 1e9, 3e9)
EPOCHS = (0.1, 0.2, 0.35, 0.5, 0.7, 1, 1.5, 2.5, 4, 6.5, 10, 16, 25, 40, 64, 100, 160, 250, 400, 640)


@pytest.fixture(scope="module")
def planted() -> pd.DataFrame:
    """Seed means of a table from the full law: 5 sizes x 4 budgets x 20 fractional epoch counts x 2 objectives."""
    table = law_table(TRUTHS, params=PARAMS, budgets=BUDGETS, epochs=EPOCHS, noise=0.001, seed=0)
    return aggregate_points(validate_results(table))


# --------------------------------------------------------------------------- the formula
def test_law_formula_by_hand() -> None:
    p = LawParams(**MUENNIGHOFF)
    # Muennighoff's D_to_N: N_opt = (alpha A / (beta B))^(1/alpha) U^(beta/alpha) = 0.051 U with their alpha = beta
    assert compute_optimal_params(np.array([1e9]), p)[0] == pytest.approx(0.051 * 1e9, rel=0.01)
    u, r_star = 1e8, 15.387756
    d = u * (1 + r_star)  # R_D = R_D*: the next repetition is worth 1/e
    assert effective_data(u, d, r_star) == pytest.approx(u * (1 + r_star * (1 - math.exp(-1))))
    assert effective_data(u, 0.4 * u, r_star) == pytest.approx(0.4 * u)  # within the first epoch: D' = D
    assert value_of_repeats(1 + r_star, r_star) == pytest.approx(1 + r_star * (1 - math.exp(-1)))
    n_opt = 0.051 * u
    n = 11 * n_opt  # R_N = 10
    n_prime = n_opt * (1 + 5.309743 * (1 - math.exp(-10 / 5.309743)))
    assert effective_params(n, u, u, p) == pytest.approx(n_prime, rel=0.02)
    loss = p.E + p.A / n_prime**p.alpha + p.B / u**p.beta
    assert predict(n, u, u, p) == pytest.approx(loss, rel=1e-3)
    fresh = LawParams(**{**MUENNIGHOFF, "R_D_star": math.inf, "R_N_star": math.inf})  # Chinchilla's law
    assert predict(n, u, 10 * u, fresh) == pytest.approx(p.E + p.A / n**p.alpha + p.B / (10 * u) ** p.beta)


# --------------------------------------------------------------------------- recovery
@pytest.mark.parametrize("protocol", ["two_stage", "one_stage"])
def test_full_law_recovers_planted_r_stars(planted: pd.DataFrame, protocol: str) -> None:
    for family, truth in TRUTHS.items():
        above = planted["non_embedding_params"] > compute_optimal_params(planted["unique_tokens"], truth)
        assert above.any() and not above.all()  # some models above compute-optimal size, some below
        fit = fit_family(planted, family, protocol=protocol, n_bootstrap=0)
        assert fit.status == "ok" and fit.protocol_used == protocol
        assert fit.value("R_D_star") == pytest.approx(truth.R_D_star, rel=0.1)
        assert fit.value("R_N_star") == pytest.approx(truth.R_N_star, rel=0.1)
        assert fit.value("alpha") == pytest.approx(truth.alpha, rel=0.1)
        assert fit.value("beta") == pytest.approx(truth.beta, rel=0.1)
        assert fit.value("E") == pytest.approx(truth.E, rel=0.1)
        assert fit.r2 > 0.999


def test_fit_table_json_counts_points_and_bootstraps(planted: pd.DataFrame) -> None:
    table = law_table(TRUTHS, params=PARAMS[:4], budgets=BUDGETS[:3], epochs=EPOCHS[::2], noise=0.001, seed=1)
    out = fit_table(table, n_bootstrap=12)
    assert json.loads(json.dumps(out, allow_nan=False)) == out
    assert out["families"] == ["ar", "diffusion"]
    for family in TRUTHS:
        law = out["laws"][family]
        assert law["n_points"] + law["n_excluded"] == len(table[table["objective"] == family])
        assert law["n_runs"] == 12 and law["n_single_epoch"] == 4 * 3 * 3  # epochs 0.1, 0.35, 0.7
        assert law["n_bootstrap"] >= 6
        for name in ("R_D_star", "R_N_star", "E", "alpha", "beta"):
            lo, hi = law["ci95"][name]
            assert law[f"{name}_err"] > 0 and lo < law[name] < hi
        assert law["at_bound"] == {} and law["unidentified"] == [] and law["fixed"] == []


def test_fixed_base_law_fits_only_r_stars(tmp_path: Path, planted: pd.DataFrame) -> None:
    truth = TRUTHS["diffusion"]
    fit = fit_family(planted, "diffusion", base=truth, n_bootstrap=0)
    assert fit.protocol_used == "fixed_base"
    assert fit.value("R_D_star") == pytest.approx(truth.R_D_star, rel=0.05)
    assert fit.value("R_N_star") == pytest.approx(truth.R_N_star, rel=0.05)
    assert fit.estimates["E"].fixed and fit.value("E") == truth.E and fit.estimates["E"].err is None
    table = law_table({"diffusion": truth}, params=PARAMS[:4], budgets=BUDGETS[:2], epochs=EPOCHS[::3])
    base = tmp_path / "base.json"
    fixed = {k: getattr(truth, k) for k in ("E", "A", "alpha", "B", "beta")}
    base.write_text(json.dumps({"laws": {"diffusion": fixed}}))
    law = fit_table(table, base=base, n_bootstrap=0)["laws"]["diffusion"]
    assert law["protocol_used"] == "fixed_base" and law["fixed"] == ["E", "A", "alpha", "B", "beta"]
    base.write_text(json.dumps({"E": 1.0, "A": "x", "alpha": 0.3, "B": 1.0}))
    with pytest.raises(BaseLawError, match="A, B, beta|A, beta") as info:
        fit_table(table, base=base, n_bootstrap=0)
    assert isinstance(info.value, TableError) and "\n" not in str(info.value)
    with pytest.raises(BaseLawError, match="two-stage"):
        fit_table(table, base=truth, protocol="one_stage", n_bootstrap=0)


def test_r_d_star_past_the_bound_is_reported_at_bound() -> None:
    truth = LawParams(E=2.0, A=400.0, alpha=0.34, B=1400.0, beta=0.35, R_D_star=1e8, R_N_star=30.0)
    table = law_table({"diffusion": truth}, params=PARAMS[:4], budgets=BUDGETS[:3], epochs=EPOCHS[::2])
    law = fit_table(table, n_bootstrap=10)["laws"]["diffusion"]
    assert law["status"] == "at_bound" and law["at_bound"] == {"R_D_star": "upper"}
    assert law["R_D_star"] == pytest.approx(1e5, rel=0.02) and law["R_D_star_err"] is None
    assert law["ci95"].get("R_D_star", [None, None])[1] is None
    assert "lower limit" in law["note"]
    points = aggregate_points(validate_results(table))
    estimate = fit_family(points, "diffusion", n_bootstrap=0).estimates["R_D_star"]
    assert estimate.describe() == "≥ 1e+05 (at bound)"  # what summary.md prints: no ± number


def test_single_model_folds_parameter_term_into_e() -> None:
    n = 10_000_000  # below N_opt(U) at every budget: N' = N, so folding A/N^alpha into E is exact
    truth = LawParams(E=1.8, A=400.0, alpha=0.34, B=1400.0, beta=0.35, R_D_star=15.0, R_N_star=5.0)
    budgets = [3e8, 1e9, 3e9]
    assert (compute_optimal_params(np.array(budgets), truth) > n).all()
    table = law_table({"ar": truth}, params=[n], budgets=budgets, epochs=[1, 2, 3, 5, 8, 13, 21, 34, 55],
                      noise=0.001)
    law = fit_table(table, n_bootstrap=0)["laws"]["ar"]
    assert law["A"] is None and law["alpha"] is None and law["R_N_star"] is None
    assert set(law["unidentified"]) == {"A", "alpha", "R_N_star"} and "single N" in law["note"]
    assert law["protocol_used"] == "one_stage" and "fitted one-stage instead" in law["note"]
    assert law["R_D_star"] == pytest.approx(15.0, rel=0.1)
    assert law["E"] == pytest.approx(truth.E + truth.A / n**truth.alpha, rel=0.1)


def test_u_shaped_points_give_a_degenerate_fit_not_a_law() -> None:
    """A monotone law forced through points that turn up ("all" points) is flagged, not drawn."""
    rows = []
    for u in (1e6, 2e6, 4e6):
        for e in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64):
            rows.append({"run_id": f"r{u:g}", "objective": "ar", "attention": "dense", "model": "m", "params": 2e7,
                         "non_embedding_params": 1e7, "unique_tokens": u, "epochs": e, "tokens_seen": u * e,
                         "flops": 6e7 * u * e, "val_loss": 3 + 0.4 * math.log(e / 8) ** 2, "seed": 0})
    points = aggregate_points(validate_results(pd.DataFrame(rows)))
    fit = fit_family(points, "ar", fit_points="all", n_bootstrap=0)
    assert fit.status == "degenerate" and not fit.drawable
    assert any("degenerate fit, not a law" in note for note in fit.notes)


# --------------------------------------------------------------------------- runs
def _run_rows(lengths_losses: dict[float, list[float]], *, with_run_epochs: bool) -> pd.DataFrame:
    """Separate runs of one (model, U): run length -> losses at its evaluations (epochs 1, 2, 4, ...)."""
    rows = []
    n, u = 10_000_000, 1_000_000
    for length, losses in lengths_losses.items():
        for i, loss in enumerate(losses):
            e = 2.0**i
            rows.append({"run_id": f"run-E{length:g}", "objective": "ar", "attention": "dense", "model": "m",
                         "params": 2 * n, "non_embedding_params": n, "unique_tokens": u, "epochs": e,
                         "tokens_seen": int(u * e), "flops": 6.0 * n * u * e, "val_loss": loss, "seed": 0}
                        | ({"run_epochs": length} if with_run_epochs else {}))
    return pd.DataFrame(rows)


@pytest.mark.parametrize("with_run_epochs", [True, False])
def test_up_to_best_groups_by_run(with_run_epochs: bool) -> None:
    runs = {2: [5.0, 4.5], 4: [5.1, 4.9, 4.7], 8: [5.2, 5.0, 4.9, 4.8], 16: [5.3, 5.1, 4.95, 4.85, 4.9]}
    points = aggregate_points(validate_results(_run_rows(runs, with_run_epochs=with_run_epochs)))
    assert points["curve"].nunique() == 4
    kept = points[select_fit_points(points, "up_to_best")]
    # every run keeps its evaluations up to its own lowest loss: only the 16-epoch run's last one goes
    assert len(kept) == 13 and not ((kept["run_epochs"] == 16) & (kept["epochs"] == 16)).any()
    # per (model, U) over all runs (the old behaviour, now an explicit option): only epochs <= 2 survive
    config = points[select_fit_points(points, "up_to_best_config")]
    assert config["epochs"].max() == 2 and len(config) == 8
    assert select_fit_points(points, "all").all()
    with pytest.raises(ValueError, match="fit_points"):
        select_fit_points(points, "late")


def test_bootstrap_resamples_whole_runs() -> None:
    curve = np.repeat([10, 11, 12, 13, 14], [1, 2, 3, 4, 5])
    rng = np.random.default_rng(0)
    for _ in range(20):
        sample = curve[resample_runs(curve, rng)]
        runs, counts = np.unique(sample, return_counts=True)
        sizes = dict(zip(*np.unique(curve, return_counts=True)))
        assert all(count % sizes[run] == 0 for run, count in zip(runs, counts))  # whole runs only
        assert sum(count // sizes[run] for run, count in zip(runs, counts)) == 5  # as many runs as there are


# --------------------------------------------------------------------------- C_crit from the laws
def test_law_c_crit_is_where_the_law_frontiers_meet(planted: pd.DataFrame) -> None:
    ar = fit_family(planted, "ar", protocol="two_stage", n_bootstrap=0)
    diffusion = fit_family(planted, "diffusion", protocol="two_stage", n_bootstrap=0)
    budgets = np.array([1e8, 1e9])
    crit = law_c_crit(ar, diffusion, budgets, (1e15, 1e21))
    assert np.isfinite(crit.flops).all() and crit.fit is not None
    n_grid = np.logspace(3, 13, 201)
    for u, c in zip(budgets, crit.flops):
        gap = law_frontier(diffusion.law, u, np.array([c]), n_grid) - law_frontier(ar.law, u, np.array([c]), n_grid)
        assert abs(gap[0]) < 2e-3
        below = law_frontier(diffusion.law, u, np.array([c / 3]), n_grid) - law_frontier(ar.law, u, np.array([c / 3]),
                                                                                        n_grid)
        assert below[0] > 0  # AR is better before the crossing
