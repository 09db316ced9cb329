"""Scaling-law fits of a results table: the data-constrained law per family, crossovers and C_crit(U).

**Data-constrained law** (``analysis.law``, fitted by ``analysis.lawfit``), per family (objective,
or objective and block size) and attention kind:

    L = E + A / N'**alpha + B / D'**beta,
    D' = U_D + U_D R_D* (1 - exp(-R_D / R_D*)),   U_D = min(U, D),  R_D = D / U_D - 1 (= epochs - 1),
    N' = U_N + U_N R_N* (1 - exp(-R_N / R_N*)),   U_N = min(N, N_opt(U_D)),  R_N = N / U_N - 1,

N the non-embedding parameters, U the unique tokens and D = U * epochs the tokens seen (raw token
counts), N_opt(U) the compute-optimal N for U tokens. Two-stage by default (E, A, alpha, B, beta on
single-epoch points or given as ``base``; then R_D*, R_N*), one-stage on request; errors from a
bootstrap over runs; see ``analysis.lawfit`` for the method, bounds and the degeneracy rules.

**Which points** (``fit_points``). The law is monotone in D' and cannot follow a loss that turns
up with more epochs (AR overfitting):

* ``"up_to_best"`` (default): within each run (``curve``: one run, or seeds of one run
  configuration; runs of different length are different curves), the evaluations up to and
  including that run's lowest loss;
* ``"up_to_best_config"``: per (family, model, U) over all its runs, the points at epochs up to
  the epoch of the lowest loss (drops whole overfitted runs in a one-run-per-epoch-count design);
* ``"all"``: every point.

**Crossovers** (``analysis.crossover``): ``ar`` against every other family, per budget U.
**C_crit(U)** per family: ordinary least squares of log10 C_crit on log10 U over the budgets with a
crossover (C in FLOPs, U in raw tokens), needing two budgets; and, from the fitted laws,
Prabhudesai et al.'s C_crit(U): the compute at which the family's law frontier
L*(C, U) = min_N L(N, U, D = C / 6N) drops below AR's, with its own power law.

**Fair comparison** (``analysis.crossover.fair_comparisons``): per measured U, each family's best
point over all its own settings, models and evaluated epochs against AR's, with the gap's Monte
Carlo and seed errors kept apart and a verdict.

**Extrapolated crossover** (``extrapolate_crossovers``): per family and measured U, the compute at
which the two law frontiers cross (the same search as C_crit from the laws: ``law_crossings`` on
``crossing_grid``), the frontier's N and epochs C / (6 N U) there, and the central 68 % interval of
the crossings of the paired bootstrap refits (``LawFit.bootstrap_laws``). It is *not supported*
(``reasons``) when a law is degenerate or has R_D* at its bound, the crossing lies beyond
``MAX_EXTRAPOLATION`` x the largest compute measured at that U, or fewer than
``MIN_REFITS_CROSSING`` of the refits cross on the grid (or there are no refits).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats

from analysis.crossover import Crossover, FairComparison, fair_comparisons, find_crossovers
from analysis.law import LawParams, predict
from analysis.lawfit import LawFit, Protocol, fit_law
from analysis.results import (
    REFERENCE_FAMILY,
    TableError,
    aggregate_points,
    default_attention,
    families,
    load_results,
    validate_results,
)

FitPoints = Literal["up_to_best", "up_to_best_config", "all"]
FIT_POINTS: tuple[str, ...] = ("up_to_best", "up_to_best_config", "all")
CrossoverEstimate = Literal["interpolated", "first"]
BaseLaws = Mapping[str, LawParams] | LawParams | str | os.PathLike[str] | None

UNITS = ("losses in nats/token; U, D = U * epochs and D' in raw tokens; N, N' non-embedding parameters; "
         "C = 6 N D FLOPs")


class BaseLawError(TableError):
    """A malformed base-law file (``base=`` / ``--base-law``): one line, like a table error."""


@dataclass(frozen=True)
class PowerLawFit:
    """y = prefactor * x**exponent fitted in log10-log10 space."""

    exponent: float
    prefactor: float
    exponent_se: float | None
    n_points: int

    def predict(self, x: np.ndarray | float) -> np.ndarray:
        return self.prefactor * np.asarray(x, dtype=float) ** self.exponent

    def to_json(self) -> dict[str, float | int | None]:
        return {"exponent": self.exponent, "exponent_se": self.exponent_se, "prefactor": self.prefactor,
                "n_budgets": self.n_points}


@dataclass(frozen=True)
class LawCrossover:
    """C_crit(U) from two fitted laws on a grid of budgets (NaN where no crossing in the compute range)."""

    family: str
    budgets: np.ndarray
    flops: np.ndarray
    fit: PowerLawFit | None
    note: str | None = None

    def to_json(self) -> dict[str, object]:
        return {"fit": None if self.fit is None else self.fit.to_json(), "note": self.note,
                "budgets": [float(u) for u in self.budgets],
                "flops": [None if not math.isfinite(c) else float(c) for c in self.flops]}


@dataclass(frozen=True)
class Analysis:
    """Everything fitted for one attention kind."""

    attention: str
    families: list[str]
    laws: dict[str, LawFit]
    crossovers: list[Crossover]
    c_crit: dict[str, PowerLawFit | None]
    law_c_crit: dict[str, LawCrossover]
    fair: list[FairComparison] = field(default_factory=list)
    extrapolations: list[Extrapolation] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        """The ``fit_table`` dictionary (plain floats, ints, strings, lists and None)."""
        return {
            "attention": self.attention,
            "units": UNITS,
            "families": list(self.families),
            "laws": {f: self.laws[f].to_json() for f in self.families},
            "crossover": [c.to_json() for c in self.crossovers],
            "c_crit": {f: None if fit is None else fit.to_json() for f, fit in self.c_crit.items()},
            "c_crit_from_laws": {f: lc.to_json() for f, lc in self.law_c_crit.items()},
            "fair_comparison": [c.to_json() for c in self.fair],
            "extrapolated_crossover": [e.to_json() for e in self.extrapolations],
        }


# --------------------------------------------------------------------------- point selection
def select_fit_points(points: pd.DataFrame, fit_points: FitPoints) -> pd.Series:
    """Boolean mask of the points a law fit uses (module docstring)."""
    if fit_points not in FIT_POINTS:
        raise ValueError(f"fit_points must be one of {', '.join(FIT_POINTS)}, got {fit_points!r}")
    if fit_points == "all" or points.empty:
        return pd.Series(True, index=points.index)
    keys = ["curve"] if fit_points == "up_to_best" else ["attention", "family", "model", "non_embedding_params",
                                                         "unique_tokens"]
    best_epoch = points.groupby(keys)["val_loss"].transform("idxmin").map(points["epochs"])
    return points["epochs"] <= best_epoch


# --------------------------------------------------------------------------- base laws
def load_base_laws(base: BaseLaws) -> dict[str, LawParams] | LawParams | None:
    """``base`` as LawParams per family (or one for all). Files: JSON with E, A, alpha, B, beta, either
    at the top level (all families), per family (``{"ar": {...}}``) or a ``fits.json`` (``{"laws": ...}``)."""
    if base is None or isinstance(base, LawParams):
        return base
    if isinstance(base, Mapping):
        return {f: p if isinstance(p, LawParams) else _base_params(p, f"base law [{f}]") for f, p in base.items()}
    source = f"base law {str(base)!r}"
    try:
        doc = json.loads(Path(base).read_text())
    except (OSError, ValueError) as err:
        raise BaseLawError(f"{source}: not a readable JSON file ({' '.join(str(err).split())})") from None
    doc = doc.get("laws", doc) if isinstance(doc, dict) else doc
    if isinstance(doc, dict) and "E" in doc:
        return _base_params(doc, source)
    if not isinstance(doc, dict) or not doc:
        raise BaseLawError(f"{source}: expected E, A, alpha, B, beta at the top level or per family")
    return {family: _base_params(entry, f"{source} [{family}]") for family, entry in doc.items()}


def _base_params(entry: object, source: str) -> LawParams:
    names = ("E", "A", "alpha", "B", "beta")
    if not isinstance(entry, dict):
        raise BaseLawError(f"{source}: expected an object with {', '.join(names)}")
    values = {n: entry.get(n) for n in names}
    bad = [n for n, v in values.items() if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0]
    if bad:
        raise BaseLawError(f"{source}: {', '.join(bad)} must be positive numbers (got "
                           + ", ".join(f"{n}={values[n]!r}" for n in bad) + ")")
    return LawParams(**{n: float(v) for n, v in values.items()})


def _base_for(base: dict[str, LawParams] | LawParams | None, family: str) -> LawParams | None:
    return base.get(family) if isinstance(base, dict) else base


# --------------------------------------------------------------------------- C_crit
def fit_power_law(x: np.ndarray, y: np.ndarray) -> PowerLawFit | None:
    """OLS of log10 y on log10 x; ``None`` with fewer than two distinct x. SE of the slope needs >= 3."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if np.unique(x).size < 2:
        return None
    reg = stats.linregress(np.log10(x), np.log10(y))
    se = float(reg.stderr) if x.size >= 3 else None
    return PowerLawFit(float(reg.slope), float(10.0**reg.intercept), se, int(x.size))


