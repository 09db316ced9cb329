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
"""

from __future__ import annotations

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
