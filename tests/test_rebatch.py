"""The throughput mode: re-batched early exit answers every row once, in order, as per-batch early exit does."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dyncal.analysis.early_exit import EarlyExitRunner
from dyncal.analysis.rebatch import Rebatcher
from dyncal.analysis.stages import build_stages
from dyncal.calibrate.policy import assign_exits
from dyncal.calibrate.scores import exit_scores
from dyncal.demo import pretrained, validation
from dyncal.errors import DyncalError, ProfileError
from tests.models_zoo import DataDependentStaged

pytestmark = pytest.mark.integration

TEMPS = [1.0, 1.3, 0.8, 1.0]


@pytest.fixture(scope="module")
def demo() -> dict:
    """The trained demo model's stages, 400 validation digits, and every exit's scores on them."""
    net = pretrained()
    x = validation().tensors[0][:400]
    stages = build_stages(net, x[:2])
    with torch.inference_mode():
        logits = torch.stack(list(net(x)), 1).numpy()
    return {"stages": stages, "x": x, "logits": logits}


def _midpoint(sorted_scores: np.ndarray, q: float) -> float:
    """A threshold midway between two neighbouring scores near quantile ``q``, far from both (no float ties)."""
    gaps = np.diff(sorted_scores)
    ok = np.flatnonzero(gaps > 1e-4)
    j = ok[np.argmin(np.abs(ok - int(q * (len(gaps) - 1))))]
    return float((sorted_scores[j] + sorted_scores[j + 1]) / 2)


def _rule(demo: dict, score: str, quantiles: list[float]) -> tuple[EarlyExitRunner, np.ndarray, np.ndarray]:
    """A runner with thresholds at the score quantiles, and the simulated exits and predictions of every row."""
    scores, preds = exit_scores(demo["logits"], score, TEMPS)
    ts = [_midpoint(np.sort(scores[:, j]), q) for j, q in enumerate(quantiles)]
    exits = assign_exits(scores, ts)
    runner = EarlyExitRunner(demo["stages"], [*ts, None], TEMPS, score)
    return runner, exits, preds[np.arange(len(exits)), exits]


def _batches(x: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    out, start = [], 0
    for s in sizes:
        out.append(x[start : start + s])
        start += s
    return out


def _check(got: list[tuple[torch.Tensor, torch.Tensor]], batches: list[torch.Tensor], exits, preds) -> None:
    """Every batch answered once, in order, with its own row count; rows match the simulation."""
    assert [len(e) for e, _ in got] == [len(b) for b in batches]
    assert all(e.dtype == p.dtype == torch.int64 for e, p in got)
    n = sum(len(b) for b in batches)
    np.testing.assert_array_equal(torch.cat([e for e, _ in got]).numpy(), exits[:n])
    np.testing.assert_array_equal(torch.cat([p for _, p in got]).numpy(), preds[:n])


def test_rebatched_rows_match_per_batch_early_exit_and_the_simulation(demo):
    runner, exits, preds = _rule(demo, "maxprob", [0.5, 0.4, 0.3])
    assert len(set(exits.tolist())) == 4, "the thresholds should use every exit"
    batches = _batches(demo["x"], [32] * 12 + [7])  # a ragged final batch
    rb = Rebatcher(runner)
    got = list(rb.map(batches))
    _check(got, batches, exits, preds)
    per_batch = [runner(b) for b in batches]
    for (e, p), (e1, p1) in zip(got, per_batch, strict=True):
        assert torch.equal(e, e1) and torch.equal(p, p1)
    # stage k computed exactly the rows reaching exit k, on full batches but for one flush each
    reached = [int((exits[:391] >= j).sum()) for j in range(4)]
    assert rb.stats.stage_rows == reached
    for calls, full, rows in zip(rb.stats.stage_calls, rb.stats.full_calls, reached, strict=True):
        assert full == rows // 32 and calls - full == int(rows % 32 > 0)
    assert rb.stats.batches == 13


def test_everyone_leaving_at_exit_1_never_runs_later_stages(demo):
    runner = EarlyExitRunner(demo["stages"], [0.0, 2.0, 2.0, None], TEMPS)
    batches = _batches(demo["x"], [16, 16, 5])
    rb = Rebatcher(runner)
    got = list(rb.map(batches))
    assert [e.tolist() for e, _ in got] == [[0] * 16, [0] * 16, [0] * 5]
    np.testing.assert_array_equal(torch.cat([p for _, p in got]).numpy(), demo["logits"][:37, 0].argmax(1))
    assert rb.stats.stage_calls == [3, 0, 0, 0]


def test_nobody_leaving_early_runs_every_stage_on_full_batches(demo):
    runner = EarlyExitRunner(demo["stages"], [2.0, 2.0, 2.0, None], TEMPS)
    rb = Rebatcher(runner, batch_size=10)
    got = list(rb.map(_batches(demo["x"], [4, 4, 4, 4, 4])))
    assert all(e.tolist() == [3] * 4 for e, _ in got)
    assert rb.stats.stage_calls == [2] * 4 and rb.stats.full_calls == [2] * 4


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    score=st.sampled_from(["maxprob", "margin", "entropy"]),
    quantiles=st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3),
    sizes=st.lists(st.integers(0, 23), min_size=1, max_size=9),
    batch_size=st.one_of(st.none(), st.integers(1, 40)),
    max_pending=st.one_of(st.none(), st.integers(1, 3)),
)
def test_any_stream_gives_every_row_its_simulated_exit_in_order(demo, score, quantiles, sizes, batch_size, max_pending):
    runner, exits, preds = _rule(demo, score, quantiles)
    batches = _batches(demo["x"], sizes)
    got = list(runner.map(batches, batch_size=batch_size, max_pending=max_pending))
    _check(got, batches, exits, preds)


def test_an_empty_first_batch_does_not_set_the_full_size(demo):
    runner, exits, preds = _rule(demo, "maxprob", [0.5, 0.4, 0.3])
    batches = _batches(demo["x"], [0, 16, 16, 16, 0, 9])
    rb = Rebatcher(runner)
    _check(list(rb.map(batches)), batches, exits, preds)
    assert rb.stats.full_calls[0] == 3 and rb.stats.stage_calls[0] == 4  # 16-row batches, then the 9 left


def test_results_come_while_the_stream_is_read(demo):
    """Lazy: a batch whose rows all left comes out before the next is read; max_pending bounds the wait."""
    read: list[int] = []

    def stream(n: int) -> Iterator[torch.Tensor]:
        for i in range(n):
            read.append(i)
            yield demo["x"][8 * i : 8 * i + 8]

    everyone_leaves = EarlyExitRunner(demo["stages"], [0.0, 2.0, 2.0, None], TEMPS)
    for i, _ in enumerate(everyone_leaves.map(stream(5))):
        assert len(read) == i + 1

    read.clear()
    runner, _, _ = _rule(demo, "maxprob", [0.5, 0.4, 0.3])
    waits = [len(read) - i for i, _ in enumerate(runner.map(stream(20), max_pending=2))]
    assert len(waits) == 20 and max(waits) <= 3
    read.clear()
    waits = [len(read) - i for i, _ in enumerate(runner.map(stream(20)))]
    assert max(waits) > 3, "without a bound, rows wait for full batches behind them"


def test_bad_input_is_refused_in_one_line(demo):
    runner = EarlyExitRunner(demo["stages"], [0.5, 0.5, 0.5, None], TEMPS)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(DyncalError, match="`batch_size` must be a positive integer"):
            Rebatcher(runner, batch_size=bad)
    with pytest.raises(DyncalError, match="`max_pending` must be a positive integer"):
        Rebatcher(runner, max_pending=0)
    with pytest.raises(DyncalError, match=r"each batch must be a tensor \(B, \.\.\.\); got list"):
        list(runner.map([[1, 2]]))  # type: ignore[list-item]


def test_stages_that_cannot_drop_rows_are_refused():
    model = DataDependentStaged().eval()
    stages = build_stages(model, torch.zeros(4, 8))
    stages.forbid_dropping_rows("rows depend on each other (test)")
    runner = EarlyExitRunner(stages, [0.5, None], [1.0, 1.0])
    with pytest.raises(ProfileError, match="throughput mode pools the rows that continue"):
        Rebatcher(runner)


@pytest.fixture(scope="module")
def package(demo_package: dict) -> dict:
    """The demo run (collected, MACs profiled), solved at 0.5x and exported."""
    import dyncal
    from dyncal.data import load_dataset
    from dyncal.verbs.demo import DEMO_DATA

    th = demo_package["th"]
    run = dyncal.load_run(demo_package["run"])
    ds = load_dataset(DEMO_DATA)
    x = torch.stack([ds[int(i)][0] for i in run.indices])
    scores, preds = exit_scores(np.asarray(run.logits), th.score, th.temperatures)
    exits = assign_exits(scores, [t for t in th.thresholds if t is not None])
    sim = (exits, preds[np.arange(len(exits)), exits])
    return {"runner": dyncal.load_early_exit(demo_package["pkg"]), "x": x, "sim": sim, "pkg": demo_package["pkg"]}


def test_a_package_runner_rebatches_like_it_early_exits(package):
    runner = package["runner"]
    batches = _batches(package["x"], [32] * 9 + [11])
    got = list(runner.map(batches))
    runner.reset_counts()
    per_batch = [runner(b) for b in batches]
    for (e, p), (e1, p1) in zip(got, per_batch, strict=True):
        assert torch.equal(e, e1) and torch.equal(p, p1)
    assert len(set(torch.cat([e for e, _ in got]).tolist())) >= 3


def test_a_package_runner_maps_every_row_once_in_order_as_the_simulation(package):
    runner = package["runner"]
    exits, preds = package["sim"]
    assert len(set(exits.tolist())) >= 3, "the thresholds should use several exits"
    for sizes in ([64] * 7 + [29], [1, 7, 100, 3, 0, 50], [len(exits)]):
        batches = _batches(package["x"], sizes)
        runner.reset_counts()
        got = list(runner.map(batches))
        _check(got, batches, exits, preds)
        n = sum(sizes)
        reached = [int((exits[:n] >= j).sum()) for j in range(runner.k)]
        assert runner.stage_rows == reached, "each stage computed exactly the rows that reach its exit"


def test_a_package_runner_maps_batches_that_all_leave_at_exit_1(package):
    import dyncal

    pkg = package["runner"]
    everyone_leaves = type(pkg)(pkg.path, pkg.manifest, pkg._programs, pkg.device, pkg.manifest_sha256)
    everyone_leaves.thresholds = [0.0] + everyone_leaves.thresholds[1:]  # maxprob >= 0: all leave at exit 1
    batches = _batches(package["x"], [16, 16, 5])
    got = list(everyone_leaves.map(batches))
    assert [e.tolist() for e, _ in got] == [[0] * 16, [0] * 16, [0] * 5]
    assert everyone_leaves.stage_calls == [3] + [0] * (pkg.k - 1)
    assert dyncal.load_early_exit(package["pkg"]).thresholds == pkg.thresholds  # the package itself is unchanged


def test_a_package_runner_refuses_a_bad_batch_in_the_stream_in_one_line(package):
    runner = package["runner"]
    good = package["x"][:4]
    with pytest.raises(DyncalError, match=r"input of shape \(4, 64\) but the package takes \(B, 1, 8, 8\)"):
        list(runner.map([good, good.reshape(4, 64)]))
    with pytest.raises(DyncalError, match="input of dtype float64 but the package takes float32"):
        list(runner.map([good.double()]))
