"""Bucketed stages: which bucket a batch takes, and that padding to it never changes a row.

On the CPU the CUDA graph is replaced by the stage called on the same padded static
buffers (``backend="eager"``), so the padding, copying and slicing are the code under test;
capture itself runs only where CUDA is (skipped with the reason otherwise).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dyncal.analysis.early_exit import EarlyExitRunner
from dyncal.analysis.graphs import (
    BucketedStages,
    bucket_for,
    bucket_sizes,
    default_runtime,
    graph_stages,
    with_runtime,
)
from dyncal.analysis.plain import plain_deployment, plain_runner
from dyncal.analysis.stages import build_stages
from dyncal.demo import pretrained, validation
from dyncal.errors import DyncalError, ProfileError
from tests.models_zoo import ConvStack, LinearStack

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="CUDA graphs are captured only on a CUDA device; none here")


# --------------------------------------------------------------------------- buckets


@given(st.integers(1, 5000))
def test_buckets_are_powers_of_two_then_the_largest_batch(m):
    b = bucket_sizes(m)
    assert b[-1] == m and list(b) == sorted(set(b))
    assert all(s & (s - 1) == 0 for s in b[:-1]) and all(s < m for s in b[:-1])
    assert len(b) == m.bit_length() + (m & (m - 1) != 0) if m > 1 else b == (1,)


@given(st.integers(1, 600), st.integers(-2, 700))
def test_a_batch_takes_the_smallest_bucket_that_holds_it(m, n):
    b = bucket_sizes(m)
    got = bucket_for(n, b)
    if n < 1 or n > m:
        assert got is None
    else:
        assert got is not None and got >= n and all(s < n for s in b if s < got)
        assert got < 2 * n or got == b[0]  # padding at most doubles a batch


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, None])
def test_bad_largest_batch_is_refused(bad):
    with pytest.raises(DyncalError, match=r"`max_batch_size` must be a positive integer, got"):
        bucket_sizes(bad)


def test_default_runtime_is_graphs_on_cuda_only():
    assert default_runtime("cpu") == "eager"
    assert default_runtime(torch.device("cuda", 1)) == "graphs"


# --------------------------------------------------------------------------- padding on the CPU


@pytest.fixture(scope="module")
def demo() -> dict:
    net = pretrained()
    x = validation().tensors[0][:300]
    return {"net": net, "stages": build_stages(net, x[:2]), "x": x}


def _rule(stages, t: float = 0.9) -> EarlyExitRunner:
    return EarlyExitRunner(stages, [t, t, t, None], [1.0] * 4)


@pytest.mark.integration
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=5),
    largest=st.integers(1, 33),
    t=st.sampled_from([0.5, 0.8, 0.95, 0.999]),
)
def test_padding_to_a_bucket_never_changes_a_prediction(demo, sizes, largest, t):
    """Any sequence of batch sizes (above the largest bucket too: eager), any thresholds."""
    eager = _rule(demo["stages"], t)
    padded_stages = graph_stages(demo["stages"], largest, backend="eager")
    padded = _rule(padded_stages, t)
    start = 0
    for n in sizes:
        x = demo["x"][start : start + n]
        start = (start + n) % 250
        e0, p0 = eager(x)
        e1, p1 = padded(x)
        assert torch.equal(e0, e1) and torch.equal(p0, p1)
    first = padded_stages.bucketed[0]
    assert first.rows == sum(sizes)
    assert first.padded_rows == sum(bucket_for(n, bucket_sizes(largest)) or n for n in sizes)
    assert first.eager_calls == sum(n > largest for n in sizes)


@pytest.mark.integration
def test_rows_left_from_an_earlier_call_do_not_leak_into_a_smaller_one(demo):
    stages = graph_stages(demo["stages"], 8, backend="eager")
    x = demo["x"]
    stages.run(x[:8])  # the bucket of 8 now holds these rows
    for n in (5, 7, 6):  # rows 5.. of the buffer keep what the previous call left
        got = stages.run(x[100 : 100 + n])
        want = demo["stages"].run(x[100 : 100 + n])
        for a, b in zip(got, want, strict=True):
            assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
    assert stages.info.graphs == 4  # one bucket (8), four stages: captured once, replayed after
    assert stages.info.memory_bytes == 0 and stages.info.backend == "eager"


@pytest.mark.integration
def test_outputs_are_copied_out_of_the_static_buffers(demo):
    """A later replay overwrites the static outputs; what a caller holds must not change (unless told)."""
    x = demo["x"]
    for clone, survives in ((True, True), (False, False)):
        stages = graph_stages(demo["stages"], 4, backend="eager", clone_outputs=clone)
        first = stages.modules[0](x[:4])[0]
        kept = first.clone()
        stages.modules[0](x[4:8])
        assert torch.equal(first, kept) is survives


@pytest.mark.integration
def test_capture_at_load_fills_every_bucket_and_the_rebatched_stream_is_unchanged(demo):
    stages = graph_stages(demo["stages"], 16, backend="eager", example=demo["x"][:3])
    assert stages.info.graphs == 4 * 5 and stages.info.buckets == (1, 2, 4, 8, 16)
    runner = _rule(stages)
    batches = [demo["x"][i : i + 16] for i in range(0, 150, 16)]
    got = list(runner.map(batches))
    want = [_rule(demo["stages"])(b) for b in batches]
    for (e, p), (e1, p1) in zip(got, want, strict=True):
        assert torch.equal(e, e1) and torch.equal(p, p1)
    assert stages.info.graphs == 20 and stages.info.eager_calls == 0


@pytest.mark.integration
def test_the_plain_deployment_runs_under_the_same_runtime(demo):
    plain = plain_deployment(demo["stages"])
    runner = with_runtime(plain_runner(plain), "eager", max_batch_size=8)
    padded = graph_stages(plain, 8, backend="eager")
    x = demo["x"][:13]
    with torch.inference_mode():
        want = demo["net"](x)[-1].argmax(1)
    for r in (runner, plain_runner(padded)):
        exits, preds = r(x)
        assert torch.equal(preds, want) and exits.tolist() == [0] * 13


def test_stages_whose_rows_depend_on_each_other_are_refused():
    stages = build_stages(LinearStack().eval(), torch.zeros(2, 8))
    stages.forbid_dropping_rows("rows depend on each other (test)")
    with pytest.raises(ProfileError, match="pad a batch with other rows.*use `runtime` eager"):
        graph_stages(stages, 8, backend="eager")


def test_runtime_names_and_devices_are_checked():
    stages = build_stages(ConvStack().eval(), torch.zeros(2, 3, 8, 8))
    runner = EarlyExitRunner(stages, [0.5, 0.5, None], [1.0] * 3)
    assert with_runtime(runner, "eager", max_batch_size=4) is runner
    with pytest.raises(DyncalError, match=r"`runtime` must be one of eager, graphs, got 'fast'"):
        with_runtime(runner, "fast", max_batch_size=4)
    with pytest.raises(DyncalError, match=r"`backend` must be 'cuda' or 'eager'"):
        BucketedStages(stages, 4, backend="tpu")  # type: ignore[arg-type]
    if not CUDA:
        with pytest.raises(ProfileError, match=r"`runtime` graphs needs a CUDA device"):
            with_runtime(runner, "graphs", max_batch_size=4)


# --------------------------------------------------------------------------- CUDA


@needs_cuda
@pytest.mark.integration
def test_cuda_graphs_reproduce_the_eager_early_exit(demo):
    dev = torch.device("cuda")
    net = pretrained().to(dev)
    stages = build_stages(net, demo["x"][:2].to(dev))
    graphed = with_runtime(_rule(stages), "graphs", max_batch_size=32, example=demo["x"][:5].to(dev))
    info = graphed.stages.info
    assert info.graphs == 4 * 6 and info.memory_bytes > 0 and info.backend == "cuda"
    eager = _rule(stages)
    for n in (1, 3, 17, 32, 40):
        x = demo["x"][:n].to(dev)
        e0, p0 = eager(x)
        e1, p1 = graphed(x)
        np.testing.assert_array_equal(e0.cpu().numpy(), e1.cpu().numpy())
        np.testing.assert_array_equal(p0.cpu().numpy(), p1.cpu().numpy())
    assert graphed.stages.info.eager_calls >= 1  # 40 rows: above the largest bucket
