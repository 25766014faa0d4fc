"""Threshold search: the most accurate exit rule under a mean-cost budget, for one budget or a path.

Problem. Scores ``s[n, k]``, gains ``g[n, k]`` (1 if exit k is right on sample n, or a
smoothed estimate of that), cumulative costs ``c_1 <= ... <= c_K``. Thresholds
``t_1..t_{K-1}``; sample n leaves at the first k with ``s[n, k] >= t_k``, the last exit
takes the rest. Maximise ``mean g[n, exit(n)]`` subject to ``mean c[exit(n)] <= B``.

Methods (:class:`~dyncal.choices.Method`):

``geometric``
    The baseline of MSDNet's dynamic evaluation (reused by RANet, IMTA, L2W, Dynamic
    Perceiver), implemented faithfully but vectorised: for a ratio ``q`` the target exit
    shares are ``f_k ∝ q^k`` (k = 1..K, normalised); exit by exit, among samples still
    present and sorted by score, the ``floor(n f_k)``-th (n = all fit samples) and everyone
    still present with a score as high leaves (ties included, and near-ties closer than
    :data:`~dyncal.calibrate.problem.SEPARATION`: float32 cannot tell them apart); ``t_k`` is placed midway between
    the lowest score that leaves and the next lower one present, so the same samples leave
    when scores are recomputed in float32; a quota of 0, or larger than what is left, lets
    nobody leave. ``q`` runs over the published 39 values ``p / 20`` and a fine geometric
    grid (240 values in [0.01, 8]) so the baseline is at its strongest. At a budget the
    baseline is the ``q`` of highest fitted accuracy whose fitted cost fits (none fits at
    exactly exit 1's cost: some sample always stays; there the guard returns exit 1
    alone). Shares are computed in float64 where the published code uses float32, which
    can move a quota by one sample at the rounding boundary. Cost: ``O(Q K N)`` for ``Q``
    ratios (one ``np.partition`` per exit and ratio), independent of the number of budgets.

``optimal`` (the default)
    Coordinate ascent over all ``K - 1`` thresholds with *exact* one-threshold updates.
    With the other thresholds fixed, moving ``t_k`` only changes which of the samples
    reaching exit k leave there; the rest go where the later thresholds send them, which
    does not depend on ``t_k``. Sorting the samples that reach k by ``s_k`` (one global
    argsort per exit, filtered by a mask, so ``O(N)`` per update) the change in gain and
    cost for every possible cut is a prefix sum; cuts are only allowed between scores
    more than :data:`~dyncal.calibrate.problem.SEPARATION` apart (ties and float32 near-ties leave together), and a
    threshold lies midway across its gap, never on a sample's score, so a deployment
    scoring in float32 sends every fit sample to the same exit. So the best ``t_k`` is
    found exactly in ``O(N K)``:

    1. Lagrangian path: for 16 values of λ (large to 0, warm-started) maximise
       ``gain - λ cost`` by exact updates until no threshold moves.
    2. Pool: those solutions, every ``geometric`` solution and everyone at exit j, for
       every j; and per budget the best *two-exit* policy within it (for exits ``i < j``:
       the confident at ``i`` leave there, everyone else at ``j``; exact, from one sort per
       exit and prefix sums, :meth:`~dyncal.calibrate.problem.ExitProblem.best_two_exit`).
       Single moves cannot reach those from every start: opening exit ``j`` changes
       nothing while exit ``i`` takes everyone, and raising ``t_i`` alone sends samples on
       to the last exit, over the budget.
    3. Per budget, in increasing order: budget-exact ascent (repeatedly the exact best
       single-threshold move among those that keep the cost within budget, until none
       improves) from the best pool member that fits (the two-exit policy included), and
       from the previous budget's answer after its best single move over all exits; the
       better of the two.
    4. One budget alone (``dyncal solve``, :func:`solve_at`) follows the same path over the
       frontier's grid of 41 budgets: at a grid budget it is the path's answer there;
       between two, the best of the last grid answer below, its best single move, the best
       pool member and the best two-exit policy within the asked budget.

    Each step is monotone, so on the data it is fitted on ``optimal`` is never below
    ``geometric`` or any exit alone at any budget, along a frontier more budget never lowers
    its accuracy, and separate ``dyncal solve`` calls agree: equal to the frontier at its
    budgets, never lower for more budget (the guard of :mod:`dyncal.calibrate.guard` never
    has to replace it). It is a local search: on small problems with three or more exits
    it ends a sample or two short of the enumerated optimum on a few percent of budgets
    (tests/test_solver_properties.py). Cost: ``O(S K^2 N)`` per budget for ``S`` sweeps
    (typically 1-3), plus the λ path, the two-exit families and the geometric pool once.

    It is the default because it has the least regret held out across monotone and
    non-monotone models (``benchmarks/heldout_comparison.md``, issue 17): at most 0.11
    points below the best answer on any of nine models, where ``smoothed`` falls 0.8
    points below and loses to an exit alone on most budgets of models whose exits are not
    monotone in accuracy.

``smoothed``
    ``optimal`` run on calibrated expected accuracy instead of 0/1 hits: the gain of exit
    k on sample n is ``P(exit k right | s_k = s[n, k])``, estimated per exit by isotonic
    regression of correctness on score over the fit data. Thresholds tuned to individual
    right/wrong samples chase noise (on held-out data their gain over ``geometric``
    vanishes); the smoothed gain keeps the per-sample information that matters (how
    confident each later exit is on this sample) and drops the label noise. On a
    well-trained monotone model it generalises a little better than ``optimal`` (+0.1
    points on Fashion-MNIST). But its objective is its own estimate, and when exits share
    their errors (they share a backbone) the samples an early exit hands on are harder
    for later exits than their marginal calibration says: it overrates later exits, and
    on models whose exits are not monotone in accuracy it spends budget where it does not
    pay, loses to an exit alone and falls as the budget grows; the guard catches that on
    the fit data. Risk control orders its candidates with it by default
    (:data:`~dyncal.choices.DEFAULT_RISK_METHOD`). The budget is still met exactly on the
    fit data (costs are not smoothed); accuracies are always reported with real 0/1 hits.

Whatever the method, ``dyncal solve`` returns its answer after the guard
(:func:`dyncal.calibrate.guard.guarded_at`): never less accurate on the fit data than an
exit alone or ``geometric`` within the budget, nor than its own answer at a smaller budget
of the frontier's grid; the thresholds document records any replacement.

A second constraint. A problem may carry an :class:`~dyncal.calibrate.problem.ExitCap`:
at most so many fit samples may leave at some exits (a latency percentile bound is one,
:mod:`dyncal.calibrate.tail`). Every step above asks
:meth:`~dyncal.calibrate.problem.ExitProblem.fits` (the budget and the cap) where it
compared the cost, and the exact one-threshold update keeps both, so every answer meets
both on the fit data; without a cap nothing changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dyncal.calibrate.problem import ExitProblem, Solution
from dyncal.choices import Method

__all__ = ["smoothed_gains", "problem_for", "solve_path", "solve_at", "walk_to", "Walk", "budget_grid"]


def smoothed_gains(scores: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Per-exit isotonic estimate of ``P(right | score)`` at every sample's score.

    Args:
        scores: ``(N, K)`` scores.
        correct: ``(N, K)`` correctness.

    Returns:
        ``(N, K)`` float64 in [0, 1].

    Example:
        >>> s = np.array([[0.1, 0.5], [0.2, 0.5], [0.3, 0.5], [0.9, 0.5]])
        >>> ok = np.array([[1, 1], [0, 1], [1, 0], [1, 1]], bool)
        >>> smoothed_gains(s, ok)[:, 0].tolist()
        [0.5, 0.5, 1.0, 1.0]
    """
    from sklearn.isotonic import IsotonicRegression

    n, k = scores.shape
    out = np.empty((n, k), dtype=np.float64)
    for j in range(k):
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
        out[:, j] = iso.fit_transform(scores[:, j], correct[:, j].astype(np.float64))
    return out


