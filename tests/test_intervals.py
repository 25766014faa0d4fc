"""The combined speed-up interval carries timing and sampling noise, so it contains each alone."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dyncal.artifacts.verify import PairedTiming
from dyncal.paired import paired_speedup
from dyncal.stats import enclosing_interval


def _contains(outer: tuple[float, float], inner: tuple[float, float]) -> bool:
    return outer[0] <= inner[0] + 1e-12 and inner[1] <= outer[1] + 1e-12


@st.composite
def paired_matrices(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """``(batches, repeats)`` early-exit and plain times: skewed, with preemption outliers, as a busy CPU gives."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_b, n_r = draw(st.integers(2, 30)), draw(st.integers(1, 7))
    batch_ms = rng.uniform(0.5, 10.0, (n_b, 1))  # batches unlike each other (which exits they take)
    speedup = draw(st.floats(1.0, 6.0))
    ee = batch_ms * rng.lognormal(0.0, draw(st.floats(0.0, 0.6)), (n_b, n_r))
    full = batch_ms * speedup * rng.lognormal(0.0, draw(st.floats(0.0, 0.6)), (n_b, n_r))
    hits = rng.uniform(size=(n_b, n_r)) < draw(st.floats(0.0, 0.3))
    ee = ee + hits * rng.exponential(5.0, (n_b, n_r))
    return ee, full


@settings(max_examples=25, deadline=None)
@given(paired_matrices())
def test_verify_combined_interval_contains_its_parts_and_the_estimate(m: tuple[np.ndarray, np.ndarray]) -> None:
    ee, full = m
    t = PairedTiming("cpu/b8", 8, tuple(map(tuple, ee.tolist())), tuple(map(tuple, full.tolist())))
    both = t.speedup_ci
    assert _contains(both, t.speedup_ci_sampling)
    assert _contains(both, t.speedup_ci_timing)
    assert both[0] <= t.speedup <= both[1]


@settings(max_examples=15, deadline=None)
@given(paired_matrices())
def test_paired_estimate_combined_interval_contains_its_parts(m: tuple[np.ndarray, np.ndarray]) -> None:
    est = paired_speedup(m[0], m[1], n_resamples=300)
    assert _contains(est.interval, est.interval_sampling)
    assert _contains(est.interval, est.interval_timing)


def test_skewed_replicates_no_longer_pull_the_combined_interval_below_sampling() -> None:
    """The demo's case: the joint bootstrap's resampled medians of few skewed repeats sat low.

    With 3 repeats per batch, one fast and two slow plain-model runs, a resampled median
    falls on the fast run far more often than the median does, so the joint draws lean low
    and their top end fell below the sampling-only interval's top.
    """
    rng = np.random.default_rng(3)
    n_b = 20
    base = rng.uniform(1.0, 3.0, (n_b, 1))
    ee = np.repeat(base, 3, axis=1)
    full = np.concatenate([base * 2.0, base * 4.0, base * 4.1], axis=1)
    t = PairedTiming("cpu/b32", 32, tuple(map(tuple, ee.tolist())), tuple(map(tuple, full.tolist())))
    assert _contains(t.speedup_ci, t.speedup_ci_sampling)
    assert t.speedup_ci[0] <= t.speedup <= t.speedup_ci[1]


def test_enclosing_interval_skips_missing_parts() -> None:
    assert enclosing_interval((1.0, 2.0), None, (float("nan"), 3.0), (0.5, 1.5)) == (0.5, 2.0)
    assert enclosing_interval((float("nan"), float("nan")), (1.0, 2.0)) == (1.0, 2.0)


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 5))
def test_predicted_combined_interval_contains_its_parts(seed: int, n_reps: int) -> None:
    """The prediction from a profile: skewed stage replicates, held-out rows at batch 1."""
    from synthetic_profiles import synthetic_profile

    from dyncal.artifacts.costs import CostTable
    from dyncal.reports.evidence import predicted_latency

    rng = np.random.default_rng(seed)
    stages = tuple(tuple((m * rng.lognormal(0, 0.5, n_reps)).tolist()) for m in (0.2, 0.5, 1.0))
    full = tuple((1.8 * rng.lognormal(0, 0.5, n_reps)).tolist())
    prof = synthetic_profile("cpu", 1, stages, tuple(rng.uniform(0.01, 0.02, n_reps).tolist()), full, 1, "x")
    exits = rng.integers(0, 3, int(rng.integers(5, 80)))
    ev = predicted_latency(CostTable(latency={"cpu/b1": prof}), "cpu/b1", exits, held_out=True)
    s = ev.speedup
    assert s.interval is not None and s.interval_sampling is not None and s.interval_timing is not None
    assert _contains(s.interval, s.interval_sampling)
    assert _contains(s.interval, s.interval_timing)
    assert s.interval[0] <= s.value <= s.interval[1]
