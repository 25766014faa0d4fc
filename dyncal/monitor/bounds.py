"""The exact statistics of the monitor: Clopper-Pearson bounds, plan sample sizes, PSI and ATC."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as sst

from dyncal.constraints import check
from dyncal.errors import DyncalError

__all__ = [
    "clopper_pearson",
    "shadow_requests_needed",
    "population_stability_index",
    "atc_threshold",
]


def clopper_pearson(count: int, n: int, delta: float) -> tuple[float, float]:
    """One-sided exact (Clopper-Pearson) bounds of a binomial rate, each holding with probability ``1 - delta``.

    Args:
        count: Successes observed (disagreements, losses).
        n: Trials.
        delta: Error probability of each bound.

    Returns:
        ``(lower, upper)``: ``P(rate >= lower) >= 1 - delta`` and ``P(rate <= upper) >= 1 - delta``;
        ``(0, 1)`` for ``n = 0``. ``upper <= ε`` exactly when ``P(Binomial(n, ε) <= count) <= delta``.

    Example:
        >>> lo, hi = clopper_pearson(0, 300, 0.05)
        >>> lo, round(hi, 5)            # 1 - 0.05 ** (1 / 300)
        (0.0, 0.00994)
    """
    if n < 0 or not 0 <= count <= n:
        raise DyncalError(f"need 0 <= count <= n, got count {count} of n {n}")
    check("delta", delta)
    if n == 0:
        return 0.0, 1.0
    lower = 0.0 if count == 0 else float(sst.beta.ppf(delta, count, n - count + 1))
    upper = 1.0 if count == n else float(sst.beta.ppf(1.0 - delta, count + 1, n - count))
    return lower, upper


def shadow_requests_needed(max_drop: float, delta: float, rate: float = 0.0, *, limit: int = 10**9) -> int | None:
    """Fewest shadow requests with which the Clopper-Pearson upper bound can come to ``max_drop`` or below.

    With ``rate`` 0 this is the bound at zero disagreements, ``ceil(log δ / log(1 - ε))``
    (``1 - δ^(1/n) <= ε``). With a ``rate`` the traffic is assumed to disagree at, it is the
    smallest ``n`` at which ``ceil(rate * n)`` disagreements pass: ``P(Binomial(n, ε) <=
    ceil(rate n)) <= δ``. None when ``rate >= max_drop`` (never) or past ``limit``.

    Example:
        >>> shadow_requests_needed(0.01, 0.05), shadow_requests_needed(0.01, 0.05, rate=0.005)
        (299, 1182)
    """
    eps = float(check("max_drop", max_drop, rule="certified.max_drop"))
    dlt = float(check("delta", delta))
    r = float(check("rate", rate, rule="certified.rate"))
    if r >= eps:
        return None
    n0 = max(1, math.ceil(math.log(dlt) / math.log1p(-eps) - 1e-12))
    while sst.binom.cdf(0, n0, eps) > dlt:  # the closed form's rounding, made exact
        n0 += 1
    if r == 0.0:
        return n0
    # the count's rounding makes passing non-monotone in n: scan every n from n0, in vectorised blocks
    start, block = n0, 1 << 14
    while start <= limit:
        ns = np.arange(start, min(limit, start + block - 1) + 1)
        ok = sst.binom.cdf(np.ceil(r * ns), ns, eps) <= dlt
        if ok.any():
            return int(ns[np.argmax(ok)])
        start, block = start + block, min(block * 2, 1 << 20)
    return None


def population_stability_index(reference: np.ndarray, current: np.ndarray, n_bins: int = 10) -> float:
    """PSI of ``current`` against ``reference`` over ``n_bins`` quantile bins of the reference.

    ``sum (c_i - r_i) log(c_i / r_i)`` over bin shares (each floored at 1e-4). Common reading:
    below 0.1 stable, 0.1-0.25 moderate, above 0.25 a large shift. NaN when either is empty.

    Example:
        >>> x = np.random.default_rng(0).normal(size=5000)
        >>> population_stability_index(x, x) == 0.0, population_stability_index(x, x + 1) > 0.25
        (True, True)
    """
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    if ref.size == 0 or cur.size == 0:
        return float("nan")
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, n_bins + 1)[1:-1]))
    r = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=edges.size + 1) / ref.size
    c = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=edges.size + 1) / cur.size
    r, c = np.maximum(r, 1e-4), np.maximum(c, 1e-4)
    return float(np.sum((c - r) * np.log(c / r)))


def atc_threshold(confidence: np.ndarray, correct: np.ndarray) -> float:
    """Average thresholded confidence (Garg et al. 2022): the threshold whose share above is the accuracy.

    On labelled source data, ``t`` is chosen so that ``mean(confidence > t) == mean(correct)``;
    on unlabelled target data ``mean(confidence > t)`` estimates the accuracy.

    Example:
        >>> conf = np.array([0.9, 0.8, 0.7, 0.6]); ok = np.array([1, 1, 1, 0], bool)
        >>> t = atc_threshold(conf, ok); float(np.mean(conf > t))
        0.75
    """
    conf = np.sort(np.asarray(confidence, dtype=np.float64))
    if conf.size == 0:
        return float("nan")
    acc = float(np.mean(correct))
    below = int(round((1.0 - acc) * conf.size))  # this many samples at or below t
    if below <= 0:
        return float(np.nextafter(conf[0], -np.inf))
    return float(conf[below - 1])