def problem_for(
    method: str,
    scores: np.ndarray,
    correct: np.ndarray,
    costs: Sequence[float] | np.ndarray,
    score: str | None = None,
) -> ExitProblem:
    """The :class:`ExitProblem` a method optimises on these samples (``score``: its name)."""
    if method == "smoothed":
        return ExitProblem(scores, smoothed_gains(scores, correct), costs, score, correct=correct)
    return ExitProblem(scores, correct.astype(np.float64), costs, score)


def solve_path(problem: ExitProblem, budgets: Sequence[float], method: str) -> list[Solution | None]:
    """Solve for several budgets at once (ascending order is used internally).

    Args:
        problem: The fit samples (gains: correctness for ``optimal``/``geometric``,
            :func:`smoothed_gains` for ``smoothed``).
        budgets: Mean-cost budgets in the unit of ``problem.costs``.
        method: ``optimal``, ``smoothed`` (same algorithm; the gains differ) or
            ``geometric``.

    Returns:
        One solution per budget in the given order; None where the method has no solution
        within the budget (only ``geometric`` near the first exit's cost).

    Raises:
        DyncalError: Unknown method.
    """
    Method.parse(method, "method")
    order = np.argsort(np.asarray(budgets, dtype=np.float64), kind="stable")
    out: list[Solution | None] = [None] * len(budgets)
    geo = problem.geometric_solutions()
    if method == "geometric":
        for i in order:
            fits = (s for s in geo if problem.fits(s, float(budgets[i])))
            out[i] = max(fits, key=lambda s: (s.gain, -s.cost), default=None)
        return out
    pool = problem.starting_pool()
    prev: Solution | None = None
    for i in order:
        sol = _path_step(problem, pool, prev, float(budgets[i]))
        if sol is not None:
            out[i] = prev = sol
    return out


