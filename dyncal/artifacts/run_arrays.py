"""A run's arrays: read once, in bounded blocks, checked, and fingerprinted in the same pass.

The fingerprint is the one identity of a run's data (:func:`compute_fingerprint`): the writer
stores it in ``run.json``, and :func:`read_arrays` computes it again from the bytes it
returns, so that a run whose arrays changed after it was written is refused.
"""

from __future__ import annotations

import hashlib
import math
import os
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from dyncal.artifacts import validate as V
from dyncal.artifacts.rundir import DAMAGED, INDICES_FILE, LABELS_FILE, LOGITS_FILE, RUN_ARRAYS, RUN_JSON
from dyncal.errors import RunError, first_line

__all__ = ["compute_fingerprint", "read_arrays", "npy_header"]

_FINGERPRINT_PREFIX = b"dyncal.run.fingerprint/2\n"
_KINDS = ("floating", "integer", "integer")  # of RUN_ARRAYS' values
_READ_BYTES = 16 << 20
_RACY_NS = 2_000_000_000
"""A remembered check is trusted only for files last changed (ctime) this long before it was made.

File times tick coarsely (a few ms, a second on some file systems): a file changed in the same
tick as an earlier change keeps its ctime, so a check made within that tick proves nothing.
"""


def _identity(st: os.stat_result) -> tuple[int, ...]:
    """What changes whenever a file's bytes change (ctime: even when mtime is set back)."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


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
        """What changes whenever the file's bytes change (:func:`_identity` of its ``stat``)."""
        return _identity(self.stat)

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

    def not_npy(kind: str) -> RunError:
        return RunError(f"run '{run}': {name} is {kind}, not a .npy file; {DAMAGED}")

    st = V.regular_file(
        file,
        missing=lambda _: RunError(f"run '{run}': {name} is missing; {DAMAGED}"),
        unreadable=lambda why: RunError(f"run '{run}': cannot read {name} ({why}); {DAMAGED}"),
        other=not_npy,
    )
    if st.st_size == 0:
        raise RunError(f"run '{run}': {name} is empty (0 bytes); {DAMAGED}")
    not_whole = f"run '{run}': {name} is not a whole .npy array"
    try:
        with _open_nonblocking(file) as fh:
            st = os.fstat(fh.fileno())  # the file opened (a FIFO swapped in after stat shows here, never blocks)
            if not stat.S_ISREG(st.st_mode):
                raise not_npy(V.file_kind(st.st_mode))
            if fh.read(4) == b"PK\x03\x04":
                raise RunError(f"run '{run}': {name} is an .npz archive, not a .npy array; {DAMAGED}")
            fh.seek(0)
            version, header = npy_header(fh)
            if header is None:
                raise ValueError(f"format version {version[0]}.{version[1]}, which dyncal does not write")
            dims, fortran, dtype = header
            offset = fh.tell()
    except (OSError, ValueError, EOFError, SyntaxError) as e:
        raise RunError(f"{not_whole} ({first_line(e, 120)}); {DAMAGED}") from None
    if dtype.hasobject:
        raise RunError(f"{not_whole} (it holds Python objects, which need pickle); {DAMAGED}")
    if kind is not None:
        wanted = np.floating if kind == "floating" else np.integer
        if dtype.names is not None or dtype.subdtype is not None or not np.issubdtype(dtype, wanted):
            what = "floating-point logits" if kind == "floating" else "integers"
            raise RunError(f"run '{run}': {name} holds {dtype} values, not {what}; {DAMAGED}")
    if shape is not None and tuple(dims) != shape:
        axes = "(N, K, C)" if len(shape) == 3 else "(N,)"
        raise RunError(f"run '{run}': {name} has shape {tuple(dims)} but {RUN_JSON} says {axes} = {shape}; {DAMAGED}")
    declared = offset + math.prod(dims) * dtype.itemsize
    if st.st_size != declared:
        how = "holds only" if st.st_size < declared else "has trailing bytes:"
        raise RunError(f"{not_whole} ({how} {st.st_size:,} bytes, its header declares {declared:,}); {DAMAGED}")
    return _NpyFile(run, name, dtype, tuple(dims), bool(fortran), offset, st)


