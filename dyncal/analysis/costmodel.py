"""What an early exit is predicted to cost, from a run's cost table (numpy only).

The report judges latency with these predictions when no measured early exit is there,
and ``dyncal verify`` prints them beside what it measured; keeping them free of torch
lets a report at any batch size run on a machine without it.

The model follows what :class:`dyncal.analysis.early_exit.EarlyExitRunner` does to a batch, with
each part measured by ``dyncal profile`` on the runner itself
(:class:`dyncal.artifacts.costs.LatencyProfile`):

* the *exit paths* ``P_k(b)``: a batch of ``b`` rows that all leave at exit ``k`` — its
  stages, the decision and host sync at every exit passed, the predictions and the
  runner's bookkeeping. Stage ``k`` with its decision then costs ``P_k - P_{k-1}``
  (``P_0`` for the first, which also carries the per-batch overhead);
* the *compaction* ``C_k``: at an exit where some rows of a batch leave and some stay,
  recording the leavers and cutting every carried tensor down to the stayers, with the
  output assembled from the parts.

A batch pays stage ``k`` (with its decision) on the rows that reach it, and compaction at
each exit that splits it. Times at ``r`` rows are interpolated linearly between the row
counts measured: the profiled batch sizes and the smaller row counts each profile times
its exit paths at (2, 4, 8, ...; a stage on a CPU often costs twice as much at 2 rows as
at 1, then grows slowly).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dyncal.artifacts.costs import CostTable, LatencyProfile
from dyncal.measurement import Measurement

__all__ = ["predict_batch_ms", "predict_batches_ms", "stage_increments_ms"]


def stage_increments_ms(profile: LatencyProfile) -> np.ndarray:
    """``K`` milliseconds: what stage ``k`` adds to a batch of the profile's size, decision included.

    Differences of :attr:`LatencyProfile.early_exit_ms`, so that a batch whose rows all
    leave at exit ``k`` is predicted to take exactly the measured ``early_exit_ms[k]``.

    Example:
        >>> p = LatencyProfile("cpu", 1, ((1.0,), (2.0,)), (0.5,), (3.0,), 1, "x", exit_path_ms=((1.5,), (3.5,)))
        >>> stage_increments_ms(p).tolist()
        [1.5, 2.0]
    """
    return np.diff(np.asarray(profile.early_exit_ms, dtype=np.float64), prepend=0.0)


def _path_increments(paths: Sequence[tuple[float, ...]]) -> np.ndarray:
    """Stage increments from exit-path replicates (running maximum of the medians, differenced)."""
    return np.diff(np.maximum.accumulate([Measurement(r).median_ms for r in paths]), prepend=0.0)


def _increment_points(profiles: Sequence[LatencyProfile]) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, increments)``: every row count measured on a device, ``(R,)`` and ``(R, K)``.

    A profile's own batch size comes first; the rows below it measured on its exit paths
    (:attr:`LatencyProfile.exit_path_rows_ms`) fill in, unless a profile of that size exists.
    """
    points: dict[int, np.ndarray] = {p.batch_size: stage_increments_ms(p) for p in profiles}
    k = len(profiles[0].stage_ms)
    for p in profiles:
        for rows, paths in p.exit_path_rows_ms.items():
            if rows not in points and len(paths) == k and all(paths):
                points[rows] = _path_increments(paths)
    rows_sorted = sorted(points)
    return np.array(rows_sorted, dtype=np.float64), np.array([points[r] for r in rows_sorted])


