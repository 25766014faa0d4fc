"""The speed-up of paired timings on a busy machine: estimators that load cannot move (numpy only).

Design. ``dyncal verify`` times the early exit and the plain deployment back to back on the
same batch, several times (pairs); :class:`~dyncal.artifacts.verify.PairedTiming` keeps
them as ``(batches, pairs)`` matrices. Its speed-up takes the median over each batch's
pair ratios. On a busy machine that median moves: a preemption lands on one side of a pair
and not the other, and with two busy processes on two cores more than half the pairs of a
slow batch can be hit. Noise from other processes only ever *adds* time (Chen & Revels,
"Robust benchmarking in noisy environments", 2016), which is why ``timeit`` recommends the
minimum of the repeats: the fastest run is the one the machine disturbed least.
:func:`paired_speedup` therefore

1. discards the pairs a preemption hit: a pair either of whose times lies more than
   :data:`PREEMPTION_MADS` scaled MADs above its batch's median for that side (a one-sided
   rule: load only slows; a floor of 5% of the median on the MAD keeps quiet batches whole);
2. reduces each batch to a low quantile of its kept pairs, per side: the **minimum** by
   default (``quantile=0``), as ``timeit`` does;
3. divides the plain deployment's total by the early exit's over the batches (each batch
   weighted by its early-exit time, as the existing estimator does on a quiet machine);
4. gives the three 95% bootstrap intervals the report's rule needs (batches resampled,
   kept pairs resampled within batches, both), re-centred on the estimate
   (:func:`dyncal.stats.centred_interval`: resampled minima are biased up).

:func:`more_pairs` is the rule for "more pairs when the spread is high": a batch whose
spread (IQR / median) is above 10% gets its pairs doubled, up to a cap, until another
doubling no longer lowers either minimum by more than 1%.

The estimator used is recorded (:attr:`PairedEstimate.estimator`); ``"median-ratio"``
is the existing estimator, kept for comparison (``benchmarks/verdict_under_load_core.py``).

Wiring (not done here): verify's loop calls :func:`more_pairs` after each batch's pairs
(rows may then differ in length: pass them as lists), and ``PairedTiming`` reports
``paired_speedup(ee, full)`` with its ``estimator`` beside the raw matrices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dyncal.errors import DyncalError
from dyncal.stats import N_BOOTSTRAP, centred_interval

__all__ = [
    "ESTIMATORS",
    "PREEMPTION_MADS",
    "SPREAD_LIMIT",
    "PairedEstimate",
    "paired_speedup",
    "preempted",
    "more_pairs",
]

ESTIMATORS = {
    "min": "fastest of each batch's pairs per side (timeit; Chen & Revels 2016), preempted pairs discarded",
    "median-ratio": "median of each batch's pair ratios, every pair kept (the estimator before issue 21)",
}
"""Estimator names and what they compute (a low quantile other than 0 is named ``"q<quantile>"``)."""
PREEMPTION_MADS = 3.5
"""A time more than this many scaled MADs above its batch's median marks its pair as preempted."""
SPREAD_LIMIT = 0.10
"""A batch whose IQR exceeds this fraction of its median gets more pairs (:func:`more_pairs`)."""
_MAD_FLOOR = 0.05  # the MAD is taken as at least 5% of the median: a quiet batch keeps its pairs
_SETTLE = 0.01  # a doubling that lowers neither minimum by more than this fraction ends the pairs
_SEED = 20160913
_CHUNK = 2_000_000

Interval = tuple[float, float]
Timings = Sequence[Sequence[float]] | np.ndarray


