"""The fair comparison per budget and the extrapolated crossover from the fitted laws (report side).

Every expected number is computed by hand (or, for the law crossing, by a brute-force search written
here, independent of ``analysis.fits``) on small synthetic tables.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import optimize

from analysis import write_report
from analysis.crossover import describe_settings, fair_comparisons, parse_settings, varied_settings, verdict
from analysis.fits import (
    Extrapolation,
    analyse,
    crossing_grid,
    extrapolate_crossovers,
    fit_family,
)
from analysis.law import LawParams, predict
from analysis.lawfit import LawFit
from analysis.plotkit import format_sci, format_tokens
from analysis.report import build_summary
from analysis.results import aggregate_points, validate_results
from analysis.synthetic import law_table

U = 1_000_000


def row(objective: str, n: int, epochs: int, loss: float, *, seed: int, setting: dict[str, object] | None = None,
        se: float | None = None, run_epochs: int = 4) -> dict[str, object]:
    """One contract-4 row of a run of ``objective`` at U with training ``setting`` (lr, input_mask_rate,
    weight_decay)."""
    setting = {"lr": 0.002, "input_mask_rate": math.nan, "weight_decay": 0.1, **(setting or {})}
    tag = "-".join(f"{k}{v}" for k, v in setting.items())
    return {"run_id": f"{objective}-{n}-{tag}-E{run_epochs}-s{seed}", "objective": objective, "attention": "dense",
            "model": f"m{n // 1_000_000}M", "params": n + 1_000_000, "non_embedding_params": n, "unique_tokens": U,
            "epochs": epochs, "tokens_seen": U * epochs, "flops": 6.0 * n * U * epochs, "val_loss": loss,
            "seed": seed, "run_epochs": run_epochs, "val_loss_se": math.nan if se is None else se, **setting}


def run(objective: str, n: int, losses: dict[int, tuple[float, float]], *, setting: dict[str, object] | None = None,
        se: tuple[float, float] | None = None) -> list[dict[str, object]]:
    """Two seeds of one run: epoch -> (loss seed 0, loss seed 1); ``se``: val_loss_se per seed."""
    return [row(objective, n, e, pair[s], seed=s, setting=setting, se=None if se is None else se[s])
            for e, pair in losses.items() for s in (0, 1)]


def tuned_table(diffusion_se: tuple[float, float] = (0.003, 0.004), *, ar_tuned: bool = True) -> pd.DataFrame:
    """AR with two settings (default; input_mask_rate=0.15 with weight_decay=0.5, which wins at epoch 4 of m20M:
    3.00 / 3.02) and two models; diffusion one setting (weight_decay=0.1), best at epoch 4 of m20M: 2.96 / 2.98
    with ``diffusion_se``. AR has no val_loss_se (exact NLL)."""
    rows = run("ar", 20_000_000, {1: (3.50, 3.52), 2: (3.20, 3.22), 4: (3.10, 3.12)})
    rows += run("ar", 10_000_000, {1: (3.60, 3.62), 2: (3.30, 3.32), 4: (3.25, 3.27)})
    if ar_tuned:
        rows += run("ar", 20_000_000, {1: (3.55, 3.57), 2: (3.15, 3.17), 4: (3.00, 3.02)},
                    setting={"input_mask_rate": 0.15, "weight_decay": 0.5})
    rows += run("diffusion", 20_000_000, {1: (3.80, 3.82), 2: (3.30, 3.32), 4: (2.96, 2.98)}, se=diffusion_se)
    rows += run("diffusion", 10_000_000, {1: (3.90, 3.92), 2: (3.40, 3.42), 4: (3.10, 3.12)}, se=diffusion_se)
    return pd.DataFrame(rows)


def summary_of(table: pd.DataFrame) -> str:
    rows = validate_results(table)
    points = aggregate_points(rows)
    analysis = analyse(points, "dense", n_bootstrap=0)
    return build_summary(rows, points, [analysis], source="results.csv", figures=[], fit_points="up_to_best",
                         n_bootstrap=0)


def section(summary: str, title: str) -> str:
    start = summary.index(f"### {title}")
    end = summary.find("\n### ", start + 1)
    return summary[start:end]


# --------------------------------------------------------------------------- settings labels
def test_settings_labels_are_parsed_in_either_separator_style() -> None:
    assert parse_settings("lr=0.002 input_mask_rate=nan elbo_weight=L/l") == {"lr": "0.002", "elbo_weight": "L/l"}
    assert parse_settings("input_mask_rate=0.15, lr=0.002, weight_decay=0.5") == {
        "input_mask_rate": "0.15", "lr": "0.002", "weight_decay": "0.5"}
    assert parse_settings("") == {}
    labels = ["lr=0.002 input_mask_rate=nan", "lr=0.002 input_mask_rate=0.15"]
    assert varied_settings(labels) == ("input_mask_rate",)  # unset vs set varies; lr does not
    assert describe_settings(labels[1], ("input_mask_rate",)) == "input_mask_rate=0.15"
    assert describe_settings(labels[0], ("input_mask_rate",)) == "—"


# --------------------------------------------------------------------------- fair comparison
def test_verdict_rules_by_hand() -> None:
    assert verdict(-0.10, 0.04) == "crossover (significant)"  # -0.10 + 0.08 < 0
    assert verdict(-0.05, 0.04) == "crossover (not significant)"  # -0.05 + 0.08 >= 0, gap < 0
    assert verdict(0.10, 0.04) == "no crossover"  # 0.10 - 0.08 > 0
    assert verdict(0.05, 0.04) == "inconclusive"  # 0.05 - 0.08 <= 0, gap >= 0
    assert verdict(-0.01, None) == "crossover (significance unknown)"


def test_tuned_ar_baseline_names_the_winning_setting_and_splits_the_error() -> None:
    (c,) = fair_comparisons(aggregate_points(validate_results(tuned_table())), "dense")
    # AR best: input_mask_rate=0.15, m20M, epoch 4: mean(3.00, 3.02) = 3.01, seed SE = SD / sqrt 2 = 0.01, MC 0
    assert c.ar.loss == pytest.approx(3.01) and c.ar.mc_se == 0.0 and c.ar.seed_se == pytest.approx(0.01)
    assert c.shown_settings == ("input_mask_rate", "weight_decay")
    assert describe_settings(c.ar.settings, c.shown_settings) == "input_mask_rate=0.15, weight_decay=0.5"
    assert describe_settings(c.other.settings, c.shown_settings) == "weight_decay=0.1"
    assert (c.ar.model, c.ar.epochs, c.ar.run_epochs, c.ar.n_settings, c.ar.n_models) == ("m20M", 4, 4, 2, 2)
    # diffusion best: mean(2.96, 2.98) = 2.97; MC = sqrt(0.003^2 + 0.004^2) / 2 = 0.0025; seed SE 0.01
    assert c.other.loss == pytest.approx(2.97) and c.other.mc_se == pytest.approx(0.0025)
    assert c.other.seed_se == pytest.approx(0.01)
    assert c.gap == pytest.approx(-0.04)
    assert c.mc_se == pytest.approx(0.0025)
    assert c.seed_se == pytest.approx(math.sqrt(0.01**2 + 0.01**2))
    assert c.combined_se == pytest.approx(math.sqrt(0.0025**2 + 2 * 0.01**2))  # 0.014361
    assert c.verdict == "crossover (significant)"  # -0.04 + 2 * 0.014361 = -0.0113 < 0

    text = section(summary_of(tuned_table()), "Fair comparison per budget")
    assert ("| 1M | diffusion | 3.0100 | input_mask_rate=0.15, weight_decay=0.5 | m20M, 4 / 4 | 2.9700 | "
            "weight_decay=0.1 | m20M, 4 / 4 | -0.0400 | 0.0025 | 0.0141 | 0.0144 | crossover (significant) |") in text
    assert ("- 1M: AR 2 settings (varied: input_mask_rate, weight_decay), 2 models; diffusion 1 setting, 2 models."
            in text)
    assert "AR was not tuned" not in text and "diffusion was not tuned at this U." in text


def test_large_monte_carlo_error_makes_the_crossover_not_significant() -> None:
    table = tuned_table(diffusion_se=(0.03, 0.04))
    (c,) = fair_comparisons(aggregate_points(validate_results(table)), "dense")
    # MC = sqrt(0.03^2 + 0.04^2) / 2 = 0.025; combined = sqrt(0.025^2 + 2 * 0.01^2) = 0.028723
    assert c.mc_se == pytest.approx(0.025) and c.combined_se == pytest.approx(0.0287228, rel=1e-5)
    assert c.verdict == "crossover (not significant)"  # -0.04 + 0.0574 > 0
    assert "| -0.0400 | 0.0250 | 0.0141 | 0.0287 | crossover (not significant) |" in summary_of(table)


def test_one_setting_ar_says_it_was_not_tuned() -> None:
    table = tuned_table(ar_tuned=False)
    (c,) = fair_comparisons(aggregate_points(validate_results(table)), "dense")
    assert c.ar.loss == pytest.approx(3.11) and not c.ar.tuned  # default m20M epoch 4: mean(3.10, 3.12)
    text = section(summary_of(table), "Fair comparison per budget")
    assert "- 1M: AR 1 setting, 2 models; diffusion 1 setting, 2 models." in text
    assert "AR was not tuned at this U." in text
    assert "| 1M | diffusion | 3.1100 | — | m20M, 4 / 4 |" in text


def test_each_side_is_tuned_over_its_own_settings() -> None:
    """A tuned diffusion side is at its own best (lr=0.004), never set against AR's default or vice versa."""
    table = pd.concat([tuned_table(), pd.DataFrame(run("diffusion", 20_000_000, {4: (2.90, 2.92)},
                                                       setting={"lr": 0.004}, se=(0.003, 0.004)))])
    (c,) = fair_comparisons(aggregate_points(validate_results(table)), "dense")
    assert c.other.loss == pytest.approx(2.91) and c.ar.loss == pytest.approx(3.01) and c.gap == pytest.approx(-0.10)
    assert c.shown_settings == ("input_mask_rate", "lr", "weight_decay")
    assert describe_settings(c.other.settings, c.shown_settings) == "lr=0.004, weight_decay=0.1"
    assert describe_settings(c.ar.settings, c.shown_settings) == "input_mask_rate=0.15, lr=0.002, weight_decay=0.5"
    text = section(summary_of(table), "Fair comparison per budget")
    assert ("AR 2 settings (varied: input_mask_rate, weight_decay), 2 models; diffusion 2 settings (varied: lr), "
            "2 models.") in text
    assert "not tuned" not in text


