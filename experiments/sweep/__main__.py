"""Worker entry point: ``python -m experiments.sweep ROOT CELL_ID THREADS`` trains one cell."""

import sys

from experiments.sweep.state import run_cell

status = run_cell(sys.argv[1], sys.argv[2], int(sys.argv[3]))
sys.exit(0 if status == "done" else 1)
