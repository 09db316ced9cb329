"""Figures of the crossover analysis, all in the one project style (``crossover.mplstyle``).

Every function takes seed-averaged points of one attention kind (``aggregate_points``) and returns
a ``matplotlib.figure.Figure`` (or ``None`` when it has nothing to show) built without pyplot's
global registry; draw and save inside ``style_context()``. Conventions (``analysis.plotkit``):
compute C = 6ND in FLOPs (N non-embedding) and epochs on log axes; budgets U coloured on one log
scale with a colour bar; families (AR, diffusion, block diffusion b=k) by fixed colour, marker and
line style; one legend per figure, outside the panels; at most 3 x 3 panels, a subset of budgets
or models chosen evenly when there are more (the title says so).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis.crossover import Crossover, frontier, prabhudesai_c_crit
from analysis.fits import Analysis, FitPoints, crossover_estimate, select_fit_points
from analysis.law import effective_params, unique_seen, value_of_repeats
from analysis.lawfit import LawFit
from analysis.plotkit import (
    COMPUTE_LABEL,
    EPOCHS_LABEL,
    LOSS_LABEL,
    BudgetColors,
    FamilyStyle,
    family_handle,
    family_style,
    figure_legend,
    figure_title,
    format_sci,
    format_tokens,
    log_axis,
    panel_figure,
    panel_title,
    select_evenly,
    wrap,
)
from analysis.results import REFERENCE_FAMILY, families

#: Budgets drawn as curves in one panel of loss against epochs (more are subsampled evenly).
MAX_CURVE_BUDGETS = 8

__all__ = ["measurement_note", "plot_block_size", "plot_c_crit", "plot_data_value", "plot_law_fit",
           "plot_loss_vs_compute", "plot_loss_vs_epochs"]


def _distinct(df: pd.DataFrame, *names: str) -> list[str]:
    """Sorted distinct values of the first of ``names`` present in ``df``."""
    for name in names:
        if name in df.columns:
            values = df[name].dropna().unique()
            return [format(v, "g") if isinstance(v, float) else str(v) for v in sorted(values)]
    return []


def measurement_note(df: pd.DataFrame) -> str:
    """Title line stating the loss estimators, from the raw table's optional columns.

    Reads ``elbo_weight``, ``mask_eps`` (or ``eps``) and ``mc_samples`` of the diffusion-like rows when
    present; N is always the non-embedding parameter count (contract 3).
    """
    objectives = sorted(set(df["objective"]))
    parts = ["AR: exact NLL"] if REFERENCE_FAMILY in objectives else []
    elbo = [o for o in objectives if "diffusion" in o]
    if elbo:
        rows = df[df["objective"].isin(elbo)]
        details = []
        if weight := _distinct(rows, "elbo_weight"):
            details.append(f"weight {', '.join(weight)}")
        if eps := _distinct(rows, "mask_eps", "eps"):
            details.append(f"eps={', '.join(eps)}")
        if mc := _distinct(rows, "mc_samples"):
            details.append(f"{', '.join(mc)} MC samples")
        parts.append(f"{', '.join(elbo)}: ELBO bound" + (f" ({', '.join(details)})" if details else ""))
    return "; ".join([*parts, "N = non-embedding params"])


def _styles(points: pd.DataFrame) -> dict[str, FamilyStyle]:
    names = families(points)
    return {f: family_style(f, names) for f in names}


def _label_outer(axes: list[Axes], ncols: int, xlabel: str, ylabel: str) -> None:
    """x label on panels with no panel below, y label on the first column."""
    for i, ax in enumerate(axes):
        if i + ncols >= len(axes):
            ax.set_xlabel(xlabel)
        if i % ncols == 0:
            ax.set_ylabel(ylabel)


def _subset_note(shown: int, total: int, what: str) -> str:
    return f" ({shown} of {total} {what}, evenly spaced)" if shown < total else ""


def _attention(points: pd.DataFrame) -> str:
    return ", ".join(sorted(points["attention"].unique()))


# --------------------------------------------------------------------------- loss vs compute
def plot_loss_vs_compute(points: pd.DataFrame, crossovers: list[Crossover], *, note: str = "") -> Figure:
    """Loss against compute with best-so-far frontiers (Prabhudesai et al. Fig. 1).

    Several families: one panel per budget U (up to 9, chosen evenly), a frontier per family, AR's
    best loss dotted grey and each family's crossover compute as a dotted vertical line. One family:
    a single panel with a frontier per budget, coloured by U.
    """
    names = families(points)
    if len(names) == 1:
        return _compute_one_family(points, names[0], note)
    styles = _styles(points)
    budgets = sorted(points["unique_tokens"].unique())
    shown = select_evenly(budgets)
    fig, axes = panel_figure(len(shown), extra_w=0.3)
    for ax, budget in zip(axes, shown):
        at_u = points[points["unique_tokens"] == budget]
        for family in names:
            own = at_u[at_u["family"] == family]
            if own.empty:
                continue
            st = styles[family]
            ax.errorbar(own["flops"], own["val_loss"], yerr=np.nan_to_num(own["se"].to_numpy(float)),
                        fmt=st.marker, color=st.color, alpha=0.3, markersize=3, linestyle="none")
            fr = frontier(own)
            ax.step(fr["flops"], fr["loss"], where="post", color=st.color, linestyle=st.linestyle)
        _crossover_lines(ax, [c for c in crossovers if c.unique_tokens == int(budget)], styles)
        log_axis(ax, "x", "sci")
        panel_title(ax, f"U = {format_tokens(budget)} unique tokens")
    _label_outer(axes, min(len(shown), 3), COMPUTE_LABEL, LOSS_LABEL)
    handles = [family_handle(styles[f], f"{styles[f].label} best-so-far", marker=False) for f in names]
    if REFERENCE_FAMILY in names:
        handles.append(Line2D([], [], color="0.45", linestyle=":", label="AR best"))
        handles.append(Line2D([], [], color="0.2", linestyle=":", linewidth=1.2, label="crossover (family colour)"))
    figure_legend(fig, handles)
    figure_title(fig, f"{_attention(points)} attention: validation loss vs compute, best-so-far frontier"
                 + _subset_note(len(shown), len(budgets), "budgets"), note)
    return fig


def _crossover_lines(ax: Axes, crossovers: list[Crossover], styles: dict[str, FamilyStyle]) -> None:
    if crossovers and crossovers[0].ar_best is not None:
        ax.axhline(crossovers[0].ar_best, color="0.45", linestyle=":", linewidth=1.0)
    for c in crossovers:
        if c.flops is not None:
            ax.axvline(c.flops, color=styles[c.family].color, linestyle=":", linewidth=1.2)


def _compute_one_family(points: pd.DataFrame, family: str, note: str) -> Figure:
    colors = BudgetColors(points["unique_tokens"])
    st = family_style(family, [family])
    fig, (ax,) = panel_figure(1, panel_w=5.8, panel_h=3.9)
    for budget, own in points.groupby("unique_tokens"):
        ax.plot(own["flops"], own["val_loss"], st.marker, color=colors(budget), alpha=0.3, markersize=3)
        fr = frontier(own)
        ax.step(fr["flops"], fr["loss"], where="post", color=colors(budget), linewidth=1.2)
    log_axis(ax, "x", "sci")
    ax.set_xlabel(COMPUTE_LABEL)
    ax.set_ylabel(LOSS_LABEL)
    colors.colorbar(fig, [ax])
    figure_legend(fig, [Line2D([], [], color="0.3", label="best-so-far frontier per budget"),
                        Line2D([], [], color="0.3", marker=st.marker, alpha=0.4, linestyle="none",
                               label="evaluated points")])
    figure_title(fig, f"{_attention(points)} attention, {st.label}: validation loss vs compute", note)
    return fig


# --------------------------------------------------------------------------- loss vs epochs
def _epoch_curve(ax: Axes, curve: pd.DataFrame, st: FamilyStyle, color: tuple) -> bool:
    """One (family, model, U): a line through one run's evaluations, or through each run's final
    point when there are several runs (their earlier evaluations faint). Returns whether faint
    earlier evaluations were drawn."""
    final = curve["epochs"] >= curve["run_epochs"] * (1 - 1e-6)
    several = curve["curve"].nunique() > 1
    line = (curve[final] if several else curve).sort_values("epochs")
    earlier = several and not final.all()
    if earlier:
        ax.plot(curve["epochs"][~final], curve["val_loss"][~final], st.marker, color=color, alpha=0.25,
                markersize=2.5)
    ax.plot(line["epochs"], line["val_loss"], color=color, linestyle=st.linestyle, marker=st.marker, markersize=3,
            linewidth=1.2)
    best = curve.loc[curve["val_loss"].idxmin()]
    ax.plot(best["epochs"], best["val_loss"], marker="*", markersize=10, color=color, markeredgecolor="black",
            markeredgewidth=0.6, linestyle="none")
    return earlier


def plot_loss_vs_epochs(points: pd.DataFrame, *, note: str = "") -> Figure:
    """One panel per model size (up to 9, chosen evenly in N): loss against epochs, colour = U (up to
    ``MAX_CURVE_BUDGETS`` budgets, chosen evenly), a line style per family, a star at each curve's lowest loss."""
    models = sorted({(float(n), str(m)) for n, m in zip(points["non_embedding_params"], points["model"])})
    shown = select_evenly(models)
    budgets = sorted(points["unique_tokens"].unique())
    shown_budgets = select_evenly(budgets, MAX_CURVE_BUDGETS)
    colors, styles = BudgetColors(budgets), _styles(points)
    fig, axes = panel_figure(len(shown))
    earlier = False
    for ax, (n, model) in zip(axes, shown):
        own = points[(points["model"] == model) & (points["non_embedding_params"] == n)
                     & points["unique_tokens"].isin(shown_budgets)]
        for (family, budget), curve in own.groupby(["family", "unique_tokens"]):
            earlier |= _epoch_curve(ax, curve, styles[family], colors(budget))
        log_axis(ax, "x")
        panel_title(ax, f"{model}: N = {format_tokens(n)} non-embedding")
    _label_outer(axes, min(len(shown), 3), EPOCHS_LABEL, LOSS_LABEL)
    colors.colorbar(fig, axes)
    handles = [family_handle(st, color="0.25") for st in styles.values()]
    handles.append(Line2D([], [], color="white", marker="*", markersize=10, markeredgecolor="black",
                          linestyle="none", label="lowest loss"))
    if earlier:
        handles.append(Line2D([], [], color="0.5", marker="o", alpha=0.3, markersize=3, linestyle="none",
                              label="earlier evaluations of a run (line: final points)"))
    figure_legend(fig, handles)
    single = f", U = {format_tokens(budgets[0])}" if len(budgets) == 1 else ""
    figure_title(fig, f"{_attention(points)} attention: validation loss vs epochs{single}"
                 + _subset_note(len(shown), len(models), "model sizes")
                 + _subset_note(len(shown_budgets), len(budgets), "budgets"), note)
    return fig


