"""The run directory: the one artifact every dyncal stage reads.

A run is a directory readable with numpy alone (no pickle)::

    RUN/
      logits.npy    float32 (N, K, C)  per-exit logits, exit 1 first
      labels.npy    int64   (N,)       true class of every row
      indices.npy   int64   (N,)       dataset index of every row (each >= 0, each item once)
      run.json      schema version, N/K/C, provenance and (once profiled) the cost table

A run is built in ``RUN.partial`` and renamed to ``RUN`` only after ``run.json`` (with
``"complete": true``) is on disk, so an interrupted collect leaves a ``.partial``
directory that :func:`load_run` refuses, never something that looks finished.

Whoever writes a run (collect, import, profile through :func:`save_costs`) holds
:class:`RunLock`, an exclusive ``flock`` on ``.dyncal-lock-RUN`` beside the run, from its
start to its last write; a second writer fails at once with one line instead of
interleaving. ``overwrite`` replaces a run, and ``resume``/``overwrite`` remove a
``RUN.partial``, only when every entry in it is one dyncal writes there
(:func:`foreign_in_run`, :func:`foreign_in_partial_run`).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import hashlib
import json
import logging
import math
import os
import re
import secrets
import shutil
import stat
import sys
import time
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from dyncal.artifacts import validate as V
from dyncal.artifacts.atomic import atomic_write_text, temp_target
from dyncal.artifacts.costs import MODEL_ID_KEYS, CostTable, other_model_latency
from dyncal.artifacts.lock import RunLock
from dyncal.artifacts.outputs import check_writable
from dyncal.artifacts.ownership import (
    discard_built_folder,
    foreign_entry,
    is_folder,
    is_regular_file,
    json_schema,
    not_dyncals_message,
    refuse_foreign,
    remove_owned_folder,
    temp_of,
)
from dyncal.errors import DyncalError, RunError, first_line

__all__ = [
    "SCHEMA_VERSION",
    "RUN_JSON",
    "LOGITS_FILE",
    "LABELS_FILE",
    "INDICES_FILE",
    "PARTIAL_SUFFIX",
    "NPZ_READ_ERRORS",
    "library_versions",
    "publish_dir",
    "Provenance",
    "RunDocument",
    "Run",
    "RunWriter",
    "load_run",
    "import_arrays",
    "import_npz",
    "save_costs",
    "store_costs",
    "StoredCosts",
    "compute_fingerprint",
    "check_out",
    "is_run_dir",
    "run_dir_holding",
    "foreign_in_run",
    "foreign_in_partial_run",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
RUN_JSON = "run.json"
LOGITS_FILE = "logits.npy"
LABELS_FILE = "labels.npy"
INDICES_FILE = "indices.npy"
PARTIAL_SUFFIX = ".partial"

# What np.load raises for truncated, corrupt or pickled .npz files.
NPZ_READ_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


_PROVENANCE_KEYS = frozenset(
    {"model", "weights_sha256", "data", "command", "created", "device", "versions", "extra", "other"}
)


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
        other: Keys a later dyncal added, as they were read (written back unchanged).
    """

    model: str
    weights_sha256: str | None
    data: str
    command: str
    created: str
    device: str
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    other: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        doc = dataclasses.asdict(self)
        other = doc.pop("other")
        return {**doc, **{key: value for key, value in other.items() if key not in doc}}

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
            other={key: value for key, value in d.items() if key not in _PROVENANCE_KEYS},
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


# --------------------------------------------------------------------------- run.json

_FILES = {"logits": LOGITS_FILE, "labels": LABELS_FILE, "indices": INDICES_FILE}
_DAMAGED = "the run is damaged: re-create it with dyncal collect or dyncal import"
MAX_RUN_JSON_BYTES = 64 << 20
"""Largest run.json accepted (raw latency replicates of many devices fit in a few MB)."""
_KNOWN_KEYS = frozenset(
    {"schema", "schema_version", "complete", "n", "k", "c", "files", "provenance", "costs", "fingerprint"}
)


