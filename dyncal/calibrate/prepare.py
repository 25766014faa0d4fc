"""A run made ready for the solvers: split, temperatures fitted, every sample scored once.

:func:`prepare_run` turns a run into a :class:`PreparedRun`, which :func:`~dyncal.calibrate.solvers.solve_run`
and :func:`~dyncal.calibrate.frontier.compute_frontier` accept in its place so several solves
score the logits once; :func:`static_baselines` describes each exit used alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from dataclasses import fields as fields_of
from typing import Any

import numpy as np

from dyncal.artifacts.costs import LatencyKey
from dyncal.artifacts.thresholds import finite_thresholds
from dyncal.calibrate.budget import require_cost_units
from dyncal.calibrate.options import PrepareOptions
from dyncal.calibrate.policy import PolicyOutcome, evaluate_policy, expected_cost
from dyncal.calibrate.problem import ExitProblem, Solution
from dyncal.calibrate.scores import exit_scores
from dyncal.calibrate.search import problem_for
from dyncal.choices import Score
from dyncal.errors import DyncalError
from dyncal.options import options_from
from dyncal.stats import mean_bootstrap_ci, stratified_split, unsplit_classes

__all__ = ["PreparedRun", "SolveCache", "prepare_run", "static_baselines"]


@dataclass
class SolveCache:
    """What solving a prepared run computed once and reuses: fit problems and frontier paths.

    Attributes:
        problems: ``(method, cost column)`` to the fit part's :class:`ExitProblem`.
        paths: ``(method, cost column, number of budgets)`` to :func:`~dyncal.calibrate.search.solve_path`
            over the frontier's grid (``dyncal frontier`` fills it;
            :func:`~dyncal.calibrate.solvers.solve_run` walks its prefix).
    """

    problems: dict[tuple[str, str], ExitProblem] = field(default_factory=dict)
    paths: dict[tuple[str, str, int], list[Solution | None]] = field(default_factory=dict)


@dataclass(frozen=True)
class PreparedRun:
    """A run's scores and correctness, split and ready for the solvers.

    Attributes:
        score: Score name.
        temperatures: ``K`` temperatures used.
        scores: ``(N, K)`` scores of all samples.
        correct: ``(N, K)`` correctness of all samples.
        fit_idx: Indices of the fit (calibration) part.
        holdout_idx: Indices of the held-out part (empty when ``holdout == 0``).
        units: Every cost column (``"macs"``, ``"ms:<key>"``) to its ``K`` costs.
        n_classes: ``C``.
        holdout: Held-out fraction.
        seed: Split seed.
        unsplit_classes: Classes too small to split, kept whole in the fit part.
        temperature_at_bound: Per exit, whether the fitted temperature hit the search's
            bound (None when temperatures were not fitted).
        costs: The run's cost table (:class:`dyncal.artifacts.costs.CostTable`).
        path: The run's directory.
        fingerprint: The run's fingerprint (:attr:`dyncal.artifacts.run.Run.fingerprint`), None for bare arrays.
        cache: Fit problems and frontier paths already computed on it, reused by
            :func:`~dyncal.calibrate.solvers.solve_run` and :func:`dyncal.calibrate.frontier.compute_frontier`.

    A prepared run can stand in for the run in :func:`~dyncal.calibrate.solvers.solve_run` and
    :func:`dyncal.calibrate.frontier.compute_frontier`, so that several of them score the
    logits once.
    """

    score: Score
    temperatures: tuple[float, ...]
    scores: np.ndarray
    correct: np.ndarray
    fit_idx: np.ndarray
    holdout_idx: np.ndarray
    units: dict[str, tuple[float, ...]]
    n_classes: int
    holdout: float
    seed: int
    unsplit_classes: tuple[Any, ...] = ()
    temperature_at_bound: tuple[bool, ...] | None = None
    costs: Any = None
    path: str = ""
    fingerprint: str | None = None
    cache: SolveCache = field(default_factory=SolveCache, compare=False, repr=False)

    def problem(self, method: str, unit: str) -> ExitProblem:
        """The fit part's :class:`ExitProblem` for a method and cost column (cached)."""
        key = (method, unit)
        if key not in self.cache.problems:
            fit = self.fit_idx
            problem = problem_for(method, self.scores[fit], self.correct[fit], self.units[unit], self.score)
            for other in self.cache.problems.values():  # same scores: share the geometric fits
                problem.adopt_geometric_pool(other.geometric_pool())
                break
            self.cache.problems[key] = problem
        return self.cache.problems[key]

    def evaluate(
        self, thresholds: np.ndarray, unit: str
    ) -> tuple[list[float | None], PolicyOutcome, PolicyOutcome | None]:
        """``thresholds`` as thresholds.json writes them, and what those do on the fit and held-out parts.

        The held-out outcome is None without a held-out part; costs are those of the column ``unit``.
        """
        t_json = finite_thresholds(thresholds, self.score, self.n_classes)
        t_eval, costs = np.asarray(t_json[:-1], dtype=np.float64), self.units[unit]
        fit = evaluate_policy(self.scores[self.fit_idx], self.correct[self.fit_idx], costs, t_eval)
        if not self.holdout_idx.size:
            return t_json, fit, None
        return (
            t_json,
            fit,
            evaluate_policy(self.scores[self.holdout_idx], self.correct[self.holdout_idx], costs, t_eval),
        )

    @property
    def k(self) -> int:
        """Number of exits."""
        return int(self.scores.shape[1])

    def expected_costs(self, exits: np.ndarray) -> tuple[float | None, dict[str, float]]:
        """Mean MACs (None without MACs) and mean ms per latency key of the given exits (none when empty)."""
        if not exits.size:
            return None, {}
        macs = expected_cost(exits, self.units["macs"]) if "macs" in self.units else None
        return macs, {key: expected_cost(exits, c) for key, c in _latency_columns(self.units).items()}

    def check_options(self, options: PrepareOptions) -> None:
        """Refuse options that contradict how this run was prepared.

        Each of ``score``, ``temperature``, ``holdout``, ``seed`` may be left at its
        default (then the prepared value is used) or equal the prepared value.

        Raises:
            DyncalError: An option given with another value than the prepared one.
        """
        prepared = {
            "score": self.score,
            "temperature": self.temperature_at_bound is not None,
            "holdout": self.holdout,
            "seed": self.seed,
        }
        for f in fields_of(PrepareOptions):
            name, value = f.name, getattr(options, f.name)
            if value != f.default and value != prepared[name]:
                raise DyncalError(
                    f"{name}={value!r} contradicts the prepared run ({name}={prepared[name]!r}); "
                    "prepare it again with that option, or leave the option out"
                )


