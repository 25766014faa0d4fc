"""The accuracy-versus-cost frontier of a run: every method, the oracle and each exit alone.

:func:`compute_frontier` solves over a grid of budgets and returns a long-format
:class:`pandas.DataFrame` (one row per method and budget) that ``dyncal frontier`` writes as
CSV (:mod:`dyncal.artifacts.frontier` owns that file) and the report draws.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from dyncal.artifacts.frontier import frontier_columns
from dyncal.artifacts.thresholds import finite_thresholds
from dyncal.calibrate.budget import pick_latency
from dyncal.calibrate.guard import guarded_path
from dyncal.calibrate.options import FrontierOptions
from dyncal.calibrate.policy import expected_cost
from dyncal.calibrate.prepare import PreparedRun, prepare_run
from dyncal.calibrate.problem import Solution, single_exit_thresholds
from dyncal.calibrate.search import budget_grid, solve_path
from dyncal.choices import DEFAULT_METHOD
from dyncal.options import options_from
from dyncal.stats import mean_bootstrap_ci

__all__ = ["compute_frontier", "oracle_at_budget"]


def oracle_at_budget(correct: np.ndarray, costs: Sequence[float] | np.ndarray, budget: float) -> np.ndarray:
    """Per-sample exits of the oracle: most samples right within a mean-cost budget.

    Every sample that some exit gets right may go to its cheapest right exit; the others go
    to exit 1. Since every right sample counts the same, taking them cheapest-extra-cost
    first is optimal (a unit-value knapsack).

    Args:
        correct: ``(N, K)`` correctness.
        costs: ``K`` cumulative costs.
        budget: Mean-cost budget (at least ``costs[0]``).

    Returns:
        ``(N,)`` exit indices.

    Example:
        >>> ok = np.array([[False, True], [True, True], [False, False]])
        >>> oracle_at_budget(ok, [1.0, 4.0], 2.0).tolist()
        [1, 0, 0]
    """
    c = np.asarray(costs, dtype=np.float64)
    n = correct.shape[0]
    any_ok = correct.any(axis=1)
    cheapest = np.where(any_ok, np.argmax(correct, axis=1), 0)
    extra = np.where(any_ok, c[cheapest] - c[0], np.inf)
    order = np.argsort(extra, kind="stable")
    spend = np.cumsum(extra[order])
    allowed = (budget - c[0]) * n
    take = int(np.searchsorted(spend, allowed * (1 + 1e-12), side="right"))
    exits = np.zeros(n, dtype=np.int64)
    chosen = order[:take]
    exits[chosen] = cheapest[chosen]
    return exits


def compute_frontier(
    run: Any,
    options: FrontierOptions | None = None,
    **fields: Any,
) -> pd.DataFrame:
    """Accuracy versus cost for a grid of budgets, every method side by side.

    Budgets are ``n_budgets`` fractions evenly spaced from the first exit's cost to the
    last's, in MACs when the run has them (else in the latency column chosen by
    ``device``/``batch_size``, or the only one). Thresholds are fitted on the fit part of
    a stratified split; ``fitted_accuracy`` and every cost column are measured there (where
    budgets are met), ``holdout_*`` on the held-out part with a 95% bootstrap interval.
    Each method's row at a budget is what ``dyncal solve`` returns there: its answer after
    the guard (:mod:`dyncal.calibrate.guard`: replaced by an exit alone or ``geometric``'s
    answer when one is more accurate on the fit part, or by its own answer at a smaller
    budget), so ``fitted_accuracy`` never falls as the budget grows.

    Args:
        run: A :class:`dyncal.artifacts.run.Run`, or a :class:`dyncal.calibrate.prepare.PreparedRun`
            (already scored: ``score``, ``temperature``, ``holdout`` and ``seed`` come from
            it and may be left out).
        options: All options as one :class:`~dyncal.calibrate.options.FrontierOptions`.
        **fields: The options as keywords instead: ``n_budgets`` (default 41, from 2 to
            :data:`~dyncal.calibrate.options.MAX_BUDGETS`), ``score`` (``maxprob`` default, ``margin``, ``entropy``),
            ``temperature`` (fit per-exit temperatures on the fit part), ``holdout``
            (held-out fraction, default 0.5; 0: none, holdout columns are NaN), ``seed``
            (split seed), ``methods`` (solvers to run, default ``("optimal", "geometric")``;
            the default method is added when missing), ``device`` and ``batch_size`` (the
            latency column of the budgets when the run has no MACs).

    Returns:
        Long table with the columns of :func:`~dyncal.artifacts.frontier.frontier_columns`: ``method`` is a solver
        name, ``"oracle"`` (every sample at its cheapest right exit within the budget;
        its held-out accuracy is the oracle on the held-out part) or ``"static"`` (one row
        per exit used alone, ``exit`` set); ``thresholds`` is a JSON list (last null;
        ``null`` for oracle rows and where a method has no solution in the budget).

    Raises:
        DyncalError: No costs, bad options, or the errors of :func:`~dyncal.calibrate.prepare.prepare_run`.

    Example:
        >>> df = compute_frontier(toy_run(), n_budgets=5)  # toy_run: 300 samples, K = 2 (doctest fixture)
        >>> sorted(set(df["method"]))
        ['geometric', 'optimal', 'oracle', 'static']
    """
    opts = options_from(FrontierOptions, options, fields, "frontier")
    prep = run if isinstance(run, PreparedRun) else prepare_run(run, opts)
    prep.check_options(opts)  # a prepared run given must agree with the options (one prepared here does)
    primary = "macs" if "macs" in prep.units else pick_latency(prep.units, opts.device, opts.batch_size)
    parts = _Parts(prep, primary)
    fractions, budgets = budget_grid(parts.costs, opts.n_budgets)
    rows: list[dict[str, Any]] = []
    for method in [str(m) for m in dict.fromkeys([*opts.methods, DEFAULT_METHOD])]:
        problem = prep.problem(method, primary)  # problems share geometric fits
        sols = solve_path(problem, list(budgets), method)
        prep.cache.paths[(method, primary, opts.n_budgets)] = sols  # solve_run walks its prefix
        guarded = guarded_path(problem, list(budgets), method, sols)  # what solve_run returns at each budget
        rows += parts.solved(method, fractions, [None if g is None else g.solution for g in guarded])
    rows += parts.oracle(fractions, budgets)
    rows += parts.static()
    latency_keys = [u[3:] for u in prep.units if u.startswith("ms:")]
    df = pd.DataFrame(rows).reindex(columns=frontier_columns(prep.k, latency_keys))
    df["exit"] = df["exit"].astype("Int64")
    return df


def _asked(
    method: str, exit_: int | None, fraction: float, budget_macs: float | None, thresholds: list[float | None] | None
) -> dict[str, Any]:
    """The frontier columns of what was asked, which every row has (a budget without a solution has only these)."""
    return {
        "method": method,
        "exit": exit_ if exit_ is not None else pd.NA,
        "budget_fraction": fraction,
        "budget_macs": np.nan if budget_macs is None else budget_macs,
        "thresholds": json.dumps(thresholds),  # null without thresholds
    }


class _Parts:
    """The frontier's rows of a prepared run in one cost column: fit and held-out parts, taken once."""

    def __init__(self, prep: PreparedRun, primary: str) -> None:
        self.prep, self.primary = prep, primary
        self.costs = np.asarray(prep.units[primary])
        self.macs_full = prep.units["macs"][-1] if "macs" in prep.units else None
        self.fc, self.hc = prep.correct[prep.fit_idx], prep.correct[prep.holdout_idx]

    def _macs_at(self, fraction: float) -> float | None:
        return None if self.macs_full is None else float(fraction * self.macs_full)

    def solved(self, method: str, fractions: np.ndarray, sols: list[Solution | None]) -> list[dict[str, Any]]:
        """One row per budget of a method's path; a budget without a solution gets a row without numbers."""
        rows: list[dict[str, Any]] = []
        for frac, sol in zip(fractions, sols, strict=True):
            bm = self._macs_at(frac)
            if sol is None:
                rows.append(_asked(method, None, float(frac), bm, None))
                continue
            t_json, fit, held = self.prep.evaluate(sol.thresholds, self.primary)
            held_ok = None if held is None else held.hits
            rows.append(self.row(method, None, float(frac), bm, t_json, fit.accuracy, held_ok, fit.exits))
        return rows

    def oracle(self, fractions: np.ndarray, budgets: np.ndarray) -> list[dict[str, Any]]:
        """The oracle at every budget: fitted on the fit part, and the oracle of the held-out part."""
        rows = []
        for frac, b in zip(fractions, budgets, strict=True):
            fe = oracle_at_budget(self.fc, self.costs, float(b))
            held_ok = None
            if self.hc.shape[0]:
                he = oracle_at_budget(self.hc, self.costs, float(b))
                held_ok = self.hc[np.arange(self.hc.shape[0]), he]
            fitted = float(self.fc[np.arange(self.fc.shape[0]), fe].mean())
            rows.append(self.row("oracle", None, float(frac), self._macs_at(frac), None, fitted, held_ok, fe))
        return rows

    def static(self) -> list[dict[str, Any]]:
        """Each exit used alone."""
        rows = []
        k = self.prep.k
        for j in range(k):
            t_json = finite_thresholds(single_exit_thresholds(k, j), self.prep.score, self.prep.n_classes)
            fe = np.full(self.fc.shape[0], j, dtype=np.int64)
            held_ok = self.hc[:, j] if self.hc.shape[0] else None
            frac = float(self.costs[j] / self.costs[-1])
            bm = None if self.macs_full is None else float(self.prep.units["macs"][j])
            rows.append(self.row("static", j + 1, frac, bm, t_json, float(self.fc[:, j].mean()), held_ok, fe))
        return rows

    def row(
        self,
        method: str,
        exit_: int | None,
        fraction: float,
        budget_macs: float | None,
        thresholds: list[float | None] | None,
        fitted: float,
        held: np.ndarray | None,
        fit_exits: np.ndarray,
    ) -> dict[str, Any]:
        """One frontier row; costs are measured on the fit part."""
        k = self.prep.k
        row = {**_asked(method, exit_, fraction, budget_macs, thresholds), "fitted_accuracy": fitted}
        if held is not None and held.size:  # else NaN, as the table's reindex fills every column a row lacks
            lo, hi = mean_bootstrap_ci(held, seed=self.prep.seed)
            row.update(holdout_accuracy=float(held.mean()), holdout_ci_low=lo, holdout_ci_high=hi)
        units = self.prep.units
        row["expected_macs"] = expected_cost(fit_exits, units["macs"]) if "macs" in units else np.nan
        pc = units[self.primary]
        row["expected_fraction"] = expected_cost(fit_exits, pc) / pc[-1]
        row.update({u: expected_cost(fit_exits, c) for u, c in units.items() if u.startswith("ms:")})
        shares = np.bincount(fit_exits, minlength=k) / max(fit_exits.size, 1)
        row.update({f"share_{j + 1}": float(shares[j]) for j in range(k)})
        return row
