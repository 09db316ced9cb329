"""Scaling-law fits: Muennighoff's data-constrained law per objective and the C_crit(U) power law.

**Data-constrained law** (Muennighoff et al. 2023, as used by Prabhudesai et al.):

    L(N, U, epochs) = E + A / N**alpha + B / D'**beta,
    D' = U + U * R_D* * (1 - exp(-R_D / R_D*)),   R_D = epochs - 1,

with N the non-embedding parameters and U, D' in tokens. The k-th repetition is worth
exp(-k / R_D*) of fresh data, so after R_D* repetitions a further one is worth 1/e; a large R_D*
means repeated data is nearly as good as fresh.

Fit method. Points are seed means (``aggregate_points``). Parameters are
(log E, log B, beta, log R_D*, log A, alpha); the prediction is computed as a log-sum-exp and
the Huber loss (delta = ``huber_delta``, 1e-3 as Muennighoff et al.) of log(predicted) - log(observed)
is minimised with ``scipy.optimize.least_squares`` (trust-region reflective, bounds, analytic
Jacobian). Starting points: a grid over (alpha, beta, R_D*) on which (E, A, B) are linear and
solved by non-negative least squares; the best few grid points are refined and the lowest robust
cost wins. With a single N among the fitted points A / N**alpha is a constant that cannot be told
from E: it is folded into E, and A, alpha are reported as ``None``.

Which points: the law is monotone in D' and cannot describe a loss that turns up with more
epochs (AR overfitting). ``fit_points="up_to_best"`` (default) keeps, for every (model, U)
curve, the epochs up to and including that curve's lowest loss; ``"all"`` fits every point.

Uncertainty of R_D*: a nonparametric bootstrap over the fitted points (resampled with
replacement, refit from the best estimate); ``R_D_star_err`` is half the width of the central 68%
bootstrap interval (one SD for a normal distribution, robust to the long upper tail R_D* has
when repetition barely saturates within the epochs tried). Points of one long run evaluated at
many epochs share that run's noise, which a bootstrap over points ignores: read the error as a
lower bound in that design.

**C_crit(U)**: ordinary least squares of log10 C_crit on log10 U over the budgets with a
crossover (``analysis.crossover``), C_crit = c * U**k, needing at least two budgets. C_crit is the
log-interpolated crossover compute by default (``fit_c_crit(..., estimate="first")`` uses the
first evaluated compute, the number ``fit_table`` reports per budget).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import pandas as pd
from scipy import optimize, stats
from scipy.special import logsumexp

from analysis.crossover import Crossover, find_crossovers
from analysis.results import OBJECTIVES, aggregate_points, default_attention, load_results, validate_results

FitPoints = Literal["up_to_best", "all"]
CrossoverEstimate = Literal["interpolated", "first"]

_R_STAR_BOUNDS = (1e-2, 1e5)
_EXP_BOUNDS = (1e-3, 3.0)  # alpha, beta
_LOG_COEF_BOUNDS = (-30.0, 90.0)  # log A, log B
_GRID_R_STAR = np.logspace(0, 4, 13)
_GRID_EXPONENT = np.linspace(0.05, 1.2, 12)
_N_STARTS = 5


@dataclass(frozen=True)
class LawFit:
    """Fitted data-constrained law for one objective (``None`` where not identifiable or not fitted)."""

    objective: str
    E: float | None
    A: float | None
    alpha: float | None
    B: float | None
    beta: float | None
    R_D_star: float | None
    R_D_star_err: float | None
    n_points: int
    n_excluded: int
    fit_points: str
    note: str | None = None

    def predict(self, non_embedding_params: np.ndarray, unique_tokens: np.ndarray, epochs: np.ndarray) -> np.ndarray:
        """Loss (nats/token) predicted by the fitted law."""
        if self.E is None or self.B is None or self.beta is None or self.R_D_star is None:
            raise ValueError(f"no fitted law for {self.objective}: {self.note}")
        loss = self.E + self.B / effective_data(unique_tokens, epochs, self.R_D_star) ** self.beta
        if self.A is not None and self.alpha is not None:
            loss = loss + self.A / np.asarray(non_embedding_params, dtype=float) ** self.alpha
        return loss

    def to_json(self) -> dict[str, float | str | None]:
        """The ``fit_table`` entry: R_D_star, R_D_star_err, E, A, alpha, B, beta (+ "note" if any)."""
        out: dict[str, float | str | None] = {
            key: _json_float(getattr(self, key)) for key in ("R_D_star", "R_D_star_err", "E", "A", "alpha", "B", "beta")
        }
        if self.note:
            out["note"] = self.note
        return out


@dataclass(frozen=True)
class PowerLawFit:
    """y = prefactor * x**exponent fitted in log10-log10 space."""

    exponent: float
    prefactor: float
    exponent_se: float | None
    n_points: int

    def predict(self, x: np.ndarray | float) -> np.ndarray:
        return self.prefactor * np.asarray(x, dtype=float) ** self.exponent


@dataclass(frozen=True)
class Analysis:
    """Everything fitted for one attention kind."""

    attention: str
    laws: dict[str, LawFit]
    crossovers: list[Crossover]
    c_crit: PowerLawFit | None

    def to_json(self) -> dict[str, object]:
        """The ``fit_table`` dictionary (plain floats, ints, strings and None)."""
        return {
            **{objective: self.laws[objective].to_json() for objective in OBJECTIVES},
            "crossover": [c.to_json() for c in self.crossovers],
            "c_crit_exponent": None if self.c_crit is None else float(self.c_crit.exponent),
        }


def _json_float(x: float | None) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def effective_data(unique_tokens: np.ndarray, epochs: np.ndarray, r_d_star: float) -> np.ndarray:
    """D' = U + U R_D* (1 - exp(-R_D / R_D*)) with R_D = epochs - 1 (tokens)."""
    u = np.asarray(unique_tokens, dtype=float)
    r_d = np.asarray(epochs, dtype=float) - 1.0
    return u + u * r_d_star * -np.expm1(-r_d / r_d_star)


