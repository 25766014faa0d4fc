"""The writer: one per process, rows buffered, flushed to a live Arrow stream, finished as Parquet.

:mod:`dyncal.telemetry` describes the files and what a crash leaves.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import re
import secrets
import socket
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dyncal.errors import DyncalError, describe, param
from dyncal.telemetry.columns import FIELDS, Columns, DeferredScores
from dyncal.telemetry.metrics import TelemetryMetrics
from dyncal.telemetry.schema import (
    PREFIX,
    STREAM_SUFFIX,
    TELEMETRY_SCHEMA,
    TELEMETRY_VERSION,
    PackageIdentity,
    read_stream,
    require_pyarrow,
    telemetry_schema,
    write_all,
    write_parquet,
)

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["TelemetryWriter", "TelemetryMetrics"]

log = logging.getLogger(__name__)


def _numpy(x: Any, dtype: Any) -> np.ndarray:
    """``x`` (array, list, CPU or device tensor) as a numpy array of ``dtype`` (no copy where none is needed)."""
    if type(x) is np.ndarray and x.dtype == dtype:
        return x
    if hasattr(x, "detach"):
        try:
            x = x.numpy()  # a CPU tensor outside autograd: a view
        except (RuntimeError, TypeError):
            x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _coerce_batch(
    exits: Any, predictions: Any, scores: Any, latency_ms: Any, last_predictions: Any, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float | np.ndarray, np.ndarray | None]:
    """One recorded batch as numpy arrays, shapes checked (see :meth:`TelemetryWriter.record`)."""
    ex = _numpy(exits, np.int64).reshape(-1)
    b = ex.shape[0]
    preds = _numpy(predictions, np.int64).reshape(-1)
    sc = _numpy(scores, np.float32)
    lat: float | np.ndarray
    if isinstance(latency_ms, (int, float)):
        lat = float(latency_ms)
    else:
        lat = np.broadcast_to(_numpy(latency_ms, np.float32), (b,))
    last = None if last_predictions is None else _numpy(last_predictions, np.int64).reshape(-1)
    if b == 1:
        if not 0 <= int(ex[0]) < k:
            raise DyncalError(f"telemetry exits must lie in [0, {k}), got {ex.tolist()}")
    elif b and not (0 <= ex.min() and ex.max() < k):
        raise DyncalError(f"telemetry exits must lie in [0, {k}), got {ex.tolist()[:8]}")
    if preds.shape != (b,) or sc.shape != (b, k) or (last is not None and last.shape != (b,)):
        raise DyncalError(
            f"telemetry of a batch of {b}: predictions {preds.shape}, scores {sc.shape} (want ({b}, {k})) and "
            f"last_predictions {None if last is None else last.shape} do not fit"
        )
    return ex, preds, sc, lat, last


_WRITERS: weakref.WeakSet[TelemetryWriter] = weakref.WeakSet()


def _close_all_at_exit() -> None:
    for writer in list(_WRITERS):
        with contextlib.suppress(Exception):  # an exiting interpreter must not fail on telemetry
            writer.close()


atexit.register(_close_all_at_exit)


def _forked() -> None:
    for writer in list(_WRITERS):
        writer._forked = True


_AT_FORK = hasattr(os, "register_at_fork")  # a forked child is then told by the flag, without a getpid()
if _AT_FORK:
    os.register_at_fork(after_in_child=_forked)


class TelemetryWriter:
    """Writes one process's telemetry into a folder (module docstring: files, crashes, schema).

    Args:
        folder: Telemetry folder (created if missing); several processes may share it.
        identity: The package the rows come from.
        shadow: Share of requests whose plain model is completed too (:meth:`shadow_mask`), in [0, 1].
        flush_rows: Buffered rows that trigger a flush (default 4096: a flush has about 1 ms of fixed cost
            between model runs, 1 µs a row at 1024 rows; ``flush_seconds`` still bounds the rows' age).
        flush_seconds: Age of the oldest buffered row that triggers a flush (default 10 s).
        rotate_bytes: Size of the live stream that finishes the segment as Parquet (default 64 MiB).
        rotate_seconds: Age of a segment that finishes it (default 3600 s).
        row_group_rows: Rows per Parquet row group of finished files (default 65536).
        background: Flush and rotate on a daemon thread (default True), so requests never
            wait for a write; False flushes inline in :meth:`record` (deterministic; tests).
        fsync: Sync every flush to disk (survives power loss, not only a killed process; slower).
        metrics: Prometheus metrics, or None. They are updated at each flush, for all its rows at
            once (off the request path), so they lag the requests by up to a flush
            (``flush_rows``/``flush_seconds``); after :meth:`flush` or :meth:`close` they count every row.
        seed: Seed of the shadow draws (default: fresh entropy).
        clock: Seconds since the epoch (default ``time.time``); inject one in tests.
        deferred: What computes the scores :meth:`record_one` left for the flush (``pending``: the
            runner's :func:`~dyncal.analysis.package_telemetry.open_telemetry` gives it), or None.

    Example:
        >>> import tempfile
        >>> ident = PackageIdentity("ab" * 32, 2, 3, "maxprob", (1.0, 1.0), (0.9, None))
        >>> folder = tempfile.mkdtemp()
        >>> with TelemetryWriter(folder, ident, shadow=1.0, background=False) as w:  # doctest: +SKIP
        ...     w.record([0, 1], [2, 0], [[0.95, float("nan")], [0.4, 0.8]], [1.5, 2.5], last_predictions=[2, 1])
        >>> read_telemetry(folder).data.n  # doctest: +SKIP
        2
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        identity: PackageIdentity,
        *,
        shadow: float = 0.0,
        flush_rows: int = 4096,
        flush_seconds: float = 10.0,
        rotate_bytes: int = 64 << 20,
        rotate_seconds: float = 3600.0,
        row_group_rows: int = 65536,
        background: bool = True,
        fsync: bool = False,
        metrics: TelemetryMetrics | None = None,
        seed: int | None = None,
        clock: Callable[[], float] = time.time,
        deferred: DeferredScores | None = None,
    ) -> None:
        self._pa = require_pyarrow()
        self._time_type = self._pa.timestamp("us", tz="UTC")
        if isinstance(shadow, bool) or not isinstance(shadow, (int, float)) or not 0.0 <= shadow <= 1.0:
            raise DyncalError(f"{param('shadow')} must be a share in [0, 1], got {shadow!r}")
        for name, value in (
            ("flush_rows", flush_rows),
            ("rotate_bytes", rotate_bytes),
            ("row_group_rows", row_group_rows),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DyncalError(f"{param(name)} must be a positive integer, got {value!r}")
        for name, seconds in (("flush_seconds", flush_seconds), ("rotate_seconds", rotate_seconds)):
            finite = name == "flush_seconds"  # rotate_seconds may be inf: rotate by size alone
            if not isinstance(seconds, (int, float)) or not seconds > 0 or (finite and math.isinf(seconds)):
                raise DyncalError(f"{param(name)} must be a positive number of seconds, got {seconds!r}")
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DyncalError(f"cannot create the telemetry folder '{self.folder}': {describe(e)}") from None
        if not self.folder.is_dir():
            raise DyncalError(f"the telemetry folder '{self.folder}' is not a folder; give a folder")
        self.identity = identity
        self.shadow = float(shadow)
        self.flush_rows, self.flush_seconds = flush_rows, float(flush_seconds)
        self.rotate_bytes, self.rotate_seconds = rotate_bytes, float(rotate_seconds)
        self.row_group_rows, self.fsync, self.metrics = row_group_rows, fsync, metrics
        self._clock = clock
        self._stamp_ns: Callable[[], int] = (
            time.time_ns if clock is time.time else (lambda: int(clock() * 1e6) * 1000)  # µs, as record() stores
        )
        self.deferred = deferred
        self._rng = np.random.default_rng(seed)
        self._pid = os.getpid()
        self._forked = False
        host = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())[:40] or "host"
        started = time.strftime("%Y%m%dT%H%M%S", time.gmtime(clock()))
        self._stem = f"{PREFIX}{host}-{self._pid}-{started}-{secrets.token_hex(4)}"
        self._meta = {
            "schema": TELEMETRY_SCHEMA,
            "schema_version": TELEMETRY_VERSION,
            "package": identity.to_dict(),
            "shadow": self.shadow,
            "process": {"host": socket.gethostname(), "pid": self._pid, "writer": self._stem},
        }
        self._lock = threading.RLock()  # the buffer: held for an append, never across a write
        self._io = threading.Lock()  # the files: one flush, rotation or close at a time, in order
        self._wake = threading.Condition(self._lock)
        self._rows = Columns(flush_rows, identity.k)
        self._batches = 0
        self._segment = 0
        self._fd: int | None = None
        self._segment_path: Path | None = None
        self._segment_start = 0.0
        self._segment_bytes = 0
        self._schema_meta = telemetry_schema({**self._meta, "segment": 0})
        self.finished: list[Path] = []
        self.rows_written = 0
        self._error: BaseException | None = None
        self._closed = False
        self._thread: threading.Thread | None = None
        # one batch built now pays pyarrow's lazy imports (pandas among them: seconds) at load, not on a request
        warm = Columns(1, identity.k)
        zero = np.zeros(1, np.int64)
        warm.append(0, 0, zero, zero, np.zeros((1, identity.k), np.float32), 0.0, None, None)
        self._record_batch(warm)
        _WRITERS.add(self)
        if background:
            self._thread = threading.Thread(target=self._loop, name=f"dyncal-telemetry-{self._pid}", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------ the request path

    def shadow_mask(self, batch_size: int) -> np.ndarray:
        """Which of ``batch_size`` requests to shadow: ``(B,)`` bool, each True with probability ``shadow``.

        Example:
            >>> w = object.__new__(TelemetryWriter); w.shadow = 0.0; w._rng = np.random.default_rng(0)
            >>> w.shadow_mask(3).tolist()
            [False, False, False]
        """
        if self.shadow <= 0.0:
            return np.zeros(batch_size, dtype=bool)
        if self.shadow >= 1.0:
            return np.ones(batch_size, dtype=bool)
        return self._rng.random(batch_size) < self.shadow

    def record(
        self,
        exits: Any,
        predictions: Any,
        scores: Any,
        latency_ms: Any,
        *,
        last_predictions: Any = None,
        request_ids: Sequence[str | None] | None = None,
        when: float | None = None,
    ) -> None:
        """Record one batch of ``B`` requests (the runner's hook, called once per batch).

        Args:
            exits: ``(B,)`` exit taken, from 0.
            predictions: ``(B,)`` class answered.
            scores: ``(B, K)`` score of each request at each exit; entries past a request's exit
                are ignored (NaN there is fine).
            latency_ms: The batch's latency in ms (one number) or ``(B,)`` per request.
            last_predictions: ``(B,)`` the last exit's class on shadow requests and -1 elsewhere,
                or None when no request was shadowed.
            request_ids: ``B`` ids (or None entries), or None.
            when: Seconds since the epoch the batch was answered (default: the clock).

        Raises:
            DyncalError: Arrays of the wrong shape, a writer used after :meth:`close` or in a
                forked child, or a previous background write that failed.
        """
        if self._forked or os.getpid() != self._pid:
            raise self._forked_error()
        ex, preds, sc, lat, last = _coerce_batch(
            exits, predictions, scores, latency_ms, last_predictions, self.identity.k
        )
        b = ex.shape[0]
        if request_ids is not None and len(request_ids) != b:
            raise DyncalError(f"telemetry of a batch of {b} got {len(request_ids)} request ids")
        now = self._clock() if when is None else float(when)
        with self._lock:
            self._raise_if_failed()
            if self._closed:
                raise DyncalError("this telemetry writer is closed; load the runner again to record more")
            rows = self._rows
            rows.append(int(now * 1e6), self._batches, ex, preds, sc, lat, last, request_ids)
            self._batches += 1
            if rows.oldest is None:
                rows.oldest = now
            due = rows.rows >= self.flush_rows
            aged = now - rows.oldest >= self.flush_seconds
            if self._thread is not None and due:
                self._wake.notify()
        if self._thread is None and (due or aged):
            self._flush()

    def record_one(
        self,
        exit_index: int,
        prediction: int,
        scores: tuple[float, ...],
        latency_ms: float,
        *,
        pending: Any = None,
        last_prediction: int = -1,
        request_id: str | None = None,
    ) -> None:
        """Record one request (batch 1) from plain numbers: the runner's hook at batch 1.

        Appends the numbers and the scores to flat lists (no array store, no tensor kept);
        the flush writes the rows as :meth:`record` would. The runner's batch-1 path
        (:func:`~dyncal.analysis.package_telemetry.observed_call`) appends the same way, unchecked.

        Args:
            exit_index: The exit taken, from 0.
            prediction: The class answered.
            scores: The score at each exit evaluated: ``exit_index + 1`` values, or
                ``exit_index`` with ``pending``.
            latency_ms: The request's latency in ms.
            pending: What the writer's ``deferred`` function computes the last of the scores
                from at flush time (the runner: the last exit's logits), or None.
            last_prediction: The last exit's class on a shadow request, else -1.
            request_id: The caller's id, or None.

        Raises:
            DyncalError: An exit out of range or scores that do not fit it, a writer closed, used
                in a forked child, or whose previous background write failed.
        """
        n_scores = len(scores) + (pending is not None)
        if not 0 <= exit_index < self.identity.k or n_scores != exit_index + 1:
            raise DyncalError(f"telemetry of exit {exit_index} of {self.identity.k} got {n_scores} scores")
        if pending is not None and self.deferred is None:
            raise DyncalError("record_one got a score to compute later, but the writer has no `deferred` function")
        self._record_one(exit_index, prediction, scores, latency_ms, pending, last_prediction, request_id)

    def _record_one(
        self,
        exit_index: int,
        prediction: int,
        scores: Sequence[float],
        latency_ms: float,
        pending: Any,
        last_prediction: int,
        request_id: str | None,
    ) -> None:
        """:meth:`record_one` without its checks: the runner's batch-1 path, whose rows fit by construction.

        Six numbers and the scores appended to the buffer's flat lists under the lock;
        the flush makes columns of them (:meth:`~dyncal.telemetry.columns.Columns.absorb`).
        """
        if self._forked or (not _AT_FORK and os.getpid() != self._pid):
            raise self._forked_error()
        ns = self._stamp_ns()
        with self._lock:
            if self._error is not None or self._closed:
                self._raise_if_failed()
                raise DyncalError("this telemetry writer is closed; load the runner again to record more")
            rows = self._rows
            if rows.oldest is None:
                rows.oldest = ns / 1e9
            one = rows.singles
            i = len(one.rows) // FIELDS
            if pending is not None:
                one.pending_rows.append(i)
                one.pending.append(pending)
            if request_id is not None:
                one.id_rows.append(i)
                one.ids.append(request_id)
            one.scores.extend(scores)
            one.rows.extend((self._batches, ns, latency_ms, exit_index, prediction, last_prediction))  # no tuple kept
            self._batches += 1
            due = rows.n + i + 1 >= self.flush_rows
            if due and self._thread is not None:
                self._wake.notify()
        if self._thread is None and (due or ns / 1e9 - rows.oldest >= self.flush_seconds):
            self._flush()

    # ------------------------------------------------------------------ flushing and rotating

    def flush(self) -> None:
        """Write the buffered rows to the live stream now (one record batch).

        Raises:
            DyncalError: The write failed; the writer then refuses more rows (it cannot promise them).
        """
        self._raise_if_failed()
        self._flush()

    def rotate(self) -> None:
        """Flush, then finish the live segment as a Parquet file (the next flush starts a new one)."""
        self.flush()
        self._guarded(self._finish)

    def close(self) -> None:
        """Flush, finish the live segment and stop the background thread (idempotent)."""
        if self._forked or os.getpid() != self._pid:
            return  # a forked child must not touch its parent's files
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._wake.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        _WRITERS.discard(self)
        self.rotate()

    def __enter__(self) -> TelemetryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _forked_error(self) -> DyncalError:
        return DyncalError(
            f"this telemetry writer was created in process {self._pid} and is used in a forked child "
            f"({os.getpid()}); create the writer (load the runner) in each worker process"
        )

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise DyncalError(f"telemetry could not be written to '{self.folder}': {describe(self._error)}")

    def _guarded(self, step: Callable[[], None]) -> None:
        """``step()`` under the file lock; a failure is kept (the writer stops) and raised as one line."""
        with self._io:
            try:
                step()
            except Exception as e:  # noqa: BLE001 - a full disk, a removed folder: reported, not a traceback
                self._error = self._error or e
                log.error("telemetry write to '%s' failed: %s", self.folder, describe(e))
        self._raise_if_failed()

    def _flush(self) -> None:
        """Take the buffered rows and append them to the live stream (the buffer lock is held only to take them)."""

        def write() -> None:
            with self._lock:
                rows, self._rows = self._rows, Columns(self.flush_rows, self.identity.k)
            if rows.rows:
                rows.absorb(self.deferred)
                if self.metrics is not None:  # counted here, off the request path: they lag by a flush
                    n = rows.n
                    self.metrics.observe_rows(rows.exits[:n], rows.latency_ms[:n], rows.predictions[:n], rows.last[:n])
                self._write(rows)

        self._guarded(write)

    def _loop(self) -> None:
        """The background thread: flush when rows or age say so, rotate when age says so."""
        while True:
            with self._lock:
                if self._closed:
                    return
                now = self._clock()
                waits = [self.flush_seconds]
                if self._rows.oldest is not None:
                    waits.append(self._rows.oldest + self.flush_seconds - now)
                if self._fd is not None:
                    waits.append(self._segment_start + self.rotate_seconds - now)
                if self._rows.rows < self.flush_rows:
                    self._wake.wait(timeout=max(0.05, min(waits)))
                if self._closed:
                    return
                now = self._clock()
                oldest = self._rows.oldest
                flush_due = self._rows.rows >= self.flush_rows or (
                    oldest is not None and now - oldest >= self.flush_seconds
                )
            try:
                if flush_due:
                    self._flush()
                else:
                    self._guarded(self._finish_if_old)
            except DyncalError:
                return  # kept in self._error: the next record, flush or close raises it

    def _finish_if_old(self) -> None:
        if self._fd is not None and self._clock() - self._segment_start >= self.rotate_seconds:
            self._finish()

    def _write(self, rows: Columns) -> None:
        """Append ``rows`` as one record batch to the live stream; finish the segment when big or old enough."""
        batch = self._record_batch(rows)
        data = memoryview(batch.serialize())  # the IPC message, written from Arrow's buffer (no copy)
        if self._fd is None:
            self._open_segment()
        assert self._fd is not None
        write_all(self._fd, data)
        if self.fsync:
            os.fsync(self._fd)
        self._segment_bytes += len(data)
        self.rows_written += batch.num_rows
        if self._segment_bytes >= self.rotate_bytes or self._clock() - self._segment_start >= self.rotate_seconds:
            self._finish()

    def _record_batch(self, rows: Columns) -> pa.RecordBatch:
        """The buffered rows as one Arrow record batch (views of the columns, no copy but the scores')."""
        pa = self._pa
        n, k = rows.n, self.identity.k
        exits = rows.exits[:n]
        lengths = exits + 1
        offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        values = rows.scores[:n][np.arange(k)[None, :] < lengths[:, None]]
        last = rows.last[:n]
        shadow = last >= 0
        ids = (
            pa.nulls(n, type=pa.string()) if rows.request_ids is None else pa.array(rows.request_ids, type=pa.string())
        )
        columns = [
            pa.array(rows.time_us[:n], type=self._time_type),
            ids,
            pa.array(rows.batch[:n]),
            pa.array(rows.batch_size[:n]),
            pa.array(exits.astype(np.int16)),
            pa.array(rows.predictions[:n].astype(np.int32)),
            pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)),
            pa.array(rows.latency_ms[:n]),
            pa.array(shadow),
            pa.array(last.astype(np.int32), mask=~shadow),
        ]
        return pa.RecordBatch.from_arrays(columns, schema=self._schema_meta)

    def _open_segment(self) -> None:
        import fcntl

        self._schema_meta = telemetry_schema({**self._meta, "segment": self._segment})
        path = self.folder / f"{self._stem}-{self._segment:05d}{STREAM_SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            header = self._schema_meta.serialize().to_pybytes()
            write_all(fd, header)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        self._fd, self._segment_path = fd, path
        self._segment_start = self._clock()
        self._segment_bytes = len(header)

    def _finish(self) -> None:
        if self._fd is None or self._segment_path is None:
            return
        stream = self._segment_path
        table, _ = read_stream(stream.read_bytes())
        if table is not None and table.num_rows:
            self.finished.append(write_parquet(table, stream, self.row_group_rows))
        stream.unlink()
        os.close(self._fd)
        self._fd, self._segment_path = None, None
        self._segment += 1
