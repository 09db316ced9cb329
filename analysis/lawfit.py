"""Fitting the data-constrained law (``analysis.law``) to one family's points.

**Objective.** Muennighoff et al.'s: parameters in fit coordinates
theta = (log E, log A, alpha, log B, beta, log R_D*, log R_N*); the prediction is computed as
log L = logsumexp(log E, log A - alpha log N', log B - beta log D') and the Huber loss
(delta = 1e-3) of log(predicted) - log(observed) is minimised with ``scipy.optimize.least_squares``
(trust-region reflective, box bounds ``BOUNDS``, analytic Jacobian ``log_predict_jacobian``), from
the best few points of a start grid on which (E, A, B) are linear and solved by non-negative least
squares (taking N' = N there), each refined from R_N* = 1e4 and 10 when R_N* is free.

**Protocols** (``protocol=``):

* ``"two_stage"`` (default; Muennighoff et al., Prabhudesai et al.). Stage 1 fits E, A, alpha, B,
  beta on the single-epoch points (tokens seen D <= U, so R_D = 0 and D' = D). Models above
  compute-optimal size have N' < N even in one epoch, so stage 1 keeps R_N* free as a nuisance
  parameter (R_N* -> inf is the papers' stage-1 law E + A/N^alpha + B/D^beta) and discards it.
  Stage 2 fixes E, A, alpha, B, beta and fits R_D* and R_N* to all selected points. When the
  single-epoch points cannot determine stage 1 (fewer than its parameters + 2, or fewer than two
  distinct D, or than two distinct N) the fit falls back to one-stage and says so
  (``protocol_used`` and a note). ``base=`` (a ``LawParams`` with E, A, alpha, B, beta, e.g. from
  a single-epoch sweep) replaces stage 1: ``protocol_used = "fixed_base"``, no error on those five.
* ``"one_stage"``: all seven parameters free on all selected points.

With a single N among the points, A / N'**alpha cannot be told from E: it is folded into E, and
A, alpha, R_N* are reported as unidentified (``None``), unless ``base=`` gives A and alpha.

**Uncertainty.** A nonparametric bootstrap over runs: the fit's curves (``analysis.results``:
one run, or the seeds of one run configuration) are resampled with replacement, never points of
one run, and the whole protocol is refitted from the best estimate. ``ci68`` and ``ci95`` are the
central 68 % and 95 % intervals; ``err`` is half the width of the 68 % one (one SD for a normal
distribution, robust to long tails), given only when that interval is closed and no wider than the
value itself (err <= value / 2); otherwise the interval is the result. It needs at least
``MIN_BOOTSTRAP_RUNS`` runs.

**Bounds and degeneracy.** A parameter within 0.1 % of its box (in fit coordinates) is *at bound*:
its value is the bound, it has no error bar, and its interval side is open (``None``); an interval
whose 16th/84th percentile reaches a bound is open on that side and has no ``err`` either. A fit is
``"degenerate"`` (not drawn as a law) when one of E, A, alpha, B, beta is at a bound (e.g. E -> 0,
beta -> 0: a straight line in log D) or the law explains less than half the loss variance
(R^2 < 0.5, e.g. a monotone law through points that turn up). R* at a bound gives status
``"at_bound"``: the law is drawn, R* is only a one-sided limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import pandas as pd
from scipy import optimize

from analysis.law import LawParams, effective_data, predict, unique_seen

Protocol = Literal["two_stage", "one_stage"]
NAMES: tuple[str, ...] = ("E", "A", "alpha", "B", "beta", "R_D_star", "R_N_star")
_LOG = np.array([True, True, False, True, False, True, True])
_BASE = ("E", "A", "alpha", "B", "beta")

#: Box of each parameter (natural units; E's upper end is the smallest observed loss).
BOUNDS: dict[str, tuple[float, float]] = {
    "E": (1e-4, 1.0),  # times the smallest observed loss
    "A": (math.exp(-30.0), math.exp(90.0)),
    "alpha": (0.01, 3.0),
    "B": (math.exp(-30.0), math.exp(90.0)),
    "beta": (0.01, 3.0),
    "R_D_star": (1e-2, 1e5),
    "R_N_star": (1e-2, 1e5),
}
HUBER_DELTA = 1e-3
MIN_BOOTSTRAP_RUNS = 5
_AT_BOUND_FRACTION = 1e-3
_MIN_R2 = 0.5
_GRID_R_STAR = np.logspace(0, 4, 9)
_GRID_EXPONENT = np.linspace(0.05, 1.2, 9)
_N_STARTS = 3


# --------------------------------------------------------------------------- data and model
@dataclass(frozen=True)
class FitData:
    """Arrays of the points one fit uses: N (non-embedding), U and D (tokens), loss (nats/token), run id."""

    n: np.ndarray
    u: np.ndarray
    d: np.ndarray
    loss: np.ndarray
    curve: np.ndarray

    @classmethod
    def from_points(cls, points: pd.DataFrame) -> FitData:
        return cls(*(points[c].to_numpy(float) for c in ("non_embedding_params", "unique_tokens", "tokens_seen",
                                                          "val_loss")), points["curve"].to_numpy())

    def take(self, index: np.ndarray) -> FitData:
        return FitData(self.n[index], self.u[index], self.d[index], self.loss[index], self.curve[index])

    @property
    def single_epoch(self) -> np.ndarray:
        return self.d <= self.u * (1.0 + 1e-9)


def to_params(theta: np.ndarray, with_n: bool) -> LawParams:
    """Natural parameters from fit coordinates; without an N term A = 0 (the law's N term vanishes)."""
    v = np.where(_LOG, np.exp(theta), theta)
    values = dict(zip(NAMES, v.tolist()))
    if not with_n:
        values.update(A=0.0, alpha=1.0, R_N_star=math.inf)
    return LawParams(**values)


def to_theta(p: LawParams) -> np.ndarray:
    """Fit coordinates of ``p`` (an absent N term or infinite R* are mapped to finite placeholders)."""
    values = p.to_dict()
    values["A"] = values["A"] or 1.0
    for name in ("R_D_star", "R_N_star"):
        values[name] = min(values[name], BOUNDS[name][1])
    v = np.array([values[name] for name in NAMES], dtype=float)
    return np.where(_LOG, np.log(v), v)


def _saturation(r: np.ndarray, r_star: float) -> tuple[np.ndarray, np.ndarray]:
    """S = R* (1 - exp(-R/R*)) and dS / d log R* = S - R exp(-R/R*)."""
    s = r_star * -np.expm1(-r / r_star)
    return s, s - r * np.exp(-r / r_star)


def _param_term(theta: np.ndarray, data: FitData, log_u_d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log A - alpha log N' and its derivatives in theta (7 x points); N' from U_N = min(N, N_opt(U_D))."""
    log_a, alpha, log_b, beta = theta[1], theta[2], theta[3], theta[4]
    r_n_star = math.exp(theta[6])
    log_n = np.log(data.n)
    log_n_opt = (math.log(alpha / beta) + log_a - log_b + beta * log_u_d) / alpha
    clipped = np.clip(log_n_opt, 0.0, 700.0)  # N_opt >= 1 parameter
    excess = log_n > clipped
    log_u_n = np.where(excess, clipped, log_n)
    r_n = np.maximum(np.exp(log_n - log_u_n) - 1.0, 0.0)
    s_n, ds_n = _saturation(r_n, r_n_star)
    log_n_prime = log_u_n + np.log1p(s_n)
    # d log N' / d log U_N = 1 - exp(-R_N/R_N*) (R_N + 1) / (1 + S) where U_N = N_opt, else 0
    live = excess & (log_n_opt == clipped)
    chain = np.where(live, 1.0 - np.exp(-r_n / r_n_star) * (r_n + 1.0) / (1.0 + s_n), 0.0)
    grad = np.zeros((len(NAMES), data.n.size))
    for i, d_log_n_opt in ((1, 1.0 / alpha), (2, (1.0 / alpha - log_n_opt) / alpha), (3, -1.0 / alpha),
                           (4, (log_u_d - 1.0 / beta) / alpha)):
        grad[i] = -alpha * chain * d_log_n_opt
    grad[1] += 1.0
    grad[2] -= log_n_prime
    grad[6] = -alpha * ds_n / (1.0 + s_n)
    return log_a - alpha * log_n_prime, grad


def _model(theta: np.ndarray, data: FitData, with_n: bool) -> tuple[np.ndarray, np.ndarray]:
    """The law's terms in log space (terms x points) and their derivatives in theta (terms x 7 x points)."""
    u_d = unique_seen(data.u, data.d)
    s_d, ds_d = _saturation(data.d / u_d - 1.0, math.exp(theta[5]))
    log_u_d = np.log(u_d)
    log_d = log_u_d + np.log1p(s_d)
    grads = np.zeros((3 if with_n else 2, len(NAMES), data.u.size))
    grads[0, 0] = 1.0
    grads[1, 3], grads[1, 4], grads[1, 5] = 1.0, -log_d, -theta[4] * ds_d / (1.0 + s_d)
    terms = [np.full_like(data.u, theta[0]), theta[3] - theta[4] * log_d]
    if with_n:
        term, grads[2] = _param_term(theta, data, log_u_d)
        terms.append(term)
    return np.vstack(terms), grads


def _logsumexp(terms: np.ndarray) -> np.ndarray:
    top = terms.max(axis=0)
    return top + np.log(np.exp(terms - top).sum(axis=0))


def log_predict(theta: np.ndarray, data: FitData, with_n: bool) -> np.ndarray:
    """log L(theta) at the data points, as a log-sum-exp of the law's terms."""
    return _logsumexp(_model(theta, data, with_n)[0])


def log_predict_jacobian(theta: np.ndarray, data: FitData, with_n: bool) -> np.ndarray:
    """d log L / d theta (points x 7): each term's derivative weighted by its share of the loss."""
    terms, grads = _model(theta, data, with_n)
    weights = np.exp(terms - _logsumexp(terms))
    return np.einsum("tp,tkp->pk", weights, grads)


def bounds(data: FitData) -> tuple[np.ndarray, np.ndarray]:
    """Box in fit coordinates for this data (E below the smallest observed loss)."""
    lo = np.array([BOUNDS[n][0] for n in NAMES], dtype=float)
    hi = np.array([BOUNDS[n][1] for n in NAMES], dtype=float)
    lo[0], hi[0] = lo[0] * data.loss.min(), hi[0] * data.loss.min()
    return np.where(_LOG, np.log(lo), lo), np.where(_LOG, np.log(hi), hi)


def huber_cost(residuals: np.ndarray, delta: float = HUBER_DELTA) -> float:
    """0.5 delta^2 sum rho((r/delta)^2) with rho(z) = z (z <= 1), 2 sqrt(z) - 1 (z > 1): least_squares' cost."""
    z = (residuals / delta) ** 2
    return float(0.5 * delta**2 * np.sum(np.where(z <= 1.0, z, 2.0 * np.sqrt(z) - 1.0)))


# --------------------------------------------------------------------------- one local solve
def solve(data: FitData, theta0: np.ndarray, free: np.ndarray, with_n: bool) -> tuple[np.ndarray, float]:
    """Minimise the Huber cost over the ``free`` coordinates from ``theta0``; returns (theta, cost)."""
    lo, hi = bounds(data)
    free_lo, free_hi = lo[free], hi[free]
    span = free_hi - free_lo
    x0 = np.clip(theta0[free], free_lo + 1e-6 * span, free_hi - 1e-6 * span)
    log_loss = np.log(data.loss)

    def full(x: np.ndarray) -> np.ndarray:
        theta = theta0.copy()
        theta[free] = x
        return theta

    def residuals(x: np.ndarray) -> np.ndarray:
        return log_predict(full(x), data, with_n) - log_loss

    def jacobian(x: np.ndarray) -> np.ndarray:
        return log_predict_jacobian(full(x), data, with_n)[:, free]

    result = optimize.least_squares(residuals, x0, jac=jacobian, bounds=(free_lo, free_hi), loss="huber",
                                    f_scale=HUBER_DELTA, method="trf", x_scale="jac", max_nfev=40 * int(free.sum()))
    theta = theta0.copy()
    theta[free] = result.x
    return theta, float(result.cost)


def _nnls_start(x: np.ndarray, loss: np.ndarray) -> tuple[float, np.ndarray]:
    """Non-negative coefficients of ``loss ~ x @ c`` (columns rescaled), every term kept alive."""
    scale = x.mean(axis=0)
    coef, rnorm = optimize.nnls(x / scale, loss)
    return float(rnorm), np.maximum(coef / scale, 0.01 * loss.mean() / scale)


def grid_starts(data: FitData, with_n: bool, r_d_grid: np.ndarray) -> list[np.ndarray]:
    """Best (R_D*, beta, alpha) grid points with (E, B, A) by NNLS on the loss, taking N' = N."""
    scored: list[tuple[float, np.ndarray]] = []
    alphas = _GRID_EXPONENT if with_n else [1.0]
    n_pow = {a: data.n ** -a for a in alphas}
    for r_star in r_d_grid:
        d_prime = effective_data(data.u, data.d, r_star)
        for beta in _GRID_EXPONENT:
            for alpha in alphas:
                cols = [np.ones_like(data.loss), d_prime**-beta] + ([n_pow[alpha]] if with_n else [])
                rnorm, c = _nnls_start(np.column_stack(cols), data.loss)
                a = c[2] if with_n else 1.0
                theta = np.array([np.log(c[0]), np.log(a), alpha, np.log(c[1]), beta, np.log(r_star), np.log(1e4)])
                scored.append((rnorm, theta))
    scored.sort(key=lambda item: item[0])
    return [theta for _, theta in scored[:_N_STARTS]]


def multistart(data: FitData, starts: list[np.ndarray], free: np.ndarray, with_n: bool,
               r_n_starts: tuple[float, ...] = (1e4, 10.0)) -> np.ndarray:
    """Lowest-cost local solve over the starts (each tried with every R_N* start when R_N* is free)."""
    best, best_cost = starts[0], math.inf
    for theta0 in starts:
        for r_n in r_n_starts if free[6] and r_n_starts else (None,):
            start = theta0.copy()
            if r_n is not None:
                start[6] = math.log(r_n)
            theta, cost = solve(data, start, free, with_n)
            if cost < best_cost:
                best, best_cost = theta, cost
    return best


def stage2_starts(data: FitData, base: np.ndarray, with_n: bool) -> list[np.ndarray]:
    """Best (R_D*, R_N*) points of a log grid for the Huber cost with the base parameters fixed."""
    log_loss = np.log(data.loss)
    grid = np.log(np.logspace(-1, 5, 13))
    scored = []
    for r_d in grid:
        for r_n in grid if with_n else grid[-1:]:
            theta = base.copy()
            theta[5], theta[6] = r_d, r_n
            scored.append((huber_cost(log_predict(theta, data, with_n) - log_loss), theta))
    scored.sort(key=lambda item: item[0])
    return [theta for _, theta in scored[:3]]


# --------------------------------------------------------------------------- protocols
def free_mask(names: tuple[str, ...]) -> np.ndarray:
    return np.array([name in names for name in NAMES])


def stage1_feasible(data: FitData, with_n: bool) -> str | None:
    """None when the single-epoch points can determine stage 1, else the reason they cannot."""
    one = data.take(data.single_epoch)
    k = 6 if with_n else 3
    n_d, n_n = np.unique(one.d).size, np.unique(one.n).size
    if one.loss.size < k + 2 or n_d < 2 or (with_n and n_n < 2):
        return (f"stage 1 needs >= {k + 2} single-epoch points (D <= U) at >= 2 token counts"
                + (" and >= 2 model sizes" if with_n else "") + f"; found {one.loss.size} at {n_d} token counts"
                + (f" and {n_n} sizes" if with_n else ""))
    return None


def fit_two_stage(data: FitData, with_n: bool, start: tuple[np.ndarray, np.ndarray] | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(stage-1 theta, final theta). ``start`` (a previous result) skips the start grids (bootstrap)."""
    one = data.take(data.single_epoch)
    free1 = free_mask(("E", "A", "alpha", "B", "beta", "R_N_star") if with_n else ("E", "B", "beta"))
    if start is None:
        theta1 = multistart(one, grid_starts(one, with_n, _GRID_R_STAR[:1]), free1, with_n)
    else:
        theta1, _ = solve(one, start[0], free1, with_n)
    theta2 = fit_stage2(data, theta1, with_n, None if start is None else start[1])
    return theta1, theta2


def fit_stage2(data: FitData, base: np.ndarray, with_n: bool, start: np.ndarray | None = None) -> np.ndarray:
    """R_D* (and R_N* with an N term) with E, A, alpha, B, beta fixed at ``base``."""
    free = free_mask(("R_D_star", "R_N_star") if with_n else ("R_D_star",))
    if start is not None:
        theta0 = base.copy()
        theta0[5:] = start[5:]
        return solve(data, theta0, free, with_n)[0]
    return multistart(data, stage2_starts(data, base, with_n), free, with_n, r_n_starts=())


def fit_one_stage(data: FitData, with_n: bool, start: np.ndarray | None = None) -> np.ndarray:
    """Every parameter free (four without an N term: E, B, beta, R_D*)."""
    free = free_mask(NAMES if with_n else ("E", "B", "beta", "R_D_star"))
    if start is not None:
        return solve(data, start, free, with_n)[0]
    return multistart(data, grid_starts(data, with_n, _GRID_R_STAR), free, with_n)


@dataclass(frozen=True)
class Plan:
    """What one fit does: the protocol used, whether it has an N term, its free parameters, a fixed base."""

    protocol: str
    with_n: bool
    free: tuple[str, ...]
    base: np.ndarray | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def run(self, data: FitData, start: tuple[np.ndarray, np.ndarray] | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
        """(stage-1 theta, final theta); for one-stage and fixed-base fits both are the final theta."""
        if self.protocol == "two_stage":
            return fit_two_stage(data, self.with_n, start)
        if self.protocol == "fixed_base":
            theta = fit_stage2(data, self.base, self.with_n, None if start is None else start[1])
        else:
            theta = fit_one_stage(data, self.with_n, None if start is None else start[1])
        return theta, theta


def make_plan(data: FitData, protocol: Protocol, base: LawParams | None) -> Plan:
    """Choose the protocol actually used (module docstring) and its free parameters."""
    if protocol not in ("two_stage", "one_stage"):
        raise ValueError(f"protocol must be 'two_stage' or 'one_stage', got {protocol!r}")
    if base is not None:
        if protocol == "one_stage":
            raise ValueError("a fixed base law (E, A, alpha, B, beta) goes with the two-stage protocol only")
        return Plan("fixed_base", True, ("R_D_star", "R_N_star"), to_theta(base))
    with_n = np.unique(data.n).size > 1
    notes = () if with_n else ("single N: A/N'^alpha folded into E (A, alpha, R_N* not identifiable)",)
    one_stage = Plan("one_stage", with_n, NAMES if with_n else ("E", "B", "beta", "R_D_star"), notes=notes)
    if protocol == "one_stage":
        return one_stage
    reason = stage1_feasible(data, with_n)
    if reason is not None:
        return Plan("one_stage", with_n, one_stage.free, notes=(*notes, f"{reason}: fitted one-stage instead"))
    return Plan("two_stage", with_n, tuple(n for n in NAMES if with_n or n in ("E", "B", "beta", "R_D_star")),
                notes=notes)


def predict_theta(theta: np.ndarray, data: FitData, with_n: bool) -> np.ndarray:
    return predict(data.n, data.u, data.d, to_params(theta, with_n))


# --------------------------------------------------------------------------- estimates and their quality
@dataclass(frozen=True)
class Estimate:
    """One parameter: value (None if not identified), 68 % half-width, 68 % and 95 % intervals (None on a
    side that reaches a bound), the bound the value sits on, whether it was fixed."""

    value: float | None
    err: float | None = None
    ci95: tuple[float | None, float | None] | None = None
    at_bound: str | None = None  # "lower" or "upper"
    fixed: bool = False
    ci68: tuple[float | None, float | None] | None = None

    def describe(self, fmt: str = ".4g") -> str:
        """'15.2 ± 0.41', '≥ 1e+05 (at bound)', '1.87 (fixed)', '304 (68 %: 150 to 9.7e+04)',
        '45 (68 %: 24 to open)' or 'n/a'."""
        if self.value is None:
            return "n/a"
        value = format(self.value, fmt)
        if self.fixed:
            return f"{value} (fixed)"
        if self.at_bound:
            return f"{'≥' if self.at_bound == 'upper' else '≤'} {value} (at bound)"
        if self.err is not None:
            return f"{value} ± {self.err:.2g}"
        if self.ci68 is not None:
            lo, hi = ("open" if x is None else format(x, ".3g") for x in self.ci68)
            return f"{value} (68 %: {lo} to {hi})"
        return value


@dataclass(frozen=True)
class LawFit:
    """The fitted law of one family (see the module docstring for every field's meaning)."""

    family: str
    status: str  # "ok", "at_bound", "degenerate" or "no_fit"
    protocol: str  # requested
    protocol_used: str | None  # "two_stage", "one_stage", "fixed_base" (None without a fit)
    fit_points: str
    estimates: dict[str, Estimate]
    law: LawParams | None  # None when there is no fit; also drawn only when ``drawable``
    n_points: int
    n_excluded: int
    n_runs: int
    n_single_epoch: int
    n_bootstrap: int = 0
    r2: float | None = None
    rmse_log: float | None = None
    notes: tuple[str, ...] = ()
    samples: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    @property
    def drawable(self) -> bool:
        """Whether the law may be drawn as a description of the data (not degenerate, fitted)."""
        return self.law is not None and self.status in ("ok", "at_bound")

    def value(self, name: str) -> float | None:
        est = self.estimates.get(name)
        return None if est is None else est.value

    def bootstrap_laws(self) -> list[LawParams]:
        """The law of each bootstrap refit, in refit order (empty without refits); without an N term, A = 0
        as in the fit itself."""
        if self.law is None or not self.samples:
            return []
        size = len(next(iter(self.samples.values())))
        laws = [LawParams(**{n: float(self.samples[n][i]) for n in NAMES}) for i in range(size)]
        if self.law.A == 0:
            laws = [replace(p, A=0.0, alpha=1.0, R_N_star=math.inf) for p in laws]
        return laws

    def predict(self, params: np.ndarray, unique_tokens: np.ndarray, tokens_seen: np.ndarray) -> np.ndarray:
        """Loss (nats/token) of the fitted law at N (non-embedding), U and D = tokens seen (tokens)."""
        if self.law is None:
            raise ValueError(f"no fitted law for {self.family}: {'; '.join(self.notes)}")
        return predict(params, unique_tokens, tokens_seen, self.law)

    def to_json(self) -> dict[str, object]:
        """Plain floats, ints, strings, lists and None: values, errors, intervals and the fit's bookkeeping."""
        out: dict[str, object] = {"status": self.status, "protocol": self.protocol,
                                  "protocol_used": self.protocol_used, "fit_points": self.fit_points}
        for name in NAMES:
            est = self.estimates.get(name, Estimate(None))
            out[name], out[f"{name}_err"] = _num(est.value), _num(est.err)
        out["ci68"] = {n: [_num(e.ci68[0]), _num(e.ci68[1])] for n, e in self.estimates.items() if e.ci68}
        out["ci95"] = {n: [_num(e.ci95[0]), _num(e.ci95[1])] for n, e in self.estimates.items() if e.ci95}
        out["at_bound"] = {n: e.at_bound for n, e in self.estimates.items() if e.at_bound}
        out["fixed"] = [n for n, e in self.estimates.items() if e.fixed]
        out["unidentified"] = [n for n in NAMES if self.estimates.get(n, Estimate(None)).value is None]
        out.update(n_points=self.n_points, n_excluded=self.n_excluded, n_runs=self.n_runs,
                   n_single_epoch=self.n_single_epoch, n_bootstrap=self.n_bootstrap,
                   r2=_num(self.r2), rmse_log=_num(self.rmse_log), note="; ".join(self.notes) or None)
        return out


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _at_bound(theta: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> list[str | None]:
    tol = _AT_BOUND_FRACTION * (hi - lo)
    return ["lower" if t <= low + d else "upper" if t >= high - d else None
            for t, low, high, d in zip(theta, lo, hi, tol)]


def resample_runs(curve: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Row indices of one bootstrap sample: as many runs as there are, drawn with replacement, each with
    all of its points (never points of one run apart from the others)."""
    runs = np.unique(curve)
    members = {c: np.flatnonzero(curve == c) for c in runs}
    return np.concatenate([members[c] for c in rng.choice(runs, runs.size)])


def bootstrap(data: FitData, plan: Plan, best: tuple[np.ndarray, np.ndarray], n_bootstrap: int,
              seed: int) -> np.ndarray:
    """Final thetas of refits on runs resampled with replacement (rows: successful replicates)."""
    rng = np.random.default_rng(seed)
    thetas = []
    for _ in range(n_bootstrap):
        sample = data.take(resample_runs(data.curve, rng))
        if not _feasible(sample, plan):
            continue
        thetas.append(plan.run(sample, best)[1])
    return np.array(thetas).reshape(-1, len(NAMES))


def _feasible(data: FitData, plan: Plan) -> bool:
    if np.unique(data.d / data.u).size < 3 or not (data.d > data.u * (1 + 1e-9)).any():
        return False
    if plan.protocol == "one_stage" and plan.with_n and np.unique(data.n).size < 2:
        return False
    return plan.protocol != "two_stage" or stage1_feasible(data, plan.with_n) is None


def _interval(samples: np.ndarray, lo: float, hi: float, log: bool) -> tuple[tuple, tuple]:
    """(68 %, 95 %) central intervals in natural units from fit-coordinate samples; a side that reaches
    a bound (within 0.1 % of the box) is open (None)."""
    tol = _AT_BOUND_FRACTION * (hi - lo)
    nat = np.exp if log else (lambda x: x)

    def side(p: float) -> float | None:
        return None if p <= lo + tol or p >= hi - tol else float(nat(p))

    p2, p16, p84, p97 = np.percentile(samples, [2.5, 15.865, 84.135, 97.5])
    return (side(p16), side(p84)), (side(p2), side(p97))


def _half_width(value: float, ci68: tuple) -> float | None:
    """Half the 68 % width when the interval is closed and err <= value / 2 (a usable symmetric error)."""
    if None in ci68:
        return None
    err = (ci68[1] - ci68[0]) / 2.0
    return err if err <= 0.5 * abs(value) else None


def _identified(theta: np.ndarray, data: FitData, plan: Plan) -> dict[str, bool]:
    """Which parameters the data determine: no N term -> not A, alpha, R_N*; no excess model -> not R_N*."""
    known = {name: True for name in NAMES}
    if not plan.with_n:
        known.update(A=False, alpha=False, R_N_star=False)
    else:
        p = to_params(theta, True)
        n_opt = np.exp((math.log(p.alpha * p.A / (p.beta * p.B)) + p.beta * np.log(unique_seen(data.u, data.d)))
                       / p.alpha)
        known["R_N_star"] = bool((data.n > n_opt * (1 + 1e-6)).any())
    return known


def _too_few(data: FitData, plan: Plan) -> str | None:
    """Why the points cannot determine this plan's fit, or None."""
    k = 2 if plan.protocol in ("two_stage", "fixed_base") else len(plan.free)
    n_epochs = np.unique(np.round(data.d / data.u, 9)).size
    repeated = int((data.d > data.u * (1 + 1e-9)).sum())
    if data.loss.size < k + 2 or n_epochs < 3 or not repeated:
        return (f"too few points to fit: {data.loss.size} points at {n_epochs} epoch counts, {repeated} with "
                f"repeated data (need >= {k + 2} points, >= 3 epoch counts and repeated data)")
    return None


def fit_law(chosen: pd.DataFrame, family: str, *, n_excluded: int = 0, fit_points: str = "up_to_best",
            protocol: Protocol = "two_stage", base: LawParams | None = None, n_bootstrap: int = 200,
            seed: int = 0) -> LawFit:
    """Fit the law to one family's selected points (seed means; ``analysis.results.aggregate_points``).

    Never raises for data that cannot determine the law: returns ``status="no_fit"`` with a note.
    """
    data = FitData.from_points(chosen)
    counts = dict(n_points=int(data.loss.size), n_excluded=int(n_excluded), n_runs=int(np.unique(data.curve).size),
                  n_single_epoch=int(data.single_epoch.sum()))
    empty = LawFit(family, "no_fit", protocol, None, fit_points, {}, None, **counts)
    if data.loss.size == 0:
        return replace(empty, notes=("no points",))
    plan = make_plan(data, protocol, base)
    if (reason := _too_few(data, plan)) is not None:
        return replace(empty, notes=(*plan.notes, reason))
    best = plan.run(data)
    notes = list(plan.notes)
    thetas = np.empty((0, len(NAMES)))
    if n_bootstrap > 0 and counts["n_runs"] < MIN_BOOTSTRAP_RUNS:
        notes.append(f"no bootstrap errors: {counts['n_runs']} runs (needs >= {MIN_BOOTSTRAP_RUNS})")
    elif n_bootstrap > 0:
        thetas = bootstrap(data, plan, best, n_bootstrap, seed)
        if len(thetas) < max(10, n_bootstrap // 2):
            notes.append(f"no bootstrap errors: only {len(thetas)} of {n_bootstrap} resamples could be fitted")
            thetas = np.empty((0, len(NAMES)))
    fit = LawFit(family, "ok", protocol, plan.protocol, fit_points, {}, to_params(best[1], plan.with_n),
                 n_bootstrap=len(thetas), **counts)
    return assess(fit, data, plan, best[1], thetas, notes)


def _estimates(data: FitData, plan: Plan, theta: np.ndarray, thetas: np.ndarray) -> dict[str, Estimate]:
    lo, hi = bounds(data)
    at = _at_bound(theta, lo, hi)
    known = _identified(theta, data, plan)
    out: dict[str, Estimate] = {}
    for i, name in enumerate(NAMES):
        if not known[name]:
            out[name] = Estimate(None)
            continue
        value = float(np.exp(theta[i]) if _LOG[i] else theta[i])
        if plan.protocol == "fixed_base" and name in _BASE:
            out[name] = Estimate(value, fixed=True)
            continue
        ci68, ci95 = _interval(thetas[:, i], lo[i], hi[i], bool(_LOG[i])) if len(thetas) else (None, None)
        if at[i] is not None:  # the value is the bound: that side of any interval is open
            ci68, ci95 = (None if ci is None else ((None, ci[1]) if at[i] == "lower" else (ci[0], None))
                          for ci in (ci68, ci95))
        err = None if ci68 is None or at[i] is not None else _half_width(value, ci68)
        out[name] = Estimate(value, err, ci95, at[i], ci68=ci68)
    return out


def _weak(est: Estimate) -> bool:
    """A 68 % interval open on one side or wider than the value (no usable ± error)."""
    return est.value is not None and not est.fixed and est.ci68 is not None and est.err is None


def assess(fit: LawFit, data: FitData, plan: Plan, theta: np.ndarray, thetas: np.ndarray,
           notes: list[str]) -> LawFit:
    """Fill in estimates, R^2, bounds and the status (module docstring)."""
    estimates = _estimates(data, plan, theta, thetas)
    pred = predict_theta(theta, data, plan.with_n)
    ss_tot = float(np.sum((data.loss - data.loss.mean()) ** 2))
    r2 = 1.0 - float(np.sum((data.loss - pred) ** 2)) / ss_tot if ss_tot > 0 else None
    rmse_log = float(np.sqrt(np.mean((np.log(pred) - np.log(data.loss)) ** 2)))
    reasons = [f"{n} at its {e.at_bound} bound ({e.value:.3g})" for n, e in estimates.items()
               if n in _BASE and e.at_bound]
    if r2 is not None and r2 < _MIN_R2:
        reasons.append(f"the law explains only R^2 = {r2:.2f} of the loss variance")
    bounded = [n for n in ("R_D_star", "R_N_star") if estimates[n].at_bound]
    if reasons:
        status = "degenerate"
        notes.append("degenerate fit, not a law: " + ", ".join(reasons))
    elif bounded:
        status = "at_bound"
        notes += [f"{n} at its {estimates[n].at_bound} bound {estimates[n].value:.3g}: "
                  + ("repeats no better than nothing" if estimates[n].at_bound == "lower" else
                     "no saturation visible in these points (a lower limit)") for n in bounded]
    else:
        status = "ok"
    weak = [n for n in _BASE if _weak(estimates[n])]
    if plan.protocol == "two_stage" and weak:
        notes.append(f"stage 1 weakly determined by {fit.n_single_epoch} single-epoch points ({', '.join(weak)}: "
                     "open or wide interval); R* inherit it: fix E, A, alpha, B, beta from single-epoch runs "
                     "(base law) or fit one-stage")
    if plan.with_n and estimates["R_N_star"].value is None:
        notes.append("R_N* not identified: no model above its compute-optimal size N_opt(U)")
    samples = {n: (np.exp(thetas[:, i]) if _LOG[i] else thetas[:, i]) for i, n in enumerate(NAMES)}
    return replace(fit, status=status, estimates=estimates, r2=r2, rmse_log=rmse_log, notes=tuple(notes),
                   samples=samples if len(thetas) else {})
