"""``dyncal solve --max-latency-ms``: thresholds within the mean budget whose predicted tail keeps its bound.

End to end through the CLI on a demo-like synthetic run (4 exits, profiled batch-1 latency),
and as a property through :func:`~dyncal.calibrate.solvers.solve_run` on the same run: the
predicted percentile on the fit samples, recomputed here from the thresholds written, never
exceeds the bound.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_clean_error
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tail_runs import tail_run

from dyncal.artifacts.run import load_run
from dyncal.artifacts.thresholds import thresholds_from_json
from dyncal.calibrate.budget import cost_units
from dyncal.calibrate.policy import assign_exits
from dyncal.calibrate.prepare import prepare_run
from dyncal.calibrate.solvers import solve_run
from dyncal.calibrate.tail import predicted_percentile_ms
from dyncal.errors import DyncalError


@pytest.fixture(scope="module")
def run_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tail_run(tmp_path_factory.mktemp("solve_tail"))


@pytest.fixture(scope="module")
def per_exit_ms(run_path: Path) -> tuple[float, ...]:
    run = load_run(run_path)
    return cost_units(run.costs, run.k)["ms:cpu/b1"]


def _fit_tail(run_path: Path, doc: dict, per_exit: tuple[float, ...], percentile: float) -> float:
    """The percentile predicted on the fit rows, recomputed from the written thresholds (split as solve split)."""
    prep = prepare_run(load_run(run_path), holdout=doc["split"]["holdout"], seed=doc["split"]["seed"])
    exits = assign_exits(prep.scores[prep.fit_idx], thresholds_from_json(doc["thresholds"]))
    return predicted_percentile_ms(exits, per_exit, percentile)


def test_solve_keeps_the_tail_bound_end_to_end(run_path: Path, per_exit_ms, tmp_path: Path, cli):
    free = tmp_path / "free.json"
    res = cli("solve", run_path, "--budget", "0.8x", "--out", free, "--json")
    assert res.exit_code == 0, res.output
    free_doc = json.loads(res.stdout)
    bound = (per_exit_ms[1] + per_exit_ms[2]) / 2  # exits 3 and 4 are slow
    assert _fit_tail(run_path, free_doc, per_exit_ms, 90.0) > bound  # unconstrained, the p90 is too slow: it binds

    out = tmp_path / "tail.json"
    res = cli("solve", run_path, "--budget", "0.8x", "--max-latency-ms", f"p90={bound}", "--out", out, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert json.loads(out.read_text())["thresholds"] == doc["thresholds"]
    assert _fit_tail(run_path, doc, per_exit_ms, 90.0) <= bound
    tail = doc["budget"]["tail"]
    assert (tail["percentile"], tail["bound_ms"], tail["latency"], tail["slow_exits"]) == (
        90.0,
        bound,
        "cpu/b1",
        [3, 4],
    )
    assert tail["fit_ms"] == pytest.approx(_fit_tail(run_path, doc, per_exit_ms, 90.0))
    assert tail["holdout_ms"] is not None
    assert doc["budget"]["met"] <= doc["budget"]["value"]
    assert doc["calibration_accuracy"] <= free_doc["calibration_accuracy"]  # the tail costs accuracy, never adds
    shares = np.asarray(doc["exit_shares"])
    assert shares[2:].sum() <= 0.1 + 1e-9  # at most 10% of the fit rows reach the slow exits

    res = cli("solve", run_path, "--budget", "0.8x", "--max-latency-ms", f"p90={bound}", "--out", tmp_path / "t.json")
    assert res.exit_code == 0, res.output
    assert f"tail: p90 latency per request predicted {tail['fit_ms']:.4g} ms on the fit part" in res.stdout
    assert "exits slower than the bound: 3, 4" in res.stdout


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (
            ["--max-latency-ms", "p99=0.1"],
            r"p99 bound of 0.1 ms is below exit 1's latency .* raise the bound to at least",
        ),
        (["--max-latency-ms", "p99<2"], "--max-latency-ms must look like p99=2.5"),
        (["--max-latency-ms", "p99=2", "--max-drop", "0.01"], "--max-latency-ms constrains a solve at a --budget"),
        (["--max-latency-ms", "p99=2", "--device", "cuda"], "--max-latency-ms bounds the latency of one request"),
    ],
)
def test_an_unreachable_or_malformed_tail_is_one_line(run_path: Path, tmp_path: Path, cli, args, pattern):
    out = tmp_path / "t.json"
    assert_clean_error(cli("solve", run_path, "--budget", "0.8x", "--out", out, *args), pattern)
    assert not out.exists()


def test_a_run_without_batch_1_latency_is_told_to_profile(tmp_path: Path, cli):
    path = tail_run(tmp_path, latency=False)
    res = cli("solve", path, "--budget", "0.8x", "--max-latency-ms", "p99=2", "--out", tmp_path / "t.json")
    assert_clean_error(res, "--max-latency-ms bounds the latency of one request, so it needs batch 1: .*dyncal profile")


@settings(deadline=None, max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    percentile=st.sampled_from([50.0, 90.0, 95.0, 99.0, 99.5, 100.0]),
    bound_at=st.integers(0, 3),
    above=st.sampled_from([0.0, 1e-6, 0.05]),
    budget=st.sampled_from(["0.4x", "0.6x", "0.8x", "1x"]),
    method=st.sampled_from(["smoothed", "optimal", "geometric"]),
)
def test_the_solve_never_exceeds_its_bound_on_the_fit_data(
    run_path: Path, per_exit_ms, percentile, bound_at, above, budget, method
):
    bound = float(sorted(per_exit_ms)[bound_at]) + above
    try:
        doc = solve_run(load_run(run_path), budget, method=method, max_latency_ms=f"p{percentile:g}={bound}").to_dict()
    except DyncalError as e:
        assert method == "geometric" and "no geometric solution fits" in str(e)
        return
    assert _fit_tail(run_path, doc, per_exit_ms, percentile) <= bound
    assert doc["budget"]["tail"]["fit_ms"] <= bound and doc["budget"]["met"] <= doc["budget"]["value"] + 1e-9