def predict_batch_ms(costs: CostTable | None, device: str, exits: np.ndarray, batch_size: int) -> float | None:
    """Predicted mean milliseconds per batch of an early exit, from the profiled costs.

    Batches are consecutive ``batch_size`` rows of ``exits`` (the last may hold fewer);
    see :func:`predict_batches_ms`. At batch size 1 this is the per-sample expectation
    solve reports (the mean of ``early_exit_ms`` over the exits).

    Args:
        costs: The run's cost table.
        device: Device name as in the latency keys (``"cpu"``).
        exits: ``(N,)`` simulated 0-based exits, in the order the batches take them.
        batch_size: Rows per batch.

    Returns:
        Milliseconds, or None when nothing was profiled on ``device``.

    Example:
        >>> prof = LatencyProfile("cpu", 1, ((1.0,), (2.0,)), (0.5,), (3.0,), 1, "x", exit_path_ms=((1.5,), (3.5,)))
        >>> predict_batch_ms(CostTable(latency={"cpu/b1": prof}), "cpu", np.array([0, 1]), 1)
        2.5
    """
    exits = np.asarray(exits)
    return predict_batches_ms(costs, device, [exits[s : s + batch_size] for s in range(0, len(exits), batch_size)])


def predict_batches_ms(costs: CostTable | None, device: str, batches: Sequence[np.ndarray]) -> float | None:
    """Predicted mean milliseconds per batch of an early exit over the given batches.

    In each batch (the simulated 0-based exits of its rows) stage ``k`` runs on the rows
    that reach it (``exits >= k``) and costs its increment at that many rows
    (:func:`stage_increments_ms`); an exit before the batch's last one where some rows
    leave and some stay adds one compaction at that many rows. A time at ``r`` rows is
    interpolated linearly between the row counts measured on ``device`` and extended
    along the last segment beyond them (proportionally when one was measured).

    Args:
        costs: The run's cost table.
        device: Device name as in the latency keys.
        batches: Each batch's simulated exits, ``(rows,)`` each.

    Returns:
        Milliseconds, or None when nothing was profiled on ``device`` or no batch is given.

    Example:
        >>> prof = LatencyProfile("cpu", 1, ((1.0,), (2.0,)), (0.5,), (3.0,), 1, "x", exit_path_ms=((1.5,), (3.5,)))
        >>> costs = CostTable(latency={"cpu/b1": prof})
        >>> predict_batches_ms(costs, "cpu", [np.array([0]), np.array([1, 1])])   # (1.5 + 7) / 2
        4.25
    """
    if costs is None:
        return None
    profiles = sorted((p for p in costs.latency.values() if p.device == device), key=lambda p: p.batch_size)
    if not profiles or not batches:
        return None
    sizes, inc = _increment_points(profiles)  # (S,), (S, K)
    k = inc.shape[1]
    comp_profiles = [p for p in profiles if len(p.compaction_median_ms) == k - 1]
    comp_sizes = np.array(
        [float(p.settings.get("compaction_rows") or p.batch_size) for p in comp_profiles], dtype=np.float64
    )
    comp = np.array([p.compaction_median_ms for p in comp_profiles]).reshape(len(comp_profiles), k - 1)
    order = np.argsort(comp_sizes, kind="stable")
    comp_sizes, comp = comp_sizes[order], comp[order]
    total = 0.0
    filled = [np.asarray(e) for e in batches if len(e)]  # an empty batch costs nothing and is not counted
    for e in filled:
        counts = np.bincount(e, minlength=k)
        reach = counts[::-1].cumsum()[::-1].astype(np.float64)  # rows at each stage
        last = int(e.max())
        for j in range(last + 1):
            total += _at_rows(reach[j], sizes, inc[:, j])
            if j < last and 0 < counts[j] < reach[j] and len(comp_sizes):
                total += _at_rows(reach[j], comp_sizes, comp[:, j])
    return total / len(filled) if filled else None


def _at_rows(rows: float, sizes: np.ndarray, ms: np.ndarray) -> float:
    """Time at ``rows`` from times measured at batch ``sizes``: linear, extended at the ends."""
    if len(sizes) == 1:
        return float(ms[0] * max(1.0, rows / sizes[0]))
    if rows > sizes[-1]:
        slope = (ms[-1] - ms[-2]) / (sizes[-1] - sizes[-2])
        return float(ms[-1] + slope * (rows - sizes[-1]))
    return float(np.interp(rows, sizes, ms))
