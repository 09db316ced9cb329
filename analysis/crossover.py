"""Best-so-far compute frontiers and the crossover of each family with AR per unique-token budget.

Definitions (all within one attention kind and one unique budget U; points are seed means from
``analysis.results.aggregate_points``; compute is C = 6 N D in FLOPs, N non-embedding, D = U * epochs
tokens). "Diffusion" below stands for any family compared with AR (``diffusion``,
``block_diffusion-b4``, ...); AR is the family ``ar``:

* **Frontier** of an objective: f(c) = min over its points with flops <= c of the validation loss
  (Prabhudesai et al. Fig. 1). It is a step function that can only change at evaluated computes.
* **AR best**: the lowest AR loss over every AR point at U (all models, all epochs).
* **Crossover compute** ``flops``: the smallest *evaluated* diffusion compute c with
  f_diffusion(c) < AR best. No interpolation in this number; it is a measured grid point and an
  upper bound on the true crossing. ``None`` when diffusion never gets below AR best; then
  ``max_diffusion_flops`` is the largest diffusion compute tried ("no crossover up to C").
* **Interpolated** ``flops_interp``: linear in log-compute between the last frontier step above AR
  best (c0, f0) and the first below (c1, f1): log C = log c0 + (f0 - best)/(f0 - f1) log(c1/c0).
  ``None`` when diffusion is already below AR best at its smallest compute.
* **Significance**: with s = sqrt(se_diffusion^2 + se_AR^2) (the points' standard errors; the
  diffusion SE is the ELBO's Monte Carlo SE plus seed spread when several seeds exist, AR's is 0
  with one seed), the crossover is ``significant`` when f_diffusion(c) + 2 s < AR best at the
  crossover compute; ``flops_significant`` is the first evaluated compute where that holds. With an
  unknown SE (a table without ``val_loss_se`` and one seed) significance is unknown (``None``).

Comparing with AR's best over all compute makes this the compute at which diffusion beats
anything AR reached at this budget; past AR's best compute it equals the crossing of the two
frontiers at equal compute.

**Fair comparison** (``fair_comparisons``), per U and family: each objective's best point over *all
its own* training settings (the ``settings`` label of ``analysis.results``: learning rate, input
masking, weight decay, EMA, dropout, curriculum, ...), model sizes and evaluated epochs (early
stopping read from the evaluation table: the best evaluated epoch of each run; no new runs), never
a tuned objective against the other's default. The gap (family best - AR best, nats/token, positive
= AR better) carries two error parts: the Monte Carlo SE of the ELBO estimate,
sqrt(mc_family^2 + mc_AR^2) (AR's exact NLL has none: an unknown AR MC SE counts as 0), and the seed
spread, sqrt(sum SD^2 / n) over the sides with >= 2 seeds; combined = sqrt(MC^2 + seeds^2). Verdict:
"crossover (significant)" when gap + 2 combined < 0, "crossover (not significant)" when gap < 0
otherwise, "no crossover" when gap - 2 combined > 0, "inconclusive" otherwise.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.results import REFERENCE_FAMILY, families

#: Prabhudesai et al. (arXiv 2507.15857, Sec. 3.3): C_crit ~= 192 * U**2.174, U in raw tokens, C in FLOPs.
PRABHUDESAI_C_CRIT_PREFACTOR = 192.0
PRABHUDESAI_C_CRIT_EXPONENT = 2.174


def prabhudesai_c_crit(unique_tokens: np.ndarray | float) -> np.ndarray:
    """Prabhudesai et al.'s critical compute (FLOPs) for U raw unique tokens."""
    return PRABHUDESAI_C_CRIT_PREFACTOR * np.asarray(unique_tokens, dtype=float) ** PRABHUDESAI_C_CRIT_EXPONENT


@dataclass(frozen=True)
class Crossover:
    """Crossover of one family with AR at one (attention, U); see the module docstring for definitions."""

    attention: str
    family: str
    unique_tokens: int
    ar_best: float | None
    ar_best_se: float | None
    flops: float | None
    flops_interp: float | None
    frontier_loss: float | None
    significant: bool | None
    flops_significant: float | None
    max_diffusion_flops: float | None
    note: str | None = None

    def to_json(self) -> dict[str, object]:
        """The ``fit_table`` entry: family, U, first evaluated and interpolated crossover compute, significance."""
        return {"family": self.family, "unique_tokens": int(self.unique_tokens),
                "flops": None if self.flops is None else float(self.flops),
                "flops_interp": None if self.flops_interp is None else float(self.flops_interp),
                "significant": self.significant}


def frontier(points: pd.DataFrame) -> pd.DataFrame:
    """Best-so-far frontier of one objective's points (usually one budget).

    Returns one row per distinct compute, ascending: ``flops``, ``loss`` (lowest loss over points
    with flops <= this compute) and the ``se``, ``epochs``, ``model`` of the point attaining it.
    """
    ordered = points.sort_values(["flops", "val_loss"], kind="stable")
    rows: list[dict[str, object]] = []
    best = None
    for point in ordered.itertuples(index=False):
        if best is None or point.val_loss < best.val_loss:
            best = point
        row = {"flops": point.flops, "loss": best.val_loss, "se": best.se, "epochs": best.epochs, "model": best.model}
        if rows and rows[-1]["flops"] == point.flops:
            rows[-1] = row
        else:
            rows.append(row)
    return pd.DataFrame(rows, columns=["flops", "loss", "se", "epochs", "model"])


