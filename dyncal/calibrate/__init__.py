"""Scores, temperatures, budgets, threshold solvers and risk control.

Entry points: :func:`dyncal.calibrate.solvers.solve_run` (``dyncal solve``) and the same as an
estimator, :class:`dyncal.calibrate.estimator.ThresholdSolver`; the exit rule
:func:`dyncal.calibrate.policy.assign_exits`, :func:`dyncal.calibrate.budget.parse_budget`,
:class:`dyncal.calibrate.temperature.TemperatureScaler` and
:func:`dyncal.calibrate.risk.learn_then_test`.
"""

from dyncal.calibrate.budget import parse_budget, resolve_budget
from dyncal.calibrate.estimator import ThresholdSolver
from dyncal.calibrate.policy import assign_exits, evaluate_policy
from dyncal.calibrate.scores import SCORES, exit_scores
from dyncal.calibrate.solvers import DEFAULT_METHOD, METHODS, ThresholdsResult, solve_run
from dyncal.calibrate.temperature import TemperatureScaler

__all__ = [
    "SCORES",
    "exit_scores",
    "DEFAULT_METHOD",
    "METHODS",
    "ThresholdsResult",
    "solve_run",
    "ThresholdSolver",
    "assign_exits",
    "evaluate_policy",
    "parse_budget",
    "resolve_budget",
    "TemperatureScaler",
]
