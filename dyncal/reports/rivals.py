"""Report page 1: held out, could an exit alone or the geometric baseline have done better?

``dyncal solve`` guards its answer on the fit half (:mod:`dyncal.calibrate.guard`): nothing
it could have chosen within the budget is more accurate there. The held-out half can still
disagree. The report compares the thresholds it judges with the same rivals on the judged
(held-out) rows: every exit alone whose cost is within the operating point's budget, and
``geometric``'s answer at that budget (fitted on the fit half, as solve fits it). A rival
more accurate held out is *significant* when the exact McNemar test of the paired
difference gives p < :data:`SIGNIFICANCE`; only those raise a warning, since strict
held-out differences are mostly noise (``benchmarks/heldout_comparison.md``, table (a)).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dyncal.calibrate.prepare import PreparedRun
from dyncal.reports.decision import ExitOutcome
from dyncal.stats import mcnemar_pvalue

__all__ = ["HeldOutRival", "held_out_rivals", "rival_warnings", "SIGNIFICANCE"]

SIGNIFICANCE = 0.05
"""Largest McNemar p-value at which a held-out rival's advantage is warned about."""
_TOL = 1e-9


@dataclass(frozen=True)
class HeldOutRival:
    """A rival of the operating point, on the rows the operating point is judged on.

    Attributes:
        name: ``"exit 2 alone"`` or ``"geometric"``.
        cost_fraction: Its cost on the fit half, a fraction of the last exit's (budget's unit).
        accuracy: Its accuracy on the judged rows.
        difference: ``accuracy`` minus the operating point's there.
        p_value: Exact McNemar p-value of the paired difference.
    """

    name: str
    cost_fraction: float
    accuracy: float
    difference: float
    p_value: float

    @property
    def significantly_better(self) -> bool:
        """More accurate than the operating point, with p < :data:`SIGNIFICANCE`."""
        return self.difference > _TOL and self.p_value < SIGNIFICANCE


def held_out_rivals(prep: PreparedRun, thresholds: Mapping[str, Any], outcome: ExitOutcome) -> list[HeldOutRival]:
    """Every exit alone within the operating point's budget, and geometric's answer there, on the judged rows.

    Args:
        prep: The run scored and split (the judged rows are its held-out part).
        thresholds: The operating point's thresholds.json document (its ``budget``: unit and fraction).
        outcome: The operating point on the judged rows.

    Returns:
        The rivals, cheapest exit first and ``geometric`` last; empty when nothing was held
        out or the budget's unit is not one of the run's cost columns.
    """
    from dyncal.calibrate.policy import assign_exits
    from dyncal.calibrate.search import solve_path

    budget = thresholds.get("budget") or {}
    unit, fraction = str(budget.get("unit") or "macs"), budget.get("fraction")
    if not outcome.held_out or unit not in prep.units or fraction is None or not len(prep.holdout_idx):
        return []
    costs = np.asarray(prep.units[unit], dtype=np.float64)
    limit = float(fraction) * float(costs[-1]) * (1 + _TOL)
    right = prep.correct[prep.holdout_idx]
    candidates: list[tuple[str, float, np.ndarray]] = [
        (f"exit {j + 1} alone", float(costs[j] / costs[-1]), right[:, j])
        for j in range(prep.correct.shape[1])
        if costs[j] <= limit
    ]
    geo = solve_path(prep.problem("geometric", unit), [limit], "geometric")[0]
    if geo is not None:
        exits = assign_exits(prep.scores[prep.holdout_idx], geo.thresholds)
        candidates.append(("geometric", geo.cost / float(costs[-1]), right[np.arange(len(exits)), exits]))
    op = outcome.correct.astype(bool)
    op_acc = float(op.mean())
    return [
        HeldOutRival(name, frac, float(ok.mean()), float(ok.mean()) - op_acc, mcnemar_pvalue(ok.astype(bool), op))
        for name, frac, ok in candidates
    ]


def rival_warnings(rivals: Sequence[HeldOutRival], op_accuracy: float) -> list[str]:
    """Page 1's warnings: each rival significantly more accurate held out than the operating point.

    Example:
        >>> r = HeldOutRival("exit 1 alone", 0.547, 0.6886, 0.0319, 0.0004)
        >>> rival_warnings([r], 0.6567)[0][:72]
        'held out, exit 1 alone is more accurate than these thresholds: 68.86% vs'
    """
    return [
        f"held out, {r.name} is more accurate than these thresholds: {100 * r.accuracy:.2f}% vs "
        f"{100 * op_accuracy:.2f}% ({100 * r.difference:+.2f} points, McNemar p = {r.p_value:.2g}) at "
        f"{r.cost_fraction:.3g}x of the last exit's cost; "
        + ("try it: dyncal solve --method geometric" if r.name == "geometric" else "early exit does not pay here")
        for r in rivals
        if r.significantly_better
    ]