def _crossover_at_budget(attention: str, family: str, budget: int, ar: pd.DataFrame,
                         diffusion: pd.DataFrame) -> Crossover:
    if ar.empty or diffusion.empty:
        missing = "AR" if ar.empty else family
        max_flops = float(diffusion["flops"].max()) if not diffusion.empty else None
        return Crossover(attention, family, budget, None, None, None, None, None, None, None, max_flops,
                         f"no {missing} points")
    ar_row = ar.loc[ar["val_loss"].idxmin()]
    ar_best, ar_se = float(ar_row["val_loss"]), float(ar_row["se"])
    fr = frontier(diffusion)
    loss, flops = fr["loss"].to_numpy(), fr["flops"].to_numpy()
    margin = 2.0 * np.sqrt(fr["se"].to_numpy(dtype=float) ** 2 + ar_se**2)  # NaN where an SE is unknown
    below = np.flatnonzero(loss < ar_best)
    sig = np.flatnonzero(loss + margin < ar_best)
    known = bool(np.isfinite(margin).all())
    flops_significant = float(flops[sig[0]]) if sig.size and known else None
    max_flops = float(flops[-1])
    if not below.size:
        return Crossover(attention, family, budget, ar_best, ar_se, None, None, None, False if known else None, None,
                         max_flops)
    i = below[0]
    interp, note = None, None
    if i == 0:
        note = "diffusion is below AR best already at its smallest compute"
    else:
        t = (loss[i - 1] - ar_best) / (loss[i - 1] - loss[i])
        interp = float(np.exp(np.log(flops[i - 1]) + t * np.log(flops[i] / flops[i - 1])))
    significant = bool(loss[i] + margin[i] < ar_best) if np.isfinite(margin[i]) else None
    return Crossover(attention, family, budget, ar_best, ar_se, float(flops[i]), interp, float(loss[i]), significant,
                     flops_significant, max_flops, note)


def find_crossovers(points: pd.DataFrame, attention: str) -> list[Crossover]:
    """One ``Crossover`` per (family other than AR, unique budget) for ``attention``: by family, then U.

    Empty when the points have no AR family.
    """
    pts = points[points["attention"] == attention]
    names = families(pts)
    if REFERENCE_FAMILY not in names:
        return []
    result = []
    for family in names[1:]:
        for budget in sorted(pts["unique_tokens"].unique()):
            at_u = pts[pts["unique_tokens"] == budget]
            ar, other = at_u[at_u["family"] == REFERENCE_FAMILY], at_u[at_u["family"] == family]
            result.append(_crossover_at_budget(attention, family, int(budget), ar, other))
    return result


# --------------------------------------------------------------------------- fair comparison per budget
_UNSET = {"", "nan", "none", "<na>", "null"}
_SETTING_SPLIT = re.compile(r",?\s+(?=[A-Za-z_][A-Za-z0-9_.]*=)")


def parse_settings(label: str) -> dict[str, str]:
    """``key=value`` pairs of a ``settings`` label ("k=v k=v" or "k=v, k=v"); unset values (nan, empty) left out."""
    pairs = (part.split("=", 1) for part in _SETTING_SPLIT.split(str(label).strip()) if "=" in part)
    return {k.strip(): v.strip().rstrip(",") for k, v in pairs if v.strip().rstrip(",").lower() not in _UNSET}


def varied_settings(labels: Iterable[str]) -> tuple[str, ...]:
    """Setting names whose value differs between ``labels`` (a name unset in one label and set in another varies)."""
    parsed = [parse_settings(label) for label in set(labels)]
    keys = sorted({k for p in parsed for k in p})
    return tuple(k for k in keys if len({p.get(k) for p in parsed}) > 1)


def describe_settings(label: str, shown: Iterable[str]) -> str:
    """The ``shown`` settings of ``label`` as "k=v, k=v"; "—" when none of them is set (the settings shared
    by every run are not repeated: they need not be the defaults)."""
    parsed = parse_settings(label)
    return ", ".join(f"{k}={parsed[k]}" for k in shown if k in parsed) or "—"


@dataclass(frozen=True)
class BestPoint:
    """One family's lowest seed-mean point at one (attention, U), over all its settings, models and epochs.

    ``mc_se``: Monte Carlo SE of the mean (None: unknown; 0 for AR's exact NLL); ``seed_se``: seed SD / sqrt(n)
    (None with one seed); ``n_settings``, ``n_models``: distinct settings labels and models of the family at U;
    ``varied``: setting names that differ between its runs at U.
    """

    family: str
    loss: float
    mc_se: float | None
    seed_se: float | None
    n_seeds: int
    settings: str
    model: str
    epochs: float
    run_epochs: float
    flops: float
    n_settings: int
    n_models: int
    varied: tuple[str, ...]

    @property
    def tuned(self) -> bool:
        return self.n_settings > 1

    def to_json(self, shown: Iterable[str]) -> dict[str, object]:
        return {"loss": float(self.loss), "mc_se": _opt(self.mc_se), "seed_se": _opt(self.seed_se),
                "n_seeds": int(self.n_seeds), "settings": self.settings,
                "settings_shown": describe_settings(self.settings, shown), "model": self.model,
                "epochs": float(self.epochs), "run_epochs": float(self.run_epochs), "flops": float(self.flops),
                "n_settings": int(self.n_settings), "n_models": int(self.n_models), "varied": list(self.varied)}