def npy_header(fh: Any) -> tuple[tuple[int, int], tuple[tuple[int, ...], bool, np.dtype[Any]] | None]:
    """The format version of the ``.npy`` data at ``fh`` and, for versions 1.0 and 2.0, ``(shape, fortran, dtype)``.

    Example:
        >>> import io, numpy as np
        >>> buf = io.BytesIO()
        >>> np.save(buf, np.zeros((2, 3), np.float32))
        >>> _ = buf.seek(0)
        >>> npy_header(buf)
        ((1, 0), ((2, 3), False, dtype('float32')))
    """
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        return version, np.lib.format.read_array_header_1_0(fh)
    if version == (2, 0):
        return version, np.lib.format.read_array_header_2_0(fh)
    return version, None


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
    the shape and every data byte as stored, so any change to what :func:`read_arrays` would
    read changes it. Thresholds, verify results and exported packages record it, so a file
    made from one run is refused by another. It reads the arrays once, in blocks (about a
    second per GB); :func:`read_arrays` computes the same while it checks the run.

    Example:
        >>> import numpy as np, tempfile, pathlib
        >>> from dyncal.artifacts.run_import import import_arrays
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "run"
        >>> run = import_arrays(np.zeros((2, 2, 2), np.float32), [0, 1], out)
        >>> compute_fingerprint(out) == run.fingerprint
        True
    """
    path = Path(path)
    return _read_arrays([_npy_file(path, name) for name in RUN_ARRAYS], keep=False)[2]


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


def _read_checked(files: Sequence[_NpyFile], c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, _Checked]:
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
        if _identity(st) != f.identity:
            raise _changed_while_read(f)
    if checked is not known:
        if len(_CHECKED) > 256:
            _CHECKED.clear()
        _CHECKED[key] = checked
    logits, labels, indices = arrays
    return logits, labels, indices, checked  # type: ignore[return-value]


def read_arrays(path: Path, n: int, k: int, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """The run's ``(logits, labels, indices, fingerprint)``, read once and checked in the same pass.

    The arrays must be regular, whole ``.npy`` files of the shapes ``run.json`` gives (logits
    floating point ``(N, K, C)``, labels and indices integral ``(N,)``), every label in
    ``[0, C)``, every dataset index non-negative and named once, every logit finite. They
    are read in bounded blocks into memory, read-only (nothing is memory-mapped, so a file
    truncated or rewritten later by another process changes nothing here). The checks are
    remembered for the process while the files are unchanged (device, inode, size, mtime
    and ctime), so reading the same run again only reads it.

    Raises:
        RunError: One line naming the file and what is wrong with it.
    """
    shapes = ((n, k, c), (n,), (n,))
    files = [_npy_file(path, *spec) for spec in zip(RUN_ARRAYS, shapes, _KINDS, strict=True)]
    logits, labels, indices, checked = _read_checked(files, c)
    if checked.bad_labels:
        lo, hi = int(labels.min()), int(labels.max())
        raise RunError(
            f"run '{path}': {LABELS_FILE} has {checked.bad_labels} of {n} labels outside [0, {c}) "
            f"(C={c} classes; labels range from {lo} to {hi}); {DAMAGED} with the right labels"
        )
    if checked.nonfinite:
        raise RunError(
            f"run '{path}': {LOGITS_FILE} holds {checked.nonfinite} NaN or infinite values of {logits.size}; "
            "fix the model or the export, then re-create the run"
        )
    if checked.negative_indices:
        raise RunError(
            f"run '{path}': {INDICES_FILE} has {checked.negative_indices} of {n} dataset indices below 0 "
            f"(e.g. {int(indices.min())}); dataset indices count from 0: {DAMAGED}"
        )
    if checked.repeated_index is not None:
        raise RunError(
            f"run '{path}': {INDICES_FILE} names dataset item {checked.repeated_index} for more than one row "
            f"({checked.repeated} rows repeat an item); every row is another item: {DAMAGED}"
        )
    return logits, labels, indices, checked.fingerprint
