"""Results tables generated from known laws: to check a fitting protocol or a figure layout before a sweep.

``law_table`` writes contract-4 rows (plus ``run_epochs`` and ``val_loss_se``) whose losses follow
``analysis.law.predict`` with given parameters per objective, optionally with multiplicative
noise: loss * exp(noise * z), z ~ N(0, 1), and an optional overfitting bump per objective,
``c * max(0, ln(epochs / e0))**2`` nats added for ``overfit={objective: (c, e0)}`` (the law itself
cannot turn up). Two designs:

* ``separate_runs=False``: one run per (objective, N, U), evaluated at every epoch count (a long
  run with many evaluations, like the ``quick`` preset);
* ``separate_runs=True``: one run per epoch count (Prabhudesai et al.'s protocol), evaluated at its
  last epoch and, with ``intermediate=True``, also at the smaller epoch counts of the grid.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from analysis.law import LawParams, predict
from analysis.table import flops


def model_name(n: float) -> str:
    """'m20M' for 2e7 non-embedding parameters."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"m{n / scale:.4g}{suffix}"
    return f"m{n:g}"


def _row(objective: str, attention: str, n: int, u: int, e: float, run_epochs: float, loss: float, se: float,
         seed: int) -> dict[str, object]:
    seen = int(round(u * e))
    return {
        "run_id": f"{attention}-{objective}-{model_name(n)}-U{u}-E{run_epochs:g}-s{seed}",
        "objective": objective, "attention": attention, "model": model_name(n),
        "params": int(n * 1.25) + 1_000_000, "non_embedding_params": int(n), "unique_tokens": int(u),
        "epochs": float(e), "tokens_seen": seen, "flops": flops(n, u, seen / u), "val_loss": loss, "seed": seed,
        "run_epochs": float(run_epochs), "val_loss_se": se,
    }


def _evaluations(epochs: Sequence[float], separate_runs: bool, intermediate: bool) -> Iterable[tuple[float, float]]:
    """(epoch evaluated, run length) pairs of one (objective, N, U)."""
    grid = sorted(set(float(e) for e in epochs))
    if not separate_runs:
        return [(e, grid[-1]) for e in grid]
    return [(e, run) for run in grid for e in grid if e == run or (intermediate and e < run)]


def law_table(truths: Mapping[str, LawParams], *, params: Sequence[float], budgets: Sequence[float],
              epochs: Sequence[float], noise: float = 0.0, seed: int = 0, attention: str = "dense",
              separate_runs: bool = False, intermediate: bool = False,
              se: Mapping[str, float] | None = None,
              overfit: Mapping[str, tuple[float, float]] | None = None) -> pd.DataFrame:
    """A results table whose losses follow the law of each objective (module docstring).

    ``params``: non-embedding parameter counts; ``budgets``: unique tokens U; ``epochs``: epoch counts
    (fractional allowed); ``se``: the ``val_loss_se`` written per objective (default 0).
    """
    rng = np.random.default_rng(seed)
    rows = []
    for objective, truth in truths.items():
        for n in params:
            for u in budgets:
                for e, run in _evaluations(epochs, separate_runs, intermediate):
                    clean = float(predict(n, u, round(u * e), truth))
                    if overfit and objective in overfit:
                        c, onset = overfit[objective]
                        clean += c * max(0.0, math.log(e / onset)) ** 2
                    loss = clean * math.exp(noise * rng.standard_normal()) if noise else clean
                    rows.append(_row(objective, attention, int(n), int(u), e, run, loss, (se or {}).get(objective, 0.0),
                                     0))
    return pd.DataFrame(rows)
