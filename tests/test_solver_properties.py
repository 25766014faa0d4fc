"""The threshold solvers' promises, checked on one strategy of random problems (hypothesis).

On the data they are fitted on: the met cost never exceeds the asked budget; along a path
more budget never lowers the fitted gain; ``optimal`` and ``smoothed`` are never below the
best ``geometric`` solution; one budget solved alone (``solve_at``) is never below the
frontier at that budget and never falls as the budget grows; and on problems small enough
to enumerate, ``optimal`` never claims more than the true optimum and reaches it with two
exits (with three or more it can fall a sample or two short: a local search). Real data keep two
examples in test_solve.py (the demo frontier, the Fashion-MNIST repro).
"""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import ExitCase, exit_problems

from dyncal.calibrate.guard import guarded_at, guarded_path
from dyncal.calibrate.policy import evaluate_policy
from dyncal.calibrate.search import budget_grid, problem_for, solve_at, solve_path

TOL = 1e-12
SEARCHES = st.sampled_from(["optimal", "smoothed"])
METHODS = st.sampled_from(["optimal", "smoothed", "geometric"])
FAST = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@settings(FAST, max_examples=60)
@given(exit_problems(), SEARCHES)
def test_a_path_meets_its_budgets_gains_with_budget_and_beats_geometric(case: ExitCase, method: str):
    problem = problem_for(method, case.scores, case.correct, case.costs, "maxprob")
    path = solve_path(problem, case.budgets, method)
    geometric = solve_path(problem, case.budgets, "geometric")
    previous = -1.0
    for budget, sol, geo in zip(case.budgets, path, geometric, strict=True):
        assert sol is not None and sol.cost <= budget
        assert sol.gain >= previous - TOL
        previous = sol.gain
        if geo is not None:
            assert geo.cost <= budget and sol.gain >= geo.gain - TOL
        if method == "optimal":  # 0/1 gains: the gain is the fitted accuracy, met with the exit rule itself
            fit = evaluate_policy(case.scores, case.correct, case.costs, sol.thresholds)
            assert (fit.accuracy, fit.expected_cost <= budget) == (sol.gain, True)


@settings(FAST, max_examples=25)
@given(exit_problems(max_n=150), SEARCHES)
def test_one_budget_alone_is_never_below_the_frontier_and_never_falls(case: ExitCase, method: str):
    n_budgets = 7
    problem = problem_for(method, case.scores, case.correct, case.costs, "maxprob")
    _, grid = budget_grid(case.costs, n_budgets)
    frontier = solve_path(problem, list(grid), method)
    for budget, on_frontier in zip(grid, frontier, strict=True):
        alone = solve_at(problem, float(budget), method, n_budgets)
        assert alone is not None and on_frontier is not None
        assert alone.cost <= budget and alone.gain >= on_frontier.gain - TOL
    previous = -1.0
    for budget in case.budgets:
        alone = solve_at(problem, budget, method, n_budgets)
        geo = solve_at(problem, budget, "geometric", n_budgets)
        assert alone is not None and alone.cost <= budget and alone.gain >= previous - TOL
        assert geo is None or alone.gain >= geo.gain - TOL
        previous = alone.gain


@settings(FAST, max_examples=40)
@given(exit_problems(max_n=200, shapes=("nonmonotone", "nonmonotone", "monotone", "noise")), METHODS)
def test_solve_is_never_beaten_on_its_fit_data_by_an_exit_alone_or_geometric(case: ExitCase, method: str):
    """Issue 17: on exits not monotone in accuracy `smoothed` (then the default) lost to exit 1 alone."""
    problem = problem_for(method, case.scores, case.correct, case.costs, "maxprob")
    geometric = problem_for("geometric", case.scores, case.correct, case.costs, "maxprob")
    for budget in case.budgets:
        answer = guarded_at(problem, budget, method, n_budgets=7)
        fit = evaluate_policy(case.scores, case.correct, case.costs, answer.solution.thresholds)
        assert fit.expected_cost <= budget and fit.accuracy == answer.accuracy
        for j in np.flatnonzero(case.costs <= budget):
            assert fit.accuracy >= case.correct[:, j].mean(), f"exit {j + 1} alone is more accurate"
        geo = solve_path(geometric, [budget], "geometric")[0]
        assert geo is None or fit.accuracy >= geo.gain, "geometric is more accurate"
        # what it replaced, and that it replaced only what was worse
        own = solve_at(problem, budget, method, n_budgets=7)
        own_accuracy = None if own is None else evaluate_policy(case.scores, case.correct, case.costs, own.thresholds)
        assert answer.replaced == (own_accuracy is None or own_accuracy.accuracy < fit.accuracy)
        assert answer.own_accuracy == (None if own_accuracy is None else own_accuracy.accuracy)
        if method == "optimal":  # its starting points hold every exit alone and every geometric solution
            assert not answer.replaced


