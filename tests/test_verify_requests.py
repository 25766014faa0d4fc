"""verify against a fair baseline, per request: the plain deployment, runtimes, and the stored requests."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

import dyncal
from dyncal.analysis.early_exit import EarlyExitRunner
from dyncal.analysis.runtime import RUNTIMES, apply_runtime, runtime_stages
from dyncal.analysis.stages import Stages, build_stages
from dyncal.artifacts.requests import RequestTimings
from dyncal.artifacts.verify import PairedTiming, VerifyResult
from dyncal.errors import DyncalError, ProfileError
from dyncal.verbs.verify import BASELINE, VerifyOptions, verify_run
from tests.test_verify import StepClock

pytestmark = pytest.mark.integration

ROWS = 60


@pytest.fixture(scope="module")
def demo(demo_package: dict) -> dict:
    """The demo run (collected, MACs profiled), solved at 0.5x and exported."""
    return demo_package


def _linear_calls(fn, x: torch.Tensor) -> int:
    """How many times ``aten::linear`` ran in ``fn(x)``: the demo's heads are its only linear layers."""
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        fn(x)
    return sum(e.count for e in prof.key_averages() if e.key == "aten::linear")


def test_verify_times_a_plain_deployment_that_computes_no_intermediate_head(demo):
    """The baseline verify times runs one head of the demo's four: the plain deployment, under the same runtime."""
    from dyncal.verbs.verify import _subject

    run = dyncal.load_run(demo["run"])
    x = torch.randn(5, 1, 8, 8)
    package = str(demo["pkg"])
    for opts in (
        VerifyOptions(),
        VerifyOptions(package=package),
        VerifyOptions(runtime="frozen"),
        VerifyOptions(package=package, runtime="frozen"),  # a package's weights are frozen in too
    ):
        _, _, make = _subject(run, demo["th"], opts, torch.device("cpu"))
        runner, plain = make(x[:4])
        exits, _ = plain(x)
        assert exits.tolist() == [0] * 5  # one stage, no exit decision: every row leaves at its only exit
        if opts.runtime == "eager":
            assert _linear_calls(plain, x) == 1
            assert _linear_calls(runner.stages.run, x) == run.k  # every head, as the old baseline computed


def test_the_package_deploys_its_last_exit_alone(demo):
    pkg = dyncal.load_early_exit(demo["pkg"])
    x = torch.randn(6, 1, 8, 8)
    full = pkg.full_model(x)
    assert torch.allclose(pkg.plain_model(x), full[-1], atol=1e-5)
    assert _linear_calls(pkg.plain_model, x) == 1 and _linear_calls(pkg.full_model, x) == len(full)
    with pytest.raises(DyncalError, match="input of shape"):
        pkg.plain_model(torch.zeros(2, 3))


def test_requests_are_stored_and_round_trip(demo, tmp_path):
    # What is stored, not how fast: a clock that moves a fixed step per read keeps it machine-independent.
    result = verify_run(
        demo["run"], demo["th"], limit=ROWS, batch_sizes=(1, 4), max_seconds=600, repeats=2, clock=StepClock(1e-4)
    )
    assert result.settings["baseline"] == BASELINE and result.settings["runtime"]["runtime"] == "eager"
    b1, b8 = result.timings
    r1 = b1.requests
    assert r1 is not None and b8.requests is not None
    assert sorted(r1.rows.tolist()) == list(range(ROWS)) and r1.units == ROWS  # every row timed, one per request
    assert r1.coverage() == f"{ROWS} of {ROWS} requests timed"
    assert np.array_equal(r1.early_exit_ms, np.asarray(b1.early_exit_ms))
    assert np.array_equal(r1.plain_ms, np.asarray(b1.full_model_ms))
    sim = np.asarray(result.simulated_exit_shares)
    assert np.allclose(np.bincount(r1.exits, minlength=len(sim)) / ROWS, result.runtime_exit_shares)
    assert b8.requests.units == ROWS // 4 and b8.requests.batch_size == 4
    assert b1.estimate.estimator in ("min", "mean") and b1.estimate.asked == "auto"
    path = tmp_path / "verify.json"
    result.save(path)
    doc = json.loads(path.read_text())
    stored = doc["timings"][0]
    assert stored["requests"]["rows"] == r1.rows.tolist() and stored["estimate"]["estimator"] == stored["estimator"]
    back = VerifyResult.load(path)
    again = back.timings[0].requests
    assert again is not None and np.array_equal(again.exits, r1.exits)
    assert again.to_dict() == r1.to_dict()
    assert back.timings[0].speedup == b1.speedup


def test_a_time_bound_times_every_exit_and_says_how_many(demo):
    """A clock moving 1 ms per read stops batch 1 early; the stratified order still reaches every exit."""
    result = verify_run(
        demo["run"], demo["th"], limit=ROWS, batch_sizes=(1,), max_seconds=0.15, repeats=2, clock=StepClock(1e-3)
    )
    r = result.timings[0].requests
    assert r is not None and 3 <= r.units < ROWS
    taken = set(np.flatnonzero(np.asarray(result.simulated_exit_shares) > 0).tolist())
    assert set(r.unit_exits.tolist()) == taken and r.unrepresented_exits == []
    assert r.coverage().startswith(f"{r.units} of {ROWS} requests timed (time bound 0.15 s)")
    assert result.settings["coverage"]["cpu/b1"]["requests"] == r.coverage()
    assert result.agreement == 1.0  # the rows the bound left out were replayed untimed


