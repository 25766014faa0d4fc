"""Throughput of the early exit's modes against the plain deployment: what is recorded and what is advised."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from dyncal.analysis.early_exit import EarlyExitRunner
from dyncal.analysis.latency import Timer
from dyncal.analysis.plain import plain_deployment, plain_runner
from dyncal.analysis.stages import build_stages
from dyncal.analysis.throughput import MODES, ThroughputResult, macs_ratio, measure_throughput
from dyncal.errors import DyncalError
from tests.models_zoo import LinearStack


def _result(per_batch: float, rebatched: float, plain: float = 1.0, **kw) -> ThroughputResult:
    """A result whose modes took these seconds (three equal replicates each) for 64 samples."""
    fields = {
        "runtime": "graphs",
        "timer": "cuda_events",
        "batch_size": 32,
        "samples": 64,
        "seconds": {"per_batch": (per_batch,) * 3, "rebatched": (rebatched,) * 3, "plain": (plain,) * 3},
        "agreement": 1.0,
        "exit_shares": (0.5, 0.25, 0.25),
        "macs_ratio": 2.0,
    } | kw
    return ThroughputResult(**fields)


def test_per_batch_early_exit_is_advised_when_it_beats_the_plain_deployment():
    r = _result(0.5, 0.6)
    assert r.recommendation == "per_batch" and r.speedup("per_batch") == 2.0 and r.samples_per_s("plain") == 64.0
    assert "pays batch by batch at batch 32" in r.advice and "faster still" not in r.advice
    assert "throughput mode (runner.map) is faster still" in _result(0.5, 0.3).advice


def test_the_throughput_mode_is_advised_when_per_batch_early_exit_loses():
    r = _result(1.25, 0.625)
    assert r.recommendation == "rebatched"
    assert r.speedup("rebatched") == 1.6 and r.share_of_macs_ratio("rebatched") == 0.8
    assert "per-batch early exit loses at batch 32 (per_batch 0.80x, rebatched 1.60x)" in r.advice
    assert "runner.map" in r.advice


def test_the_plain_model_is_advised_when_no_mode_pays():
    r = _result(2.0, 1.0)
    assert r.recommendation == "plain" and "deploy the plain model" in r.advice and "under graphs" in r.advice
    assert _result(2.0, 1.0, macs_ratio=None).share_of_macs_ratio("rebatched") is None


def test_a_result_round_trips_through_json_ready_dicts():
    r = _result(1.25, 0.625, seconds={"per_batch": (1.0, 1.5, 1.25), "rebatched": (0.5, 0.7, 0.6), "plain": (1, 1, 1)})
    d = r.to_dict()
    assert d["recommendation"] == "rebatched" and d["speedup"]["plain"] == 1.0
    assert d["spread"]["per_batch"] == pytest.approx(0.25 / 1.25)
    assert ThroughputResult.from_dict(d) == r
    with pytest.raises(DyncalError, match="throughput result version 7 is not 1; measure again"):
        ThroughputResult.from_dict(d | {"version": 7})


def test_macs_ratio_is_plain_over_the_mean_exit_cost():
    assert macs_ratio([176, 480, 784], np.array([0, 0, 1, 2]), 688) == pytest.approx(688 / 404)


@pytest.fixture(scope="module")
def linear() -> dict:
    torch.manual_seed(0)
    model = LinearStack().eval()
    stages = build_stages(model, torch.zeros(2, 8))
    x = torch.randn(70, 8)
    return {"stages": stages, "batches": [x[i : i + 16] for i in range(0, 70, 16)]}


def _ticks() -> Timer:
    """A timer whose clock advances one second per reading: every block lasts 1 s, whatever runs."""
    counter = itertools.count()
    return Timer(torch.device("cpu"), clock=lambda: float(next(counter)))


@pytest.mark.integration
def test_every_mode_is_timed_over_the_same_rows_and_the_early_exits_agree(linear):
    runner = EarlyExitRunner(linear["stages"], [0.4, 0.4, None], [1.0] * 3)
    plain = plain_runner(plain_deployment(linear["stages"]))
    res = measure_throughput(
        runner, plain, linear["batches"], timer=_ticks(), repeats=4, exit_macs=[176, 480, 784], plain_macs=688
    )
    assert set(res.seconds) == set(MODES) and all(s == (1.0,) * 4 for s in res.seconds.values())
    assert res.samples == 70 and res.batch_size == 16 and res.agreement == 1.0 and res.timer == "<lambda>"
    exits = torch.cat([runner(b)[0] for b in linear["batches"]]).numpy()
    assert res.exit_shares == pytest.approx(tuple(np.bincount(exits, minlength=3) / 70))
    assert res.macs_ratio == pytest.approx(macs_ratio([176, 480, 784], exits, 688))
    only = measure_throughput(runner, plain, linear["batches"], timer=_ticks(), repeats=3, modes=["per_batch"])
    assert set(only.seconds) == {"per_batch", "plain"} and only.macs_ratio is None


@pytest.mark.integration
def test_agreement_is_measured_against_the_expected_rows(linear):
    runner = EarlyExitRunner(linear["stages"], [0.4, 0.4, None], [1.0] * 3)
    plain = plain_runner(plain_deployment(linear["stages"]))
    exits = torch.cat([runner(b)[0] for b in linear["batches"]]).numpy()
    preds = torch.cat([runner(b)[1] for b in linear["batches"]]).numpy()
    wrong = exits.copy()
    wrong[:7] = (wrong[:7] + 1) % 3
    for want, agreement in (((exits, preds), 1.0), ((wrong, preds), 1 - 7 / 70)):
        res = measure_throughput(runner, plain, linear["batches"], timer=_ticks(), repeats=3, expected=want)
        assert res.agreement == pytest.approx(agreement)
    with pytest.raises(DyncalError, match=r"`expected` must hold 70 exits and predictions, one per row"):
        measure_throughput(runner, plain, linear["batches"], timer=_ticks(), repeats=3, expected=(exits[:5], preds))


@pytest.mark.integration
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batches": []}, r"`batches` is empty"),
        ({"repeats": 2}, r"`repeats` must be at least 3 to give a spread, got 2"),
        ({"modes": ["fast", "plain"]}, r"`modes` must be among per_batch, rebatched, plain, got fast"),
    ],
)
def test_bad_settings_are_refused(linear, kwargs, match):
    runner = EarlyExitRunner(linear["stages"], [0.4, 0.4, None], [1.0] * 3)
    plain = plain_runner(plain_deployment(linear["stages"]))
    args = {"batches": linear["batches"]} | kwargs
    with pytest.raises(DyncalError, match=match):
        measure_throughput(runner, plain, args.pop("batches"), **args)
