"""Per-exit accuracy, confidence and expected calibration error (ECE)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dyncal.artifacts.fields import JsonFields
from dyncal.calibrate.scores import exit_scores
from dyncal.errors import DyncalError

__all__ = ["ReliabilityBins", "reliability_bins", "expected_calibration_error", "ExitStats", "exit_stats"]


@dataclass(frozen=True)
class ReliabilityBins:
    """Equal-width confidence bins: what a reliability diagram draws.

    Attributes:
        edges: ``n_bins + 1`` bin edges on [0, 1].
        count: Samples per bin, ``(n_bins,)``.
        accuracy: Mean correctness per bin (NaN where empty).
        confidence: Mean confidence per bin (NaN where empty).
    """

    edges: np.ndarray
    count: np.ndarray
    accuracy: np.ndarray
    confidence: np.ndarray

    @property
    def ece(self) -> float:
        """Expected calibration error: count-weighted mean |accuracy - confidence|."""
        total = self.count.sum()
        if total == 0:
            return float("nan")
        gap = np.abs(np.nan_to_num(self.accuracy) - np.nan_to_num(self.confidence))
        return float(np.sum(self.count * gap) / total)


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> ReliabilityBins:
    """Bin samples by confidence.

    Args:
        confidence: ``(N,)`` top-class probabilities in [0, 1].
        correct: ``(N,)`` booleans.
        n_bins: Number of equal-width bins (default 15).

    Returns:
        The bins; ``.ece`` is the expected calibration error.

    Example:
        >>> b = reliability_bins(np.array([0.9, 0.9]), np.array([True, False]), n_bins=10)
        >>> round(b.ece, 3)
        0.4
    """
    if not isinstance(n_bins, int) or n_bins < 1:
        raise DyncalError(f"Expected argument `n_bins` to be an integer larger than 0, but got {n_bins}")
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Right-closed bins; confidence 0 goes to the first bin.
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(which, weights=correct, minlength=n_bins) / count
        conf = np.bincount(which, weights=confidence, minlength=n_bins) / count
    return ReliabilityBins(edges=edges, count=count, accuracy=acc, confidence=conf)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """ECE with ``n_bins`` equal-width bins.

    Example:
        >>> expected_calibration_error(np.array([1.0, 1.0]), np.array([True, True]))
        0.0
    """
    return reliability_bins(confidence, correct, n_bins).ece


@dataclass(frozen=True)
class ExitStats(JsonFields):
    """Accuracy and calibration of one exit (temperature 1)."""

    exit: int
    accuracy: float
    mean_confidence: float
    ece: float


def exit_stats(logits: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> list[ExitStats]:
    """Top-1 accuracy, mean top-class probability and ECE of every exit.

    Args:
        logits: ``(N, K, C)``, may be memory-mapped.
        labels: ``(N,)``.
        n_bins: ECE bins.

    Returns:
        ``K`` :class:`ExitStats`, exit 1 first.
    """
    conf, pred = exit_scores(logits, "maxprob")
    correct = pred == np.asarray(labels)[:, None]
    return [
        ExitStats(
            exit=k + 1,
            accuracy=float(correct[:, k].mean()),
            mean_confidence=float(conf[:, k].mean()),
            ece=expected_calibration_error(conf[:, k], correct[:, k], n_bins),
        )
        for k in range(logits.shape[1])
    ]
