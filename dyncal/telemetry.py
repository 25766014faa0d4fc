"""Telemetry of a shipped early exit: what each request did, written as Parquet, read back checked.

The runner of an exported package (``load_early_exit(DIR, telemetry=PATH, shadow=p)``) calls
:meth:`TelemetryWriter.record` once per batch; ``dyncal monitor`` reads the folder with
:func:`read_telemetry` and compares production with the calibration run
(:mod:`dyncal.monitor`). One row per request:

==================  =====================  ============================================================
column              type                   meaning
==================  =====================  ============================================================
``time``            timestamp (µs, UTC)    when its batch was answered
``request_id``      string, nullable       the caller's id (joins labels that arrive later)
``batch``           int64                  the batch's sequence number in its writer
``batch_size``      int32                  rows in that batch
``exit``            int16                  the exit taken, from 0
``prediction``      int32                  the class answered
``scores``          list<float32>          the score at every exit evaluated: ``exit + 1`` values
``latency_ms``      float32                the request's latency as the runner measured it
``shadow``          bool                   whether the plain model was completed too
``last_prediction`` int32, nullable        the last exit's class on shadow requests, else null
==================  =====================  ============================================================

Every file carries, in its schema metadata (key ``dyncal.telemetry``), the writer's
:class:`PackageIdentity` (decision fingerprint, run fingerprint, manifest SHA-256, K, C,
score, temperatures, thresholds), its shadow share and process; :func:`read_telemetry`
refuses files of another package and folders that mix packages.

**Files and crashes.** Each writer (one per process) owns its files, named
``telemetry-<host>-<pid>-<start>-<token>-<segment>``:

* the live segment is an Arrow IPC *stream*, ``NAME.arrows``: a schema message, then one
  record batch per flush, each appended with one ``write`` (``fsync`` too with ``fsync=True``);
  the writer holds an exclusive ``flock`` on it while alive;
* on rotation (by size or age) and on :meth:`TelemetryWriter.close`, the segment is written as
  Parquet to ``NAME.parquet.partial``, synced and renamed to ``NAME.parquet`` (row groups of
  ``row_group_rows``), and only then is the stream removed.

A finished ``.parquet`` file therefore appears whole or not at all, and a ``.partial`` one
is never read. A writer killed at any instant (SIGKILL included) leaves its stream: every
flushed batch in it is complete and readable, and a batch cut off mid-write is detected by
its length and skipped. :func:`read_telemetry` reads finished files and, by default, the
complete batches of streams (live writers' and killed ones'); :func:`recover_telemetry`
turns the streams of dead writers into finished files. A killed writer so loses at most the
rows it had not flushed (``flush_rows`` rows or ``flush_seconds`` seconds of traffic).

**The runner's hook**, once per batch ``x`` of ``B`` requests::

    shadow = writer.shadow_mask(B)                       # (B,) bool, a `shadow` share
    t0 = time.perf_counter()
    exits, preds, scores = ...                           # the early exit; scores (B, K), NaN past each exit
    ms = (time.perf_counter() - t0) * 1e3
    last = torch.full((B,), -1)
    if shadow.any():                                     # complete the plain model on those rows
        last[shadow] = plain_model(x[shadow]).argmax(1)
    writer.record(exits, preds, scores, ms, last_predictions=last, request_ids=ids)

Needs ``pyarrow`` (``pip install 'dyncal[rollout]'``); Prometheus metrics
(:class:`TelemetryMetrics`) need ``prometheus-client``, in the same extra.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import json
import logging
import math
import os
import re
import secrets
import socket
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dyncal.errors import DyncalError, describe, param

if TYPE_CHECKING:
    import pyarrow as pa

    from dyncal.artifacts.thresholds import ThresholdsDocument

__all__ = [
    "TELEMETRY_SCHEMA",
    "TELEMETRY_VERSION",
    "PackageIdentity",
    "TelemetryWriter",
    "TelemetryMetrics",
    "TelemetryData",
    "TelemetryRead",
    "read_telemetry",
    "recover_telemetry",
    "telemetry_schema",
    "require_pyarrow",
]

log = logging.getLogger(__name__)

TELEMETRY_SCHEMA = "dyncal.telemetry"
"""Key of the identity document in every file's schema metadata, and its ``schema`` value."""
TELEMETRY_VERSION = 1
"""Version of the telemetry format."""

PREFIX = "telemetry-"
STREAM_SUFFIX = ".arrows"
FINISHED_SUFFIX = ".parquet"
PARTIAL_SUFFIX = ".parquet.partial"
_NAME = re.compile(r"telemetry-[A-Za-z0-9_.-]+-\d+-\d{8}T\d{6}-[0-9a-f]{8}-\d{5}")
_EXTRA = "install the rollout extra: pip install 'dyncal[rollout]'"


