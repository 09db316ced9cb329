"""Analysis of crossover sweeps: reads results tables only (DESIGN.md contract 4), never a model.

- ``analysis.table``: the results table's schema, ``flops`` and atomic I/O (also used by the writer).
- ``load_results``: read and validate ``results.csv``; every malformed table raises ``TableError``
  (a ``ValueError`` with a one-line message).
- ``fit_table``: the full data-constrained law (R_D*, R_N*) per family, crossovers with AR per
  budget, C_crit(U) power laws (JSON).
- ``write_report``: figures, ``fits.json`` and ``summary.md`` in a report folder.
- ``analysis.law`` (the formula), ``analysis.lawfit`` (its fit), ``analysis.synthetic`` (tables
  generated from known laws), ``analysis.plots`` / ``analysis.plotkit`` (figures).

The heavy entry points are imported on first use, so ``analysis.table`` loads without scipy or matplotlib.
"""

from __future__ import annotations

from typing import Any

_LAZY = {"fit_table": "analysis.fits", "load_results": "analysis.results", "write_report": "analysis.report",
         "TableError": "analysis.results"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")


__all__ = ["TableError", "fit_table", "load_results", "write_report"]