def crossover_estimate(crossover: Crossover, estimate: CrossoverEstimate = "interpolated") -> float | None:
    """The crossover compute a C_crit fit uses: interpolated in log C (falling back to the first
    evaluated compute when the family is below AR best at its smallest compute), or first evaluated."""
    if estimate not in ("interpolated", "first"):
        raise ValueError(f"estimate must be 'interpolated' or 'first', got {estimate!r}")
    if estimate == "interpolated" and crossover.flops_interp is not None:
        return crossover.flops_interp
    return crossover.flops


def fit_c_crit(crossovers: Sequence[Crossover], estimate: CrossoverEstimate = "interpolated") -> PowerLawFit | None:
    """C_crit = c U**k over the budgets with a crossover (one family; C in FLOPs, U in raw tokens).

    The default fits the log-interpolated crossover: on an epoch grid shared by all budgets the
    first evaluated compute is quantised to the grid and pulls the exponent towards 1.
    """
    found = [(c.unique_tokens, crossover_estimate(c, estimate)) for c in crossovers if c.flops is not None]
    return fit_power_law(np.array([u for u, _ in found], dtype=float), np.array([c for _, c in found], dtype=float))


#: Model sizes (non-embedding parameters) the law frontier minimises over.
N_GRID = np.logspace(3, 13, 201)


