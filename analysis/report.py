"""Write a crossover report folder from a results table: figures, fits.json and summary.md.

Layout of ``out_dir`` (the suffix ``_<attention>`` is added to every figure name only when the
table holds several attention kinds):

* ``loss_vs_compute.{png,pdf}``: loss against 6ND FLOPs with best-so-far frontiers (a panel per
  budget, up to 9, when there are several families; one panel coloured by U otherwise).
* ``loss_vs_epochs.{png,pdf}``: loss against epochs, a panel per model size (up to 9), colour = U.
* ``law_fit.{png,pdf}``: per family, observed against predicted loss and the law over the data of
  one model; degenerate fits are stated, not drawn.
* ``data_value.{png,pdf}``: effective unique data D'/U against epochs per family, with R_D* (when a
  family has a drawable law).
* ``c_crit.{png,pdf}``: crossover compute against U, its power law, C_crit(U) from the fitted laws
  and Prabhudesai et al.'s exponent (when there is a crossover or a law crossing).
* ``block_size.{png,pdf}``: best loss against block size b per U (when the table has ``block_size``).
* ``fits.json``: ``analysis.fits.fit_table`` output for the default attention kind ("dense", or
  the only/first kind); with several kinds also ``fits_<attention>.json`` per kind.
* ``summary.md``: provenance, best losses, the fair comparison per budget (each objective tuned over its own
  settings), crossovers, law fits, the extrapolated crossover from the laws and C_crit; written last.

Every file is written through ``analysis.table.atomic_write`` (a temporary file in ``out_dir``
moved into place), so a reader never sees a half-written file.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from analysis.crossover import (
    PRABHUDESAI_C_CRIT_EXPONENT,
    BestPoint,
    Crossover,
    FairComparison,
    describe_settings,
)
from analysis.fits import (
    MAX_EXTRAPOLATION,
    MIN_REFITS_CROSSING,
    UNITS,
    Analysis,
    BaseLaws,
    Extrapolation,
    FitPoints,
    analyse,
    load_base_laws,
)
from analysis.lawfit import Estimate, LawFit, Protocol
from analysis.plotkit import format_epochs, format_sci, format_tokens, style_context
from analysis.plots import (
    measurement_note,
    plot_block_size,
    plot_c_crit,
    plot_data_value,
    plot_law_fit,
    plot_loss_vs_compute,
    plot_loss_vs_epochs,
)
from analysis.results import REFERENCE_FAMILY, aggregate_points, default_attention, families, load_results
from analysis.table import atomic_write, atomic_write_text

FORMATS: tuple[str, ...] = ("png", "pdf")

_PROVENANCE_COLUMNS = {
    "corpus": "corpus",
    "corpus_fingerprint": "corpus fingerprint",
    "tokenizer_hash": "tokenizer hash",
    "vocab_size": "vocabulary size",
    "seq_len": "sequence length",
    "lr": "learning rate",
    "val_tokens": "validation tokens",
}
_DIFFUSION_COLUMNS = {"elbo_weight": "diffusion ELBO weight", "mask_eps": "diffusion mask eps",
                      "mc_samples": "diffusion MC samples"}


def _save_figure(fig: Figure, out_dir: Path, stem: str, formats: Sequence[str] = FORMATS) -> list[str]:
    names = []
    for ext in formats:
        atomic_write(out_dir / f"{stem}.{ext}",
                     lambda f, ext=ext: fig.savefig(f, format=ext, bbox_inches="tight"))
        names.append(f"{stem}.{ext}")
    return names


def _values(df: pd.DataFrame, column: str) -> str:
    values = sorted(df[column].dropna().unique())
    return ", ".join(format(v, "g") if isinstance(v, float) else str(v) for v in values)


def _provenance(df: pd.DataFrame, source: str) -> list[str]:
    lines = ["## Provenance", "", f"- source: `{source}` ({len(df)} rows, {df['run_id'].nunique()} runs)"]
    diffusion = df[df["objective"] != REFERENCE_FAMILY]
    for rows, columns in ((df, _PROVENANCE_COLUMNS), (diffusion, _DIFFUSION_COLUMNS)):
        for column, label in columns.items():
            if column in rows.columns and rows[column].notna().any():
                lines.append(f"- {label}: {_values(rows, column)}")
    models = df.drop_duplicates("model").sort_values("non_embedding_params")
    described = [
        f"{m.model} (N = {format_tokens(m.non_embedding_params)} non-embedding, {format_tokens(m.params)} total)"
        for m in models.itertuples(index=False)
    ]
    if len(described) > 12:
        described = [*described[:6], f"... ({len(described) - 12} more) ...", *described[-6:]]
    lines.append(f"- models: {'; '.join(described)}")
    lines.append(f"- attention: {_values(df, 'attention')}")
    lines.append(f"- seeds: {_values(df, 'seed')}")
    lines.append(f"- objectives: {_values(df, 'objective')}; families: {', '.join(families(df))}")
    return lines


def _crossover_cell(c: Crossover) -> str:
    if c.flops is not None:
        return format_sci(c.flops)
    if c.max_diffusion_flops is not None and c.ar_best is not None:
        return f"none up to {format_sci(c.max_diffusion_flops)}"
    return f"n/a ({c.note})"


def _se(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.4f}"


def _best_table(points: pd.DataFrame, analysis: Analysis) -> list[str]:
    lines = [
        "### Best validation loss per budget",
        "",
        "| U (tokens) | family | best loss (nats/token) | ± SE | epoch | model | compute (FLOPs) "
        "| crossover with AR (FLOPs) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    crossovers = {(c.family, c.unique_tokens): c for c in analysis.crossovers}
    for budget in sorted(points["unique_tokens"].unique()):
        for family in analysis.families:
            own = points[(points["unique_tokens"] == budget) & (points["family"] == family)]
            if own.empty:
                continue
            best = own.loc[own["val_loss"].idxmin()]
            cross = crossovers.get((family, int(budget)))
            lines.append(
                f"| {format_tokens(budget)} | {family} | {best['val_loss']:.4f} | {_se(best['se'])} | "
                f"{format_epochs(best['epochs'])} | {best['model']} | {format_sci(best['flops'])} | "
                f"{'' if cross is None else _crossover_cell(cross)} |"
            )
    return lines


def _crossover_table(analysis: Analysis) -> list[str]:
    if not analysis.crossovers:
        return ["### Crossover", "", "No crossover to compute: the table needs the family `ar` and another one."]
    lines = [
        "### Crossover",
        "",
        "| family | U (tokens) | AR best (nats/token) | crossover C, first evaluated (FLOPs) | interpolated C (FLOPs) "
        "| frontier there | significant (2 SE) | first significant C (FLOPs) | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in analysis.crossovers:
        ar_best = "n/a" if c.ar_best is None else f"{c.ar_best:.4f} ± {_se(c.ar_best_se)}"
        significant = {None: "—" if c.flops is None and c.significant is None else "unknown (no SE)", True: "yes",
                       False: "no"}[c.significant]
        lines.append(
            f"| {c.family} | {format_tokens(c.unique_tokens)} | {ar_best} | {_crossover_cell(c)} | "
            f"{'—' if c.flops_interp is None else format_sci(c.flops_interp)} | "
            f"{'—' if c.frontier_loss is None else f'{c.frontier_loss:.4f}'} | {significant} | "
            f"{'—' if c.flops_significant is None else format_sci(c.flops_significant)} | {c.note or ''} |"
        )
    return lines


def _family_name(family: str) -> str:
    return "AR" if family == REFERENCE_FAMILY else family


def _where(best: BestPoint) -> str:
    return f"{best.model}, {format_epochs(best.epochs)} / {format_epochs(best.run_epochs)}"


def _seed_cell(c: FairComparison) -> str:
    """The gap's seed part; "1 seed" for a side without replicates (both: no seed part at all)."""
    if c.seed_se is None:
        return "1 seed"
    single = [_family_name(b.family) for b in (c.ar, c.other) if b.seed_se is None]
    return f"{c.seed_se:.4f}" + (f" ({single[0]}: 1 seed)" if single else "")