@dataclass(frozen=True)
class PairedEstimate:
    """A speed-up of the plain deployment over the early exit, with how it was estimated.

    Attributes:
        estimator: ``"min"``, ``"q<quantile>"`` or ``"median-ratio"`` (:data:`ESTIMATORS`).
        value: Plain deployment's time over the early exit's.
        interval: 95% interval with timing and sampling noise.
        interval_sampling: From which batches were timed alone.
        interval_timing: From timing noise alone.
        early_exit_ms: Mean over batches of the early exit's reduced time.
        plain_ms: Mean over batches of the plain deployment's reduced time.
        pairs: Pairs timed.
        discarded: Pairs discarded as preempted.
        timing_spread: Median over batches of the kept pair ratios' IQR / median.
    """

    estimator: str
    value: float
    interval: Interval
    interval_sampling: Interval
    interval_timing: Interval
    early_exit_ms: float
    plain_ms: float
    pairs: int
    discarded: int
    timing_spread: float

    @property
    def description(self) -> str:
        """What the estimator computes, for people."""
        if self.estimator in ESTIMATORS:
            return ESTIMATORS[self.estimator]
        return f"{self.estimator[1:]} quantile of each batch's pairs per side, preempted pairs discarded"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "estimator": self.estimator,
            "description": self.description,
            "speedup": self.value,
            "speedup_ci": list(self.interval),
            "speedup_ci_sampling": list(self.interval_sampling),
            "speedup_ci_timing": list(self.interval_timing),
            "early_exit_ms": self.early_exit_ms,
            "plain_ms": self.plain_ms,
            "pairs": self.pairs,
            "discarded_pairs": self.discarded,
            "timing_spread": self.timing_spread,
        }


def _padded(rows: Timings, name: str) -> np.ndarray:
    """``(B, R_max)`` float64 with NaN after each row's own pairs."""
    if isinstance(rows, np.ndarray):
        a = np.asarray(rows, dtype=np.float64)
        if a.ndim != 2:
            raise DyncalError(f"`{name}` must be (batches, pairs) milliseconds, got shape {a.shape}")
        return a
    lengths = [len(r) for r in rows]
    out = np.full((len(lengths), max(lengths, default=0)), np.nan)
    for i, r in enumerate(rows):
        out[i, : len(r)] = np.asarray(r, dtype=np.float64)
    return out


def _checked(early_exit_ms: Timings, plain_ms: Timings) -> tuple[np.ndarray, np.ndarray]:
    ee, pl = _padded(early_exit_ms, "early_exit_ms"), _padded(plain_ms, "plain_ms")
    if ee.shape != pl.shape or not np.array_equal(np.isnan(ee), np.isnan(pl)):
        raise DyncalError(f"`early_exit_ms` and `plain_ms` must be paired, got shapes {ee.shape} and {pl.shape}")
    if ee.size == 0 or np.any(np.all(np.isnan(ee), axis=1)):
        raise DyncalError("paired timings need at least one batch with at least one pair each")
    present = ~np.isnan(ee)
    if not (np.all(ee[present] > 0) and np.all(pl[present] > 0) and np.all(np.isfinite(ee[present] + pl[present]))):
        raise DyncalError("paired timings must be positive finite milliseconds")
    return ee, pl


def preempted(early_exit_ms: Timings, plain_ms: Timings, mads: float = PREEMPTION_MADS) -> np.ndarray:
    """``(B, R)`` whether each pair was hit by a preemption (either side far above its batch's median).

    Example:
        >>> ee = [[1.0, 1.01, 0.99, 1.0, 5.0]]
        >>> preempted(ee, [[2.0, 2.0, 2.02, 1.98, 2.0]]).tolist()
        [[False, False, False, False, True]]
    """
    ee, pl = _checked(early_exit_ms, plain_ms)
    return _preempted(ee, pl, mads)


def _preempted(ee: np.ndarray, pl: np.ndarray, mads: float) -> np.ndarray:
    hit = np.zeros(ee.shape, dtype=bool)
    for a in (ee, pl):
        med = np.nanmedian(a, axis=1, keepdims=True)
        mad = np.maximum(1.4826 * np.nanmedian(np.abs(a - med), axis=1, keepdims=True), _MAD_FLOOR * med)
        with np.errstate(invalid="ignore"):
            hit |= a > med + mads * mad
    return hit


def _reduce(a: np.ndarray, quantile: float) -> np.ndarray:
    """A low quantile of the last axis, NaNs (absent pairs) left out."""
    if not np.isnan(a).any():
        return np.asarray(a.min(axis=-1) if quantile == 0 else np.quantile(a, quantile, axis=-1))
    return np.asarray(np.nanmin(a, axis=-1) if quantile == 0 else np.nanquantile(a, quantile, axis=-1))


