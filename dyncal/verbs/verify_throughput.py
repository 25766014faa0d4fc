"""``dyncal verify --throughput``: samples/s of the early exit's modes and the plain deployment on the run's rows.

For each batch size verify timed, :func:`verify_throughput` takes the same rows
(the run's, in verify's shuffled order, as many as :func:`throughput_batches` lets the time
bound pay for) and times, round-robin under one runtime
(:func:`dyncal.analysis.throughput.measure_throughput`):

* per-batch early exit (the latency mode verify just timed in pairs);
* the throughput mode, ``runner.map`` (:mod:`dyncal.analysis.rebatch`): the rows that
  continue are pooled across batches, so every stage runs on full batches;
* the plain deployment (backbone and last head, :mod:`dyncal.analysis.plain`), the
  baseline a team would deploy without early exit.

Both early-exit modes must give every row the simulated exit and prediction (the
agreement); the MACs ratio says what the exits promise, the recommendation which mode to
deploy (:attr:`~dyncal.analysis.throughput.ThroughputResult.recommendation`). Each result is
stored in verify.json under ``throughput`` with its latency key.

Example:
    >>> throughput_batches(plain_batch_ms=2.0, batches=100, budget_s=1.0, repeats=5)
    20
    >>> throughput_batches(plain_batch_ms=500.0, batches=100, budget_s=1.0, repeats=5)   # at least 4
    4
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from dyncal.analysis.early_exit import EarlyExitRunner
from dyncal.analysis.flops import model_macs
from dyncal.analysis.latency import Timer
from dyncal.analysis.throughput import measure_throughput
from dyncal.artifacts.run import Run
from dyncal.artifacts.verify import PairedTiming
from dyncal.errors import DyncalError, user_call

__all__ = [
    "MIN_THROUGHPUT_BATCHES",
    "throughput_batches",
    "verify_throughput",
    "ThroughputSource",
]

log = logging.getLogger(__name__)

MIN_THROUGHPUT_BATCHES = 4
"""Batches timed per batch size at least (the throughput mode pools rows across batches)."""

_PASSES = 3  # untimed passes besides the timed replicates: the agreement passes and a warm-up


class ThroughputSource(Protocol):
    """What verify's session gives the throughput measurement: rows, their simulation, the clock."""

    run: Run
    n: int
    order: np.ndarray
    sim_exits: np.ndarray
    sim_preds: np.ndarray
    timer: Timer

    def stream(self, batches: Sequence[np.ndarray]) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """``(positions, inputs)`` per batch of run positions."""


def throughput_batches(*, plain_batch_ms: float, batches: int, budget_s: float, repeats: int) -> int:
    """Batches to time so that three modes, ``repeats`` replicates and the untimed passes fit ``budget_s``.

    At least :data:`MIN_THROUGHPUT_BATCHES` (or every batch there is), at most ``batches``.
    """
    per_batch_s = 3 * (repeats + _PASSES) * max(plain_batch_ms, 1e-6) / 1e3
    fit = math.floor(budget_s / per_batch_s)
    return int(min(batches, max(MIN_THROUGHPUT_BATCHES, fit)))


def verify_throughput(
    source: ThroughputSource,
    probe: torch.Tensor,
    timed: tuple[EarlyExitRunner, EarlyExitRunner, str],
    timings: Sequence[PairedTiming],
    *,
    repeats: int,
    budget_s: float,
) -> list[dict[str, Any]]:
    """Samples/s of per-batch early exit, the throughput mode and the plain deployment at each batch size timed.

    The plain deployment's MACs (fvcore) give the MACs ratio when the run has MACs per exit
    (a package's or a runtime's stages that fvcore cannot count: the last exit's MACs).

    Args:
        source: Verify's session (rows in replay order, their simulated exits and predictions, the timer).
        probe: A few input rows on the device (to count the plain deployment on).
        timed: ``(early exit, plain deployment, runtime)`` as verify timed them, both under
            the same runtime (recorded).
        timings: Verify's paired timings, one per batch size (they size the rows timed here).
        repeats: Replicates of each mode (at least 3).
        budget_s: Time bound of this measurement, all batch sizes together.

    Returns:
        One document per batch size: :meth:`ThroughputResult.to_dict` with its ``key``.

    Raises:
        DyncalError: The model, the stages or the data set fail (one line).
    """
    runner, plain, runtime = timed
    costs = source.run.costs
    exit_macs = None if costs is None or costs.macs is None else list(costs.macs)
    plain_macs = None if exit_macs is None else float(exit_macs[-1])
    modules = plain.stages.modules
    if exit_macs is not None and len(modules) == 1 and isinstance(modules[0], torch.nn.Module) and runtime == "eager":
        try:
            plain_macs = float(model_macs(modules[0], probe[:1]).macs)
        except DyncalError as e:  # fvcore cannot count it: the last exit's MACs, said in the log
            log.info("the plain deployment's MACs cannot be counted (%s); using the last exit's", e)
    dev = source.timer.device
    reps = max(3, repeats)
    out: list[dict[str, Any]] = []
    for timing in timings:
        b = timing.batch_size
        m = throughput_batches(
            plain_batch_ms=timing.full_model_ms_median,
            batches=math.ceil(source.n / b),
            budget_s=budget_s / len(timings),
            repeats=reps,
        )
        positions = source.order[: min(source.n, m * b)]
        chunks = [positions[s : s + b] for s in range(0, len(positions), b)]
        batches = [x.to(dev) for _, x in source.stream(chunks)]
        log.info("throughput at %s: %d rows in %d batches", timing.key, len(positions), len(batches))
        measure = functools.partial(
            measure_throughput,
            runner,
            plain,
            batches,
            timer=source.timer,
            repeats=reps,
            runtime=runtime,
            modes=("per_batch", "rebatched") if b > 1 else ("per_batch",),
            exit_macs=exit_macs,
            plain_macs=plain_macs,
            expected=(source.sim_exits[positions], source.sim_preds[positions]),
        )
        result = user_call(measure, f"the throughput measurement failed at batch size {b}")
        out.append({"key": timing.key, **result.to_dict()})
    return out
