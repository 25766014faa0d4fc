"""Tail criteria: parsed from what users write, judged by the report's rule (synthetic timings, no clock)."""

from __future__ import annotations

import numpy as np
import pytest

from dyncal.artifacts.requests import IntervalEstimate, RequestTimings
from dyncal.errors import DyncalError
from dyncal.reports.decision import FAIL, INCONCLUSIVE, PASS, Criterion, decide
from dyncal.reports.tail import (
    TailBound,
    judge_tail,
    parse_tail_bound,
    predicted_tail_criterion,
    tail_bounds,
    tail_criterion,
)


def _timings(noise_ms: float, seed: int = 0, n: int = 200, pairs: int = 5) -> RequestTimings:
    """Batch-1 requests: 80% leave at exit 1 (1 ms), 20% at exit 2 (2 ms); plain 2.1 ms; positive load noise."""
    rng = np.random.default_rng(seed)
    exits = rng.choice(2, size=n, p=[0.8, 0.2])
    true = np.where(exits == 0, 1.0, 2.0)[:, None] * (1 + rng.uniform(0, 0.02, (n, 1)))
    ee = true + rng.exponential(noise_ms, (n, pairs))
    plain = 2.1 * (1 + rng.uniform(0, 0.02, (n, 1))) + rng.exponential(noise_ms, (n, pairs))
    return RequestTimings("cpu/b1", 1, np.arange(n), exits, ee, plain, n_exits=2)


QUIET, LOADED = _timings(0.001), _timings(0.2)


# -- parsing


@pytest.mark.parametrize(
    ("text", "form", "expected"),
    [
        ("p99=2.5", "ms", TailBound(99.0, 2.5)),
        ("P90 = 1ms", "ms", TailBound(90.0, 1.0)),
        ("p99.9=0.75", "ms", TailBound(99.9, 0.75)),
        ("max=4", "ms", TailBound(100.0, 4.0)),
        ("p99=1.2", "ratio", TailBound(99.0, 1.2, "ratio")),
        ("p50=0.8x", "ratio", TailBound(50.0, 0.8, "ratio")),
    ],
)
def test_tail_bounds_are_read_as_users_write_them(text: str, form: str, expected: TailBound):
    assert parse_tail_bound(text, form) == expected


@pytest.mark.parametrize(
    ("text", "form", "match"),
    [
        ("2.5", "ms", r"`max_latency_ms` must look like p99=2\.5"),
        ("p99<2.5", "ms", "must look like"),
        ("p99=", "ms", "must look like"),
        ("p99=fast", "ms", "must look like"),
        ("p99=2.5x", "ms", "must look like"),  # a factor where ms are asked
        ("p99=1.2ms", "ratio", r"`max_latency_ratio` must look like p99=1\.2 .*plain deployment"),
        ("p0=1", "ms", r"percentile must lie in \(0, 100\]"),
        ("p100.5=1", "ms", r"percentile must lie in \(0, 100\]"),
        ("p99=0", "ms", "the bound must be a positive number"),
        ("p99=-1", "ms", "the bound must be a positive number"),
        ("p99=inf", "ms", "the bound must be a positive number"),
    ],
)
def test_a_malformed_tail_bound_says_what_it_must_look_like(text: str, form: str, match: str):
    name = "max_latency_ms" if form == "ms" else "max_latency_ratio"
    with pytest.raises(DyncalError, match=match):
        parse_tail_bound(text, form, name)


def test_the_options_become_one_bound_per_percentile_and_form():
    bounds = tail_bounds(max_p99_ms=2.5, max_latency_ms=["p90=1"], max_latency_ratio=["p99=1.2"])
    assert [b.name for b in bounds] == ["latency_p99_ms", "latency_p90_ms", "latency_p99_ratio"]
    assert tail_bounds() == ()
    with pytest.raises(DyncalError, match="p99 is bounded twice .*p99=2.5ms and p99=3ms"):
        tail_bounds(max_p99_ms=2.5, max_latency_ms=["p99=3"])
    with pytest.raises(DyncalError, match="`max_p99_ratio` must be a positive number"):
        tail_bounds(max_p99_ratio=0.0)
    assert TailBound.from_dict(bounds[2].to_dict()) == bounds[2]


