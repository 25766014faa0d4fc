"""The telemetry writer's buffer: the rows recorded since the last flush.

Two ways in. :meth:`Columns.append` stores a checked batch (numpy arrays) in preallocated
columns. The runner's batch-1 path (:meth:`~dyncal.telemetry.TelemetryWriter.record_one`)
appends one tuple of plain numbers per request to :class:`Singles` (one object touched, no
array store; a request's tensors kept until the flush would make Python's garbage collector
walk them, which costs more than reading their values), except the logits of a request that
reached the last exit, whose score the exit rule never needed: the flush computes those for
the whole buffer at once (the writer's ``deferred`` function). :meth:`Columns.absorb` turns
the tuples into column rows.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dyncal.errors import DyncalError

__all__ = ["Columns", "DeferredScores", "Single", "Singles"]

DeferredScores = Callable[[Sequence[Any]], np.ndarray]
"""What the runner left for the flush (the last exit's logits of ``n`` requests) -> their ``(n,)`` scores."""


Single = tuple[int, int, float, int, int, int, "str | None", tuple[float, ...]]
"""One batch-1 request: (batch, time stamp in ns, latency ms, exit, prediction, last prediction, request id,
scores read). Numbers only: Python's garbage collector stops tracking such a tuple at its first look."""


class Singles:
    """Batch-1 requests recorded since the last flush: one tuple each, and what the flush must still compute."""

    def __init__(self) -> None:
        self.rows: list[Single] = []
        self.pending: list[Any] = []  # the last exit's logits of requests that got there
        self.pending_rows: list[int] = []  # their places in ``rows``

    def __len__(self) -> int:
        return len(self.rows)


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
        self.singles = Singles()

    @property
    def rows(self) -> int:
        """Rows buffered: in the columns and as singles."""
        return self.n + len(self.singles.rows)

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

    def absorb(self, deferred: DeferredScores | None) -> None:
        """Turn the batch-1 requests into column rows (``deferred`` computes the scores left), in batch order."""
        singles, self.singles = self.singles, Singles()
        m, i = len(singles), self.n
        if not m:
            return
        batch, time_ns, latency_ms, exits_, predictions, last, ids_, scores = zip(*singles.rows, strict=True)
        exits = np.array(exits_, dtype=np.int64)
        lengths = np.fromiter(map(len, scores), np.int64, m)
        self.reserve(m)
        j = i + m
        self.batch[i:j] = batch
        self.time_us[i:j] = np.array(time_ns, dtype=np.int64) // 1000
        self.latency_ms[i:j] = latency_ms
        self.batch_size[i:j] = 1
        self.exits[i:j] = exits
        self.predictions[i:j] = predictions
        self.last[i:j] = last
        block = self.scores[i:j]
        block[:] = np.nan
        flat = np.fromiter(itertools.chain.from_iterable(scores), np.float32, int(lengths.sum()))
        starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
        block[np.repeat(np.arange(m), lengths), np.arange(flat.shape[0]) - starts] = flat
        if singles.pending:
            if deferred is None:
                raise DyncalError("telemetry rows left scores for the flush, but the writer has no `deferred` function")
            rows = np.array(singles.pending_rows)
            block[rows, exits[rows]] = deferred(singles.pending)
        ids = list(ids_)
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
