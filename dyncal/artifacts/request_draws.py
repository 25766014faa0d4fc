"""The bootstrap behind :class:`dyncal.artifacts.requests.RequestTimings`' intervals, vectorised.

A resample is drawn as one flat index into the ``(U, R)`` replicate matrix (units redrawn
within their stratum, pairs within their unit) and laid out ``(draws, R, U)``: a unit's
fastest replicate is a reduction over the middle axis and the raw view a reshape, with no
copy. Chunks bound the replicates held at once. The statistics read percentiles off one
``np.sort`` per row (:func:`dyncal.stats.weighted_percentiles`), several times faster than
``np.percentile``'s partitions on thousands of requests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from dyncal.stats import stratified_resamples, weighted_percentiles

__all__ = ["STATISTICS", "group_statistics", "latency_statistics", "resample_parts", "view_values"]

STATISTICS = ("mean", "std", "p50", "p90", "p95", "p99", "max")
"""The statistics of every latency distribution, in the order they are reported."""
_PERCENTILES = (50.0, 90.0, 95.0, 99.0)
_CHUNK = 2_000_000  # replicate draws held at once in a bootstrap

Statistics = Callable[[np.ndarray, np.ndarray], list[np.ndarray]]


def latency_statistics(values: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """:data:`STATISTICS` of each row of ``values`` (weighted as :func:`dyncal.stats.weighted_percentiles`).

    Args:
        values: ``(m,)`` or ``(B, m)`` milliseconds.
        weights: ``(m,)`` positive weights, or None.

    Returns:
        ``(7,)`` or ``(B, 7)``: mean, std (``ddof=0``), p50, p90, p95, p99, max.

    Example:
        >>> latency_statistics(np.array([1.0, 2.0, 3.0, 4.0])).round(3).tolist()
        [2.5, 1.118, 2.5, 3.7, 3.85, 3.97, 4.0]
    """
    x = np.atleast_2d(np.asarray(values, dtype=np.float64))
    if weights is None:
        mean, std = x.mean(axis=1), x.std(axis=1)
    else:
        w = np.asarray(weights, dtype=np.float64)
        mean = np.average(x, axis=1, weights=w)
        std = np.sqrt(np.average((x - mean[:, None]) ** 2, axis=1, weights=w))
    pct = weighted_percentiles(x, _PERCENTILES, weights)
    out = np.column_stack([mean, std, pct, x.max(axis=1)])
    return out[0] if np.ndim(values) == 1 else out


def view_values(a: np.ndarray, view: str) -> np.ndarray:
    """``(b, R, U)`` replicates as ``(b, U)`` fastest or ``(b, R * U)`` raw values (pair-major)."""
    return a.min(axis=1) if view == "fastest" else a.reshape(a.shape[0], -1)


def group_statistics(groups: Sequence[tuple[slice, np.ndarray | None]]) -> Statistics:
    """``fn(early_exit, plain)`` giving, per group (units ``cols`` with weights), ``(b, 4, 7)`` statistics.

    The 4 are (view, side): fastest early exit, fastest plain, raw early exit, raw plain.
    """

    def stats(a: np.ndarray, b: np.ndarray) -> list[np.ndarray]:
        fastest = (a.min(axis=1), b.min(axis=1))  # once for every group
        out = []
        for cols, w in groups:
            raw_w = None if w is None else np.tile(w, a.shape[1])
            part = [latency_statistics(f[:, cols], w) for f in fastest]
            part += [latency_statistics(x[:, :, cols].reshape(x.shape[0], -1), raw_w) for x in (a, b)]
            out.append(np.stack([np.atleast_2d(x) for x in part], axis=1))
        return out

    return stats


def resample_parts(
    ee: np.ndarray,
    pl: np.ndarray,
    strata: np.ndarray,
    total: int,
    fn: Statistics,
    sampling: bool,
    timing: bool,
    order: np.ndarray | None,
    seed: int,
) -> list[list[np.ndarray]]:
    """``fn(early_exit, plain)`` (a list of results) per chunk of ``total`` resamples: ``[result][chunk]``.

    A resample redraws the units within their stratum (``sampling``) and each unit's pairs
    (``timing``). ``fn`` gets ``(b, R, U)`` arrays, units in ``order`` when given (the same
    resample, reordered). Seeded: the same timings give the same draws.
    """
    n_u, n_r = ee.shape
    rng = np.random.default_rng(seed)
    chunk = max(1, min(total, _CHUNK // max(1, n_u * n_r)))
    flat_ee, flat_pl = ee.reshape(-1), pl.reshape(-1)
    chunks: list[list[np.ndarray]] = []  # [chunk][result]
    for start in range(0, total, chunk):
        size = min(chunk, total - start)
        units = stratified_resamples(strata, size, rng) if sampling else np.broadcast_to(np.arange(n_u), (size, n_u))
        pairs = rng.integers(0, n_r, (size, n_u, n_r)) if timing else np.arange(n_r)[None, None, :]
        index = units[:, :, None] * n_r + pairs  # one flat take per side: faster than 2-D fancy indexing
        if order is not None:
            index = index[:, order]
        index = np.ascontiguousarray(index.transpose(0, 2, 1))
        chunks.append([np.asarray(r) for r in fn(np.take(flat_ee, index), np.take(flat_pl, index))])
    return [list(results) for results in zip(*chunks, strict=True)]