def _tuning_line(budget: int, bests: list[BestPoint]) -> str:
    """How many settings and models each objective had at U, and which one was not tuned."""
    parts, untuned = [], []
    for b in bests:
        varied = f" (varied: {', '.join(b.varied)})" if b.varied else ""
        parts.append(f"{_family_name(b.family)} {b.n_settings} setting{'s' if b.n_settings > 1 else ''}{varied}, "
                     f"{b.n_models} model{'s' if b.n_models > 1 else ''}")
        if not b.tuned:
            untuned.append(f"{_family_name(b.family)} was not tuned at this U.")
    return f"- {format_tokens(budget)}: {'; '.join(parts)}." + "".join(f" {u}" for u in untuned)


def _fair_table(analysis: Analysis) -> list[str]:
    head = ["### Fair comparison per budget", ""]
    if not analysis.fair:
        return [*head, "No comparison: the table needs the family `ar` and another one at the same U."]
    lines = [
        *head,
        "Each objective at its best over all its own settings, model sizes and evaluated epochs (Definitions); "
        "gap = family best - AR best (nats/token, positive: AR better).",
        "",
        "| U (tokens) | family | AR best (nats/token) | AR settings | AR model, epoch / run | family best "
        "(nats/token) | family settings | family model, epoch / run | gap | ± MC | ± seeds | ± combined | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in analysis.fair:
        shown = c.shown_settings
        lines.append(
            f"| {format_tokens(c.unique_tokens)} | {c.family} | {c.ar.loss:.4f} | "
            f"{describe_settings(c.ar.settings, shown)} | {_where(c.ar)} | {c.other.loss:.4f} | "
            f"{describe_settings(c.other.settings, shown)} | {_where(c.other)} | {c.gap:+.4f} | {_se(c.mc_se)} | "
            f"{_seed_cell(c)} | {_se(c.combined_se)} | {c.verdict} |"
        )
    lines.append("")
    for budget in sorted({c.unique_tokens for c in analysis.fair}):
        own = [c for c in analysis.fair if c.unique_tokens == budget]
        lines.append(_tuning_line(budget, [own[0].ar, *(c.other for c in own)]))
    return lines


_EXTRAPOLATION_HEAD = """### Extrapolated crossover from the fitted laws

C: the compute at which the family's law frontier L*(C, U) = min_N L(N, U, D = C/6N) first drops below AR's,
searched from {lo} to {hi} FLOPs; N*: each frontier's model size at C (non-embedding, family / AR); epochs =
C / (6 N* U); 68 %: central interval of the crossings of the paired bootstrap refits over runs (refit i of AR
with refit i of the family; a refit without a crossing counts as off the grid: "open"); refits: how many of
them cross on the grid. Not supported: a law degenerate or with R_D* at its bound, a crossing beyond
{limit:g}x the largest compute measured at that U, or fewer than {share:g} % of the refits crossing."""


def _interval_cell(ci: tuple[float | None, float | None] | None) -> str:
    if ci is None:
        return "—"
    return " to ".join("open" if x is None else format_sci(x) for x in ci)


def _extrapolation_row(e: Extrapolation) -> str:
    refits = f"{e.n_refits_crossing} of {e.n_refits}" if e.n_refits else "no refits"
    c = e.crossing
    if not e.supported:
        first, rest = f"not supported: {'; '.join(e.reasons)}", ["—", refits, "—", "—"]
    elif c is None or c.flops is None:
        first = (f"none: {e.family} already below AR at {format_sci(e.grid[0])}" if c is not None and c.other_below
                 else f"none up to {format_sci(e.grid[1])}")
        rest = [_interval_cell(e.ci68), refits, "—", "—"]
    else:
        first = format_sci(c.flops)
        rest = [_interval_cell(e.ci68), refits, f"{format_tokens(c.n_other)} / {format_tokens(c.n_ar)}",
                f"{format_epochs(e.epochs(c.n_other))} / {format_epochs(e.epochs(c.n_ar))}"]
    return (f"| {e.family} | {format_tokens(e.unique_tokens)} | {first} | {' | '.join(rest)} | "
            f"{format_sci(e.max_measured_flops)} |")


def _extrapolation_table(analysis: Analysis) -> list[str]:
    if not analysis.extrapolations:
        return ["### Extrapolated crossover from the fitted laws", "", "No family to compare with AR."]
    lo, hi = analysis.extrapolations[0].grid
    lines = [_EXTRAPOLATION_HEAD.format(lo=format_sci(lo), hi=format_sci(hi), limit=MAX_EXTRAPOLATION,
                                        share=100 * MIN_REFITS_CROSSING), "",
             "| family | U (tokens) | crossing C (FLOPs) | 68 % interval | refits crossing | N* (family / AR) "
             "| epochs at C (family / AR) | largest measured C at U |",
             "|---|---|---|---|---|---|---|---|"]
    return lines + [_extrapolation_row(e) for e in analysis.extrapolations]


def estimate_cell(est: Estimate | None, fmt: str = ".4g") -> str:
    """A table cell for one parameter (``Estimate.describe``; 'n/a' when not identified)."""
    return "n/a" if est is None else est.describe(fmt)


_LAW_HEAD = """### Data-constrained law (Muennighoff et al.)

L = E + A/N'^alpha + B/D'^beta with D' = U_D + U_D R_D* (1 - exp(-R_D/R_D*)), U_D = min(U, D), R_D = D/U_D - 1
(epochs - 1), and N' = U_N + U_N R_N* (1 - exp(-R_N/R_N*)), U_N = min(N, N_opt(U_D)),
N_opt(U) = (alpha A/(beta B))^(1/alpha) U^(beta/alpha), R_N = N/U_N - 1; N non-embedding parameters, U and
D = U x epochs in raw tokens, L in nats/token. Huber (delta 1e-3) on log-loss; ± is half the central 68 %
interval of {n_bootstrap} bootstrap refits over runs; "at bound": the estimate sits on its fit bound and has no
error bar; "n/a": not identified by these points. Status "degenerate": not a law (see note)."""


def _law_table(analysis: Analysis, n_bootstrap: int) -> list[str]:
    lines = [_LAW_HEAD.format(n_bootstrap=n_bootstrap), "",
             "| family | status | protocol | R_D* | R_N* | E | A | alpha | B | beta | R^2 | points fitted "
             "(excluded), runs | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for family in analysis.families:
        law: LawFit = analysis.laws[family]
        cells = [estimate_cell(law.estimates.get(n), ".3f" if n in ("alpha", "beta") else ".4g")
                 for n in ("R_D_star", "R_N_star", "E", "A", "alpha", "B", "beta")]
        lines.append(
            f"| {family} | {law.status} | {(law.protocol_used or '—').replace('_', '-')} | {' | '.join(cells)} | "
            f"{'—' if law.r2 is None else f'{law.r2:.4f}'} | {law.n_points} ({law.n_excluded}), {law.n_runs} | "
            f"{'; '.join(law.notes)} |"
        )
    return lines


def _c_crit_lines(analysis: Analysis) -> list[str]:
    lines = ["### Critical compute", ""]
    for family, fit in analysis.c_crit.items():
        found = sum(c.flops is not None for c in analysis.crossovers if c.family == family)
        if fit is None:
            text = f"- {family}, measured: C_crit exponent null (needs crossovers at >= 2 budgets; found {found})."
        else:
            se = f" ± {fit.exponent_se:.3f}" if fit.exponent_se is not None else ""
            text = (f"- {family}, measured: C_crit = c U^k over {fit.n_points} budgets (U raw tokens, C FLOPs, "
                    f"interpolated crossover): **k = {fit.exponent:.3f}{se}**, c = {format_sci(fit.prefactor)}.")
        lines.append(text)
        lc = analysis.law_c_crit.get(family)
        if lc is not None:
            law_text = (f"k = {lc.fit.exponent:.3f}, c = {format_sci(lc.fit.prefactor)}" if lc.fit is not None
                        else "no power law")
            lines.append(f"- {family}, from the fitted laws (frontier min_N L(N, U, C/6N) crosses AR's): {law_text}"
                         + (f" ({lc.note})" if lc.note else "") + ".")
    if len(lines) == 2:
        lines.append("- no family to compare with AR.")
    lines.append(f"- Reference: Prabhudesai et al. k = {PRABHUDESAI_C_CRIT_EXPONENT} (C ~= 192 U^2.174, U raw tokens).")
    return lines


_METHOD = """## Definitions

- Units: {units}.
- Families: the objective, plus `-b<block size>` where the table gives one; `ar` is compared with every other.
- Points are seed means per (attention, family, model, U, epochs, run length); SE = sqrt(MC SE^2 + seed SD^2 / n)
  (the Monte Carlo SE of the diffusion ELBO; AR has none, so with one seed its SE is 0; "n/a" where the table
  gives no `val_loss_se` and one seed).
- Best-so-far frontier: lowest loss over points with compute <= C (all models at that U).
- Crossover: the first evaluated compute at which a family's frontier is below AR's best loss at that U
  (minimum over all AR points); "none up to C" names the largest compute tried. Interpolated: linear in log C
  between the last frontier step above and the first below. Significant: frontier + 2 sqrt(SE^2 + SE_AR^2) <
  AR best. The C_crit fit uses the interpolated crossover (a shared epoch grid quantises the first evaluated).
- Fair comparison: per U, each objective's best point over all its own training settings (the `settings`
  label: learning rate, input masking, weight decay, EMA, dropout, curriculum, ...), model sizes and
  evaluated epochs, never a tuned objective against the other's default. Early stopping is read from the
  evaluation table (the best evaluated epoch of each run); no run is added or retrained. Settings cells name
  the settings that differ between either side's runs at that U (unset ones left out; "—": none of them
  varies, the shared settings are in each run's config.yaml); "epoch / run" is the evaluated epoch and the
  run's length. ± MC: Monte Carlo SE of the gap,
  sqrt(MC_family^2 + MC_AR^2), with MC_AR = 0 for AR's exact NLL ("n/a": the table gives no `val_loss_se`);
  ± seeds: sqrt(SD_family^2/n_family + SD_AR^2/n_AR) over the sides with >= 2 seeds ("1 seed": a side
  without replicates); ± combined: sqrt(MC^2 + seeds^2). Verdict: "crossover (significant)" when
  gap + 2 combined < 0, "crossover (not significant)" when gap < 0 otherwise, "no crossover" when
  gap - 2 combined > 0, "inconclusive" otherwise. Both bests are minima over several points, alike biased low.
- Law fits use {fit_points}."""

_FIT_POINTS_TEXT = {"up_to_best": "each run's evaluations up to its lowest loss",
                    "up_to_best_config": "per (family, model, U), the points up to the epoch of the lowest loss",
                    "all": "all points"}


def build_summary(df: pd.DataFrame, points: pd.DataFrame, analyses: list[Analysis], *, source: str,
                  figures: list[str], fit_points: FitPoints, n_bootstrap: int) -> str:
    """The summary Markdown for one results table and its per-attention analyses."""
    lines = ["# Crossover report: masked diffusion vs autoregressive under repeated data", ""]
    lines += [measurement_note(df) + "; losses in nats/token.", ""]
    lines += _provenance(df, source)
    for analysis in analyses:
        own = points[points["attention"] == analysis.attention]
        lines += ["", f"## {analysis.attention} attention", ""]
        lines += _best_table(own, analysis) + [""]
        lines += _fair_table(analysis) + [""]
        lines += _crossover_table(analysis) + [""]
        lines += _law_table(analysis, n_bootstrap) + [""]
        lines += _extrapolation_table(analysis) + [""]
        lines += _c_crit_lines(analysis)
    lines += ["", _METHOD.format(units=UNITS, fit_points=_FIT_POINTS_TEXT[fit_points]), "", "## Files", ""]
    lines += [f"- {name}" for name in figures]
    return "\n".join(lines) + "\n"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text)


def report_figures(own: pd.DataFrame, analysis: Analysis, fit_points: FitPoints, note: str) -> dict[str, Figure]:
    """The report's figures for one attention kind, by file stem (figures with nothing to show are left out)."""
    figures: dict[str, Figure | None] = {
        "loss_vs_compute": plot_loss_vs_compute(own, analysis.crossovers, note=note),
        "loss_vs_epochs": plot_loss_vs_epochs(own, note=note),
        "law_fit": plot_law_fit(own, analysis.laws, fit_points=fit_points, note=note),
        "data_value": plot_data_value(own, analysis.laws, note=note),
        "c_crit": plot_c_crit(analysis, note=note),
        "block_size": plot_block_size(own, note=note),
    }
    return {stem: fig for stem, fig in figures.items() if fig is not None}


def write_report(
    results_csv: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    fit_points: FitPoints = "up_to_best",
    n_bootstrap: int = 200,
    seed: int = 0,
    protocol: Protocol = "two_stage",
    base: BaseLaws = None,
    formats: Sequence[str] = FORMATS,
) -> str:
    """Analyse ``results_csv`` and write the report folder ``out_dir``; return the summary Markdown.

    ``protocol`` and ``base`` choose the law fit (``analysis.fits.fit_table``); ``formats`` the figure files.

    Raises ``analysis.results.TableError`` (one line) for a malformed table or base-law file, before
    anything is written.
    """
    df = load_results(results_csv)
    bases = load_base_laws(base)
    points = aggregate_points(df)
    kinds = sorted(points["attention"].unique())
    analyses = [analyse(points, k, fit_points=fit_points, n_bootstrap=n_bootstrap, seed=seed, protocol=protocol,
                        base=bases) for k in kinds]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    note = measurement_note(df)
    files: list[str] = []
    with style_context():
        for analysis in analyses:
            own = points[points["attention"] == analysis.attention]
            suffix = f"_{_slug(analysis.attention)}" if len(kinds) > 1 else ""
            for stem, fig in report_figures(own, analysis, fit_points, note).items():
                files += _save_figure(fig, out, stem + suffix, formats)
    reference = next(a for a in analyses if a.attention == default_attention(kinds))
    atomic_write_text(out / "fits.json", json.dumps(reference.to_json(), indent=2, allow_nan=False) + "\n")
    files.append(f"fits.json ({reference.attention} attention)")
    if len(kinds) > 1:
        for analysis in analyses:
            name = f"fits_{_slug(analysis.attention)}.json"
            atomic_write_text(out / name, json.dumps(analysis.to_json(), indent=2, allow_nan=False) + "\n")
            files.append(name)
    summary = build_summary(df, points, analyses, source=str(results_csv), figures=files, fit_points=fit_points,
                            n_bootstrap=n_bootstrap)
    atomic_write_text(out / "summary.md", summary)
    return summary
