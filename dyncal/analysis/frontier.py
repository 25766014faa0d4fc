"""The frontier under its first address; the names live where they belong.

:mod:`dyncal.calibrate.frontier` computes it (a solve over a grid of budgets) and
:mod:`dyncal.artifacts.frontier` writes its CSV. The names stay importable from here for code
written against ``dyncal.analysis.frontier``.
"""

from dyncal.artifacts.frontier import frontier_columns, write_frontier_csv
from dyncal.calibrate.frontier import compute_frontier, oracle_at_budget
from dyncal.calibrate.options import MAX_BUDGETS

__all__ = ["compute_frontier", "oracle_at_budget", "write_frontier_csv", "frontier_columns", "MAX_BUDGETS"]
