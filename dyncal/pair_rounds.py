"""More pairs when the spread is high: verify's rounds of extra pairs, within its time bound (numpy only).

Design. A minimum (or a low quantile) is only as good as the undisturbed runs it finds
(Chen & Revels, "Robust benchmarking in noisy environments", 2016): on a busy machine a
short batch size timed with a handful of pairs may hold no undisturbed run of the plain
deployment at all, and ``auto`` then falls back to the mean, which load moves. So after
verify has timed its batches once (``repeats`` pairs each), :func:`add_rounds` reads the
speed-up with the estimator asked for (:func:`dyncal.paired.paired_speedup`) and, while

* its timing interval (pairs resampled, batches kept) is wider than
  ±:data:`TARGET_HALF_WIDTH` of the estimate, or
* ``auto`` chose the mean because too few undisturbed runs were to be expected (more pairs
  raise that count: :func:`dyncal.paired.clean_runs`),

it times another round of ``round_pairs`` pairs on every timed batch (the matrix stays
``(batches, pairs)``), up to ``max_pairs`` per batch. A round starts only when the time
it is predicted to take (the slowest round so far, per pair) fits before the deadline; a
round the clock overruns anyway (read after each batch) is dropped whole: every pair kept
was timed before the deadline, and every batch keeps the same pairs.
:class:`PairRounds` records what happened (pairs per batch, rounds, why it stopped) for
verify.json. The estimate itself is computed once, afterwards, on every pair
(``auto`` deciding once and recording why).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from dyncal.errors import DyncalError
from dyncal.paired import paired_speedup

__all__ = ["TARGET_HALF_WIDTH", "PAIR_CAP_FACTOR", "PairRounds", "add_rounds", "max_pairs_for"]

TARGET_HALF_WIDTH = 0.025
"""Rounds are added while the speed-up's timing interval is wider than this fraction of it, either side."""
PAIR_CAP_FACTOR = 6
"""At most this many times verify's ``repeats`` pairs per batch (:func:`max_pairs_for`)."""
CHECK_RESAMPLES = 400
"""Bootstrap resamples of the check between rounds (the reported interval uses the full count)."""

Rows = list[list[float]]
Round = Callable[[int, bool], Iterable[tuple[list[float], list[float]]]]
"""``time_round(pairs, a_first)`` yields ``(early_exit_ms, plain_ms)`` of ``pairs`` pairs per timed batch, in order."""


@dataclass(frozen=True)
class PairRounds:
    """What the extra rounds did at one batch size.

    Attributes:
        pairs_per_batch: Pairs each timed batch holds in the end.
        first_pairs: Pairs each batch got before any extra round (verify's ``repeats``).
        rounds: Extra rounds timed (a dropped round not counted).
        stopped: Why no further round was timed: ``"settled"``, ``"max_pairs"`` or ``"time bound"``.
        half_width: The timing interval's half-width over the estimate at the last check.
        estimator: The estimator the last check used (``auto``'s choice at that point).
        dropped: Pairs timed in a round the clock overran, left out.
    """

    pairs_per_batch: int
    first_pairs: int
    rounds: int
    stopped: str
    half_width: float
    estimator: str
    dropped: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (verify.json's ``settings.coverage[key].pairs``)."""
        return {
            "pairs_per_batch": self.pairs_per_batch,
            "first_pairs": self.first_pairs,
            "rounds": self.rounds,
            "stopped": self.stopped,
            "half_width": self.half_width,
            "target_half_width": TARGET_HALF_WIDTH,
            "estimator_at_check": self.estimator,
            "dropped_pairs": self.dropped,
        }


def max_pairs_for(repeats: int) -> int:
    """The cap on pairs per batch for verify's ``repeats``.

    Example:
        >>> max_pairs_for(7)
        42
    """
    return PAIR_CAP_FACTOR * repeats


def _check(ee: Rows, pl: Rows, estimator: str) -> tuple[bool, float, str]:
    """Whether another round is wanted, the timing interval's half-width over the estimate, the estimator used."""
    est = paired_speedup(ee, pl, estimator=estimator, n_resamples=CHECK_RESAMPLES)
    lo, hi = est.interval_timing
    half = (hi - lo) / (2 * est.value)
    too_few_clean = estimator == "auto" and est.estimator != "min"
    return half > TARGET_HALF_WIDTH or too_few_clean, float(half), est.estimator


def add_rounds(
    ee: Rows,
    pl: Rows,
    time_round: Round,
    *,
    clock: Callable[[], float],
    deadline: float,
    estimator: str = "auto",
    round_pairs: int = 2,
    max_pairs: int = 42,
    seconds_per_pair: float = 0.0,
) -> PairRounds:
    """Extend every batch's pairs (``ee``, ``pl`` in place) in rounds while the speed-up is not settled.

    Args:
        ee: Per timed batch, the early exit's milliseconds so far (all rows the same length).
        pl: The plain deployment's, paired with ``ee``.
        time_round: Times one more round (:data:`Round`); only consumed while the clock allows.
        clock: Seconds, the clock ``deadline`` is on.
        deadline: No round starts unless predicted to end by then; one that runs past it is dropped.
        estimator: The estimator asked for (:data:`dyncal.paired.ESTIMATORS`).
        round_pairs: Pairs added to each batch per round.
        max_pairs: Cap on pairs per batch.
        seconds_per_pair: What one pair on every batch took so far (the first prediction of a round's time).

    Returns:
        What the rounds did (:class:`PairRounds`).

    Raises:
        DyncalError: Rows of different lengths, or a round that yields the wrong pairs.

    Example:
        >>> ee, pl = [[1.0, 1.0]], [[3.0, 3.0]]
        >>> add_rounds(ee, pl, lambda n, first: iter([([1.0] * n, [3.0] * n)]), clock=lambda: 0.0, deadline=1.0).stopped
        'settled'
    """
    first = len(ee[0]) if ee else 0
    if not ee or any(len(r) != first for r in (*ee, *pl)) or len(ee) != len(pl):
        raise DyncalError("extra rounds need paired batches with the same number of pairs each")
    rounds, dropped, per_pair_s = 0, 0, seconds_per_pair
    while True:
        want, half, used = _check(ee, pl, estimator)
        n = len(ee[0])
        if not want:
            stopped = "settled"
        elif n >= max_pairs:
            stopped = "max_pairs"
        else:
            add = min(round_pairs, max_pairs - n)
            t0 = clock()
            if t0 + add * per_pair_s > deadline:
                stopped = "time bound"
            elif _one_round(ee, pl, time_round(add, n % 2 == 0), add, clock, deadline):
                rounds += 1
                per_pair_s = max(per_pair_s, (clock() - t0) / add)
                continue
            else:
                stopped, dropped = "time bound", dropped + add * len(ee)
        return PairRounds(n, first, rounds, stopped, half, used, dropped)


def _one_round(
    ee: Rows, pl: Rows, pairs: Iterable[tuple[list[float], list[float]]], add: int, clock: Any, deadline: float
) -> bool:
    """Append one round to every batch; False (and every row as before) when the clock passed ``deadline``."""
    n, done = len(ee[0]), 0
    for e, p in pairs:
        if done >= len(ee) or len(e) != add or len(p) != add:
            raise DyncalError(f"a round must give {add} pairs for each of {len(ee)} batches")
        ee[done].extend(e)
        pl[done].extend(p)
        done += 1
        if clock() > deadline:
            for row in (*ee, *pl):
                del row[n:]
            return False
    if done != len(ee):
        raise DyncalError(f"a round must give {add} pairs for each of {len(ee)} batches, it gave {done} batches")
    return True
