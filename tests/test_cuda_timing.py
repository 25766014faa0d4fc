"""GPU timing helpers: the event timer falls back to the host clock, warm-up settles, autotuning is scoped."""

from __future__ import annotations

import itertools

import pytest
import torch

from dyncal.analysis.cuda_timing import EventTimer, autotuned, settle
from dyncal.analysis.latency import Timer
from dyncal.errors import DyncalError

CUDA = torch.cuda.is_available()


def _clock(block_ms: list[float]):
    """A host clock under which block ``i`` lasts ``block_ms[i]`` (two readings per block)."""
    now = [0.0]
    durations = iter(block_ms)
    reads = itertools.count()

    def clock() -> float:
        if next(reads) % 2:  # the reading that ends a block
            now[0] += next(durations) / 1e3
        return now[0]

    return clock


def test_the_event_timer_is_the_host_timer_on_the_cpu():
    timer = EventTimer(torch.device("cpu"), clock=_clock([8.0, 4.0]))
    assert isinstance(timer, Timer) and not timer.cuda
    assert timer.block_ms(lambda: None, calls=4) == 2.0
    assert timer.block_ms(lambda: None) == 4.0
    assert EventTimer(torch.device("cpu")).label == "perf_counter"


def test_warm_up_runs_until_the_last_blocks_agree():
    # clocks ramping up: blocks get faster, then hold at 1 ms (within 1 %)
    times = [5.0, 3.0, 2.0, 1.5, 1.0, 1.01, 0.995, 1.0, 1.0, 1.0]
    calls = []
    result = settle(Timer(torch.device("cpu"), _clock(times)), lambda: calls.append(1), window=4, tolerance=0.02)
    assert result.settled and result.blocks == 8 and len(calls) == 8  # blocks 5..8 agree
    assert result.last_ms == pytest.approx((1.0, 1.01, 0.995, 1.0)) and result.spread <= 0.02
    assert result.to_dict()["blocks"] == 8


def test_warm_up_that_never_settles_says_so():
    times = [1.0, 2.0] * 10
    result = settle(Timer(torch.device("cpu"), _clock(times)), lambda: None, window=3, max_blocks=12)
    assert not result.settled and result.blocks == 12 and result.spread > 0.02


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"window": 2}, r"`window` must be at least 3 blocks, got 2"),
        ({"calls": 0}, r"`calls` and `max_blocks` must be at least 1, got 0, 200"),
        ({"max_blocks": 0}, r"`calls` and `max_blocks` must be at least 1, got 1, 0"),
        ({"tolerance": -0.1}, r"`tolerance` must be >= 0, got -0.1"),
        ({"tolerance": float("nan")}, r"`tolerance` must be >= 0, got nan"),
    ],
)
def test_bad_warm_up_settings_are_refused(kwargs, match):
    with pytest.raises(DyncalError, match=match):
        settle(Timer(torch.device("cpu")), lambda: None, **kwargs)


def test_autotuning_is_restored_even_on_error():
    before = torch.backends.cudnn.benchmark
    with pytest.raises(RuntimeError), autotuned():
        assert torch.backends.cudnn.benchmark
        raise RuntimeError("boom")
    assert torch.backends.cudnn.benchmark == before
    with autotuned(False):
        assert not torch.backends.cudnn.benchmark
    assert torch.backends.cudnn.benchmark == before


@pytest.mark.skipif(not CUDA, reason="CUDA events time a CUDA stream; no CUDA device here")
def test_events_time_the_device_stream():
    timer = EventTimer(torch.device("cuda"))
    a = torch.randn(2048, 2048, device="cuda")
    ms = timer.block_ms(lambda: a @ a, calls=5)
    assert timer.label == "cuda_events" and ms > 0