def test_single_seeds_are_named_and_json_keeps_the_parts(tmp_path: Path) -> None:
    table = tuned_table()
    table = table[table["seed"] == 0]
    (c,) = fair_comparisons(aggregate_points(validate_results(table)), "dense")
    assert c.seed_se is None and c.combined_se == pytest.approx(0.003)  # MC of one seed: 0.003 / 1
    assert c.gap == pytest.approx(2.96 - 3.00) and c.verdict == "crossover (significant)"  # -0.04 + 0.006 < 0
    assert "| -0.0400 | 0.0030 | 1 seed | 0.0030 | crossover (significant) |" in summary_of(table)
    table.to_csv(tmp_path / "results.csv", index=False)
    write_report(tmp_path / "results.csv", tmp_path / "report", n_bootstrap=0, formats=("png",))
    (fair,) = json.loads((tmp_path / "report" / "fits.json").read_text())["fair_comparison"]
    assert fair["gap"] == pytest.approx(-0.04) and fair["seed_se"] is None and fair["mc_se"] == pytest.approx(0.003)
    assert fair["ar"]["settings_shown"] == "input_mask_rate=0.15, weight_decay=0.5"
    assert fair["verdict"] == "crossover (significant)"


# --------------------------------------------------------------------------- extrapolated crossover
TRUTHS = {
    "ar": LawParams(E=1.9, A=500.0, alpha=0.35, B=1500.0, beta=0.35, R_D_star=15.0, R_N_star=5.0),
    "diffusion": LawParams(E=2.1, A=600.0, alpha=0.33, B=2000.0, beta=0.36, R_D_star=200.0, R_N_star=80.0),
}
BUDGETS = (1e8, 1e9)
EPOCHS = (0.1, 0.2, 0.35, 0.5, 0.7, 1, 1.5, 2.5, 4, 6.5, 10, 16, 25, 40, 64, 100, 160, 250, 400, 640)