def test_frozen_runtime_keeps_the_exits_exact(demo):
    result = verify_run(
        demo["run"], demo["th"], limit=32, batch_sizes=(1, 8), max_seconds=600, repeats=2, runtime="frozen",
        clock=StepClock(1e-4),
    )  # fmt: skip
    assert result.agreement == 1.0 and result.settings["runtime"]["runtime"] == "frozen"


@pytest.mark.skip(reason="torch.compile's first compilation takes minutes on a loaded CPU; benchmarks run it")
def test_compiled_runtime_keeps_the_exits_exact(demo):  # pragma: no cover - see the reason
    result = verify_run(demo["run"], demo["th"], limit=32, batch_sizes=(1,), max_seconds=600, runtime="compiled")
    assert result.agreement == 1.0


class _SizeDependent(nn.Module):
    """A stage whose Python control flow reads the batch size: a trace keeps the branch it saw."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (x * 2 if x.shape[0] > 2 else x,)


def test_a_stage_the_trace_cannot_reproduce_is_refused_in_one_line():
    stages = Stages([_SizeDependent()], batch_dims=[()], source="function")
    with pytest.raises(ProfileError, match=r"do not reproduce exit 1 at batch size 1.*use `runtime` eager"):
        runtime_stages(stages, "frozen", example=torch.randn(4, 3))


def test_every_runtime_is_named_and_an_unknown_one_refused():
    from dyncal.demo import DigitsExitNet

    stages = build_stages(DigitsExitNet().eval(), torch.zeros(2, 1, 8, 8))
    runner = EarlyExitRunner(stages, [0.5, 0.5, 0.5, None], [1.0] * 4)
    assert set(RUNTIMES) == {"eager", "frozen", "compiled", "graphs"}
    assert apply_runtime(runner, "eager", example=torch.zeros(2, 1, 8, 8), max_batch_size=4) is runner
    with pytest.raises(DyncalError, match="`runtime` must be one of eager, frozen, compiled, graphs"):
        apply_runtime(runner, "fast", example=torch.zeros(2, 1, 8, 8), max_batch_size=4)
    with pytest.raises(DyncalError, match="`runtime` must be one of"):
        VerifyOptions(runtime="fast")
    with pytest.raises(DyncalError, match="`estimator` must be one of auto, min, mean, median-ratio"):
        VerifyOptions(estimator="max")


def test_an_old_document_keeps_its_estimator_and_a_mismatched_one_is_refused():
    t = PairedTiming("cpu/b1", 1, ((1.0, 1.2), (3.0, 3.0)), ((4.0, 4.1), (4.0, 4.2)))
    doc = t.to_dict()
    del doc["estimator_asked"], doc["requests"]
    assert PairedTiming.from_dict(doc).estimate.estimator == "median-ratio"
    requests = RequestTimings("cpu/b1", 1, np.arange(2), np.zeros(2, int), np.ones((2, 2)), np.ones((2, 2)), n_exits=1)
    with pytest.raises(ValueError, match="other milliseconds"):
        PairedTiming.from_dict({**t.to_dict(), "requests": requests.to_dict()})
    with pytest.raises(DyncalError, match="not the same timings"):
        PairedTiming("cpu/b32", 32, ((1.0, 1.2),), ((4.0, 4.1),), requests=requests)


def test_cli_verify_prints_the_distribution_and_stores_the_requests(cli, demo, tmp_path):
    out = tmp_path / "v.json"
    res = cli(
        "verify", demo["run"], "--thresholds", demo["tmp"] / "th.json", "--limit", 40, "--batch-size", "1",
        "--max-seconds", 600, "--repeats", 2, "--runtime", "frozen", "--out", out,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "ms per request at cpu/b1: 40 of 40 requests timed" in res.output
    assert "p99" in res.output and "at exit" in res.output and "by the " in res.output
    doc = json.loads(out.read_text())
    assert doc["settings"]["runtime"]["runtime"] == "frozen" and len(doc["timings"][0]["requests"]["rows"]) == 40
    bad = cli("verify", demo["run"], "--thresholds", demo["tmp"] / "th.json", "--runtime", "fast")
    assert bad.exit_code == 1 and "--runtime must be one of" in bad.output and "Traceback" not in bad.output


def test_profile_times_the_plain_deployment_as_the_full_model():
    """profile's full-model figure is the plain deployment too; a model without one keeps every head, and says so."""
    from dyncal.analysis.latency import PLAIN_FIGURE, LatencySettings, _plain_call, measure_latency
    from dyncal.demo import DigitsExitNet
    from tests.models_zoo import DataDependentStaged

    net = DigitsExitNet().eval()
    x = torch.randn(3, 1, 8, 8)
    stages = build_stages(net, torch.zeros(2, 1, 8, 8))
    call, what = _plain_call(stages, net, x)
    assert what == PLAIN_FIGURE and _linear_calls(lambda _: call(), x) == 1
    prof = measure_latency(stages, net, x, LatencySettings(repeats=3, warmup=1, min_block_ms=0.0))
    assert prof.settings["full_model"] == PLAIN_FIGURE
    odd = DataDependentStaged().eval()  # stages declared by hand, a model torch.export cannot capture
    odd_stages = build_stages(odd, torch.zeros(2, 8))
    _, what = _plain_call(odd_stages, odd, torch.zeros(2, 8))
    assert what.startswith("the model with every head (no plain deployment:")