# --------------------------------------------------------------------------- law fit
def _estimate_text(law: LawFit, name: str, symbol: str) -> str | None:
    est = law.estimates.get(name)
    if est is None or est.value is None:
        return None
    text = est.describe(".3g")
    return f"{symbol} {text}" if text[0] in "≥≤" else f"{symbol} = {text}"


def law_summary(law: LawFit, label: str) -> str:
    """Short panel title for a fitted law: its R* values and R², or why there is no law."""
    if not law.drawable:
        return f"{label}: no law ({law.status.replace('_', ' ')})"
    parts = [t for t in (_estimate_text(law, "R_D_star", "$R_D^*$"), _estimate_text(law, "R_N_star", "$R_N^*$")) if t]
    r2 = f", $R^2$ = {law.r2:.3f}" if law.r2 is not None else ""
    return f"{label}: {', '.join(parts)}{r2} ({law.protocol_used.replace('_', '-')})"


def _representative_model(own: pd.DataFrame, used: pd.Series) -> tuple[float, str]:
    """The (N, model) with the most fitted points; ties go to the larger N."""
    counts = own[used].groupby(["non_embedding_params", "model"]).size()
    if counts.empty:
        counts = own.groupby(["non_embedding_params", "model"]).size()
    best = max(counts.items(), key=lambda item: (item[1], item[0][0]))[0]
    return float(best[0]), str(best[1])