def true_frontier(p: LawParams, u: float, c: float) -> tuple[float, float]:
    """(min over N of L(N, U, C / 6N), argmin N) by a dense log grid refined with a bounded 1-d search."""
    log_n = np.linspace(math.log(1e3), math.log(1e13), 4001)
    n = np.exp(log_n)
    i = int(np.argmin(predict(n, np.full_like(n, u), c / (6 * n), p)))
    res = optimize.minimize_scalar(lambda x: float(predict(math.exp(x), u, c / (6 * math.exp(x)), p)),
                                   bounds=(log_n[max(i - 1, 0)], log_n[min(i + 1, log_n.size - 1)]), method="bounded")
    return float(res.fun), float(math.exp(res.x))


def true_crossing(u: float) -> float:
    """Brute force: scan log C for the first sign change of L*_diffusion - L*_AR, then solve it exactly."""
    def gap(log_c: float) -> float:
        return true_frontier(TRUTHS["diffusion"], u, math.exp(log_c))[0] - true_frontier(TRUTHS["ar"], u,
                                                                                      math.exp(log_c))[0]
    scan = np.linspace(math.log(1e15), math.log(1e24), 181)
    values = [gap(x) for x in scan]
    j = next(k for k in range(1, scan.size) if values[k - 1] > 0 >= values[k])
    return math.exp(optimize.brentq(gap, scan[j - 1], scan[j]))