def _median(a: np.ndarray) -> np.ndarray:
    """The median of the last axis, NaNs (absent pairs) left out."""
    return np.asarray(np.nanmedian(a, axis=-1) if np.isnan(a).any() else np.median(a, axis=-1))


def _speedups(ee: np.ndarray, pl: np.ndarray, estimator: str, quantile: float) -> np.ndarray:
    """Speed-up per leading index of ``(..., B, R)`` matrices (NaN: no pair)."""
    if estimator == "median-ratio":
        ee_med = _median(ee)
        ratio = _median(pl / ee)
        return np.asarray((ee_med * ratio).sum(axis=-1) / ee_med.sum(axis=-1))
    return np.asarray(_reduce(pl, quantile).sum(axis=-1) / _reduce(ee, quantile).sum(axis=-1))


def paired_speedup(
    early_exit_ms: Timings,
    plain_ms: Timings,
    *,
    estimator: str = "min",
    quantile: float = 0.0,
    n_resamples: int = N_BOOTSTRAP,
    seed: int = _SEED,
) -> PairedEstimate:
    """The plain deployment's time over the early exit's, estimated for a busy machine.

    Args:
        early_exit_ms: ``(batches, pairs)`` milliseconds of the early exit (rows may differ
            in length when given as lists: :func:`more_pairs` lengthens noisy batches).
        plain_ms: The plain deployment's, same shape, pair ``r`` of batch ``b`` timed
            right beside ``early_exit_ms[b][r]``.
        estimator: ``"min"`` (default: a low quantile of each batch's kept pairs per side)
            or ``"median-ratio"`` (the median of pair ratios, every pair kept).
        quantile: The low quantile of ``"min"`` (0, the default, is the minimum).
        n_resamples: Bootstrap resamples.
        seed: Seed of the bootstrap.

    Returns:
        The estimate, its intervals, the estimator's name and the pairs discarded.

    Raises:
        DyncalError: Unpaired or empty timings, an unknown estimator, or a quantile outside [0, 0.5].

    Example:
        >>> ee = [[1.0, 1.0, 9.0], [2.0, 2.1, 2.0]]  # a preemption hit the third pair of batch 1
        >>> pl = [[3.0, 3.1, 3.0], [6.0, 6.0, 6.3]]
        >>> est = paired_speedup(ee, pl)
        >>> est.value, est.estimator, est.discarded
        (3.0, 'min', 1)
    """
    if estimator not in ESTIMATORS:
        raise DyncalError(f"`estimator` must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")
    if not 0.0 <= quantile <= 0.5:
        raise DyncalError(f"`quantile` must lie in [0, 0.5] (a low quantile), got {quantile:g}")
    ee, pl = _checked(early_exit_ms, plain_ms)
    hit = _preempted(ee, pl, PREEMPTION_MADS) if estimator != "median-ratio" else np.zeros(ee.shape, bool)
    ee_k, pl_k = np.where(hit, np.nan, ee), np.where(hit, np.nan, pl)
    ee_k, pl_k = _compact(ee_k), _compact(pl_k)
    value = float(_speedups(ee_k, pl_k, estimator, quantile))
    draws = {
        kind: _bootstrap(ee_k, pl_k, estimator, quantile, n_resamples, seed, batches=b, pairs=p)
        for kind, b, p in (("both", True, True), ("sampling", True, False), ("timing", False, True))
    }

    def iv(d: np.ndarray) -> Interval:
        lo, hi = centred_interval(d, np.asarray(value))
        return (float(lo), float(hi))

    name = "min" if estimator == "min" and quantile == 0 else (f"q{quantile:g}" if estimator == "min" else estimator)
    ratio = pl_k / ee_k
    q75, q50, q25 = np.nanpercentile(ratio, [75, 50, 25], axis=1)
    return PairedEstimate(
        estimator=name,
        value=value,
        interval=iv(draws["both"]),
        interval_sampling=iv(draws["sampling"]),
        interval_timing=iv(draws["timing"]),
        early_exit_ms=float(np.mean(_reduce(ee_k, quantile) if estimator != "median-ratio" else _median(ee))),
        plain_ms=float(np.mean(_reduce(pl_k, quantile) if estimator != "median-ratio" else _median(pl))),
        pairs=int(np.sum(~np.isnan(ee))),
        discarded=int(np.sum(hit)),
        timing_spread=float(np.median((q75 - q25) / q50)),
    )