def _no_law_reason(law: LawFit) -> str:
    """The note that explains a missing or degenerate law (the last one that says so)."""
    key = "degenerate" if law.status == "degenerate" else "too few" if law.status == "no_fit" else ""
    said = [n for n in law.notes if key and key in n]
    return (said or list(law.notes) or [law.status])[-1]


def _parity_panel(ax: Axes, own: pd.DataFrame, used: pd.Series, law: LawFit, colors: BudgetColors,
                  st: FamilyStyle) -> None:
    if not law.drawable:
        ax.text(0.5, 0.5, wrap(f"no law drawn: {_no_law_reason(law)}", 3.2, 8.5), transform=ax.transAxes,
                ha="center", va="center", fontsize=8.5)
        ax.set_axis_off()
        return
    pred = law.predict(own["non_embedding_params"], own["unique_tokens"], own["tokens_seen"])
    c = [colors(u) for u in own["unique_tokens"]]
    mask = used.to_numpy()
    ax.scatter(pred[mask], own["val_loss"][mask], c=[c[i] for i in np.flatnonzero(mask)], marker=st.marker, s=10)
    ax.scatter(pred[~mask], own["val_loss"][~mask], facecolors="none", marker=st.marker, s=10,
               edgecolors=[c[i] for i in np.flatnonzero(~mask)])
    lo = float(min(pred.min(), own["val_loss"].min()))
    hi = float(max(pred.max(), own["val_loss"].max()))
    ax.plot([lo, hi], [lo, hi], color="0.4", linestyle="--", linewidth=1.0)
    ax.set_xlabel("law prediction (nats/token)")
    ax.set_ylabel("observed (nats/token)")


