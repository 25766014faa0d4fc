"""The frontier under its first address; the names live where they belong.

:mod:`dyncal.calibrate.frontier` computes it (a solve over a grid of budgets) and
:mod:`dyncal.artifacts.frontier` writes its CSV. The names stay importable from here for code
written against ``dyncal.analysis.frontier``.
"""

from dyncal.artifacts.frontier import frontier_columns, write_frontier_csv
from dyncal.calibrate.frontier import MAX_BUDGETS, compute_frontier, oracle_at_budget

__all__ = ["compute_frontier", "oracle_at_budget", "write_frontier_csv", "frontier_columns", "MAX_BUDGETS"]