def _opt(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _known(x: object) -> float | None:
    value = float(x)  # type: ignore[arg-type]
    return value if math.isfinite(value) else None


def best_point(own: pd.DataFrame) -> BestPoint:
    """The lowest point of one family's points at one U (``aggregate_points`` rows, non-empty)."""
    row = own.loc[own["val_loss"].idxmin()]
    family = str(row["family"])
    mc = _known(row["mc_se"])
    if mc is None and family == REFERENCE_FAMILY:
        mc = 0.0  # exact NLL: no Monte Carlo error
    n = int(row["n_seeds"])
    seed_se = _known(row["seed_std"] / math.sqrt(n)) if n > 1 else None
    return BestPoint(family, float(row["val_loss"]), mc, seed_se, n, str(row["settings"]), str(row["model"]),
                     float(row["epochs"]), float(row["run_epochs"]), float(row["flops"]),
                     int(own["settings"].nunique()), int(own["model"].nunique()), varied_settings(own["settings"]))


def verdict(gap: float, combined: float | None) -> str:
    """The fair-comparison verdict (module docstring); "(significance unknown)" without an SE."""
    if combined is None:
        return f"{'crossover' if gap < 0 else 'no crossover'} (significance unknown)"
    if gap + 2.0 * combined < 0:
        return "crossover (significant)"
    if gap < 0:
        return "crossover (not significant)"
    if gap - 2.0 * combined > 0:
        return "no crossover"
    return "inconclusive"


@dataclass(frozen=True)
class FairComparison:
    """A family's best against AR's best at one (attention, U), each over its own settings (module docstring)."""

    attention: str
    unique_tokens: int
    ar: BestPoint
    other: BestPoint

    @property
    def family(self) -> str:
        return self.other.family

    @property
    def gap(self) -> float:
        """Family best - AR best (nats/token); positive: AR better."""
        return self.other.loss - self.ar.loss

    @property
    def mc_se(self) -> float | None:
        """Monte Carlo part of the gap's SE (None when the family's is unknown)."""
        if self.other.mc_se is None or self.ar.mc_se is None:
            return None
        return math.hypot(self.other.mc_se, self.ar.mc_se)

    @property
    def seed_se(self) -> float | None:
        """Seed part of the gap's SE over the sides with >= 2 seeds (None when both have one seed)."""
        parts = [s for s in (self.other.seed_se, self.ar.seed_se) if s is not None]
        return math.sqrt(sum(s * s for s in parts)) if parts else None

    @property
    def combined_se(self) -> float | None:
        """sqrt(MC^2 + seeds^2) over the known parts (None when neither is known)."""
        parts = [s for s in (self.mc_se, self.seed_se) if s is not None]
        return math.sqrt(sum(s * s for s in parts)) if parts else None

    @property
    def verdict(self) -> str:
        return verdict(self.gap, self.combined_se)

    @property
    def shown_settings(self) -> tuple[str, ...]:
        """Setting names worth naming: those varied by either side at this U."""
        return tuple(sorted(set(self.ar.varied) | set(self.other.varied)))

    def to_json(self) -> dict[str, object]:
        shown = self.shown_settings
        return {"family": self.family, "unique_tokens": int(self.unique_tokens), "gap": float(self.gap),
                "mc_se": _opt(self.mc_se), "seed_se": _opt(self.seed_se), "combined_se": _opt(self.combined_se),
                "verdict": self.verdict, "ar": self.ar.to_json(shown), "other": self.other.to_json(shown)}


def fair_comparisons(points: pd.DataFrame, attention: str) -> list[FairComparison]:
    """One ``FairComparison`` per (unique budget, family other than AR) with points of both: by U, then family.

    ``points`` are ``analysis.results.aggregate_points`` rows (``settings``, ``mc_se``, ``seed_std``,
    ``n_seeds``, ``run_epochs``); empty when there is no AR family.
    """
    pts = points[points["attention"] == attention]
    names = families(pts)
    if REFERENCE_FAMILY not in names:
        return []
    result = []
    for budget in sorted(pts["unique_tokens"].unique()):
        at_u = pts[pts["unique_tokens"] == budget]
        ar = at_u[at_u["family"] == REFERENCE_FAMILY]
        if ar.empty:
            continue
        ar_best = best_point(ar)
        for family in names[1:]:
            own = at_u[at_u["family"] == family]
            if not own.empty:
                result.append(FairComparison(attention, int(budget), ar_best, best_point(own)))
    return result
