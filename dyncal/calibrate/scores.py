"""Confidence scores of every exit, computed in chunks from (memory-mapped) logits.

The exit rule (DESIGN.md): with per-exit temperature ``T_k`` and score ``s_k`` computed
from ``logits_k / T_k``, a sample leaves at the first exit ``k`` with ``s_k >= t_k``.
All scores grow with confidence:

* ``maxprob`` — the top softmax probability (the default);
* ``margin`` — top-1 minus top-2 probability;
* ``entropy`` — the negative softmax entropy (nats).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dyncal.errors import DyncalError

__all__ = ["SCORES", "exit_scores", "softmax"]

SCORES = ("maxprob", "margin", "entropy")


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax along ``axis``.

    Example:
        >>> softmax(np.array([0.0, 0.0])).tolist()
        [0.5, 0.5]
    """
    z = z - np.max(z, axis=axis, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / np.sum(e, axis=axis, keepdims=True)
    return out


def _check_score(score: str) -> None:
    if score not in SCORES:
        raise DyncalError(f"--score must be one of {', '.join(SCORES)}; got {score!r}")


def exit_scores(
    logits: np.ndarray,
    score: str = "maxprob",
    temperatures: Sequence[float] | np.ndarray | None = None,
    *,
    chunk_rows: int = 8192,
) -> tuple[np.ndarray, np.ndarray]:
    """Score and predicted class of every sample at every exit.

    Args:
        logits: ``(N, K, C)`` logits; may be a read-only memmap (read ``chunk_rows`` at a time).
        score: One of ``maxprob``, ``margin``, ``entropy``.
        temperatures: ``K`` positive temperatures (default all 1).
        chunk_rows: Rows processed at once; bounds memory at ``chunk_rows * K * C`` floats.

    Returns:
        ``(scores, predictions)``: float64 ``(N, K)`` and int64 ``(N, K)``.

    Raises:
        DyncalError: Unknown score, bad temperatures, or NaN/inf logits.

    Example:
        >>> s, p = exit_scores(np.array([[[2.0, 0.0], [0.0, 0.0]]]))
        >>> p.tolist(), round(float(s[0, 0]), 3), float(s[0, 1])
        ([[0, 0]], 0.881, 0.5)
    """
    _check_score(score)
    n, k, c = logits.shape
    if temperatures is None:
        temps = np.ones(k)
    else:
        temps = np.asarray(temperatures, dtype=np.float64)
        if temps.shape != (k,) or not np.all(np.isfinite(temps)) or np.any(temps <= 0):
            raise DyncalError(f"temperatures must be {k} positive numbers, got {temps.tolist()}")
    scores = np.empty((n, k), dtype=np.float64)
    preds = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, chunk_rows):
        block = np.asarray(logits[start : start + chunk_rows], dtype=np.float64)
        if not np.all(np.isfinite(block)):
            row, ex = np.argwhere(~np.isfinite(block))[0][:2]
            raise DyncalError(
                f"logits contain NaN or inf (row {start + row}, exit {ex + 1}); "
                "re-collect or fix the imported arrays"
            )
        p = softmax(block / temps[None, :, None], axis=-1)
        rows = slice(start, start + block.shape[0])
        preds[rows] = np.argmax(p, axis=-1)
        if score == "maxprob":
            scores[rows] = np.max(p, axis=-1)
        elif score == "margin":
            top2 = np.partition(p, c - 2, axis=-1)[..., -2:] if c >= 2 else np.concatenate([np.zeros_like(p), p], -1)
            scores[rows] = top2[..., 1] - top2[..., 0]
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                plogp = np.where(p > 0, p * np.log(p), 0.0)
            scores[rows] = np.sum(plogp, axis=-1)
    return scores, preds
