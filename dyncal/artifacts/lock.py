"""The writers' lock of an output: ``.dyncal-lock-NAME``, an exclusive ``flock`` beside it.

Whoever writes a run (collect, import, profile), a package (export), a demo folder or an
output file (solve, frontier, report, plot, verify) holds it from the check that the
output may be written to its last write; a second writer fails at once with one line
naming the holder instead of interleaving.

The lock file is dyncal's own: created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` under a name
no other tool uses, and recognised by its contents (``dyncal lock: pid N``) before it is
reused or removed. A file of that name that is not a dyncal lock, a link or a folder there
is refused, never followed, truncated or removed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import threading
import time
from pathlib import Path

from dyncal.errors import DyncalError, RunError

__all__ = ["OutputLock", "RunLock", "lock_path", "is_dyncal_lock", "LOCK_PREFIX"]

LOCK_PREFIX = ".dyncal-lock-"
_MAGIC = b"dyncal lock: pid "
_HOLDER = re.compile(rb"dyncal lock: pid (\d+)\n?\Z")
_MAX_LOCK_BYTES = 64
_EMPTY_WAIT_S = 2.0  # how long a lock file may stay empty while its creator writes its pid


def lock_path(target: str | os.PathLike[str]) -> Path:
    """The lock file of the output ``target`` (a run, a package, a file): ``.dyncal-lock-NAME`` beside it.

    Beside, never inside, so it survives the output being replaced and no reader mistakes
    it for part of the output.

    Example:
        >>> lock_path("/data/runs/r50")
        PosixPath('/data/runs/.dyncal-lock-r50')
    """
    target = Path(target)
    if target.name in ("", ".", ".."):  # `dyncal profile .`: the folder by its own name
        target = Path(os.path.abspath(target))
    return target.with_name(LOCK_PREFIX + target.name)


def is_dyncal_lock(path: str | os.PathLike[str]) -> bool:
    r"""Whether ``path`` is a regular file whose contents are a dyncal lock's (``dyncal lock: pid N``).

    Example:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (folder / ".dyncal-lock-run").write_text("dyncal lock: pid 12\n")
        >>> _ = (folder / "poetry.lock").write_text("# poetry")
        >>> is_dyncal_lock(folder / ".dyncal-lock-run"), is_dyncal_lock(folder / "poetry.lock")
        (True, False)
    """
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return _holder(fd) is not None
    finally:
        os.close(fd)


# Locks this process holds: lock path -> (descriptor, depth). flock conflicts between two
# descriptors of one process too, so a nested writer (profile, then store_costs) reuses it.
_HELD: dict[str, tuple[int, int]] = {}
_HELD_GUARD = threading.Lock()


class OutputLock:
    """Exclusive right to write one output (run, package, demo folder or file), held by one process at a time.

    An advisory ``fcntl.flock`` on :func:`lock_path` ``(target)``, a file dyncal creates with
    ``O_CREAT | O_EXCL | O_NOFOLLOW`` and fills with the owner's pid (for the message a
    second writer sees). The kernel drops the lock when the owner dies, so a lock file left
    by ``kill -9`` is harmless: the next writer recognises it by its contents and takes it
    over. A clean release removes it. A file at that name that is not a dyncal lock (or a
    link, a folder, a FIFO) is refused, never opened through, overwritten or removed.
    Re-entrant within a process.

    Args:
        target: The output (it need not exist yet).
        error: The error class raised (:class:`RunError` for runs).

    Raises:
        DyncalError: (on :meth:`acquire`, as ``error``) another process holds the lock, the
            lock file cannot be created, or something else is at its name.

    Example:
        >>> import tempfile, pathlib
        >>> run = pathlib.Path(tempfile.mkdtemp()) / "run"
        >>> with OutputLock(run):
        ...     lock_path(run).read_text().startswith("dyncal lock: pid ")
        True
        >>> lock_path(run).exists()
        False
    """

    def __init__(self, target: str | os.PathLike[str], *, error: type[DyncalError] = RunError) -> None:
        self.target = Path(target)
        self.path = lock_path(self.target)
        self.error = error
        self._key: str | None = None

    def acquire(self) -> OutputLock:
        """Take the lock now or raise naming the process that holds it (or what blocks its file)."""
        folder = self.path.parent
        if not folder.is_dir():
            raise self.error(f"the folder '{folder}' for '{self.target}' does not exist; create it first")
        key = str(folder.resolve() / self.path.name)
        with _HELD_GUARD:
            fd, depth = _HELD[key] if key in _HELD else (self._take(), 0)  # held here already: one level deeper
            _HELD[key] = (fd, depth + 1)
            self._key = key
        return self

    def _take(self) -> int:
        """Create the lock file, or take over a stale dyncal lock; return its locked descriptor."""
        import fcntl

        deadline = time.monotonic() + _EMPTY_WAIT_S
        for _ in range(10_000):
            fd, created = self._open()
            if fd < 0:  # released meanwhile: create it again
                continue
            try:
                if created:
                    # nobody but a transient inspector (below) can hold a file this new
                    fcntl.flock(fd, fcntl.LOCK_EX)
                else:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except OSError:
                        raise self._busy(fd) from None
                if not _same_file(self.path, fd):  # its owner removed it while we waited
                    os.close(fd)
                    continue
                content = os.pread(fd, _MAX_LOCK_BYTES + 1, 0)
                if not created and _HOLDER.fullmatch(content) is None:
                    if content == b"" and time.monotonic() < deadline:
                        os.close(fd)  # its creator has not written its pid yet
                        time.sleep(0.005)
                        continue
                    raise self._not_a_lock("is not a dyncal lock" if content else "is an empty file, not a dyncal lock")
                # ours: created just now, or a dyncal lock its dead owner left behind
                mine = _MAGIC + f"{os.getpid()}\n".encode()
                os.pwrite(fd, mine, 0)
                os.ftruncate(fd, len(mine))
                return fd
            except BaseException:
                os.close(fd)
                raise
        raise self.error(f"could not take the lock '{self.path}'; try again")  # pragma: no cover

    def _open(self) -> tuple[int, bool]:
        """``(fd, created)`` of the lock file, made new if absent; ``(-1, False)`` if it vanished."""
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            return os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o644), True
        except FileExistsError:
            pass
        except OSError as e:
            raise self.error(
                f"cannot create the lock file '{self.path}' beside '{self.target.name}' ({e.strerror or e}); "
                "dyncal needs to write in that folder: choose one you can write to"
            ) from e
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return -1, False
        if stat.S_ISLNK(st.st_mode):
            raise self._not_a_lock("is a symbolic link, not a dyncal lock")
        if not stat.S_ISREG(st.st_mode):
            raise self._not_a_lock("is not a regular file, not a dyncal lock")
        try:
            fd = os.open(self.path, flags)
        except FileNotFoundError:
            return -1, False
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise self._not_a_lock("is a symbolic link, not a dyncal lock") from None
            raise self.error(
                f"cannot open the lock file '{self.path}' ({e.strerror or e}); check its permissions"
            ) from e
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise self._not_a_lock("is not a regular file, not a dyncal lock")
        return fd, False

    def _busy(self, fd: int) -> DyncalError:
        """The error for a lock another process holds (``fd`` is its lock file, open)."""
        holder = _holder(fd)
        if holder is not None and not _alive(holder):
            return self.error(
                f"the dyncal process that was writing '{self.target}' (pid {holder}) has exited, but its "
                "data-loader workers still hold the lock; wait a few seconds, then try again"
            )
        return self.error(
            f"another dyncal process (pid {'?' if holder is None else holder}) is writing '{self.target}'; "
            "wait for it to finish (or stop it), then try again"
        )

    def _not_a_lock(self, what: str) -> DyncalError:
        return self.error(
            f"'{self.path}' {what}; dyncal locks '{self.target}' with a file of that name "
            "and never touches one it did not create: move it away, or choose another output name"
        )

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
            with contextlib.suppress(OSError):
                if _same_file(key, fd):  # removed while still held: see _take
                    os.unlink(key)
            os.close(fd)

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.release()


RunLock = OutputLock
"""The lock of a run directory (the same lock; raises :class:`RunError`)."""


def _same_file(path: str | os.PathLike[str], fd: int) -> bool:
    """Whether ``path`` (not followed) is the file open as ``fd``."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _holder(fd: int) -> int | None:
    """The pid written in a lock file, or None while its owner has not written it yet."""
    try:
        match = _HOLDER.fullmatch(os.pread(fd, _MAX_LOCK_BYTES + 1, 0))
    except OSError:
        return None
    return None if match is None else int(match.group(1))


def _alive(pid: int) -> bool:
    """Whether a process with this pid exists (one we may not signal counts as existing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
