"""Reading a file that must be a regular file of bounded size, without blocking on a pipe or opening a device."""

from __future__ import annotations

import io
import os
import stat

from dyncal.errors import DyncalError

__all__ = ["read_regular_file"]


def _kind_of(mode: int) -> str:
    """A file type in words (what a non-regular file is)."""
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((word for test, word in kinds if test(mode)), "not a regular file")


def read_regular_file(
    path: str | os.PathLike[str],
    *,
    what: str,
    limit: int,
    error: type[DyncalError] = DyncalError,
    advice: str = "give the path of a regular file",
) -> bytes:
    """Read a regular file of at most ``limit`` bytes; refuse pipes, devices and directories unread.

    The path is checked with ``stat`` before it is opened (opening a device can have effects
    of its own), opened without blocking (a named pipe with no writer would hang), and checked
    again on the open descriptor, so a file swapped in between is caught too. Symbolic links
    are followed: a link to a regular file is read like the file.

    Args:
        path: The file.
        what: How to name it in messages (``"the model archive"``).
        limit: Most bytes read; a larger file (or one that grows past it) is refused.
        error: The :class:`DyncalError` subclass raised.
        advice: What to do, ending every refusal.

    Returns:
        The file's bytes.

    Raises:
        DyncalError: Missing, unreadable, not a regular file, or larger than ``limit``.

    Example:
        >>> read_regular_file("/dev/null", what="the model archive", limit=10)
        Traceback (most recent call last):
        ...
        dyncal.errors.DyncalError: the model archive: '/dev/null' is a character device, not a regular file; give ...
    """
    shown = os.fspath(path)
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{what}: '{shown}' is {_kind_of(st.st_mode)}, not a regular file; {advice}")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise error(f"{what}: no such file '{shown}'; {advice}") from None
    except OSError as e:
        raise error(f"{what}: cannot read '{shown}': {e.strerror or e}; {advice}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{what}: '{shown}' is {_kind_of(st.st_mode)}, not a regular file; {advice}")
        if st.st_size > limit:
            raise error(f"{what}: '{shown}' has {st.st_size} bytes, more than the {limit} dyncal reads; {advice}")
        with io.FileIO(fd, "r", closefd=False) as fh:
            data = fh.readall()  # sized from fstat: one buffer, no copy
        if len(data) > limit:
            raise error(f"{what}: '{shown}' grew past the {limit} bytes dyncal reads while it was read; {advice}")
        return data
    except OSError as e:
        raise error(f"{what}: cannot read '{shown}': {e.strerror or e}; {advice}") from e
    finally:
        os.close(fd)
