"""What an early exit is predicted to cost, from a run's cost table (numpy only).

The report judges latency with these predictions when no measured early exit is there,
and ``dyncal verify`` prints them beside what it measured; keeping them free of torch
lets a report at any batch size run on a machine without it.
"""

from __future__ import annotations

import numpy as np

from dyncal.run import CostTable

__all__ = ["predict_batch_ms"]


def predict_batch_ms(costs: CostTable | None, device: str, exits: np.ndarray, batch_size: int) -> float | None:
    """Predicted mean milliseconds per batch of an early exit, from the profiled stage times.

    Batches are consecutive ``batch_size`` rows. In each batch, stage ``k`` runs on the
    rows that reach it (simulated ``exits >= k``) and stops once none are left; each exit
    passed before the last costs one decision. A stage's time at ``r`` rows is
    interpolated linearly between the batch sizes profiled on ``device`` and extended
    along the last segment beyond them (proportionally when only one size was profiled).
    At batch size 1 this is the per-sample expectation solve reports.

    Args:
        costs: The run's cost table.
        device: Device name as in the latency keys (``"cpu"``).
        exits: ``(N,)`` simulated 0-based exits, in the order the batches take them.
        batch_size: Rows per batch.

    Returns:
        Milliseconds, or None when nothing was profiled on ``device``.

    Example:
        >>> from dyncal.run import LatencyProfile
        >>> prof = LatencyProfile("cpu", 1, ((1.0,), (2.0,)), (0.5,), (3.0,), 1, "x")
        >>> predict_batch_ms(CostTable(latency={"cpu/b1": prof}), "cpu", np.array([0, 1]), 1)
        2.5
    """
    if costs is None:
        return None
    profiles = sorted((p for p in costs.latency.values() if p.device == device), key=lambda p: p.batch_size)
    if not profiles:
        return None
    sizes = np.array([p.batch_size for p in profiles], dtype=np.float64)
    stage = np.array([p.stage_median_ms for p in profiles])  # (S, K)
    decision = np.array([p.decision_median_ms for p in profiles])  # (S,)
    k = stage.shape[1]
    total = 0.0
    n_batches = 0
    for start in range(0, len(exits), batch_size):
        e = exits[start : start + batch_size]
        reach = np.array([(e >= j).sum() for j in range(k)], dtype=np.float64)  # rows at each stage
        for j in range(k):
            if reach[j] == 0:
                break
            total += _at_rows(reach[j], sizes, stage[:, j])
            if j < k - 1:
                total += _at_rows(reach[j], sizes, decision)
        n_batches += 1
    return total / n_batches if n_batches else None


def _at_rows(rows: float, sizes: np.ndarray, ms: np.ndarray) -> float:
    """Time at ``rows`` from times measured at batch ``sizes``: linear, extended at the ends."""
    if len(sizes) == 1:
        return float(ms[0] * max(1.0, rows / sizes[0]))
    if rows > sizes[-1]:
        slope = (ms[-1] - ms[-2]) / (sizes[-1] - sizes[-2])
        return float(ms[-1] + slope * (rows - sizes[-1]))
    return float(np.interp(rows, sizes, ms))
