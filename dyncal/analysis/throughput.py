"""Samples per second of the early exit's modes against the plain deployment, over the same batches.

:func:`measure_throughput` times three ways of answering one list of batches, round-robin so
a drifting machine hits all alike, every replicate the whole list with the device
synchronised at both ends:

* ``per_batch``: the early exit on each batch as it comes (the latency mode; batches shrink
  as rows leave);
* ``rebatched``: the throughput mode (:mod:`dyncal.analysis.rebatch`), every stage on full
  batches pooled across input batches;
* ``plain``: the plain deployment (:mod:`dyncal.analysis.plain`: backbone and last head)
  on each batch.

The caller puts all three under one runtime (:func:`dyncal.analysis.graphs.with_runtime`),
and the result says which. It also says whether the two early-exit modes answered every
row alike, the MACs ratio the exits promise (the plain deployment's MACs over the mean
early-exit MACs), and which mode to deploy (:attr:`ThroughputResult.recommendation`).

Example:
    >>> import torch
    >>> from dyncal.analysis.early_exit import EarlyExitRunner
    >>> from dyncal.analysis.plain import plain_deployment, plain_runner
    >>> from dyncal.analysis.stages import build_stages
    >>> from dyncal.demo import pretrained
    >>> stages = build_stages(pretrained(), torch.zeros(2, 1, 8, 8))
    >>> runner = EarlyExitRunner(stages, [0.9, 0.9, 0.9, None], [1.0] * 4)
    >>> plain = plain_runner(plain_deployment(stages))
    >>> batches = [torch.randn(8, 1, 8, 8) for _ in range(4)]
    >>> res = measure_throughput(runner, plain, batches, repeats=3)
    >>> res.samples, sorted(res.seconds), res.agreement
    (32, ['per_batch', 'plain', 'rebatched'], 1.0)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from dyncal.analysis.latency import Timer
from dyncal.analysis.rebatch import ExitRule, Rebatcher
from dyncal.artifacts.throughput import MODES, ThroughputResult
from dyncal.constraints import check
from dyncal.errors import DyncalError, param

__all__ = ["MODES", "ThroughputResult", "measure_throughput", "macs_ratio"]


def macs_ratio(exit_macs: Sequence[float], exits: np.ndarray, plain_macs: float) -> float:
    """The plain deployment's MACs over the mean MACs of the exits taken.

    Args:
        exit_macs: Cumulative MACs to reach each exit (intermediate heads included), ``K``.
        exits: ``(N,)`` exit index of each row.
        plain_macs: MACs of the plain deployment (backbone and last head).

    Example:
        >>> macs_ratio([10.0, 30.0], np.array([0, 0, 1, 1]), 28.0)
        1.4
    """
    return plain_macs / float(np.asarray(exit_macs, dtype=float)[np.asarray(exits)].mean())


def measure_throughput(
    runner: ExitRule,
    plain: Callable[[torch.Tensor], Any],
    batches: Sequence[torch.Tensor],
    *,
    timer: Timer | None = None,
    repeats: int = 5,
    warmup: int = 1,
    runtime: str = "eager",
    batch_size: int | None = None,
    modes: Sequence[str] = MODES,
    exit_macs: Sequence[float] | None = None,
    plain_macs: float | None = None,
    expected: tuple[np.ndarray, np.ndarray] | None = None,
) -> ThroughputResult:
    """Time the early exit batch by batch, re-batched, and the plain deployment over ``batches``.

    Args:
        runner: The early exit (``runner(x) -> (exits, predictions)``, with stages and a
            decision for the throughput mode), under ``runtime``.
        plain: The plain deployment under the same runtime (:func:`~dyncal.analysis.plain.plain_runner`).
        batches: The input batches, on the device (the same for every mode).
        timer: The timing engine (default: the host clock, device synchronised).
        repeats: Replicates of each mode (each one all the batches).
        warmup: Untimed passes of each mode first.
        runtime: The runtime's name, recorded.
        batch_size: Rows of a full batch in the throughput mode (default: the first batch's).
        modes: Which of :data:`MODES` to time (``plain`` always is).
        exit_macs: Cumulative MACs per exit, for the MACs ratio.
        plain_macs: The plain deployment's MACs, for the MACs ratio.
        expected: ``(exits, predictions)`` of every row, ``(N,)`` each (the simulation);
            default: what the per-batch mode gives.

    Returns:
        Every replicate of every mode, the agreement of the early-exit modes and the MACs ratio.

    Raises:
        DyncalError: No batches, fewer than 3 ``repeats``, or an unknown mode.
    """
    if not batches:
        raise DyncalError(f"{param('batches')} is empty; give at least one batch to time")
    check("repeats", repeats, rule="profile.repeats")
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise DyncalError(f"{param('modes')} must be among {', '.join(MODES)}, got {', '.join(unknown)}")
    timer = timer or Timer(batches[0].device)
    rb = Rebatcher(runner, batch_size=batch_size)
    fns: dict[str, Callable[[], list[Any]]] = {
        "per_batch": lambda: [runner(b) for b in batches],  # type: ignore[operator]
        "rebatched": lambda: list(rb.map(batches)),
        "plain": lambda: [plain(b) for b in batches],
    }
    timed = [m for m in MODES if m in modes or m == "plain"]
    with torch.inference_mode():
        per_batch = fns["per_batch"]()
        again = fns["rebatched"]() if "rebatched" in timed else []
        for m in timed:
            timer.warm(fns[m], warmup)
        reps = timer.round_robin([fns[m] for m in timed], [1] * len(timed), repeats)
    exits = torch.cat([e for e, _ in per_batch]).cpu().numpy()
    preds = torch.cat([p for _, p in per_batch]).cpu().numpy()
    want_exits, want_preds = (exits, preds) if expected is None else (np.asarray(expected[0]), np.asarray(expected[1]))
    if want_exits.shape != exits.shape or want_preds.shape != preds.shape:
        raise DyncalError(f"{param('expected')} must hold {len(exits)} exits and predictions, one per row")
    same = (exits == want_exits) & (preds == want_preds)
    if "rebatched" in timed:
        same &= (torch.cat([e for e, _ in again]).cpu().numpy() == want_exits) & (
            torch.cat([p for _, p in again]).cpu().numpy() == want_preds
        )
    shares = np.bincount(exits, minlength=runner.k) / max(len(exits), 1)
    ratio = None if exit_macs is None or plain_macs is None else macs_ratio(exit_macs, exits, plain_macs)
    return ThroughputResult(
        runtime=runtime,
        timer=timer.label,
        batch_size=int(batch_size or batches[0].shape[0]),
        samples=int(len(exits)),
        seconds={m: tuple(ms / 1e3 for ms in r) for m, r in zip(timed, reps, strict=True)},
        agreement=float(same.mean()) if len(same) else 1.0,
        exit_shares=tuple(float(s) for s in shares),
        macs_ratio=ratio,
    )
