"""The run directory: the one artifact every dyncal stage reads.

A run is a directory readable with numpy alone (no pickle)::

    RUN/
      logits.npy    float32 (N, K, C)  per-exit logits, exit 1 first; memory-mapped on read
      labels.npy    int64   (N,)       true class of every row
      indices.npy   int64   (N,)       dataset index of every row
      run.json      schema version, N/K/C, provenance and (once profiled) the cost table

A run is built in ``RUN.partial`` and renamed to ``RUN`` only after ``run.json`` (with
``"complete": true``) is on disk, so an interrupted collect leaves a ``.partial``
directory that :func:`load_run` refuses, never something that looks finished.

Whoever writes a run (collect, import, profile through :func:`save_costs`) holds
:class:`RunLock`, an exclusive ``flock`` on ``RUN.lock`` beside the run, from its start to
its last write; a second writer fails at once with one line instead of interleaving.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import logging
import os
import shutil
import stat
import sys
import threading
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dyncal.artifacts import validate as V
from dyncal.artifacts.outputs import check_writable
from dyncal.errors import DyncalError, RunError, first_line

__all__ = [
    "SCHEMA_VERSION",
    "Provenance",
    "LatencyProfile",
    "UnsupportedOp",
    "CostTable",
    "Run",
    "RunWriter",
    "load_run",
    "import_arrays",
    "import_npz",
    "save_costs",
    "store_costs",
    "StoredCosts",
    "other_model_latency",
    "RunLock",
    "lock_path",
    "atomic_write_text",
    "atomic_write_bytes",
    "latency_key",
    "LatencyKey",
    "compute_fingerprint",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
RUN_JSON = "run.json"
LOGITS_FILE = "logits.npy"
LABELS_FILE = "labels.npy"
INDICES_FILE = "indices.npy"
PARTIAL_SUFFIX = ".partial"
LOCK_SUFFIX = ".lock"

# What np.load raises for truncated, corrupt or pickled .npz files.
NPZ_READ_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


# --------------------------------------------------------------------------- atomic files


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half.

    Args:
        path: Destination file.
        data: Bytes to write.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.txt"
        >>> atomic_write_bytes(p, b"hello")
        >>> p.read_bytes()
        b'hello'
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) atomically; see :func:`atomic_write_bytes`.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.json"
        >>> atomic_write_text(p, "{}")
        >>> p.read_text()
        '{}'
    """
    atomic_write_bytes(path, text.encode("utf-8"))


# --------------------------------------------------------------------------- writers' lock


def lock_path(run: str | os.PathLike[str]) -> Path:
    """The lock file of the run directory ``run``: ``RUN.lock`` beside it (never inside).

    Example:
        >>> lock_path("/data/runs/r50")
        PosixPath('/data/runs/r50.lock')
    """
    run = Path(run)
    return run.with_name(run.name + LOCK_SUFFIX)


# Locks this process holds: lock path -> (descriptor, depth). flock conflicts between two
# descriptors of one process too, so a nested writer (profile, then save_costs) reuses it.
_HELD: dict[str, tuple[int, int]] = {}
_HELD_GUARD = threading.Lock()


class RunLock:
    """Exclusive right to write one run, held by at most one process at a time.

    An advisory ``fcntl.flock`` on ``RUN.lock`` beside the run directory (so it survives
    the run being replaced, and no reader mistakes it for part of a run). The file holds
    the owner's pid for the message a second writer sees. The kernel drops the lock when
    the owner dies, so a lock file left by ``kill -9`` is harmless; a clean release
    removes it. Re-entrant within a process.

    Args:
        run: The run directory (it need not exist yet).

    Raises:
        RunError: (on :meth:`acquire`) another process holds the lock, or the lock file
            cannot be created (its folder is missing or not writable).

    Example:
        >>> import tempfile, pathlib
        >>> run = pathlib.Path(tempfile.mkdtemp()) / "run"
        >>> with RunLock(run):
        ...     lock_path(run).exists()
        True
        >>> lock_path(run).exists()
        False
    """

    def __init__(self, run: str | os.PathLike[str]) -> None:
        self.run = Path(run)
        self.path = lock_path(self.run)
        self._key: str | None = None

    def acquire(self) -> RunLock:
        """Take the lock now or raise :class:`RunError` naming the process that holds it."""
        import fcntl

        folder = self.path.parent
        if not folder.is_dir():
            raise RunError(f"the folder '{folder}' for '{self.run}' does not exist; create it first")
        key = str(folder.resolve() / self.path.name)
        with _HELD_GUARD:
            if key in _HELD:
                fd, depth = _HELD[key]
                _HELD[key] = (fd, depth + 1)
                self._key = key
                return self
            for _ in range(20):
                try:
                    fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                except OSError as e:
                    raise RunError(
                        f"cannot create the lock file '{self.path}' beside the run ({e.strerror or e}); "
                        "dyncal needs to write in that folder: choose one you can write to"
                    ) from e
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    holder = _lock_holder(fd)
                    os.close(fd)
                    if holder != "?" and not _alive(int(holder)):
                        raise RunError(
                            f"the dyncal process that was writing '{self.run}' (pid {holder}) has exited, but "
                            "its data-loader workers still hold the lock; wait a few seconds, then try again"
                        ) from None
                    raise RunError(
                        f"another dyncal process (pid {holder}) is writing '{self.run}'; "
                        "wait for it to finish (or stop it), then try again"
                    ) from None
                # A releasing owner unlinks the file while holding it: the file locked must be
                # the one still at the path, or two processes could each lock a different file.
                try:
                    st = os.stat(self.path)
                    same = (st.st_dev, st.st_ino) == (os.fstat(fd).st_dev, os.fstat(fd).st_ino)
                except FileNotFoundError:
                    same = False
                if same:
                    break
                os.close(fd)
            else:  # pragma: no cover - twenty lost races in a row
                raise RunError(f"could not take the lock '{self.path}'; try again")
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            _HELD[key] = (fd, 1)
            self._key = key
        return self

    def release(self) -> None:
        """Give the lock up (the outermost release removes the lock file)."""
        key, self._key = self._key, None
        if key is None:
            return
        with _HELD_GUARD:
            fd, depth = _HELD[key]
            if depth > 1:
                _HELD[key] = (fd, depth - 1)
                return
            del _HELD[key]
            try:
                os.unlink(key)  # while still holding it: see acquire
            except OSError:
                pass
            os.close(fd)

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._key is not None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.release()


