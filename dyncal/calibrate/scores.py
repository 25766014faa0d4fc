"""Confidence scores of every exit, computed from the logits a chunk of rows at a time.

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

from dyncal.choices import Score
from dyncal.errors import DyncalError

__all__ = ["exit_scores", "softmax"]


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


def exit_scores(
    logits: np.ndarray,
    score: Score | str = Score.MAXPROB,
    temperatures: Sequence[float] | np.ndarray | None = None,
    *,
    chunk_rows: int = 8192,
) -> tuple[np.ndarray, np.ndarray]:
    """Score and predicted class of every sample at every exit.

    Args:
        logits: ``(N, K, C)`` logits; may be a read-only memmap (read ``chunk_rows`` at a time).
        score: One of ``maxprob``, ``margin``, ``entropy`` (:class:`~dyncal.choices.Score`; a name is
            checked, a member is trusted).
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
    if not isinstance(score, Score):  # members come checked from the options objects and documents
        score = Score.parse(score, "score")
    n, k, c = logits.shape
    if temperatures is None:
        temps = np.ones(k)
    else:
        temps = np.asarray(temperatures, dtype=np.float64)
        if temps.shape != (k,) or not np.all(np.isfinite(temps)) or np.any(temps <= 0):
            raise DyncalError(f"temperatures must be {k} positive numbers, got {temps.tolist()}")
    scores = np.empty((n, k), dtype=np.float64)
    preds = np.empty((n, k), dtype=np.int64)
    inv_t = (1.0 / temps).astype(np.float32)[None, :, None]
    for start in range(0, n, chunk_rows):
        block = np.asarray(logits[start : start + chunk_rows], dtype=np.float32)
        rows = slice(start, start + block.shape[0])
        top = np.max(block, axis=-1, keepdims=True)
        if not np.all(np.isfinite(top)) or not np.all(np.isfinite(block)):
            bad = ~np.isfinite(block)
            row, ex = np.argwhere(bad)[0][:2]
            raise DyncalError(
                f"logits contain NaN or inf (row {start + row}, exit {ex + 1}); re-collect or fix the imported arrays"
            )
        # Softmax without materialising probabilities: with d = (z - max z) / T,
        # p_i = exp(d_i) / S where S = sum exp(d); the top probability is 1 / S.
        d = (block - top) * inv_t
        e = np.exp(d)
        total = e.sum(axis=-1, dtype=np.float64)
        preds[rows] = np.argmax(block, axis=-1)  # a positive temperature keeps the argmax
        if score == "maxprob" or (score == "margin" and c < 2):  # one class: no second probability to subtract
            scores[rows] = 1.0 / total
        elif score == "margin":
            second = np.partition(d, c - 2, axis=-1)[..., c - 2].astype(np.float64)
            scores[rows] = (1.0 - np.exp(second)) / total
        else:
            # -H = sum p_i log p_i = sum p_i d_i - log S
            scores[rows] = np.einsum("nkc,nkc->nk", e, d, dtype=np.float64) / total - np.log(total)
    return scores, preds