@dataclass(frozen=True)
class RunDocument:
    """``run.json``: a run's shape, provenance, cost table and fingerprint; the only reader and writer of that file.

    Keys a later dyncal of the same schema version added are kept in ``other`` and written
    back unchanged, so profiling a run never drops them.

    Attributes:
        n: Number of samples (rows).
        k: Number of exits.
        c: Number of classes.
        provenance: Where the run came from.
        costs: The cost table, or None until profiled or imported with costs.
        fingerprint: SHA-256 of the run's logits, labels and indices (:func:`compute_fingerprint`),
            None in runs written before runs were fingerprinted.
        schema_version: Version of the document's format.
        other: Keys this dyncal does not know, as they were read.

    Example:
        >>> doc = RunDocument(n=4, k=2, c=3, provenance=Provenance("m", None, "d", "", "", "cpu"))
        >>> RunDocument.from_dict(doc.to_dict(), "run") == doc
        True
    """

    n: int
    k: int
    c: int
    provenance: Provenance
    costs: CostTable | None = None
    fingerprint: str | None = None
    schema_version: int = SCHEMA_VERSION
    other: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready document (keys in the order dyncal has always written them)."""
        doc: dict[str, Any] = {
            "schema": "dyncal.run",
            "schema_version": self.schema_version,
            "complete": True,
            "n": self.n,
            "k": self.k,
            "c": self.c,
            "files": dict(_FILES),
            "provenance": self.provenance.to_dict(),
            "costs": None if self.costs is None else self.costs.to_dict(),
        }
        if self.fingerprint is not None:
            doc["fingerprint"] = self.fingerprint
        return {**doc, **{key: value for key, value in self.other.items() if key not in doc}}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], path: str | os.PathLike[str]) -> RunDocument:
        """Validate a parsed ``run.json`` of the run at ``path`` (named in messages).

        Raises:
            RunError: One line naming the field that is missing, malformed, from a newer
                schema, or marks the run incomplete, and what to do.
        """
        if doc.get("schema") != "dyncal.run":
            raise RunError(
                f"run '{path}': {RUN_JSON} is not a dyncal run document (field 'schema' is "
                f'{V.show(doc.get("schema"))}, not "dyncal.run"); {_DAMAGED}'
            )
        version = doc.get("schema_version")
        if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
            raise RunError(
                f"run '{path}': {RUN_JSON} has schema version {V.show(version)}; this dyncal reads up to "
                f"{SCHEMA_VERSION}: upgrade dyncal"
            )
        try:
            version = V.integer(V.require(doc, "schema_version"), "schema_version", minimum=1, maximum=SCHEMA_VERSION)
            if doc.get("complete") is not True:
                raise RunError(
                    f"run '{path}': {RUN_JSON} marks the run incomplete (field 'complete' is "
                    f"{V.show(doc.get('complete'))}); re-run 'dyncal collect ... --overwrite'"
                )
            n = V.integer(V.require(doc, "n"), "n", minimum=1)
            k = V.integer(V.require(doc, "k"), "k", minimum=1)
            c = V.integer(V.require(doc, "c"), "c", minimum=2)
            files = doc.get("files")
            if files is not None and files != _FILES:
                raise V.FieldError("files", f"must be {json.dumps(_FILES)}, got {V.show(files, 80)}")
            fingerprint = doc.get("fingerprint")
            if fingerprint is not None and not _is_sha256(fingerprint):
                raise V.FieldError("fingerprint", f"must be a SHA-256 hex digest, got {V.show(fingerprint)}")
            provenance = Provenance.from_dict(doc.get("provenance", {}))
        except V.FieldError as e:
            raise RunError(f"run '{path}': {RUN_JSON} {e}; {_DAMAGED}") from None
        costs_doc = doc.get("costs")
        try:
            costs = None if costs_doc is None else CostTable.from_dict(costs_doc, k=k)
        except V.FieldError as e:
            raise RunError(
                f"run '{path}': {RUN_JSON} {e}; fix it, or set \"costs\" to null and re-run 'dyncal profile {path}'"
            ) from None
        return cls(
            n=n,
            k=k,
            c=c,
            provenance=provenance,
            costs=costs,
            fingerprint=fingerprint,
            schema_version=version,
            other={key: value for key, value in doc.items() if key not in _KNOWN_KEYS},
        )

    @classmethod
    def load(cls, run_dir: str | os.PathLike[str]) -> RunDocument:
        """Read and validate ``run_dir/run.json`` (a regular file of bounded size and nesting).

        Raises:
            RunError: Unreadable or malformed; see :meth:`from_dict`.
        """
        try:
            doc = V.read_json_document(
                Path(run_dir) / RUN_JSON, what="a dyncal run document", max_bytes=MAX_RUN_JSON_BYTES
            )
        except DyncalError as e:
            raise RunError(f"run '{run_dir}': {e}; {_DAMAGED}") from None
        return cls.from_dict(doc, run_dir)

    def save(self, run_dir: str | os.PathLike[str]) -> None:
        """Write ``run_dir/run.json`` atomically.

        Raises:
            RunError: The folder is not writable.
        """
        target = Path(run_dir) / RUN_JSON
        try:
            atomic_write_text(target, json.dumps(self.to_dict(), indent=2))
        except OSError as e:
            raise RunError(f"cannot write '{target}' ({e.strerror or e}); make the run writable") from e


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(ch in "0123456789abcdef" for ch in value)


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Run:
    """A complete run directory, opened.

    Attributes:
        path: The run directory.
        logits: Per-exit logits, ``(N, K, C)`` float32, in memory, read-only.
        labels: True classes, ``(N,)`` int64.
        indices: Dataset index of every row, ``(N,)`` int64.
        document: The whole ``run.json`` document (provenance, cost table, fingerprint).
    """

    path: Path
    logits: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    document: RunDocument

    @property
    def provenance(self) -> Provenance:
        """Where the run came from."""
        return self.document.provenance

    @property
    def costs(self) -> CostTable | None:
        """The cost table, or None until profiled or imported with costs."""
        return self.document.costs

    @property
    def meta(self) -> dict[str, Any]:
        """``run.json`` as a plain dict (:meth:`RunDocument.to_dict`)."""
        return self.document.to_dict()

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
        """SHA-256 identity of the run's arrays (logits, labels and indices); see :func:`compute_fingerprint`.

        Stored in ``run.json`` when the run is written; computed here for older runs.
        """
        stored = self.document.fingerprint  # checked against the arrays by load_run
        return stored if stored is not None else compute_fingerprint(self.path)


_FINGERPRINT_PREFIX = b"dyncal.run.fingerprint/2\n"
_ARRAY_FILES: tuple[tuple[str, str], ...] = (
    (LOGITS_FILE, "floating"),
    (LABELS_FILE, "integer"),
    (INDICES_FILE, "integer"),
)
_READ_BYTES = 16 << 20
_RACY_NS = 2_000_000_000
"""A remembered check is trusted only for files last changed (ctime) this long before it was made.

