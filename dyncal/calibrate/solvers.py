"""Threshold solvers: the most accurate exit rule under a mean-cost budget.

Problem. Scores ``s[n, k]``, gains ``g[n, k]`` (1 if exit k is right on sample n, or a
smoothed estimate of that), cumulative costs ``c_1 <= ... <= c_K``. Thresholds
``t_1..t_{K-1}``; sample n leaves at the first k with ``s[n, k] >= t_k``, the last exit
takes the rest. Maximise ``mean g[n, exit(n)]`` subject to ``mean c[exit(n)] <= B``.

Methods (``METHODS``):

``geometric``
    The baseline of MSDNet's dynamic evaluation (reused by RANet, IMTA, L2W, Dynamic
    Perceiver), implemented faithfully but vectorised: for a ratio ``q`` the target exit
    shares are ``f_k ∝ q^k`` (k = 1..K, normalised); exit by exit, among samples still
    present and sorted by score, the ``floor(n f_k)``-th (n = all fit samples) and everyone
    still present with a score as high leaves (ties included, and near-ties closer than
    :data:`SEPARATION`: float32 cannot tell them apart); ``t_k`` is placed midway between
    the lowest score that leaves and the next lower one present, so the same samples leave
    when scores are recomputed in float32; a quota of 0, or larger than what is left, lets
    nobody leave. ``q`` runs over the published 39 values ``p / 20`` and a fine geometric
    grid (240 values in [0.01, 8]) so the baseline is at its strongest. At a budget the
    baseline is the ``q`` of highest fitted accuracy whose fitted cost fits (none fits at
    exactly exit 1's cost: some sample always stays). Shares are computed in float64 where
    the published code uses float32, which can move a quota by one sample at the rounding
    boundary. Cost: ``O(Q K N)`` for ``Q`` ratios (one ``np.partition`` per exit and
    ratio), independent of the number of budgets.

``optimal``
    Coordinate ascent over all ``K - 1`` thresholds with *exact* one-threshold updates.
    With the other thresholds fixed, moving ``t_k`` only changes which of the samples
    reaching exit k leave there; the rest go where the later thresholds send them, which
    does not depend on ``t_k``. Sorting the samples that reach k by ``s_k`` (one global
    argsort per exit, filtered by a mask, so ``O(N)`` per update) the change in gain and
    cost for every possible cut is a prefix sum; cuts are only allowed between scores
    more than :data:`SEPARATION` apart (ties and float32 near-ties leave together), and a
    threshold lies midway across its gap, never on a sample's score, so a deployment
    scoring in float32 sends every fit sample to the same exit. So the best ``t_k`` is
    found exactly in ``O(N K)``:

    1. Lagrangian path: for 16 values of λ (large to 0, warm-started) maximise
       ``gain - λ cost`` by exact updates until no threshold moves.
    2. Pool: those solutions, every ``geometric`` solution and "all at exit 1".
    3. Per budget, in increasing order: budget-exact ascent (repeatedly the exact best
       single-threshold move among those that keep the cost within budget, until none
       improves) from the best pool member that fits, and from the previous budget's
       answer after its best single move over all exits; the better of the two.
    4. One budget alone (``dyncal solve``, :func:`solve_at`) follows the same path over the
       frontier's grid of 41 budgets up to the asked one, then takes the best of that
       answer, its best single move and the best pool member within the asked budget.

    Each step is monotone, so on the data it is fitted on ``optimal`` is never below
    ``geometric`` at any budget, along a frontier more budget never lowers its accuracy,
    and separate ``dyncal solve`` calls agree: never below the frontier at its budgets,
    never lower for more budget. Cost: ``O(S K^2 N)`` per budget for ``S`` sweeps
    (typically 1-3), plus the λ path and the geometric pool once.

``smoothed`` (the default)
    ``optimal`` run on calibrated expected accuracy instead of 0/1 hits: the gain of exit
    k on sample n is ``P(exit k right | s_k = s[n, k])``, estimated per exit by isotonic
    regression of correctness on score over the fit data. Thresholds tuned to individual
    right/wrong samples chase noise (on held-out data their gain over ``geometric``
    vanishes); the smoothed gain keeps the per-sample information that matters (how
    confident each later exit is on this sample) and drops the label noise. It is the
    default because it generalises best on real held-out data: see
    ``benchmarks/heldout_comparison.md``. The budget is still met exactly on the fit data
    (costs are not smoothed); accuracies are always reported with real 0/1 hits.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dyncal import choices
from dyncal.artifacts.costs import LatencyKey
from dyncal.artifacts.thresholds import ThresholdsDocument, finite_thresholds
from dyncal.calibrate.budget import (
    BudgetTarget,
    cost_units,
    format_budget,
    parse_budget,
    resolve_budget,
)
from dyncal.calibrate.options import SolveOptions
from dyncal.calibrate.policy import evaluate_policy, expected_cost
from dyncal.calibrate.scores import exit_scores
from dyncal.choices import Method, Score
from dyncal.errors import BudgetError, DyncalError
from dyncal.options import options_from
from dyncal.stats import mean_bootstrap_ci, stratified_split, unsplit_classes

__all__ = [
    "METHODS",
    "DEFAULT_METHOD",
    "PUBLISHED_Q",
    "ExitProblem",
    "Solution",
    "smoothed_gains",
    "geometric_thresholds",
    "solve_path",
    "solve_at",
    "budget_grid",
    "problem_for",
    "static_baselines",
    "PreparedRun",
    "prepare_run",
    "ThresholdsResult",
    "solve_run",
]

ThresholdsResult = ThresholdsDocument
"""The ``thresholds.json`` document (:class:`dyncal.artifacts.thresholds.ThresholdsDocument`), by its older name."""

log = logging.getLogger(__name__)

METHODS: tuple[str, ...] = tuple(m.value for m in Method)
DEFAULT_METHOD: str = choices.DEFAULT_METHOD.value
PUBLISHED_Q: tuple[float, ...] = tuple(p / 20 for p in range(1, 40))
FINE_Q: tuple[float, ...] = tuple(float(q) for q in np.geomspace(0.01, 8.0, 240))
_TOL = 1e-9


# --------------------------------------------------------------------------- problem


@dataclass(frozen=True)
class Solution:
    """Thresholds and what they achieve on the data they were fitted on.

    Attributes:
        thresholds: ``(K - 1,)`` float64; ``+inf`` lets nobody leave.
        gain: Mean gain (accuracy for 0/1 gains).
        cost: Mean cost (:func:`dyncal.calibrate.policy.expected_cost`).
    """

    thresholds: np.ndarray
    gain: float
    cost: float


class ExitProblem:
    """Scores, gains and costs of the fit samples, with the sorted orders solvers share.

    Args:
        scores: ``(N, K)`` scores.
        gains: ``(N, K)`` gain of each exit on each sample (correctness, or smoothed).
        costs: ``K`` cumulative costs, non-decreasing.
        score: The score's name, for the near-tie rule (:data:`SEPARATION`); default
            maxprob's.

    Example:
        >>> s = np.array([[0.9, 0.6], [0.4, 0.8], [0.7, 0.9]])
        >>> g = np.array([[1.0, 1.0], [0.0, 1.0], [1.0, 1.0]])
        >>> p = ExitProblem(s, g, [1.0, 2.0])
        >>> sol = solve_path(p, [1.5], "optimal")[0]
        >>> sol.thresholds.tolist(), sol.gain, sol.cost
        ([0.55], 1.0, 1.3333333333333333)
    """

    def __init__(
        self,
        scores: np.ndarray,
        gains: np.ndarray,
        costs: Sequence[float] | np.ndarray,
        score: str | None = None,
    ) -> None:
        s = np.asarray(scores, dtype=np.float64)
        g = np.asarray(gains, dtype=np.float64)
        if s.ndim != 2 or s.shape[1] < 2 or g.shape != s.shape:
            raise DyncalError(f"scores and gains must both be (N, K) with K >= 2, got {s.shape} and {g.shape}")
        if s.shape[0] == 0:
            raise DyncalError("no samples to fit thresholds on")
        if not np.all(np.isfinite(s)):
            row, ex = np.argwhere(~np.isfinite(s))[0]
            raise DyncalError(
                f"scores contain NaN or inf (row {row}, exit {ex + 1}); check the logits and temperatures"
            )
        c = np.asarray(costs, dtype=np.float64)
        if c.shape != (s.shape[1],) or np.any(np.diff(c) < 0) or not np.all(np.isfinite(c)):
            raise DyncalError(f"costs must be {s.shape[1]} non-decreasing numbers, got {c.tolist()}")
        self.scores = s
        self.gains = g
        self.costs = c
        self.tie_floor = tie_floor(score)
        self.n, self.k = s.shape
        self._cols = np.ascontiguousarray(s.T)
        self._gcols = np.ascontiguousarray(g.T)
        self._gflat = g.reshape(-1)
        self.order = [np.argsort(-self._cols[j], kind="stable") for j in range(self.k - 1)]
        self.sorted_scores = [self._cols[j][self.order[j]] for j in range(self.k - 1)]
        self._geometric: list[tuple[np.ndarray, np.ndarray]] | None = None
        self._geometric_solutions: list[Solution] | None = None
        self._starting_pool: list[Solution] | None = None

    # -- evaluation
    def passes(self, t: np.ndarray) -> np.ndarray:
        """``(N, K)`` booleans ``s >= t`` (last column all True)."""
        p = np.empty((self.n, self.k), dtype=bool)
        np.greater_equal(self.scores[:, : self.k - 1], t[None, :], out=p[:, : self.k - 1])
        p[:, self.k - 1] = True
        return p

    def exits(self, t: np.ndarray, skip: int | None = None) -> np.ndarray:
        """Exit index of every sample (with exit ``skip`` closed, if given)."""
        e = np.full(self.n, self.k - 1, dtype=np.intp)
        for j in range(self.k - 2, -1, -1):
            if j == skip or t[j] == np.inf:
                continue
            np.copyto(e, j, where=self._cols[j] >= t[j])
        return e

    def solution(self, t: np.ndarray, exits: np.ndarray | None = None) -> Solution:
        """Wrap thresholds with their mean gain and cost."""
        e = self.exits(t) if exits is None else exits
        return Solution(
            np.array(t, dtype=np.float64),
            float(np.mean(self.gains[np.arange(self.n), e])),
            expected_cost(e, self.costs),
        )

    # -- exact one-threshold update
    def _cuts(self, t: np.ndarray, j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, int]:
        """Allowed cuts at exit j: their thresholds, prefix gains and costs; base cost; current cut.

        Cut ``i`` lets the ``i + 1`` highest-scoring samples that reach exit j leave; cuts
        fall between distinct scores only. The current cut is -1 when nobody leaves and -2
        when ``t_j`` is not at an allowed cut.
        """
        down = self.exits(t, skip=j)  # exit taken if nobody left at j
        base_cost = float(np.sum(self.costs[down]))
        m = (down >= j)[self.order[j]]
        idx = self.order[j][m]
        ss = self.sorted_scores[j][m]
        d_down = down[idx]
        cg = np.cumsum(self._gcols[j][idx] - self._gflat[idx * self.k + d_down])
        cc = np.cumsum(self.costs[j] - self.costs[d_down])
        valid = np.ones(ss.shape[0], dtype=bool)
        if ss.shape[0] > 1:
            valid[:-1] = _separable(ss[:-1], ss[1:], self.tie_floor)
        cut = np.flatnonzero(valid)
        leaving = int(np.sum(ss >= t[j]))
        cur = -1
        if leaving:
            pos = int(np.searchsorted(cut, leaving - 1))
            cur = pos if pos < cut.shape[0] and cut[pos] == leaving - 1 else -2
        below = np.empty(cut.shape[0])
        below[:-1] = ss[cut[:-1] + 1]
        if cut.shape[0]:
            below[-1] = _next_lower(self.sorted_scores[j], float(ss[cut[-1]]))
        return _midway(ss[cut], below), cg[cut], cc[cut], base_cost, cur

    @staticmethod
    def _with_threshold(t: np.ndarray, j: int, value: float) -> np.ndarray:
        """A copy of ``t`` with threshold ``j`` set to ``value``."""
        new = t.copy()
        new[j] = value
        return new

    def lagrange_update(self, t: np.ndarray, j: int, lam: float) -> np.ndarray:
        """Best ``t_j`` for ``gain - lam * cost``, the others fixed (exact).

        Returns ``t`` itself (same object) when no move improves by more than a tolerance.
        """
        thr, cg, cc, _, cur = self._cuts(t, j)
        obj = cg - lam * cc
        cur_val = 0.0 if cur == -1 else (float(obj[cur]) if cur >= 0 else -math.inf)
        best = int(np.argmax(obj)) if obj.shape[0] else -1
        best_val = float(obj[best]) if best >= 0 else -math.inf
        if max(best_val, 0.0) <= cur_val + _TOL:
            return t
        if best_val > 0.0:
            return self._with_threshold(t, j, float(thr[best]))
        return self._with_threshold(t, j, np.inf)

    def budget_update(self, t: np.ndarray, j: int, budget: float) -> np.ndarray:
        """Best ``t_j`` for gain with mean cost ``<= budget``, the others fixed (exact).

        Returns ``t`` itself (same object) when no feasible move improves the gain.
        """
        thr, cg, cc, base_cost, cur = self._cuts(t, j)
        limit = budget * self.n * (1 - 1e-12) - base_cost
        cur_gain = 0.0 if cur == -1 else (float(cg[cur]) if cur >= 0 else -math.inf)
        feasible = cc <= limit
        best_gain, best_thr, best_cost = -math.inf, np.inf, math.inf
        if np.any(feasible):
            masked = np.where(feasible, cg, -np.inf)
            top = float(np.max(masked))
            ties = np.flatnonzero(masked >= top - _TOL)
            b = int(ties[np.argmin(cc[ties])])
            best_gain, best_thr, best_cost = float(cg[b]), float(thr[b]), float(cc[b])
        if limit >= 0 and (best_gain < -_TOL or (abs(best_gain) <= _TOL and best_cost > 0)):
            best_gain, best_thr = 0.0, np.inf
        if best_gain <= cur_gain + _TOL:
            return t
        new = self._with_threshold(t, j, best_thr)
        if expected_cost(self.exits(new), self.costs) > budget:
            return t
        return new

    def best_move(self, t: np.ndarray, budget: float) -> np.ndarray:
        """The single best one-threshold move within ``budget`` over every exit (exact).

        Its gain is the maximum over a set of moves that only grows with ``budget``, so the
        result's gain never decreases as the budget rises (from the same ``t``). Returns
        ``t`` itself when no feasible move improves the gain.
        """
        best, best_sol = t, None
        for j in range(self.k - 1):
            new = self.budget_update(t, j, budget)
            if new is t:
                continue
            sol = self.solution(new)
            if best_sol is None or (sol.gain, -sol.cost) > (best_sol.gain, -best_sol.cost):
                best, best_sol = new, sol
        return best

    # -- ascents
    def _ascent(self, t: np.ndarray, update: Callable[[np.ndarray, int], np.ndarray], max_sweeps: int) -> np.ndarray:
        """Sweep exact one-threshold ``update``s over every exit until no threshold moves."""
        for _ in range(max_sweeps):
            moved = False
            for j in range(self.k - 1):
                new = update(t, j)
                if new is not t:
                    moved = True
                    t = new
            if not moved:
                break
        return t

    def lagrange_ascent(self, t: np.ndarray, lam: float, max_sweeps: int = 20) -> np.ndarray:
        """Coordinate ascent on ``gain - lam * cost`` until no threshold moves."""
        return self._ascent(t, lambda t_, j: self.lagrange_update(t_, j, lam), max_sweeps)

    def budget_ascent(self, t: np.ndarray, budget: float, max_sweeps: int = 20) -> np.ndarray:
        """Coordinate ascent on gain within ``budget`` until no threshold moves."""
        return self._ascent(t, lambda t_, j: self.budget_update(t_, j, budget), max_sweeps)

    # -- geometric pool
    def geometric_solutions(self) -> list[Solution]:
        """Every geometric ratio's thresholds with their gain and cost on these samples."""
        if self._geometric_solutions is None:
            self._geometric_solutions = [self.solution(t, e) for t, e in self.geometric_pool()]
        return self._geometric_solutions

    def starting_pool(self) -> list[Solution]:
        """Starting points of the ascent: every geometric solution, "all at exit 1" and the λ path (computed once)."""
        if self._starting_pool is None:
            pool = list(self.geometric_solutions())
            first = np.full(self.k - 1, np.inf)
            first[0] = -np.inf
            pool.append(self.solution(first))
            t = np.full(self.k - 1, np.inf)
            for lam in _lambda_grid(self.costs / self.costs[-1]) / self.costs[-1]:
                t = self.lagrange_ascent(t, float(lam))
                pool.append(self.solution(t))
            self._starting_pool = pool
        return self._starting_pool

    def adopt_geometric_pool(self, pool: list[tuple[np.ndarray, np.ndarray]]) -> None:
        """Reuse another problem's :meth:`geometric_pool` (one on the same scores: only the gains differ)."""
        if self._geometric is None:
            self._geometric = pool

    def geometric_pool(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Thresholds and exits of every geometric ratio (published and fine grid)."""
        if self._geometric is None:
            qs = sorted(set(PUBLISHED_Q) | set(FINE_Q))
            first = self.sorted_scores[0]
            self._geometric = [_geometric_fit(self._cols, q, first, self.tie_floor) for q in qs]
        return self._geometric


SEPARATION = 2e-6
"""Scores closer than ``SEPARATION * max(floor, |s|)`` count as tied: ties leave together.

About 16 float32 steps: a deployment that computes scores in float32 (softmax on a GPU)
lands within a few steps of dyncal's float64 scores, so a threshold midway across a wider
gap sends every fit sample to the same exit in both precisions. ``maxprob`` (``1 / sum``)
has a relative float32 error, so its floor is 0; ``margin`` and ``entropy`` are sums and
differences of probabilities with an absolute error, so theirs is 1 (:func:`tie_floor`)."""


def tie_floor(score: str | None) -> float:
    """The ``floor`` of :data:`SEPARATION` for a score (None: maxprob's)."""
    return 0.0 if score in (None, "maxprob") else 1.0


def _separable(higher: np.ndarray, lower: np.ndarray, floor: float = 0.0) -> np.ndarray:
    """Whether a threshold may fall between two scores (see :data:`SEPARATION`)."""
    return np.asarray(higher - lower > SEPARATION * np.maximum(floor, np.abs(higher)))


def _next_lower(desc: np.ndarray, value: float) -> float:
    """The largest entry of ``desc`` (sorted decreasing) below ``value``; -inf if none."""
    i = int(np.searchsorted(-desc, -value, side="right"))
    return float(desc[i]) if i < desc.shape[0] else -math.inf


def _midway(cut: np.ndarray, below: np.ndarray) -> np.ndarray:
    """Thresholds midway between each cut score and the next lower score it separates.

    A threshold equal to a sample's score would let a re-computation of that score in
    lower precision (a float32 deployment) fall on either side; midway, both agree.
    ``below = -inf`` (nothing lower) gives -inf; where the two are adjacent floats the cut
    score itself is kept (``s >= t`` still separates them).
    """
    with np.errstate(invalid="ignore", over="ignore"):
        mid = cut / 2 + below / 2
    ok = (mid > below) & (mid <= cut)
    return np.where(np.isneginf(below), -np.inf, np.where(ok, mid, cut))


def _geometric_fit(
    cols: np.ndarray, q: float, first_sorted: np.ndarray | None = None, floor: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """MSDNet's dynamic-evaluation thresholds for one ratio; ``cols`` is ``(K, N)``.

    ``first_sorted`` (exit 1's scores sorted in decreasing order) skips the first partition.
    """
    k, n = cols.shape
    f = q ** np.arange(1, k + 1, dtype=np.float64)
    f = f / f.sum()
    t = np.full(k - 1, np.inf)
    exits = np.full(n, k - 1, dtype=np.int64)
    present = np.ones(n, dtype=bool)
    for j in range(k - 1):
        quota = math.floor(n * f[j])
        col = cols[j]
        if j == 0 and first_sorted is not None:
            if quota == 0 or quota > n:
                continue
            thr = float(first_sorted[quota - 1])
        else:
            left = col[present]
            if quota == 0 or quota > left.shape[0]:
                continue
            thr = float(np.partition(left, left.shape[0] - quota)[left.shape[0] - quota])
        # near-ties of the quota's score leave with it, as exact ties do (SEPARATION)
        below = col[present & (col < thr)]
        while True:
            near = below[(below >= thr - SEPARATION * max(floor, abs(thr))) & (below < thr)]
            if not near.size:
                break
            thr = float(near.min())
        nxt = float(np.max(below, where=below < thr, initial=-math.inf))
        if nxt == -math.inf:  # everyone present leaves: separate from any fit score below
            nxt = float(np.max(col, where=col < thr, initial=-math.inf))
        t[j] = float(_midway(np.array([thr]), np.array([nxt]))[0])
        leave = present & (col >= t[j])
        exits[leave] = j
        present &= ~leave
    return t, exits


def geometric_thresholds(scores: np.ndarray, q: float, score: str | None = None) -> np.ndarray:
    """MSDNet dynamic-evaluation thresholds for ratio ``q`` (vectorised, faithful).

    Args:
        scores: ``(N, K)`` scores of the fit samples.
        q: Ratio of the geometric exit distribution ``f_k ∝ q^k``.
        score: The score's name, for the near-tie rule (:func:`tie_floor`; default maxprob's).

    Returns:
        ``(K - 1,)`` thresholds (``+inf`` where nobody leaves).

    Example:
        >>> s = np.array([[0.9, 0.5], [0.8, 0.5], [0.3, 0.5], [0.2, 0.5]])
        >>> geometric_thresholds(s, 1.0).tolist()  # 0.9 and 0.8 leave: midway to 0.3
        [0.55]
    """
    cols = np.ascontiguousarray(np.asarray(scores, dtype=np.float64).T)
    return _geometric_fit(cols, q, None, tie_floor(score))[0]


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


def _lambda_grid(costs: np.ndarray, n_lambda: int = 16) -> np.ndarray:
    """Values of λ from "everyone leaves at exit 1" down to 0."""
    gaps = np.diff(costs)
    gap = float(gaps[gaps > 0].min()) if np.any(gaps > 0) else 1.0
    top = 1.05 / gap
    return np.concatenate([np.geomspace(top, top * 1e-4, n_lambda - 1), [0.0]])


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
            fits = [s for s in geo if s.cost <= budgets[i]]
            if fits:
                out[i] = max(fits, key=lambda s: (s.gain, -s.cost))
        return out
    pool = problem.starting_pool()
    prev: Solution | None = None
    for i in order:
        sol = _path_step(problem, pool, prev, float(budgets[i]))
        if sol is None:
            continue
        out[i] = sol
        prev = sol
    return out


def _more_accurate(a: Solution | None, b: Solution | None) -> Solution | None:
    """The higher-gain solution (cheaper on ties); None loses."""
    if a is None:
        return b
    if b is None:
        return a
    return b if (b.gain, -b.cost) > (a.gain, -a.cost) else a


def _ascended_from(problem: ExitProblem, start: Solution, budget: float) -> Solution:
    """Budget-exact coordinate ascent from ``start``; never worse than ``start``."""
    t = problem.budget_ascent(start.thresholds.copy(), budget)
    sol = problem.solution(t)
    return sol if sol.cost <= budget and sol.gain >= start.gain else start


def _after_best_move(problem: ExitProblem, prev: Solution, budget: float) -> Solution:
    """``prev`` with its best single move within ``budget`` (``prev`` when none helps)."""
    t = problem.best_move(prev.thresholds, budget)
    if t is prev.thresholds:
        return prev
    sol = problem.solution(t)
    return sol if sol.cost <= budget and sol.gain >= prev.gain else prev


def _path_step(problem: ExitProblem, pool: Sequence[Solution], prev: Solution | None, budget: float) -> Solution | None:
    """One budget of an ascending path: the best of the pool's start and of ``prev`` moved on.

    Both are improved by budget-exact ascent; ``prev`` first gets its best single move
    within this budget (:meth:`ExitProblem.best_move`), so the answer here is at least as
    good as that move within any smaller budget, which makes :func:`solve_at` monotone.
    """
    fits = [s for s in pool if s.cost <= budget]
    best: Solution | None = None
    if fits:
        start = max(fits, key=lambda s: (s.gain, -s.cost))
        best = _more_accurate(start, _ascended_from(problem, start, budget))
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


def solve_at(
    problem: ExitProblem,
    budget: float,
    method: str,
    n_budgets: int = 41,
    path: Sequence[Solution | None] | None = None,
) -> Solution | None:
    """Solve one budget the way the frontier does, so that separate calls agree.

    ``optimal``/``smoothed``: the ascending path of :func:`solve_path` over the frontier's
    grid (:func:`budget_grid`) up to the last grid budget ``g <= budget``, then the best of
    that answer, its best single move within ``budget`` and the best pool member within
    ``budget``. None of the three decreases as ``budget`` grows, and the path's answer at
    the next grid budget dominates all three, so across separate calls the gain is
    monotone in the budget, never below the frontier's at a grid budget and never below
    ``geometric``. (A full ascent at ``budget`` itself is a local search whose end point
    can fall as the budget grows, which is why it is not used here.)

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
    if method == "geometric":
        return solve_path(problem, [budget], method)[0]
    _, grid = budget_grid(problem.costs, n_budgets)
    below = [float(g) for g in grid if g <= budget]
    near = any(budget < g <= budget * (1 + 1e-12) for g in grid)
    if near:
        below.append(budget)  # a grid budget equal to this one up to rounding
    if path is not None and len(path) == len(grid) and not near:
        walked = list(path[: len(below)])
    else:
        walked = solve_path(problem, below, method) if below else []
    prev = walked[-1] if walked else None
    fits = [s for s in problem.starting_pool() if s.cost <= budget]
    best = max(fits, key=lambda s: (s.gain, -s.cost)) if fits else None
    if prev is not None:
        best = _more_accurate(best, _after_best_move(problem, prev, budget))
    return best


# --------------------------------------------------------------------------- runs


@dataclass
class SolveCache:
    """What solving a prepared run computed once and reuses: fit problems and frontier paths.

    Attributes:
        problems: ``(method, cost column)`` to the fit part's :class:`ExitProblem`.
        paths: ``(method, cost column, number of budgets)`` to :func:`solve_path` over the
            frontier's grid (``dyncal frontier`` fills it; :func:`solve_run` walks its prefix).
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
        costs: The run's cost table (:class:`dyncal.run.CostTable`).
        path: The run's directory.
        fingerprint: The run's fingerprint (:attr:`dyncal.run.Run.fingerprint`), None for bare arrays.
        cache: Fit problems and frontier paths already computed on it, reused by
            :func:`solve_run` and :func:`dyncal.calibrate.frontier.compute_frontier`.

    A prepared run can stand in for the run in :func:`solve_run` and
    :func:`dyncal.calibrate.frontier.compute_frontier`, so that several of them score the
    logits once.
    """

    score: str
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

    @property
    def k(self) -> int:
        """Number of exits."""
        return int(self.scores.shape[1])

    def check_options(self, **given: Any) -> None:
        """Refuse options that contradict how this run was prepared.

        Each of ``score``, ``temperature``, ``holdout``, ``seed`` may be left at its
        default (then the prepared value is used) or equal the prepared value.

        Raises:
            DyncalError: An option given with another value than the prepared one.
        """
        defaults = {"score": "maxprob", "temperature": False, "holdout": 0.5, "seed": 0}
        prepared = {
            "score": self.score,
            "temperature": self.temperature_at_bound is not None,
            "holdout": self.holdout,
            "seed": self.seed,
        }
        for name, value in given.items():
            if value != defaults[name] and value != prepared[name]:
                raise DyncalError(
                    f"{name}={value!r} contradicts the prepared run ({name}={prepared[name]!r}); "
                    "prepare it again with that option, or leave the option out"
                )


class _RowSubset:
    """Rows of a (memory-mapped) ``(N, K, C)`` array, read block by block on indexing."""

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
    *,
    score: str = "maxprob",
    temperature: bool = False,
    holdout: float = 0.5,
    seed: int = 0,
    temperature_idx: np.ndarray | None = None,
) -> PreparedRun:
    """Split a run, fit temperatures on the fit part, and score every sample.

    Args:
        run: A :class:`dyncal.run.Run`.
        score: ``maxprob``, ``margin`` or ``entropy``.
        temperature: Fit one temperature per exit by NLL on the fit part.
        holdout: Held-out fraction (stratified); 0 fits on everything.
        seed: Split seed.
        temperature_idx: Rows to fit temperatures on (default: the fit part).

    Returns:
        The prepared run.

    Raises:
        DyncalError: No costs, K < 2, bad score/holdout, a class missing from a part,
            NaN scores.
    """
    Score.parse(score, "score")
    _require_exits(run)
    units = cost_units(run.costs, run.k)
    if not units:
        raise DyncalError("run has no costs: run 'dyncal profile RUN' (or 'dyncal import FILE --macs ...')")
    labels = np.asarray(run.labels, dtype=np.int64)
    fit_idx, held_idx = stratified_split(labels, holdout, seed)
    temps = np.ones(run.k)
    at_bound: tuple[bool, ...] | None = None
    if temperature:
        from dyncal.calibrate.temperature import TemperatureScaler

        rows = fit_idx if temperature_idx is None else temperature_idx
        logits = _RowSubset(run.logits, rows) if rows.shape[0] < run.n else run.logits
        scaler = TemperatureScaler().fit(logits, labels[rows])  # type: ignore[arg-type]
        temps = scaler.temperatures_
        at_bound = tuple(bool(v) for v in scaler.at_bound_)
    scores, preds = exit_scores(run.logits, score, temps)
    if not np.all(np.isfinite(scores)):
        row, ex = np.argwhere(~np.isfinite(scores))[0]
        raise DyncalError(f"scores are NaN at row {row}, exit {ex + 1}; check the run's logits")
    return PreparedRun(
        score=score,
        temperatures=tuple(float(v) for v in temps),
        scores=scores,
        correct=preds == labels[:, None],
        fit_idx=fit_idx,
        holdout_idx=held_idx,
        units=units,
        n_classes=run.c,
        holdout=float(holdout),
        seed=int(seed),
        unsplit_classes=tuple(unsplit_classes(labels, holdout)),
        temperature_at_bound=at_bound,
        costs=run.costs,
        path=str(getattr(run, "path", "")),
        fingerprint=getattr(run, "fingerprint", None),
    )


def problem_for(
    method: str,
    scores: np.ndarray,
    correct: np.ndarray,
    costs: Sequence[float] | np.ndarray,
    score: str | None = None,
) -> ExitProblem:
    """The :class:`ExitProblem` a method optimises on these samples (``score``: its name)."""
    gains = smoothed_gains(scores, correct) if method == "smoothed" else correct.astype(np.float64)
    return ExitProblem(scores, gains, costs, score)


def _is_latency(unit: str) -> bool:
    return unit.startswith(LatencyKey.PREFIX)


def _key_of_column(unit: str) -> str:
    """``"ms:cpu/b1"`` -> ``"cpu/b1"``."""
    return str(LatencyKey.from_column(unit))


def _cost_summary(units: Mapping[str, tuple[float, ...]], exits: np.ndarray) -> tuple[float | None, dict[str, float]]:
    """Mean MACs and mean ms per latency key of the given exits."""
    macs = expected_cost(exits, units["macs"]) if "macs" in units and exits.size else None
    ms = {_key_of_column(u): expected_cost(exits, c) for u, c in units.items() if _is_latency(u) and exits.size}
    return macs, ms


def static_baselines(prep: PreparedRun, *, seed: int = 0) -> list[dict[str, Any]]:
    """Each exit used alone: calibration and held-out accuracy (with CI) and its costs."""
    out = []
    for j in range(prep.correct.shape[1]):
        fit_acc = float(np.mean(prep.correct[prep.fit_idx, j]))
        held = prep.correct[prep.holdout_idx, j]
        entry: dict[str, Any] = {
            "exit": j + 1,
            "calibration_accuracy": fit_acc,
            "holdout_accuracy": float(np.mean(held)) if held.size else None,
            "holdout_ci": list(mean_bootstrap_ci(held, seed=seed)) if held.size else None,
            "macs": prep.units["macs"][j] if "macs" in prep.units else None,
            "ms": {_key_of_column(u): c[j] for u, c in prep.units.items() if _is_latency(u)},
        }
        primary = next(iter(prep.units.values()))
        entry["fraction"] = primary[j] / primary[-1]
        out.append(entry)
    return out


def _result_from(
    prep: PreparedRun,
    thresholds: np.ndarray,
    method: str,
    target: BudgetTarget | None,
    unit: str,
    run_path: str,
    risk: dict[str, Any] | None = None,
) -> ThresholdsDocument:
    """Evaluate final thresholds and assemble the document."""
    t_json = finite_thresholds(thresholds, prep.score, prep.n_classes)
    t_eval = np.asarray(t_json[:-1], dtype=np.float64)
    costs = prep.units[unit]
    fit = evaluate_policy(prep.scores[prep.fit_idx], prep.correct[prep.fit_idx], costs, t_eval)
    fit_macs, fit_ms = _cost_summary(prep.units, fit.exits)
    budget: dict[str, Any] = (
        target.to_dict() if target is not None else {"asked": None, "unit": unit, "value": None, "fraction": None}
    )
    budget["met"] = fit.expected_cost
    budget["met_fraction"] = fit.expected_cost / costs[-1]
    h_acc: float | None = None
    h_ci: tuple[float, float] | None = None
    held_doc: dict[str, Any] | None = None
    if prep.holdout_idx.size:
        held = evaluate_policy(prep.scores[prep.holdout_idx], prep.correct[prep.holdout_idx], costs, t_eval)
        ok = prep.correct[prep.holdout_idx][np.arange(prep.holdout_idx.size), held.exits]
        h_acc = held.accuracy
        h_ci = mean_bootstrap_ci(ok, seed=prep.seed)
        h_macs, h_ms = _cost_summary(prep.units, held.exits)
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
        holdout_accuracy=h_acc,
        holdout_ci=h_ci,
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
    )


def solve_run(
    run: Any,
    budget: str | None = None,
    *,
    options: SolveOptions | None = None,
    **fields: Any,
) -> ThresholdsDocument:
    """Fit thresholds for a run under a budget (``dyncal solve``).

    Args:
        run: A :class:`dyncal.run.Run` (``dyncal.load_run``), or a :class:`PreparedRun`
            (:func:`prepare_run`) to skip scoring the logits again; then ``score``,
            ``temperature``, ``holdout`` and ``seed`` come from it (left out, or equal).
        budget: ``0.6x``, ``1.2GMAC``/``850MMAC`` or ``35ms``; may be None in risk mode.
        options: All options as one :class:`~dyncal.calibrate.options.SolveOptions` (then
            neither ``budget`` nor keywords).
        **fields: The options as keywords instead (:class:`~dyncal.calibrate.options.SolveOptions`):
            ``method`` (``smoothed`` default, ``optimal``, ``geometric``), ``score``
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
        >>> import tempfile, pathlib
        >>> from dyncal.run import import_arrays
        >>> rng = np.random.default_rng(0)
        >>> y = rng.integers(0, 3, 300)
        >>> z = np.eye(3)[y][:, None, :] * [[1.0], [3.0]] + rng.normal(0, 1, (300, 2, 3))
        >>> run = import_arrays(z, y, pathlib.Path(tempfile.mkdtemp()) / "r", macs=[1e6, 4e6])
        >>> res = solve_run(run, "0.6x")
        >>> res.budget["met"] <= res.budget["value"], res.thresholds[-1] is None
        (True, True)
    """
    opts = options_from(SolveOptions, options, fields if budget is None else {**fields, "budget": budget}, "solve")
    _require_exits(run)
    target: BudgetTarget | None = None
    device, batch_size, method = opts.device, opts.batch_size, opts.method.value
    spec = parse_budget(opts.budget) if opts.budget is not None else None
    units = cost_units(run.costs, run.k)
    if not units:
        raise DyncalError("run has no costs: run 'dyncal profile RUN' (or 'dyncal import FILE --macs ...')")
    if spec is not None:
        target = resolve_budget(spec, run.costs, run.k, device=device, batch_size=batch_size)
        unit = target.unit
        if (device is not None or batch_size is not None) and not _is_latency(unit):
            _warn_unused_latency(run, spec.text, device, batch_size)
    else:
        unit = (
            "macs"
            if "macs" in units
            else resolve_budget("1x", run.costs, run.k, device=device, batch_size=batch_size).unit
        )
    run_path = str(getattr(run, "path", ""))
    prepared = run if isinstance(run, PreparedRun) else None
    if prepared is not None:
        prepared.check_options(**opts.prepare_fields())
    if opts.max_drop is not None:
        return _solve_risk(run, target, unit, run_path, opts)
    assert target is not None
    prep = prepared or prepare_run(run, **opts.prepare_fields())
    costs = prep.units[unit]
    problem = prep.problem(method, unit)
    sol = solve_at(problem, target.value, method, path=prep.cache.paths.get((method, unit, 41)))
    if sol is None:
        cheapest = min(s.cost for s in (problem.solution(t, e) for t, e in problem.geometric_pool()))
        raise BudgetError(
            f"no geometric solution fits budget {target.spec.text!r}: its cheapest fitted cost is "
            f"{format_budget(cheapest / costs[-1], 'fraction')}; raise the budget or use "
            "`method` optimal"
        )
    return _result_from(prep, sol.thresholds, method, target, unit, run_path)


def _warn_unused_latency(run: Any, budget: str, device: str | None, batch: int | None) -> None:
    """A latency device or batch size with a budget in MACs: say what they do (and do not do)."""
    from dyncal.calibrate.budget import pick_latency

    asked = " ".join(f"{o} {v}" for o, v in (("`device`", device), ("`batch_size`", batch)) if v is not None)
    units = cost_units(run.costs, run.k)
    try:
        key = _key_of_column(pick_latency(units, device, batch))
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
    method, max_drop, delta, pvalue = opts.method.value, opts.max_drop, opts.delta, opts.pvalue.value
    temperature, holdout, seed = opts.temperature, opts.holdout, opts.seed
    prepared = run if isinstance(run, PreparedRun) else None
    if prepared is not None:
        if temperature or prepared.temperature_at_bound is not None:
            raise DyncalError(
                "risk control fits temperatures on its own half of the calibration part; pass "
                "the run itself, not a prepared one, with temperature=True"
            )
        fit_idx = prepared.fit_idx
    else:
        labels = np.asarray(run.labels, dtype=np.int64)
        fit_idx, _ = stratified_split(labels, holdout, seed)
    # order half (builds the candidate sequence) and test half (p-values), disjoint
    perm = np.random.default_rng(seed + 1).permutation(fit_idx.shape[0])
    order_idx = np.sort(fit_idx[perm[: fit_idx.shape[0] // 2]])
    test_idx = np.sort(fit_idx[perm[fit_idx.shape[0] // 2 :]])
    if order_idx.size == 0 or test_idx.size == 0:
        raise DyncalError(f"risk control needs calibration samples to split in two; the fit part has {fit_idx.size}")
    prep = prepared or prepare_run(run, **opts.prepare_fields(), temperature_idx=order_idx)
    costs = np.asarray(prep.units[unit])
    problem = problem_for(method, prep.scores[order_idx], prep.correct[order_idx], costs, prep.score)
    budgets = np.linspace(costs[-1], costs[0], n_candidates)
    path = solve_path(problem, list(budgets), method)
    safe = np.full(run.k - 1, np.inf)
    candidates = [safe] + [s.thresholds for s in path if s is not None]
    res = learn_then_test(
        candidates,
        prep.scores[test_idx],
        prep.correct[test_idx],
        max_drop=max_drop,
        delta=delta,
        pvalue=pvalue,
    )
    if res.n_accepted == 0:
        from dyncal.calibrate.risk import min_test_samples

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
        raise DyncalError(
            f"risk control accepted no thresholds: not even the last exit alone passed the test "
            f"of an accuracy drop <= `max_drop` {max_drop} with probability >= 1 - `delta` "
            f"{delta} on the {res.n_test} test samples (half the calibration part); {what}"
        )
    chosen = candidates[res.index]
    last_fit = float(np.mean(prep.correct[prep.fit_idx, -1]))
    risk: dict[str, Any] = {
        "max_drop": max_drop,
        "delta": delta,
        **res.to_dict(),
        "n_order": int(order_idx.size),
        "assumption": "calibration and deployment samples are exchangeable (i.i.d.)",
        "last_exit_calibration_accuracy": last_fit,
    }
    result = _result_from(prep, chosen, method, target, unit, run_path, risk=risk)
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
