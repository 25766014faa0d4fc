"""Held-out splits and bootstrap intervals: the one place dyncal's intervals are computed.

Thresholds fitted on some samples look better on those samples, so dyncal fits on one part
of a run and reports accuracy on the other, with a 95% bootstrap interval.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dyncal.constraints import check
from dyncal.errors import DyncalError, short_list

__all__ = [
    "stratified_split",
    "unsplit_classes",
    "bootstrap_ci",
    "bootstrap_interval",
    "mean_bootstrap_ci",
    "mcnemar_pvalue",
    "N_BOOTSTRAP",
    "weighted_percentiles",
    "centred_interval",
    "stratified_resamples",
    "enclosing_interval",
]

log = logging.getLogger(__name__)

N_BOOTSTRAP = 2000
"""Bootstrap resamples of every interval the report and solve print."""
_BOOTSTRAP_SEED = 20240607


def _percentile_interval(draws: np.ndarray, level: float) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap draws."""
    alpha = (1 - level) / 2
    lo, hi = np.quantile(draws, [alpha, 1 - alpha])
    return float(lo), float(hi)


def stratified_split(labels: np.ndarray, holdout: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split sample indices into a fit part and a held-out part, class by class.

    Each class contributes ``round(holdout * n_class)`` samples to the held-out part. A
    class too small for that (a single sample, or ``round`` gives 0) goes whole into the
    fit part, with a logged warning (:func:`unsplit_classes` lists them).

    Args:
        labels: ``(N,)`` integer classes.
        holdout: Held-out fraction in ``[0, 1)``; 0 keeps everything for fitting.
        seed: Seed of the permutation.

    Returns:
        ``(fit_idx, holdout_idx)``, sorted int64 index arrays.

    Raises:
        DyncalError: ``seed`` negative; ``holdout`` out of range; so large that a class of several samples
            would have none left to fit on; or leaving nothing held out at all.

    Example:
        >>> y = np.array([0, 0, 1, 1, 0, 1, 0, 1, 2])
        >>> fit, held = stratified_split(y, 0.5, seed=0)
        >>> len(fit), len(held), sorted(y[held].tolist())
        (5, 4, [0, 0, 1, 1])
    """
    labels = np.asarray(labels)
    check("holdout", holdout)
    check("seed", seed)
    n = labels.shape[0]
    if holdout == 0.0:
        return np.arange(n, dtype=np.int64), np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    held: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
    unsplit: list[tuple[Any, int]] = []
    for cls, count in zip(classes.tolist(), counts.tolist(), strict=True):
        m = int(round(holdout * count))
        if m == 0 or count == 1:
            unsplit.append((cls, count))
            continue
        if m == count:
            raise DyncalError(
                f"`holdout` {holdout} is too large: it would leave no sample of class {cls} "
                f"(the run has {count} of it) to fit thresholds on; use a fraction nearer 0.5, "
                "such as `holdout` 0.5"
            )
        held.append(rng.permutation(np.flatnonzero(labels == cls))[:m])
    held_idx = np.sort(np.concatenate(held)).astype(np.int64)
    if held_idx.size == 0:
        raise DyncalError(
            f"`holdout` {holdout} holds nothing out: no class has enough samples to split "
            f"(the largest has {int(counts.max())}); use `holdout` 0 to fit on everything, or "
            "more samples"
        )
    if unsplit:
        log.warning(
            "%d class(es) too small to split at `holdout` %s go whole into the fit part, none "
            "held out: %s (class (samples))",
            len(unsplit),
            holdout,
            short_list([f"{c} ({k})" for c, k in unsplit], 10),
        )
    return np.setdiff1d(np.arange(n, dtype=np.int64), held_idx), held_idx


def unsplit_classes(labels: np.ndarray, holdout: float) -> list[Any]:
    """Classes :func:`stratified_split` keeps whole in the fit part (too small to split).

    Example:
        >>> unsplit_classes(np.array([0, 0, 1, 1, 2]), 0.5)
        [2]
    """
    if holdout <= 0.0:
        return []
    classes, counts = np.unique(np.asarray(labels), return_counts=True)
    return [c for c, k in zip(classes.tolist(), counts.tolist(), strict=True) if k == 1 or int(round(holdout * k)) == 0]


def mcnemar_pvalue(right_a: np.ndarray, right_b: np.ndarray) -> float:
    """Exact two-sided McNemar p-value: do two answers on the same samples differ in accuracy?

    Only the samples where exactly one of them is right count; under "equally accurate"
    each of those goes either way with probability 1/2 (a binomial test).

    Args:
        right_a: ``(n,)`` booleans, answer A right on each sample.
        right_b: ``(n,)`` booleans, answer B right on the same samples.

    Returns:
        The p-value (1.0 when they never disagree).

    Example:
        >>> a = np.array([True] * 10 + [False] * 10)
        >>> round(mcnemar_pvalue(a, ~a), 6), mcnemar_pvalue(a, a)
        (1.0, 1.0)
        >>> round(mcnemar_pvalue(np.ones(12, bool), np.zeros(12, bool)), 6)  # 12 of 12 discordant one way
        0.000488
    """
    from scipy.stats import binomtest

    a, b = np.asarray(right_a, dtype=bool), np.asarray(right_b, dtype=bool)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(b & ~a))
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(only_a, only_a + only_b, 0.5).pvalue)


def mean_bootstrap_ci(
    values: np.ndarray, *, level: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of 0/1 values (e.g. correctness).

    The mean of a bootstrap resample of ``n`` Bernoulli values with sample mean ``p`` is
    distributed exactly as ``Binomial(n, p) / n``, so resampling is done in that form:
    same interval as the usual resampling bootstrap, ``O(n_boot)`` instead of
    ``O(n_boot * n)``.

    Args:
        values: ``(n,)`` values in {0, 1} (booleans).
        level: Coverage (default 0.95).
        n_boot: Bootstrap replicates (default 2000).
        seed: Seed.

    Returns:
        ``(low, high)``; NaNs when ``values`` is empty.

    Example:
        >>> lo, hi = mean_bootstrap_ci(np.array([1] * 90 + [0] * 10))
        >>> 0.8 < lo < 0.9 < hi <= 0.96
        True
    """
    v = np.asarray(values, dtype=np.float64)
    n = v.shape[0]
    if n == 0:
        return float("nan"), float("nan")
    if np.any((v != 0) & (v != 1)):
        return bootstrap_ci(v, np.mean, level=level, n_boot=n_boot, seed=seed)
    p = float(v.mean())
    return _percentile_interval(np.random.default_rng(seed).binomial(n, p, size=n_boot) / n, level)


def bootstrap_ci(
    values: np.ndarray,
    statistic: Callable[[np.ndarray], float] | Callable[..., np.floating] = np.mean,
    *,
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    chunk: int = 64,
) -> tuple[float, float]:
    """Percentile bootstrap interval of any statistic of a sample.

    Args:
        values: ``(n, ...)`` samples (resampled along the first axis).
        statistic: Function of a resample, returning a float (default mean).
        level: Coverage (default 0.95).
        n_boot: Replicates (default 2000).
        seed: Seed.
        chunk: Replicates drawn at once (memory ``chunk * n``).

    Returns:
        ``(low, high)``; NaNs when ``values`` is empty.

    Example:
        >>> lo, hi = bootstrap_ci(np.arange(100.0), np.median, n_boot=500)
        >>> lo < 49.5 < hi
        True
    """
    v = np.asarray(values)
    n = v.shape[0]
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        m = min(chunk, n_boot - start)
        idx = rng.integers(0, n, size=(m, n))
        for i in range(m):
            stats[start + i] = float(statistic(v[idx[i]]))
    return _percentile_interval(stats, level)


def bootstrap_interval(
    n: int,
    statistic: Callable[[np.ndarray], np.ndarray],
    *,
    level: float = 0.95,
    n_resamples: int = N_BOOTSTRAP,
    seed: int = _BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile bootstrap interval of a statistic of ``n`` rows, deterministic for a seed.

    Args:
        n: Number of rows.
        statistic: Maps a ``(B, n)`` array of resampled row indices to ``B`` values.
        level: Coverage (default 0.95).
        n_resamples: Bootstrap resamples (default 2000).
        seed: Seed of the resampling.

    Returns:
        ``(low, high)``.

    Example:
        >>> x = np.array([0.0, 1.0] * 50)
        >>> lo, hi = bootstrap_interval(100, lambda idx: x[idx].mean(axis=1))
        >>> lo < 0.5 < hi
        True
    """
    if n <= 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_resamples, 4_000_000 // max(n, 1)))
    sizes = [min(chunk, n_resamples - done) for done in range(0, n_resamples, chunk)]
    values = [np.asarray(statistic(rng.integers(0, n, size=(b, n))), dtype=float) for b in sizes]
    return _percentile_interval(np.concatenate(values), level)


def weighted_percentiles(
    values: np.ndarray, percentiles: Sequence[float] | np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray:
    """Percentiles of each row of ``values``: numpy's linear rule, with weights as repetitions.

    Without weights (or with equal ones) this is ``np.percentile(values, percentiles,
    axis=-1)`` with the percentiles on the last axis. A weight says how many requests of
    the population a value stands for: weights are scaled so the smallest is 1, and value
    ``i`` then fills ``w_i`` consecutive places of an expanded sample of ``W = sum(w)``
    places, read by the linear rule at place ``q (W - 1)``. With integer weights whose
    smallest is 1 this equals ``np.percentile`` of the values repeated ``w_i`` times.

    Args:
        values: ``(m,)`` or ``(B, m)`` values, ``m >= 1``.
        percentiles: ``Q`` percentiles in ``[0, 100]``.
        weights: ``(m,)`` or ``(B, m)`` positive weights, or None (equal).

    Returns:
        ``(Q,)`` for one row, ``(B, Q)`` for ``B`` rows.

    Raises:
        DyncalError: No values, a percentile outside ``[0, 100]``, or a weight that is not positive.

    Example:
        >>> weighted_percentiles(np.array([1.0, 2.0, 3.0, 4.0]), [50, 100]).tolist()
        [2.5, 4.0]
        >>> weighted_percentiles(np.array([1.0, 2.0, 3.0]), [50], np.array([1.0, 1.0, 2.0])).tolist()  # 1, 2, 3, 3
        [2.5]
    """
    x = np.asarray(values, dtype=np.float64)
    q = np.asarray(percentiles, dtype=np.float64).reshape(-1)
    if x.ndim not in (1, 2) or x.shape[-1] == 0:
        raise DyncalError(f"percentiles need (m,) or (B, m) values with m >= 1, got shape {x.shape}")
    if np.any(~(q >= 0) | ~(q <= 100)):
        raise DyncalError(f"percentiles must lie in [0, 100], got {q.tolist()}")
    w = None if weights is None else np.broadcast_to(np.asarray(weights, dtype=np.float64), x.shape)
    if w is not None and not np.all(w > 0):
        raise DyncalError("percentile weights must be positive")
    rows = np.atleast_2d(x)
    if w is None or np.all(w == w[..., :1]):
        # numpy's linear rule read off a sorted copy: np.sort is several times faster than np.percentile's partitions
        xs = np.sort(rows, axis=-1)
        place = (xs.shape[1] - 1) * (q / 100.0)
        below = np.floor(place)
        frac = place - below
        lo = xs[:, below.astype(np.int64)]
        hi = xs[:, np.minimum(below.astype(np.int64) + 1, xs.shape[1] - 1)]
        out = np.where(frac >= 0.5, hi - (hi - lo) * (1 - frac), lo + (hi - lo) * frac)  # numpy's _lerp, to the bit
        return np.asarray(out[0]) if x.ndim == 1 else out
    order = np.argsort(rows, axis=-1)  # ties need no stable order: equal values read the same at any place
    xs = np.take_along_axis(rows, order, axis=-1)
    ws = np.take_along_axis(np.atleast_2d(w), order, axis=-1)
    ws = ws / ws.min(axis=1, keepdims=True)
    cum = np.cumsum(ws, axis=1)
    # value i fills places cum_i - w_i .. cum_i - 1 of the expanded sample; between cum_i - 1 and cum_i
    # the linear rule moves from value i to value i + 1
    last = cum - 1.0
    target = q[None, :] / 100.0 * last[:, -1:]
    out = np.empty(target.shape)
    at = np.arange(rows.shape[0])
    for c in range(q.shape[0]):
        t = target[:, c]
        i = np.minimum(np.sum(last < t[:, None], axis=1), rows.shape[1] - 1)  # first value whose places reach t
        inside = t >= cum[at, i] - ws[at, i]
        prev = np.maximum(i - 1, 0)
        frac = np.clip(t - last[at, prev], 0.0, 1.0)
        between = xs[at, prev] + frac * (xs[at, i] - xs[at, prev])
        out[:, c] = np.where(inside, xs[at, i], between)
    return np.asarray(out[0]) if x.ndim == 1 else out


def stratified_resamples(strata: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap index draws that keep each stratum's size: column ``j`` redraws within ``strata[j]``.

    A resample of a stratified sample keeps as many units of each stratum as were drawn,
    so weights that depend on the stratum stay those of the sample. With one stratum this
    is the ordinary bootstrap (``rng.integers(0, n, (n_resamples, n))``, the same draws).

    Args:
        strata: ``(n,)`` stratum label of each unit.
        n_resamples: Resamples ``B``.
        rng: The generator (strata are drawn in increasing label order).

    Returns:
        ``(B, n)`` int64 unit indices.

    Example:
        >>> idx = stratified_resamples(np.array([0, 1, 0, 1]), 3, np.random.default_rng(0))
        >>> bool(np.all(idx[:, [0, 2]] % 2 == 0)), bool(np.all(idx[:, [1, 3]] % 2 == 1))
        (True, True)
    """
    s = np.asarray(strata)
    out = np.empty((n_resamples, s.shape[0]), dtype=np.int64)
    for label in np.unique(s):
        members = np.flatnonzero(s == label)
        out[:, members] = members[rng.integers(0, members.shape[0], (n_resamples, members.shape[0]))]
    return out


def centred_interval(draws: np.ndarray, point: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile-bootstrap interval of ``draws`` (``(B, ...)``) moved so the draws' median sits on ``point``.

    The bootstrap of a minimum (the fastest replicate), a maximum or a tail percentile is
    biased: resampled minima are never below the minimum, so a plain percentile interval
    can miss its own estimate. Moving the draws so that their median is the estimate keeps
    the interval's shape and puts the estimate inside it. The move is a factor
    (``point / median``) where both are positive, as times and speed-ups are, so an
    interval of a positive quantity stays positive; otherwise it is a shift.

    Example:
        >>> lo, hi = centred_interval(np.array([2.0, 3.0, 3.0, 4.0]), np.array(1.5), level=0.5)
        >>> float(lo), float(hi)
        (1.375, 1.625)
    """
    d = np.asarray(draws, dtype=np.float64)
    p = np.asarray(point, dtype=np.float64)
    med = np.median(d, axis=0)
    lo, hi = np.quantile(d, [(1 - level) / 2, (1 + level) / 2], axis=0)
    ratio = (p > 0) & (med > 0)
    factor = np.divide(p, med, out=np.ones_like(med), where=ratio)
    shift = np.where(ratio, 0.0, med - p)
    return np.asarray(lo * factor - shift), np.asarray(hi * factor - shift)


def enclosing_interval(combined: tuple[float, float], *parts: tuple[float, float] | None) -> tuple[float, float]:
    """The interval of several noises at once, widened so it contains the interval of each alone.

    A joint bootstrap (units and timing replicates resampled together) estimates the
    combined noise, but its quantiles need not contain those of one noise alone: a
    resampled median of a few replicates is biased, and a percentile of a product is not
    ordered with the percentiles of its factors. An interval that claims to carry both
    noises must not be narrower than either, so each end is the outermost of the joint
    interval and its parts. Parts that are None or not finite are skipped.

    Example:
        >>> enclosing_interval((2.80, 4.48), (3.26, 4.70), None)
        (2.8, 4.7)
    """
    ends = [(float(combined[0]), float(combined[1]))]
    ends += [(float(p[0]), float(p[1])) for p in parts if p is not None]
    finite = [e for e in ends if math.isfinite(e[0]) and math.isfinite(e[1])]
    if not finite:
        return ends[0]
    return min(e[0] for e in finite), max(e[1] for e in finite)