def _law_panel(ax: Axes, own: pd.DataFrame, used: pd.Series, law: LawFit, colors: BudgetColors,
               st: FamilyStyle) -> str:
    """Data against epochs of the representative model, with the law per budget; returns the title."""
    n, model = _representative_model(own, used)
    sel = (own["model"] == model) & (own["non_embedding_params"] == n)
    for budget, grp in own[sel].groupby("unique_tokens"):
        fit = used[grp.index]
        color = colors(budget)
        ax.plot(grp["epochs"][fit], grp["val_loss"][fit], st.marker, color=color, markersize=3.5)
        ax.plot(grp["epochs"][~fit], grp["val_loss"][~fit], st.marker, color=color, markersize=3.5,
                markerfacecolor="none")
        if law.drawable:
            grid = np.geomspace(grp["epochs"].min(), grp["epochs"].max(), 80)
            ax.plot(grid, law.predict(np.full_like(grid, n), np.full_like(grid, budget), grid * budget),
                    color=color, linewidth=1.0)
    log_axis(ax, "x")
    ax.set_xlabel(EPOCHS_LABEL)
    ax.set_ylabel(LOSS_LABEL)
    return f"{st.label}, {model} (N = {format_tokens(n)}): data" + (" and law" if law.drawable else "")


def plot_law_fit(points: pd.DataFrame, laws: dict[str, LawFit], *, fit_points: FitPoints, note: str = "") -> Figure:
    """Per family (up to 4 rows): observed against law-predicted loss for every point (left), and the
    data of the model with the most fitted points against epochs with the law per budget (right).
    Filled markers were fitted, hollow ones excluded by the point selection; colour = U. A degenerate
    or missing fit is stated in its panel, not drawn."""
    names = [f for f in families(points) if f in laws]
    shown = names[:4]
    colors, styles = BudgetColors(points["unique_tokens"]), _styles(points)
    fig, axes = panel_figure(2 * len(shown), ncols=2, panel_w=3.9, panel_h=2.9)
    for i, family in enumerate(shown):
        own = points[points["family"] == family]
        used = select_fit_points(own, fit_points)
        law, st = laws[family], styles[family]
        _parity_panel(axes[2 * i], own, used, law, colors, st)
        panel_title(axes[2 * i], law_summary(law, st.label))
        panel_title(axes[2 * i + 1], _law_panel(axes[2 * i + 1], own, used, law, colors, st))
    colors.colorbar(fig, axes)
    handles = [Line2D([], [], color="0.3", marker="o", linestyle="none", label="fitted point"),
               Line2D([], [], color="0.3", marker="o", markerfacecolor="none", linestyle="none",
                      label="excluded point")]
    if any(laws[f].drawable for f in shown):
        handles += [Line2D([], [], color="0.3", linewidth=1.0, label="fitted law"),
                    Line2D([], [], color="0.4", linestyle="--", linewidth=1.0, label="observed = predicted")]
    figure_legend(fig, handles)
    more = f" (first 4 of {len(names)} families)" if len(names) > 4 else ""
    figure_title(fig, f"{_attention(points)} attention: data-constrained law L = E + A/N'^α + B/D'^β, points "
                 f"{fit_points.replace('_', ' ')}{more}", note)
    return fig


