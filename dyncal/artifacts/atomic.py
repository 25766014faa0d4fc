"""Atomic file writes: a reader sees the old file or the new one, never half of either.

The new contents go to a temporary file in the destination's folder, created with
``O_CREAT | O_EXCL | O_NOFOLLOW`` under a random name (``.NAME.<16 hex digits>.tmp``), so
nothing planted at a predictable name is ever opened or followed; it is written, flushed
to disk and renamed over the destination. The rename replaces a link at the destination
(never the file it points to); callers that write a user's ``--out`` refuse a link there
first (:func:`dyncal.artifacts.outputs.check_output_file`). The file is created with mode
``0o666`` less the umask, as ``open(path, "w")`` would.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_text", "is_temp_name", "temp_target"]

_TEMP = re.compile(r"\.(?P<name>.+)\.(?:[0-9a-f]{16}\.tmp|tmp-\d+)")  # this dyncal's names; older ones' too
_MAX_NAME = 200  # leaves room for the temporary file's prefix and suffix within 255 bytes


def temp_target(name: str) -> str | None:
    """The file a temporary file of :func:`atomic_write_bytes` named ``name`` was to become, or None.

    Example:
        >>> temp_target(".stage_1.pt2.0123456789abcdef.tmp"), temp_target("stage_1.pt2")
        ('stage_1.pt2', None)
    """
    match = _TEMP.fullmatch(name)
    return None if match is None else match.group("name")


def is_temp_name(name: str, of: str | None = None) -> bool:
    """Whether ``name`` is a temporary file :func:`atomic_write_bytes` makes (for the file ``of``, if given).

    An interrupted write can leave one behind; dyncal recognises it as its own.

    Example:
        >>> is_temp_name(".run.json.0123456789abcdef.tmp", "run.json"), is_temp_name("notes.tmp")
        (True, False)
    """
    target = temp_target(name)
    return target is not None and (of is None or target == of[:_MAX_NAME])


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half.

    Args:
        path: Destination file (a link there is replaced by the file, its target untouched).
        data: Bytes to write.

    Raises:
        OSError: The file cannot be written (no space, no permission, ...); the temporary
            file is removed and ``path`` is left as it was.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.txt"
        >>> atomic_write_bytes(p, b"hello")
        >>> p.read_bytes(), sorted(q.name for q in p.parent.iterdir())
        (b'hello', ['x.txt'])
    """
    path = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(100):
        tmp = path.with_name(f".{path.name[:_MAX_NAME]}.{secrets.token_hex(8)}.tmp")
        try:
            fd = os.open(tmp, flags, 0o666)
            break
        except FileExistsError:  # pragma: no cover - 64 random bits taken
            continue
    else:  # pragma: no cover
        raise FileExistsError(f"no free temporary name beside '{path}'")
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    """Flush a folder's entries (the rename) to disk, where the system allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


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