def select_fit_points(points: pd.DataFrame, fit_points: FitPoints) -> pd.Series:
    """Boolean mask of the points a law fit uses (see the module docstring)."""
    if fit_points == "all":
        return pd.Series(True, index=points.index)
    if fit_points != "up_to_best":
        raise ValueError(f"fit_points must be 'up_to_best' or 'all', got {fit_points!r}")
    curve = ["attention", "objective", "model", "non_embedding_params", "unique_tokens"]
    best_epoch = points.groupby(curve)["val_loss"].transform("idxmin").map(points["epochs"])
    return points["epochs"] <= best_epoch


class _Problem:
    """Residuals log(pred) - log(obs) and their Jacobian for theta = (logE, logB, beta, logR*[, logA, alpha])."""

    def __init__(self, n: np.ndarray, u: np.ndarray, epochs: np.ndarray, loss: np.ndarray, with_n: bool):
        self.log_n, self.u, self.r_d = np.log(n), u, epochs - 1.0
        self.log_loss, self.with_n = np.log(loss), with_n

    def _terms(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        r_star = np.exp(theta[3])
        sat = -np.expm1(-self.r_d / r_star)  # 1 - exp(-R_D / R*)
        d_prime = self.u * (1.0 + r_star * sat)
        # d log D' / d log R* = R* dD'/dR* / D'
        dlogd = r_star * self.u * (sat - (self.r_d / r_star) * np.exp(-self.r_d / r_star)) / d_prime
        terms = [np.full_like(self.u, theta[0]), theta[1] - theta[2] * np.log(d_prime)]
        if self.with_n:
            terms.append(theta[4] - theta[5] * self.log_n)
        return np.vstack(terms), np.log(d_prime), dlogd

    def residuals(self, theta: np.ndarray) -> np.ndarray:
        terms, _, _ = self._terms(theta)
        return logsumexp(terms, axis=0) - self.log_loss

    def jacobian(self, theta: np.ndarray) -> np.ndarray:
        terms, log_d, dlogd = self._terms(theta)
        w = np.exp(terms - logsumexp(terms, axis=0))  # each term's share of the predicted loss
        cols = [w[0], w[1], -w[1] * log_d, -theta[2] * w[1] * dlogd]
        if self.with_n:
            cols += [w[2], -w[2] * self.log_n]
        return np.column_stack(cols)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        top = float(self.log_loss.max())
        lo = [-20.0, _LOG_COEF_BOUNDS[0], _EXP_BOUNDS[0], np.log(_R_STAR_BOUNDS[0])]
        hi = [top, _LOG_COEF_BOUNDS[1], _EXP_BOUNDS[1], np.log(_R_STAR_BOUNDS[1])]
        if self.with_n:
            lo += [_LOG_COEF_BOUNDS[0], _EXP_BOUNDS[0]]
            hi += [_LOG_COEF_BOUNDS[1], _EXP_BOUNDS[1]]
        return np.array(lo), np.array(hi)

    def grid_starts(self, n_starts: int) -> list[np.ndarray]:
        """Best (alpha, beta, R*) grid points, with (E, A, B) from non-negative least squares on loss."""
        loss = np.exp(self.log_loss)
        n_pow = np.exp(-np.outer(_GRID_EXPONENT, self.log_n)) if self.with_n else None
        scored: list[tuple[float, np.ndarray]] = []
        for r_star in _GRID_R_STAR:
            log_d = np.log(effective_data(self.u, self.r_d + 1.0, r_star))
            for beta in _GRID_EXPONENT:
                base = [np.ones_like(loss), np.exp(-beta * log_d)]
                for j, alpha in enumerate(_GRID_EXPONENT if self.with_n else [None]):
                    x = np.column_stack(base + ([n_pow[j]] if self.with_n else []))
                    scale = x.mean(axis=0)
                    coef, rnorm = optimize.nnls(x / scale, loss)
                    coef = np.maximum(coef / scale, 0.01 * loss.mean() / scale)  # keep every term alive
                    theta = [np.log(coef[0]), np.log(coef[1]), beta, np.log(r_star)]
                    if self.with_n:
                        theta += [np.log(coef[2]), alpha]
                    scored.append((rnorm, np.array(theta)))
        scored.sort(key=lambda item: item[0])
        return [theta for _, theta in scored[:n_starts]]

    def solve(self, x0: np.ndarray, huber_delta: float) -> optimize.OptimizeResult:
        lo, hi = self.bounds()
        span = hi - lo
        x0 = np.clip(x0, lo + 1e-9 * span, hi - 1e-9 * span)
        return optimize.least_squares(
            self.residuals, x0, jac=self.jacobian, bounds=(lo, hi), loss="huber", f_scale=huber_delta, method="trf"
        )


def _bootstrap_r_star(
    points: pd.DataFrame, with_n: bool, theta: np.ndarray, n_bootstrap: int, huber_delta: float, seed: int
) -> float | None:
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n_bootstrap):
        resampled = points.iloc[rng.integers(0, len(points), len(points))]
        if resampled["epochs"].nunique() < 3:
            continue
        problem = _Problem(*_arrays(resampled), with_n)
        samples.append(float(np.exp(problem.solve(theta, huber_delta).x[3])))
    if len(samples) < 10:
        return None
    lo, hi = np.percentile(samples, [15.865, 84.135])
    return float((hi - lo) / 2.0)