class _RowSubset:
    """Rows of an ``(N, K, C)`` array, copied block by block on indexing (never the whole subset at once)."""

    def __init__(self, base: np.ndarray, rows: np.ndarray) -> None:
        self.base, self.rows = base, rows
        self.shape = (int(rows.shape[0]), *base.shape[1:])
        self.ndim = 3

    def __getitem__(self, key: Any) -> np.ndarray:
        first, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        block = np.asarray(self.base[self.rows[first]])
        return block[(slice(None), *rest)] if rest else block


def _require_exits(run: Any) -> None:
    """Refuse a static run (K = 1): it has no exits to choose between, only a point to compare with."""
    if run.k < 2:
        raise DyncalError(
            f"run '{run.path}' has K=1 exit (a static model): there are no thresholds to solve; compare it with "
            f"an early-exit run instead: dyncal report EARLY_EXIT_RUN --compare {run.path}"
        )


def prepare_run(
    run: Any,
    options: PrepareOptions | None = None,
    *,
    temperature_idx: np.ndarray | None = None,
    **fields: Any,
) -> PreparedRun:
    """Split a run, fit temperatures on the fit part, and score every sample.

    Args:
        run: A :class:`dyncal.artifacts.run.Run`.
        options: All options as one :class:`~dyncal.calibrate.options.PrepareOptions` (or any
            options object extending it, such as ``SolveOptions``).
        temperature_idx: Rows to fit temperatures on (default: the fit part).
        **fields: The options as keywords instead: ``score`` (``maxprob`` default,
            ``margin``, ``entropy``), ``temperature`` (fit one temperature per exit by NLL
            on the fit part), ``holdout`` (held-out fraction, stratified; 0 fits on
            everything) and ``seed`` (split seed).

    Returns:
        The prepared run.

    Raises:
        DyncalError: Bad options, no costs, K < 2, a class missing from a part, NaN scores.
    """
    opts = options_from(PrepareOptions, options, fields, "prepare")
    _require_exits(run)
    units = require_cost_units(run.costs, run.k)
    labels = np.asarray(run.labels, dtype=np.int64)
    fit_idx, held_idx = stratified_split(labels, opts.holdout, opts.seed)
    temps = np.ones(run.k)
    at_bound: tuple[bool, ...] | None = None
    if opts.temperature:
        from dyncal.calibrate.temperature import TemperatureScaler

        rows = fit_idx if temperature_idx is None else temperature_idx
        logits = _RowSubset(run.logits, rows) if rows.shape[0] < run.n else run.logits
        scaler = TemperatureScaler().fit(logits, labels[rows])  # type: ignore[arg-type]
        temps = scaler.temperatures_
        at_bound = tuple(bool(v) for v in scaler.at_bound_)
    scores, preds = exit_scores(run.logits, opts.score, temps)
    if not np.all(np.isfinite(scores)):
        row, ex = np.argwhere(~np.isfinite(scores))[0]
        raise DyncalError(f"scores are NaN at row {row}, exit {ex + 1}; check the run's logits")
    return PreparedRun(
        score=opts.score,
        temperatures=tuple(float(v) for v in temps),
        scores=scores,
        correct=preds == labels[:, None],
        fit_idx=fit_idx,
        holdout_idx=held_idx,
        units=units,
        n_classes=run.c,
        holdout=float(opts.holdout),
        seed=int(opts.seed),
        unsplit_classes=tuple(unsplit_classes(labels, opts.holdout)),
        temperature_at_bound=at_bound,
        costs=run.costs,
        path=str(getattr(run, "path", "")),
        fingerprint=getattr(run, "fingerprint", None),
    )


