"""The threshold problem: fit samples' scores, gains and costs, and the geometry of a threshold.

:class:`ExitProblem` holds what every solver of :mod:`dyncal.calibrate.search` shares: the
sorted orders per exit, the exact one-threshold updates and the geometric and Lagrangian
starting points. A threshold lies midway across a gap of more than :data:`SEPARATION`
between two scores, never on a sample's score, so a float32 deployment sends every fit
sample to the same exit.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from dyncal.calibrate.policy import expected_cost
from dyncal.errors import DyncalError

__all__ = ["ExitProblem", "ExitCap", "Solution", "PUBLISHED_Q", "geometric_thresholds", "single_exit_thresholds"]

PUBLISHED_Q: tuple[float, ...] = tuple(p / 20 for p in range(1, 40))
FINE_Q: tuple[float, ...] = tuple(float(q) for q in np.geomspace(0.01, 8.0, 240))
_TOL = 1e-9


@dataclass(frozen=True)
class Solution:
    """Thresholds and what they achieve on the data they were fitted on.

    Attributes:
        thresholds: ``(K - 1,)`` float64; ``+inf`` lets nobody leave.
        gain: Mean gain (accuracy for 0/1 gains).
        cost: Mean cost (:func:`dyncal.calibrate.policy.expected_cost`).
        capped: Fit samples leaving at the exits an :class:`ExitCap` limits (0 without one).
    """

    thresholds: np.ndarray
    gain: float
    cost: float
    capped: int = 0


@dataclass(frozen=True)
class ExitCap:
    """At most ``max_count`` fit samples may leave at the exits marked in ``capped``.

    A second linear constraint beside the mean-cost budget: a bound on a latency
    percentile is one (:mod:`dyncal.calibrate.tail`). Like the cost, the number of capped
    samples changes by a prefix sum when one threshold moves, so the one-threshold updates
    stay exact.

    Attributes:
        capped: ``K`` flags, one per exit.
        max_count: Most fit samples allowed to leave at the flagged exits.
    """

    capped: tuple[bool, ...]
    max_count: int


class ExitProblem:
    """Scores, gains and costs of the fit samples, with the sorted orders solvers share.

    Args:
        scores: ``(N, K)`` scores.
        gains: ``(N, K)`` gain of each exit on each sample (correctness, or smoothed).
        costs: ``K`` cumulative costs, non-decreasing.
        score: The score's name, for the near-tie rule (:data:`SEPARATION`); default
            maxprob's.
        cap: A limit on the samples leaving at some exits (:class:`ExitCap`), kept by every
            budget update and by :meth:`fits`; None: no limit.
        correct: ``(N, K)`` 0/1 correctness when ``gains`` are something else (smoothed):
            :meth:`accuracy` and the guard's rivals are judged on it. Default: ``gains``.

    Example:
        >>> s = np.array([[0.9, 0.6], [0.4, 0.8], [0.7, 0.9]])
        >>> g = np.array([[1.0, 1.0], [0.0, 1.0], [1.0, 1.0]])
        >>> p = ExitProblem(s, g, [1.0, 2.0])
        >>> sol = p.solution(p.lagrange_ascent(np.array([np.inf]), 0.5))  # the best of gain - 0.5 cost
        >>> sol.thresholds.tolist(), sol.gain, sol.cost
        ([0.55], 1.0, 1.3333333333333333)
    """

    def __init__(
        self,
        scores: np.ndarray,
        gains: np.ndarray,
        costs: Sequence[float] | np.ndarray,
        score: str | None = None,
        cap: ExitCap | None = None,
        correct: np.ndarray | None = None,
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
        self.hits = g if correct is None else np.asarray(correct, dtype=np.float64)
        if self.hits.shape != s.shape:
            raise DyncalError(f"correct must be (N, K) like the scores, got {self.hits.shape}")
        self.gains_are_hits = correct is None
        self.exit_accuracy = self.hits.mean(axis=0)
        """``(K,)`` fit accuracy of each exit used alone."""
        self.costs = c
        self.cap, self._capped = cap, _cap_flags(cap, s.shape[1])
        self._cut_capped: tuple[np.ndarray, float] = (np.zeros(0), 0.0)  # set by _cuts under a cap
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
        self._two_exit: list[_TwoExitFamily] | None = None
        self._single: dict[int, Solution] = {}
        self._geometric_by_accuracy: list[Solution] | None = None

    def with_cap(self, cap: ExitCap | None) -> ExitProblem:
        """The same fit samples under another cap (sorted orders and geometric fits shared, not recomputed)."""
        other = copy.copy(self)
        other.cap, other._capped = cap, _cap_flags(cap, self.k)
        other._geometric_solutions = None  # their capped counts differ
        other._starting_pool = None
        other._single = {}
        other._geometric_by_accuracy = None
        return other

    # -- evaluation
    def exits(self, t: np.ndarray, skip: int | None = None) -> np.ndarray:
        """Exit index of every sample (with exit ``skip`` closed, if given)."""
        e = np.full(self.n, self.k - 1, dtype=np.intp)
        for j in range(self.k - 2, -1, -1):
            if j == skip or t[j] == np.inf:
                continue
            np.copyto(e, j, where=self._cols[j] >= t[j])
        return e

    def solution(self, t: np.ndarray, exits: np.ndarray | None = None) -> Solution:
        """Wrap thresholds with their mean gain and cost (and the capped samples, with a cap)."""
        e = self.exits(t) if exits is None else exits
        return Solution(
            np.array(t, dtype=np.float64),
            float(np.mean(self.gains[np.arange(self.n), e])),
            expected_cost(e, self.costs),
            0 if self.cap is None else int(np.sum(self._capped[e])),
        )

    def fits(self, sol: Solution, budget: float) -> bool:
        """Whether a solution meets the budget and, with a cap, the cap."""
        return sol.cost <= budget and (self.cap is None or sol.capped <= self.cap.max_count)

    def accuracy(self, solution: Solution) -> float:
        """Fitted accuracy (0/1 hits) of a solution: its gain unless the gains are smoothed."""
        if self.gains_are_hits:
            return solution.gain
        return float(np.mean(self.hits[np.arange(self.n), self.exits(solution.thresholds)]))

    def single_exit(self, j: int) -> Solution:
        """Everyone at exit ``j`` (0-based): nobody leaves before it, everyone who reaches it leaves."""
        if j not in self._single:
            self._single[j] = self.solution(single_exit_thresholds(self.k, j), np.full(self.n, j, dtype=np.intp))
        return self._single[j]

    # -- exact one-threshold update
    def _cuts(self, t: np.ndarray, j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, int]:
        """Allowed cuts at exit j: their thresholds, prefix gains and costs; base cost; current cut.

        Cut ``i`` lets the ``i + 1`` highest-scoring samples that reach exit j leave; cuts
        fall between distinct scores only. The current cut is -1 when nobody leaves and -2
        when ``t_j`` is not at an allowed cut. With a cap, the prefix changes of the capped
        count and its base are left in ``self._cut_capped`` for :meth:`budget_update`.
        """
        down = self.exits(t, skip=j)  # exit taken if nobody left at j
        base_cost = float(np.sum(self.costs[down]))
        m = (down >= j)[self.order[j]]
        idx = self.order[j][m]
        ss = self.sorted_scores[j][m]
        d_down = down[idx]
        cg = np.cumsum(self._gcols[j][idx] - self._gflat[idx * self.k + d_down])
        cc = np.cumsum(self.costs[j] - self.costs[d_down])
        cut = _allowed_cuts(ss, self.tie_floor)
        leaving = int(np.sum(ss >= t[j]))
        cur = -1
        if leaving:
            pos = int(np.searchsorted(cut, leaving - 1))
            cur = pos if pos < cut.shape[0] and cut[pos] == leaving - 1 else -2
        if self.cap is not None:
            cs = np.cumsum(self._capped[j] - self._capped[d_down])
            self._cut_capped = (cs[cut], float(np.sum(self._capped[down])))
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
        return self._with_threshold(t, j, float(thr[best]) if best_val > 0.0 else np.inf)

    def budget_update(self, t: np.ndarray, j: int, budget: float) -> np.ndarray:
        """Best ``t_j`` for gain with mean cost ``<= budget`` (and within the cap), the others fixed (exact).

        Returns ``t`` itself (same object) when no feasible move improves the gain.
        """
        thr, cg, cc, base_cost, cur = self._cuts(t, j)
        limit = budget * self.n * (1 - 1e-12) - base_cost
        cur_gain = 0.0 if cur == -1 else (float(cg[cur]) if cur >= 0 else -math.inf)
        feasible = cc <= limit
        nobody_fits = limit >= 0  # letting nobody leave at j
        if self.cap is not None:
            cs, base_capped = self._cut_capped
            cap_limit = self.cap.max_count - base_capped
            feasible &= cs <= cap_limit
            nobody_fits = nobody_fits and cap_limit >= 0
        best_gain, best_thr, best_cost = -math.inf, np.inf, math.inf
        if np.any(feasible):
            masked = np.where(feasible, cg, -np.inf)
            top = float(np.max(masked))
            ties = np.flatnonzero(masked >= top - _TOL)
            b = int(ties[np.argmin(cc[ties])])
            best_gain, best_thr, best_cost = float(cg[b]), float(thr[b]), float(cc[b])
        if nobody_fits and (best_gain < -_TOL or (abs(best_gain) <= _TOL and best_cost > 0)):
            best_gain, best_thr = 0.0, np.inf
        if best_gain <= cur_gain + _TOL:
            return t
        new = self._with_threshold(t, j, best_thr)
        if not self.fits(self.solution(new), budget):
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
        """Starting points of the ascent: every geometric solution, everyone at exit j (every j) and the λ path.

        Computed once. :meth:`best_two_exit` adds, per budget, the best policy that uses two exits.
        """
        if self._starting_pool is None:
            pool = list(self.geometric_solutions())
            pool += [self.single_exit(j) for j in range(self.k)]
            t = np.full(self.k - 1, np.inf)
            for lam in _lambda_grid(self.costs / self.costs[-1]) / self.costs[-1]:
                t = self.lagrange_ascent(t, float(lam))
                pool.append(self.solution(t))
            self._starting_pool = pool
        return self._starting_pool

    def geometric_by_accuracy(self) -> list[Solution]:
        """Every geometric solution with its 0/1 accuracy as gain."""
        if self._geometric_by_accuracy is None:
            if self.gains_are_hits:
                sols = self.geometric_solutions()
            else:
                rows = np.arange(self.n)
                sols = [
                    Solution(t, float(np.mean(self.hits[rows, e])), s.cost, s.capped)
                    for (t, e), s in zip(self.geometric_pool(), self.geometric_solutions(), strict=True)
                ]
            self._geometric_by_accuracy = sols
        return self._geometric_by_accuracy

    def best_geometric(self, budget: float) -> Solution | None:
        """The most accurate geometric solution (0/1 hits; cheaper on ties) within ``budget`` and the cap; None if none.

        Its ``gain`` is its accuracy; thresholds and cost are the geometric solution's.
        """
        fits = (s for s in self.geometric_by_accuracy() if self.fits(s, budget))
        return max(fits, key=lambda s: (s.gain, -s.cost), default=None)  # the first of equals

    # -- two-exit policies
    def best_two_exit(self, budget: float) -> Solution | None:
        """The best policy that uses at most two exits, within ``budget`` (exact; None if none fits).

        For exits ``i < j``: nobody leaves before ``i``, the confident at ``i`` leave there
        (``t_i`` at any allowed cut, or nobody), everyone else leaves at ``j``. Every single
        exit is such a policy. Coordinate ascent cannot reach these from every start (opening
        ``j`` and moving ``t_i`` must happen at once), so each budget's path starts from the
        best of them too. Cost per budget: ``O(K^2 log N)`` after an ``O(K^2 N)`` preparation.
        """
        if self._two_exit is None:
            self._two_exit = self._two_exit_families()
        limits = [budget * self.n * (1 + 1e-12)] * len(self._two_exit)  # rounding: the real cost is checked
        while True:
            best: tuple[float, float, int, int] | None = None  # (gain, -cost, family, entry)
            for f, fam in enumerate(self._two_exit):
                e = fam.best_within(limits[f])
                if e is not None and (best is None or (fam.gain[e], -fam.cost[e]) > best[:2]):
                    best = (float(fam.gain[e]), float(-fam.cost[e]), f, e)
            if best is None:
                return None
            fam = self._two_exit[best[2]]
            sol = self.solution(fam.thresholds(self.k, best[3]))
            if sol.cost <= budget:
                return sol
            limits[best[2]] = float(np.nextafter(-best[1], -np.inf))  # over by rounding: only cheaper entries

    def _two_exit_families(self) -> list[_TwoExitFamily]:
        """Every pair ``i < j``: gains and costs (sums over samples) of each cut at exit ``i``."""
        families = []
        for i in range(self.k - 1):
            thr, counts = self._all_cuts(i)
            ordered = self._gcols[i][self.order[i]]
            for j in range(i + 1, self.k):
                gain_j = float(np.sum(self._gcols[j]))
                step = np.concatenate([[0.0], np.cumsum(ordered - self._gcols[j][self.order[i]])])
                gain = gain_j + step[counts]
                cost = self.n * self.costs[j] + counts * (self.costs[i] - self.costs[j])
                families.append(_TwoExitFamily.build(i, j, thr, gain, cost))
        return families

    def _all_cuts(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        """Thresholds at exit ``j`` when every sample reaches it, and how many leave: nobody first, then each cut."""
        ss = self.sorted_scores[j]
        cut = _allowed_cuts(ss, self.tie_floor)
        below = np.full(cut.shape[0], -math.inf)
        below[:-1] = ss[cut[:-1] + 1]
        thr = np.concatenate([[math.inf], _midway(ss[cut], below)])
        return thr, np.concatenate([[0], cut + 1])

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


@dataclass(frozen=True)
class _TwoExitFamily:
    """Policies using exits ``i`` and ``j`` only: one entry per cut at ``i`` (entry 0: nobody leaves at ``i``).

    ``gain`` and ``cost`` are sums over the samples. Entry by entry more samples leave at
    the cheaper exit ``i``, so ``cost`` never increases and the entries within a budget
    are a suffix; ``best_from[e]`` is the entry of highest gain from ``e`` on (the last,
    i.e. cheapest, of equals).
    """

    i: int
    j: int
    threshold: np.ndarray
    gain: np.ndarray
    cost: np.ndarray
    best_from: np.ndarray

    @classmethod
    def build(cls, i: int, j: int, threshold: np.ndarray, gain: np.ndarray, cost: np.ndarray) -> _TwoExitFamily:
        """The family with its suffix argmax precomputed."""
        rev = gain[::-1]
        top = np.maximum.accumulate(rev)
        rises = np.concatenate([[True], rev[1:] > top[:-1]])  # where the running maximum is first reached
        first = np.maximum.accumulate(np.where(rises, np.arange(rev.shape[0]), 0))
        best_from = (rev.shape[0] - 1 - first)[::-1]
        return cls(i, j, threshold, gain, cost, np.ascontiguousarray(best_from))

    def best_within(self, limit: float) -> int | None:
        """The entry of highest gain (cheaper on ties) whose summed cost is within ``limit``."""
        first = int(np.searchsorted(-self.cost, -limit, side="left"))
        return int(self.best_from[first]) if first < self.cost.shape[0] else None

    def thresholds(self, k: int, entry: int) -> np.ndarray:
        """The ``K - 1`` thresholds of an entry."""
        t = np.full(k - 1, np.inf)
        if self.j < k - 1 and self.threshold[entry] != -np.inf:  # else nobody reaches exit j
            t[self.j] = -np.inf
        t[self.i] = self.threshold[entry]
        return t


def single_exit_thresholds(k: int, j: int) -> np.ndarray:
    """``K - 1`` thresholds that send everyone to exit ``j`` (0-based): ``+inf`` before it, ``-inf`` at it.

    Example:
        >>> single_exit_thresholds(3, 1).tolist(), single_exit_thresholds(3, 2).tolist()
        ([inf, -inf], [inf, inf])
    """
    t = np.full(k - 1, np.inf)
    if j < k - 1:
        t[j] = -np.inf
    return t


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


def _allowed_cuts(desc: np.ndarray, floor: float) -> np.ndarray:
    """Positions in ``desc`` (sorted decreasing) a cut may follow: the last, and each separable from the next."""
    valid = np.ones(desc.shape[0], dtype=bool)
    valid[:-1] = _separable(desc[:-1], desc[1:], floor)
    return np.flatnonzero(valid)


def _cap_flags(cap: ExitCap | None, k: int) -> np.ndarray:
    """``(K,)`` 1.0 at the exits ``cap`` limits (all 0 without a cap).

    Raises:
        DyncalError: A cap with another number of flags, or a negative count.
    """
    if cap is None:
        return np.zeros(k)
    if len(cap.capped) != k or cap.max_count < 0:
        raise DyncalError(f"an exit cap needs {k} flags and a count >= 0, got {cap}")
    return np.asarray(cap.capped, dtype=np.float64)


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


def _lambda_grid(costs: np.ndarray, n_lambda: int = 16) -> np.ndarray:
    """Values of λ from "everyone leaves at exit 1" down to 0."""
    gaps = np.diff(costs)
    gap = float(gaps[gaps > 0].min()) if np.any(gaps > 0) else 1.0
    top = 1.05 / gap
    return np.concatenate([np.geomspace(top, top * 1e-4, n_lambda - 1), [0.0]])


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