def crossing_grid(compute_range: tuple[float, float]) -> np.ndarray:
    """The computes (FLOPs) law crossings are searched on: ``compute_range`` widened 10x down and 1000x up."""
    return np.geomspace(compute_range[0] / 10.0, compute_range[1] * 1000.0, 241)


def law_frontiers(law: LawParams, budgets: np.ndarray, compute: np.ndarray,
                  n_grid: np.ndarray = N_GRID) -> tuple[np.ndarray, np.ndarray]:
    """(L*, N*): L*(C, U) = min over N of L(N, U, D = C / 6N) (nats/token) and the N attaining it, each of
    shape (budgets, computes), for U in ``budgets`` (tokens) and C in ``compute`` (FLOPs)."""
    n = np.asarray(n_grid, dtype=float)[None, :, None]
    tokens = np.asarray(compute, dtype=float)[None, None, :] / (6.0 * n)
    u = np.asarray(budgets, dtype=float).reshape(-1, 1, 1)
    loss = predict(n, np.broadcast_to(u, np.broadcast_shapes(u.shape, tokens.shape)), tokens, law)
    best = loss.argmin(axis=1)
    return np.take_along_axis(loss, best[:, None, :], axis=1)[:, 0, :], np.asarray(n_grid, dtype=float)[best]