# --------------------------------------------------------------------------- C_crit
def _c_crit_points(ax: Axes, crossovers: list[Crossover], st: FamilyStyle) -> None:
    for c in crossovers:
        if c.flops is not None:
            ax.plot(c.unique_tokens, c.flops, marker="o", markersize=6, color=st.color, markerfacecolor="none",
                    linestyle="none")
            ax.plot(c.unique_tokens, crossover_estimate(c), marker="*", markersize=12, color=st.color,
                    markeredgecolor="black", markeredgewidth=0.6, linestyle="none")
        elif c.max_diffusion_flops is not None and c.ar_best is not None:
            ax.plot(c.unique_tokens, c.max_diffusion_flops, marker="^", markersize=7, color=st.color,
                    markerfacecolor="none", linestyle="none")


def _c_crit_lines(ax: Axes, analysis: Analysis, family: str, st: FamilyStyle, span: np.ndarray) -> list[Line2D]:
    handles = []
    fit = analysis.c_crit.get(family)
    if fit is not None:
        handles += ax.plot(span, fit.predict(span), color=st.color, linestyle="-",
                           label=f"{st.label}, measured: C = {format_sci(fit.prefactor)} U^{fit.exponent:.2f}")
    lc = analysis.law_c_crit.get(family)
    if lc is not None and np.isfinite(lc.flops).any():
        label = f"{st.label}, from fitted laws" + (f": ∝ U^{lc.fit.exponent:.2f}" if lc.fit is not None else "")
        handles += ax.plot(lc.budgets, lc.flops, color=st.color, linestyle="-.", label=label)
    return handles


