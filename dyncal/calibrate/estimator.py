"""The threshold solver as a scikit-learn-style estimator.

``ThresholdSolver(...)`` stores its options and nothing else; :meth:`ThresholdSolver.fit`
validates them against a run, scores the logits once, solves, and sets the learned values
(ending in ``_``): the thresholds document ``result_``, ``thresholds_``, ``temperatures_``,
``exit_shares_``, the held-out accuracy with its interval, and ``path_`` — the method's
whole accuracy-vs-cost path on the same split, like scikit-learn's ``cv_results_``.
:meth:`ThresholdSolver.predict` applies the exit rule to new logits.

``dyncal solve`` and :func:`dyncal.calibrate.solvers.solve_run` compute the same thing; this
class is the Python face for code that fits once and applies many times.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import TYPE_CHECKING, Any

import numpy as np

from dyncal.calibrate.options import SolveOptions
from dyncal.errors import DyncalError

if TYPE_CHECKING:
    import pandas as pd

    from dyncal.artifacts.thresholds import ThresholdsDocument

__all__ = ["ThresholdSolver"]

_FIELDS = dataclasses.fields(SolveOptions)
"""The estimator's parameters: every option of :class:`SolveOptions`, declared there once."""


def _default(f: dataclasses.Field[Any]) -> Any:
    return f.default if f.default_factory is dataclasses.MISSING else f.default_factory()


def _signature() -> inspect.Signature:
    """``(self, budget=None, *, <every other option>=<its default>)``: for help(), IDEs and scikit-learn's clone."""
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    for f in sorted(_FIELDS, key=lambda f: f.name != "budget"):  # budget first: the one positional option
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD if f.name == "budget" else inspect.Parameter.KEYWORD_ONLY
        params.append(inspect.Parameter(f.name, kind, default=_default(f)))
    return inspect.Signature(params)


class ThresholdSolver:
    """Exit thresholds that maximise accuracy under an average-compute budget.

    The options are :class:`~dyncal.calibrate.options.SolveOptions`' fields with its defaults
    (the signature is derived from them):

    Args:
        budget: ``"0.6x"``, ``"1.2GMAC"`` or ``"35ms"`` (None only with ``max_drop``).
        method: ``"optimal"``, ``"smoothed"`` or ``"geometric"`` (MSDNet's); default (None)
            ``"optimal"`` for a budget, ``"smoothed"`` with ``max_drop``.
        score: ``"maxprob"`` (default), ``"margin"`` or ``"entropy"``.
        temperature: Fit one temperature per exit on the fit part (default False).
        holdout: Held-out fraction for honest accuracy (default 0.5; 0: none).
        seed: Seed of the stratified split (default 0).
        device: Latency device, for ``ms`` budgets (e.g. ``"cpu"``).
        batch_size: Latency batch size, with ``device``.
        max_drop: Risk control: tolerated accuracy drop vs the last exit (a fraction).
        delta: Risk control: probability that the drop exceeds ``max_drop`` (default 0.05).
        pvalue: Risk control: ``"binomial"`` (default) or ``"hb"`` (Hoeffding-Bentkus).

    Attributes:
        result_: The thresholds document (:class:`~dyncal.artifacts.thresholds.ThresholdsDocument`).
        thresholds_: ``(K - 1,)`` thresholds (``+inf``: nobody leaves there).
        temperatures_: ``(K,)`` temperatures applied before scoring.
        exit_shares_: ``(K,)`` share of fit samples leaving at each exit.
        holdout_accuracy_: Accuracy on the held-out part (None when nothing is held out).
        holdout_ci_: Its 95% bootstrap interval (or None).
        path_: This method's frontier on the same split (:func:`dyncal.compute_frontier` rows).

    Example:
        >>> run = toy_run()  # 300 samples, K = 2 exits, C = 3 classes, 1 and 4 MMAC (doctest fixture)
        >>> solver = ThresholdSolver("0.6x", method="optimal").fit(run)
        >>> solver.thresholds_.shape, float(solver.exit_shares_.sum())
        ((1,), 1.0)
        >>> exits, preds = solver.predict(run.logits[:5])
        >>> exits.shape, preds.shape
        ((5,), (5,))
    """

    def __init__(self, budget: str | None = None, **params: Any) -> None:
        self.set_params(**{**{f.name: _default(f) for f in _FIELDS}, **params, "budget": budget})

    __init__.__signature__ = _signature()  # type: ignore[attr-defined]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's options (scikit-learn convention)."""
        return {f.name: getattr(self, f.name) for f in _FIELDS}

    def set_params(self, **params: Any) -> ThresholdSolver:
        """Change options; a refit is needed for the learned values to follow."""
        names = [f.name for f in _FIELDS]
        for name, value in params.items():
            if name not in names:
                raise DyncalError(f"ThresholdSolver has no option {name!r}; options: {', '.join(names)}")
            setattr(self, name, value)
        return self

    def fit(self, run: Any) -> ThresholdSolver:
        """Solve on a run (:class:`dyncal.artifacts.run.Run` or a prepared one) and return ``self``.

        Raises:
            DyncalError: Bad options for this run, an unreachable budget (it names the
                cheapest feasible one), or a run without costs.
        """
        from dyncal.calibrate.frontier import compute_frontier
        from dyncal.calibrate.options import FrontierOptions
        from dyncal.calibrate.prepare import PreparedRun, prepare_run
        from dyncal.calibrate.solvers import solve_run

        options = SolveOptions(**self.get_params())
        prep = run if isinstance(run, PreparedRun) else prepare_run(run, options)
        result = solve_run(prep, options=options)
        path = FrontierOptions(methods=(options.solver,), device=options.device, batch_size=options.batch_size)
        frontier = compute_frontier(prep, path)
        self.result_: ThresholdsDocument = result
        self.thresholds_ = result.threshold_array
        self.temperatures_ = np.asarray(result.temperatures, dtype=np.float64)
        self.exit_shares_ = np.asarray(result.exit_shares, dtype=np.float64)
        self.holdout_accuracy_ = result.holdout_accuracy
        self.holdout_ci_ = result.holdout_ci
        self.path_: pd.DataFrame = frontier[frontier["method"] == result.method].reset_index(drop=True)
        return self

    def predict(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exit and prediction of every sample under the fitted thresholds.

        Args:
            logits: ``(N, K, C)`` per-exit logits.

        Returns:
            ``(exits, predictions)``, int64 ``(N,)`` each, exits from 0.

        Raises:
            DyncalError: Not fitted, or logits of another K.
        """
        from dyncal.calibrate.policy import assign_exits
        from dyncal.calibrate.scores import exit_scores

        if not hasattr(self, "result_"):
            raise DyncalError("this ThresholdSolver is not fitted yet; call fit(run) first")
        logits = np.asarray(logits)
        k = len(self.temperatures_)
        if logits.ndim != 3 or logits.shape[1] != k:
            raise DyncalError(f"logits must have shape (N, {k}, C) for K={k} exits, got {logits.shape}")
        scores, preds = exit_scores(logits, self.result_.score, self.temperatures_)
        exits = assign_exits(scores, self.thresholds_)
        return exits, preds[np.arange(len(exits)), exits]

    def __repr__(self) -> str:
        changed = {f.name: getattr(self, f.name) for f in _FIELDS if getattr(self, f.name) != _default(f)}
        return f"ThresholdSolver({', '.join(f'{k}={v!r}' for k, v in changed.items())})"