def law_frontier(law: LawParams, unique_tokens: float, compute: np.ndarray, n_grid: np.ndarray = N_GRID) -> np.ndarray:
    """L*(C, U) = min over N of L(N, U, D = C / 6N) (nats/token) at each compute C (FLOPs)."""
    return law_frontiers(law, np.array([unique_tokens], dtype=float), compute, n_grid)[0][0]


def _first_crossing(compute: np.ndarray, delta: np.ndarray) -> float:
    """Smallest C where delta goes from > 0 to <= 0, interpolated linearly in log C; NaN if none."""
    below = np.flatnonzero(delta <= 0)
    if not below.size or below[0] == 0:
        return math.nan
    i = below[0]
    t = delta[i - 1] / (delta[i - 1] - delta[i])
    return float(np.exp(np.log(compute[i - 1]) + t * np.log(compute[i] / compute[i - 1])))


@dataclass(frozen=True)
class LawCrossing:
    """Where a family's law frontier first drops below AR's at one U on a compute grid.

    ``flops``: the crossing compute (FLOPs, linear in log C between grid points), None when the frontiers
    do not cross on the grid; then ``other_below`` says whether the family is already at or below AR at
    the grid's smallest compute (else AR stays below throughout). ``n_other``, ``n_ar``: the N
    (non-embedding) of each frontier at the crossing (grid of ``N_GRID``).
    """

    flops: float | None
    n_other: float | None = None
    n_ar: float | None = None
    other_below: bool = False


def law_crossings(ar: LawParams, other: LawParams, budgets: np.ndarray, compute: np.ndarray,
                  n_grid: np.ndarray = N_GRID) -> list[LawCrossing]:
    """The first crossing of ``other``'s law frontier below ``ar``'s per U in ``budgets`` on ``compute``."""
    budgets = np.asarray(budgets, dtype=float)
    delta = law_frontiers(other, budgets, compute, n_grid)[0] - law_frontiers(ar, budgets, compute, n_grid)[0]
    result = []
    for u, row in zip(budgets, delta):
        c = _first_crossing(compute, row)
        if not math.isfinite(c):
            result.append(LawCrossing(None, other_below=bool(row[0] <= 0)))
            continue
        at = np.array([c])
        n_other = law_frontiers(other, np.array([u]), at, n_grid)[1][0, 0]
        n_ar = law_frontiers(ar, np.array([u]), at, n_grid)[1][0, 0]
        result.append(LawCrossing(c, float(n_other), float(n_ar)))
    return result


def law_c_crit(ar: LawFit, other: LawFit, budgets: np.ndarray, compute_range: tuple[float, float]) -> LawCrossover:
    """Prabhudesai et al.'s C_crit(U) from the fitted laws (module docstring) on ``budgets`` (tokens).

    Compute is searched over ``crossing_grid(compute_range)`` (FLOPs: widened 10x down and 1000x up); a
    budget whose frontiers do not cross there is NaN. Needs two drawable laws with a parameter term.
    """
    reason = next((f"{law.family} law {'not drawable' if not law.drawable else 'has no N term'}"
                   for law in (ar, other) if not law.drawable or law.law.A == 0), None)
    if reason:
        return LawCrossover(other.family, budgets, np.full(budgets.shape, math.nan), None, reason)
    crossings = law_crossings(ar.law, other.law, budgets, crossing_grid(compute_range))
    flops = np.array([math.nan if c.flops is None else c.flops for c in crossings])
    ok = np.isfinite(flops)
    fit = fit_power_law(budgets[ok], flops[ok]) if ok.sum() >= 2 else None
    note = None if ok.all() else f"no crossing of the law frontiers in range at {int((~ok).sum())} budgets"
    return LawCrossover(other.family, budgets, flops, fit, note)