def plot_c_crit(analysis: Analysis, *, note: str = "") -> Figure | None:
    """Critical compute against U (log-log) per family: measured crossovers (stars: interpolated in
    log C, the points fitted; hollow circles: first evaluated compute; hollow triangles: no crossover
    up to that compute), their power law, C_crit(U) from the fitted laws, and Prabhudesai et al.'s
    192 U^2.174 (U raw tokens). ``None`` when there is neither a crossover nor a law crossing."""
    others = [f for f in analysis.families if f != REFERENCE_FAMILY]
    has_law = any(np.isfinite(lc.flops).any() for lc in analysis.law_c_crit.values())
    if not others or (not any(c.flops is not None for c in analysis.crossovers) and not has_law):
        return None
    styles = {f: family_style(f, analysis.families) for f in analysis.families}
    budgets = np.array(sorted({c.unique_tokens for c in analysis.crossovers}), dtype=float)
    span = np.geomspace(budgets.min() / 1.5, budgets.max() * 1.5, 50)
    fig, (ax,) = panel_figure(1, panel_w=6.2, panel_h=4.2, extra_w=0.3, extra_h=1.6)
    handles = ax.plot(span, prabhudesai_c_crit(span), color="0.55", linestyle="--",
                      label="Prabhudesai et al.: C = 192 U^2.174")
    for family in others:
        _c_crit_points(ax, [c for c in analysis.crossovers if c.family == family], styles[family])
        handles += _c_crit_lines(ax, analysis, family, styles[family], span)
    handles += [
        Line2D([], [], marker="*", markersize=10, color="0.6", markeredgecolor="black", linestyle="none",
               label="crossover, interpolated in log C"),
        Line2D([], [], marker="o", color="0.4", markerfacecolor="none", linestyle="none",
               label="crossover, first evaluated C"),
        Line2D([], [], marker="^", color="0.4", markerfacecolor="none", linestyle="none",
               label="no crossover up to this C"),
    ]
    log_axis(ax, "x", "count")
    log_axis(ax, "y", "sci")
    ax.set_xlabel("unique tokens U (raw tokens)")
    ax.set_ylabel("critical compute C_crit (FLOPs)")
    fig.legend(handles=handles, loc="outside lower center", ncols=2, frameon=False)
    figure_title(fig, f"{analysis.attention} attention: compute at which each family beats AR", note)
    return fig


