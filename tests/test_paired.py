"""The speed-up estimator for busy machines: what load does to it, on synthetic timings (no clock)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from dyncal.artifacts.verify import PairedTiming
from dyncal.errors import DyncalError
from dyncal.paired import ESTIMATORS, PairedEstimate, floor_confirmed, paired_speedup, preempted


def _quiet(seed: int, batches: int = 120, pairs: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Batch timings of an early exit (1 to 2 ms by the exits its rows take) and a 4.5 ms plain model, 3% jitter."""
    rng = np.random.default_rng(seed)
    ee_true = rng.choice([1.0, 1.5, 2.0], size=(batches, 1), p=[0.5, 0.3, 0.2])
    ee = ee_true * (1 + rng.exponential(0.03, (batches, pairs)))
    pl = 4.5 * (1 + rng.exponential(0.03, (batches, pairs)))
    return ee, pl


def _loaded(ee: np.ndarray, pl: np.ndarray, seed: int, gap_ms: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
    """Busy processes: a call loses a 3 ms time slice per ``gap_ms`` it runs, on average (Poisson).

    A longer call is hit more often, so more of the plain model's pairs are hit than of
    the early exit's: the median ratio leans towards a larger speed-up.
    """
    rng = np.random.default_rng(seed)
    return ee + 3.0 * rng.poisson(ee / gap_ms), pl + 3.0 * rng.poisson(pl / gap_ms)


def _point(early_exit_ms: np.ndarray, plain_ms: np.ndarray, estimator: str = "auto") -> PairedEstimate:
    """:func:`paired_speedup` with a short bootstrap: for tests that read the estimate, never its intervals."""
    return paired_speedup(early_exit_ms, plain_ms, estimator=estimator, n_resamples=50)


def test_median_ratio_is_the_existing_estimator():
    """A timing read with the estimator verify used before issue 21 gives its speed-up; by default it takes auto's."""
    ee, pl = _quiet(0)
    t = PairedTiming("cpu/b1", 1, tuple(map(tuple, ee)), tuple(map(tuple, pl)), estimator="median-ratio")
    est = paired_speedup(ee, pl, estimator="median-ratio")
    assert est.value == pytest.approx(t.speedup, rel=1e-12)
    auto = PairedTiming("cpu/b1", 1, tuple(map(tuple, ee)), tuple(map(tuple, pl)))
    default = paired_speedup(ee, pl)
    assert auto.speedup == default.value and auto.speedup_ci == default.interval
    assert est.discarded == 0 and est.estimator == est.asked == "median-ratio"
    assert "median" in est.description


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_preemptions_move_the_median_of_ratios_but_not_the_minimum(seed: int):
    ee, pl = _quiet(seed)
    quiet, quiet_med = _point(ee, pl), _point(ee, pl, estimator="median-ratio").value
    lee, lpl = _loaded(ee, pl, seed + 100)
    loaded = _point(lee, lpl)
    loaded_med = _point(lee, lpl, estimator="median-ratio").value
    assert quiet.estimator == loaded.estimator == "min"  # undisturbed plain runs to expect in every batch
    assert abs(loaded.value / quiet.value - 1) <= 0.1  # the goal: within x1.1
    assert abs(loaded_med / quiet_med - 1) > 0.1  # what the old estimator did under the same load
    assert (
        loaded.discarded > 0
        and loaded.asked == "auto"
        and "chosen because the pairs expect undisturbed plain runs" in loaded.description
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_when_no_run_escapes_the_load_the_mean_takes_over_from_the_minimum(seed: int):
    """A slice lost every millisecond: the plain model never runs undisturbed, the early exit sometimes does."""
    ee, pl = _quiet(seed)
    lee, lpl = _loaded(ee, pl, seed + 100, gap_ms=1.0)
    forced_min = _point(lee, lpl, estimator="min").value / _point(ee, pl, estimator="min").value
    assert forced_min > 1.5  # the minimum compares an undisturbed early exit with a disturbed plain model
    loaded = _point(lee, lpl)
    assert loaded.estimator == "mean" and loaded.expected_clean_runs < 2
    assert abs(loaded.value / _point(ee, pl).value - 1) <= 0.1
    assert "do not expect" in loaded.description and loaded.discarded == 0


def test_a_low_quantile_is_named_and_discards_the_hit_pairs():
    ee = [[1.0, 1.0, 1.02, 9.0, 1.01], [2.0, 2.0, 2.0, 2.0, 2.0]]
    pl = [[3.0, 3.0, 3.0, 3.0, 3.0], [6.0, 6.1, 6.0, 6.0, 20.0]]
    assert preempted(ee, pl).tolist() == [[False, False, False, True, False], [False, False, False, False, True]]
    est = paired_speedup(ee, pl, estimator="min", quantile=0.25, n_resamples=50)
    assert est.estimator == "q0.25" and est.discarded == 2 and est.pairs == 10
    assert est.value == pytest.approx((3.0 + 6.0) / (1.0 + 2.0))
    assert "0.25 quantile" in est.description


def test_a_slow_pair_below_the_floor_is_kept():
    """The MAD floor is 5% of the median: ordinary jitter on a quiet batch is not a preemption."""
    assert not preempted([[1.0, 1.0, 1.0, 1.0, 1.15]], [[2.0] * 5]).any()
    assert preempted([[1.0, 1.0, 1.0, 1.0, 1.2]], [[2.0] * 5]).any()
    assert not preempted([[1.0, 1.0, 1.0, 1.0, 0.2]], [[2.0] * 5]).any()  # faster is never load


@given(st.integers(0, 2**32 - 1), st.sampled_from(list(ESTIMATORS)))
@settings(max_examples=15, deadline=None)
def test_every_interval_holds_its_estimate(seed: int, estimator: str):
    ee, pl = _loaded(*_quiet(seed, batches=20, pairs=5), seed)
    est = paired_speedup(ee, pl, estimator=estimator, n_resamples=300)
    for lo, hi in (est.interval, est.interval_sampling, est.interval_timing):
        assert lo <= est.value <= hi
    assert est.to_dict()["asked"] == estimator


def test_a_floor_is_confirmed_when_the_fastest_time_repeats():
    assert floor_confirmed([[1.0, 1.04, 2.0], [1.0, 1.2, 1.3], [2.0, 2.0, 9.0], [5.0, 5.5, 5.3]]) == 0.5
    assert floor_confirmed([[1.0], [2.0]]) == 0.0  # one pair confirms nothing
    assert floor_confirmed([[1.0, 1.0, 1.0], [3.0, 3.0]]) == 1.0


def test_batches_with_more_pairs_are_read_as_lists():
    ee = [[1.0, 1.1, 1.0], [2.0, 2.2, 2.1, 2.0, 2.3, 2.0]]
    pl = [[3.0, 3.0, 3.1], [6.0, 6.0, 6.0, 6.2, 6.0, 6.1]]
    est = paired_speedup(ee, pl, n_resamples=200)
    assert est.pairs == 9 and est.value == pytest.approx(9.0 / 3.0)
    assert est.early_exit_ms == pytest.approx(1.5)


@pytest.mark.parametrize(
    ("ee", "pl", "kwargs", "match"),
    [
        ([[1.0, 1.0]], [[1.0]], {}, "paired"),
        ([[1.0]], [[0.0]], {}, "positive"),
        ([[]], [[]], {}, "at least one batch"),
        ([[1.0]], [[1.0]], {"estimator": "max"}, "`estimator` must be one of auto, min, mean, median-ratio"),
        ([[1.0]], [[1.0]], {"quantile": 0.9}, "low quantile"),
    ],
)
def test_bad_timings_are_refused(ee, pl, kwargs, match):
    with pytest.raises(DyncalError, match=match):
        paired_speedup(ee, pl, **kwargs)


def _few_batches(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The demo at batch 32: 8 batches of 7 pairs, an early exit of about 1 ms and a 3.3 ms plain deployment."""
    rng = np.random.default_rng(seed)
    ee = rng.uniform(0.9, 1.1, (8, 1)) * (1 + rng.exponential(0.02, (8, 7)))
    return ee, 3.3 * (1 + rng.exponential(0.02, (8, 7)))


@given(st.integers(0, 2**32 - 1))
@settings(max_examples=40, deadline=None)
def test_on_few_batches_preemption_spikes_neither_flip_the_choice_nor_move_the_estimate(seed: int):
    """Spikes injected as a busy machine makes them (a 3 ms slice per 12 ms of running): within x1.1, same estimator.

    Under the minimum's stated assumption: every batch keeps an undisturbed run on each side.
    When all 7 plain runs of a batch are hit (about 1 in 20,000 batches here; hypothesis found
    seed 498), that batch's minimum is a disturbed time and the estimate moves (+11% there):
    the limit the module docstring names, not something this property claims.
    """
    ee, pl = _few_batches(seed)
    ee_loaded, pl_loaded = _loaded(ee, pl, seed + 1, gap_ms=12.0)
    assume(bool(np.all((ee_loaded == ee).any(axis=1)) and np.all((pl_loaded == pl).any(axis=1))))
    clean = paired_speedup(ee, pl, n_resamples=50)
    spiked = paired_speedup(ee_loaded, pl_loaded, n_resamples=50)
    assert clean.estimator == spiked.estimator == "min"
    assert spiked.expected_clean_runs >= 2 and np.isfinite(spiked.expected_clean_runs)
    assert abs(spiked.value / clean.value - 1) <= 0.1


def test_a_plain_deployment_hit_in_every_run_is_not_taken_for_a_floor():
    """Every plain run loses one slice (its disturbed time repeats); the early exit escapes 40% of the time."""
    rng = np.random.default_rng(7)
    ee, pl = _few_batches(7)
    lee = ee + 3.0 * (rng.random(ee.shape) < 0.6)
    lpl = pl + 3.0
    assert floor_confirmed(lpl) == 1.0  # the per-batch test sees a repeated fastest time
    forced_min = paired_speedup(lee, lpl, estimator="min", n_resamples=50).value
    assert forced_min / paired_speedup(ee, pl, n_resamples=50).value > 1.5  # the minimum would be far off
    auto = paired_speedup(lee, lpl, n_resamples=50)
    assert auto.estimator == "mean" and auto.expected_clean_runs < 2
    assert auto.to_dict()["expected_clean_runs"] == auto.expected_clean_runs


def _jittery_quiet(seed: int, pairs: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """The demo at batch 32 on a quiet machine: 13 batches, a 0.8 ms early exit that drifts up to 1.8x its
    fastest without losing a time slice (cache, memory bandwidth), a 4.3 ms plain deployment that drifts 1.3x."""
    rng = np.random.default_rng(seed)
    ee = rng.uniform(0.7, 0.9, (13, 1)) * rng.uniform(1.0, 1.8, (13, pairs))
    return ee, 4.3 * rng.uniform(1.0, 1.3, (13, pairs))


@given(st.integers(0, 2**32 - 1))
@settings(max_examples=20, deadline=None)
def test_a_quiet_machine_takes_the_minimum_however_much_the_short_side_jitters(seed: int):
    """Jitter is not a preemption: no run lost a slice, so every plain run is clean, with 7 pairs or 42."""
    ee, pl = _jittery_quiet(seed)
    assert np.mean(ee > 1.25 * ee.min(axis=1, keepdims=True)) > 0.4  # what the rule before counted as hits
    for pairs in (7, 42):
        est = paired_speedup(ee[:, :pairs], pl[:, :pairs], n_resamples=50)
        assert est.estimator == "min" and est.expected_clean_runs == pytest.approx(pairs)


@given(st.integers(0, 2**32 - 1), st.floats(0.5, 20.0), st.floats(0.0, 0.9))
@settings(max_examples=30, deadline=None)
def test_delays_on_plain_runs_that_leave_each_batch_a_clean_one_do_not_move_auto(seed: int, delay: float, share: float):
    """Preemptions added to up to 90% of the plain deployment's pairs (each batch's fastest left clean): auto's
    estimate stays where it was, to the last digit (its choice reads the early exit; the minimum finds the clean run).
    With any one pair per batch left clean it moves by no more than the quiet plain runs' own spread."""
    rng = np.random.default_rng(seed)
    ee, pl = _few_batches(seed)
    hit = rng.random(pl.shape) < share
    fastest, any_one = hit.copy(), hit.copy()
    fastest[np.arange(pl.shape[0]), np.argmin(pl, axis=1)] = False
    any_one[np.arange(pl.shape[0]), rng.integers(0, pl.shape[1], pl.shape[0])] = False
    quiet = paired_speedup(ee, pl, n_resamples=50)
    loaded = paired_speedup(ee, pl + delay * fastest, n_resamples=50)
    assert quiet.estimator == loaded.estimator == "min"
    assert loaded.value == pytest.approx(quiet.value, rel=1e-12)
    other = paired_speedup(ee, pl + delay * any_one, n_resamples=50)
    spread = float(np.max(pl.max(axis=1) / pl.min(axis=1)))
    assert other.estimator == "min" and quiet.value <= other.value <= quiet.value * spread


@given(st.integers(0, 2**32 - 1), st.sampled_from([12.0, 1.0]))
@settings(max_examples=20, deadline=None)
def test_the_estimate_never_depends_on_the_order_of_pairs_or_batches(seed: int, gap_ms: float):
    """Pairs shuffled within each batch (both sides alike, so pairs stay pairs) and batches shuffled: same reading."""
    ee, pl = _loaded(*_few_batches(seed), seed + 1, gap_ms=gap_ms)
    rng = np.random.default_rng(seed)
    rows = rng.permutation(ee.shape[0])
    cols = np.argsort(rng.random(ee.shape), axis=1)
    ee2, pl2 = np.take_along_axis(ee, cols, axis=1)[rows], np.take_along_axis(pl, cols, axis=1)[rows]
    a, b = paired_speedup(ee, pl, n_resamples=50), paired_speedup(ee2, pl2, n_resamples=50)
    assert (a.estimator, a.discarded) == (b.estimator, b.discarded)
    assert (b.value, b.expected_clean_runs) == pytest.approx((a.value, a.expected_clean_runs), rel=1e-12)
