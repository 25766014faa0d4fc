"""Risk control for early exit: Learn then Test (Angelopoulos, Bates et al. 2021).

Goal: thresholds whose accuracy on *new* data is at most ``max_drop`` (ε) below the last
exit's, with probability at least ``1 - delta`` over the draw of the calibration data.

Procedure:

1. Candidate thresholds are ordered from the most conservative (everything at the last
   exit, drop 0) to the cheapest. The order must not depend on the data used in step 2;
   :func:`dyncal.calibrate.solvers.solve_run` builds it with the solver on one half of the
   calibration part and tests on the other half.
2. For each candidate, a p-value for the null hypothesis "drop > ε" on the test half:

   * ``binomial`` (default): exact binomial tail of the number of samples that the last
     exit gets right and the candidate gets wrong. That count's mean bounds the drop from
     above (samples the candidate fixes are ignored), so the test is valid and
     conservative, and exact for Bernoulli losses.
   * ``hb``: Hoeffding–Bentkus bound on the signed loss ``(1[last right] - 1[candidate
     right] + 1) / 2`` in [0, 1] against ``(ε + 1) / 2``; uses the fixes too, but the bound
     is looser for losses concentrated at 1/2.

3. Fixed-sequence testing: walk the order, stop at the first p-value above δ; every
   candidate before it is accepted with family-wise error ≤ δ, and the cheapest accepted
   one is returned.

Assumption: calibration and deployment samples are exchangeable (i.i.d. from the same
distribution). Under distribution shift the guarantee does not hold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import binom

from dyncal.calibrate.policy import assign_exits
from dyncal.choices import PValue
from dyncal.constraints import check
from dyncal.errors import DyncalError

__all__ = [
    "binomial_pvalue",
    "hoeffding_bentkus_pvalue",
    "fixed_sequence_test",
    "LTTResult",
    "learn_then_test",
    "min_test_samples",
]


def binomial_pvalue(n_losses: int, n: int, max_rate: float) -> float:
    """P-value of "loss rate > max_rate" after ``n_losses`` losses in ``n`` Bernoulli trials.

    Args:
        n_losses: Observed losses.
        n: Trials.
        max_rate: The rate tested (ε).

    Returns:
        ``P(Binomial(n, max_rate) <= n_losses)``.

    Example:
        >>> round(binomial_pvalue(0, 100, 0.05), 4)
        0.0059
    """
    if n <= 0:
        return 1.0
    return float(binom.cdf(n_losses, n, max_rate))


def hoeffding_bentkus_pvalue(mean_loss: float, n: int, alpha: float) -> float:
    """Hoeffding–Bentkus p-value of "mean loss > alpha" for losses in [0, 1].

    ``min(exp(-n h(min(mean, alpha), alpha)), e * P(Binomial(n, alpha) <= ceil(n mean)))``
    with ``h(a, b) = a log(a/b) + (1-a) log((1-a)/(1-b))``.

    Example:
        >>> hoeffding_bentkus_pvalue(0.0, 200, 0.05) < 0.001
        True
    """
    if n <= 0:
        return 1.0
    if not 0 < alpha < 1:
        raise DyncalError(f"alpha must lie in (0, 1), got {alpha}")
    a = min(mean_loss, alpha)

    def h(x: float, y: float) -> float:
        first = 0.0 if x <= 0 else x * math.log(x / y)
        second = 0.0 if x >= 1 else (1 - x) * math.log((1 - x) / (1 - y))
        return first + second

    hoeff = math.exp(-n * h(a, alpha))
    bentkus = math.e * float(binom.cdf(math.ceil(n * mean_loss - 1e-9), n, alpha))
    return float(min(1.0, hoeff, bentkus))


def fixed_sequence_test(p_values: Sequence[float], delta: float) -> int:
    """How many leading hypotheses fixed-sequence testing rejects at level ``delta``.

    Example:
        >>> fixed_sequence_test([0.001, 0.01, 0.2, 0.001], 0.05)
        2
    """
    return next((i for i, p in enumerate(p_values) if p > delta), len(p_values))


@dataclass(frozen=True)
class LTTResult:
    """Outcome of :func:`learn_then_test`.

    Attributes:
        index: Index of the chosen (cheapest accepted) candidate; -1 when none was accepted.
        p_values: P-value of every candidate, in order.
        n_accepted: Candidates accepted by fixed-sequence testing.
        method: ``"binomial"`` or ``"hb"``.
        n_test: Samples the p-values were computed on.
    """

    index: int
    p_values: tuple[float, ...]
    n_accepted: int
    method: str
    n_test: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "index": self.index,
            "n_candidates": len(self.p_values),
            "n_accepted": self.n_accepted,
            "p_value_method": self.method,
            "n_test": self.n_test,
        }


def learn_then_test(
    candidates: Sequence[np.ndarray],
    scores: np.ndarray,
    correct: np.ndarray,
    *,
    max_drop: float,
    delta: float,
    pvalue: str = "binomial",
) -> LTTResult:
    """Accept candidates in order while the drop versus the last exit is shown ≤ ε.

    Args:
        candidates: Thresholds (``K - 1`` floats each), most conservative first; the order
            must not depend on ``scores``/``correct``.
        scores: ``(n, K)`` scores of the test samples.
        correct: ``(n, K)`` correctness of the test samples.
        max_drop: ε, the tolerated accuracy drop versus the last exit, in [0, 1).
        delta: δ, the tolerated probability of exceeding ε, in (0, 1).
        pvalue: ``"binomial"`` or ``"hb"``.

    Returns:
        The result; ``index`` is the last accepted candidate (-1: none).

    Raises:
        DyncalError: ε or δ out of range, or an unknown p-value method.

    Example:
        >>> s = np.array([[0.9, 1.0]] * 400)
        >>> ok = np.array([[True, True]] * 400)
        >>> cands = [np.array([np.inf]), np.array([0.5])]
        >>> learn_then_test(cands, s, ok, max_drop=0.01, delta=0.05).index
        1
    """
    check("max_drop", max_drop)
    check("delta", delta)
    PValue.parse(pvalue, "pvalue")
    n, k = scores.shape
    last_ok = correct[:, k - 1]
    pvals: list[float] = []
    for t in candidates:
        ok = correct[np.arange(n), assign_exits(scores, t)]
        signed = (last_ok.astype(np.float64) - ok.astype(np.float64) + 1.0) / 2.0
        pvals.append(_drop_pvalue(pvalue, n, max_drop, int(np.sum(last_ok & ~ok)), float(signed.mean()) if n else 1.0))
    accepted = fixed_sequence_test(pvals, delta)
    return LTTResult(index=accepted - 1, p_values=tuple(pvals), n_accepted=accepted, method=pvalue, n_test=n)


def _drop_pvalue(pvalue: str, n: int, max_drop: float, losses: int, mean_signed_loss: float) -> float:
    """P-value of "drop > max_drop" on ``n`` test samples: binomial on the losses, or hb on the mean signed loss."""
    if pvalue == "binomial":
        return binomial_pvalue(losses, n, max_drop) if max_drop > 0 else 1.0
    return hoeffding_bentkus_pvalue(mean_signed_loss, n, (max_drop + 1.0) / 2.0)


def min_test_samples(max_drop: float, delta: float, pvalue: str = "binomial") -> int | None:
    """Fewest test samples with which even a candidate that loses none can pass.

    The most conservative candidate (every sample at the last exit) never loses a sample
    the last exit gets right; it passes when its p-value is at most δ. With fewer test
    samples than this, no candidate can pass (for the binomial test,
    ``(1 - ε)^n <= δ``, so ``n >= log δ / log(1 - ε)``).

    Returns:
        The smallest such ``n``, or None when no number of samples suffices (ε = 0).

    Example:
        >>> min_test_samples(0.005, 0.05)
        598
    """

    def p(n: int) -> float:  # the last exit alone: no losses, signed loss 1/2 on every sample
        return _drop_pvalue(pvalue, n, max_drop, 0, 0.5)

    if max_drop <= 0:
        return None
    hi = 1
    while p(hi) > delta:
        hi *= 2
        if hi > 2**40:
            return None
    lo = hi // 2  # p(lo) > delta (or lo == 0)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if p(mid) <= delta:
            hi = mid
        else:
            lo = mid
    return hi