File times tick coarsely (a few ms, a second on some file systems): a file changed in the same
tick as an earlier change keeps its ctime, so a check made within that tick proves nothing.
"""


@dataclass(frozen=True)
class _NpyFile:
    """One array file of a run, as its ``.npy`` header describes it (already checked against the file's size)."""

    run: Path
    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    fortran: bool
    offset: int
    stat: os.stat_result

    @property
    def size(self) -> int:
        """Number of values."""
        return math.prod(self.shape)

    @property
    def identity(self) -> tuple[int, ...]:
        """What changes whenever the file's bytes change (ctime: even when mtime is set back)."""
        st = self.stat
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    @property
    def header(self) -> bytes:
        """What the fingerprint records of the header: name, dtype with its byte order, array order and shape."""
        return f"{self.name}:{self.dtype.str}:{'F' if self.fortran else 'C'}:{self.shape}\n".encode()


def _npy_file(run: Path, name: str, shape: tuple[int, ...] | None = None, kind: str | None = None) -> _NpyFile:
    """Check that ``run/name`` is a whole ``.npy`` file (of ``shape`` and ``kind`` when given); read its header.

    Only the header is read: the file is never memory-mapped, so a file that shrinks later
    cannot bring the process down (SIGBUS); :func:`_read_arrays` reads the data.
    """
    file = run / name
    try:
        st = os.stat(file)
    except FileNotFoundError:
        raise RunError(f"run '{run}': {name} is missing; {_DAMAGED}") from None
    except OSError as e:
        raise RunError(f"run '{run}': cannot read {name} ({e.strerror or e}); {_DAMAGED}") from e
    if not stat.S_ISREG(st.st_mode):
        raise RunError(f"run '{run}': {name} is {V.file_kind(st.st_mode)}, not a .npy file; {_DAMAGED}")
    if st.st_size == 0:
        raise RunError(f"run '{run}': {name} is empty (0 bytes); {_DAMAGED}")
    not_whole = f"run '{run}': {name} is not a whole .npy array"
    try:
        with _open_nonblocking(file) as fh:
            st = os.fstat(fh.fileno())  # the file opened (a FIFO swapped in after stat shows here, never blocks)
            if not stat.S_ISREG(st.st_mode):
                raise RunError(f"run '{run}': {name} is {V.file_kind(st.st_mode)}, not a .npy file; {_DAMAGED}")
            if fh.read(4) == b"PK\x03\x04":
                raise RunError(f"run '{run}': {name} is an .npz archive, not a .npy array; {_DAMAGED}")
            fh.seek(0)
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                dims, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                dims, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise ValueError(f"format version {version[0]}.{version[1]}, which dyncal does not write")
            offset = fh.tell()
    except (OSError, ValueError, EOFError, SyntaxError) as e:
        raise RunError(f"{not_whole} ({first_line(e, 120)}); {_DAMAGED}") from None
    if dtype.hasobject:
        raise RunError(f"{not_whole} (it holds Python objects, which need pickle); {_DAMAGED}")
    if kind is not None:
        wanted = np.floating if kind == "floating" else np.integer
        if dtype.names is not None or dtype.subdtype is not None or not np.issubdtype(dtype, wanted):
            what = "floating-point logits" if kind == "floating" else "integers"
            raise RunError(f"run '{run}': {name} holds {dtype} values, not {what}; {_DAMAGED}")
    if shape is not None and tuple(dims) != shape:
        axes = "(N, K, C)" if len(shape) == 3 else "(N,)"
        raise RunError(f"run '{run}': {name} has shape {tuple(dims)} but {RUN_JSON} says {axes} = {shape}; {_DAMAGED}")
    declared = offset + math.prod(dims) * dtype.itemsize
    if st.st_size != declared:
        how = "holds only" if st.st_size < declared else "has trailing bytes:"
        raise RunError(f"{not_whole} ({how} {st.st_size:,} bytes, its header declares {declared:,}); {_DAMAGED}")
    return _NpyFile(run, name, dtype, tuple(dims), bool(fortran), offset, st)


def _open_nonblocking(path: Path) -> Any:
    """``path`` opened for unbuffered binary reading; a FIFO put there after it was checked does not block."""
    return open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb", buffering=0)


def _changed_while_read(file: _NpyFile) -> RunError:
    return RunError(
        f"run '{file.run}': {file.name} changed while it was read (another process writes or truncates it); "
        "try again once nothing changes the run"
    )


def _read_into(fh: Any, block: np.ndarray) -> int:
    """Fill ``block`` from ``fh``; the number of bytes read (fewer only at the end of the file)."""
    view = block.view(np.uint8).reshape(-1).data
    got = 0
    while got < len(view):
        n = fh.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def _read_array(file: _NpyFile, *, keep: bool, feed: Callable[[np.ndarray], None] | None = None) -> np.ndarray | None:
    """Read one array's data in bounded blocks; ``feed(block)`` sees the blocks in file order.

    With ``keep`` the array is returned, in memory, read-only, in native byte order (the
    file's array order); else only ``feed`` sees the data. A file that is shorter or longer
    than its header said, or another file under the name, is refused as changed.
    """
    order: Literal["C", "F"] = "F" if file.fortran else "C"
    try:
        out = np.empty(file.shape, dtype=file.dtype.newbyteorder("="), order=order) if keep else None
    except MemoryError:
        gb = file.size * file.dtype.itemsize / 2**30
        raise RunError(
            f"run '{file.run}': {file.name} holds {gb:.1f} GiB, more than this machine can hold in memory; "
            "open the run on a machine with more memory"
        ) from None
    flat = None if out is None else out.ravel(order="K")  # a view: the array in file order
    direct = flat is not None and file.dtype.isnative
    step = max(1, _READ_BYTES // file.dtype.itemsize)
    buf = None if direct else np.empty(min(step, file.size), dtype=file.dtype)
    with _open_nonblocking(file.run / file.name) as fh:
        st = os.fstat(fh.fileno())
        if (st.st_dev, st.st_ino) != (file.stat.st_dev, file.stat.st_ino):
            raise _changed_while_read(file)
        fh.seek(file.offset)
        done = 0
        while done < file.size:
            m = min(step, file.size - done)
            block = flat[done : done + m] if direct else buf[:m]  # type: ignore[index]
            if _read_into(fh, block) != block.nbytes:
                raise _changed_while_read(file)
            if feed is not None:
                feed(block)
            if flat is not None and not direct:
                flat[done : done + m] = block  # to native byte order
            done += m
        if fh.read(1):
            raise _changed_while_read(file)
    if out is not None:
        out.flags.writeable = False
    return out


def _read_arrays(
    files: Sequence[_NpyFile], *, keep: bool, counts: Sequence[Callable[[np.ndarray], int]] | None = None
) -> tuple[list[np.ndarray | None], list[int], str]:
    """Read a run's arrays once: ``(arrays (with keep), counts, fingerprint)``.

    The fingerprint is SHA-256 over a version line and, per file in order, its header as
    :attr:`_NpyFile.header` spells it (name, dtype with byte order, array order, shape)
    followed by its data bytes exactly as stored: everything that decides what is read.
    ``counts[i](block)`` is summed over file ``i``'s blocks.
    """
    digest = hashlib.sha256(_FINGERPRINT_PREFIX)
    arrays: list[np.ndarray | None] = []
    totals: list[int] = []
    for i, file in enumerate(files):
        digest.update(file.header)
        count = None if counts is None else counts[i]
        total = 0

        def feed(block: np.ndarray, count: Callable[[np.ndarray], int] | None = count) -> None:
            nonlocal total
            digest.update(block.view(np.uint8).data)
            if count is not None:
                total += count(block)

        arrays.append(_read_array(file, keep=keep, feed=feed))
        totals.append(total)
    return arrays, totals, digest.hexdigest()


def compute_fingerprint(path: str | os.PathLike[str]) -> str:
    """SHA-256 identity of the run directory (or partial one) at ``path``: logits, labels and indices.

    It covers, per array, the dtype with its byte order, the array order (C or Fortran),
    the shape and every data byte as stored, so any change to what :func:`load_run` would
    read changes it. Thresholds, verify results and exported packages record it, so a file
    made from one run is refused by another. It reads the arrays once, in blocks (about a
    second per GB); :func:`load_run` computes the same while it checks the run.

    Example:
        >>> import numpy as np, tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "run"
        >>> run = import_arrays(np.zeros((2, 2, 2), np.float32), [0, 1], out)
        >>> compute_fingerprint(out) == run.fingerprint
        True
    """
    path = Path(path)
    return _read_arrays([_npy_file(path, name) for name, _ in _ARRAY_FILES], keep=False)[2]


def _missing_run_message(path: Path) -> str:
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    if partial.exists():
        return (
            f"no complete run at '{path}': '{partial}' is a collect that was interrupted "
            "or is still running; continue it with the same 'dyncal collect ... --resume'"
        )
    return f"no run directory at '{path}'; create one with 'dyncal collect' or 'dyncal import'"


def load_run(path: str | os.PathLike[str]) -> Run:
    """Open a complete run directory, validating everything in it once.

    ``run.json`` must be a dyncal run document of a known schema version whose every field
    has the right type and value (N >= 1, K >= 1, C >= 2; a cost table of K positive,
    finite, cumulative MACs and well-formed latency entries); the arrays must be regular,
    whole ``.npy`` files of the shapes ``run.json`` gives (logits floating point
    ``(N, K, C)``, labels and indices integral ``(N,)``), every label in ``[0, C)``, every
    dataset index non-negative and named once, every logit finite, and together they must
    have the fingerprint ``run.json`` records (:func:`compute_fingerprint`).

    The arrays are read into memory in one pass that also checks and fingerprints them
    (bounded blocks; nothing is memory-mapped, so a file truncated or rewritten later by
    another process changes nothing in this one). The checks are remembered for the
    process while the files are unchanged (device, inode, size, mtime and ctime), so
    opening the same run again only reads it.

    Args:
        path: The run directory written by ``dyncal collect`` or ``dyncal import``.

    Returns:
        The run, with ``logits`` ``(N, K, C)``, ``labels`` and ``indices`` ``(N,)``, read-only.

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
    if path.name in ("", ".."):  # '.', '..', '/': name the folder, so that RUN.lock beside it has a name too
        path = Path(os.path.abspath(path))
    if path.name.endswith(PARTIAL_SUFFIX):
        raise RunError(
            f"'{path}' is an unfinished run (interrupted or still being written); "
            "re-run 'dyncal collect ... --overwrite'"
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
            "is not a run; re-run 'dyncal collect ... --overwrite'"
        )
    document = RunDocument.load(path)
    n, k, c = document.n, document.k, document.c
    files = [_npy_file(path, name, (n, k, c) if name == LOGITS_FILE else (n,), kind) for name, kind in _ARRAY_FILES]
    logits, labels, indices, checked = _read_checked(path, files, c)
    if checked.bad_labels:
        lo, hi = int(labels.min()), int(labels.max())
        raise RunError(
            f"run '{path}': {LABELS_FILE} has {checked.bad_labels} of {n} labels outside [0, {c}) "
            f"(C={c} classes; labels range from {lo} to {hi}); {_DAMAGED} with the right labels"
        )
    if checked.nonfinite:
        raise RunError(
            f"run '{path}': {LOGITS_FILE} holds {checked.nonfinite} NaN or infinite values of {logits.size}; "
            "fix the model or the export, then re-create the run"
        )
    if checked.negative_indices:
        raise RunError(
            f"run '{path}': {INDICES_FILE} has {checked.negative_indices} of {n} dataset indices below 0 "
            f"(e.g. {int(indices.min())}); dataset indices count from 0: {_DAMAGED}"
        )
    if checked.repeated_index is not None:
        raise RunError(
            f"run '{path}': {INDICES_FILE} names dataset item {checked.repeated_index} for more than one row "
            f"({checked.repeated} rows repeat an item); every row is another item: {_DAMAGED}"
        )
    fingerprint = checked.fingerprint
    if document.fingerprint is not None and document.fingerprint != fingerprint:
        raise RunError(
            f"run '{path}': {LOGITS_FILE}, {LABELS_FILE} or {INDICES_FILE} changed after the run was written "
            f"(fingerprint {fingerprint[:12]}, {RUN_JSON} records {document.fingerprint[:12]}); {_DAMAGED}"
        )
    if document.fingerprint is None:  # a run written before runs were fingerprinted
        document = dataclasses.replace(document, fingerprint=fingerprint)
    return Run(path=path, logits=logits, labels=labels, indices=indices, document=document)


@dataclass(frozen=True)
class _Checked:
    """What checking a run's arrays found (remembered per file state)."""

    nonfinite: int
    bad_labels: int
    negative_indices: int
    repeated: int
    repeated_index: int | None
    fingerprint: str
    at_ns: int


_CHECKED: dict[tuple[Any, ...], _Checked] = {}


def _nonfinite(block: np.ndarray) -> int:
    with np.errstate(invalid="ignore", over="ignore"):
        if np.isfinite(np.add.reduce(block, dtype=block.dtype.type)):  # NaN, inf propagate; any byte order
            return 0
    return int(block.size - np.count_nonzero(np.isfinite(block)))  # or the sum overflowed


def _read_checked(path: Path, files: Sequence[_NpyFile], c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, _Checked]:
    """The run's arrays ``(logits, labels, indices)``, read, with what checking them found.

    The checks and the fingerprint are computed in the pass that reads the arrays and
    remembered for the files' state; a remembered result is used only for files whose
    ctime lies well before it was made (:data:`_RACY_NS`). After reading, every file must
    still be in the state it was read in, so the bytes checked are the bytes returned.
    """
    key = (c, *(part for f in files for part in (os.path.realpath(f.run / f.name), *f.identity)))
    known = _CHECKED.get(key)
    started = time.time_ns()
    if known is not None and all(f.stat.st_ctime_ns + _RACY_NS < known.at_ns for f in files):
        arrays = [_read_array(f, keep=True) for f in files]
        checked = known
    else:
        counts = (
            _nonfinite,
            lambda b: int(np.count_nonzero((b < 0) | (b >= c))),
            lambda b: int(np.count_nonzero(b < 0)),
        )
        arrays, (nonfinite, bad_labels, negative), fingerprint = _read_arrays(files, keep=True, counts=counts)
        ordered = np.sort(arrays[2])  # type: ignore[arg-type]
        same = ordered[1:] == ordered[:-1]
        repeated = int(np.count_nonzero(same))
        checked = _Checked(
            nonfinite=nonfinite,
            bad_labels=bad_labels,
            negative_indices=negative,
            repeated=repeated,
            repeated_index=int(ordered[1:][same][0]) if repeated else None,
            fingerprint=fingerprint,
            at_ns=started,
        )
    for f in files:  # the bytes read are the bytes checked
        try:
            st = os.stat(f.run / f.name)
        except OSError:
            raise _changed_while_read(f) from None
        if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) != f.identity:
            raise _changed_while_read(f)
    if checked is not known:
        if len(_CHECKED) > 256:
            _CHECKED.clear()
        _CHECKED[key] = checked
    logits, labels, indices = arrays
    return logits, labels, indices, checked  # type: ignore[return-value]


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
        dataclasses.replace(run.document, costs=costs).save(path)
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
        self.fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)

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
        self._files: list[_RowFile] = []
        self._finished = False
        self._owner = True
        self.resumed = False
        if self.n <= 0:
            raise RunError(f"a run needs at least one sample, got N={self.n}")
        check_out(self.out, overwrite=overwrite)  # before the lock file is made: never inside a run
        self.partial = self.out.with_name(self.out.name + PARTIAL_SUFFIX)
        self._lock = RunLock(self.out).acquire()
        try:
            check_out(self.out, overwrite=overwrite)  # again, now that no other writer can change it
            if os.path.lexists(self.partial):
                refuse_foreign(self.partial, _partial_entry, action=_PARTIAL_ACTION, error=RunError)
                if keep_partial:
                    self.resumed = True
                    return
                if not overwrite:
                    raise RunError(
                        f"'{self.partial}' exists: an earlier collect was interrupted; pass `resume` to "
                        "continue it (collect only) or `overwrite` to discard it"
                    )
            self.restart()
        except BaseException:
            self._lock.release()
            raise

    def restart(self) -> None:
        """Discard what ``OUT.partial`` holds (checked to be all dyncal's) and start an empty one.

        Raises:
            RunError: ``OUT.partial`` holds something dyncal did not write (nothing is deleted),
                or the folder cannot be created.
        """
        for f in self._files:
            f.close(sync=False)
        self._files = []
        self.resumed = False
        try:
            if os.path.lexists(self.partial):
                remove_owned_folder(self.partial, _partial_entry, action=_PARTIAL_ACTION, error=RunError)
            self.partial.mkdir()
        except OSError as e:
            raise RunError(
                f"cannot create '{self.partial}' ({e.strerror or e}); choose an `out` in a folder you can write"
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
        for extra in self.partial.iterdir():  # collect's progress files; never a file dyncal did not write
            if extra.name not in _RUN_ARRAYS and _partial_entry(extra) is None:
                extra.unlink()
        document = RunDocument(
            n=self.n,
            k=int(k),
            c=int(c),
            provenance=provenance,
            costs=costs,
            fingerprint=compute_fingerprint(self.partial),
        )
        document.save(self.partial)
        publish_dir(self.partial, self.out)
        self._finished = True
        self._lock.release()
        return self.out

    def abort(self, *, keep_partial: bool = False) -> None:
        """Close the files; the owner removes the partial directory (unless ``keep_partial``) and unlocks."""
        for f in self._files:
            f.close(sync=keep_partial)
        if self._owner:
            if not keep_partial and is_folder(self.partial):
                discard_built_folder(self.partial, _partial_entry)
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


_RUN_ARRAYS = frozenset({LOGITS_FILE, LABELS_FILE, INDICES_FILE})
_PROGRESS_FILE = re.compile(r"progress\.\d+\.json")
_PROGRESS_SCHEMA = "dyncal.collect-progress"  # dyncal.collect.PROGRESS_SCHEMA (not imported: it needs torch)
_PARTIAL_ACTION = "remove or resume"


def _run_entry(entry: Path) -> Path | None:
    """None if ``entry`` is one dyncal writes in a run: an array, run.json, or a temporary run.json."""
    name = entry.name
    if name in _RUN_ARRAYS and is_regular_file(entry):
        return None
    if name == RUN_JSON and json_schema(entry) == "dyncal.run":
        return None
    return None if temp_of(entry, [RUN_JSON]) else entry


def _partial_entry(entry: Path) -> Path | None:
    """None if ``entry`` is one dyncal writes in ``RUN.partial``: a run's files, or collect's progress files."""
    if _run_entry(entry) is None:
        return None
    name = entry.name
    if _PROGRESS_FILE.fullmatch(name) and json_schema(entry) == _PROGRESS_SCHEMA:
        return None
    target = temp_target(name)
    if target is not None and _PROGRESS_FILE.fullmatch(target) and is_regular_file(entry):
        return None
    return entry


def foreign_in_run(path: str | os.PathLike[str]) -> Path | None:
    """The first entry of the run directory ``path`` that dyncal did not write there, or None.

    A run holds exactly ``logits.npy``, ``labels.npy``, ``indices.npy`` (regular files) and
    a ``run.json`` whose schema is ``dyncal.run`` (and, after an interrupted profile, the
    temporary file of a ``run.json`` being written). Anything else, links and folders
    included, is somebody else's: ``overwrite`` does not replace the run then.

    Example:
        >>> import numpy as np, tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "run"
        >>> _ = import_arrays(np.zeros((2, 2, 2), np.float32), [0, 1], out)
        >>> foreign_in_run(out) is None
        True
        >>> _ = (out / "NOTES.md").write_text("mine")
        >>> foreign_in_run(out).name
        'NOTES.md'
    """
    return foreign_entry(Path(path), _run_entry)


def foreign_in_partial_run(path: str | os.PathLike[str]) -> Path | None:
    """The first entry of ``RUN.partial`` that dyncal did not write there (see :func:`foreign_in_run`), or None.

    Besides a run's files, a partial run holds collect's progress files
    (``progress.N.json``, schema ``dyncal.collect-progress``) and their temporary files.

    Example:
        >>> import tempfile, pathlib
        >>> partial = pathlib.Path(tempfile.mkdtemp()) / "run.partial"
        >>> partial.mkdir()
        >>> _ = (partial / "progress.0.json").write_text('{"schema": "dyncal.collect-progress"}')
        >>> foreign_in_partial_run(partial) is None
        True
    """
    return foreign_entry(Path(path), _partial_entry)


def check_out(
    out: Path,
    *,
    overwrite: bool,
    what: str = "run",
    is_ours: Callable[[Path], bool] | None = None,
    foreign: Callable[[Path], Path | None] | None = None,
    error: type[DyncalError] = RunError,
) -> None:
    """Refuse an output directory (a run, or another folder dyncal builds) that is unsafe to create or replace.

    ``--overwrite`` never deletes anything dyncal did not write: an existing ``out`` must be
    an empty folder, or one of ours (``is_ours``; default: a dyncal run) in which every
    entry is one dyncal wrote (``foreign`` finds none; default :func:`foreign_in_run`).
    ``out`` may not be a link, name no folder (``''``, ``.``, ``..``) or lie inside a run
    directory, and its parent folder must exist and be writable.

    Args:
        out: The folder to create.
        overwrite: Whether an existing ``out`` may be replaced.
        what: What is built there, for messages (``"run"``, ``"package"``).
        is_ours: Recognises a folder of that kind dyncal wrote (default :func:`is_run_dir`).
        foreign: The first entry of such a folder that dyncal did not write, or None
            (default :func:`foreign_in_run`).
        error: The error class to raise.

    Example:
        >>> import tempfile, pathlib
        >>> check_out(pathlib.Path(tempfile.mkdtemp()) / "run", overwrite=False)
        >>> check_out(pathlib.Path("."), overwrite=True)
        Traceback (most recent call last):
        ...
        dyncal.errors.RunError: `out` '.' names no folder to create; give a new folder's name, such as run
    """
    out = Path(out)
    is_ours = is_ours or is_run_dir
    foreign = foreign or foreign_in_run
    if out.name in ("", ".", ".."):
        raise error(f"`out` '{out}' names no folder to create; give a new folder's name, such as {what}")
    if os.path.lexists(out):
        if not overwrite:
            raise error(f"'{out}' already exists; choose another `out` or pass `overwrite`")
        if os.path.islink(out):
            raise error(f"'{out}' is a symbolic link; dyncal never replaces a link: choose another `out`")
        if not out.is_dir():
            raise error(f"'{out}' exists and is not a folder; choose another `out`")
        if not is_ours(out) and any(out.iterdir()):
            raise error(
                f"'{out}' exists and is not a dyncal {what}; `overwrite` only replaces a dyncal {what}, so "
                "choose another `out` (or remove the folder yourself)"
            )
        bad = foreign(out)
        if bad is not None:
            raise error(not_dyncals_message(bad, out))
    if not out.parent.is_dir():
        raise error(f"the folder '{out.parent}' for `out` does not exist; create it first")
    inside = run_dir_holding(out.parent)
    if inside is not None:
        raise error(f"`out` '{out}' lies inside the run directory '{inside}'; choose a folder outside any run")
    try:
        check_writable(out.parent)
    except DyncalError as e:
        raise error(str(e)) from None


def publish_dir(
    partial: Path,
    out: Path,
    *,
    foreign: Callable[[Path], Path | None] | None = None,
    error: type[DyncalError] = RunError,
) -> None:
    """Rename ``partial`` to ``out``, replacing an old ``out`` only after the new one is whole.

    The old ``out`` is deleted only if everything in it is dyncal's (``foreign`` finds
    nothing; default :func:`foreign_in_run`), checked again as it is moved aside, so a
    file put there while the new one was built is refused, not deleted.

    Raises:
        DyncalError: (as ``error``) the old ``out`` holds something dyncal did not write; it
            is left in place, and ``partial`` with it.
    """
    foreign = foreign or foreign_in_run
    if not os.path.lexists(out):
        os.rename(partial, out)
        return
    bad = foreign(out)
    if bad is not None:
        raise error(not_dyncals_message(bad, out))
    old = out.with_name(f".{out.name}.old-{secrets.token_hex(8)}")
    os.rename(out, old)
    bad = foreign(old)
    if bad is not None:  # it changed between the check and the move: put it back
        os.rename(old, out)
        raise error(not_dyncals_message(out / bad.relative_to(old), out))
    try:
        os.rename(partial, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


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
        hint = " (is the layout (K, N, C)? pass `layout` knc)" if labels.ndim == 1 and labels.shape[0] == k else ""
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
        _check_indices(indices)
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
        raise RunError(f"cannot write the run '{out}': {e.strerror or e}; choose another `out`") from e
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


def _check_indices(indices: np.ndarray) -> None:
    """Refuse dataset indices below 0 or naming one item for several rows (what :func:`load_run` refuses)."""
    negative = indices < 0
    if negative.any():
        raise RunError(
            f"indices must be dataset indices >= 0; {int(negative.sum())} of {indices.size} are not "
            f"(e.g. {indices[negative][:3].tolist()})"
        )
    ordered = np.sort(indices)
    same = ordered[1:] == ordered[:-1]
    if same.any():
        raise RunError(
            f"indices must name each dataset item once; {int(same.sum())} rows repeat one "
            f"(e.g. {int(ordered[1:][same][0])})"
        )


def _check_npz_entry(npz: Any, key: str, path: Path) -> None:
    """Refuse an ``.npz`` entry whose header declares more data than the entry holds, before reading it.

    ``np.load`` allocates the array its header declares before reading it, so a header
    claiming 10^12 rows would exhaust memory rather than fail.
    """
    archive: zipfile.ZipFile = npz.zip
    member = f"{key}.npy" if f"{key}.npy" in archive.namelist() else key
    info = archive.getinfo(member)
    with archive.open(member) as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            return  # np.load reads (or refuses) the rest itself
        if dtype.hasobject:
            return  # np.load refuses it without pickle
        declared = math.prod(shape) * dtype.itemsize
        held = info.file_size - fh.tell()
    if declared > held:
        raise RunError(
            f"'{path}': array {key!r} declares shape {tuple(shape)} ({declared:,} bytes) but holds {max(0, held):,} "
            "bytes; is the file complete?"
        )


def _validate_macs(macs: Sequence[float], k: int) -> tuple[float, ...]:
    try:
        vals = V.number_list(
            [m.item() if isinstance(m, np.generic) else m for m in macs],
            "`macs`",
            length=k,
            positive=True,
            nondecreasing=True,
        )
    except V.FieldError as e:
        raise RunError(f"{e.field} {e.problem}; give one cumulative cost per exit (K={k}), exit 1 first") from None
    if any(b <= a for a, b in zip(vals, vals[1:], strict=False)):
        raise RunError(f"`macs` must be cumulative (strictly increasing, exit 1 first), got {list(vals)}")
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
            names = [key for key in ("logits", "labels", "indices") if key in npz.files]
            for key in names:
                _check_npz_entry(npz, key, path)
            logits, labels, *rest = (npz[key] for key in names)
            indices = rest[0] if rest else None
    except NPZ_READ_ERRORS as e:
        raise RunError(
            f"cannot read '{path}' as .npz ({type(e).__name__}: {first_line(e, 120)}); is the file complete?"
        ) from e
    except MemoryError:
        raise RunError(f"'{path}' holds arrays larger than this machine's memory; import them elsewhere") from None
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