def _latency_columns(units: dict[str, tuple[float, ...]]) -> dict[str, tuple[float, ...]]:
    """The latency columns of ``units`` by their key: ``"ms:cpu/b1"`` as ``"cpu/b1"``."""
    return {str(LatencyKey.from_column(u)): c for u, c in units.items() if u.startswith(LatencyKey.PREFIX)}


def static_baselines(prep: PreparedRun, *, seed: int = 0) -> list[dict[str, Any]]:
    """Each exit used alone: calibration and held-out accuracy (with CI) and its costs."""
    out = []
    primary = next(iter(prep.units.values()))
    for j in range(prep.correct.shape[1]):
        fit_acc = float(np.mean(prep.correct[prep.fit_idx, j]))
        held = prep.correct[prep.holdout_idx, j]
        entry: dict[str, Any] = {
            "exit": j + 1,
            "calibration_accuracy": fit_acc,
            "holdout_accuracy": float(np.mean(held)) if held.size else None,
            "holdout_ci": list(mean_bootstrap_ci(held, seed=seed)) if held.size else None,
            "macs": prep.units["macs"][j] if "macs" in prep.units else None,
            "ms": {key: c[j] for key, c in _latency_columns(prep.units).items()},
            "fraction": primary[j] / primary[-1],
        }
        out.append(entry)
    return out
