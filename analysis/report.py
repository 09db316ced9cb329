"""Write a crossover report folder from a results table: figures, fits.json and summary.md.

Layout of ``out_dir`` (the suffix ``_<attention>`` is added to every figure name only when the
table holds several attention kinds):

* ``loss_vs_compute.{png,pdf}``: loss against 6ND FLOPs per budget, best-so-far frontiers.
* ``loss_vs_epochs.{png,pdf}``: loss against epochs per model, a colour per budget.
* ``law_fit.{png,pdf}``: data and the fitted data-constrained law per objective.
* ``c_crit.{png,pdf}``: crossover compute against U with the power-law fit (when at least one
  budget has a crossover; the fit line needs two). Otherwise the crossover table in
  ``summary.md`` is the only record.
* ``fits.json``: ``analysis.fits.fit_table`` output for the default attention kind ("dense", or
  the only/first kind); with several kinds also ``fits_<attention>.json`` per kind.
* ``summary.md``: provenance, best losses, crossovers, law fits and C_crit; written last.

Every file is written to a temporary file in ``out_dir`` and moved into place with
``os.replace``, so a reader never sees a half-written file.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from analysis.crossover import PRABHUDESAI_C_CRIT_EXPONENT, Crossover
from analysis.fits import Analysis, FitPoints, analyse
from analysis.plots import (
    format_sci,
    format_tokens,
    measurement_note,
    plot_c_crit,
    plot_law_fit,
    plot_loss_vs_compute,
    plot_loss_vs_epochs,
    style_context,
)
from analysis.results import OBJECTIVES, aggregate_points, default_attention, load_results

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


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then move it into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual permissions
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _write_text(path: Path, text: str) -> None:
    def write(tmp: str) -> None:
        Path(tmp).write_text(text, encoding="utf-8")

    _atomic_write(path, write)


def _save_figure(fig: Figure, out_dir: Path, stem: str) -> list[str]:
    names = []
    for ext in ("png", "pdf"):
        _atomic_write(out_dir / f"{stem}.{ext}", lambda tmp, ext=ext: fig.savefig(tmp, format=ext, bbox_inches="tight"))
        names.append(f"{stem}.{ext}")
    return names


def _values(df: pd.DataFrame, column: str) -> str:
    values = sorted(df[column].dropna().unique())
    return ", ".join(format(v, "g") if isinstance(v, float) else str(v) for v in values)


def _provenance(df: pd.DataFrame, source: str) -> list[str]:
    lines = ["## Provenance", "", f"- source: `{source}` ({len(df)} rows, {df['run_id'].nunique()} runs)"]
    diffusion = df[df["objective"] == "diffusion"]
    for rows, columns in ((df, _PROVENANCE_COLUMNS), (diffusion, _DIFFUSION_COLUMNS)):
        for column, label in columns.items():
            if column in rows.columns and rows[column].notna().any():
                lines.append(f"- {label}: {_values(rows, column)}")
    models = df.drop_duplicates("model").sort_values("non_embedding_params")
    described = [
        f"{m.model} (N = {format_tokens(m.non_embedding_params)} non-embedding, {format_tokens(m.params)} total)"
        for m in models.itertuples(index=False)
    ]
    lines.append(f"- models: {'; '.join(described)}")
    lines.append(f"- attention: {_values(df, 'attention')}")
    lines.append(f"- seeds: {_values(df, 'seed')}")
    lines.append(f"- objectives: {_values(df, 'objective')}")
    return lines


def _crossover_cell(c: Crossover) -> str:
    if c.flops is not None:
        return format_sci(c.flops)
    if c.max_diffusion_flops is not None and c.ar_best is not None:
        return f"none up to {format_sci(c.max_diffusion_flops)}"
    return f"n/a ({c.note})"


def _opt(x: float | None, fmt: str = ".4g") -> str:
    return "null" if x is None else format(x, fmt)


def _best_table(points: pd.DataFrame, analysis: Analysis) -> list[str]:
    lines = [
        "### Best validation loss per budget",
        "",
        "| U (tokens) | objective | best loss (nats/token) | ± SE | epoch | model | compute (FLOPs) "
        "| crossover (FLOPs) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    crossovers = {c.unique_tokens: c for c in analysis.crossovers}
    for budget in sorted(points["unique_tokens"].unique()):
        for objective in OBJECTIVES:
            own = points[(points["unique_tokens"] == budget) & (points["objective"] == objective)]
            if own.empty:
                continue
            best = own.loc[own["val_loss"].idxmin()]
            cross = _crossover_cell(crossovers[int(budget)]) if objective == "diffusion" else ""
            lines.append(
                f"| {format_tokens(budget)} | {objective} | {best['val_loss']:.4f} | {best['se']:.4f} | "
                f"{int(best['epochs'])} | {best['model']} | {format_sci(best['flops'])} | {cross} |"
            )
    return lines


def _crossover_table(analysis: Analysis) -> list[str]:
    lines = [
        "### Crossover",
        "",
        "| U (tokens) | AR best (nats/token) | crossover C, first evaluated (FLOPs) | interpolated C (FLOPs) "
        "| diffusion frontier there | significant (2 SE) | first significant C (FLOPs) | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in analysis.crossovers:
        ar_best = "n/a" if c.ar_best is None else f"{c.ar_best:.4f} ± {c.ar_best_se:.4f}"
        lines.append(
            f"| {format_tokens(c.unique_tokens)} | {ar_best} | {_crossover_cell(c)} | "
            f"{'—' if c.flops_interp is None else format_sci(c.flops_interp)} | "
            f"{'—' if c.frontier_loss is None else f'{c.frontier_loss:.4f}'} | "
            f"{'—' if c.significant is None else ('yes' if c.significant else 'no')} | "
            f"{'—' if c.flops_significant is None else format_sci(c.flops_significant)} | {c.note or ''} |"
        )
    return lines


def _law_table(analysis: Analysis, n_bootstrap: int) -> list[str]:
    lines = [
        "### Data-constrained law (Muennighoff et al.)",
        "",
        "L = E + A/N^alpha + B/D'^beta, D' = U + U R_D* (1 - exp(-(epochs - 1)/R_D*)); "
        f"Huber (delta 1e-3) on log-loss; R_D* ± half the central 68% interval of {n_bootstrap} bootstrap refits.",
        "",
        "| objective | R_D* | ± | E | A | alpha | B | beta | points fitted (excluded) | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for objective in OBJECTIVES:
        law = analysis.laws[objective]
        lines.append(
            f"| {objective} | {_opt(law.R_D_star)} | {_opt(law.R_D_star_err)} | {_opt(law.E)} | {_opt(law.A)} | "
            f"{_opt(law.alpha, '.3f')} | {_opt(law.B)} | {_opt(law.beta, '.3f')} | "
            f"{law.n_points} ({law.n_excluded}) | {law.note or ''} |"
        )
    return lines


def _c_crit_lines(analysis: Analysis) -> list[str]:
    fit = analysis.c_crit
    found = sum(c.flops is not None for c in analysis.crossovers)
    if fit is None:
        text = f"C_crit exponent: null (needs crossovers at >= 2 budgets; found {found})."
    else:
        se = f" ± {fit.exponent_se:.3f}" if fit.exponent_se is not None else ""
        text = (
            f"C_crit = c U^k over {fit.n_points} budgets (U raw tokens, C FLOPs, interpolated crossover): "
            f"**k = {fit.exponent:.3f}{se}**, c = {format_sci(fit.prefactor)}."
        )
    return ["### Critical compute", "", text + f" Reference: Prabhudesai et al. k = {PRABHUDESAI_C_CRIT_EXPONENT} "
            "(C ~= 192 U^2.174)."]


_METHOD = """## Definitions

