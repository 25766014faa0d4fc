"""Identity of a set of exit decisions, so that results can be bound to the thresholds they used."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

__all__ = ["decision_fingerprint"]


def decision_fingerprint(score: str, temperatures: Sequence[float], thresholds: Sequence[float | None]) -> str:
    """SHA-256 of what decides every sample's exit: the score, temperatures and thresholds.

    Two thresholds documents with the same fingerprint send every sample to the same exit;
    a verify result or a report records it to refuse evidence made with other thresholds.

    Example:
        >>> a = decision_fingerprint("maxprob", [1.0, 1.0], [0.9, None])
        >>> a == decision_fingerprint("maxprob", [1.0, 1.0], [0.9, None])
        True
        >>> a == decision_fingerprint("maxprob", [1.0, 1.0], [0.8, None])
        False
    """
    doc = {
        "score": str(score),
        "temperatures": [float(t) for t in temperatures],
        "thresholds": [None if t is None else float(t) for t in thresholds],
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode("utf-8")).hexdigest()
