"""Reading a telemetry folder back: checked, merged, bound to one package; and recovering killed writers' streams.

:mod:`dyncal.telemetry` describes the files.
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dyncal.errors import DyncalError, describe
from dyncal.telemetry.schema import (
    FINISHED_SUFFIX,
    NAME_PATTERN,
    STREAM_SUFFIX,
    TELEMETRY_SCHEMA,
    TELEMETRY_VERSION,
    PackageIdentity,
    read_stream,
    require_pyarrow,
    telemetry_schema,
    write_parquet,
)

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["TelemetryData", "TelemetryRead", "read_telemetry", "recover_telemetry"]


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
        return TelemetryData(*(getattr(self, f.name)[rows] for f in fields(self)))

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


def _telemetry_files(folder: Path) -> tuple[list[Path], list[Path], set[str]]:
    """Finished files and streams in ``folder``, and the stems of the finished ones (a stream's among them is done)."""
    finished, streams = [], []
    for entry in sorted(folder.iterdir()):
        name = entry.name
        if name.endswith(FINISHED_SUFFIX) and NAME_PATTERN.fullmatch(name[: -len(FINISHED_SUFFIX)]):
            finished.append(entry)
        elif name.endswith(STREAM_SUFFIX) and NAME_PATTERN.fullmatch(name[: -len(STREAM_SUFFIX)]):
            streams.append(entry)
    return finished, streams, {p.name[: -len(FINISHED_SUFFIX)] for p in finished}


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
    if not pc.all(pc.equal(lengths, pc.add(pc.cast(exits, "int32"), 1))).as_py():
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
    scores[np.arange(k)[None, :] <= exits[:, None]] = flat  # row by row, each up to its exit: the lists' order
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
    finished, all_streams, finished_stems = _telemetry_files(root)
    live = [s for s in all_streams if s.name[: -len(STREAM_SUFFIX)] not in finished_stems]
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
                got, cut = read_stream(raw)
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
    _, streams, done = _telemetry_files(root)  # with those left beside their finished file by a rename-then-crash
    for stream in streams:
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
                table, _ = read_stream(stream.read_bytes())
                if table is not None and table.num_rows:
                    out.append(write_parquet(table, stream, row_group_rows))
            stream.unlink()
        finally:
            os.close(fd)
    return out
