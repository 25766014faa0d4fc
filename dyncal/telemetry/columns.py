"""The telemetry writer's buffer: the rows recorded since the last flush.

Two ways in. :meth:`Columns.append` stores a checked batch (numpy arrays) in preallocated
columns. The runner's batch-1 path (:meth:`~dyncal.telemetry.TelemetryWriter.record_one`)
appends one tuple of references per request to :attr:`Columns.deferred`: converting a
request's few small tensors to numbers costs microseconds each, which at batch 1 is a visible
share of a small model's latency; the flush converts them all at once
(:meth:`Columns.absorb`, with the converter the runner gave the writer).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dyncal.errors import DyncalError

__all__ = ["Columns", "Deferred", "DeferredConvert"]

Deferred = tuple[int, int, float, str | None, Any]
"""One deferred request: ``(batch number, time stamp in ns since the epoch, latency ms, request id, payload)``."""

DeferredConvert = Callable[[Sequence[Any]], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
"""Payloads of ``n`` deferred requests -> ``(exits, predictions, scores (n, K) NaN past each exit, last
predictions (-1 where not shadowed))``."""


class Columns:
    """Rows not yet flushed: recorded batches in preallocated columns, deferred requests as references.

    A batch given to :meth:`~dyncal.telemetry.TelemetryWriter.record` costs a few item stores
    here, not an object. A request given to :meth:`~dyncal.telemetry.TelemetryWriter.record_one`
    is one tuple appended to :attr:`deferred` (the runner's own small tensors, untouched); the
    flush turns them all into columns at once (:meth:`absorb`).
    """

    def __init__(self, capacity: int, k: int) -> None:
        self.n = 0
        self.oldest: float | None = None
        self.time_us = np.empty(capacity, np.int64)
        self.batch = np.empty(capacity, np.int64)
        self.batch_size = np.empty(capacity, np.int32)
        self.exits = np.empty(capacity, np.int64)
        self.predictions = np.empty(capacity, np.int64)
        self.scores = np.empty((capacity, k), np.float32)
        self.latency_ms = np.empty(capacity, np.float32)
        self.last = np.empty(capacity, np.int64)
        self.request_ids: list[str | None] | None = None  # None until a batch brings ids
        self.deferred: list[Deferred] = []

    @property
    def rows(self) -> int:
        """Rows buffered: in the columns and deferred."""
        return self.n + len(self.deferred)

    def reserve(self, rows: int) -> None:
        """Room for ``rows`` more rows (the columns double when full)."""
        need = self.n + rows
        if need <= self.exits.shape[0]:
            return
        size = max(need, 2 * self.exits.shape[0])
        for name in ("time_us", "batch", "batch_size", "exits", "predictions", "latency_ms", "last"):
            old = getattr(self, name)
            new = np.empty(size, old.dtype)
            new[: self.n] = old[: self.n]
            setattr(self, name, new)
        scores = np.empty((size, self.scores.shape[1]), np.float32)
        scores[: self.n] = self.scores[: self.n]
        self.scores = scores

    def append(
        self,
        time_us: int,
        batch: int,
        exits: np.ndarray,
        predictions: np.ndarray,
        scores: np.ndarray,
        latency_ms: float | np.ndarray,
        last: np.ndarray | None,
        request_ids: Sequence[str | None] | None,
    ) -> None:
        """Store one checked batch (the caller holds the buffer lock)."""
        b = exits.shape[0]
        self.reserve(b)
        i = self.n
        if b == 1:  # batch-1 serving: item stores
            self.time_us[i] = time_us
            self.batch[i] = batch
            self.batch_size[i] = 1
            self.exits[i] = exits[0]
            self.predictions[i] = predictions[0]
            self.scores[i] = scores[0]
            self.latency_ms[i] = latency_ms if isinstance(latency_ms, float) else latency_ms[0]
            self.last[i] = -1 if last is None else last[0]
        else:
            j = i + b
            self.time_us[i:j] = time_us
            self.batch[i:j] = batch
            self.batch_size[i:j] = b
            self.exits[i:j] = exits
            self.predictions[i:j] = predictions
            self.scores[i:j] = scores
            self.latency_ms[i:j] = latency_ms
            self.last[i:j] = -1 if last is None else last
        if request_ids is not None:
            if self.request_ids is None:
                self.request_ids = [None] * i
            self.request_ids.extend(None if r is None else str(r) for r in request_ids)
        elif self.request_ids is not None:
            self.request_ids.extend([None] * b)
        self.n += b

    def absorb(self, convert: DeferredConvert | None) -> None:
        """Turn the deferred requests into column rows (``convert`` reads their payloads), in batch order."""
        entries, self.deferred = self.deferred, []
        if not entries:
            return
        if convert is None:
            raise DyncalError("deferred telemetry rows need the writer's `deferred` converter")
        m, i = len(entries), self.n
        exits, predictions, scores, last = convert([e[4] for e in entries])
        if (
            exits.shape != (m,)
            or predictions.shape != (m,)
            or last.shape != (m,)
            or scores.shape != (m, self.scores.shape[1])
        ):
            raise DyncalError(f"the deferred telemetry converter returned arrays that do not fit {m} requests")
        self.reserve(m)
        j = i + m
        self.batch[i:j] = np.fromiter((e[0] for e in entries), np.int64, m)
        self.time_us[i:j] = np.fromiter((e[1] for e in entries), np.int64, m) // 1000
        self.latency_ms[i:j] = np.fromiter((e[2] for e in entries), np.float64, m)
        self.batch_size[i:j] = 1
        self.exits[i:j] = exits
        self.predictions[i:j] = predictions
        self.scores[i:j] = scores
        self.last[i:j] = last
        ids = [e[3] for e in entries]
        if self.request_ids is not None or any(r is not None for r in ids):
            if self.request_ids is None:
                self.request_ids = [None] * i
            self.request_ids.extend(ids)
        self.n = j
        if i:  # batches recorded both ways: back into the order they were recorded in
            order = np.argsort(self.batch[:j], kind="stable")
            for name in ("time_us", "batch", "batch_size", "exits", "predictions", "scores", "latency_ms", "last"):
                column = getattr(self, name)
                column[:j] = column[:j][order]
            if self.request_ids is not None:
                self.request_ids = [self.request_ids[o] for o in order.tolist()]