@pytest.fixture(scope="module")
def planted() -> tuple[pd.DataFrame, pd.DataFrame, dict[str, LawFit]]:
    """A noiseless table from TRUTHS (5 sizes x 2 budgets x 20 epoch counts), its seed means, their law fits."""
    table = validate_results(law_table(TRUTHS, params=(2e6, 8e6, 30e6, 120e6, 500e6), budgets=BUDGETS,
                                       epochs=EPOCHS))
    points = aggregate_points(table)
    fits = {f: fit_family(points, f, n_bootstrap=20) for f in TRUTHS}
    return table, points, fits


def test_extrapolated_crossing_matches_the_planted_laws(planted: tuple[pd.DataFrame, pd.DataFrame, dict]) -> None:
    table, points, _ = planted
    analysis = analyse(points, "dense", n_bootstrap=20)
    assert [e.unique_tokens for e in analysis.extrapolations] == [int(u) for u in BUDGETS]
    for e, u in zip(analysis.extrapolations, BUDGETS):
        truth = true_crossing(u)  # 2.85e18 at U = 1e8, 7.66e20 at U = 1e9
        assert e.supported and e.reasons == ()
        assert e.flops == pytest.approx(truth, rel=0.10)
        n_truth = true_frontier(TRUTHS["diffusion"], u, truth)[1]
        assert e.crossing.n_other == pytest.approx(n_truth, rel=0.3)  # N grid steps are 12 %
        assert e.epochs(e.crossing.n_other) == pytest.approx(e.flops / (6 * e.crossing.n_other * u))
        lo, hi = e.ci68
        assert lo is not None and hi is not None and lo <= e.flops * 1.05 and hi >= e.flops * 0.95
        assert e.n_refits == 20 and e.n_refits_crossing == 20
        assert e.max_measured_flops == pytest.approx(6 * 500e6 * u * 640)
    summary = build_summary(table, points, [analysis], source="x", figures=[], fit_points="up_to_best",
                            n_bootstrap=20)
    text = section(summary, "Extrapolated crossover from the fitted laws")
    first = analysis.extrapolations[0]
    assert (f"| diffusion | {format_tokens(1e8)} | {format_sci(first.flops)} | {format_sci(first.ci68[0])} to "
            f"{format_sci(first.ci68[1])} | 20 of 20 | {format_tokens(first.crossing.n_other)} / "
            f"{format_tokens(first.crossing.n_ar)} |") in text
    (entry, _) = analysis.to_json()["extrapolated_crossover"]
    assert entry["flops"] == first.flops and entry["supported"] and entry["n_refits_no_crossing"] == 0
    assert json.loads(json.dumps(entry, allow_nan=False)) == entry


