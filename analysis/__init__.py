"""Analysis of crossover sweeps: reads results tables only (DESIGN.md contract 4), never a model.

- ``load_results``: read and validate ``results.csv``.
- ``fit_table``: data-constrained law per objective, crossovers per budget, C_crit exponent (JSON).
- ``write_report``: figures, ``fits.json`` and ``summary.md`` in a report folder.
"""

from analysis.fits import fit_table
from analysis.report import write_report
from analysis.results import load_results

__all__ = ["fit_table", "load_results", "write_report"]
