"""The tail-constrained solve: a latency percentile bound on the fit data, never exceeded (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import ExitCase, exit_problems

from dyncal.calibrate.policy import assign_exits, evaluate_policy
from dyncal.calibrate.problem import ExitCap, ExitProblem
from dyncal.calibrate.search import problem_for, solve_at
from dyncal.calibrate.tail import (
    TailConstraint,
    capped_problem,
    max_slow_count,
    predicted_percentile_ms,
    solve_with_tail,
)
from dyncal.errors import BudgetError, DyncalError

FAST = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
PERCENTILES = st.sampled_from([50.0, 90.0, 95.0, 99.0, 99.9, 100.0, 97.3])


@st.composite
def tails(draw: st.DrawFn, case: ExitCase) -> TailConstraint:
    """Per-exit latency (monotone, or not: a noisy profile) and a bound at or above exit 1's."""
    k = case.costs.shape[0]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    ms = np.cumsum(rng.uniform(0.1, 1.0, k)) if draw(st.booleans()) else rng.uniform(0.1, 2.0, k)
    ms[0] = min(ms)  # exit 1 is the fastest: a bound above it is always feasible
    bound = float(draw(st.sampled_from(sorted(ms.tolist())))) + draw(st.sampled_from([0.0, 1e-3]))
    return TailConstraint(draw(PERCENTILES), bound, tuple(ms.tolist()))


@settings(FAST, max_examples=60)
@given(st.data(), st.sampled_from(["optimal", "smoothed", "geometric"]))
def test_the_tail_constrained_solve_never_exceeds_its_bound_on_the_fit_data(data: st.DataObject, method: str):
    case = data.draw(exit_problems(max_n=200))
    tail = data.draw(tails(case))
    problem = problem_for(method, case.scores, case.correct, case.costs, "maxprob")
    for budget in case.budgets:
        sol = solve_with_tail(problem, budget, method, tail, n_budgets=9)
        if sol is None:
            assert method == "geometric"
            continue
        exits = assign_exits(case.scores, sol.thresholds)  # the public exit rule, not the solver's own
        assert predicted_percentile_ms(exits, tail.per_exit_ms, tail.percentile) <= tail.bound_ms
        assert evaluate_policy(case.scores, case.correct, case.costs, sol.thresholds).expected_cost <= budget
        assert sol.capped == int(np.sum(tail.slow_exits[exits])) <= tail.max_slow(case.scores.shape[0])


@settings(FAST, max_examples=25)
@given(exit_problems(max_n=150), st.sampled_from(["optimal", "smoothed"]))
def test_a_bound_no_exit_exceeds_changes_nothing(case: ExitCase, method: str):
    problem = problem_for(method, case.scores, case.correct, case.costs, "maxprob")
    k = case.costs.shape[0]
    loose = TailConstraint(99.0, 10.0, tuple(np.linspace(1.0, 2.0, k).tolist()))
    for budget in case.budgets:
        free, bounded = solve_at(problem, budget, method, 9), solve_with_tail(problem, budget, method, loose, 9)
        assert free is not None and bounded is not None
        assert np.array_equal(free.thresholds, bounded.thresholds)


@pytest.mark.parametrize("percentile", [50.0, 90.0, 95.0, 99.0, 99.9, 100.0, 33.3])
def test_the_slow_count_is_exactly_what_numpy_allows(percentile: float):
    """At the allowed number of slow samples numpy reads only fast ones; with one more it reads a slow one."""
    for n in range(1, 400):
        m = max_slow_count(n, percentile)
        assert 0 <= m < n
        at_limit = np.r_[np.ones(n - m), np.full(m, 3.0)]
        assert np.percentile(at_limit, percentile) == 1.0
        if m + 1 < n:
            assert np.percentile(np.r_[np.ones(n - m - 1), np.full(m + 1, 3.0)], percentile) > 1.0


def test_a_binding_tail_costs_accuracy_and_moves_requests_off_the_slow_exit():
    rng = np.random.default_rng(0)
    n = 400
    scores = np.column_stack([rng.uniform(size=n), rng.uniform(size=n), np.full(n, 0.5)])
    correct = np.column_stack([scores[:, 0] > 0.7, scores[:, 1] > 0.3, np.ones(n, bool)])
    problem = ExitProblem(scores, correct.astype(float), [1.0, 2.0, 3.0])
    free = solve_at(problem, 3.0, "optimal")
    tail = TailConstraint(90.0, 2.5, (1.0, 2.0, 3.0))  # at most 10% may reach the last exit
    bounded = solve_with_tail(problem, 3.0, "optimal", tail)
    assert free is not None and bounded is not None
    free_last = np.mean(problem.exits(free.thresholds) == 2)
    assert free_last > 0.1  # the constraint binds
    assert np.mean(problem.exits(bounded.thresholds) == 2) <= 0.1
    assert bounded.gain < free.gain


def test_a_bound_below_exit_1_is_refused_with_the_smallest_that_works():
    problem = ExitProblem(np.array([[0.9, 0.5], [0.2, 0.5]]), np.ones((2, 2)), [1.0, 2.0])
    with pytest.raises(BudgetError, match="below exit 1's latency 0.8 ms.*at least 0.8 ms"):
        capped_problem(problem, TailConstraint(99.0, 0.5, (0.8, 1.6)))
    with pytest.raises(DyncalError, match="3 per-exit latencies for 2 exits"):
        capped_problem(problem, TailConstraint(99.0, 5.0, (0.8, 1.6, 2.0)))
    with pytest.raises(DyncalError, match="2 flags"):
        problem.with_cap(ExitCap((True,), 0))


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((0.0, 1.0, (1.0, 2.0)), r"\(0, 100\]"),
        ((99.0, -1.0, (1.0, 2.0)), "positive"),
        ((99.0, 1.0, (1.0,)), "K >= 2"),
        ((99.0, 1.0, (1.0, float("nan"))), "K >= 2"),
    ],
)
def test_a_malformed_tail_constraint_is_refused(args, match):
    with pytest.raises(DyncalError, match=match):
        TailConstraint(*args)
