"""A speed-up verify timed on too few samples is inconclusive with the remedy, never NO-GO (synthetic timings)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from dyncal.artifacts.verify import ModelIdentity, PairedTiming, VerifyResult
from dyncal.reports.decision import FAIL, INCONCLUSIVE, PASS, ExitOutcome, Requirements, decide, judge
from dyncal.reports.evidence import measured_latency
from dyncal.reports.timed import TimedCoverage

N_SAMPLES = 1000


def _verify(ratios: np.ndarray, *, timed_batches: int, seconds: float, max_seconds: float = 10.0) -> VerifyResult:
    """verify at cpu/b1: one timed batch (a sample) per ratio, 3 pairs each, of ``N_SAMPLES`` replayed."""
    rng = np.random.default_rng(0)
    ee = rng.uniform(4.0, 6.0, (len(ratios), 1)) * np.array([[1.0, 1.01, 0.99]])
    full = ee * ratios[:, None]
    timing = PairedTiming("cpu/b1", 1, tuple(map(tuple, ee.tolist())), tuple(map(tuple, full.tolist())))
    coverage = {
        "cpu/b1": {
            "batches_timed": timed_batches,
            "batches": N_SAMPLES,
            "samples_timed": timed_batches,
            "stopped_early": timed_batches < N_SAMPLES,
            "seconds": seconds,
        }
    }
    return VerifyResult(
        "r", "d", ModelIdentity("m", None), N_SAMPLES, 1.0, 1.0, 0.9, 0.9, (0.5, 0.5), (0.5, 0.5), (timing,),
        "cpu", "x", 1, settings={"max_seconds": max_seconds, "coverage": coverage},
    )  # fmt: skip


def _judge(v: VerifyResult, min_speedup: float) -> tuple[str, str | None, str]:
    timing = v.timings[0]
    ev = measured_latency(timing, v.n, TimedCoverage.of(v, timing.key))
    outcome = ExitOutcome(np.zeros(4, int), np.ones(4, bool), np.ones(4, bool), True)
    (c,) = judge(Requirements(min_speedup=min_speedup), accuracy=0.9, accuracy_interval=None, outcome=outcome,
                 speedup=ev.speedup)  # fmt: skip
    verdict = decide([c])
    assert verdict is not None
    return c.status, c.remedy, verdict


def _straddling_ratios() -> np.ndarray:
    """46 timed samples whose speed-up is 1.6x with an interval reaching below 1.5x (the issue's case)."""
    return 1.6 + 0.45 * np.random.default_rng(1).standard_normal(46)


def test_sampling_limited_speedup_is_inconclusive_with_the_remedy():
    v = _verify(_straddling_ratios(), timed_batches=46, seconds=5.0)
    t = v.timings[0]
    assert min(t.speedup_ci[0], t.speedup_ci_sampling[0]) < 1.5 < t.speedup  # it straddles the bound
    status, remedy, verdict = _judge(v, 1.5)
    assert (status, verdict) == (INCONCLUSIVE, "INCONCLUSIVE")
    m = re.fullmatch(r"time more: --max-seconds (\d+)", remedy or "")
    assert m, remedy
    # from the rate measured: 5 s for 46 samples, at most all 1000 of them, always more than was used
    assert 10 < int(m[1]) <= 10 * np.ceil(1000 * 5.0 / 46 / 10)


def test_the_same_interval_with_every_sample_timed_fails():
    """Timed in full, the sampling noise is the data's: more timing cannot remove it, so it is a failure."""
    ratios = _straddling_ratios()
    v = _verify(ratios, timed_batches=N_SAMPLES, seconds=5.0)
    status, remedy, verdict = _judge(v, 1.5)
    assert (status, remedy, verdict) == (FAIL, None, "NO-GO")


@pytest.mark.parametrize(("centre", "expected", "verdict"), [(3.0, PASS, "GO"), (0.8, FAIL, "NO-GO")])
def test_a_decided_limited_speedup_keeps_its_verdict(centre, expected, verdict):
    ratios = centre + 0.05 * np.random.default_rng(2).standard_normal(46)
    v = _verify(ratios, timed_batches=46, seconds=5.0)
    status, remedy, got = _judge(v, 1.5)
    assert (status, remedy, got) == (expected, None, verdict)


def test_remedy_grows_with_what_is_left_to_decide():
    c = TimedCoverage("cpu/b1", 46, 1000, 46, 1000, 5.0, 10.0, batch_sizes=2)
    near = c.seconds_to_decide(1.55, (1.38, 1.75), 1.5)
    far = c.seconds_to_decide(1.7, (1.45, 1.95), 1.5)
    assert near >= far > 10.0
    assert near <= 10 * np.ceil(1000 * 5.0 / 46 * 2 / 10)  # never more than timing every batch at both sizes


def test_page_one_says_how_many_were_timed():
    v = _verify(_straddling_ratios(), timed_batches=46, seconds=5.0)
    ev = measured_latency(v.timings[0], v.n, TimedCoverage.of(v, "cpu/b1"))
    assert ev.rows == "dyncal verify: 46 of 1,000 samples timed (time bound 10 s)"
    full = _verify(_straddling_ratios(), timed_batches=N_SAMPLES, seconds=5.0)
    assert "all 1,000 samples timed" in measured_latency(full.timings[0], full.n, TimedCoverage.of(full, "cpu/b1")).rows


def test_verify_output_says_how_many_were_timed(capsys):
    from dyncal.cli.render_verify import print_verify

    v = _verify(_straddling_ratios(), timed_batches=46, seconds=5.0)
    doc = v.to_dict()
    doc["settings"]["threads_from"] = "--threads"
    print_verify(doc, None)  # type: ignore[arg-type]
    out = capsys.readouterr().out
    assert "cpu/b1: 46 of 1,000 samples timed" in out and "raise --max-seconds" in out
    assert "1,000 samples replayed" not in out
