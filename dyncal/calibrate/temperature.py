"""Per-exit temperature scaling (Guo et al. 2017), fitted by negative log-likelihood.

Each exit is its own classifier with its own over- or under-confidence, so each gets its
own temperature ``T_k``: the minimiser of the mean NLL of ``softmax(logits_k / T_k)``.
The NLL is convex in ``1 / T``, so a bounded scalar search (scipy's Brent method on
``log T``) finds the global minimum. Logits are scaled in chunks of rows, so the temporary
arrays stay small whatever the run's size.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from dyncal.errors import DyncalError

__all__ = ["TemperatureScaler"]

log = logging.getLogger(__name__)


def _nll(logits: np.ndarray, labels: np.ndarray, exit_: int, temp: float, chunk_rows: int) -> float:
    """Mean NLL of exit ``exit_`` at temperature ``temp``."""
    total = 0.0
    n = logits.shape[0]
    for start in range(0, n, chunk_rows):
        z = np.asarray(logits[start : start + chunk_rows, exit_], dtype=np.float64) / temp
        y = labels[start : start + chunk_rows]
        zmax = z.max(axis=1)
        lse = zmax + np.log(np.exp(z - zmax[:, None]).sum(axis=1))
        total += float(np.sum(lse - z[np.arange(z.shape[0]), y]))
    return float(total / n)


class TemperatureScaler:
    """One temperature per exit, fitted by NLL (scikit-learn estimator conventions).

    Args:
        min_temperature: Smallest temperature searched (default 0.05).
        max_temperature: Largest temperature searched (default 20.0).
        chunk_rows: Rows of logits read at a time (default 4096).

    Attributes:
        temperatures_: ``(K,)`` fitted temperatures, after :meth:`fit`.
        nll_before_: ``(K,)`` mean NLL at ``T = 1``.
        nll_after_: ``(K,)`` mean NLL at the fitted temperatures.
        at_bound_: ``(K,)`` booleans: the fit stopped at ``min_temperature`` or
            ``max_temperature`` (also logged as a warning).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> y = rng.integers(0, 3, 500)
        >>> z = 3 * np.eye(3)[y][:, None, :].repeat(2, 1) + rng.normal(0, 2, (500, 2, 3))
        >>> ts = TemperatureScaler().fit(z, y)
        >>> ts.temperatures_.shape, bool(np.all(ts.nll_after_ <= ts.nll_before_))
        ((2,), True)
    """

    def __init__(
        self,
        *,
        min_temperature: float = 0.05,
        max_temperature: float = 20.0,
        chunk_rows: int = 4096,
    ) -> None:
        self.min_temperature = min_temperature
        self.max_temperature = max_temperature
        self.chunk_rows = chunk_rows

    def fit(self, logits: np.ndarray, labels: np.ndarray) -> TemperatureScaler:
        """Fit the temperatures.

        Args:
            logits: ``(N, K, C)`` logits (may be memory-mapped).
            labels: ``(N,)`` integer classes.

        Returns:
            self.

        Raises:
            DyncalError: Bad shapes, empty data, or an invalid temperature range.
        """
        from scipy.optimize import minimize_scalar

        if not (0 < self.min_temperature < self.max_temperature and math.isfinite(self.max_temperature)):
            raise DyncalError(
                "TemperatureScaler needs 0 < min_temperature < max_temperature, got "
                f"{self.min_temperature} and {self.max_temperature}"
            )
        if logits.ndim != 3:
            raise DyncalError(f"logits must be (N, K, C), got shape {logits.shape}")
        labels = np.asarray(labels, dtype=np.int64)
        n, k, _ = logits.shape
        if n == 0 or labels.shape != (n,):
            raise DyncalError(
                f"temperature fitting needs N > 0 labels matching logits {logits.shape}, got {labels.shape}"
            )
        lo, hi = math.log(self.min_temperature), math.log(self.max_temperature)
        temps = np.ones(k)
        before = np.empty(k)
        after = np.empty(k)
        for j in range(k):
            before[j] = _nll(logits, labels, j, 1.0, self.chunk_rows)
            res = minimize_scalar(
                lambda lt, j=j: _nll(logits, labels, j, math.exp(lt), self.chunk_rows),
                bounds=(lo, hi),
                method="bounded",
                options={"xatol": 1e-4},
            )
            t = float(math.exp(res.x))
            val = float(res.fun)
            if not math.isfinite(val) or val > before[j]:
                t, val = 1.0, before[j]
            temps[j], after[j] = t, val
        self.temperatures_ = temps
        self.nll_before_ = before
        self.nll_after_ = after
        # the search is on log T to xatol 1e-4; within 1e-3 of a bound is at the bound
        self.at_bound_ = (np.abs(np.log(temps) - lo) < 1e-3) | (np.abs(np.log(temps) - hi) < 1e-3)
        if np.any(self.at_bound_):
            exits = ", ".join(f"exit {j + 1}: T={temps[j]:.3g}" for j in np.flatnonzero(self.at_bound_))
            log.warning(
                "fitted temperature hit the search bound [%g, %g] (%s): that exit's NLL wants "
                "a more extreme temperature (logits nearly constant, or almost always right "
                "or wrong); its scores may be poorly calibrated",
                self.min_temperature,
                self.max_temperature,
                exits,
            )
        return self