def _lock_holder(fd: int) -> str:
    """The pid written in a lock file, or ``?`` while its owner has not written it yet."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return "?"
    return text if text.isdigit() else "?"


def _alive(pid: int) -> bool:
    """Whether a process with this pid exists (one we may not signal counts as existing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


# --------------------------------------------------------------------------- metadata


@dataclass(frozen=True, order=True)
class LatencyKey:
    """A device and batch size that latency was measured at; written ``"<device>/b<batch>"``.

    JSON documents and tables keep the text form (``str(key)``); code that needs the device
    or the batch size parses it here, never by slicing strings.

    Example:
        >>> key = LatencyKey.parse("cuda:1/b32")
        >>> key.device, key.batch_size, str(key), key.column
        ('cuda:1', 32, 'cuda:1/b32', 'ms:cuda:1/b32')
        >>> LatencyKey.from_column("ms:cpu/b1") == LatencyKey("cpu", 1)
        True
    """

    device: str
    batch_size: int

    PREFIX = "ms:"
    """Prefix of a latency column in cost tables and frontier tables (``"ms:cpu/b1"``)."""

    def __str__(self) -> str:
        return f"{self.device}/b{self.batch_size}"

    @property
    def column(self) -> str:
        """The cost column of this key: ``"ms:<device>/b<batch>"``."""
        return f"{self.PREFIX}{self}"

    @classmethod
    def parse(cls, text: str) -> LatencyKey:
        """Read ``"<device>/b<batch>"``.

        Raises:
            ValueError: Not of that form.
        """
        device, sep, batch = str(text).rpartition("/b")
        if not sep or not device or not batch.isdigit() or int(batch) < 1:
            raise ValueError(f"{text!r} is not a latency key '<device>/b<batch size>' (e.g. 'cpu/b1')")
        return cls(device, int(batch))

    @classmethod
    def from_column(cls, column: str) -> LatencyKey:
        """Read a cost column ``"ms:<device>/b<batch>"``.

        Raises:
            ValueError: Not a latency column.
        """
        if not str(column).startswith(cls.PREFIX):
            raise ValueError(f"{column!r} is not a latency column ('ms:<device>/b<batch size>')")
        return cls.parse(str(column)[len(cls.PREFIX) :])


def latency_key(device: str, batch_size: int) -> str:
    """The ``"<device>/b<batch>"`` key used for latency everywhere (the text of :class:`LatencyKey`).

    Example:
        >>> latency_key("cpu", 1)
        'cpu/b1'
    """
    return str(LatencyKey(device, batch_size))


@dataclass(frozen=True)
class Provenance:
    """Where a run came from: enough to reproduce or audit it.

    Attributes:
        model: Model spec as given (``pkg.module:factory`` or a ``.pt2`` path), or a
            description for imported runs.
        weights_sha256: SHA-256 of the weights file, or None.
        data: Data spec as given.
        command: The command line that made the run.
        created: ISO-8601 UTC time the run was finished.
        device: Device the logits were computed on (``"cpu"``, ``"cuda:0"``, ...).
        versions: Library versions (``dyncal``, ``torch``, ``numpy``, ...).
        extra: Free-form details (world size, batch size, limit, ...).
    """

    model: str
    weights_sha256: str | None
    data: str
    command: str
    created: str
    device: str
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "model": self.model,
            "weights_sha256": self.weights_sha256,
            "data": self.data,
            "command": self.command,
            "created": self.created,
            "device": self.device,
            "versions": dict(self.versions),
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], field: str = "provenance") -> Provenance:
        """Build from :meth:`to_dict` output; missing text fields read as empty.

        Raises:
            FieldError: A field of the wrong type (named ``provenance.<key>``).
        """
        d = V.mapping(d, field)

        def text(key: str) -> str:
            return V.string(d.get(key, ""), f"{field}.{key}")

        sha = d.get("weights_sha256")
        return cls(
            model=text("model"),
            weights_sha256=None if sha is None else V.string(sha, f"{field}.weights_sha256"),
            data=text("data"),
            command=text("command"),
            created=text("created"),
            device=text("device"),
            versions=V.string_map(d.get("versions", {}), f"{field}.versions"),
            extra=dict(V.mapping(d.get("extra", {}), f"{field}.extra")),
        )

    @classmethod
    def here(
        cls,
        *,
        model: str,
        data: str,
        device: str,
        weights_sha256: str | None = None,
        extra: Mapping[str, Any] | None = None,
        command: str | None = None,
    ) -> Provenance:
        """Provenance stamped with the command line (default: ``sys.argv``), time and versions."""
        if command is None:
            command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else ""
        return cls(
            model=model,
            weights_sha256=weights_sha256,
            data=data,
            command=command,
            created=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
            device=device,
            versions=library_versions(),
            extra=dict(extra or {}),
        )


def library_versions() -> dict[str, str]:
    """Versions of dyncal and the libraries whose behaviour shapes its numbers."""
    from importlib import metadata

    out: dict[str, str] = {"python": sys.version.split()[0]}
    for name in ("dyncal", "torch", "numpy", "scipy", "fvcore"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


@dataclass(frozen=True)
class UnsupportedOp:
    """An operator fvcore could not count, in one stage."""

    stage: int
    op: str
    count: int

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {"stage": self.stage, "op": self.op, "count": self.count}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], field: str = "unsupported_ops[]") -> UnsupportedOp:
        """Build from :meth:`to_dict` output.

        Raises:
            FieldError: A missing field or one of the wrong type.
        """
        d = V.mapping(d, field)
        return cls(
            stage=V.integer(V.require(d, "stage", f"{field}."), f"{field}.stage", minimum=1),
            op=V.string(V.require(d, "op", f"{field}."), f"{field}.op"),
            count=V.integer(V.require(d, "count", f"{field}."), f"{field}.count", minimum=0),
        )


def _replicates(value: Any, field: str) -> tuple[tuple[float, ...], ...]:
    """Lists of raw replicate milliseconds (one non-empty list per entry)."""
    return tuple(
        V.number_list(r, f"{field}[{i}]", min_length=1, minimum=0) for i, r in enumerate(V.sequence(value, field))
    )


