"""The exit rule, vectorised, and what a set of thresholds does to a batch of samples.

A sample leaves at the first exit ``k`` (``k < K``) with ``s_k >= t_k``; the last exit
takes everything left (DESIGN.md). Inside dyncal thresholds are ``K - 1`` floats where
``+inf`` means "nobody leaves here" and ``-inf`` "everybody who reaches this exit leaves".
Their ``thresholds.json`` encoding (``finite_thresholds``, ``thresholds_from_json``,
``score_range``) belongs to :mod:`dyncal.artifacts.thresholds`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dyncal.artifacts.thresholds import score_range
from dyncal.choices import Score
from dyncal.errors import DyncalError

if TYPE_CHECKING:
    from dyncal.artifacts.thresholds import ThresholdsDocument

__all__ = [
    "assign_exits",
    "threshold_meanings",
    "describe_thresholds",
    "PolicyOutcome",
    "evaluate_policy",
    "expected_cost",
]


def _as_thresholds(thresholds: Sequence[float | None] | np.ndarray, k: int) -> np.ndarray:
    """``K - 1`` (or ``K`` with a trailing None) thresholds as a float64 array."""
    vals = list(thresholds)
    if len(vals) == k and (vals[-1] is None or (isinstance(vals[-1], float) and math.isnan(vals[-1]))):
        vals = vals[:-1]
    if len(vals) != k - 1 or any(v is None for v in vals):
        raise DyncalError(
            f"expected {k - 1} thresholds (or {k} with the last null) for K={k} exits, got {list(thresholds)}"
        )
    return np.asarray(vals, dtype=np.float64)


def assign_exits(scores: np.ndarray, thresholds: Sequence[float | None] | np.ndarray) -> np.ndarray:
    """The exit every sample takes under the exit rule.

    Args:
        scores: ``(N, K)`` scores, larger is more confident.
        thresholds: ``K - 1`` thresholds (``+inf``: nobody leaves there), or ``K`` with the
            last ``None``.

    Returns:
        ``(N,)`` int64 exit indices in ``[0, K)`` (0 is exit 1).

    Example:
        >>> s = np.array([[0.9, 0.5, 0.1], [0.2, 0.7, 0.3], [0.1, 0.1, 0.9]])
        >>> assign_exits(s, [0.8, 0.6, None]).tolist()
        [0, 1, 2]
    """
    n, k = scores.shape
    t = _as_thresholds(thresholds, k)
    # last exit first, then each earlier exit overrides: the first passing exit wins (a
    # column at a time is several times faster than argmax across a (N, K) mask)
    exits = np.full(n, k - 1, dtype=np.int64)
    for j in range(k - 2, -1, -1):
        np.copyto(exits, j, where=scores[:, j] >= t[j])
    return exits


ALL_LEAVE = "all leave"
NONE_LEAVE = "none leave"
NOT_REACHED = "not reached"


def describe_thresholds(
    thresholds: Sequence[float | None] | np.ndarray, score: str, n_classes: int | None = None
) -> list[str]:
    """What each exit does under the exit rule, in words: one entry per exit.

    ``"all leave"`` (every sample that reaches the exit leaves there: a threshold at or
    below the lowest score possible, such as thresholds.json's ``-0.9`` for maxprob with 10
    classes, or ``-inf``), ``"none leave"`` (above the highest score possible: ``2.0``,
    ``+inf``), ``"score >= 0.8123"``, or ``"not reached"`` (an earlier exit lets everyone
    leave). The last exit takes everyone who reaches it: ``"all leave"`` or ``"not reached"``.

    Args:
        thresholds: ``K - 1`` thresholds, or ``K`` with the last None (thresholds.json).
        score: The score's name (its range decides what "all" and "none" are).
        n_classes: ``C``, for the range of ``maxprob`` (``1/C`` to 1) and ``entropy``
            (``-log C`` to 0); None or 0 when unknown: then only ``±inf`` and values beyond
            what any ``C`` allows count as all or none.

    Returns:
        ``K`` phrases.

    Example:
        >>> describe_thresholds([0.5607, -0.9, None], "maxprob", 10)  # issue 17's "[0.5607, -0.9, -]"
        ['score >= 0.5607', 'all leave', 'not reached']
        >>> describe_thresholds([2.0, 0.7, None], "maxprob", 10)
        ['none leave', 'score >= 0.7', 'all leave']
    """
    vals = list(thresholds)
    if vals and vals[-1] is None:
        vals = vals[:-1]
    if any(v is None for v in vals):
        raise DyncalError(f"only the last threshold may be null, got {list(thresholds)}")
    kind = Score.parse(score, "score")
    if n_classes:
        low, high = score_range(kind, n_classes)
    else:  # the bounds every C shares: maxprob in (0, 1], margin in [0, 1], entropy <= 0
        low, high = {Score.MAXPROB: (0.0, 1.0), Score.MARGIN: (0.0, 1.0), Score.ENTROPY: (-math.inf, 0.0)}[kind]
    out: list[str] = []
    reached = True
    for v in (float(x) for x in vals if x is not None):
        if not reached:
            out.append(NOT_REACHED)
        elif v <= low:
            out.append(ALL_LEAVE)
            reached = False
        elif v > high:
            out.append(NONE_LEAVE)
        else:
            out.append(f"score >= {v:.6g}")
    out.append(ALL_LEAVE if reached else NOT_REACHED)
    return out


def threshold_meanings(doc: ThresholdsDocument) -> list[str]:
    """What each exit of a thresholds document does, in words (:func:`describe_thresholds`).

    thresholds.json keeps numbers (``-0.9``, ``2.0``) because every reader and the exported
    package apply the exit rule to them; what people read (``dyncal solve``'s summary, the
    report's pages) should show these words instead.

    Example:
        >>> from dyncal.artifacts.thresholds import ThresholdsDocument
        >>> doc = ThresholdsDocument(
        ...     "maxprob", (1.0,) * 3, (0.5607, -0.9, None), "optimal", {}, None, {}, 0.7, None, None, (0.5, 0.5, 0),
        ...     n_classes=10,
        ... )
        >>> threshold_meanings(doc)
        ['score >= 0.5607', 'all leave', 'not reached']
    """
    return describe_thresholds(list(doc.thresholds), doc.score, doc.n_classes or None)


@dataclass(frozen=True)
class PolicyOutcome:
    """What thresholds do to a set of samples.

    Attributes:
        exits: ``(N,)`` exit index of each sample (0 is exit 1).
        accuracy: Share of samples whose prediction at their exit is right.
        expected_cost: Mean cumulative cost of the exit taken (the cost vector's unit), as
            :func:`expected_cost` computes it.
        shares: ``K`` shares of samples leaving at each exit.
        hits: ``(N,)`` whether each sample's prediction at its exit is right.
    """

    exits: np.ndarray
    accuracy: float
    expected_cost: float
    shares: tuple[float, ...]
    hits: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the per-sample exits)."""
        return {
            "accuracy": self.accuracy,
            "expected_cost": self.expected_cost,
            "shares": list(self.shares),
        }


def evaluate_policy(
    scores: np.ndarray,
    correct: np.ndarray,
    costs: Sequence[float] | np.ndarray,
    thresholds: Sequence[float | None] | np.ndarray,
) -> PolicyOutcome:
    """Accuracy, expected cost and exit shares of thresholds on samples.

    Args:
        scores: ``(N, K)`` scores.
        correct: ``(N, K)`` booleans, prediction of exit k right.
        costs: ``K`` cumulative costs (any unit).
        thresholds: ``K - 1`` thresholds, or ``K`` with the last ``None``.

    Returns:
        The outcome. ``expected_cost`` is ``mean(costs[exit])``, computed exactly this way
        everywhere in dyncal so that budgets compare bit-for-bit.

    Example:
        >>> s = np.array([[0.9, 0.5], [0.2, 0.7]])
        >>> ok = np.array([[True, True], [False, True]])
        >>> o = evaluate_policy(s, ok, [1.0, 3.0], [0.8, None])
        >>> o.accuracy, o.expected_cost, o.shares
        (1.0, 2.0, (0.5, 0.5))
    """
    n, k = scores.shape
    exits = assign_exits(scores, thresholds)
    hits = correct[np.arange(n), exits]
    if n == 0:
        return PolicyOutcome(exits, float("nan"), float("nan"), tuple([float("nan")] * k), hits)
    shares = tuple(float(v) for v in np.bincount(exits, minlength=k) / n)
    return PolicyOutcome(exits, float(np.mean(hits)), expected_cost(exits, costs), shares, hits)


def expected_cost(exits: np.ndarray, costs: Sequence[float] | np.ndarray) -> float:
    """Mean cost of the exits taken: ``sum_k share_k * costs[k]`` with ``share_k = count_k / N``.

    Computed this one way everywhere in dyncal, so budgets compare bit-for-bit (and a run
    where everything leaves at exit 1 costs exactly ``costs[0]``).

    Example:
        >>> expected_cost(np.array([0, 0, 1]), [3.0, 6.0])
        4.0
    """
    c = np.asarray(costs, dtype=np.float64)
    if exits.size == 0:
        return float("nan")
    shares = np.bincount(exits, minlength=c.shape[0]) / exits.size
    return float(np.dot(shares, c))
