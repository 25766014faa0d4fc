"""What a timing is: raw replicate milliseconds, every summary derived on read (numpy only).

:class:`Measurement` holds the replicates of one timed thing (after
``torch.utils.benchmark``'s ``Measurement``) and derives its median, quantiles, IQR and
spread; :func:`row_medians` and :func:`row_spreads` are the same rules over the rows of a
``(batches, repeats)`` matrix, vectorised. The one noise rule lives here:
:func:`is_noisy`, a spread above :data:`NOISE_IQR_FRACTION`.

Example:
    >>> m = Measurement((1.0, 1.0, 2.0, 3.0, 3.0))
    >>> m.median_ms, m.iqr_ms, m.spread, m.noisy
    (2.0, 2.0, 1.0, True)
    >>> row_medians([[1.0, 2.0, 9.0], [4.0, 4.0, 4.0]]).tolist()
    [2.0, 4.0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "NOISE_IQR_FRACTION",
    "NOISE_ADVICE",
    "Measurement",
    "is_noisy",
    "noise_advice",
    "row_medians",
    "row_spreads",
]

NOISE_IQR_FRACTION = 0.10
"""A measurement whose IQR exceeds this fraction of its median is flagged as noisy."""

NOISE_ADVICE = "run on a quiet machine, pin one thread (`threads` 1), or take more replicates (`repeats`)"
"""What to do about a noisy measurement, when nothing is known of how it was taken (:func:`noise_advice`)."""


def noise_advice(threads: int | None = None, repeats: int | None = None) -> str:
    """What to do about a noisy measurement, leaving out what was already done.

    Pinning one thread is advised only when more (or torch's default) were used; more
    replicates are counted from those taken.

    Example:
        >>> noise_advice(threads=1, repeats=25)
        'run on a quiet machine, or take more replicates (`repeats` 100; 25 were taken)'
        >>> noise_advice()
        'run on a quiet machine, pin one thread (`threads` 1), or take more replicates (`repeats`)'
    """
    more = "`repeats`" if repeats is None else f"`repeats` {4 * repeats}; {repeats} were taken"
    pin = ["pin one thread (`threads` 1)"] if threads != 1 else []
    return ", ".join(["run on a quiet machine", *pin, f"or take more replicates ({more})"])


def row_medians(a: ArrayLike) -> np.ndarray:
    """The median of each row (the last axis) of replicate milliseconds.

    Example:
        >>> row_medians([[3.0, 1.0], [2.0, 2.0]]).tolist()
        [2.0, 2.0]
    """
    return np.asarray(np.median(np.asarray(a, dtype=float), axis=-1))


def row_spreads(a: ArrayLike) -> np.ndarray:
    """The spread of each row (the last axis): its IQR over its 50th percentile, 0 where that is not positive.

    Example:
        >>> row_spreads([[1.0, 1.0, 2.0, 3.0, 3.0], [0.0, 0.0, 0.0, 0.0, 1.0]]).tolist()
        [1.0, 0.0]
    """
    q75, q50, q25 = np.percentile(np.asarray(a, dtype=float), [75, 50, 25], axis=-1)
    return np.asarray(np.divide(q75 - q25, q50, out=np.zeros_like(q50), where=q50 > 0))


def is_noisy(spread: float) -> bool:
    """Whether a spread (IQR / median) is above :data:`NOISE_IQR_FRACTION`: the noise rule.

    Example:
        >>> is_noisy(0.1), is_noisy(0.25)
        (False, True)
    """
    return spread > NOISE_IQR_FRACTION


@dataclass(frozen=True)
class Measurement:
    """The raw replicates of one timed thing, in milliseconds; summaries are derived on read.

    An empty measurement (nothing timed) has NaN for its median, quantiles and IQR, and a
    spread of 0.

    Attributes:
        replicates_ms: Milliseconds per call of each replicate, in the order timed.
    """

    replicates_ms: tuple[float, ...]

    def quantile(self, q: float) -> float:
        """The ``q`` quantile of the replicates (numpy's linear rule; 0 the fastest, 1 the slowest)."""
        return float(np.quantile(self.replicates_ms, q)) if self.replicates_ms else math.nan

    @property
    def median_ms(self) -> float:
        """The median replicate."""
        return float(np.median(self.replicates_ms)) if self.replicates_ms else math.nan

    @property
    def iqr_ms(self) -> float:
        """The inter-quartile range: 75th minus 25th percentile."""
        return self.quantile(0.75) - self.quantile(0.25)

    @property
    def spread(self) -> float:
        """IQR over the 50th percentile (the relative noise; 0 when that is not positive)."""
        return float(row_spreads(self.replicates_ms)) if self.replicates_ms else 0.0

    @property
    def noisy(self) -> bool:
        """Whether the spread is above :data:`NOISE_IQR_FRACTION` (:func:`is_noisy`)."""
        return is_noisy(self.spread)

    def resampled(self, rng: np.random.Generator) -> Measurement:
        """A bootstrap replicate: as many replicates drawn from these with replacement.

        Example:
            >>> Measurement((2.0, 2.0)).resampled(np.random.default_rng(0))
            Measurement(replicates_ms=(2.0, 2.0))
        """
        a = np.asarray(self.replicates_ms, dtype=float)
        return Measurement(tuple(a[rng.integers(0, len(a), len(a))].tolist()))
