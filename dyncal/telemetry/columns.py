"""The telemetry writer's buffer: the rows recorded since the last flush.

Two ways in. :meth:`Columns.append` stores a checked batch (numpy arrays) in preallocated
columns. The runner's batch-1 path (:meth:`~dyncal.telemetry.TelemetryWriter.record_one`)
appends six plain numbers per request to one flat list of :class:`Singles` and the scores it
read to another (two C-level list extends, no array store, no container object kept: the
garbage collector's counts do not move; a request's tensors kept until the flush would make it
walk them, which costs more than reading their values), except the logits of a request that
reached the last exit, whose score the exit rule never needed: the flush computes those for
the whole buffer at once (the writer's ``deferred`` function). :meth:`Columns.absorb` turns
them into column rows, one C-level pass per column. (Packing each request into a preallocated
buffer instead, ``array.extend`` or ``struct.pack_into``, was measured: 0.6-1.1 µs a request
on the request thread, against about 0.2 µs for the two list extends.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dyncal.errors import DyncalError

__all__ = ["Columns", "DeferredScores", "FIELDS", "Singles"]

DeferredScores = Callable[[Sequence[Any]], np.ndarray]
"""What the runner left for the flush (the last exit's logits of ``n`` requests) -> their ``(n,)`` scores."""


FIELDS = 6
"""Numbers a batch-1 request adds to :attr:`Singles.rows`: batch, time stamp in ns, latency ms, exit, prediction,
last prediction."""

_COLUMNS = ("time_us", "batch", "batch_size", "exits", "predictions", "scores", "latency_ms", "last")
"""The preallocated columns of :class:`Columns`, one row per request."""


class Singles:
    """Batch-1 requests recorded since the last flush: one tuple each, their scores, what the flush must compute.

    ``rows`` holds each request's :data:`FIELDS` numbers, one request after another (a flat list:
    no tuple kept per request), ``scores`` its scores read, one after another: ``exit + 1`` values, or
    ``exit`` where the last is pending (computed at the flush from ``pending``). Request ids
    are kept only where given (most requests have none).
    """

    def __init__(self) -> None:
        self.rows: list[float] = []  # FIELDS numbers per request (ints but the latency), in row order
        self.scores: list[float] = []  # every request's scores read, concatenated in row order
        self.pending: list[Any] = []  # the last exit's logits of requests that got there
        self.pending_rows: list[int] = []  # their places in ``rows``
        self.ids: list[str] = []  # the request ids given
        self.id_rows: list[int] = []  # their places in ``rows``

    def __len__(self) -> int:
        return len(self.rows) // FIELDS


class Columns:
    """Rows not yet flushed: recorded batches in preallocated columns, deferred requests as references.

    A batch given to :meth:`~dyncal.telemetry.TelemetryWriter.record` costs a few item stores
    here, not an object. A request given to :meth:`~dyncal.telemetry.TelemetryWriter.record_one`
    is six numbers appended to :attr:`singles` and its scores to a flat list (the runner's own
    small tensors untouched); the flush turns them all into columns at once (:meth:`absorb`).
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
        return self.n + len(self.singles)

    def reserve(self, rows: int) -> None:
        """Room for ``rows`` more rows (the columns double when full)."""
        need = self.n + rows
        if need <= self.exits.shape[0]:
            return
        size = max(need, 2 * self.exits.shape[0])
        for name in _COLUMNS:
            old = getattr(self, name)
            new = np.empty((size, *old.shape[1:]), old.dtype)
            new[: self.n] = old[: self.n]
            setattr(self, name, new)

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
        flat_rows = singles.rows
        batch, time_ns, latency_ms, exits_, predictions, last = (flat_rows[f::FIELDS] for f in range(FIELDS))
        exits = np.fromiter(exits_, np.int64, m)
        self.reserve(m)
        j = i + m
        self.batch[i:j] = np.fromiter(batch, np.int64, m)
        self.time_us[i:j] = np.fromiter(time_ns, np.int64, m) // 1000
        self.latency_ms[i:j] = np.fromiter(latency_ms, np.float64, m)  # rounded to float32 once, as a float would be
        self.batch_size[i:j] = 1
        self.exits[i:j] = exits
        self.predictions[i:j] = np.fromiter(predictions, np.int64, m)
        self.last[i:j] = np.fromiter(last, np.int64, m)
        pending = np.array(singles.pending_rows, dtype=np.int64)
        lengths = exits + 1  # the scores read: one per exit evaluated, less the pending one
        lengths[pending] -= 1
        flat = np.array(singles.scores, dtype=np.float32)
        if flat.shape[0] != int(lengths.sum()):
            raise DyncalError(f"telemetry rows hold {flat.shape[0]} scores where their exits need {lengths.sum()}")
        block = self.scores[i:j]
        block[:] = np.nan
        block[np.arange(block.shape[1])[None, :] < lengths[:, None]] = flat  # row by row, each up to its length
        if singles.pending:
            if deferred is None:
                raise DyncalError("telemetry rows left scores for the flush, but the writer has no `deferred` function")
            block[pending, exits[pending]] = deferred(singles.pending)
        if self.request_ids is not None or singles.ids:
            if self.request_ids is None:
                self.request_ids = [None] * i
            ids: list[str | None] = [None] * m
            for row, request_id in zip(singles.id_rows, singles.ids, strict=True):
                ids[row] = request_id
            self.request_ids.extend(ids)
        self.n = j
        if i:  # batches recorded both ways: back into the order they were recorded in
            order = np.argsort(self.batch[:j], kind="stable")
            for name in _COLUMNS:
                column = getattr(self, name)
                column[:j] = column[:j][order]
            if self.request_ids is not None:
                self.request_ids = [self.request_ids[o] for o in order.tolist()]