def _more_accurate(a: Solution | None, b: Solution | None) -> Solution | None:
    """The higher-gain solution (cheaper on ties); None loses."""
    if a is None:
        return b
    if b is None:
        return a
    return b if (b.gain, -b.cost) > (a.gain, -a.cost) else a


def _moved_to(problem: ExitProblem, t: np.ndarray, old: Solution, budget: float) -> Solution:
    """The solution of ``t`` (moved to from ``old``) if it fits ``budget`` and gains at least as much, else ``old``."""
    sol = problem.solution(t)
    return sol if problem.fits(sol, budget) and sol.gain >= old.gain else old


def _ascended_from(problem: ExitProblem, start: Solution, budget: float) -> Solution:
    """Budget-exact coordinate ascent from ``start``; never worse than ``start``."""
    return _moved_to(problem, problem.budget_ascent(start.thresholds.copy(), budget), start, budget)


def _after_best_move(problem: ExitProblem, prev: Solution, budget: float) -> Solution:
    """``prev`` with its best single move within ``budget`` (``prev`` when none helps)."""
    t = problem.best_move(prev.thresholds, budget)
    return prev if t is prev.thresholds else _moved_to(problem, t, prev, budget)


def _best_start(problem: ExitProblem, pool: Sequence[Solution], budget: float) -> Solution | None:
    """The best pool member or two-exit policy within ``budget`` (higher gain, then cheaper), or None."""
    fits = [s for s in pool if problem.fits(s, budget)]
    two = problem.best_two_exit(budget)
    fits += [two] if two is not None and problem.fits(two, budget) else []
    return max(fits, key=lambda s: (s.gain, -s.cost), default=None)


def _path_step(problem: ExitProblem, pool: Sequence[Solution], prev: Solution | None, budget: float) -> Solution | None:
    """One budget of an ascending path: the best of the pool's start and of ``prev`` moved on.

    The pool's start is its best member within ``budget`` or the best two-exit policy
    (:meth:`ExitProblem.best_two_exit`). Both are improved by budget-exact ascent; ``prev``
    first gets its best single move within this budget (:meth:`ExitProblem.best_move`), so
    the answer here is at least as good as that move within any smaller budget, which makes
    :func:`solve_at` monotone.
    """
    start = _best_start(problem, pool, budget)
    best = None if start is None else _more_accurate(start, _ascended_from(problem, start, budget))
    if prev is not None:
        best = _more_accurate(best, _ascended_from(problem, _after_best_move(problem, prev, budget), budget))
    return best