def require_pyarrow() -> Any:
    """The ``pyarrow`` module, or a one-line error naming the extra that installs it.

    Raises:
        DyncalError: pyarrow is not installed.
    """
    try:
        import pyarrow
        import pyarrow.ipc  # noqa: F401 - the stream reader and writer
        import pyarrow.parquet  # noqa: F401 - finished files
    except ImportError:
        raise DyncalError(f"telemetry needs pyarrow, which is not installed; {_EXTRA}") from None
    return pyarrow


@dataclass(frozen=True)
class PackageIdentity:
    """What telemetry is bound to: the exit decisions and, where known, the run and the package.

    Attributes:
        decision_fingerprint: SHA-256 of score, temperatures and thresholds
            (:func:`dyncal.artifacts.thresholds.decision_fingerprint`).
        k: Exits.
        c: Classes.
        score: Score name.
        temperatures: ``K`` temperatures.
        thresholds: ``K`` thresholds, the last None.
        run_fingerprint: Fingerprint of the run the thresholds were solved on, or None.
        manifest_sha256: SHA-256 of the package's ``manifest.json``, or None (not from a package).

    Example:
        >>> a = PackageIdentity("ab" * 32, 2, 3, "maxprob", (1.0, 1.0), (0.9, None))
        >>> PackageIdentity.from_dict(a.to_dict()) == a, a.conflict(a) is None
        (True, True)
    """

    decision_fingerprint: str
    k: int
    c: int
    score: str
    temperatures: tuple[float, ...]
    thresholds: tuple[float | None, ...]
    run_fingerprint: str | None = None
    manifest_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "decision_fingerprint": self.decision_fingerprint,
            "run_fingerprint": self.run_fingerprint,
            "manifest_sha256": self.manifest_sha256,
            "k": self.k,
            "c": self.c,
            "score": self.score,
            "temperatures": list(self.temperatures),
            "thresholds": list(self.thresholds),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PackageIdentity:
        """Read :meth:`to_dict` output.

        Raises:
            DyncalError: A missing or malformed field.
        """
        try:
            k, c = int(d["k"]), int(d["c"])
            temps = tuple(float(t) for t in d["temperatures"])
            thresholds = tuple(None if t is None else float(t) for t in d["thresholds"])
            ident = cls(
                decision_fingerprint=str(d["decision_fingerprint"]),
                k=k,
                c=c,
                score=str(d["score"]),
                temperatures=temps,
                thresholds=thresholds,
                run_fingerprint=None if d.get("run_fingerprint") is None else str(d["run_fingerprint"]),
                manifest_sha256=None if d.get("manifest_sha256") is None else str(d["manifest_sha256"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise DyncalError(f"malformed package identity ({describe(e)})") from None
        if k < 1 or c < 1 or len(temps) != k or len(thresholds) != k:
            raise DyncalError(f"malformed package identity: K={k}, C={c} with {len(temps)} temperatures")
        return ident

    @classmethod
    def from_thresholds(cls, thresholds: ThresholdsDocument, *, manifest_sha256: str | None = None) -> PackageIdentity:
        """The identity of telemetry made with a thresholds document (the package's exit rule).

        Example:
            >>> from dyncal.artifacts.thresholds import ThresholdsDocument
            >>> doc = ThresholdsDocument("maxprob", (1.0, 1.0), (0.5, None), "optimal", {}, None, {}, 0.9,
            ...                          None, None, (0.5, 0.5), n_classes=3)
            >>> PackageIdentity.from_thresholds(doc).k
            2
        """
        return cls(
            decision_fingerprint=thresholds.decision_fingerprint,
            k=len(thresholds.thresholds),
            c=int(thresholds.n_classes),
            score=str(thresholds.score),
            temperatures=tuple(float(t) for t in thresholds.temperatures),
            thresholds=tuple(thresholds.thresholds),
            run_fingerprint=thresholds.run_fingerprint,
            manifest_sha256=manifest_sha256,
        )

    @classmethod
    def from_runner(cls, runner: Any) -> PackageIdentity:
        """The identity of a package runner (anything with ``manifest`` and ``manifest_sha256``)."""
        m = runner.manifest
        return cls(
            decision_fingerprint=str(m.decision_fingerprint),
            k=int(m.k),
            c=int(m.c),
            score=str(m.score),
            temperatures=tuple(float(t) for t in m.temperatures),
            thresholds=tuple(m.thresholds),
            run_fingerprint=m.run_fingerprint,
            manifest_sha256=getattr(runner, "manifest_sha256", None),
        )

    def conflict(self, other: PackageIdentity) -> str | None:
        """How ``other`` differs from this identity (fields both record), or None when they agree.

        Example:
            >>> from dataclasses import replace
            >>> a = PackageIdentity("a" * 64, 2, 3, "maxprob", (1.0, 1.0), (0.9, None))
            >>> a.conflict(replace(a, decision_fingerprint="b" * 64))
            'decision fingerprint bbbbbbbbbbbb, expected aaaaaaaaaaaa (other thresholds)'
        """
        if (self.k, self.c) != (other.k, other.c):
            return f"K={other.k}, C={other.c}, expected K={self.k}, C={self.c}"
        checks = (
            ("decision_fingerprint", "decision fingerprint", "other thresholds"),
            ("run_fingerprint", "run fingerprint", "thresholds solved on another run"),
            ("manifest_sha256", "manifest SHA-256", "another package"),
        )
        for key, what, why in checks:
            mine, theirs = getattr(self, key), getattr(other, key)
            if mine is not None and theirs is not None and mine != theirs:
                return f"{what} {theirs[:12]}, expected {mine[:12]} ({why})"
        return None


def telemetry_schema(metadata: Mapping[str, Any] | None = None) -> pa.Schema:
    """The Arrow schema of telemetry rows, with ``metadata`` stored under ``dyncal.telemetry``."""
    pa = require_pyarrow()
    fields = [
        pa.field("time", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("request_id", pa.string()),
        pa.field("batch", pa.int64(), nullable=False),
        pa.field("batch_size", pa.int32(), nullable=False),
        pa.field("exit", pa.int16(), nullable=False),
        pa.field("prediction", pa.int32(), nullable=False),
        pa.field("scores", pa.list_(pa.field("item", pa.float32(), nullable=False)), nullable=False),
        pa.field("latency_ms", pa.float32(), nullable=False),
        pa.field("shadow", pa.bool_(), nullable=False),
        pa.field("last_prediction", pa.int32()),
    ]
    meta = None if metadata is None else {TELEMETRY_SCHEMA: json.dumps(dict(metadata), sort_keys=True)}
    return pa.schema(fields, metadata=meta)


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


class TelemetryMetrics:
    """Prometheus metrics of an early exit: requests per exit, latency, shadow disagreements.

    Args:
        k: Exits.
        registry: A ``prometheus_client.CollectorRegistry`` (default: the global one).
        namespace: Metric name prefix (default ``dyncal``).
        buckets: Latency histogram buckets in seconds.

    Metrics: ``<ns>_early_exit_requests_total{exit="1".."K"}`` (exits counted from 1, as people
    read them), ``<ns>_early_exit_latency_seconds`` (histogram), ``<ns>_shadow_requests_total``,
    ``<ns>_shadow_disagreements_total``.

    Raises:
        DyncalError: prometheus-client is not installed (names the extra).
    """

    def __init__(
        self,
        k: int,
        *,
        registry: Any = None,
        namespace: str = "dyncal",
        buckets: Sequence[float] = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
    ) -> None:
        try:
            import prometheus_client as prom
        except ImportError:
            raise DyncalError(f"Prometheus metrics need prometheus-client, which is not installed; {_EXTRA}") from None
        kw: dict[str, Any] = {"namespace": namespace}
        if registry is not None:
            kw["registry"] = registry
        self.k = int(k)
        self.requests = prom.Counter("early_exit_requests", "Requests answered, per exit (from 1)", ["exit"], **kw)
        self._per_exit = [self.requests.labels(exit=str(j + 1)) for j in range(self.k)]
        self.latency = prom.Histogram(
            "early_exit_latency_seconds", "Latency of early-exit requests", buckets=tuple(buckets), **kw
        )
        self.shadow = prom.Counter("shadow_requests", "Requests whose plain model was completed too", **kw)
        self.disagreements = prom.Counter(
            "shadow_disagreements", "Shadow requests where the early exit's class differs from the last exit's", **kw
        )

    def observe(self, exits: np.ndarray, latency_ms: np.ndarray, n_shadow: int, n_disagree: int) -> None:
        """Count one batch: exits ``(B,)`` from 0, latencies ``(B,)`` in ms, its shadow requests and disagreements."""
        for j, count in enumerate(np.bincount(exits, minlength=self.k)[: self.k]):
            if count:
                self._per_exit[j].inc(int(count))
        for ms in latency_ms:
            self.latency.observe(float(ms) / 1000.0)
        if n_shadow:
            self.shadow.inc(n_shadow)
        if n_disagree:
            self.disagreements.inc(n_disagree)


@dataclass
class _Batch:
    time_us: int
    exits: np.ndarray
    predictions: np.ndarray
    scores: np.ndarray
    latency_ms: float | np.ndarray
    last: np.ndarray | None
    request_ids: Sequence[str | None] | None
    number: int


_WRITERS: weakref.WeakSet[TelemetryWriter] = weakref.WeakSet()


def _close_all_at_exit() -> None:
    for writer in list(_WRITERS):
        with contextlib.suppress(Exception):  # an exiting interpreter must not fail on telemetry
            writer.close()


atexit.register(_close_all_at_exit)


def _forked() -> None:
    for writer in list(_WRITERS):
        writer._forked = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


class TelemetryWriter:
    """Writes one process's telemetry into a folder (module docstring: files, crashes, schema).

    Args:
        folder: Telemetry folder (created if missing); several processes may share it.
        identity: The package the rows come from.
        shadow: Share of requests whose plain model is completed too (:meth:`shadow_mask`), in [0, 1].
        flush_rows: Buffered rows that trigger a flush (default 1024).
        flush_seconds: Age of the oldest buffered row that triggers a flush (default 10 s).
        rotate_bytes: Size of the live stream that finishes the segment as Parquet (default 64 MiB).
        rotate_seconds: Age of a segment that finishes it (default 3600 s).
        row_group_rows: Rows per Parquet row group of finished files (default 65536).
        background: Flush and rotate on a daemon thread (default True), so requests never
            wait for a write; False flushes inline in :meth:`record` (deterministic; tests).
        fsync: Sync every flush to disk (survives power loss, not only a killed process; slower).
        metrics: Prometheus metrics to update per batch, or None.
        seed: Seed of the shadow draws (default: fresh entropy).
        clock: Seconds since the epoch (default ``time.time``); inject one in tests.

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
        flush_rows: int = 1024,
        flush_seconds: float = 10.0,
        rotate_bytes: int = 64 << 20,
        rotate_seconds: float = 3600.0,
        row_group_rows: int = 65536,
        background: bool = True,
        fsync: bool = False,
        metrics: TelemetryMetrics | None = None,
        seed: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._pa = require_pyarrow()
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
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._buffer: list[_Batch] = []
        self._buffered_rows = 0
        self._oldest: float | None = None
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
            raise DyncalError(
                f"this telemetry writer was created in process {self._pid} and is used in a forked child "
                f"({os.getpid()}); create the writer (load the runner) in each worker process"
            )
        ex = _numpy(exits, np.int64).reshape(-1)
        b = ex.shape[0]
        preds = _numpy(predictions, np.int64).reshape(-1)
        sc = _numpy(scores, np.float32)
        lat: float | np.ndarray  # one number for the batch is expanded at the flush, off the request path
        if isinstance(latency_ms, (int, float)):
            lat = float(latency_ms)
        else:
            lat = np.array(np.broadcast_to(_numpy(latency_ms, np.float32), (b,)))
        last = None if last_predictions is None else _numpy(last_predictions, np.int64).reshape(-1)
        k = self.identity.k
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
        if request_ids is not None and len(request_ids) != b:
            raise DyncalError(f"telemetry of a batch of {b} got {len(request_ids)} request ids")
        now = self._clock() if when is None else float(when)
        with self._lock:
            if self._error is not None:
                raise self._failure()
            if self._closed:
                raise DyncalError("this telemetry writer is closed; load the runner again to record more")
            self._buffer.append(_Batch(int(now * 1e6), ex, preds, sc, lat, last, request_ids, self._batches))
            self._batches += 1
            self._buffered_rows += b
            if self._oldest is None:
                self._oldest = now
            due = self._buffered_rows >= self.flush_rows
            if self._thread is None:
                if due or now - self._oldest >= self.flush_seconds:
                    self._flush_locked()
            elif due:
                self._wake.notify()
        if self.metrics is not None:
            n_shadow = 0 if last is None else int((last >= 0).sum())
            n_disagree = 0 if last is None else int(((last >= 0) & (last != preds)).sum())
            self.metrics.observe(ex, np.broadcast_to(np.float32(lat), (b,)), n_shadow, n_disagree)

    # ------------------------------------------------------------------ flushing and rotating

    def flush(self) -> None:
        """Write the buffered rows to the live stream now (one record batch).

        Raises:
            DyncalError: The write failed (the rows stay buffered).
        """
        with self._lock:
            if self._error is not None:
                raise self._failure()
            self._flush_locked()

    def rotate(self) -> None:
        """Flush, then finish the live segment as a Parquet file (the next flush starts a new one)."""
        with self._lock:
            if self._error is not None:
                raise self._failure()
            self._flush_locked()
            self._finish_locked()

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
        with self._lock:
            _WRITERS.discard(self)
            if self._error is not None:
                raise self._failure()
            self._flush_locked()
            self._finish_locked()

    def __enter__(self) -> TelemetryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _failure(self) -> DyncalError:
        return DyncalError(f"telemetry could not be written to '{self.folder}': {describe(self._error or OSError())}")

    def _loop(self) -> None:
        """The background thread: flush when rows or age say so, rotate when age says so."""
        while True:
            with self._lock:
                if self._closed:
                    return
                now = self._clock()
                waits = [self.flush_seconds]
                if self._oldest is not None:
                    waits.append(self._oldest + self.flush_seconds - now)
                if self._fd is not None:
                    waits.append(self._segment_start + self.rotate_seconds - now)
                if self._buffered_rows < self.flush_rows:
                    self._wake.wait(timeout=max(0.05, min(waits)))
                if self._closed:
                    return
                now = self._clock()
                try:
                    if self._buffered_rows >= self.flush_rows or (
                        self._oldest is not None and now - self._oldest >= self.flush_seconds
                    ):
                        self._flush_locked()
                    elif self._fd is not None and now - self._segment_start >= self.rotate_seconds:
                        self._finish_locked()
                except Exception as e:  # noqa: BLE001 - kept and raised to the next caller
                    log.error("telemetry write to '%s' failed: %s", self.folder, describe(e))
                    self._error = e
                    return

    def _flush_locked(self) -> None:
        if not self._buffer:
            return
        batch = self._record_batch(self._buffer)
        data = batch.serialize().to_pybytes()
        if self._fd is None:
            self._open_segment()
        assert self._fd is not None
        _write_all(self._fd, data)
        if self.fsync:
            os.fsync(self._fd)
        self._segment_bytes += len(data)
        self.rows_written += batch.num_rows
        self._buffer, self._buffered_rows, self._oldest = [], 0, None
        if self._segment_bytes >= self.rotate_bytes or self._clock() - self._segment_start >= self.rotate_seconds:
            self._finish_locked()

    def _record_batch(self, batches: Sequence[_Batch]) -> pa.RecordBatch:
        pa = self._pa
        exits = np.concatenate([b.exits for b in batches])
        scores = np.concatenate([b.scores for b in batches])
        k = self.identity.k
        lengths = exits + 1
        offsets = np.zeros(exits.size + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        values = scores[np.arange(k)[None, :] < lengths[:, None]]
        sizes = [b.exits.size for b in batches]
        last = np.concatenate(
            [np.full(n, -1) if b.last is None else b.last for b, n in zip(batches, sizes, strict=True)]
        )
        shadow = last >= 0
        ids: list[str | None] = []
        for b, n in zip(batches, sizes, strict=True):
            ids.extend([None] * n if b.request_ids is None else [None if r is None else str(r) for r in b.request_ids])
        columns = [
            pa.array(np.repeat([b.time_us for b in batches], sizes), type=pa.timestamp("us", tz="UTC")),
            pa.array(ids, type=pa.string()),
            pa.array(np.repeat([b.number for b in batches], sizes), type=pa.int64()),
            pa.array(np.repeat(sizes, sizes), type=pa.int32()),
            pa.array(exits.astype(np.int16)),
            pa.array(np.concatenate([b.predictions for b in batches]).astype(np.int32)),
            pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.astype(np.float32))),
            pa.array(
                np.concatenate(
                    [np.broadcast_to(np.float32(b.latency_ms), (n,)) for b, n in zip(batches, sizes, strict=True)]
                )
            ),
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
            _write_all(fd, header)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        self._fd, self._segment_path = fd, path
        self._segment_start = self._clock()
        self._segment_bytes = len(header)

    def _finish_locked(self) -> None:
        if self._fd is None or self._segment_path is None:
            return
        stream = self._segment_path
        table, _ = _read_stream(stream.read_bytes())
        if table is not None and table.num_rows:
            self.finished.append(_write_parquet(table, stream, self.row_group_rows))
        stream.unlink()
        os.close(self._fd)
        self._fd, self._segment_path = None, None
        self._segment += 1


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _write_parquet(table: pa.Table, stream: Path, row_group_rows: int) -> Path:
    """``table`` as ``STEM.parquet``: written to ``STEM.parquet.partial``, synced, renamed."""
    import pyarrow.parquet as pq

    stem = stream.name[: -len(STREAM_SUFFIX)]
    partial = stream.with_name(stem + PARTIAL_SUFFIX)
    final = stream.with_name(stem + FINISHED_SUFFIX)
    pq.write_table(table, partial, row_group_size=row_group_rows, compression="zstd")
    fd = os.open(partial, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(partial, final)
    with contextlib.suppress(OSError):  # a folder that cannot be synced (some file systems): the rename stands
        dfd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return final


def _read_stream(data: bytes) -> tuple[pa.Table | None, bool]:
    """The complete record batches of an IPC stream's bytes, and whether its tail was cut off."""
    pa = require_pyarrow()
    try:
        reader = pa.ipc.open_stream(pa.BufferReader(data))
    except (pa.ArrowInvalid, OSError):
        return None, bool(data)
    batches = []
    truncated = False
    while True:
        try:
            batches.append(reader.read_next_batch())
        except StopIteration:
            break
        except (pa.ArrowInvalid, OSError):
            truncated = True
            break
    return pa.Table.from_batches(batches, schema=reader.schema), truncated


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class TelemetryData:
    """Telemetry rows as numpy arrays (what :mod:`dyncal.monitor` works on; no pyarrow needed).

    Attributes:
        time_us: ``(n,)`` int64 microseconds since the epoch.
        exits: ``(n,)`` int64 exit taken, from 0.
        predictions: ``(n,)`` int64 class answered.
        scores: ``(n, K)`` float64 score at each exit, NaN past the exit taken.
        latency_ms: ``(n,)`` float64 (NaN: not measured).
        last_predictions: ``(n,)`` int64 last exit's class on shadow requests, -1 elsewhere.
        request_ids: ``(n,)`` object array of ids (None where not given).

    Example:
        >>> d = TelemetryData.from_arrays(exits=[0, 1], predictions=[3, 4], scores=[[0.9, 0.2], [0.3, 0.8]],
        ...                               last_predictions=[3, -1])
        >>> d.n, d.shadow.tolist(), np.isnan(d.scores[0, 1])
        (2, [True, False], np.True_)
    """

    time_us: np.ndarray
    exits: np.ndarray
    predictions: np.ndarray
    scores: np.ndarray
    latency_ms: np.ndarray
    last_predictions: np.ndarray
    request_ids: np.ndarray

    @property
    def n(self) -> int:
        """Rows."""
        return int(self.exits.shape[0])

    @property
    def k(self) -> int:
        """Exits."""
        return int(self.scores.shape[1])

    @property
    def shadow(self) -> np.ndarray:
        """``(n,)`` bool: whether the request was shadowed."""
        out: np.ndarray = self.last_predictions >= 0
        return out

    def select(self, rows: np.ndarray) -> TelemetryData:
        """The rows ``rows`` (a boolean mask or indices)."""
        return TelemetryData(*(getattr(self, f)[rows] for f in _DATA_FIELDS))

    def sorted_by_time(self) -> TelemetryData:
        """The rows in time order (stable)."""
        return self.select(np.argsort(self.time_us, kind="stable"))

    @classmethod
    def from_arrays(
        cls,
        *,
        exits: Any,
        predictions: Any,
        scores: Any,
        last_predictions: Any = None,
        latency_ms: Any = None,
        time_us: Any = None,
        request_ids: Any = None,
    ) -> TelemetryData:
        """Build from arrays (simulations, tests); scores past each exit become NaN.

        Raises:
            DyncalError: Arrays of different lengths, exits outside ``[0, K)``.
        """
        ex = np.asarray(exits, dtype=np.int64).reshape(-1)
        n = ex.shape[0]
        sc = np.array(scores, dtype=np.float64, ndmin=2).reshape(n, -1) if n else np.zeros((0, 1))
        k = sc.shape[1]
        if n and (ex.min() < 0 or ex.max() >= k):
            raise DyncalError(f"exits must lie in [0, {k}), got {int(ex.min())}..{int(ex.max())}")
        sc[np.arange(k)[None, :] > ex[:, None]] = np.nan

        def column(x: Any, fill: Any, dtype: Any) -> np.ndarray:
            arr = np.full(n, fill, dtype=dtype) if x is None else np.asarray(x, dtype=dtype).reshape(-1)
            if arr.shape != (n,):
                raise DyncalError(f"telemetry columns must all have {n} rows, got {arr.shape[0]}")
            return arr

        return cls(
            time_us=column(time_us, 0, np.int64),
            exits=ex,
            predictions=column(predictions, 0, np.int64),
            scores=sc,
            latency_ms=column(latency_ms, np.nan, np.float64),
            last_predictions=column(last_predictions, -1, np.int64),
            request_ids=column(request_ids, None, object),
        )


_DATA_FIELDS = ("time_us", "exits", "predictions", "scores", "latency_ms", "last_predictions", "request_ids")


@dataclass(frozen=True)
class TelemetryRead:
    """What :func:`read_telemetry` found.

    Attributes:
        data: The rows, in time order.
        identity: The package every file was written by.
        files: Finished Parquet files read.
        streams: Live (or killed) writers' streams read, up to their last complete batch.
        truncated: Those streams whose last batch was cut off (a writer killed mid-flush, or
            one flushing while read); their complete batches were read.
        shadow_shares: The shadow share each writer was started with.
    """

    data: TelemetryData
    identity: PackageIdentity
    files: tuple[str, ...] = ()
    streams: tuple[str, ...] = ()
    truncated: tuple[str, ...] = ()
    shadow_shares: tuple[float, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no rows)."""
        return {
            "rows": self.data.n,
            "files": list(self.files),
            "streams": list(self.streams),
            "truncated": list(self.truncated),
            "shadow_shares": sorted(set(self.shadow_shares)),
            "package": self.identity.to_dict(),
        }


def _telemetry_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """Finished files and streams in ``folder``; a stream whose finished file exists is left out."""
    finished, streams = [], []
    for entry in sorted(folder.iterdir()):
        name = entry.name
        if name.endswith(FINISHED_SUFFIX) and _NAME.fullmatch(name[: -len(FINISHED_SUFFIX)]):
            finished.append(entry)
        elif name.endswith(STREAM_SUFFIX) and _NAME.fullmatch(name[: -len(STREAM_SUFFIX)]):
            streams.append(entry)
    done = {p.name[: -len(FINISHED_SUFFIX)] for p in finished}
    return finished, [s for s in streams if s.name[: -len(STREAM_SUFFIX)] not in done]


def _file_meta(schema: pa.Schema, where: str) -> dict[str, Any]:
    raw = (schema.metadata or {}).get(TELEMETRY_SCHEMA.encode())
    if raw is None:
        raise DyncalError(f"'{where}' is not dyncal telemetry (no '{TELEMETRY_SCHEMA}' metadata)")
    try:
        meta = json.loads(raw)
    except ValueError:
        raise DyncalError(f"'{where}' has malformed telemetry metadata; it was not written by dyncal") from None
    version = meta.get("schema_version") if isinstance(meta, dict) else None
    if not isinstance(version, int) or version < 1:
        raise DyncalError(f"'{where}' has malformed telemetry metadata (schema_version {version!r})")
    if version > TELEMETRY_VERSION:
        raise DyncalError(
            f"'{where}' is telemetry version {version}; this dyncal reads up to {TELEMETRY_VERSION}: upgrade dyncal"
        )
    return dict(meta)


def _check_table(table: pa.Table, identity: PackageIdentity, where: str) -> None:
    pa = require_pyarrow()
    import pyarrow.compute as pc

    expected = telemetry_schema()
    if not table.schema.remove_metadata().equals(expected):
        names = ", ".join(table.schema.names)
        raise DyncalError(
            f"'{where}' does not have the telemetry columns (it has {names}); it was not written by dyncal"
        )
    if not table.num_rows:
        return
    exits = table.column("exit")
    lengths = pc.list_value_length(table.column("scores"))
    bad = []
    if pc.min(exits).as_py() < 0 or pc.max(exits).as_py() >= identity.k:
        bad.append(f"exits outside [0, {identity.k})")
    if not pc.all(pc.equal(lengths, pc.add(pc.cast(exits, pa.int32()), 1))).as_py():
        bad.append("score lists that do not end at the exit taken")
    preds = table.column("prediction")
    if pc.min(preds).as_py() < 0 or pc.max(preds).as_py() >= identity.c:
        bad.append(f"predictions outside [0, {identity.c})")
    if not pc.all(pc.equal(table.column("shadow"), pc.is_valid(table.column("last_prediction")))).as_py():
        bad.append("shadow flags that disagree with last_prediction")
    if bad:
        raise DyncalError(f"'{where}' holds malformed telemetry ({'; '.join(bad)}); it was not written by this package")


def _to_data(table: pa.Table, k: int) -> TelemetryData:
    import pyarrow.compute as pc

    n = table.num_rows
    exits = table.column("exit").to_numpy().astype(np.int64)
    scores = np.full((n, k), np.nan)
    flat = pc.list_flatten(table.column("scores")).to_numpy().astype(np.float64)
    rows = np.repeat(np.arange(n), exits + 1)
    starts = np.concatenate([[0], np.cumsum(exits + 1)[:-1]]) if n else np.zeros(0, dtype=np.int64)
    cols = np.arange(flat.size) - np.repeat(starts, exits + 1)
    scores[rows, cols] = flat
    last = table.column("last_prediction").fill_null(-1).to_numpy().astype(np.int64)
    return TelemetryData(
        time_us=table.column("time").cast("int64").to_numpy().astype(np.int64),
        exits=exits,
        predictions=table.column("prediction").to_numpy().astype(np.int64),
        scores=scores,
        latency_ms=table.column("latency_ms").to_numpy().astype(np.float64),
        last_predictions=last,
        request_ids=np.asarray(table.column("request_id").to_pylist(), dtype=object).reshape(n),
    )


def read_telemetry(
    folder: str | os.PathLike[str],
    *,
    expect: PackageIdentity | None = None,
    streams: bool = True,
) -> TelemetryRead:
    """Read, check and merge a telemetry folder.

    Args:
        folder: The folder writers wrote into.
        expect: The package the telemetry must come from (fields it records are compared:
            decision, run and manifest fingerprints, K, C); None accepts any single package.
        streams: Read the complete batches of live or killed writers' streams too (default True).

    Returns:
        The rows of every file, in time order.

    Raises:
        DyncalError: No such folder, no telemetry in it, a file that is not dyncal telemetry or
            is malformed, files of two packages, or of another package than ``expect`` (one
            line naming the file and what to do).
    """
    pa = require_pyarrow()
    import pyarrow.parquet as pq

    root = Path(folder)
    if not root.is_dir():
        raise DyncalError(f"no telemetry folder '{root}'; give the folder the runner wrote (telemetry=DIR)")
    finished, live = _telemetry_files(root)
    if not finished and not (streams and live):
        what = f" (only {len(live)} live stream(s); read them with `streams`)" if live else ""
        raise DyncalError(f"no telemetry files in '{root}'{what}; give the folder the runner wrote (telemetry=DIR)")
    tables: list[Any] = []
    found: PackageIdentity | None = None
    first = ""
    shares: list[float] = []
    read_files: list[str] = []
    read_streams: list[str] = []
    truncated: list[str] = []
    sources: list[tuple[Path, bool]] = [(p, True) for p in finished] + [(p, False) for p in (live if streams else [])]
    for path, is_finished in sources:
        if is_finished:
            try:
                table = pq.read_table(path)
            except (OSError, pa.ArrowInvalid) as e:
                raise DyncalError(
                    f"'{path}' cannot be read as Parquet ({describe(e)}); move it out of the folder"
                ) from None
            cut = False
        else:
            try:
                raw = path.read_bytes()
            except FileNotFoundError:  # finished and removed while we listed: read the finished file
                done = path.with_name(path.name[: -len(STREAM_SUFFIX)] + FINISHED_SUFFIX)
                if not done.exists():
                    continue
                table, cut, path, is_finished = pq.read_table(done), False, done, True
            else:
                got, cut = _read_stream(raw)
                if got is None:  # cut off inside its schema: no rows were flushed
                    truncated.append(str(path))
                    continue
                table = got
        meta = _file_meta(table.schema, str(path))
        ident = PackageIdentity.from_dict(meta.get("package") or {})
        problem = None if expect is None else expect.conflict(ident)
        if problem is not None:
            raise DyncalError(
                f"telemetry file '{path}' was written by another package: {problem}; give the telemetry folder of "
                "the package these thresholds were exported in"
            )
        if found is None:
            found, first = ident, str(path)
        elif (problem := found.conflict(ident)) is not None:
            raise DyncalError(
                f"telemetry folder '{root}' mixes packages: '{path}' differs from '{first}' ({problem}); monitor each "
                "package's telemetry folder on its own"
            )
        _check_table(table, ident, str(path))
        shares.append(float(meta.get("shadow", 0.0)))
        tables.append(table.replace_schema_metadata(None))
        (read_files if is_finished else read_streams).append(str(path))
        if cut:
            truncated.append(str(path))
    identity = found or expect
    if identity is None:
        raise DyncalError(f"no telemetry rows in '{root}' yet (its writers have flushed nothing); try again later")
    merged = pa.concat_tables(tables) if tables else telemetry_schema().empty_table()
    data = _to_data(merged, identity.k).sorted_by_time()
    return TelemetryRead(
        data=data,
        identity=identity,
        files=tuple(read_files),
        streams=tuple(read_streams),
        truncated=tuple(truncated),
        shadow_shares=tuple(shares),
    )


def recover_telemetry(folder: str | os.PathLike[str], *, row_group_rows: int = 65536) -> list[Path]:
    """Finish the streams of writers that died (a killed server): their complete batches become Parquet files.

    A stream whose writer still holds its lock is left alone; an empty one is removed.

    Returns:
        The finished files written.

    Raises:
        DyncalError: No such folder.
    """
    import fcntl

    require_pyarrow()
    root = Path(folder)
    if not root.is_dir():
        raise DyncalError(f"no telemetry folder '{root}'")
    out: list[Path] = []
    finished, live = _telemetry_files(root)
    done = {p.name[: -len(FINISHED_SUFFIX)] for p in finished}
    for entry in sorted(root.iterdir()):  # streams left beside their finished file by a rename-then-crash
        if entry.name.endswith(STREAM_SUFFIX) and entry.name[: -len(STREAM_SUFFIX)] in done:
            live.append(entry)
    for stream in live:
        try:
            fd = os.open(stream, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    continue  # its writer is alive
                raise
            stem = stream.name[: -len(STREAM_SUFFIX)]
            if stem not in done:
                table, _ = _read_stream(stream.read_bytes())
                if table is not None and table.num_rows:
                    out.append(_write_parquet(table, stream, row_group_rows))
            stream.unlink()
        finally:
            os.close(fd)
    return out
