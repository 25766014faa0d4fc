"""What the report says of the runtime and of ``verify --throughput``: page 1's sentences and its advice.

A verify result records the runtime the early exit and the plain model ran under
(``settings.runtime``) and, with ``--throughput``, samples/s of per-batch early exit, the
throughput mode (``runner.map``) and the plain deployment per batch size. At the judged
latency key (the batch size the report judges; else the largest measured):

* :func:`runtime_sentences` say which runtime both sides used and what throughput each
  mode reached, for page 1's trade-off text;
* :func:`throughput_notes` turn a recommendation other than per-batch early exit into a
  note on page 1: the throughput mode when per-batch early exit loses to the plain
  deployment but pooling rows wins, the plain model when neither wins.

Example:
    >>> from dyncal.artifacts.verify import ModelIdentity, VerifyResult
    >>> t = {"version": 1, "key": "cuda/b32", "runtime": "graphs", "timer": "cuda_events", "batch_size": 32,
    ...      "samples": 8192, "seconds": {"per_batch": [1.1] * 3, "rebatched": [0.8] * 3, "plain": [1.0] * 3},
    ...      "agreement": 1.0, "exit_shares": [0.5, 0.5], "macs_ratio": 1.5}
    >>> v = VerifyResult("r", "d", ModelIdentity("m", None), 1, 1, 1, 1, 1, (1,), (1,), (), "cuda:0", "H200", None,
    ...                  throughput=(t,))
    >>> print(throughput_notes(v, "cuda/b32")[0])  # doctest: +NORMALIZE_WHITESPACE
    At cuda/b32 per-batch early exit is slower than the plain deployment (0.91x its samples/s, verify
    --throughput, graphs); the throughput mode (runner.map), which pools the rows that continue into full
    batches, reaches 1.25x (83% of the 1.50x MACs ratio): deploy it for offline or streaming work.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from dyncal.artifacts.costs import LatencyKey
from dyncal.artifacts.throughput import ThroughputResult
from dyncal.errors import DyncalError

if TYPE_CHECKING:
    from dyncal.artifacts.verify import VerifyResult

__all__ = ["judged_throughput", "runtime_sentences", "throughput_notes"]

_MODE_NAMES = {
    "per_batch": "per-batch early exit",
    "rebatched": "the throughput mode for offline or streaming work",
    "plain": "the plain model",
}


def judged_throughput(verify: VerifyResult | None, key: str | None) -> tuple[str, ThroughputResult] | None:
    """The throughput measured at ``key`` (else at the largest batch measured), or None.

    An entry that cannot be read is passed over (the verify document was validated when
    loaded; only its throughput fields are read here).
    """
    if verify is None or not verify.throughput:
        return None
    entries = {str(t["key"]): t for t in verify.throughput}
    if key is None or key not in entries:
        if key is not None:
            return None
        key = max(entries, key=lambda k: LatencyKey.parse(k).batch_size)
    try:
        return key, ThroughputResult.from_dict(entries[key])
    except (DyncalError, KeyError, TypeError, ValueError):
        return None


def runtime_sentences(verify: VerifyResult | None, key: str | None) -> list[str]:
    """Which runtime the verified early exit and plain model ran under, and the judged throughput."""
    if verify is None:
        return []
    out = []
    runtime = verify.settings.get("runtime")
    if isinstance(runtime, Mapping):
        out.append(
            f"Verify ran the early exit under {runtime.get('early_exit')} and the plain model under "
            f"{runtime.get('plain')}."
        )
    judged = judged_throughput(verify, key)
    if judged is not None:
        k, res = judged
        modes = [f"per-batch early exit {res.speedup('per_batch'):.2f}x"]
        if "rebatched" in res.seconds:
            modes.append(f"the throughput mode (runner.map) {res.speedup('rebatched'):.2f}x")
        out.append(
            f"In samples/s on {k} ({res.samples:,} rows, {res.runtime}): {', '.join(modes)} the plain deployment's "
            f"{res.samples_per_s('plain'):,.0f}/s; deploy {_MODE_NAMES.get(res.recommendation, res.recommendation)}."
        )
    return out


def throughput_notes(verify: VerifyResult | None, key: str | None) -> list[str]:
    """A note when per-batch early exit loses at the judged key: the mode to deploy instead."""
    judged = judged_throughput(verify, key)
    if judged is None:
        return []
    k, res = judged
    rec = res.recommendation
    if rec == "per_batch":
        return []
    per_batch = res.speedup("per_batch")
    if rec == "rebatched":
        share = res.share_of_macs_ratio("rebatched")
        of_macs = "" if share is None else f" ({100 * share:.0f}% of the {res.macs_ratio:.2f}x MACs ratio)"
        return [
            f"At {k} per-batch early exit is slower than the plain deployment ({per_batch:.2f}x its samples/s, "
            f"verify --throughput, {res.runtime}); the throughput mode (runner.map), which pools the rows that "
            f"continue into full batches, reaches {res.speedup('rebatched'):.2f}x{of_macs}: deploy it for offline "
            "or streaming work."
        ]
    return [f"At {k} neither early-exit mode beats the plain deployment in samples/s: {res.advice}."]
