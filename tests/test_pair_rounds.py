"""More pairs when the spread is high: verify's extra rounds on synthetic timings and an injected clock."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dyncal.errors import DyncalError
from dyncal.pair_rounds import TARGET_HALF_WIDTH, add_rounds, max_pairs_for
from dyncal.paired import paired_speedup


class Machine:
    """Batches of an early exit (1 to 2 ms by its exits) and a 4.5 ms plain model on a fake clock.

    ``gap_ms``: a run loses a ``slice_ms`` time slice per ``gap_ms`` it runs, on average
    (Poisson), so the longer plain model is hit more often; None: a quiet machine, 2% jitter.
    Every pair moves the clock by what it took, twice (each member runs once untimed first).
    """

    def __init__(
        self, seed: int, batches: int = 13, gap_ms: float | None = None, slice_ms: float = 3.0, ee_drift: float = 0.0
    ) -> None:
        self.rng = np.random.default_rng(seed)
        self.ee_drift = ee_drift  # the early exit runs up to 1 + ee_drift times its time, unpreempted (cache, clock)
        self.ee_true = self.rng.choice([1.0, 1.5, 2.0], size=batches)
        self.pl_true = np.full(batches, 4.5)
        self.gap_ms, self.slice_ms = gap_ms, slice_ms
        self.now = 0.0
        self.round_ends: list[float] = []

    def clock(self) -> float:
        return self.now

    def _runs(self, true_ms: float, n: int) -> list[float]:
        ms = true_ms * (1 + self.rng.exponential(0.02, n))
        if self.gap_ms is not None:
            ms = ms + self.slice_ms * self.rng.poisson(true_ms / self.gap_ms, n)
        self.now += 2 * float(ms.sum()) / 1e3
        return [float(v) for v in ms]

    def pairs(self, b: int, n: int) -> tuple[list[float], list[float]]:
        ee = [v * float(self.rng.uniform(1.0, 1.0 + self.ee_drift)) for v in self._runs(float(self.ee_true[b]), n)]
        return ee, self._runs(float(self.pl_true[b]), n)

    def first(self, n: int) -> tuple[list[list[float]], list[list[float]]]:
        rows = [self.pairs(b, n) for b in range(len(self.ee_true))]
        return [r[0] for r in rows], [r[1] for r in rows]

    def round(self, n: int, a_first: bool) -> Iterator[tuple[list[float], list[float]]]:
        for b in range(len(self.ee_true)):
            yield self.pairs(b, n)
        self.round_ends.append(self.now)

    @property
    def clean_speedup(self) -> float:
        return float(self.pl_true.sum() / self.ee_true.sum())


def test_a_quiet_machine_needs_no_more_pairs():
    m = Machine(0)
    ee, pl = m.first(7)
    done = add_rounds(ee, pl, m.round, clock=m.clock, deadline=1e9, round_pairs=7, max_pairs=42)
    assert (done.stopped, done.rounds, done.pairs_per_batch, done.first_pairs) == ("settled", 0, 7, 7)
    assert done.half_width <= TARGET_HALF_WIDTH and done.estimator == "min"
    assert done.to_dict()["stopped"] == "settled" and done.to_dict()["target_half_width"] == TARGET_HALF_WIDTH


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_quiet_machine_whose_early_exit_jitters_keeps_the_minimum_through_the_rounds(seed: int):
    """The early exit drifts up to 1.8x its time without a slice lost: no reason to leave the minimum, however many
    pairs the interval asks for (the rule before counted the drift as preemptions, more of it as pairs were added)."""
    m = Machine(seed, ee_drift=0.8)
    ee, pl = m.first(7)
    done = add_rounds(ee, pl, m.round, clock=m.clock, deadline=1e9, round_pairs=7, max_pairs=max_pairs_for(7))
    est = paired_speedup(ee, pl, n_resamples=300)
    assert done.estimator == est.estimator == "min"
    assert abs(est.value / m.clean_speedup - 1) <= 0.1


@pytest.mark.parametrize("seed", [1, 2, 3, 5])
def test_under_load_more_pairs_bring_the_minimum_back_to_the_clean_speedup(seed: int):
    """A slice lost every 3 ms of running: 7 pairs leave batches with no undisturbed plain run."""
    m = Machine(seed, gap_ms=3.0)
    ee, pl = m.first(7)
    assert paired_speedup(ee, pl, n_resamples=300).estimator == "mean"  # too few clean runs for the minimum
    done = add_rounds(ee, pl, m.round, clock=m.clock, deadline=1e9, round_pairs=7, max_pairs=max_pairs_for(7))
    assert done.rounds >= 1 and done.pairs_per_batch == 7 + 7 * done.rounds
    assert all(len(r) == done.pairs_per_batch for r in (*ee, *pl))
    est = paired_speedup(ee, pl, n_resamples=300)
    assert est.estimator == "min"
    assert abs(est.value / m.clean_speedup - 1) <= 0.1  # the goal: within x1.1 of the clean one


@given(st.integers(0, 2**32 - 1), st.floats(1.0, 20.0), st.floats(0.05, 3.0), st.integers(1, 8))
@settings(max_examples=25, deadline=None)
def test_rounds_never_run_past_the_bound_or_the_cap(seed: int, gap_ms: float, budget_s: float, round_pairs: int):
    m = Machine(seed, batches=5, gap_ms=gap_ms)
    ee, pl = m.first(3)
    deadline = m.now + budget_s
    cap = 3 + 4 * round_pairs
    done = add_rounds(ee, pl, m.round, clock=m.clock, deadline=deadline, round_pairs=round_pairs, max_pairs=cap)
    assert all(len(r) == done.pairs_per_batch for r in (*ee, *pl))  # every batch keeps the same pairs
    assert 3 <= done.pairs_per_batch <= cap and done.pairs_per_batch == 3 + done.rounds * round_pairs
    kept = m.round_ends[: done.rounds]
    assert all(t <= deadline for t in kept)  # every round kept ended before the deadline
    assert done.stopped in {"settled", "max_pairs", "time bound"}
    if done.stopped == "max_pairs":
        assert done.pairs_per_batch == cap
    if done.dropped:
        assert done.stopped == "time bound" and done.dropped == round_pairs * 5


def test_a_round_the_clock_overruns_is_dropped_whole():
    m = Machine(5, batches=4, gap_ms=2.0)
    ee, pl = m.first(3)
    before = [list(r) for r in ee]
    # the first round is predicted to fit (no time per pair known yet) but overruns the deadline
    done = add_rounds(ee, pl, m.round, clock=m.clock, deadline=m.now + 0.001, round_pairs=3, max_pairs=30)
    assert (done.stopped, done.rounds, done.pairs_per_batch) == ("time bound", 0, 3)
    assert done.dropped > 0 and ee == before


def test_a_round_predicted_not_to_fit_is_not_started():
    m = Machine(6, batches=4, gap_ms=2.0)
    ee, pl = m.first(3)
    started = m.now
    done = add_rounds(ee, pl, m.round, clock=m.clock, deadline=m.now + 0.01, round_pairs=3, seconds_per_pair=1.0)
    assert (done.stopped, done.rounds, done.dropped) == ("time bound", 0, 0) and m.now == started


@pytest.mark.parametrize(
    ("ee", "pl"),
    [([[1.0, 1.0], [1.0]], [[2.0, 2.0], [2.0]]), ([[1.0]], [[2.0], [2.0]]), ([], [])],
)
def test_unpaired_rows_are_refused(ee, pl):
    with pytest.raises(DyncalError, match="same number of pairs"):
        add_rounds(ee, pl, lambda n, a: iter([]), clock=lambda: 0.0, deadline=1.0)


def test_a_round_that_gives_the_wrong_pairs_is_refused():
    ee, pl = [[1.0, 1.5], [2.0, 1.0]], [[3.0, 9.0], [6.0, 2.0]]
    with pytest.raises(DyncalError, match="a round must give"):
        add_rounds(ee, pl, lambda n, a: iter([([1.0], [3.0])]), clock=lambda: 0.0, deadline=1.0, round_pairs=1)
