"""A demo-like synthetic run for the tail tests: 4 exits, later ones more accurate, MACs, a batch-1 latency profile."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from synthetic_profiles import spread_profile

from dyncal.artifacts.costs import CostTable, LatencyProfile
from dyncal.artifacts.run import store_costs
from dyncal.artifacts.run_document import Provenance
from dyncal.artifacts.run_import import import_arrays

K, N, C = 4, 600, 5
WEIGHTS = "0" * 64
STAGE_MS = (0.4, 0.3, 0.4, 0.5)


def batch1_profile(stage_ms: tuple[float, ...] = STAGE_MS) -> LatencyProfile:
    """A cpu/b1 profile: the stages' ms (each timed 5 times within 1%), 0.02 ms per exit decision."""
    return spread_profile(1, stage_ms, decision_ms=0.02, full_model_ms=sum(stage_ms), reps=5, spread=0.01, threads=2)


def tail_run(root: Path, *, latency: bool = True) -> Path:
    """Write the run under ``root / "run"`` (with the cpu/b1 profile unless ``latency`` is False)."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, C, N)
    z = rng.normal(size=(N, K, C)).astype(np.float32)
    for k in range(K):
        z[np.arange(N), k, y] += 0.8 + 0.9 * k  # deeper exits: more confident and more often right
    prov = Provenance(
        model="tests:synthetic",
        weights_sha256=WEIGHTS,
        data="tests:synthetic",
        command="dyncal import",
        created="2026-12-01T00:00:00+00:00",
        device="cpu",
        versions={"dyncal": "test"},
    )
    macs = (1e6, 2e6, 3e6, 4e6)
    run = import_arrays(z, y, root / "run", macs=macs, provenance=prov)
    if latency:
        store_costs(run, CostTable(macs=macs, latency={"cpu/b1": batch1_profile()}))
    return run.path
