"""Synthetic latency profiles for tests: stage and decision replicates in, measured-looking exit paths out.

``dyncal profile`` times the real early exit at every exit (``exit_path_ms``) and a profile
must carry them. Tests that only choose stage times get exit paths whose medians are what
the early exit costs by hand: stages ``1..k`` plus one exit decision per exit passed (the
last exit makes none). Each exit path keeps its stage's relative spread, so resampling
the replicates still moves the prediction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from dyncal.artifacts.costs import LatencyProfile
from dyncal.measurement import Measurement

Replicates = tuple[tuple[float, ...], ...]


def exit_paths(stage_ms: Sequence[Sequence[float]], decision_ms: Sequence[float]) -> Replicates:
    """Exit-path replicates whose medians are the stage medians ``1..k`` plus ``min(k, K - 1)`` decision medians.

    Replicate ``r`` of exit ``k`` is that median scaled by stage ``k``'s replicate ``r`` over
    the stage's median (an odd number of replicates keeps the median exact).

    Example:
        >>> exit_paths(((1.0, 1.5, 0.5), (2.0, 2.0, 2.0)), (0.5,))
        ((1.5, 2.25, 0.75), (3.5, 3.5, 3.5))
    """
    k = len(stage_ms)
    decision = Measurement(tuple(decision_ms)).median_ms if decision_ms else 0.0
    medians = [Measurement(tuple(r)).median_ms for r in stage_ms]
    totals = np.cumsum(medians) + decision * np.minimum(np.arange(1, k + 1), k - 1)
    return tuple(
        tuple(float(total * (v / m if m > 0 else 1.0)) for v in reps)
        for total, m, reps in zip(totals, medians, stage_ms, strict=True)
    )


def synthetic_profile(
    device: str,
    batch_size: int,
    stage_ms: Sequence[Sequence[float]],
    decision_ms: Sequence[float],
    full_model_ms: Sequence[float],
    threads: int | None = 1,
    hardware: str = "test",
    settings: dict[str, Any] | None = None,
    **extra: Any,
) -> LatencyProfile:
    """A :class:`LatencyProfile` from its replicates; exit paths derived (:func:`exit_paths`) unless in ``extra``."""
    stages = tuple(tuple(float(v) for v in r) for r in stage_ms)
    return LatencyProfile(
        device,
        batch_size,
        stages,
        tuple(float(v) for v in decision_ms),
        tuple(float(v) for v in full_model_ms),
        threads,
        hardware,
        dict(settings or {}),
        **{"exit_path_ms": exit_paths(stages, decision_ms), **extra},
    )


def with_stages(profile: LatencyProfile, stage_ms: Sequence[Sequence[float]]) -> LatencyProfile:
    """``profile`` with other stages (another ``K``) and exit paths derived from them (:func:`exit_paths`)."""
    return dataclasses.replace(
        profile, stage_ms=tuple(tuple(r) for r in stage_ms), exit_path_ms=exit_paths(stage_ms, profile.decision_ms)
    )


def spread_profile(
    batch_size: int,
    stage_ms: Sequence[float],
    *,
    decision_ms: float,
    full_model_ms: float,
    reps: int,
    spread: float,
    scale: float = 1.0,
    exit_path_ms: Sequence[float] | None = None,
    threads: int = 1,
    hardware: str = "test CPU",
) -> LatencyProfile:
    """A CPU profile from medians: ``reps`` replicates evenly within ``±spread`` of each (times ``scale``).

    ``exit_path_ms`` gives the exit paths' medians; by default they are derived (:func:`exit_paths`).
    """
    wiggle = np.linspace(1 - spread, 1 + spread, reps)

    def around(median: float) -> tuple[float, ...]:
        return tuple(float(median * scale * w) for w in wiggle)

    extra = {} if exit_path_ms is None else {"exit_path_ms": tuple(around(p) for p in exit_path_ms)}
    return synthetic_profile(
        "cpu",
        batch_size,
        [around(s) for s in stage_ms],
        [float(decision_ms * w) for w in wiggle],
        around(full_model_ms),
        threads,
        hardware,
        {"repeats": reps},
        **extra,
    )
