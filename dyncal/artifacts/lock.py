"""The writers' lock of a run directory: ``RUN.lock``, an exclusive ``flock`` beside the run.

Whoever writes a run (collect, import, profile) holds it from its start to its last write;
a second writer fails at once with one line naming the holder instead of interleaving.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from dyncal.errors import RunError

__all__ = ["RunLock", "lock_path", "LOCK_SUFFIX"]

LOCK_SUFFIX = ".lock"


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