# --------------------------------------------------------------------------- extrapolated crossover
#: A law crossing beyond this multiple of the largest compute measured at its U is not supported.
MAX_EXTRAPOLATION = 100.0
#: Fewer bootstrap refits than this fraction crossing on the grid: the crossing is not supported.
MIN_REFITS_CROSSING = 0.5
_CI68 = (15.865, 84.135)


@dataclass(frozen=True)
class Extrapolation:
    """The crossing of a family's fitted law frontier with AR's at one measured U, with its bootstrap interval.

    ``crossing``: from the best-fit laws (None when they cannot be compared: no fit or no N term);
    ``ci68``: central 68 % interval of the crossings of the paired bootstrap refits (refit i of AR with
    refit i of the family), a side None where it lies off the grid (a refit without a crossing counts as
    past the grid's end, or before its start when the family is already below AR there); None without
    refits. ``reasons``: why the extrapolation is not supported (empty: supported).
    """

    family: str
    unique_tokens: int
    crossing: LawCrossing | None
    ci68: tuple[float | None, float | None] | None
    n_refits: int
    n_refits_crossing: int
    max_measured_flops: float
    grid: tuple[float, float]
    reasons: tuple[str, ...] = ()

    @property
    def supported(self) -> bool:
        return not self.reasons

    @property
    def flops(self) -> float | None:
        return None if self.crossing is None else self.crossing.flops

    def epochs(self, n: float | None) -> float | None:
        """Epochs C / (6 N U) at the crossing compute for a model of N non-embedding parameters."""
        return None if self.flops is None or n is None else self.flops / (6.0 * n * self.unique_tokens)

    def to_json(self) -> dict[str, object]:
        c = self.crossing or LawCrossing(None)
        no_crossing = None if c.flops is not None or self.crossing is None else (
            "family_below_at_grid_start" if c.other_below else "ar_below_on_grid")
        return {"family": self.family, "unique_tokens": int(self.unique_tokens), "supported": self.supported,
                "reasons": list(self.reasons), "flops": c.flops, "no_crossing": no_crossing,
                "n_family": c.n_other, "n_ar": c.n_ar, "epochs_family": self.epochs(c.n_other),
                "epochs_ar": self.epochs(c.n_ar), "ci68": None if self.ci68 is None else list(self.ci68),
                "n_refits": self.n_refits, "n_refits_crossing": self.n_refits_crossing,
                "n_refits_no_crossing": self.n_refits - self.n_refits_crossing,
                "max_measured_flops": self.max_measured_flops, "grid": list(self.grid)}


def _law_problems(law: LawFit) -> tuple[list[str], list[str]]:
    """(reasons the law cannot give a frontier at all, reasons it does not support an extrapolation)."""
    if law.law is None:
        return [f"no {law.family} law ({law.status})"], []
    if law.law.A == 0:
        return [f"{law.family} law has no N term (one model size)"], []
    weak = [f"{law.family} law {law.status}"] if law.status == "degenerate" else []
    r_d = law.estimates.get("R_D_star")
    if r_d is not None and r_d.at_bound:
        weak.append(f"{law.family} R_D* at its {r_d.at_bound} bound ({r_d.value:.3g})")
    return [], weak


def _refit_interval(crossings: list[LawCrossing]) -> tuple[float | None, float | None] | None:
    """Central 68 % of refit crossings; no crossing = +inf (AR below) or -inf (family below); off-grid = None."""
    if not crossings:
        return None
    values = [c.flops if c.flops is not None else (-math.inf if c.other_below else math.inf) for c in crossings]
    lo, hi = np.percentile(np.array(values), _CI68, method="inverted_cdf")
    return tuple(float(x) if math.isfinite(x) else None for x in (lo, hi))  # type: ignore[return-value]