def _arrays(points: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return (
        points["non_embedding_params"].to_numpy(float),
        points["unique_tokens"].to_numpy(float),
        points["epochs"].to_numpy(float),
        points["val_loss"].to_numpy(float),
    )


def fit_data_constrained(
    points: pd.DataFrame,
    objective: str,
    *,
    fit_points: FitPoints = "up_to_best",
    n_bootstrap: int = 200,
    huber_delta: float = 1e-3,
    seed: int = 0,
) -> LawFit:
    """Fit Muennighoff's law to one objective's points (one attention kind; see module docstring).

    Returns nulls and a ``note`` (no exception) when the points cannot determine the law: fewer
    than (number of parameters + 2) points or fewer than 3 distinct epoch counts.
    """
    own = points[points["objective"] == objective]
    chosen = own[select_fit_points(own, fit_points)]
    with_n = chosen["non_embedding_params"].nunique() > 1
    n_params = 6 if with_n else 4
    empty = LawFit(objective, None, None, None, None, None, None, None, len(chosen), len(own) - len(chosen), fit_points)
    if len(chosen) < n_params + 2 or chosen["epochs"].nunique() < 3:
        note = (
            f"too few points to fit: {len(chosen)} points at {chosen['epochs'].nunique()} epoch counts "
            f"(need >= {n_params + 2} points and >= 3 epoch counts)"
        )
        return replace(empty, note=note)

    problem = _Problem(*_arrays(chosen), with_n)
    best = min((problem.solve(x0, huber_delta) for x0 in problem.grid_starts(_N_STARTS)), key=lambda r: r.cost)
    theta = best.x
    r_star = float(np.exp(theta[3]))
    err = _bootstrap_r_star(chosen, with_n, theta, n_bootstrap, huber_delta, seed) if n_bootstrap else None
    notes = []
    if not with_n:
        notes.append("single N: A/N^alpha folded into E (A, alpha not identifiable)")
    if r_star > 0.99 * _R_STAR_BOUNDS[1]:
        notes.append(f"R_D* at the fit bound {_R_STAR_BOUNDS[1]:.0e}: no saturation of repeated data visible")
    return LawFit(
        objective,
        E=float(np.exp(theta[0])),
        A=float(np.exp(theta[4])) if with_n else None,
        alpha=float(theta[5]) if with_n else None,
        B=float(np.exp(theta[1])),
        beta=float(theta[2]),
        R_D_star=r_star,
        R_D_star_err=err,
        n_points=len(chosen),
        n_excluded=len(own) - len(chosen),
        fit_points=fit_points,
        note="; ".join(notes) or None,
    )


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
    evaluated compute when diffusion is below AR best at its smallest compute), or first evaluated."""
    if estimate not in ("interpolated", "first"):
        raise ValueError(f"estimate must be 'interpolated' or 'first', got {estimate!r}")
    if estimate == "interpolated" and crossover.flops_interp is not None:
        return crossover.flops_interp
    return crossover.flops


def fit_c_crit(crossovers: list[Crossover], estimate: CrossoverEstimate = "interpolated") -> PowerLawFit | None:
    """C_crit = c U**k over the budgets with a crossover (C in FLOPs, U in raw tokens).

    The default fits the log-interpolated crossover: on an epoch grid shared by all budgets the
    first evaluated compute is quantised to the grid and pulls the exponent towards 1.
    """
    found = [(c.unique_tokens, crossover_estimate(c, estimate)) for c in crossovers if c.flops is not None]
    return fit_power_law(np.array([u for u, _ in found], dtype=float), np.array([c for _, c in found], dtype=float))


def analyse(
    points: pd.DataFrame,
    attention: str,
    *,
    fit_points: FitPoints = "up_to_best",
    n_bootstrap: int = 200,
    seed: int = 0,
) -> Analysis:
    """Law fits per objective, crossovers per budget and the C_crit fit for one attention kind."""
    pts = points[points["attention"] == attention]
    if pts.empty:
        raise ValueError(f"no points with attention {attention!r}; present: {sorted(points['attention'].unique())}")
    laws = {
        objective: fit_data_constrained(pts, objective, fit_points=fit_points, n_bootstrap=n_bootstrap, seed=seed)
        for objective in OBJECTIVES
    }
    crossovers = find_crossovers(pts, attention)
    return Analysis(attention, laws, crossovers, fit_c_crit(crossovers))


def fit_table(
    path_or_df: str | os.PathLike[str] | pd.DataFrame,
    *,
    attention: str | None = None,
    fit_points: FitPoints = "up_to_best",
    n_bootstrap: int = 200,
    seed: int = 0,
) -> dict[str, object]:
    """Fit a results table and return the JSON-serialisable summary.

    Shape: ``{"ar": {R_D_star, R_D_star_err, E, A, alpha, B, beta[, note]}, "diffusion": {...},
    "crossover": [{"unique_tokens": U, "flops": C or None}, ...], "c_crit_exponent": k or None}``.
    ``attention`` picks the attention kind; by default the table's only kind, or "dense" when
    several are present (else the first in sorted order).
    """
    df = validate_results(path_or_df) if isinstance(path_or_df, pd.DataFrame) else load_results(path_or_df)
    points = aggregate_points(df)
    kind = attention if attention is not None else default_attention(points["attention"])
    return analyse(points, kind, fit_points=fit_points, n_bootstrap=n_bootstrap, seed=seed).to_json()
