"""The guard: what ``dyncal solve`` returns is never beaten, on its fit data, by what it could have chosen.

A method's own answer at a budget (:func:`~dyncal.calibrate.search.solve_at`) is compared,
by 0/1 accuracy on the fit part, with its *rivals within the budget*: every exit used
alone whose cost fits, and ``geometric``'s answer (MSDNet's baseline, when the method is
another). When a rival is strictly more accurate, it is returned instead, and the
:class:`Guarded` answer says what was replaced, by what and why. Then the *monotone
envelope*: the guarded answers at the frontier's grid budgets below this one
(:func:`~dyncal.calibrate.search.budget_grid`) compete too, so a method's accuracy on its
fit data never falls as the budget grows, and ``dyncal solve`` at a grid budget returns the
frontier's row there (:func:`guarded_path` is the frontier's side of it).

For ``optimal`` the guard is a safety net that does not fire: single exits (and every
two-exit policy) and the geometric solutions are among its starting points, and its path
never falls. ``smoothed`` optimises its own estimate of accuracy, which overrates later
exits when exits share their errors, and ``geometric`` keeps some samples for every exit;
on exits that are not monotone in accuracy both lose to a single exit, and the guard
catches it (``benchmarks/heldout_comparison.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np  # noqa: F401 - the examples use it

from dyncal.calibrate.problem import ExitProblem, Solution
from dyncal.calibrate.search import walk_to
from dyncal.errors import BudgetError

__all__ = ["Rival", "Guarded", "rivals_within", "guarded_at", "guarded_path"]


@dataclass(frozen=True)
class Rival:
    """What a method could have chosen instead within a budget.

    Attributes:
        name: ``"exit 2 alone"`` or ``"geometric"``.
        exit: The exit (from 1) of an exit alone; None for ``geometric``.
        solution: Its thresholds and cost on the fit part; ``gain`` is its fit accuracy.
    """

    name: str
    exit: int | None
    solution: Solution

    @property
    def accuracy(self) -> float:
        """Fit accuracy."""
        return self.solution.gain


@dataclass(frozen=True)
class Guarded:
    """A method's answer at a budget after the guard and the monotone envelope.

    Attributes:
        method: The method asked.
        budget: The budget (unit of the problem's costs).
        solution: What is returned (``gain`` in the method's own objective).
        accuracy: Its fit accuracy (0/1 hits).
        own: The method's own answer at this budget (None when it has none, e.g.
            ``geometric`` at exit 1's cost).
        own_accuracy: Its fit accuracy (None likewise).
        by: None when the method's own answer stands; else what replaced it: ``"exit 1
            alone"``, ``"geometric"``, or ``"<method> at 0.55x"`` (its own answer at a
            smaller grid budget, more accurate on the fit part).
        exit: The exit (from 1) when ``by`` is an exit alone, else None.
        rivals: The rivals within this budget, cheapest exit first, ``geometric`` last.
    """

    method: str
    budget: float
    solution: Solution
    accuracy: float
    own: Solution | None
    own_accuracy: float | None
    by: str | None
    exit: int | None
    rivals: tuple[Rival, ...]

    @property
    def replaced(self) -> bool:
        """Whether the method's own answer was replaced."""
        return self.by is not None

    @property
    def reason(self) -> str | None:
        """Why the method's own answer was replaced, in words (None when it was not).

        Example:
            >>> own = Solution(np.array([0.5]), 0.70, 1.5)
            >>> alone = Solution(np.array([-np.inf]), 0.72, 1.0)
            >>> g = Guarded("optimal", 1.6, alone, 0.72, own, 0.70, "exit 1 alone", 1, ())
            >>> g.reason
            'exit 1 alone is more accurate on the fit half than optimal within the budget (72.00% vs 70.00%)'
        """
        if self.by is None:
            return None
        if self.own is None or self.own_accuracy is None:
            return f"{self.method} has no solution within the budget; {self.by} fits"
        return (
            f"{self.by} is more accurate on the fit half than {self.method} within the budget "
            f"({100 * self.accuracy:.2f}% vs {100 * self.own_accuracy:.2f}%)"
        )


def rivals_within(problem: ExitProblem, budget: float, method: str) -> list[Rival]:
    """Every exit alone within ``budget`` (and the cap), and ``geometric``'s answer (unless ``method`` is geometric).

    Example:
        >>> s = np.array([[0.9, 0.6], [0.4, 0.8], [0.7, 0.9]])
        >>> ok = np.array([[1, 1], [0, 1], [1, 0]], bool)
        >>> [(r.name, round(r.accuracy, 3)) for r in rivals_within(ExitProblem(s, ok, [1.0, 2.0]), 1.5, "optimal")]
        [('exit 1 alone', 0.667), ('geometric', 1.0)]
    """
    rivals = []
    for j in range(problem.k):
        alone = problem.single_exit(j)
        if problem.fits(alone, budget):
            accuracy = float(problem.exit_accuracy[j])
            rivals.append(Rival(f"exit {j + 1} alone", j + 1, Solution(alone.thresholds, accuracy, alone.cost)))
    if method != "geometric":
        geo = problem.best_geometric(budget)
        if geo is not None:
            rivals.append(Rival("geometric", None, geo))
    return rivals


def _guard(problem: ExitProblem, own: Solution | None, budget: float, method: str) -> Guarded:
    """The method's answer at one budget against its rivals there (no envelope)."""
    rivals = tuple(rivals_within(problem, budget, method))
    own_accuracy = None if own is None else problem.accuracy(own)
    better = [r for r in rivals if own_accuracy is None or r.accuracy > own_accuracy]
    best = max(better, key=lambda r: r.accuracy, default=None)  # strictly more accurate replaces; the first of equals
    if best is None:
        if own is None or own_accuracy is None:
            raise BudgetError(f"budget {budget:g} is below exit 1's cost {problem.costs[0]:g}: nothing fits")
        return Guarded(method, budget, own, own_accuracy, own, own_accuracy, None, None, rivals)
    # the rival's thresholds, with the method's own objective as gain
    sol = problem.solution(best.solution.thresholds)
    return Guarded(method, budget, sol, best.accuracy, own, own_accuracy, best.name, best.exit, rivals)


def _envelope(current: Guarded, earlier: Guarded | None, problem: ExitProblem) -> Guarded:
    """``current``, or ``earlier`` (a smaller budget's) when strictly more accurate on fit data."""
    if earlier is None or earlier.accuracy <= current.accuracy:
        return current
    # by None: the method's own answer at the smaller budget, named by its fraction of the full cost
    by = earlier.by or f"{current.method} at {earlier.budget / float(problem.costs[-1]):.4g}x"
    return replace(current, solution=earlier.solution, accuracy=earlier.accuracy, by=by, exit=earlier.exit)


def guarded_at(
    problem: ExitProblem,
    budget: float,
    method: str,
    n_budgets: int = 41,
    path: Sequence[Solution | None] | None = None,
) -> Guarded:
    """What ``dyncal solve`` returns at one budget: the method's answer, guarded, on its monotone envelope.

    Args:
        problem: The fit samples (for ``smoothed``, with its 0/1 ``correct``).
        budget: Mean-cost budget in the unit of ``problem.costs``, at least exit 1's cost.
        method: ``optimal``, ``smoothed`` or ``geometric``.
        n_budgets: Size of the frontier grid the envelope is taken over (default 41).
        path: :func:`~dyncal.calibrate.search.solve_path` of this problem and method over
            the whole grid, if already computed (the frontier's).

    Returns:
        The guarded answer: never less accurate on the fit part than any rival within
        ``budget`` nor than the guarded answer at any smaller grid budget; at a grid budget
        equal to :func:`guarded_path`'s answer there.

    Example:
        >>> s = np.array([[0.9, 0.6, 0.5], [0.4, 0.8, 0.5], [0.7, 0.9, 0.5], [0.3, 0.2, 0.5]])
        >>> ok = np.array([[1, 0, 0], [1, 1, 0], [1, 0, 1], [0, 1, 1]], bool)  # exit 1 is the best
        >>> g = guarded_at(ExitProblem(s, ok, [1.0, 2.0, 3.0]), 1.0, "optimal")
        >>> g.accuracy, g.by
        (0.75, None)
    """
    walk = walk_to(problem, budget, method, n_budgets, path)
    below = guarded_path(problem, walk.budgets, method, walk.solutions)
    earlier = next((g for g in reversed(below) if g is not None), None)
    return _envelope(_guard(problem, walk.answer, budget, method), earlier, problem)


def guarded_path(
    problem: ExitProblem, budgets: Sequence[float], method: str, path: Sequence[Solution | None]
) -> list[Guarded | None]:
    """:func:`guarded_at` at every budget of the frontier's grid, from the method's path over it.

    Args:
        problem: The fit samples.
        budgets: The grid (:func:`~dyncal.calibrate.search.budget_grid`), ascending.
        method: ``optimal``, ``smoothed`` or ``geometric``.
        path: :func:`~dyncal.calibrate.search.solve_path` over ``budgets``.

    Returns:
        One guarded answer per budget (None only below exit 1's cost); fit accuracy never
        falls along it.
    """
    out: list[Guarded | None] = []
    best: Guarded | None = None
    for b, own in zip((float(b) for b in budgets), path, strict=True):
        if own is None and problem.costs[0] > b:
            out.append(None)
            continue
        best = _envelope(_guard(problem, own, b, method), best, problem)
        out.append(best)
    return out
