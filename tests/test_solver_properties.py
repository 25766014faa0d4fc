"""Invariants of the threshold solvers, over random and real-like score sets (hypothesis)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dyncal.calibrate.search import budget_grid, problem_for, solve_at


@st.composite
def score_sets(draw):
    """Scores of K exits that get more confident and more often right, with ties (rounded)."""
    seed = draw(st.integers(0, 2**31 - 1))
    n = draw(st.integers(20, 300))
    k = draw(st.integers(2, 5))
    decimals = draw(st.sampled_from([1, 2, 6]))
    rng = np.random.default_rng(seed)
    skill = rng.uniform(0, 1, (n, 1)) + np.linspace(0, 1, k)[None, :]
    correct = rng.uniform(0, 2, (n, k)) < skill
    scores = np.round(np.clip(0.3 * skill + rng.normal(0, 0.2, (n, k)) + 0.2 * correct, 0.01, 1.0), decimals)
    steps = rng.uniform(0.2, 3.0, k)
    costs = np.cumsum(steps)
    return scores, correct, costs


@settings(max_examples=40, deadline=None)
@given(score_sets(), st.floats(0.0, 1.0))
def test_optimal_is_never_below_the_best_geometric_solution_on_its_fit_data(data, where):
    scores, correct, costs = data
    lo, hi = costs[0], costs[-1]
    budget = lo + where * (hi - lo)
    opt = solve_at(problem_for("optimal", scores, correct, costs, "maxprob"), budget, "optimal")
    geo = solve_at(problem_for("geometric", scores, correct, costs, "maxprob"), budget, "geometric")
    assert opt is not None and opt.cost <= budget * (1 + 1e-12)
    if geo is not None:
        assert opt.gain >= geo.gain - 1e-9


@settings(max_examples=25, deadline=None)
@given(score_sets())
def test_optimal_gain_is_monotone_in_the_budget(data):
    scores, correct, costs = data
    problem = problem_for("optimal", scores, correct, costs, "maxprob")
    _, grid = budget_grid(costs, 9)
    gains = [solve_at(problem, float(b), "optimal").gain for b in grid]
    assert all(b >= a - 1e-9 for a, b in zip(gains, gains[1:], strict=False))