def _compact(a: np.ndarray) -> np.ndarray:
    """Each row's present values first, NaN after (a stable sort on absence)."""
    order = np.argsort(np.isnan(a), axis=1, kind="stable")
    return np.take_along_axis(a, order, axis=1)


def _bootstrap(
    ee: np.ndarray,
    pl: np.ndarray,
    estimator: str,
    quantile: float,
    n_resamples: int,
    seed: int,
    *,
    batches: bool,
    pairs: bool,
) -> np.ndarray:
    """``(n_resamples,)`` speed-ups with batches and/or each batch's kept pairs resampled."""
    n_b, n_r = ee.shape
    kept = np.sum(~np.isnan(ee), axis=1)
    whole = bool(np.all(kept == n_r))
    rng = np.random.default_rng(seed)
    out = np.empty(n_resamples)
    chunk = max(1, min(n_resamples, _CHUNK // max(1, n_b * n_r)))
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        b_idx = rng.integers(0, n_b, (size, n_b)) if batches else np.broadcast_to(np.arange(n_b), (size, n_b))
        count = kept[b_idx][:, :, None]
        if pairs:
            r_idx = np.floor(rng.random((size, n_b, n_r)) * count).astype(np.int64)
        else:
            r_idx = np.broadcast_to(np.arange(n_r), (size, n_b, n_r))
        rows = b_idx[:, :, None]
        e, p = ee[rows, r_idx], pl[rows, r_idx]
        if not whole:
            absent = np.arange(n_r)[None, None, :] >= count
            e, p = np.where(absent, np.nan, e), np.where(absent, np.nan, p)
        out[start : start + size] = _speedups(e, p, estimator, quantile)
    return out


def more_pairs(
    early_exit_ms: Sequence[float],
    plain_ms: Sequence[float],
    *,
    min_pairs: int = 7,
    max_pairs: int = 28,
    spread_limit: float = SPREAD_LIMIT,
) -> int:
    """How many more pairs to time on this batch now (0: enough).

    Fewer than ``min_pairs``: the rest of them. Then, while the batch's spread (IQR /
    median of either side) is above ``spread_limit`` and fewer than ``max_pairs`` were
    taken, double the pairs, unless the last doubling lowered neither side's minimum by
    more than 1% (the minimum has settled: more pairs would not move the estimate).

    Example:
        >>> more_pairs([1.0] * 3, [2.0] * 3)
        4
        >>> more_pairs([1.0] * 7, [2.0] * 7)  # quiet
        0
        >>> more_pairs([1.5, 1.0, 1.6, 1.4, 1.7, 1.2, 1.9], [2.0] * 7)  # noisy: the pairs double
        7
    """
    n = len(early_exit_ms)
    if len(plain_ms) != n:
        raise DyncalError(f"`early_exit_ms` and `plain_ms` must be paired, got {n} and {len(plain_ms)} times")
    if n < min_pairs:
        return min_pairs - n
    if n >= max_pairs:
        return 0
    ee, pl = np.asarray(early_exit_ms, dtype=np.float64), np.asarray(plain_ms, dtype=np.float64)
    spread = max(float((np.percentile(a, 75) - np.percentile(a, 25)) / np.median(a)) for a in (ee, pl))
    if spread <= spread_limit:
        return 0
    first = max(1, n // 2)
    settled = all(a[:first].min() - a.min() <= _SETTLE * a.min() for a in (ee, pl))
    if n > min_pairs and settled:
        return 0
    return min(n, max_pairs - n)