@settings(FAST, max_examples=25)
@given(exit_problems(max_n=150, shapes=("nonmonotone", "monotone")), METHODS)
def test_the_frontier_never_falls_and_solve_at_its_budgets_returns_its_rows(case: ExitCase, method: str):
    n_budgets = 7
    problem = problem_for(method, case.scores, case.correct, case.costs, "maxprob")
    _, grid = budget_grid(case.costs, n_budgets)
    rows = guarded_path(problem, list(grid), method, solve_path(problem, list(grid), method))
    accuracies = [r.accuracy for r in rows if r is not None]
    assert len(accuracies) == len(grid) and accuracies == sorted(accuracies)
    for budget, row in zip(grid, rows, strict=True):
        alone = guarded_at(problem, float(budget), method, n_budgets)  # the path walked again, not reused
        assert row is not None and np.array_equal(alone.solution.thresholds, row.solution.thresholds)
        assert (alone.accuracy, alone.by) == (row.accuracy, row.by)


def _brute_force(case: ExitCase, budget: float) -> float:
    """The best fitted accuracy of any thresholds (cuts at sample scores) within ``budget``, enumerated."""
    n, k = case.scores.shape
    levels = [np.array([*np.unique(case.scores[:, j]), np.inf]) for j in range(k - 1)]
    grid = np.array(list(itertools.product(*levels)))  # (M, K - 1): every combination of cuts
    leaves = case.scores[None, :, : k - 1] >= grid[:, None, :]  # (M, N, K - 1)
    exits = np.where(leaves.any(axis=2), leaves.argmax(axis=2), k - 1)
    accuracy = case.correct[np.arange(n)[None, :], exits].mean(axis=1)
    shares = np.stack([np.count_nonzero(exits == j, axis=1) / n for j in range(k)], axis=1)
    cost = shares @ case.costs  # share-weighted, as expected_cost: all at exit 1 costs exactly costs[0]
    return float(accuracy[cost <= budget].max())


@settings(FAST, max_examples=40)
@given(exit_problems(max_n=12))
def test_optimal_never_beats_the_enumerated_optimum_and_meets_it_with_two_exits(case: ExitCase):
    problem = problem_for("optimal", case.scores, case.correct, case.costs, "maxprob")
    for budget, sol in zip(case.budgets, solve_path(problem, case.budgets, "optimal"), strict=True):
        best = _brute_force(case, budget)
        assert sol is not None and sol.gain <= best + TOL
        if case.scores.shape[1] == 2:  # one threshold: the exact update finds the optimum
            assert sol.gain >= best - TOL


def test_optimal_reaches_the_enumerated_optimum_when_two_thresholds_must_move_at_once():
    """Found by the strategy above: the best thresholds send 2 samples to exit 1 and 4 to exit 2.

    That needs both thresholds to move at once (exit 1 up and exit 2 open to everyone): each
    single move from "all at exit 1" breaks the budget, and coordinate ascent ended 4 of 6
    samples short. The best two-exit policy within the budget is now a starting point
    (:meth:`ExitProblem.best_two_exit`). On 8,000 budgets of small problems with K = 3-5
    drawn as the strategy draws them, ``optimal`` now misses the enumerated optimum on 3.5%
    (18% before), never by more than 2 samples (1.8% did before, by up to 6).
    """
    scores = np.array([[0, 0.4, 0.7], [0.2, 0.1, 0.7], [0, 0.5, 0.9], [0.2, 0.5, 0.8], [0, 0.5, 0.3], [0, 0.5, 0.7]])
    correct = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 1], [0, 1, 1], [0, 1, 1], [0, 1, 1]], dtype=bool)
    case = ExitCase(scores, correct, np.array([1.0, 1.5, 2.5]), [1.35])
    best = _brute_force(case, 1.35)
    problem = problem_for("optimal", scores, correct, case.costs)
    sol = solve_path(problem, case.budgets, "optimal")[0]
    assert best == 5 / 6
    assert sol is not None and sol.gain == best and sol.cost <= 1.35
    alone = solve_at(problem, 1.35, "optimal", n_budgets=5)
    assert alone is not None and alone.gain == best
