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

At batch 1 the runner appends plain numbers instead, as :meth:`TelemetryWriter.record_one`
does (the exit, the prediction, the scores the exit rule computed, the latency): no arrays
built or checked per request; the flush writes the same rows
(:mod:`dyncal.analysis.package_telemetry`).

Needs ``pyarrow`` (``pip install 'dyncal[rollout]'``); Prometheus metrics
(:class:`TelemetryMetrics`) need ``prometheus-client``, in the same extra.
"""

from dyncal.telemetry.reader import TelemetryData, TelemetryRead, read_telemetry, recover_telemetry
from dyncal.telemetry.schema import (
    TELEMETRY_SCHEMA,
    TELEMETRY_VERSION,
    PackageIdentity,
    require_pyarrow,
    telemetry_schema,
)
from dyncal.telemetry.writer import TelemetryMetrics, TelemetryWriter

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
