"""``dyncal solve``: thresholds for a run under a budget, or under a risk target, as a thresholds document.

:func:`solve_run` resolves the budget against the run's costs, prepares the run
(:mod:`dyncal.calibrate.prepare`), searches the thresholds (:mod:`dyncal.calibrate.search`
describes the methods) and evaluates them on the fit and held-out parts. Risk mode (``max_drop``)
picks among the search's candidates by Learn then Test (:mod:`dyncal.calibrate.risk`).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from dyncal.artifacts.costs import LatencyKey
from dyncal.artifacts.thresholds import ThresholdsDocument
from dyncal.calibrate.budget import BudgetTarget, format_budget, pick_latency, require_cost_units, resolve_budget
from dyncal.calibrate.guard import Guarded, guarded_at
from dyncal.calibrate.options import SolveOptions
from dyncal.calibrate.policy import PolicyOutcome
from dyncal.calibrate.prepare import PreparedRun, _require_exits, prepare_run, static_baselines
from dyncal.calibrate.search import problem_for, solve_path
from dyncal.errors import BudgetError, DyncalError
from dyncal.options import options_from
from dyncal.stats import mcnemar_pvalue, mean_bootstrap_ci, stratified_split

__all__ = ["solve_run"]

log = logging.getLogger(__name__)


def _result_from(
    prep: PreparedRun,
    thresholds: np.ndarray,
    method: str,
    target: BudgetTarget | None,
    unit: str,
    run_path: str,
    risk: dict[str, Any] | None = None,
    guarded: Guarded | None = None,
) -> ThresholdsDocument:
    """Evaluate final thresholds and assemble the document (with the guard's record when one was applied)."""
    t_json, fit, held = prep.evaluate(thresholds, unit)
    fit_macs, fit_ms = prep.expected_costs(fit.exits)
    asked = target.to_dict() if target is not None else {"asked": None, "unit": unit, "value": None, "fraction": None}
    budget = {**asked, "met": fit.expected_cost, "met_fraction": fit.expected_cost / prep.units[unit][-1]}
    held_doc: dict[str, Any] | None = None
    if held is not None:
        h_macs, h_ms = prep.expected_costs(held.exits)
        held_doc = {
            "n": int(prep.holdout_idx.size),
            "expected_macs": h_macs,
            "expected_ms": h_ms,
            "exit_shares": list(held.shares),
        }
    return ThresholdsDocument(
        score=prep.score,
        temperatures=prep.temperatures,
        thresholds=tuple(t_json),
        method=method,
        budget=budget,
        expected_macs=fit_macs,
        expected_ms=fit_ms,
        calibration_accuracy=fit.accuracy,
        holdout_accuracy=None if held is None else held.accuracy,
        holdout_ci=None if held is None else mean_bootstrap_ci(held.hits, seed=prep.seed),
        exit_shares=fit.shares,
        static=tuple(static_baselines(prep, seed=prep.seed)),
        holdout=held_doc,
        split={
            "holdout": prep.holdout,
            "seed": prep.seed,
            "n_calibration": int(prep.fit_idx.size),
            "n_holdout": int(prep.holdout_idx.size),
            "n_unsplit_classes": len(prep.unsplit_classes),
            "unsplit_classes": list(prep.unsplit_classes),
        },
        risk=risk,
        run=run_path,
        n_classes=prep.n_classes,
        temperature_at_bound=prep.temperature_at_bound,
        run_fingerprint=prep.fingerprint,
        guard=None if guarded is None else guard_record(prep, guarded, unit, fit.accuracy, held),
    )


def guard_record(
    prep: PreparedRun, guarded: Guarded, unit: str, fit_accuracy: float, answer_held: PolicyOutcome | None
) -> dict[str, Any]:
    """The ``guard`` field of thresholds.json: what replaced the method's answer and why, and every rival.

    Keys: ``replaced`` (the method whose own answer was replaced, or None), ``by`` (``"exit 1
    alone"``, ``"geometric"``, ``"<method> at 0.55x"``), ``exit``, ``reason``,
    ``fit_accuracy``, ``method_fit_accuracy`` and ``rivals`` (``name``, ``exit``,
    ``thresholds``, ``cost_fraction``, ``fit_accuracy``, ``holdout_accuracy``,
    ``holdout_p_value``).

    Each rival (an exit alone within the budget, ``geometric``'s answer) carries its fit and
    held-out accuracy and the exact McNemar p-value of its held-out difference with the
    answer returned, so that a report can warn when one does better on held-out data.
    """
    costs = prep.units[unit]
    rivals = []
    for r in guarded.rivals:
        t_json, _, held = prep.evaluate(r.solution.thresholds, unit)
        entry: dict[str, Any] = {
            "name": r.name,
            "exit": r.exit,
            "thresholds": t_json,
            "cost_fraction": r.solution.cost / costs[-1],
            "fit_accuracy": r.accuracy,
            "holdout_accuracy": None,
            "holdout_p_value": None,
        }
        if held is not None and answer_held is not None:
            entry["holdout_accuracy"] = held.accuracy
            entry["holdout_p_value"] = mcnemar_pvalue(held.hits, answer_held.hits)
        rivals.append(entry)
    return {
        "replaced": guarded.method if guarded.replaced else None,
        "by": guarded.by,
        "exit": guarded.exit,
        "reason": guarded.reason,
        "fit_accuracy": fit_accuracy,
        "method_fit_accuracy": guarded.own_accuracy,
        "rivals": rivals,
    }


def solve_run(
    run: Any,
    budget: str | None = None,
    *,
    options: SolveOptions | None = None,
    **fields: Any,
) -> ThresholdsDocument:
    """Fit thresholds for a run under a budget (``dyncal solve``).

    Args:
        run: A :class:`~dyncal.artifacts.run.Run` (``dyncal.load_run``), or a
            :class:`~dyncal.calibrate.prepare.PreparedRun` (:func:`~dyncal.calibrate.prepare.prepare_run`)
            to skip scoring the logits again; then ``score``, ``temperature``, ``holdout`` and
            ``seed`` come from it (left out, or equal).
        budget: ``0.6x``, ``1.2GMAC``/``850MMAC`` or ``35ms``; may be None in risk mode.
        options: All options as one :class:`~dyncal.calibrate.options.SolveOptions` (then
            neither ``budget`` nor keywords).
        **fields: The options as keywords instead (:class:`~dyncal.calibrate.options.SolveOptions`):
            ``method`` (``optimal``, ``smoothed`` or ``geometric``; default ``optimal`` for a
            budget, ``smoothed`` in risk mode), ``score``
            (``maxprob`` default, ``margin``, ``entropy``), ``temperature`` (fit one temperature
            per exit by NLL on the fit part), ``holdout`` (held-out fraction, stratified;
            default 0.5, 0: none), ``seed`` (split seed), ``device`` and ``batch_size`` (the
            latency column of ``ms`` budgets), and risk mode: ``max_drop`` (ε, the tolerated
            drop versus the last exit's accuracy: the cheapest thresholds whose drop on new
            data is ≤ ε with probability ≥ 1 - δ, Learn then Test on exchangeable data,
            within ``budget`` if one is given), ``delta`` (δ, default 0.05), ``pvalue``
            (``binomial`` default, or ``hb``: Hoeffding–Bentkus).

    Returns:
        The thresholds document.

    Raises:
        DyncalError: Bad options, no costs, NaN scores, a class missing from a split part.
        BudgetError: Unreadable or unreachable budget (names the cheapest feasible one).

    Example:
        >>> run = toy_run()  # 300 samples, K = 2 exits, C = 3 classes, 1 and 4 MMAC (doctest fixture)
        >>> res = solve_run(run, "0.6x")
        >>> res.budget["met"] <= res.budget["value"], res.thresholds[-1] is None
        (True, True)
    """
    opts = options_from(SolveOptions, options, fields if budget is None else {**fields, "budget": budget}, "solve")
    _require_exits(run)
    tail = None
    if opts.max_latency_ms is not None:  # its latency column checked first: with a tail, `device` chooses it
        from dyncal.calibrate.tail import run_tail_constraint

        tail = run_tail_constraint(require_cost_units(run.costs, run.k), opts.max_latency_ms, opts.device)
    target, unit = _budget_column(run, opts)
    run_path = str(getattr(run, "path", ""))
    if isinstance(run, PreparedRun):
        run.check_options(opts)
    if opts.max_drop is not None:
        return _solve_risk(run, target, unit, run_path, opts)
    assert target is not None
    method = opts.solver.value
    prep = run if isinstance(run, PreparedRun) else prepare_run(run, opts)
    problem = prep.problem(method, unit)
    if tail is not None:
        from dyncal.calibrate.tail import solve_with_tail, tail_document

        sol = solve_with_tail(problem, target.value, method, tail[0])
        if sol is None:
            cheapest = min(s.cost for s in (problem.solution(t, e) for t, e in problem.geometric_pool()))
            raise BudgetError(
                f"no geometric solution fits budget {target.spec.text!r}: its cheapest fitted cost is "
                f"{format_budget(cheapest / prep.units[unit][-1], 'fraction')}; raise the budget or use "
                "`method` optimal"
            )
        result = _result_from(prep, sol.thresholds, method, target, unit, run_path)
        scores = prep.scores
        result.budget["tail"] = tail_document(scores[prep.fit_idx], scores[prep.holdout_idx], result.thresholds, *tail)
        return result
    guarded = guarded_at(problem, target.value, method, path=prep.cache.paths.get((method, unit, 41)))
    if guarded.replaced:
        log.info(
            "budget %s: %s; using %s (thresholds.json records it under 'guard')",
            target.spec.text,
            guarded.reason,
            guarded.by,
        )
    return _result_from(prep, guarded.solution.thresholds, method, target, unit, run_path, guarded=guarded)


def _budget_column(run: Any, opts: SolveOptions) -> tuple[BudgetTarget | None, str]:
    """The budget resolved against the run's costs (None without one) and the cost column solved in."""
    device, batch_size, spec = opts.device, opts.batch_size, opts.budget_spec
    units = require_cost_units(run.costs, run.k)
    if spec is None:  # risk mode without a budget: MACs, else the latency column asked
        return None, "macs" if "macs" in units else pick_latency(units, device, batch_size)
    target = resolve_budget(spec, run.costs, run.k, device=device, batch_size=batch_size)
    if (device is not None or batch_size is not None) and target.unit == "macs" and opts.max_latency_ms is None:
        _warn_unused_latency(units, spec.text, device, batch_size)
    return target, target.unit


def _warn_unused_latency(
    units: dict[str, tuple[float, ...]], budget: str, device: str | None, batch: int | None
) -> None:
    """A latency device or batch size with a budget in MACs: say what they do (and do not do)."""
    asked = " ".join(f"{o} {v}" for o, v in (("`device`", device), ("`batch_size`", batch)) if v is not None)
    try:
        key = LatencyKey.from_column(pick_latency(units, device, batch))
        shown = f"expected ms is reported for every profiled column, {key} among them"
    except BudgetError as e:
        shown = f"and they match no latency column: {e}"
    log.warning(
        "budget %s binds MACs, so %s does not choose the budget's column; %s",
        budget,
        asked,
        shown,
    )


def _solve_risk(
    run: Any,
    target: BudgetTarget | None,
    unit: str,
    run_path: str,
    opts: SolveOptions,
    n_candidates: int = 60,
) -> ThresholdsDocument:
    """Risk mode of :func:`solve_run` (Learn then Test with fixed-sequence testing)."""
    from dyncal.calibrate.risk import learn_then_test

    assert opts.max_drop is not None
    method, max_drop, delta = opts.solver.value, opts.max_drop, opts.delta
    order_idx, test_idx = _risk_halves(run, opts)
    prep = run if isinstance(run, PreparedRun) else prepare_run(run, opts, temperature_idx=order_idx)
    costs = np.asarray(prep.units[unit])
    problem = problem_for(method, prep.scores[order_idx], prep.correct[order_idx], costs, prep.score)
    path = solve_path(problem, list(np.linspace(costs[-1], costs[0], n_candidates)), method)
    candidates = [np.full(run.k - 1, np.inf)] + [s.thresholds for s in path if s is not None]
    res = learn_then_test(
        candidates,
        prep.scores[test_idx],
        prep.correct[test_idx],
        max_drop=max_drop,
        delta=delta,
        pvalue=opts.pvalue.value,
    )
    if res.n_accepted == 0:
        raise _nothing_accepted(res.n_test, opts)
    last_fit = float(np.mean(prep.correct[prep.fit_idx, -1]))
    risk: dict[str, Any] = {
        "max_drop": max_drop,
        "delta": delta,
        **res.to_dict(),
        "n_order": int(order_idx.size),
        "assumption": "calibration and deployment samples are exchangeable (i.i.d.)",
        "last_exit_calibration_accuracy": last_fit,
    }
    result = _result_from(prep, candidates[res.index], method, target, unit, run_path, risk=risk)
    if target is not None and result.budget["met"] > target.value:
        raise BudgetError(
            f"the cheapest thresholds with drop <= `max_drop` {max_drop} (`delta` {delta}) cost "
            f"{format_budget(result.budget['met_fraction'], 'fraction')} on the calibration "
            "data, above the "
            f"budget {target.spec.text!r}; raise the budget, `max_drop` or `delta`, or drop "
            "`budget`"
        )
    if prep.holdout_idx.size:
        last_held = float(np.mean(prep.correct[prep.holdout_idx, -1]))
        risk["holdout_drop"] = last_held - float(result.holdout_accuracy or 0.0)
    risk["calibration_drop"] = last_fit - result.calibration_accuracy
    return result


def _risk_halves(run: Any, opts: SolveOptions) -> tuple[np.ndarray, np.ndarray]:
    """The fit part in two disjoint halves: one orders the candidates, the other tests them (p-values)."""
    if isinstance(run, PreparedRun):
        if opts.temperature or run.temperature_at_bound is not None:
            raise DyncalError(
                "risk control fits temperatures on its own half of the calibration part; pass "
                "the run itself, not a prepared one, with temperature=True"
            )
        fit_idx = run.fit_idx
    else:
        fit_idx, _ = stratified_split(np.asarray(run.labels, dtype=np.int64), opts.holdout, opts.seed)
    perm = np.random.default_rng(opts.seed + 1).permutation(fit_idx.shape[0])
    half = fit_idx.shape[0] // 2
    order_idx, test_idx = np.sort(fit_idx[perm[:half]]), np.sort(fit_idx[perm[half:]])
    if order_idx.size == 0 or test_idx.size == 0:
        raise DyncalError(f"risk control needs calibration samples to split in two; the fit part has {fit_idx.size}")
    return order_idx, test_idx


def _nothing_accepted(n_test: int, opts: SolveOptions) -> DyncalError:
    """Why risk control accepted no thresholds, and what would let it."""
    from dyncal.calibrate.risk import min_test_samples

    max_drop, delta, pvalue, holdout = opts.max_drop, opts.delta, opts.pvalue.value, opts.holdout
    assert max_drop is not None
    need = min_test_samples(max_drop, delta, pvalue)
    what = (
        f"`max_drop` {max_drop} can never be shown with a finite sample; give a positive `max_drop`"
        if need is None
        else (
            f"the {pvalue} test needs at least {need} test samples (about "
            f"{math.ceil(2 * need / max(1.0 - holdout, 1e-9))} in the run at "
            f"`holdout` {holdout}, more if the cheaper candidates lose samples); collect more "
            f"samples, or raise `max_drop` or `delta`"
        )
    )
    return DyncalError(
        f"risk control accepted no thresholds: not even the last exit alone passed the test "
        f"of an accuracy drop <= `max_drop` {max_drop} with probability >= 1 - `delta` "
        f"{delta} on the {n_test} test samples (half the calibration part); {what}"
    )