def _one(ar: LawFit, other: LawFit, points: pd.DataFrame, *, max_measured: float | None = None) -> Extrapolation:
    measured = max_measured if max_measured is not None else float(points["flops"].max())
    span = (float(points["flops"].min()), float(points["flops"].max()))
    return extrapolate_crossovers(ar, other, np.array([1e8]), np.array([measured]), crossing_grid(span))[0]


def test_unsupported_extrapolations_say_why(planted: tuple[pd.DataFrame, pd.DataFrame, dict]) -> None:
    _, points, fits = planted
    ar, diffusion = fits["ar"], fits["diffusion"]
    assert _one(ar, diffusion, points).supported
    degenerate = _one(replace(ar, status="degenerate"), diffusion, points)
    assert not degenerate.supported and degenerate.reasons == ("ar law degenerate",)
    r_d = replace(diffusion.estimates["R_D_star"], at_bound="upper")
    at_bound = _one(ar, replace(diffusion, estimates={**diffusion.estimates, "R_D_star": r_d}), points)
    assert any(r.startswith("diffusion R_D* at its upper bound") for r in at_bound.reasons)
    far = _one(ar, diffusion, points, max_measured=true_crossing(1e8) / 1000)
    assert any("limit 100x" in r for r in far.reasons) and far.flops is not None
    no_n = _one(replace(ar, law=replace(ar.law, A=0.0)), diffusion, points)
    assert no_n.crossing is None and no_n.reasons == ("ar law has no N term (one model size)",)
    no_refits = _one(replace(ar, samples={}), diffusion, points)
    assert no_refits.n_refits == 0 and no_refits.reasons == ("no bootstrap refits to judge it",)


def test_refits_that_mostly_do_not_cross_make_it_unsupported(planted: tuple[pd.DataFrame, pd.DataFrame, dict]) -> None:
    """7 of 10 diffusion refits lie 1 nat higher (never below AR): 3 of 10 cross, the 84th percentile is open."""
    _, points, fits = planted
    laws = [fits["diffusion"].law] * 3 + [replace(fits["diffusion"].law, E=fits["diffusion"].law.E + 1.0)] * 7
    samples = {name: np.array([getattr(p, name) for p in laws]) for name in fits["diffusion"].samples}
    ar = replace(fits["ar"], samples={k: np.repeat(getattr(fits["ar"].law, k), 10) for k in fits["ar"].samples})
    e = _one(ar, replace(fits["diffusion"], samples=samples), points)
    assert (e.n_refits, e.n_refits_crossing) == (10, 3)
    assert e.reasons == ("only 3 of 10 bootstrap refits cross on the grid",)
    assert e.ci68[0] == pytest.approx(e.flops) and e.ci68[1] is None


def test_a_degenerate_fit_in_the_report_is_not_supported() -> None:
    """AR losses turn up with epochs (two model sizes): with every point fitted the AR law is degenerate."""
    rows = []
    for n in (10_000_000, 40_000_000):
        for u in (1e6, 2e6, 4e6):
            for e in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64):
                for objective, loss in (("ar", 3 + 0.4 * math.log(e / 8) ** 2 + 1e7 / n * 0.1),
                                        ("diffusion", float(predict(n, u, u * e, TRUTHS["diffusion"])))):
                    rows.append({"run_id": f"{objective}-{n}-{u:g}", "objective": objective, "attention": "dense",
                                 "model": f"m{n}", "params": 2 * n, "non_embedding_params": n, "unique_tokens": u,
                                 "epochs": e, "tokens_seen": u * e, "flops": 6 * n * u * e, "val_loss": loss,
                                 "seed": 0})
    table = validate_results(pd.DataFrame(rows))
    points = aggregate_points(table)
    analysis = analyse(points, "dense", fit_points="all", n_bootstrap=0)
    assert analysis.laws["ar"].status == "degenerate"
    assert all(not e.supported and "ar law degenerate" in e.reasons for e in analysis.extrapolations)
    text = section(build_summary(table, points, [analysis], source="x", figures=[], fit_points="all", n_bootstrap=0),
                   "Extrapolated crossover from the fitted laws")
    assert text.count("| not supported: ar law degenerate") == 3