def extrapolate_crossovers(ar: LawFit, other: LawFit, budgets: np.ndarray, max_measured: np.ndarray,
                           compute: np.ndarray) -> list[Extrapolation]:
    """The law crossing of ``other`` with AR at each measured U in ``budgets`` (tokens), with
    ``max_measured`` the largest compute (FLOPs) measured there, searched on ``compute`` (FLOPs).

    Not supported (``reasons``): a law degenerate or with R_D* at its bound; a crossing beyond
    ``MAX_EXTRAPOLATION`` x the largest measured compute at that U; no refits; fewer than
    ``MIN_REFITS_CROSSING`` of the refits crossing on the grid.
    """
    budgets = np.asarray(budgets, dtype=float)
    grid = (float(compute[0]), float(compute[-1]))
    fatal, weak = zip(*(_law_problems(law) for law in (ar, other)))
    fatal, weak = [r for rs in fatal for r in rs], [r for rs in weak for r in rs]
    if fatal:
        return [Extrapolation(other.family, int(u), None, None, 0, 0, float(m), grid, tuple(fatal))
                for u, m in zip(budgets, max_measured)]
    best = law_crossings(ar.law, other.law, budgets, compute)
    pairs = list(zip(ar.bootstrap_laws(), other.bootstrap_laws()))
    refits = [law_crossings(a, o, budgets, compute) for a, o in pairs]
    result = []
    for i, (u, m) in enumerate(zip(budgets, max_measured)):
        own = [r[i] for r in refits]
        crossing = sum(c.flops is not None for c in own)
        reasons = list(weak)
        if best[i].flops is not None:
            if best[i].flops > MAX_EXTRAPOLATION * m:
                reasons.append(f"crossing at {best[i].flops:.3g} FLOPs, {best[i].flops / m:.3g}x the largest compute "
                               f"measured at this U (limit {MAX_EXTRAPOLATION:g}x)")
            if not own:
                reasons.append("no bootstrap refits to judge it")
            elif crossing < MIN_REFITS_CROSSING * len(own):
                reasons.append(f"only {crossing} of {len(own)} bootstrap refits cross on the grid")
        result.append(Extrapolation(other.family, int(u), best[i], _refit_interval(own), len(own), crossing, float(m),
                                    grid, tuple(reasons)))
    return result


# --------------------------------------------------------------------------- analysis
def fit_family(points: pd.DataFrame, family: str, *, fit_points: FitPoints = "up_to_best",
               protocol: Protocol = "two_stage", base: LawParams | None = None, n_bootstrap: int = 200,
               seed: int = 0) -> LawFit:
    """The law of one family (one attention kind's points) with the chosen point selection."""
    own = points[points["family"] == family]
    chosen = own[select_fit_points(own, fit_points)]
    return fit_law(chosen, family, n_excluded=len(own) - len(chosen), fit_points=fit_points, protocol=protocol,
                   base=base, n_bootstrap=n_bootstrap, seed=seed)


def _check_protocol(protocol: str, bases: dict[str, LawParams] | LawParams | None) -> None:
    if bases is not None and protocol == "one_stage":
        raise BaseLawError("a base law fixes E, A, alpha, B, beta: it goes with the two-stage protocol, not one-stage")


