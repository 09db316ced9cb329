"""Figures of the crossover analysis, all in the one project style (``crossover.mplstyle``).

Every function takes seed-averaged points of a single attention kind (``aggregate_points``) and
returns a ``matplotlib.figure.Figure`` built without pyplot's global figure registry; draw and
save inside ``style_context()``. Conventions: compute on a log x axis in FLOPs (C = 6ND, N
non-embedding), epochs on a log axis, one colour per unique budget from viridis sampled over
[0, 0.9], AR solid lines with circles, diffusion dashed lines with triangles.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import matplotlib
import matplotlib.style
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis.crossover import Crossover, frontier, prabhudesai_c_crit
from analysis.fits import FitPoints, LawFit, PowerLawFit, crossover_estimate, select_fit_points

STYLE_PATH = Path(__file__).with_name("crossover.mplstyle")
OBJECTIVE_LABEL = {"ar": "AR", "diffusion": "diffusion"}
LINESTYLE = {"ar": "-", "diffusion": "--"}
MARKER = {"ar": "o", "diffusion": "^"}
MODEL_MARKERS = ("o", "s", "D", "v", "P", "X", "h", "<")

COMPUTE_LABEL = "compute C = 6ND (FLOPs)"
LOSS_LABEL = "validation loss (nats/token)"
EPOCHS_LABEL = "epochs"
BUDGET_LABEL = "unique tokens U (raw tokens)"


@contextlib.contextmanager
def style_context() -> Iterator[None]:
    """Apply the project style (``plt.style.use`` scoped to the block) and restore rcParams after."""
    with matplotlib.style.context(STYLE_PATH):
        yield


def format_tokens(n: float) -> str:
    """Compact count: 25000000 -> '25M', 1.5e9 -> '1.5B', 500000 -> '500k'."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}"
    return f"{n:.3g}"


def format_sci(x: float) -> str:
    """Three significant digits, exponent without '+': 3.14e18."""
    return f"{x:.3g}".replace("e+", "e")


def budget_colors(budgets: Iterable[int]) -> dict[int, tuple[float, float, float, float]]:
    """One viridis colour per budget, ascending U sampled evenly over [0, 0.9]."""
    ordered = sorted(set(int(u) for u in budgets))
    cmap = matplotlib.colormaps["viridis"]
    stops = np.linspace(0.0, 0.9, len(ordered)) if len(ordered) > 1 else [0.0]
    return {u: cmap(s) for u, s in zip(ordered, stops)}


def _distinct(df: pd.DataFrame, *names: str) -> list[str]:
    """Sorted distinct values of the first of ``names`` present in ``df`` (diffusion rows only)."""
    rows = df[df["objective"] == "diffusion"]
    for name in names:
        if name in rows.columns:
            values = rows[name].dropna().unique()
            return [format(v, "g") if isinstance(v, float) else str(v) for v in sorted(values)]
    return []


def measurement_note(df: pd.DataFrame) -> str:
    """Title line stating the loss estimators, from the raw table's optional columns.

    Reads ``elbo_weight``, ``mask_eps`` (or ``eps``) and ``mc_samples`` when present; N is always
    the non-embedding parameter count (contract 3).
    """
    details = []
    if weight := _distinct(df, "elbo_weight"):
        details.append(f"weight {', '.join(weight)}")
    if eps := _distinct(df, "mask_eps", "eps"):
        details.append(f"eps={', '.join(eps)}")
    if mc := _distinct(df, "mc_samples"):
        details.append(f"{', '.join(mc)} MC samples")
    diffusion = "diffusion: ELBO bound" + (f" ({', '.join(details)})" if details else "")
    return f"AR: exact NLL; {diffusion}; N = non-embedding params"


def _attention(points: pd.DataFrame) -> str:
    return ", ".join(sorted(points["attention"].unique()))