- Points are seed means per (attention, objective, model, U, epochs); SE = sqrt(MC SE^2 + seed SD^2 / n)
  (the Monte Carlo SE of the diffusion ELBO; AR has none, so with one seed its SE is 0).
- Compute C = 6 N D with N = non-embedding parameters and D = tokens seen = U x epochs.
- Best-so-far frontier: lowest loss over points with compute <= C (all models at that U).
- Crossover: the first evaluated diffusion compute at which the diffusion frontier is below AR's
  best loss at that U (minimum over all AR points); "none up to C" names the largest diffusion compute
  tried. Interpolated: linear in log C between the last frontier step above and the first below.
  Significant: frontier + 2 sqrt(SE_diffusion^2 + SE_AR^2) < AR best. fits.json reports the first
  evaluated compute; the C_crit fit uses the interpolated one (a shared epoch grid quantises the former).
- Law fits use {fit_points}."""


def build_summary(
    df: pd.DataFrame,
    points: pd.DataFrame,
    analyses: list[Analysis],
    *,
    source: str,
    figures: list[str],
    fit_points: FitPoints,
    n_bootstrap: int,
) -> str:
    """The summary Markdown for one results table and its per-attention analyses."""
    lines = ["# Crossover report: masked diffusion vs autoregressive under repeated data", ""]
    lines += [measurement_note(df) + "; losses in nats/token.", ""]
    lines += _provenance(df, source)
    for analysis in analyses:
        own = points[points["attention"] == analysis.attention]
        lines += ["", f"## {analysis.attention} attention", ""]
        lines += _best_table(own, analysis) + [""]
        lines += _crossover_table(analysis) + [""]
        lines += _law_table(analysis, n_bootstrap) + [""]
        lines += _c_crit_lines(analysis)
    which = "each curve's epochs up to its best epoch" if fit_points == "up_to_best" else "all points"
    lines += ["", _METHOD.format(fit_points=which), "", "## Files", ""]
    lines += [f"- {name}" for name in figures]
    return "\n".join(lines) + "\n"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text)


def write_report(
    results_csv: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    fit_points: FitPoints = "up_to_best",
    n_bootstrap: int = 200,
    seed: int = 0,
) -> str:
    """Analyse ``results_csv`` and write the report folder ``out_dir``; return the summary Markdown."""
    df = load_results(results_csv)
    points = aggregate_points(df)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kinds = sorted(points["attention"].unique())
    analyses = [analyse(points, k, fit_points=fit_points, n_bootstrap=n_bootstrap, seed=seed) for k in kinds]
    note = measurement_note(df)
    files: list[str] = []
    with style_context():
        for analysis in analyses:
            own = points[points["attention"] == analysis.attention]
            suffix = f"_{_slug(analysis.attention)}" if len(kinds) > 1 else ""
            figures = {
                "loss_vs_compute": plot_loss_vs_compute(own, analysis.crossovers, note=note),
                "loss_vs_epochs": plot_loss_vs_epochs(own, note=note),
                "law_fit": plot_law_fit(own, analysis.laws, fit_points=fit_points, note=note),
            }
            if any(c.flops is not None for c in analysis.crossovers):
                figures["c_crit"] = plot_c_crit(analysis.crossovers, analysis.c_crit, note=note)
            for stem, fig in figures.items():
                files += _save_figure(fig, out, stem + suffix)
    reference = next(a for a in analyses if a.attention == default_attention(kinds))
    _write_text(out / "fits.json", json.dumps(reference.to_json(), indent=2, allow_nan=False) + "\n")
    files.append(f"fits.json ({reference.attention} attention)")
    if len(kinds) > 1:
        for analysis in analyses:
            name = f"fits_{_slug(analysis.attention)}.json"
            _write_text(out / name, json.dumps(analysis.to_json(), indent=2, allow_nan=False) + "\n")
            files.append(name)
    summary = build_summary(
        df, points, analyses, source=str(results_csv), figures=files, fit_points=fit_points, n_bootstrap=n_bootstrap
    )
    _write_text(out / "summary.md", summary)
    return summary
