"""Measurement: the summaries of a timing, and the same rules over the rows of a matrix."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dyncal.measurement import NOISE_IQR_FRACTION, Measurement, is_noisy, row_medians, row_spreads

_MS = st.floats(min_value=1e-3, max_value=1e3, allow_nan=False, allow_infinity=False)
_REPLICATES = st.lists(_MS, min_size=1, max_size=40).map(tuple)
_MATRICES = st.integers(1, 6).flatmap(lambda n: st.lists(st.lists(_MS, min_size=n, max_size=n), min_size=1, max_size=6))


def test_summaries_of_known_replicates():
    m = Measurement((4.0, 1.0, 3.0, 2.0, 10.0))  # sorted 1 2 3 4 10: quartiles 2 and 4
    assert m.median_ms == 3.0
    assert m.iqr_ms == 2.0
    assert m.spread == pytest.approx(2.0 / 3.0)
    assert m.noisy
    assert (m.quantile(0.0), m.quantile(1.0)) == (1.0, 10.0)  # the fastest and the slowest
    even = Measurement((1.0, 2.0, 3.0, 4.0))
    assert even.median_ms == 2.5 and even.iqr_ms == pytest.approx(1.5) and even.quantile(0.9) == pytest.approx(3.7)


def test_a_quiet_measurement_is_not_noisy_and_the_rule_is_strict():
    assert not Measurement((5.0,) * 25).noisy and Measurement((5.0,) * 25).spread == 0.0
    assert not is_noisy(NOISE_IQR_FRACTION) and is_noisy(math.nextafter(NOISE_IQR_FRACTION, 1.0))
    # quartiles 9.5 and 10.5 around a median of 10: IQR 10% of the median, not above it
    at_the_line = Measurement((9.0, 9.5, 10.0, 10.5, 11.0))
    assert at_the_line.spread == NOISE_IQR_FRACTION and not at_the_line.noisy


def test_nothing_timed_and_a_zero_median():
    empty = Measurement(())
    assert math.isnan(empty.median_ms) and math.isnan(empty.iqr_ms) and math.isnan(empty.quantile(0.5))
    assert empty.spread == 0.0 and not empty.noisy
    assert empty.resampled(np.random.default_rng(0)) == empty
    zero = Measurement((0.0, 0.0, 0.0, 1.0))
    assert zero.median_ms == 0.0 and zero.spread == 0.0 and not zero.noisy  # no relative spread of nothing
    assert row_spreads([[0.0, 0.0, 0.0, 1.0], [1.0, 1.0, 2.0, 2.0]]).tolist() == [0.0, pytest.approx(1.0 / 1.5)]


@settings(max_examples=60, deadline=None)
@given(_REPLICATES)
def test_summaries_are_numpys_bit_for_bit(reps):
    """The numbers profile and verify stored before Measurement existed, to the last bit."""
    m = Measurement(reps)
    q75, q50, q25 = np.percentile(reps, [75, 50, 25])
    assert m.median_ms == float(np.median(reps))
    assert m.iqr_ms == float(np.subtract(*np.percentile(reps, [75, 25])))
    assert m.spread == (float((q75 - q25) / q50) if q50 > 0 else 0.0)
    assert m.noisy == (m.spread > NOISE_IQR_FRACTION)
    assert min(reps) <= m.quantile(0.25) <= m.median_ms <= m.quantile(0.75) <= max(reps)
    assert m.iqr_ms >= 0 and m.spread >= 0


@settings(max_examples=60, deadline=None)
@given(_MATRICES)
def test_the_row_rules_are_the_scalar_rules_on_each_row(rows):
    medians, spreads = row_medians(rows), row_spreads(rows)
    assert medians.shape == spreads.shape == (len(rows),)
    assert medians.tolist() == [Measurement(tuple(r)).median_ms for r in rows]
    assert spreads.tolist() == [Measurement(tuple(r)).spread for r in rows]
    stacked = np.stack([rows, rows])  # (draws, batches, repeats), as verify's bootstrap holds them
    assert row_medians(stacked).tolist() == [medians.tolist()] * 2


@settings(max_examples=40, deadline=None)
@given(_REPLICATES, st.floats(min_value=0.01, max_value=100.0))
def test_spread_is_relative_and_the_median_scales(reps, factor):
    m, scaled = Measurement(reps), Measurement(tuple(factor * r for r in reps))
    assert scaled.median_ms == pytest.approx(factor * m.median_ms, rel=1e-9)
    assert scaled.spread == pytest.approx(m.spread, rel=1e-6, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(_REPLICATES, st.integers(0, 2**32 - 1))
def test_a_bootstrap_replicate_draws_from_the_replicates(reps, seed):
    drawn = Measurement(reps).resampled(np.random.default_rng(seed))
    assert len(drawn.replicates_ms) == len(reps) and set(drawn.replicates_ms) <= set(reps)
    # one draw of len(reps) indices, as the report's timing bootstrap draws a series
    picks = np.random.default_rng(seed).integers(0, len(reps), len(reps))
    assert drawn.replicates_ms == tuple(np.asarray(reps)[picks].tolist())