def _grid(n_panels: int, width: float = 4.2, height: float = 3.3) -> tuple[Figure, list[Axes]]:
    ncols = min(n_panels, 3)
    nrows = -(-n_panels // ncols)
    fig = Figure(figsize=(width * ncols, height * nrows + 0.5), layout="constrained")
    axes = list(fig.subplots(nrows, ncols, squeeze=False).flat)
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def plot_loss_vs_compute(points: pd.DataFrame, crossovers: list[Crossover], *, note: str = "") -> Figure:
    """One panel per budget U: loss against compute, points and best-so-far frontier per objective.

    A dotted grey line marks AR's best loss; a vertical line marks the crossover compute.
    """
    budgets = sorted(points["unique_tokens"].unique())
    colors = budget_colors(budgets)
    by_budget = {c.unique_tokens: c for c in crossovers}
    fig, axes = _grid(len(budgets))
    for ax, budget in zip(axes, budgets):
        color = colors[int(budget)]
        at_u = points[points["unique_tokens"] == budget]
        for objective in ("ar", "diffusion"):
            own = at_u[at_u["objective"] == objective]
            if own.empty:
                continue
            ax.errorbar(own["flops"], own["val_loss"], yerr=own["se"], fmt=MARKER[objective], color=color,
                        alpha=0.35, markersize=3.5, linestyle="none")
            fr = frontier(own)
            ax.step(fr["flops"], fr["loss"], where="post", color=color, linestyle=LINESTYLE[objective],
                    label=f"{OBJECTIVE_LABEL[objective]} best-so-far")
        cross = by_budget.get(int(budget))
        if cross is not None and cross.ar_best is not None:
            ax.axhline(cross.ar_best, color="0.45", linestyle=":", linewidth=1.0, label="AR best")
        if cross is not None and cross.flops is not None:
            ax.axvline(cross.flops, color="black", linestyle=":", linewidth=1.0,
                       label=f"crossover {format_sci(cross.flops)}" + (" (2 SE)" if cross.significant else ""))
        ax.set_xscale("log")
        ax.set_xlabel(COMPUTE_LABEL)
        ax.set_ylabel(LOSS_LABEL)
        ax.set_title(f"U = {format_tokens(budget)} unique tokens")
        ax.legend(loc="best")
    fig.suptitle(f"{_attention(points)} attention: validation loss vs compute (best-so-far frontier)\n{note}")
    return fig


def plot_loss_vs_epochs(points: pd.DataFrame, *, note: str = "") -> Figure:
    """One panel per model: loss against epochs, a colour per budget, a star at each curve's minimum."""
    models = points.drop_duplicates("model").sort_values("non_embedding_params")
    colors = budget_colors(points["unique_tokens"])
    fig, axes = _grid(len(models))
    for ax, model in zip(axes, models.itertuples(index=False)):
        own = points[points["model"] == model.model]
        for (budget, objective), curve in own.groupby(["unique_tokens", "objective"]):
            curve = curve.sort_values("epochs")
            color = colors[int(budget)]
            ax.errorbar(curve["epochs"], curve["val_loss"], yerr=curve["se"], color=color,
                        linestyle=LINESTYLE[objective], marker=MARKER[objective], markersize=3)
            best = curve.loc[curve["val_loss"].idxmin()]
            ax.plot(best["epochs"], best["val_loss"], marker="*", markersize=11, color=color,
                    markeredgecolor="black", markeredgewidth=0.6, linestyle="none")
        ax.set_xscale("log")
        ax.set_xlabel(EPOCHS_LABEL)
        ax.set_ylabel(LOSS_LABEL)
        ax.set_title(f"{model.model}: N = {format_tokens(model.non_embedding_params)} non-embedding")
        handles = [Line2D([], [], color=c, label=f"U = {format_tokens(u)}") for u, c in colors.items()]
        handles += [Line2D([], [], color="black", linestyle=LINESTYLE[o], marker=MARKER[o], label=OBJECTIVE_LABEL[o])
                    for o in ("ar", "diffusion")]
        handles.append(Line2D([], [], color="white", marker="*", markersize=10, markeredgecolor="black",
                              linestyle="none", label="best epoch"))
        ax.legend(handles=handles, loc="upper right")
    fig.suptitle(f"{_attention(points)} attention: validation loss vs epochs\n{note}")
    return fig


def plot_c_crit(crossovers: list[Crossover], fit: PowerLawFit | None, *, note: str = "") -> Figure:
    """Critical compute against unique budget (log-log), with the fit and Prabhudesai's 192 U^2.174.

    Stars are the log-interpolated crossovers the fit uses, hollow circles the first evaluated
    compute. Budgets without a crossover show an upward triangle at the largest diffusion compute tried
    (a lower bound on C_crit).
    """
    colors = budget_colors(c.unique_tokens for c in crossovers)
    fig = Figure(figsize=(6.8, 4.6), layout="constrained")
    ax = fig.subplots()
    budgets = np.array([c.unique_tokens for c in crossovers], dtype=float)
    span = np.geomspace(budgets.min() / 2.0, budgets.max() * 2.0, 50)
    ax.plot(span, prabhudesai_c_crit(span), color="0.5", linestyle="--",
            label="Prabhudesai et al.: C = 192 U^2.174")
    if fit is not None:
        ax.plot(span, fit.predict(span), color="black",
                label=f"fit: C = {format_sci(fit.prefactor)} U^{fit.exponent:.3f}")
    for cross in crossovers:
        color = colors[cross.unique_tokens]
        if cross.flops is not None:
            ax.plot(cross.unique_tokens, cross.flops, marker="o", markersize=6, color=color,
                    markerfacecolor="none", linestyle="none")
            ax.plot(cross.unique_tokens, crossover_estimate(cross), marker="*", markersize=13, color=color,
                    markeredgecolor="black", markeredgewidth=0.6, linestyle="none")
        elif cross.max_diffusion_flops is not None and cross.ar_best is not None:
            ax.plot(cross.unique_tokens, cross.max_diffusion_flops, marker="^", markersize=8, color=color,
                    markerfacecolor="none", linestyle="none")
    ax.plot([], [], marker="*", markersize=11, color="0.6", markeredgecolor="black", linestyle="none",
            label="crossover, interpolated in log C (fitted)")
    ax.plot([], [], marker="o", markersize=6, color="0.4", markerfacecolor="none", linestyle="none",
            label="crossover, first evaluated compute")
    if any(c.flops is None and c.max_diffusion_flops is not None and c.ar_best is not None for c in crossovers):
        ax.plot([], [], marker="^", color="0.4", markerfacecolor="none", linestyle="none",
                label="no crossover up to this compute")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(BUDGET_LABEL)
    ax.set_ylabel("critical compute C_crit = 6ND (FLOPs)")
    ax.legend(loc="upper left")
    attention = ", ".join(sorted({c.attention for c in crossovers}))
    fig.suptitle(f"{attention} attention: compute where diffusion beats AR's best\n{note}")
    return fig


def plot_law_fit(points: pd.DataFrame, laws: dict[str, LawFit], *, fit_points: FitPoints, note: str = "") -> Figure:
    """One panel per objective: data against epochs and the fitted data-constrained law.

    Filled markers are fitted points, hollow ones were excluded (past their curve's best epoch);
    marker shape tells models apart, colour budgets.
    """
    colors = budget_colors(points["unique_tokens"])
    models = points.drop_duplicates("model").sort_values("non_embedding_params")["model"].tolist()
    markers = {m: MODEL_MARKERS[i % len(MODEL_MARKERS)] for i, m in enumerate(models)}
    fig, axes = _grid(2)
    for ax, objective in zip(axes, ("ar", "diffusion")):
        own = points[points["objective"] == objective]
        law = laws[objective]
        fitted = select_fit_points(own, fit_points)
        for (model, budget), curve in own.groupby(["model", "unique_tokens"]):
            color, marker = colors[int(budget)], markers[model]
            used = fitted.loc[curve.index]
            ax.plot(curve["epochs"][used], curve["val_loss"][used], marker=marker, color=color, linestyle="none")
            ax.plot(curve["epochs"][~used], curve["val_loss"][~used], marker=marker, color=color,
                    markerfacecolor="none", linestyle="none")
            if law.R_D_star is not None:
                grid = np.geomspace(1.0, curve["epochs"].max(), 100)
                n = curve["non_embedding_params"].iloc[0]
                ax.plot(grid, law.predict(np.full_like(grid, n), np.full_like(grid, budget), grid), color=color,
                        linewidth=1.0)
        ax.set_xscale("log")
        ax.set_xlabel(EPOCHS_LABEL)
        ax.set_ylabel(LOSS_LABEL)
        if law.R_D_star is None:
            ax.set_title(f"{OBJECTIVE_LABEL[objective]}: no fit ({law.note})", fontsize=8)
        else:
            err = f" ± {law.R_D_star_err:.3g}" if law.R_D_star_err is not None else ""
            ax.set_title(f"{OBJECTIVE_LABEL[objective]}: R_D* = {law.R_D_star:.3g}{err}")
        handles = [Line2D([], [], color=c, label=f"U = {format_tokens(u)}") for u, c in colors.items()]
        if len(models) > 1:
            handles += [Line2D([], [], color="0.3", marker=markers[m], linestyle="none", label=m) for m in models]
        handles += [Line2D([], [], color="0.3", marker="o", linestyle="none", label="fitted"),
                    Line2D([], [], color="0.3", marker="o", markerfacecolor="none", linestyle="none",
                           label="not fitted"),
                    Line2D([], [], color="0.3", linewidth=1.0, label="fitted law")]
        ax.legend(handles=handles, loc="upper right")
    fig.suptitle(f"{_attention(points)} attention: data-constrained law L = E + A/N^a + B/D'^b "
                 f"(points: {fit_points.replace('_', ' ')})\n{note}")
    return fig