@dataclass(frozen=True)
class LatencyProfile:
    """Measured wall-clock of each stage on one device at one batch size.

    Raw replicates are stored; medians and spreads are derived on read.

    Attributes:
        device: Device name as used in keys (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        batch_size: Samples per forward.
        stage_ms: Raw replicate times per stage, ``K`` sequences of milliseconds.
        decision_ms: Raw replicate times of one exit decision (score + host sync).
        full_model_ms: Raw replicate times of the unpartitioned model, all exits.
        threads: CPU threads used (``torch.get_num_threads``), None if not applicable.
        hardware: CPU model or GPU name.
        settings: Other measurement settings (warm-up, repeats, torch version, ...).
        exit_path_ms: Raw replicate times of the real early exit with every row leaving at
            exit k, ``K`` sequences (empty in runs profiled before dyncal measured them).
        compaction_ms: Raw replicate times of the early exit's batch compaction at exit k
            (rows leaving recorded, carried tensors cut to the rows staying, output
            assembled), ``K - 1`` sequences at ``settings["compaction_rows"]`` rows; empty
            when not measured or the stages cannot drop rows.
        exit_path_rows_ms: Exit paths at fewer rows than ``batch_size`` (the rows a batch
            still holds after samples left), ``{rows: K sequences}``; a stage's time is not
            linear in its rows, so predictions interpolate between these.
    """

    device: str
    batch_size: int
    stage_ms: tuple[tuple[float, ...], ...]
    decision_ms: tuple[float, ...]
    full_model_ms: tuple[float, ...]
    threads: int | None
    hardware: str
    settings: dict[str, Any] = field(default_factory=dict)
    exit_path_ms: tuple[tuple[float, ...], ...] = ()
    compaction_ms: tuple[tuple[float, ...], ...] = ()
    exit_path_rows_ms: dict[int, tuple[tuple[float, ...], ...]] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The ``"<device>/b<batch>"`` key."""
        return latency_key(self.device, self.batch_size)

    @property
    def stage_median_ms(self) -> list[float]:
        """Median time of each stage, ``K`` floats."""
        return [float(np.median(r)) for r in self.stage_ms]

    @property
    def stage_iqr_ms(self) -> list[float]:
        """Inter-quartile range of each stage's replicates, ``K`` floats."""
        return [float(np.subtract(*np.percentile(r, [75, 25]))) for r in self.stage_ms]

    @property
    def decision_median_ms(self) -> float:
        """Median time of one exit decision."""
        return float(np.median(self.decision_ms)) if self.decision_ms else 0.0

    @property
    def full_model_median_ms(self) -> float:
        """Median time of the unpartitioned model."""
        return float(np.median(self.full_model_ms)) if self.full_model_ms else float("nan")

    @property
    def exit_ms(self) -> list[float]:
        """Cumulative compute time to produce exit k: stage medians 1..k, ``K`` floats."""
        return [float(v) for v in np.cumsum(self.stage_median_ms)]

    @property
    def early_exit_ms(self) -> list[float]:
        """Time of a batch whose rows all leave at exit k in a real early exit, ``K`` floats.

        Measured on the runner itself (:attr:`exit_path_ms`; running maximum of the medians,
        as leaving later never saves time). Older profiles without it: stages 1..k plus one
        exit decision at each exit passed through 1..k (the last exit makes none).
        """
        if len(self.exit_path_ms) == len(self.stage_ms) and all(self.exit_path_ms):
            return [float(v) for v in np.maximum.accumulate([np.median(r) for r in self.exit_path_ms])]
        k = len(self.stage_ms)
        dec = self.decision_median_ms
        return [ms + dec * min(i + 1, k - 1) for i, ms in enumerate(self.exit_ms)]

    @property
    def compaction_median_ms(self) -> list[float]:
        """Median time of one batch compaction at each exit before the last (empty if not measured)."""
        return [float(np.median(r)) for r in self.compaction_ms if r]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (raw replicates plus derived medians for readers)."""
        return {
            "device": self.device,
            "batch_size": self.batch_size,
            "stage_ms": [list(r) for r in self.stage_ms],
            "decision_ms": list(self.decision_ms),
            "full_model_ms": list(self.full_model_ms),
            "threads": self.threads,
            "hardware": self.hardware,
            "settings": dict(self.settings),
            "exit_median_ms": self.exit_ms,
            "exit_path_ms": [list(r) for r in self.exit_path_ms],
            "compaction_ms": [list(r) for r in self.compaction_ms],
            "exit_path_rows_ms": {str(n): [list(r) for r in p] for n, p in sorted(self.exit_path_rows_ms.items())},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], field: str = "latency") -> LatencyProfile:
        """Build from :meth:`to_dict` output (the derived ``exit_median_ms`` is ignored).

        Raises:
            FieldError: A missing field or one of the wrong type or value: ``stage_ms`` must
                hold one non-empty list of finite non-negative milliseconds per stage.
        """
        d = V.mapping(d, field)
        stages = V.sequence(V.require(d, "stage_ms", f"{field}."), f"{field}.stage_ms", min_length=1)
        threads = d.get("threads")
        return cls(
            device=V.string(V.require(d, "device", f"{field}."), f"{field}.device"),
            batch_size=V.integer(V.require(d, "batch_size", f"{field}."), f"{field}.batch_size", minimum=1),
            stage_ms=tuple(
                V.number_list(r, f"{field}.stage_ms[{i}]", min_length=1, minimum=0) for i, r in enumerate(stages)
            ),
            decision_ms=V.number_list(d.get("decision_ms", []), f"{field}.decision_ms", minimum=0),
            full_model_ms=V.number_list(d.get("full_model_ms", []), f"{field}.full_model_ms", minimum=0),
            threads=None if threads is None else V.integer(threads, f"{field}.threads", minimum=1),
            hardware=V.string(d.get("hardware", ""), f"{field}.hardware"),
            settings=dict(V.mapping(d.get("settings", {}), f"{field}.settings")),
            exit_path_ms=_replicates(d.get("exit_path_ms", []), f"{field}.exit_path_ms"),
            compaction_ms=_replicates(d.get("compaction_ms", []), f"{field}.compaction_ms"),
            exit_path_rows_ms={
                V.integer(int(n) if str(n).isdigit() else n, f"{field}.exit_path_rows_ms", minimum=1): _replicates(
                    p, f"{field}.exit_path_rows_ms.{n}"
                )
                for n, p in V.mapping(d.get("exit_path_rows_ms", {}), f"{field}.exit_path_rows_ms").items()
            },
        )


@dataclass(frozen=True)
class CostTable:
    """What each exit costs.

    Attributes:
        macs: Cumulative multiply-accumulates (fvcore's count) to produce exit k, heads of
            earlier exits included; ``K`` floats, or None when unknown.
        stage_macs: MACs of each stage alone, ``K`` floats, or None.
        unsupported_ops: Operators fvcore could not count, per stage.
        latency: Measured latency per ``"<device>/b<batch>"`` key.
        source: ``"profile"`` (measured by dyncal) or ``"import"`` (given by the user).
        model: The model the latest profile measured (``model``, ``weights_sha256``,
            ``state_sha256``) and how it compared with the run's (``check``; ``allowed``
            true when ``--allow-other-model`` let another model be used), or None.
    """

    macs: tuple[float, ...] | None = None
    stage_macs: tuple[float, ...] | None = None
    unsupported_ops: tuple[UnsupportedOp, ...] = ()
    latency: dict[str, LatencyProfile] = field(default_factory=dict)
    source: str = "profile"
    model: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        doc = {
            "macs": None if self.macs is None else list(self.macs),
            "stage_macs": None if self.stage_macs is None else list(self.stage_macs),
            "unsupported_ops": [u.to_dict() for u in self.unsupported_ops],
            "latency": {k: v.to_dict() for k, v in self.latency.items()},
            "source": self.source,
        }
        if self.model is not None:
            doc["model"] = dict(self.model)
        return doc

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], field: str = "costs", k: int | None = None) -> CostTable:
        """Build from :meth:`to_dict` output, checking every field.

        ``macs`` must be positive, finite and cumulative (non-decreasing); ``stage_macs``
        finite and non-negative; every latency entry well formed and filed under its own
        ``"<device>/b<batch>"`` key; all of them one entry per exit (``k`` when given).

        Raises:
            FieldError: The first malformed field, named ``costs.<key>...``.
        """
        d = V.mapping(d, field)
        macs = d.get("macs")
        stage = d.get("stage_macs")
        table = cls(
            macs=None
            if macs is None
            else V.number_list(macs, f"{field}.macs", length=k, min_length=1, positive=True, nondecreasing=True),
            stage_macs=None
            if stage is None
            else V.number_list(stage, f"{field}.stage_macs", length=k, min_length=1, minimum=0),
            unsupported_ops=tuple(
                UnsupportedOp.from_dict(u, f"{field}.unsupported_ops[{i}]")
                for i, u in enumerate(V.sequence(d.get("unsupported_ops", []), f"{field}.unsupported_ops"))
            ),
            latency={
                key: LatencyProfile.from_dict(v, f"{field}.latency[{key!r}]")
                for key, v in V.mapping(d.get("latency", {}), f"{field}.latency").items()
            },
            source=V.string(d.get("source", "profile"), f"{field}.source"),
            model=dict(d["model"]) if isinstance(d.get("model"), Mapping) else None,
        )
        for key, prof in table.latency.items():
            if key != prof.key:
                raise V.FieldError(
                    f"{field}.latency[{key!r}]",
                    f"holds device {prof.device!r} at batch {prof.batch_size} ({prof.key!r})",
                )
        lengths = {
            f"{field}.macs": None if table.macs is None else len(table.macs),
            f"{field}.stage_macs": None if table.stage_macs is None else len(table.stage_macs),
            **{f"{field}.latency[{key!r}].stage_ms": len(p.stage_ms) for key, p in table.latency.items()},
        }
        want = k if k is not None else next((n for n in lengths.values() if n is not None), None)
        for name, n in lengths.items():
            if n is not None and n != want:
                raise V.FieldError(name, f"must have one entry per exit (K={want}), got {n}")
        for op in table.unsupported_ops:
            if want is not None and op.stage > want:
                raise V.FieldError(f"{field}.unsupported_ops", f"names stage {op.stage} of a run with K={want}")
        return table


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Run:
    """A complete run directory, opened.

    Attributes:
        path: The run directory.
        logits: Per-exit logits, ``(N, K, C)`` float32, memory-mapped read-only.
        labels: True classes, ``(N,)`` int64.
        indices: Dataset index of every row, ``(N,)`` int64.
        provenance: Where the run came from.
        costs: The cost table, or None until profiled or imported with costs.
        meta: The whole ``run.json`` document.
    """

    path: Path
    logits: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    provenance: Provenance
    costs: CostTable | None
    meta: dict[str, Any]

    @property
    def n(self) -> int:
        """Number of samples."""
        return int(self.logits.shape[0])

    @property
    def k(self) -> int:
        """Number of exits."""
        return int(self.logits.shape[1])

    @property
    def c(self) -> int:
        """Number of classes."""
        return int(self.logits.shape[2])

    @functools.cached_property
    def fingerprint(self) -> str:
        """SHA-256 identity of the run's rows (logits and labels); see :func:`compute_fingerprint`.

        Stored in ``run.json`` when the run is written; computed here for older runs.
        """
        stored = self.meta.get("fingerprint")  # checked against the arrays by load_run
        return stored if isinstance(stored, str) else compute_fingerprint(self.path)


_FINGERPRINT_PREFIX = b"dyncal.run.fingerprint/1\n"


def _fingerprint_header(name: str, arr: np.ndarray) -> bytes:
    return f"{name}:{arr.dtype.str}:{arr.shape}\n".encode()


def compute_fingerprint(path: str | os.PathLike[str]) -> str:
    """SHA-256 over the shapes, logits and labels of the run directory (or partial one) at ``path``.

    Thresholds, verify results and exported packages record it, so a file made from one run
    is refused by another. It reads the arrays once, in blocks (about a second per GB).
    """
    h = hashlib.sha256(_FINGERPRINT_PREFIX)
    for name in (LOGITS_FILE, LABELS_FILE):
        arr = np.load(Path(path) / name, mmap_mode="r")
        h.update(_fingerprint_header(name, arr))
        flat = arr.reshape(arr.shape[0], -1) if arr.ndim > 1 else arr.reshape(-1, 1)
        rows = max(1, (16 << 20) // max(1, flat.shape[1] * arr.dtype.itemsize))
        for start in range(0, flat.shape[0], rows):
            h.update(np.ascontiguousarray(flat[start : start + rows]).tobytes())
    return h.hexdigest()


def _missing_run_message(path: Path) -> str:
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    if partial.exists():
        return (
            f"no complete run at '{path}': '{partial}' is a collect that was interrupted "
            "or is still running; continue it with the same collect command and --resume"
        )
    return f"no run directory at '{path}'; create one with 'dyncal collect' or 'dyncal import'"


def load_run(path: str | os.PathLike[str]) -> Run:
    """Open a complete run directory, validating everything in it once.

    ``run.json`` must be a dyncal run document of a known schema version whose every field
    has the right type and value (N >= 1, K >= 1, C >= 2; a cost table of K positive,
    finite, cumulative MACs and well-formed latency entries); the arrays must be regular
    ``.npy`` files of the shapes ``run.json`` gives (logits floating point ``(N, K, C)``,
    labels and indices integral ``(N,)``), every label in ``[0, C)`` and every logit
    finite. The arrays are scanned in blocks (bounded memory; about 0.1 s per GB once in
    the page cache) and the result is remembered for the process while the files are
    unchanged.

    Args:
        path: The run directory written by ``dyncal collect`` or ``dyncal import``.

    Returns:
        The run, with ``logits`` memory-mapped ``(N, K, C)`` and ``labels`` ``(N,)``.

    Raises:
        RunError: One line naming the file and the field that is missing, incomplete
            (interrupted or still being written), from a newer schema or malformed, and
            what to do.

    Example:
        >>> import numpy as np, tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "run"
        >>> _ = import_arrays(np.zeros((4, 2, 3), np.float32), np.array([0, 1, 2, 0]), out)
        >>> run = load_run(out)
        >>> run.n, run.k, run.c
        (4, 2, 3)
    """
    path = Path(path)
    if path.name.endswith(PARTIAL_SUFFIX):
        raise RunError(
            f"'{path}' is an unfinished run (interrupted or still being written); re-run collect with --overwrite"
        )
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise RunError(_missing_run_message(path)) from None
    except OSError as e:
        raise RunError(f"cannot open run '{path}': {e.strerror or e}") from e
    if not stat.S_ISDIR(st.st_mode):
        raise RunError(f"'{path}' is {V.file_kind(st.st_mode)}, not a run directory")
    if not (path / RUN_JSON).exists():
        raise RunError(
            f"'{path}' is not a complete dyncal run (no {RUN_JSON}): it was interrupted or "
            "is not a run; re-run collect with --overwrite"
        )
    meta = _read_run_json(path)
    n, k, c = _check_header(path, meta)
    try:
        provenance = Provenance.from_dict(meta.get("provenance", {}))
    except V.FieldError as e:
        raise RunError(f"run '{path}': {RUN_JSON} {e}; {_DAMAGED}") from None
    costs_doc = meta.get("costs")
    try:
        costs = None if costs_doc is None else CostTable.from_dict(costs_doc, k=k)
    except V.FieldError as e:
        raise RunError(
            f"run '{path}': {RUN_JSON} {e}; fix it, or set \"costs\" to null and re-run 'dyncal profile {path}'"
        ) from None
    logits = _open_array(path, LOGITS_FILE, (n, k, c), "floating")
    labels = _open_array(path, LABELS_FILE, (n,), "integer")
    indices = _open_array(path, INDICES_FILE, (n,), "integer")
    fingerprint = _check_values(path, logits, labels, c)
    stored = meta.get("fingerprint")
    if stored is not None and stored != fingerprint:
        raise RunError(
            f"run '{path}': {LOGITS_FILE} or {LABELS_FILE} changed after the run was written (fingerprint "
            f"{fingerprint[:12]}, {RUN_JSON} records {str(stored)[:12]}); {_DAMAGED}"
        )
    if stored is None:  # a run written before runs were fingerprinted
        meta = {**meta, "fingerprint": fingerprint}
    return Run(
        path=path,
        logits=logits,
        labels=labels,
        indices=indices,
        provenance=provenance,
        costs=costs,
        meta=meta,
    )


_DAMAGED = "the run is damaged: re-create it with dyncal collect or dyncal import"
MAX_RUN_JSON_BYTES = 64 << 20
"""Largest run.json accepted (raw latency replicates of many devices fit in a few MB)."""
_SCAN_BYTES = 16 << 20
_SCANNED: dict[tuple[Any, ...], tuple[int, int, str]] = {}


def _read_run_json(path: Path) -> dict[str, Any]:
    try:
        return V.read_json_document(path / RUN_JSON, what="a dyncal run document", max_bytes=MAX_RUN_JSON_BYTES)
    except DyncalError as e:
        raise RunError(f"run '{path}': {e}; {_DAMAGED}") from None


def _check_header(path: Path, meta: Mapping[str, Any]) -> tuple[int, int, int]:
    """Validate run.json's schema, version, completeness and N/K/C; return ``(n, k, c)``."""
    if meta.get("schema") != "dyncal.run":
        raise RunError(
            f"run '{path}': {RUN_JSON} is not a dyncal run document (field 'schema' is "
            f'{V.show(meta.get("schema"))}, not "dyncal.run"); {_DAMAGED}'
        )
    version = meta.get("schema_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        raise RunError(
            f"run '{path}': {RUN_JSON} has schema version {V.show(version)}; this dyncal reads up to {SCHEMA_VERSION}: "
            "upgrade dyncal"
        )
    try:
        V.integer(V.require(meta, "schema_version"), "schema_version", minimum=1, maximum=SCHEMA_VERSION)
        if meta.get("complete") is not True:
            raise RunError(
                f"run '{path}': {RUN_JSON} marks the run incomplete (field 'complete' is "
                f"{V.show(meta.get('complete'))}); re-run collect with --overwrite"
            )
        n = V.integer(V.require(meta, "n"), "n", minimum=1)
        k = V.integer(V.require(meta, "k"), "k", minimum=1)
        c = V.integer(V.require(meta, "c"), "c", minimum=2)
        files = meta.get("files")
        default = {"logits": LOGITS_FILE, "labels": LABELS_FILE, "indices": INDICES_FILE}
        if files is not None and files != default:
            raise V.FieldError("files", f"must be {json.dumps(default)}, got {V.show(files, 80)}")
        fingerprint = meta.get("fingerprint")
        if fingerprint is not None and not _is_sha256(fingerprint):
            raise V.FieldError("fingerprint", f"must be a SHA-256 hex digest, got {V.show(fingerprint)}")
    except V.FieldError as e:
        raise RunError(f"run '{path}': {RUN_JSON} {e}; {_DAMAGED}") from None
    return n, k, c


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(ch in "0123456789abcdef" for ch in value)


