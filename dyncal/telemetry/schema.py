"""The telemetry format: the package identity, the Arrow schema, file names and the two file kinds.

A live segment is an Arrow IPC stream (``NAME.arrows``) appended one complete record batch at a
time; a finished one is Parquet (``NAME.parquet``), written as ``NAME.parquet.partial`` and
renamed (:func:`write_parquet`). :func:`read_stream` reads the complete batches of a stream cut
off anywhere. :mod:`dyncal.telemetry` describes the whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dyncal.errors import DyncalError, describe

if TYPE_CHECKING:
    import pyarrow as pa

    from dyncal.artifacts.thresholds import ThresholdsDocument

__all__ = [
    "TELEMETRY_SCHEMA",
    "TELEMETRY_VERSION",
    "PREFIX",
    "STREAM_SUFFIX",
    "FINISHED_SUFFIX",
    "PARTIAL_SUFFIX",
    "NAME_PATTERN",
    "EXTRA_HINT",
    "require_pyarrow",
    "PackageIdentity",
    "telemetry_schema",
    "write_all",
    "write_parquet",
    "read_stream",
]

TELEMETRY_SCHEMA = "dyncal.telemetry"
"""Key of the identity document in every file's schema metadata, and its ``schema`` value."""
TELEMETRY_VERSION = 1
"""Version of the telemetry format."""

PREFIX = "telemetry-"
STREAM_SUFFIX = ".arrows"
"""A live (or killed) writer's segment: an Arrow IPC stream."""
FINISHED_SUFFIX = ".parquet"
"""A finished segment."""
PARTIAL_SUFFIX = ".parquet.partial"
"""A finished segment being written; never read."""
NAME_PATTERN = re.compile(r"telemetry-[A-Za-z0-9_.-]+-\d+-\d{8}T\d{6}-[0-9a-f]{8}-\d{5}")
"""The file name of one writer's segment, without its suffix: ``telemetry-<host>-<pid>-<start>-<token>-<segment>``."""
EXTRA_HINT = "install the rollout extra: pip install 'dyncal[rollout]'"


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
        raise DyncalError(f"telemetry needs pyarrow, which is not installed; {EXTRA_HINT}") from None
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
        return cls._of(thresholds, len(thresholds.thresholds), thresholds.n_classes, manifest_sha256)

    @classmethod
    def from_runner(cls, runner: Any) -> PackageIdentity:
        """The identity of a package runner (anything with ``manifest`` and ``manifest_sha256``)."""
        m = runner.manifest
        return cls._of(m, m.k, m.c, getattr(runner, "manifest_sha256", None))

    @classmethod
    def _of(cls, rule: Any, k: int, c: int, manifest_sha256: str | None) -> PackageIdentity:
        """From anything that carries the exit rule's fields (a thresholds document, a package manifest)."""
        return cls(
            decision_fingerprint=str(rule.decision_fingerprint),
            k=int(k),
            c=int(c),
            score=str(rule.score),
            temperatures=tuple(float(t) for t in rule.temperatures),
            thresholds=tuple(rule.thresholds),
            run_fingerprint=rule.run_fingerprint,
            manifest_sha256=manifest_sha256,
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


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write all of ``data`` to ``fd`` (``os.write`` may write part of it)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def write_parquet(table: pa.Table, stream: Path, row_group_rows: int) -> Path:
    """``table`` as ``STEM.parquet``: written to ``STEM.parquet.partial``, synced, renamed."""
    import pyarrow.parquet as pq

    stem = stream.name[: -len(STREAM_SUFFIX)]
    partial = stream.with_name(stem + PARTIAL_SUFFIX)
    final = stream.with_name(stem + FINISHED_SUFFIX)
    pq.write_table(table, partial, row_group_size=row_group_rows, compression="zstd")
    _fsync(partial)
    os.replace(partial, final)
    with contextlib.suppress(OSError):  # a folder that cannot be synced (some file systems): the rename stands
        _fsync(final.parent)
    return final


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_stream(data: bytes) -> tuple[pa.Table | None, bool]:
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