# --------------------------------------------------------------------------- value of repeated data
def implied_value(own: pd.DataFrame, law: LawFit) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, D'/U_D) implied by each point under the law: D' = (B / (L - E - A/N'^alpha))^(1/beta);
    points whose loss is not above E + A/N'^alpha are left out."""
    p = law.law
    n_prime = effective_params(own["non_embedding_params"], own["unique_tokens"], own["tokens_seen"], p)
    n_term = p.A / n_prime**p.alpha if p.A > 0 else 0.0
    rest = own["val_loss"].to_numpy(float) - p.E - n_term
    ok = rest > 0
    d_prime = (p.B / rest[ok]) ** (1.0 / p.beta)
    u_d = unique_seen(own["unique_tokens"], own["tokens_seen"])[ok]
    return own["epochs"].to_numpy(float)[ok], d_prime / u_d


def _value_curve(ax: Axes, law: LawFit, st: FamilyStyle, grid: np.ndarray) -> list[Line2D]:
    r = law.value("R_D_star")
    text = law.estimates["R_D_star"].describe(".3g")
    text = text if text[0] in "≥≤" else f"= {text}"
    handles = ax.plot(grid, value_of_repeats(grid, r), color=st.color, linestyle=st.linestyle,
                      label=f"{st.label}: R_D* {text}")
    samples = law.samples.get("R_D_star")
    if samples is not None and len(samples):
        band = np.array([value_of_repeats(grid, s) for s in samples])
        lo, hi = np.percentile(band, [15.865, 84.135], axis=0)
        ax.fill_between(grid, lo, hi, color=st.color, alpha=0.15, linewidth=0)
    if 1.0 + r <= grid[-1]:
        ax.plot(1.0 + r, value_of_repeats(1.0 + r, r), marker="o", markersize=7, color=st.color,
                markerfacecolor="white", markeredgewidth=1.5, linestyle="none")
    return handles


def plot_data_value(points: pd.DataFrame, laws: dict[str, LawFit], *, note: str = "") -> Figure | None:
    """The value of repeated data: effective unique data D'/U against epochs per family (Muennighoff
    et al.), D'/U = 1 + R_D* (1 - exp(-(epochs - 1)/R_D*)), with the 68 % bootstrap band, the point
    epochs = 1 + R_D* (one more repeat worth 1/e of fresh data) as a hollow circle, the values
    implied by each fitted point (faint) and the line of fresh data (D'/U = epochs).
    ``None`` when no family has a drawable law."""
    names = [f for f in families(points) if f in laws and laws[f].drawable and laws[f].value("R_D_star")]
    if not names:
        return None
    styles = _styles(points)
    grid = np.geomspace(1.0, max(float(points["epochs"].max()), 10.0) * 1.5, 200)
    fig, (ax,) = panel_figure(1, panel_w=6.0, panel_h=4.2, extra_w=0.3, extra_h=1.4)
    handles = ax.plot(grid, grid, color="0.55", linestyle="--", label="fresh data (D'/U = epochs)")
    for family in names:
        own = points[points["family"] == family]
        x, y = implied_value(own[own["epochs"] >= 1.0], laws[family])
        ax.plot(x, y, styles[family].marker, color=styles[family].color, alpha=0.2, markersize=2.5)
        handles += _value_curve(ax, laws[family], styles[family], grid)
    handles.append(Line2D([], [], marker="o", color="0.3", markerfacecolor="white", linestyle="none",
                          label="epochs = 1 + R_D*: next repeat worth 1/e"))
    handles.append(Line2D([], [], marker="o", color="0.3", alpha=0.3, markersize=3, linestyle="none",
                          label="implied by each point under its law"))
    ax.set_ylim(0.8, grid[-1] * 1.2)
    log_axis(ax, "x")
    log_axis(ax, "y")
    ax.set_xlabel(EPOCHS_LABEL)
    ax.set_ylabel("effective unique data D'/U")
    fig.legend(handles=handles, loc="outside lower center", ncols=2, frameon=False)
    figure_title(fig, f"{_attention(points)} attention: value of repeated data (shaded: 68 % bootstrap band)", note)
    return fig


# --------------------------------------------------------------------------- block size
def block_sizes(points: pd.DataFrame) -> pd.Series:
    """The block size b of each point: its ``block_size``; AR 1; diffusion ``seq_len`` (NaN if unknown)."""
    b = points["block_size"].astype(float).copy()
    plain = b.isna()
    b[plain & (points["objective"] == REFERENCE_FAMILY)] = 1.0
    full = plain & (points["objective"] == "diffusion")
    b[full] = points.loc[full, "seq_len"].astype(float)
    return b


def plot_block_size(points: pd.DataFrame, *, note: str = "") -> Figure | None:
    """Best validation loss (over models and epochs) against block size b at each U: AR at b = 1,
    block diffusion at its b, diffusion at b = seq_len (left out without a ``seq_len``).
    ``None`` when no point has a block size."""
    if points["block_size"].isna().all():
        return None
    pts = points.assign(b=block_sizes(points)).dropna(subset=["b"])
    best = pts.groupby(["unique_tokens", "b", "family"], as_index=False)["val_loss"].min()
    colors = BudgetColors(best["unique_tokens"])
    kind = {"ar": ("s", "AR (b = 1)"), "diffusion": ("^", "diffusion (b = sequence length)")}
    fig, (ax,) = panel_figure(1, panel_w=5.6, panel_h=3.9)
    for budget, grp in best.groupby("unique_tokens"):
        grp = grp.sort_values("b")
        ax.plot(grp["b"], grp["val_loss"], color=colors(budget), linewidth=1.2)
        for family, row in grp.groupby("family"):
            ax.plot(row["b"], row["val_loss"], kind.get(family, ("o", ""))[0], color=colors(budget), markersize=5)
    ax.set_xscale("log", base=2)
    ticks = select_evenly(sorted(best["b"].unique()), 8)
    ax.set_xticks(ticks, labels=[f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("block size b (tokens decoded in parallel)")
    ax.set_ylabel("best " + LOSS_LABEL)
    colors.colorbar(fig, [ax])
    figure_legend(fig, [Line2D([], [], color="0.3", marker=m, linestyle="none", label=text)
                        for m, text in (*kind.values(), ("o", "block diffusion"))])
    figure_title(fig, f"{_attention(points)} attention: best validation loss against block size", note)
    return fig