def budget_grid(costs: Sequence[float] | np.ndarray, n_budgets: int = 41) -> tuple[np.ndarray, np.ndarray]:
    """The frontier's budgets: ``n_budgets`` fractions from exit 1's cost to the last's.

    Returns:
        ``(fractions, budgets)``; budgets in the unit of ``costs``, the first and last
        exactly ``costs[0]`` and ``costs[-1]``.

    Example:
        >>> f, b = budget_grid([1.0, 4.0], 4)
        >>> f.tolist(), b.tolist()
        ([0.25, 0.5, 0.75, 1.0], [1.0, 2.0, 3.0, 4.0])
    """
    c = np.asarray(costs, dtype=np.float64)
    fractions = np.linspace(c[0] / c[-1], 1.0, n_budgets)
    budgets = fractions * c[-1]
    budgets[0] = c[0]
    budgets[-1] = c[-1]
    return fractions, budgets


@dataclass(frozen=True)
class Walk:
    """One budget solved the way the frontier is: the path over the grid below it, then the budget.

    Attributes:
        budgets: The frontier grid's budgets below the asked one, ascending.
        solutions: The path's answer at each of them (None where the method has none).
        answer: The method's answer at the asked budget (None when it has none).
    """

    budgets: tuple[float, ...]
    solutions: tuple[Solution | None, ...]
    answer: Solution | None


def walk_to(
    problem: ExitProblem,
    budget: float,
    method: str,
    n_budgets: int = 41,
    path: Sequence[Solution | None] | None = None,
) -> Walk:
    """The path over the frontier's grid up to ``budget``, and the method's answer there (:func:`solve_at`).

    Args:
        problem: The fit samples.
        budget: Mean-cost budget in the unit of ``problem.costs``.
        method: ``optimal``, ``smoothed`` or ``geometric``.
        n_budgets: Size of the frontier grid (:func:`budget_grid`).
        path: :func:`solve_path` of this problem and method over the whole grid, if already
            computed (the frontier's); its prefix is the path walked here.

    Returns:
        The walk.
    """
    _, grid = budget_grid(problem.costs, n_budgets)
    below = [float(g) for g in grid if g < budget]
    # a grid budget equal to this one up to rounding: the path's own answer there
    at = any(budget <= g <= budget * (1 + 1e-12) for g in grid)
    full = path is not None and len(path) == len(grid)
    if at and method != "geometric":
        exact = full and float(grid[len(below)]) == budget
        walked = list(path[: len(below) + 1]) if exact else solve_path(problem, [*below, budget], method)  # type: ignore[index]
        return Walk(tuple(below), tuple(walked[:-1]), walked[-1])
    walked = list(path[: len(below)]) if full else solve_path(problem, below, method)  # type: ignore[index]
    if method == "geometric":
        return Walk(tuple(below), tuple(walked), solve_path(problem, [budget], method)[0])
    prev = walked[-1] if walked else None
    best = _best_start(problem, problem.starting_pool(), budget)
    if prev is not None:
        best = _more_accurate(best, _after_best_move(problem, prev, budget))
    return Walk(tuple(below), tuple(walked), best)


def solve_at(
    problem: ExitProblem,
    budget: float,
    method: str,
    n_budgets: int = 41,
    path: Sequence[Solution | None] | None = None,
) -> Solution | None:
    """The method's own answer at one budget, solved the way the frontier is, so that separate calls agree.

    This is the answer before the guard (:func:`dyncal.calibrate.guard.guarded_at`, which
    ``dyncal solve`` returns). ``optimal``/``smoothed``: at a budget of the frontier's grid
    (:func:`budget_grid`) the path's answer there; between two, the best of the path's
    answer at the last grid budget ``g < budget``, its best single move within ``budget``,
    the best pool member and the best two-exit policy within ``budget``. None of these
    decreases as ``budget`` grows, and the path's answer at the next grid budget dominates
    all of them, so across separate calls the gain is monotone in the budget, equal to the
    frontier's at a grid budget and never below ``geometric``. (A full ascent at ``budget``
    itself is a local search whose end point can fall as the budget grows, which is why it
    is not used here.)

    Args:
        problem: The fit samples.
        budget: Mean-cost budget in the unit of ``problem.costs``.
        method: ``optimal``, ``smoothed`` or ``geometric``.
        n_budgets: Size of the frontier grid (default 41, as ``dyncal frontier``).
        path: :func:`solve_path` of this problem and method over the whole grid, if already
            computed (the frontier's); its prefix is the path walked here.

    Returns:
        The solution, or None when the method has none within the budget.
    """
    return walk_to(problem, budget, method, n_budgets, path).answer
