"""Scores, temperatures, budgets and threshold solvers."""

from dyncal.calibrate.scores import SCORES, exit_scores

__all__ = ["SCORES", "exit_scores"]