def _open_array(path: Path, name: str, shape: tuple[int, ...], kind: str) -> np.ndarray:
    """Memory-map one array of a run after checking it is a regular, whole ``.npy`` of ``shape`` and ``kind``."""
    file = path / name
    try:
        st = os.stat(file)
    except FileNotFoundError:
        raise RunError(f"run '{path}': {name} is missing; {_DAMAGED}") from None
    except OSError as e:
        raise RunError(f"run '{path}': cannot read {name} ({e.strerror or e}); {_DAMAGED}") from e
    if not stat.S_ISREG(st.st_mode):
        raise RunError(f"run '{path}': {name} is {V.file_kind(st.st_mode)}, not a .npy file; {_DAMAGED}")
    if st.st_size == 0:
        raise RunError(f"run '{path}': {name} is empty (0 bytes); {_DAMAGED}")
    try:
        arr = np.load(file, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise RunError(f"run '{path}': {name} is not a whole .npy array ({first_line(e, 120)}); {_DAMAGED}") from None
    if not isinstance(arr, np.ndarray):  # an .npz archive under the name
        arr.close()
        raise RunError(f"run '{path}': {name} is an .npz archive, not a .npy array; {_DAMAGED}")
    wanted = np.floating if kind == "floating" else np.integer
    if not np.issubdtype(arr.dtype, wanted):
        what = "floating-point logits" if kind == "floating" else "integers"
        raise RunError(f"run '{path}': {name} holds {arr.dtype} values, not {what}; {_DAMAGED}")
    if arr.shape != shape:
        dims = "(N, K, C)" if len(shape) == 3 else "(N,)"
        raise RunError(f"run '{path}': {name} has shape {arr.shape} but {RUN_JSON} says {dims} = {shape}; {_DAMAGED}")
    return arr


def _scan(arr: np.ndarray, count: Callable[[np.ndarray], int], digest: Any = None) -> int:
    """Sum ``count(block)`` over the raw data of a memory-mapped array, read in bounded blocks.

    ``digest`` (a hashlib object), when given, is fed the same bytes in order.
    """
    mm = arr if isinstance(arr, np.memmap) else None
    if mm is None or mm.filename is None:
        flat = np.ascontiguousarray(arr).reshape(-1)
        step = max(1, _SCAN_BYTES // max(1, flat.itemsize))
        total = 0
        for i in range(0, flat.size, step):
            total += count(flat[i : i + step])
            if digest is not None:
                digest.update(flat[i : i + step].tobytes())
        return total
    step = max(1, _SCAN_BYTES // mm.itemsize)
    buf = np.empty(min(step, mm.size), dtype=mm.dtype)
    total = 0
    with open(mm.filename, "rb") as fh:
        fh.seek(mm.offset)
        left = mm.size
        while left:
            view = buf[: min(step, left)]
            got = fh.readinto(view.view(np.uint8).data)
            if got != view.nbytes:
                raise RunError(f"'{mm.filename}' changed while it was read; try again")
            total += count(view)
            if digest is not None:
                digest.update(view.view(np.uint8).data)
            left -= view.size
    return total


def _nonfinite(block: np.ndarray) -> int:
    with np.errstate(invalid="ignore", over="ignore"):
        if np.isfinite(np.add.reduce(block, dtype=block.dtype)):  # NaN and inf propagate: one pass
            return 0
    return int(block.size - np.count_nonzero(np.isfinite(block)))  # or the sum overflowed


def _check_values(path: Path, logits: np.ndarray, labels: np.ndarray, c: int) -> str:
    """Refuse labels outside ``[0, C)`` and non-finite logits, counting them; return the run's fingerprint.

    One pass over the arrays does both (the fingerprint is :func:`compute_fingerprint`'s);
    the result is remembered per file state, so opening the same run again costs nothing.
    """
    key: tuple[Any, ...] = (c,)
    for name in (LOGITS_FILE, LABELS_FILE):
        st = os.stat(path / name)
        key += (os.path.realpath(path / name), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key in _SCANNED:
        bad_labels, nonfinite, fingerprint = _SCANNED[key]
    else:
        digest = hashlib.sha256(_FINGERPRINT_PREFIX)
        digest.update(_fingerprint_header(LOGITS_FILE, logits))
        nonfinite = _scan(logits, _nonfinite, digest)
        digest.update(_fingerprint_header(LABELS_FILE, labels))
        bad_labels = _scan(labels, lambda b: int(np.count_nonzero((b < 0) | (b >= c))), digest)
        fingerprint = digest.hexdigest()
        if len(_SCANNED) > 256:
            _SCANNED.clear()
        _SCANNED[key] = (bad_labels, nonfinite, fingerprint)
    if bad_labels:
        lo, hi = int(labels.min()), int(labels.max())
        raise RunError(
            f"run '{path}': {LABELS_FILE} has {bad_labels} of {labels.shape[0]} labels outside [0, {c}) "
            f"(C={c} classes; labels range from {lo} to {hi}); {_DAMAGED} with the right labels"
        )
    if nonfinite:
        raise RunError(
            f"run '{path}': {LOGITS_FILE} holds {nonfinite} NaN or infinite values of {logits.size}; "
            "fix the model or the export, then re-create the run"
        )
    return fingerprint


MODEL_ID_KEYS = ("model", "weights_sha256", "state_sha256")
"""Keys of :attr:`LatencyProfile.settings` naming the model that was timed (spec, hashes)."""


def _same_model(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether two model identities agree on every key both record (none recorded: assume so)."""
    return all(old[key] == new[key] for key in MODEL_ID_KEYS if old.get(key) is not None and new.get(key) is not None)


def _describe_model(model_id: Mapping[str, Any]) -> str:
    """``spec (weights 1a2b3c4d…, state 5e6f…)`` from a model identity, for messages."""
    hashes = [
        f"{name} {str(model_id[key])[:12]}"
        for key, name in (("weights_sha256", "weights"), ("state_sha256", "state"))
        if model_id.get(key)
    ]
    return f"{model_id.get('model') or '(unnamed model)'}" + (f" ({', '.join(hashes)})" if hashes else "")


def other_model_latency(
    run: Run, model_id: Mapping[str, Any] | None, *, allow_other_model: bool = False
) -> tuple[list[str], str | None]:
    """Latency keys of ``run`` timed on a model other than ``model_id``, and that model described.

    Args:
        run: An opened run.
        model_id: The model about to be profiled (see :data:`MODEL_ID_KEYS`), or None.
        allow_other_model: Return them (to be replaced) instead of refusing.

    Raises:
        RunError: There are some and ``allow_other_model`` is False: one line naming them
            and the flag that replaces them.
    """
    keys: list[str] = []
    described = None
    if run.costs is None or model_id is None:
        return keys, described
    for key, old in run.costs.latency.items():
        if not _same_model(old.settings, model_id):
            keys.append(key)
            described = _describe_model(old.settings)
    if keys and not allow_other_model:
        raise RunError(
            f"run '{run.path}' holds latency {', '.join(keys)} timed on another model ({described}) than "
            f"this one ({_describe_model(model_id)}); pass --allow-other-model to replace it, or profile "
            "a copy of the run"
        )
    return keys, described


@dataclass(frozen=True)
class StoredCosts:
    """What :func:`store_costs` wrote.

    Attributes:
        costs: The cost table as stored (merged with the entries kept).
        replaced: Latency keys (``"cpu/b1"``, ...) timed on another model that were replaced.
        replaced_model: That other model, described (spec and hashes), or None.
    """

    costs: CostTable
    replaced: tuple[str, ...] = ()
    replaced_model: str | None = None


def store_costs(
    path: str | os.PathLike[str],
    costs: CostTable,
    *,
    merge: bool = True,
    model_id: Mapping[str, Any] | None = None,
    allow_other_model: bool = False,
) -> StoredCosts:
    """Store a cost table in a run's ``run.json``, atomically and under the run's lock.

    Args:
        path: A complete run directory.
        costs: The new cost table.
        merge: Keep latency entries of other devices/batch sizes already stored, and
            MACs when the new table has none. Entries that record no model (older runs)
            are kept.
        model_id: The model the new table was measured on (``model``, ``weights_sha256``,
            ``state_sha256``; see :data:`MODEL_ID_KEYS`); by default read from the new
            latency entries' settings.
        allow_other_model: Replace stored latency entries timed on another model (their
            settings name a different spec or hash); without it such entries are an error,
            never dropped silently.

    Returns:
        The stored table and the keys it replaced.

    Raises:
        RunError: Another process writes the run, the table does not fit the run, or the
            run holds latency of another model and ``allow_other_model`` is not set.

    Example:
        >>> import numpy as np, tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "run"
        >>> _ = import_arrays(np.zeros((3, 2, 4), np.float32), [0, 1, 3], out)
        >>> store_costs(out, CostTable(macs=(1e6, 2e6))).costs.macs
        (1000000.0, 2000000.0)
    """
    with RunLock(path):
        run = load_run(path)
        replaced: list[str] = []
        replaced_model = None
        if merge and run.costs is not None:
            if model_id is None:
                model_id = next(
                    ({k: p.settings.get(k) for k in MODEL_ID_KEYS} for p in costs.latency.values()),
                    None,
                )
            replaced, replaced_model = other_model_latency(run, model_id, allow_other_model=allow_other_model)
            latency = {key: old for key, old in run.costs.latency.items() if key not in replaced}
            if replaced:
                log.info("replacing latency %s of run '%s' timed on %s", ", ".join(replaced), path, replaced_model)
            latency.update(costs.latency)
            costs = CostTable(
                macs=costs.macs if costs.macs is not None else run.costs.macs,
                stage_macs=costs.stage_macs if costs.stage_macs is not None else run.costs.stage_macs,
                # fvcore's list belongs to the MACs it was counted with: a fresh count replaces it, empty or not
                unsupported_ops=costs.unsupported_ops if costs.macs is not None else run.costs.unsupported_ops,
                latency=latency,
                source=costs.source,
                model=costs.model if costs.model is not None else run.costs.model,
            )
        if costs.macs is not None and len(costs.macs) != run.k:
            raise RunError(f"cost table has {len(costs.macs)} exits but the run has K={run.k}")
        meta = dict(run.meta)
        meta["costs"] = costs.to_dict()
        try:
            atomic_write_text(Path(path) / RUN_JSON, json.dumps(meta, indent=2))
        except OSError as e:
            raise RunError(f"cannot write '{Path(path) / RUN_JSON}' ({e.strerror or e}); make the run writable") from e
    return StoredCosts(costs=costs, replaced=tuple(replaced), replaced_model=replaced_model)


def save_costs(
    path: str | os.PathLike[str],
    costs: CostTable,
    *,
    merge: bool = True,
    model_id: Mapping[str, Any] | None = None,
    allow_other_model: bool = False,
) -> CostTable:
    """Store a cost table in a run's ``run.json``; see :func:`store_costs`.

    Returns:
        The cost table as stored.

    Example:
        >>> import numpy as np, tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "run"
        >>> _ = import_arrays(np.zeros((3, 2, 4), np.float32), [0, 1, 3], out)
        >>> save_costs(out, CostTable(macs=(1e6, 2e6))).macs
        (1000000.0, 2000000.0)
    """
    return store_costs(path, costs, merge=merge, model_id=model_id, allow_other_model=allow_other_model).costs


# --------------------------------------------------------------------------- writing


class _RowFile:
    """A ``.npy`` file on disk written row block by row block with ``os.pwrite``.

    Writing through the file descriptor (not a memory map) keeps the writer's resident
    memory flat however many rows are written: written pages belong to the page cache,
    not to the process.
    """

    def __init__(self, path: Path, dtype: Any, shape: tuple[int, ...], *, create: bool) -> None:
        from numpy.lib.format import open_memmap

        self.path = path
        self.dtype = np.dtype(dtype)
        self.shape = shape
        self.fd = -1
        try:
            if create:
                mm = open_memmap(path, mode="w+", dtype=self.dtype, shape=shape)  # header + sparse body
            else:
                mm = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise RunError(f"cannot {'create' if create else 'open'} '{path}': {e}") from e
        if mm.shape != shape or mm.dtype != self.dtype:
            raise RunError(f"'{path}' has shape {mm.shape} and dtype {mm.dtype}, expected {shape} {self.dtype}")
        self.offset = int(mm.offset)
        del mm
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self.fd = os.open(path, os.O_RDWR)

    def write(self, start: int, rows: np.ndarray) -> None:
        data = np.ascontiguousarray(rows, dtype=self.dtype)
        if data.shape[1:] != self.shape[1:] or start < 0 or start + data.shape[0] > self.shape[0]:
            raise RunError(f"rows {start}..{start + data.shape[0]} of shape {data.shape} do not fit {self.shape}")
        os.pwrite(self.fd, data.tobytes(), self.offset + start * self.row_bytes)

    def read(self, start: int, stop: int) -> np.ndarray:
        data = os.pread(self.fd, (stop - start) * self.row_bytes, self.offset + start * self.row_bytes)
        return np.frombuffer(data, dtype=self.dtype).reshape((stop - start, *self.shape[1:]))

    def sync(self) -> None:
        if self.fd >= 0:
            os.fsync(self.fd)

    def close(self, *, sync: bool) -> None:
        if self.fd >= 0:
            if sync:
                os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1


class RunWriter:
    """Builds a run in ``OUT.partial`` and publishes it as ``OUT`` on :meth:`finish`.

    Rows may be written in any order, by several processes (see :meth:`attach`); rows go
    straight to disk, so memory stays flat however large N is. The creating process holds
    the run's :class:`RunLock` from construction until :meth:`finish` or :meth:`abort`, so
    no other writer can touch ``OUT`` or ``OUT.partial`` meanwhile. If the writer is closed
    without :meth:`finish` (an error), the partial directory is removed; if the process
    dies, it stays behind as ``OUT.partial``, which :func:`load_run` never mistakes for a
    run (and ``dyncal collect --resume`` continues).

    Args:
        out: Final run directory.
        n: Number of rows.
        overwrite: Replace an existing ``OUT`` (only once the new run is complete) and
            discard an existing ``OUT.partial`` (unless ``keep_partial``).
        keep_partial: Keep an existing ``OUT.partial`` to continue it (:attr:`resumed`
            says whether there was one; :meth:`open_existing` opens its arrays).

    Raises:
        RunError: Another process writes ``OUT``, ``OUT`` exists without ``overwrite``, an
            interrupted ``OUT.partial`` exists without ``overwrite``/``keep_partial``, or
            the folder cannot be written.
    """

    def __init__(
        self, out: str | os.PathLike[str], n: int, *, overwrite: bool = False, keep_partial: bool = False
    ) -> None:
        self.out = Path(out)
        self.n = int(n)
        self.overwrite = overwrite
        self.partial = self.out.with_name(self.out.name + PARTIAL_SUFFIX)
        self._files: list[_RowFile] = []
        self._finished = False
        self._owner = True
        self.resumed = False
        if self.n <= 0:
            raise RunError(f"a run needs at least one sample, got N={self.n}")
        self._lock = RunLock(self.out).acquire()
        try:
            check_out(self.out, overwrite=overwrite)
            if self.partial.exists() and keep_partial and self.partial.is_dir():
                self.resumed = True
                return
            if self.partial.exists() and not overwrite:
                raise RunError(
                    f"'{self.partial}' exists: an earlier collect was interrupted; pass --resume to "
                    "continue it (collect only) or --overwrite to discard it"
                )
            self.restart()
        except BaseException:
            self._lock.release()
            raise

    def restart(self) -> None:
        """Discard whatever ``OUT.partial`` holds and start an empty one."""
        for f in self._files:
            f.close(sync=False)
        self._files = []
        self.resumed = False
        try:
            if self.partial.is_dir() and not self.partial.is_symlink():
                shutil.rmtree(self.partial)
            elif self.partial.exists() or self.partial.is_symlink():
                self.partial.unlink()
            self.partial.mkdir(parents=True)
        except OSError as e:
            raise RunError(
                f"cannot create '{self.partial}' ({e.strerror or e}); choose an --out in a folder you can write"
            ) from e

    @classmethod
    def attach(cls, out: str | os.PathLike[str], n: int, k: int, c: int) -> RunWriter:
        """Open the arrays another process allocated, to write its share of the rows.

        Only the process that created the writer may :meth:`finish` it; attaching takes
        no lock (the creator holds it for everyone).
        """
        self = cls.__new__(cls)
        self.out = Path(out)
        self.n = int(n)
        self.overwrite = False
        self.partial = self.out.with_name(self.out.name + PARTIAL_SUFFIX)
        self._files = []
        self._finished = False
        self._owner = False
        self.resumed = False
        self._lock = RunLock(self.out)  # never acquired
        self._open(k, c, create=False)
        return self

    def _open(self, k: int, c: int, *, create: bool) -> None:
        files: list[_RowFile] = []
        try:
            for name, dtype, shape in (
                (LOGITS_FILE, np.float32, (self.n, k, c)),
                (LABELS_FILE, np.int64, (self.n,)),
                (INDICES_FILE, np.int64, (self.n,)),
            ):
                files.append(_RowFile(self.partial / name, dtype, shape, create=create))
        except BaseException:
            for f in files:
                f.close(sync=False)
            raise
        self._files = files

    @property
    def allocated(self) -> bool:
        """Whether the arrays exist (K and C are known)."""
        return bool(self._files)

    def allocate(self, k: int, c: int) -> None:
        """Create the on-disk arrays once K and C are known (from the first batch)."""
        self._open(k, c, create=True)

    def open_existing(self, k: int, c: int) -> None:
        """Open the arrays of the partial run being continued (checked to be ``(N, K, C)``)."""
        self._open(k, c, create=False)

    def write(self, start: int, logits: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> None:
        """Store rows ``start .. start+B``: ``logits`` ``(B, K, C)``, ``labels``/``indices`` ``(B,)``."""
        if not self._files:
            self.allocate(logits.shape[1], logits.shape[2])
        for f, rows in zip(self._files, (logits, labels, indices), strict=True):
            f.write(start, rows)

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows ``start .. stop`` as written so far: ``(logits, labels, indices)``."""
        logits, labels, indices = (f.read(start, stop) for f in self._files)
        return logits, labels, indices

    def sync(self) -> None:
        """Flush the rows written so far to disk (before recording them as done)."""
        for f in self._files:
            f.sync()

    def close(self) -> None:
        """Flush this process's writes to disk (non-owners call this before the owner finishes)."""
        for f in self._files:
            f.close(sync=True)

    def finish(self, provenance: Provenance, costs: CostTable | None = None) -> Path:
        """Flush, write ``run.json`` and publish the run atomically. Returns ``OUT``.

        Anything else in the partial directory (collect's progress files) is removed first.
        """
        if not self._owner:
            raise RunError("only the process that created the run may finish it")
        if not self._files:
            raise RunError("no rows were written; the data set is empty")
        _, k, c = self._files[0].shape
        self.close()
        keep = {LOGITS_FILE, LABELS_FILE, INDICES_FILE}
        for extra in self.partial.iterdir():
            if extra.name not in keep:
                extra.unlink()
        meta = _run_document(self.n, int(k), int(c), provenance, costs)
        meta["fingerprint"] = compute_fingerprint(self.partial)
        atomic_write_text(self.partial / RUN_JSON, json.dumps(meta, indent=2))
        publish_dir(self.partial, self.out)
        self._finished = True
        self._lock.release()
        return self.out

    def abort(self, *, keep_partial: bool = False) -> None:
        """Close the files; the owner removes the partial directory (unless ``keep_partial``) and unlocks."""
        for f in self._files:
            f.close(sync=keep_partial)
        if self._owner:
            if not keep_partial and self.partial.exists():
                shutil.rmtree(self.partial, ignore_errors=True)
            self._lock.release()

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if not self._finished:
            self.abort()


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is a directory dyncal wrote as a run (its run.json says so).

    Only regular files are read, so a FIFO named run.json never blocks.
    """
    try:
        meta = V.read_json_document(path / RUN_JSON, what="a run document", max_bytes=MAX_RUN_JSON_BYTES)
    except DyncalError:
        return False
    return meta.get("schema") == "dyncal.run"


def run_dir_holding(path: str | os.PathLike[str]) -> Path | None:
    """The run directory (complete, damaged or ``.partial``) that ``path`` is or lies inside, if any.

    A folder counts as a run when its run.json says so, when it holds a run.json beside a
    logits.npy (a damaged run is still somebody's run), or when its name ends in
    ``.partial`` and it holds either.

    Example:
        >>> import numpy as np, tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "run"
        >>> _ = import_arrays(np.zeros((2, 2, 2), np.float32), [0, 1], out)
        >>> run_dir_holding(out / "thresholds.json") == out
        True
        >>> run_dir_holding(out.parent / "thresholds.json") is None
        True
    """
    p = Path(os.path.realpath(path))
    for folder in (p, *p.parents):
        if not folder.is_dir():
            continue
        has_json, has_logits = (os.path.lexists(folder / name) for name in (RUN_JSON, LOGITS_FILE))
        partial = folder.name.endswith(PARTIAL_SUFFIX) and (has_json or has_logits)
        if partial or (has_json and (has_logits or is_run_dir(folder))):
            return folder
    return None


def check_out(
    out: Path,
    *,
    overwrite: bool,
    what: str = "run",
    is_ours: Callable[[Path], bool] | None = None,
    error: type[DyncalError] = RunError,
) -> None:
    """Refuse an output directory (a run, or another folder dyncal builds) that is unsafe to create or replace.

    ``--overwrite`` never deletes a folder dyncal did not write: an existing ``out`` must be
    one of ours (``is_ours``; default: a dyncal run) or an empty folder to be replaced.
    ``out`` may not lie inside a run directory, and its parent folder must exist and be
    writable.

    Args:
        out: The folder to create.
        overwrite: Whether an existing ``out`` may be replaced.
        what: What is built there, for messages (``"run"``, ``"package"``).
        is_ours: Recognises a folder of that kind dyncal wrote (default :func:`is_run_dir`).
        error: The error class to raise.
    """
    out = Path(out)
    is_ours = is_ours or is_run_dir
    if out.exists() and not overwrite:
        raise error(f"'{out}' already exists; choose another --out or pass --overwrite")
    if out.exists() and not out.is_dir():
        raise error(f"'{out}' exists and is not a folder; choose another --out")
    if out.exists() and not is_ours(out) and any(out.iterdir()):
        raise error(
            f"'{out}' exists and is not a dyncal {what}; --overwrite only replaces a dyncal {what}, so "
            "choose another --out (or remove the folder yourself)"
        )
    if not out.parent.is_dir():
        raise error(f"the folder '{out.parent}' for --out does not exist; create it first")
    inside = run_dir_holding(out.parent)
    if inside is not None:
        raise error(f"--out '{out}' lies inside the run directory '{inside}'; choose a folder outside any run")
    try:
        check_writable(out.parent)
    except DyncalError as e:
        raise error(str(e)) from None


def _run_document(n: int, k: int, c: int, provenance: Provenance, costs: CostTable | None) -> dict[str, Any]:
    return {
        "schema": "dyncal.run",
        "schema_version": SCHEMA_VERSION,
        "complete": True,
        "n": n,
        "k": k,
        "c": c,
        "files": {"logits": LOGITS_FILE, "labels": LABELS_FILE, "indices": INDICES_FILE},
        "provenance": provenance.to_dict(),
        "costs": None if costs is None else costs.to_dict(),
    }


def publish_dir(partial: Path, out: Path) -> None:
    """Rename ``partial`` to ``out``, replacing an old ``out`` only after the new one is whole."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(partial, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(partial, out)


# --------------------------------------------------------------------------- import


def import_arrays(
    logits: np.ndarray,
    labels: np.ndarray,
    out: str | os.PathLike[str],
    *,
    macs: Sequence[float] | None = None,
    layout: str = "nkc",
    indices: np.ndarray | None = None,
    overwrite: bool = False,
    provenance: Provenance | None = None,
    chunk_rows: int = 4096,
) -> Run:
    """Build a run from arrays a user already has (skipping collect).

    Args:
        logits: Per-exit logits, ``(N, K, C)`` (``layout="nkc"``) or ``(K, N, C)``
            (``layout="knc"``, as MSDNet-style code stores them).
        labels: ``(N,)`` integer classes in ``[0, C)``.
        out: Run directory to create.
        macs: Optional cumulative MACs per exit, ``K`` increasing numbers.
        layout: ``"nkc"`` (default) or ``"knc"``.
        indices: Optional ``(N,)`` dataset indices; defaults to ``0..N-1``.
        overwrite: Replace an existing run.
        provenance: Provenance to record; defaults to this process's command line.
        chunk_rows: Rows copied at a time (memory stays flat for memory-mapped input).

    Returns:
        The new run.

    Raises:
        RunError: Arrays of inconsistent shapes, NaN/inf logits, labels outside
            ``[0, C)``, or bad costs.

    Example:
        >>> import numpy as np, tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "r"
        >>> run = import_arrays(np.ones((3, 2, 4), np.float32), [0, 1, 3], out, macs=[1e6, 2e6])
        >>> run.costs.macs
        (1000000.0, 2000000.0)
    """
    if layout not in ("nkc", "knc"):
        raise RunError(f"layout must be 'nkc' or 'knc', got {layout!r}")
    logits = np.asarray(logits) if not isinstance(logits, np.ndarray) else logits
    labels = np.asarray(labels)
    if logits.ndim != 3:
        raise RunError(f"logits must be 3-D ({'N, K, C' if layout == 'nkc' else 'K, N, C'}), got shape {logits.shape}")
    if not (np.issubdtype(logits.dtype, np.floating) or np.issubdtype(logits.dtype, np.integer)):
        raise RunError(f"logits must be real numbers, got dtype {logits.dtype}")
    if layout == "knc":
        k, n, c = logits.shape
    else:
        n, k, c = logits.shape
    if labels.ndim != 1 or labels.shape[0] != n:
        hint = " (is the layout (K, N, C)? pass --layout knc)" if labels.ndim == 1 and labels.shape[0] == k else ""
        raise RunError(f"labels must have shape ({n},) to match logits {logits.shape}, got {labels.shape}{hint}")
    if n < 1:
        raise RunError(f"a run needs at least one sample, got N={n}")
    if k < 1:
        raise RunError(f"a run needs K >= 1 exits (K = 1: a static model), got K={k}")
    if c < 2:
        raise RunError(f"a classifier needs C >= 2 classes, got C={c}")
    labels = _integral_labels(labels, c)
    if indices is not None:
        indices = np.asarray(indices)
        if indices.shape != (n,):
            raise RunError(f"indices must have shape ({n},), got {indices.shape}")
        if not np.issubdtype(indices.dtype, np.integer):
            raise RunError(f"indices must be integers, got dtype {indices.dtype}")
    cost_table = None
    if macs is not None:
        cost_table = CostTable(macs=_validate_macs(macs, k), source="import")
    try:
        with RunWriter(out, n, overwrite=overwrite) as writer:
            writer.allocate(k, c)
            nonfinite = 0
            first: tuple[int, int] | None = None
            for start in range(0, n, chunk_rows):
                stop = min(n, start + chunk_rows)
                block = logits[start:stop] if layout == "nkc" else np.swapaxes(logits[:, start:stop], 0, 1)
                with np.errstate(over="ignore"):  # beyond float32 becomes inf, counted below
                    block = np.asarray(block, dtype=np.float32)
                finite = np.isfinite(block)
                if not finite.all():  # count them all, write nothing more
                    if first is None:
                        row, ex = np.argwhere(~finite)[0][:2]
                        first = (start + int(row), int(ex) + 1)
                    nonfinite += int(finite.size - np.count_nonzero(finite))
                if nonfinite:
                    continue
                idx = np.arange(start, stop) if indices is None else indices[start:stop]
                writer.write(start, block, labels[start:stop], idx)
            if first is not None:
                raise RunError(
                    f"logits contain {nonfinite} NaN or infinite values (or beyond float32, ±3.4e38; first at "
                    f"row {first[0]}, exit {first[1]}); fix the model or the export before importing"
                )
            prov = provenance or Provenance.here(model="(imported)", data="(imported)", device="unknown")
            writer.finish(prov, cost_table)
    except OSError as e:
        raise RunError(f"cannot write the run '{out}': {e.strerror or e}; choose another --out") from e
    return load_run(out)


def _integral_labels(labels: np.ndarray, c: int) -> np.ndarray:
    """Labels as int64 after checking they are whole numbers in ``[0, C)`` (counting the bad ones)."""
    if np.issubdtype(labels.dtype, np.floating):
        with np.errstate(invalid="ignore"):
            whole = np.isfinite(labels) & (np.mod(labels, 1) == 0)
        if not whole.all():
            bad = labels[~whole][:3].tolist()
            raise RunError(f"labels must be whole numbers; {int((~whole).sum())} of {labels.size} are not (e.g. {bad})")
    elif not np.issubdtype(labels.dtype, np.integer):
        raise RunError(f"labels must be integers, got dtype {labels.dtype}")
    out_of_range = (labels < 0) | (labels >= c)
    if out_of_range.any():
        bad = labels[out_of_range][:3].tolist()
        raise RunError(
            f"labels must lie in [0, {c}) for C={c} classes; {int(out_of_range.sum())} of {labels.size} "
            f"do not (e.g. {bad})"
        )
    return labels.astype(np.int64, copy=False)


def _validate_macs(macs: Sequence[float], k: int) -> tuple[float, ...]:
    try:
        vals = V.number_list(
            [m.item() if isinstance(m, np.generic) else m for m in macs],
            "--macs",
            length=k,
            positive=True,
            nondecreasing=True,
        )
    except V.FieldError as e:
        raise RunError(f"{e.field} {e.problem}; give one cumulative cost per exit (K={k}), exit 1 first") from None
    if any(b <= a for a, b in zip(vals, vals[1:], strict=False)):
        raise RunError(f"--macs must be cumulative (strictly increasing, exit 1 first), got {list(vals)}")
    return vals


def import_npz(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    macs: Sequence[float] | None = None,
    layout: str = "nkc",
    overwrite: bool = False,
) -> Run:
    """Build a run from an ``.npz`` with arrays ``logits`` and ``labels``.

    See :func:`import_arrays` for the arguments. Raises :class:`RunError` when the file
    is missing, unreadable or lacks an array.
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError:
        raise RunError(f"no such file '{path}'") from None
    if not stat.S_ISREG(st.st_mode):
        raise RunError(f"'{path}' is {V.file_kind(st.st_mode)}, not an .npz file")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise RunError(f"'{path}' is a single .npy array, not an .npz with arrays 'logits' and 'labels'")
        with loaded as npz:
            missing = [key for key in ("logits", "labels") if key not in npz.files]
            if missing:
                raise RunError(f"'{path}' has no array {missing[0]!r} (found: {', '.join(npz.files) or 'none'})")
            logits = npz["logits"]
            labels = npz["labels"]
            indices = npz["indices"] if "indices" in npz.files else None
    except NPZ_READ_ERRORS as e:
        raise RunError(
            f"cannot read '{path}' as .npz ({type(e).__name__}: {first_line(e, 120)}); is the file complete?"
        ) from e
    prov = Provenance.here(model="(imported)", data=str(path), device="unknown")
    return import_arrays(
        logits,
        labels,
        out,
        macs=macs,
        layout=layout,
        indices=indices,
        overwrite=overwrite,
        provenance=prov,
    )
