"""dyncal: measure, calibrate and verify early-exit (multi-exit) classifiers.

Reading runs needs numpy only; the verbs that run models (collect, profile, verify)
import torch when first used.

Example:
    >>> import dyncal
    >>> sorted(n for n in dyncal.__all__ if n.startswith("load"))
    ['load_dataset', 'load_early_exit', 'load_model', 'load_run']
"""

from __future__ import annotations

import importlib
from typing import Any

from dyncal.artifacts.costs import CostTable, LatencyProfile
from dyncal.artifacts.run import Run, load_run
from dyncal.artifacts.run_document import Provenance
from dyncal.artifacts.run_import import import_arrays, import_npz
from dyncal.errors import DyncalError

__version__ = "0.1.0"

# Heavier entry points, imported on first use: name -> module.
_LAZY = {
    "collect_run": "dyncal.verbs.collect",
    "load_model": "dyncal.models",
    "load_dataset": "dyncal.data",
    "profile_run": "dyncal.verbs.profile",
    "solve_run": "dyncal.calibrate.solvers",
    "ThresholdSolver": "dyncal.calibrate.estimator",
    "compute_frontier": "dyncal.calibrate.frontier",
    "build_report": "dyncal.reports.pdf",
    "verify_run": "dyncal.verbs.verify",
    "EarlyExitRunner": "dyncal.analysis.early_exit",
    "build_stages": "dyncal.analysis.stages",
    "export_package": "dyncal.verbs.export",
    "load_early_exit": "dyncal.analysis.package_runner",
}

__all__ = [
    "CostTable",
    "DyncalError",
    "LatencyProfile",
    "Provenance",
    "Run",
    "import_arrays",
    "import_npz",
    "load_run",
    "__version__",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dyncal' has no attribute {name!r}")
