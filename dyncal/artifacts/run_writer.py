"""Writing a run: :class:`RunWriter` builds it in ``RUN.partial`` and publishes it whole."""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from dyncal.artifacts.costs import CostTable
from dyncal.artifacts.lock import RunLock
from dyncal.artifacts.outputs import check_out
from dyncal.artifacts.ownership import (
    EntryCheck,
    discard_built_folder,
    is_folder,
    not_dyncals_message,
    refuse_foreign,
    remove_owned_folder,
)
from dyncal.artifacts.run_arrays import compute_fingerprint
from dyncal.artifacts.run_document import Provenance, RunDocument
from dyncal.artifacts.rundir import PARTIAL_SUFFIX, RUN_ARRAYS, foreign_in_run, partial_run_entry
from dyncal.errors import DyncalError, RunError

__all__ = ["RunWriter", "publish_dir"]

_PARTIAL_ACTION = "remove or resume"
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_HEADER_BYTES = 4096
"""Room kept for each array's ``.npy`` header, ``run.json`` and the progress files."""


def _write_failed(path: Path, e: OSError) -> RunError:
    """One line for rows that could not be written: a full disk or quota, or another I/O error."""
    advice = "free some space or choose another `out`" if e.errno in _FULL else "choose another `out`"
    return RunError(f"cannot write '{path}' ({e.strerror or e}); no run was published: {advice}")


def _check_room(folder: Path, need: int, what: str) -> None:
    """Refuse before writing when the disk holding ``folder`` has less free space than ``need`` bytes."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return  # no figure to judge by: a write that fails still gives one line
    free = st.f_bavail * st.f_frsize
    if free < need:
        raise RunError(
            f"{what} needs {need / 1e6:.2f} MB and the disk holding '{folder}' has {free / 1e6:.2f} MB free: "
            "free some space or choose another `out`"
        )


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
            # created: the header and a sparse body; else the arrays another process allocated
            mm = open_memmap(path, mode="w+", dtype=self.dtype, shape=shape) if create else np.load(path, mmap_mode="r")
        except OSError as e:
            raise (_write_failed(path, e) if create else RunError(f"cannot open '{path}': {e}")) from e
        except ValueError as e:
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
        try:
            os.pwrite(self.fd, data.tobytes(), self.offset + start * self.row_bytes)
        except OSError as e:
            raise _write_failed(self.path, e) from e

    def read(self, start: int, stop: int) -> np.ndarray:
        data = os.pread(self.fd, (stop - start) * self.row_bytes, self.offset + start * self.row_bytes)
        return np.frombuffer(data, dtype=self.dtype).reshape((stop - start, *self.shape[1:]))

    def sync(self) -> None:
        if self.fd >= 0:
            try:
                os.fsync(self.fd)
            except OSError as e:
                raise _write_failed(self.path, e) from e

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
    the run's :class:`~dyncal.artifacts.lock.RunLock` from construction until :meth:`finish`
    or :meth:`abort`, so no other writer can touch ``OUT`` or ``OUT.partial`` meanwhile. If
    the writer is closed without :meth:`finish` (an error), the partial directory is
    removed; if the process dies, it stays behind as ``OUT.partial``, which
    :func:`dyncal.artifacts.run.load_run` never mistakes for a run (and ``dyncal collect
    --resume`` continues).

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

    def _setup(self, out: str | os.PathLike[str], n: int, *, owner: bool) -> None:
        self.out = Path(out)
        self.n = int(n)
        self.partial = self.out.with_name(self.out.name + PARTIAL_SUFFIX)
        self._files: list[_RowFile] = []
        self._finished = False
        self._owner = owner
        self.resumed = False
        self._lock = RunLock(self.out)

    def __init__(
        self, out: str | os.PathLike[str], n: int, *, overwrite: bool = False, keep_partial: bool = False
    ) -> None:
        if int(n) <= 0:
            raise RunError(f"a run needs at least one sample, got N={int(n)}")
        check_out(Path(out), overwrite=overwrite)  # before the lock file is made: never inside a run
        self._setup(out, n, owner=True)
        self._lock.acquire()
        try:
            check_out(self.out, overwrite=overwrite)  # again, now that no other writer can change it
            if os.path.lexists(self.partial):
                refuse_foreign(self.partial, partial_run_entry, action=_PARTIAL_ACTION, error=RunError)
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
                remove_owned_folder(self.partial, partial_run_entry, action=_PARTIAL_ACTION, error=RunError)
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
        self._setup(out, n, owner=False)  # the lock is never acquired
        self._open(k, c, create=False)
        return self

    def _open(self, k: int, c: int, *, create: bool) -> None:
        files: list[_RowFile] = []
        try:
            dtypes, shapes = (np.float32, np.int64, np.int64), ((self.n, k, c), (self.n,), (self.n,))
            for name, dtype, shape in zip(RUN_ARRAYS, dtypes, shapes, strict=True):
                files.append(_RowFile(self.partial / name, dtype, shape, create=create))
        except BaseException:
            for f in files:
                f.close(sync=False)
            raise
        self._files = files

    def allocate(self, k: int, c: int) -> None:
        """Create the on-disk arrays once K and C are known (from the first batch).

        Raises:
            RunError: The disk has not the room for every row (the arrays are sparse until
                written, so a full disk would otherwise show only midway).
        """
        need = self.n * (k * c * 4 + 2 * 8) + len(RUN_ARRAYS) * _HEADER_BYTES
        _check_room(self.partial, need, f"a run of {self.n:,} rows x {k} exits x {c} classes")
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
            if extra.name not in RUN_ARRAYS and partial_run_entry(extra) is None:
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
                discard_built_folder(self.partial, partial_run_entry)
            self._lock.release()

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if not self._finished:
            self.abort()


def publish_dir(
    partial: Path,
    out: Path,
    *,
    foreign: EntryCheck = foreign_in_run,
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