def analyse(points: pd.DataFrame, attention: str, *, fit_points: FitPoints = "up_to_best", n_bootstrap: int = 200,
            seed: int = 0, protocol: Protocol = "two_stage", base: BaseLaws = None) -> Analysis:
    """Law fits per family, crossovers (AR against each other family) and C_crit fits for one attention kind."""
    pts = points[points["attention"] == attention]
    if pts.empty:
        raise TableError(f"no points with attention {attention!r}; present: {sorted(points['attention'].unique())}")
    bases = load_base_laws(base)
    _check_protocol(protocol, bases)
    names = families(pts)
    laws = {f: fit_family(pts, f, fit_points=fit_points, protocol=protocol, base=_base_for(bases, f),
                          n_bootstrap=n_bootstrap, seed=seed) for f in names}
    for f in names:
        if bases is not None and _base_for(bases, f) is None:
            laws[f] = replace(laws[f], notes=(*laws[f].notes, "no base law given for this family: stage 1 fitted"))
    crossovers = find_crossovers(pts, attention)
    others = [f for f in names if f != REFERENCE_FAMILY]
    c_crit = {f: fit_c_crit([c for c in crossovers if c.family == f]) for f in others} if REFERENCE_FAMILY in names \
        else {}
    law_crit, extrapolations = {}, []
    if REFERENCE_FAMILY in names:
        us = np.sort(pts["unique_tokens"].unique())
        grid = np.geomspace(us[0], us[-1], 25) if us.size > 1 else us.astype(float)
        span = (float(pts["flops"].min()), float(pts["flops"].max()))
        law_crit = {f: law_c_crit(laws[REFERENCE_FAMILY], laws[f], grid, span) for f in others}
        measured = pts.groupby("unique_tokens")["flops"].max().reindex(us).to_numpy(float)
        for f in others:
            extrapolations += extrapolate_crossovers(laws[REFERENCE_FAMILY], laws[f], us.astype(float), measured,
                                                     crossing_grid(span))
    return Analysis(attention, names, laws, crossovers, c_crit, law_crit, fair_comparisons(pts, attention),
                    extrapolations)


def fit_table(
    path_or_df: str | os.PathLike[str] | pd.DataFrame,
    *,
    attention: str | None = None,
    fit_points: FitPoints = "up_to_best",
    n_bootstrap: int = 200,
    seed: int = 0,
    protocol: Protocol = "two_stage",
    base: BaseLaws = None,
) -> dict[str, object]:
    """Fit a results table and return the JSON-serialisable summary (``Analysis.to_json``).

    Shape: ``{"attention", "units", "families", "laws": {family: {status, protocol_used, E, E_err, A, ...,
    R_D_star, R_D_star_err, R_N_star, R_N_star_err, ci95, at_bound, fixed, unidentified, n_points,
    n_excluded, n_runs, n_single_epoch, n_bootstrap, r2, rmse_log, note}}, "crossover": [{family,
    unique_tokens, flops, flops_interp, significant}], "c_crit": {family: {exponent, exponent_se,
    prefactor, n_budgets} or None}, "c_crit_from_laws": {family: {fit, note, budgets, flops}},
    "fair_comparison": [{family, unique_tokens, gap, mc_se, seed_se, combined_se, verdict, ar: {loss, mc_se,
    seed_se, n_seeds, settings, settings_shown, model, epochs, run_epochs, flops, n_settings, n_models, varied},
    other: {...}}], "extrapolated_crossover": [{family, unique_tokens, supported, reasons, flops, no_crossing,
    n_family, n_ar, epochs_family, epochs_ar, ci68, n_refits, n_refits_crossing, n_refits_no_crossing,
    max_measured_flops, grid}]}``.
    ``attention`` picks the kind: by default the table's only kind, or "dense" when several are present
    (else the first sorted). ``base``: fixed E, A, alpha, B, beta (LawParams, per-family mapping or a
    JSON file, ``load_base_laws``). Raises ``TableError`` for a malformed table or base-law file.
    """
    df = validate_results(path_or_df) if isinstance(path_or_df, pd.DataFrame) else load_results(path_or_df)
    points = aggregate_points(df)
    kind = attention if attention is not None else default_attention(points["attention"])
    return analyse(points, kind, fit_points=fit_points, n_bootstrap=n_bootstrap, seed=seed, protocol=protocol,
                   base=base).to_json()
