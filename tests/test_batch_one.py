"""The runner at batch 1 decides on the host (one float per exit): the same decisions as the tensor comparison."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dyncal.analysis.early_exit import EarlyExitRunner
from dyncal.analysis.package_telemetry import early_exit_one
from dyncal.analysis.stages import build_stages
from dyncal.demo import pretrained, validation

pytestmark = pytest.mark.integration

SCORES = ("maxprob", "margin", "entropy")


@pytest.fixture(scope="module")
def demo() -> dict:
    """The trained demo model's stages and 60 validation digits."""
    x = validation().tensors[0][:60]
    return {"stages": build_stages(pretrained(), x[:2]), "x": x}


def _f32_neighbours(v: float) -> list[float]:
    """``v`` as float32, the float32 values either side of it, and doubles between them (they round to one)."""
    f = np.float32(v)
    with np.errstate(over="ignore"):  # the largest float32's neighbour: inf
        up, down = np.nextafter(f, np.float32(np.inf)), np.nextafter(f, np.float32(-np.inf))
    mids = [(float(f) + float(up)) / 2, (float(f) + float(down)) / 2]  # ties: round to even
    nudged = [math.nextafter(m, math.inf) for m in mids] + [math.nextafter(m, -math.inf) for m in mids]
    return [float(f), float(up), float(down), *mids, *nudged, math.nextafter(float(f), math.inf)]


@settings(max_examples=300, deadline=None)
@given(
    score=st.floats(width=32, allow_nan=True, allow_infinity=True),
    threshold=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(-2.0, 2.0)),
    nudge=st.integers(0, 8),
)
def test_the_host_comparison_equals_the_tensor_comparison(demo: dict, score: float, threshold: float, nudge: int):
    """Any float32 score against any double threshold, near it in float32 included: the same decision."""
    near = _f32_neighbours(score) if math.isfinite(score) else [threshold]
    t = near[nudge % len(near)] if nudge else threshold
    runner = EarlyExitRunner(demo["stages"], [t, 2.0, 2.0, None], [1.0] * 4)
    tensor_decision = bool(torch.tensor([score], dtype=torch.float32) >= runner.thresholds[0])
    assert (score >= runner.thresholds32[0]) == tensor_decision


@pytest.mark.parametrize("score", SCORES)
def test_leaves_one_equals_leaving_with_thresholds_at_and_around_the_score(demo: dict, score: str):
    """Thresholds equal to a request's score, a float32 step either side and doubles between: same decision."""
    base = EarlyExitRunner(demo["stages"], [0.5, 0.5, 0.5, None], [1.0, 1.3, 0.8, 1.0], score)
    with torch.inference_mode():
        for i in range(0, 60, 7):
            run = demo["stages"].start(demo["x"][i : i + 1])
            for k in range(3):
                logits = run.step()
                s = float(base._score(logits, k).item())
                for t in _f32_neighbours(s):
                    thresholds: list[float | None] = [0.5, 0.5, 0.5, None]
                    thresholds[k] = t
                    runner = EarlyExitRunner(demo["stages"], thresholds, base.temperatures, score)
                    leave, read = runner.leaves_one(logits, k)
                    assert read == s
                    assert leave == bool(runner.leaving(logits, k)[0].item())


@pytest.mark.parametrize("score", SCORES)
def test_batch_one_answers_as_the_batch_path_row_by_row(demo: dict, score: str):
    """Each row alone (the host decisions) gets the exit and class the batched tensor path gives it.

    (Ties at a threshold are the test above's: a lone row's score may differ from its batched one by a rounding.)
    """
    x = demo["x"]
    probe = EarlyExitRunner(demo["stages"], [0.0, 0.0, 0.0, None], [1.0, 1.3, 0.8, 1.0], score)
    with torch.inference_mode():
        logits = demo["stages"].run(x)
    cuts = []
    for k in range(3):  # midway between two neighbouring scores near the median: batched and lone rows agree
        s = np.sort(probe._score(logits[k], k).numpy())
        cuts.append(float(s[len(s) // 2 - 1] + s[len(s) // 2]) / 2)
    runner = EarlyExitRunner(demo["stages"], [*cuts, None], probe.temperatures, score)
    exits, preds = runner(x)
    assert len(set(exits.tolist())) >= 3  # the rows leave at several exits
    for i in range(x.shape[0]):
        e, p = runner(x[i : i + 1])
        assert (e.item(), p.item()) == (exits[i].item(), preds[i].item())
        e1, p1, (k, pred, read, pending) = early_exit_one(runner, x[i : i + 1])
        assert (e1.item(), p1.item(), k, pred) == (e.item(), p.item(), e.item(), p.item())
        assert len(read) == min(k + 1, 3) and (pending is None) == (k < 3)
        assert e.dtype == torch.int64 and e.shape == (1,) and p.shape == (1,)