# -- judging


def test_a_tail_criterion_passes_quiet_and_is_inconclusive_under_load_never_failing():
    bound = [TailBound(99.0, 2.2)]
    quiet, loaded = judge_tail(bound, QUIET)[0], judge_tail(bound, LOADED)[0]
    assert quiet.status == PASS and decide([quiet]) == "GO"
    assert loaded.status == INCONCLUSIVE and decide([loaded]) == "INCONCLUSIVE"
    assert loaded.interval_sampling[1] < 2.2 < loaded.interval[1]  # which requests: clear; timing noise: not
    assert loaded.value == pytest.approx(np.percentile(LOADED.early_exit_ms.min(axis=1), 99))
    assert loaded.name == "latency_p99_ms" and loaded.comparison == "<=" and loaded.cost == "cpu/b1"
    assert "200 of 200 requests timed" in loaded.description
    assert Criterion.from_dict(loaded.to_dict()) == loaded


def test_a_tail_criterion_makes_the_report_no_go():
    bound = [TailBound(99.0, 1.5)]  # the 20% at exit 2 take 2 ms
    for timings in (QUIET, LOADED):
        c = judge_tail(bound, timings)[0]
        assert c.status == FAIL
        accuracy = Criterion("accuracy", 0.95, (0.93, 0.97), 0.9, ">=", PASS)
        assert decide([accuracy, c]) == "NO-GO"


def test_a_ratio_bound_is_judged_against_the_plain_deployment_on_the_same_requests():
    low, high = judge_tail([TailBound(99.0, 0.9, "ratio"), TailBound(99.0, 1.2, "ratio")], QUIET)
    expected = np.percentile(QUIET.early_exit_ms.min(axis=1), 99) / np.percentile(QUIET.plain_ms.min(axis=1), 99)
    assert low.value == pytest.approx(expected) and 0.9 < low.value < 1.2
    assert (low.status, high.status) == (FAIL, PASS)
    assert "over the plain deployment's" in low.description


def test_the_raw_view_judges_every_replicate():
    raw, fastest = judge_tail([TailBound(90.0, 5.0)], LOADED, "raw")[0], judge_tail([TailBound(90.0, 5.0)], LOADED)[0]
    assert raw.value == pytest.approx(np.percentile(LOADED.early_exit_ms, 90)) and raw.value > fastest.value
    assert "every pair" in raw.description


def test_the_rule_is_the_reports_rule():
    est = IntervalEstimate(2.0, (1.6, 2.6), (1.9, 2.1), (1.7, 2.5))
    assert tail_criterion(TailBound(99.0, 2.2), est, cost="cpu/b1").status == INCONCLUSIVE
    assert tail_criterion(TailBound(99.0, 3.0), est, cost="cpu/b1").status == PASS
    assert tail_criterion(TailBound(99.0, 1.5), est, cost="cpu/b1").status == FAIL


def test_without_a_verify_result_the_exit_shares_predict_the_tail():
    exits = np.array([0] * 90 + [1] * 10)
    passing = predicted_tail_criterion(TailBound(90.0, 2.0), exits, [1.0, 3.0], cost="cpu/b1")
    failing = predicted_tail_criterion(TailBound(95.0, 2.0), exits, [1.0, 3.0], cost="cpu/b1")
    assert (passing.status, failing.status, failing.source, failing.interval) == (PASS, FAIL, "predicted", None)
    with pytest.raises(DyncalError, match="needs a verify result"):
        predicted_tail_criterion(TailBound(90.0, 1.2, "ratio"), exits, [1.0, 3.0], cost="cpu/b1")
