"""Scores, temperatures, budgets, threshold solvers and risk control.

Entry points: :func:`dyncal.calibrate.solvers.solve_run` (``dyncal solve``) and the same as an
estimator, :class:`dyncal.calibrate.estimator.ThresholdSolver`; the exit rule
:func:`dyncal.calibrate.policy.assign_exits`, :func:`dyncal.calibrate.budget.parse_budget`,
:class:`dyncal.calibrate.temperature.TemperatureScaler` and
:func:`dyncal.calibrate.risk.learn_then_test`.
"""

import importlib
from typing import Any

# Imported on first use, so that importing one submodule (the exit rule, the scores) does
# not import the solvers.
_LAZY = {
    "parse_budget": "dyncal.calibrate.budget",
    "resolve_budget": "dyncal.calibrate.budget",
    "ThresholdSolver": "dyncal.calibrate.estimator",
    "assign_exits": "dyncal.calibrate.policy",
    "evaluate_policy": "dyncal.calibrate.policy",
    "exit_scores": "dyncal.calibrate.scores",
    "solve_run": "dyncal.calibrate.solvers",
    "TemperatureScaler": "dyncal.calibrate.temperature",
}

__all__ = [*_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dyncal.calibrate' has no attribute {name!r}")
