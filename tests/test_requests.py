"""Per-request latency: percentiles and intervals against numpy, the stratified order, the document."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dyncal.analysis.requests import stratified_order
from dyncal.artifacts import requests as R
from dyncal.artifacts.requests import RequestTimings, latency_statistics
from dyncal.artifacts.validate import FieldError
from dyncal.errors import DyncalError
from dyncal.stats import N_BOOTSTRAP, centred_interval, stratified_resamples, weighted_percentiles

Q = [0, 1, 25, 50, 90, 95, 99, 99.9, 100]


def _numpy_statistics(x: np.ndarray) -> list[float]:
    return [x.mean(), x.std(), *np.percentile(x, [50, 90, 95, 99]), x.max()]


# -- percentiles and statistics against numpy


@given(st.integers(0, 2**32 - 1), st.integers(1, 60))
@settings(max_examples=60, deadline=None)
def test_unweighted_percentiles_are_numpys(seed: int, m: int):
    x = np.random.default_rng(seed).normal(size=(3, m)).round(1)  # rounding: ties
    assert np.array_equal(weighted_percentiles(x, Q), np.percentile(x, Q, axis=-1).T)
    assert np.array_equal(weighted_percentiles(x[0], Q), np.percentile(x[0], Q))


@given(st.integers(0, 2**32 - 1), st.integers(1, 40))
@settings(max_examples=60, deadline=None)
def test_integer_weights_are_repetitions(seed: int, m: int):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(4, m)).round(1)
    w = rng.integers(1, 6, size=(4, m))
    w[np.arange(4), rng.integers(0, m, 4)] = 1  # the smallest weight is 1: then it is repetition exactly
    expected = np.array([np.percentile(np.repeat(x[r], w[r]), Q) for r in range(4)])
    assert np.allclose(weighted_percentiles(x, Q, w), expected, rtol=0, atol=1e-12)
    assert np.allclose(weighted_percentiles(x, Q, 2.5 * w), expected, rtol=0, atol=1e-12)  # scale-free


@pytest.mark.parametrize(
    ("values", "q", "weights", "match"),
    [
        (np.zeros(0), [50], None, "m >= 1"),
        (np.ones(3), [101], None, r"\[0, 100\]"),
        (np.ones(3), [-1], None, r"\[0, 100\]"),
        (np.ones(3), [50], np.array([1.0, 0.0, 1.0]), "positive"),
    ],
)
def test_bad_percentile_input_is_refused(values, q, weights, match):
    with pytest.raises(DyncalError, match=match):
        weighted_percentiles(values, q, weights)


def test_latency_statistics_are_numpys():
    x = np.random.default_rng(3).lognormal(size=101)
    assert np.allclose(latency_statistics(x), _numpy_statistics(x))
    assert latency_statistics(np.stack([x, 2 * x])).shape == (2, 7)


def test_one_stratum_resamples_are_the_ordinary_bootstrap():
    a = stratified_resamples(np.zeros(9, int), 5, np.random.default_rng(1))
    b = np.random.default_rng(1).integers(0, 9, (5, 9))
    assert np.array_equal(a, b)
    strata = np.array([2, 0, 2, 1, 0])
    idx = stratified_resamples(strata, 50, np.random.default_rng(0))
    assert np.array_equal(strata[idx], np.broadcast_to(strata, idx.shape))


def test_a_centred_interval_holds_its_estimate_and_stays_positive():
    draws = np.random.default_rng(0).lognormal(2.0, 1.0, 1000)
    plain_lo, plain_hi = np.quantile(draws, [0.025, 0.975])
    lo, hi = centred_interval(draws, np.asarray(0.5))  # an estimate far below its draws: moved by a factor
    assert 0 < lo < 0.5 < hi
    assert hi / lo == pytest.approx(plain_hi / plain_lo)
    signed = np.random.default_rng(0).normal(5.0, 1.0, 1000)
    lo, hi = centred_interval(signed - 6.0, np.asarray(-2.0))  # not positive: moved by a shift
    assert lo < -2.0 < hi and hi - lo == pytest.approx(np.subtract(*np.quantile(signed, [0.975, 0.025])))


# -- request timings


def _timings(population=None, bound=None, n_available=0) -> RequestTimings:
    ee = np.array([[1.0, 1.4], [1.2, 1.1], [3.0, 3.5], [3.1, 3.0]])
    pl = np.array([[4.0, 4.2], [4.1, 4.0], [4.0, 4.4], [4.3, 4.0]])
    return RequestTimings(
        "cpu/b1",
        1,
        np.array([7, 3, 5, 0]),
        np.array([0, 0, 1, 1]),
        ee,
        pl,
        n_exits=2,
        population=population,
        n_available=n_available,
        time_bound_s=bound,
    )


def test_summaries_are_numpys_statistics_in_both_views():
    t = _timings()
    for side, a in (("early_exit", t.early_exit_ms), ("plain", t.plain_ms)):
        fastest, raw = t.summary(side, "fastest"), t.summary(side, "raw")
        assert np.allclose([fastest.values[s] for s in R.STATISTICS], _numpy_statistics(a.min(axis=1)))
        assert np.allclose([raw.values[s] for s in R.STATISTICS], _numpy_statistics(a.reshape(-1)))
        at_exit_2 = t.summary(side, "fastest", exit=1)
        assert at_exit_2.units == 2
        assert np.allclose([at_exit_2.values[s] for s in R.STATISTICS], _numpy_statistics(a[2:].min(axis=1)))
    assert len(t.summaries()) == 2 * 2 * 3  # views x (overall, exit 1, exit 2) x sides


def test_summary_intervals_are_the_bootstrap_numpy_computes():
    """The reference: resample requests and their pairs with the same draws, statistics by numpy, re-centred."""
    t = _timings()
    rng = np.random.default_rng(R._SEED)
    units = stratified_resamples(t.unit_exits, N_BOOTSTRAP, rng)
    pairs = rng.integers(0, 2, (N_BOOTSTRAP, 4, 2))
    draws = np.array(
        [_numpy_statistics(t.early_exit_ms[units[b][:, None], pairs[b]].min(axis=1)) for b in range(N_BOOTSTRAP)]
    )
    point = np.array(_numpy_statistics(t.early_exit_ms.min(axis=1)))
    factor = point / np.median(draws, axis=0)  # every statistic here is positive: the move is a factor
    lo, hi = np.quantile(draws, [0.025, 0.975], axis=0) * factor
    s = t.summary("early_exit", "fastest")
    assert np.allclose([s.intervals[k][0] for k in R.STATISTICS], lo)
    assert np.allclose([s.intervals[k][1] for k in R.STATISTICS], hi)
    assert all(s.intervals[k][0] <= s.values[k] <= s.intervals[k][1] for k in R.STATISTICS)


def test_a_percentile_has_sampling_timing_and_combined_intervals():
    t = _timings()
    p = t.percentile(90)
    assert p.value == pytest.approx(np.percentile(t.early_exit_ms.min(axis=1), 90))
    ratio = t.percentile(90, "ratio")
    assert ratio.value == pytest.approx(p.value / np.percentile(t.plain_ms.min(axis=1), 90))
    for est in (p, ratio):
        for iv in (est.interval, est.interval_sampling, est.interval_timing):
            assert iv[0] <= est.value <= iv[1]
    assert t.percentile(90) == p  # deterministic: seeded
    with pytest.raises(DyncalError, match="side"):
        t.percentile(90, "both")
    with pytest.raises(DyncalError, match=r"\[0, 100\]"):
        t.percentile(100.5)


def test_a_stratified_sample_is_weighted_to_the_population():
    # 2 of each exit timed; the population has 6 at exit 1 and 2 at exit 2: exit 1 weighs 3x exit 2
    t = _timings(population=np.array([6, 2]), bound=10.0, n_available=8)
    fastest = t.early_exit_ms.min(axis=1)
    repeated = np.repeat(fastest, [3, 3, 1, 1])
    s = t.summary("early_exit", "fastest")
    assert np.allclose([s.values[k] for k in R.STATISTICS], _numpy_statistics(repeated))
    assert t.coverage() == (
        "4 of 8 requests timed (time bound 10 s), stratified by exit and weighted to the exit shares of all 8"
    )
    proportional = _timings(population=np.array([4, 4]), n_available=8)
    assert proportional.weights is None
    assert proportional.coverage() == "4 of 8 requests timed"
    assert t.throughput_per_s("early_exit") == pytest.approx(1000 * 8 / np.dot([3, 3, 1, 1], fastest))


def test_an_exit_no_timed_request_took_is_named():
    t = RequestTimings("cpu/b1", 1, [0, 1], [0, 0], [[1.0], [1.0]], [[2.0], [2.0]], n_exits=3, population=[5, 0, 2])
    assert t.unrepresented_exits == [2]
    assert t.coverage().endswith("; not timed at exit 3")
    with pytest.raises(DyncalError, match="no timed unit left at exit 3"):
        t.summary("early_exit", exit=2)


def test_batches_are_units_and_their_deepest_exit_is_theirs():
    exits = np.array([0, 2, 1, 0, 0, 1, 0])
    t = RequestTimings.from_batches(
        "cuda:0/b3",
        [[0, 1, 2], [3, 4, 5], [6]],
        exits,
        [[3.0, 3.2], [2.0, 2.1], [1.0, 1.0]],
        [[4.0, 4.0], [4.0, 4.1], [2.0, 2.0]],
        n_exits=3,
    )
    assert t.units == 3 and t.unit_exits.tolist() == [2, 1, 0]
    assert t.coverage() == "3 batches of 3 (7 of 7 requests) timed"
    assert t.throughput_per_s("plain") == pytest.approx(1000 * 7 / 10.0)
    assert t.summary("early_exit", exit=2).values["mean"] == 3.0


def test_stratified_order_sees_every_exit_first_then_keeps_the_shares():
    rng = np.random.default_rng(5)
    exits = rng.choice(4, size=2000, p=[0.7, 0.2, 0.09, 0.01])
    order = stratified_order(exits, min_per_exit=3, seed=1)
    assert sorted(order.tolist()) == list(range(2000))
    assert np.array_equal(np.bincount(exits[order[:12]], minlength=4), [3, 3, 3, 3])
    shares = np.bincount(exits, minlength=4) / exits.size
    for m in (50, 200, 1000, 2000):
        counts = np.bincount(exits[order[:m]], minlength=4)
        assert np.all(np.abs(counts - m * shares) <= 3 + 2), (m, counts, m * shares)
    assert np.array_equal(stratified_order(exits, min_per_exit=3, seed=1), order)


def test_the_document_round_trips_and_carries_the_raw_timings():
    t = _timings(population=np.array([6, 2]), bound=10.0, n_available=8)
    doc = json.loads(json.dumps(t.to_dict()))
    assert doc["early_exit_ms"] == t.early_exit_ms.tolist() and doc["rows"] == [7, 3, 5, 0]
    assert {s["side"] for s in doc["summaries"]} == {"early_exit", "plain"}
    back = RequestTimings.from_dict(doc)
    assert back.percentile(99) == t.percentile(99)
    assert back.coverage() == t.coverage()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"key": "cpu"}, "field 'timings.key'"),
        ({"batch_size": 2}, "the key says 1"),
        ({"exits": [0, 0, 1, 2]}, r"field 'timings.exits\[3\]' must be an integer >= 0 <= 1"),
        ({"rows": [1, 2]}, "field 'timings.exits' must have 2 entries"),
        ({"early_exit_ms": [[1.0, 1.0]] * 3 + [[1.0]]}, "same number of replicates"),
        ({"plain_ms": [[1.0, 1.0]] * 3}, "not paired"),
        ({"plain_ms": [[0.0, 1.0]] * 4}, r"plain_ms\[0\]\[0\]"),
        ({"population": [0, 2]}, "no unit in the population"),
        ({"time_bound_s": -1}, "time_bound_s"),
    ],
)
def test_a_malformed_document_names_its_field(change, match):
    doc = {**_timings(population=np.array([6, 2])).to_dict(summaries=False), **change}
    with pytest.raises(FieldError, match=match):
        RequestTimings.from_dict(doc, prefix="timings.")


def test_inconsistent_timings_are_refused_when_built():
    with pytest.raises(DyncalError, match="not paired"):
        RequestTimings("cpu/b1", 1, [0], [0], [[1.0, 2.0]], [[1.0]], n_exits=1)
    with pytest.raises(DyncalError, match="exits must lie in"):
        RequestTimings("cpu/b1", 1, [0], [3], [[1.0]], [[1.0]], n_exits=2)
