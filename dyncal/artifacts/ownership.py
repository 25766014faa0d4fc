"""What dyncal may delete: a folder is replaced or removed only if every entry in it is one dyncal wrote.

``--overwrite`` (collect, import, export, demo) and ``--resume``/``--overwrite`` on an
``OUT.partial`` folder remove a folder only after :func:`foreign_entry` found nothing in
it that dyncal did not write: each entry is checked by name *and* content by the rules of
its kind of folder (a run, a partial run, a package, a demo folder), hidden entries
included. Links are never dyncal's (it writes none), nor are folders it does not build.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from dyncal.artifacts.atomic import is_temp_name
from dyncal.errors import DyncalError

__all__ = [
    "EntryCheck",
    "foreign_entry",
    "refuse_foreign",
    "remove_owned_folder",
    "discard_built_folder",
    "is_regular_file",
    "is_folder",
    "json_schema",
    "json_object",
    "temp_of",
    "not_dyncals_message",
]

EntryCheck = Callable[[Path], Path | None]
"""Given an entry of a folder, the path that is not dyncal's (the entry, or something inside it), or None."""

_MAX_JSON_BYTES = 64 << 20

log = logging.getLogger(__name__)


def is_regular_file(path: Path) -> bool:
    """Whether ``path`` is a regular file (a link to one is not).

    Example:
        >>> import tempfile, pathlib
        >>> is_regular_file(pathlib.Path(tempfile.mkdtemp()))
        False
    """
    return _lstat_is(path, stat.S_ISREG)


def is_folder(path: Path) -> bool:
    """Whether ``path`` is a folder (a link to one is not).

    Example:
        >>> import tempfile, pathlib
        >>> is_folder(pathlib.Path(tempfile.mkdtemp()))
        True
    """
    return _lstat_is(path, stat.S_ISDIR)


def _lstat_is(path: Path, test: Callable[[int], bool]) -> bool:
    """``test`` of ``path``'s own mode (a link is not followed); False when it cannot be read."""
    try:
        return test(os.lstat(path).st_mode)
    except OSError:
        return False


def json_schema(path: Path) -> str | None:
    """The ``"schema"`` of the JSON object in the regular file ``path``, or None (not one, unreadable).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "m.json"
        >>> _ = p.write_text('{"schema": "dyncal.package"}')
        >>> json_schema(p), json_schema(p.parent)
        ('dyncal.package', None)
    """
    schema = (json_object(path) or {}).get("schema")
    return schema if isinstance(schema, str) else None


def json_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in the regular file ``path`` (not followed if a link), or None (not one, unreadable)."""
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_JSON_BYTES:
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as fh:
            doc = json.loads(fh.read(_MAX_JSON_BYTES + 1))
    except (OSError, ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


def temp_of(path: Path, names: Iterable[str]) -> bool:
    """Whether ``path`` is a regular file left by an interrupted atomic write of one of ``names``.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / ".run.json.0123456789abcdef.tmp"
        >>> _ = p.write_text("{")
        >>> temp_of(p, ["run.json"]), temp_of(p, ["thresholds.json"])
        (True, False)
    """
    return any(is_temp_name(path.name, name) for name in names) and is_regular_file(path)


def foreign_entry(folder: Path, check: EntryCheck) -> Path | None:
    """The first entry of ``folder`` (by name, hidden ones included) that ``check`` finds is not dyncal's.

    Args:
        folder: The folder to inspect.
        check: The rule of its kind (returns the offending path, or None for an entry of dyncal's).

    Returns:
        That path, ``folder`` itself when it is a link or cannot be read, or None when
        everything in it is dyncal's.

    Example:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (folder / "NOTES.md").write_text("mine")
        >>> foreign_entry(folder, lambda p: None if p.name == "run.json" else p).name
        'NOTES.md'
    """
    if not is_folder(folder):
        return folder
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return folder
    for name in names:
        bad = check(folder / name)
        if bad is not None:
            return bad
    return None


def not_dyncals_message(entry: Path, folder: Path, action: str = "replace") -> str:
    """The one line refusing to ``action`` ``folder`` because ``entry`` is not dyncal's.

    Example:
        >>> print(not_dyncals_message(Path("pkg/NOTES.md"), Path("pkg")))
        'pkg/NOTES.md' is not a file dyncal wrote, so dyncal will not replace 'pkg': move it out or choose \
another `out`
    """
    if entry == folder:
        what = f"'{folder}' is not a folder dyncal wrote"
        return f"{what}, so dyncal will not {action} it: move it away or choose another `out`"
    return (
        f"'{entry}' is not a file dyncal wrote, so dyncal will not {action} '{folder}': move it out or "
        "choose another `out`"
    )


def refuse_foreign(
    folder: Path, check: EntryCheck, *, action: str = "replace", error: type[DyncalError] = DyncalError
) -> None:
    """Raise ``error`` naming the first entry of ``folder`` that is not dyncal's (:func:`foreign_entry`), if any.

    Example:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> refuse_foreign(folder, lambda p: p)  # empty: nothing to refuse
    """
    bad = foreign_entry(folder, check)
    if bad is not None:
        raise error(not_dyncals_message(bad, folder, action))


def remove_owned_folder(
    folder: Path, check: EntryCheck, *, action: str = "remove", error: type[DyncalError] = DyncalError
) -> None:
    """Delete ``folder`` after checking, once more, that everything in it is dyncal's.

    Callers hold the output's lock; the check runs right before the deletion so that a
    file put there since the command started is refused, not deleted.

    Raises:
        DyncalError: (as ``error``) an entry is not dyncal's; nothing was deleted.

    Example:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp()) / "run.partial"
        >>> folder.mkdir()
        >>> remove_owned_folder(folder, lambda p: p)
        >>> folder.exists()
        False
    """
    refuse_foreign(folder, check, action=action, error=error)
    shutil.rmtree(folder)


def discard_built_folder(folder: Path, check: EntryCheck) -> bool:
    """Remove a folder this command built (a ``.partial`` being abandoned), unless something else was put in it.

    Returns:
        Whether it was removed (else it is kept, and a warning names the entry).

    Example:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp()) / "pkg.partial"
        >>> folder.mkdir()
        >>> _ = (folder / "mine.txt").write_text("mine")
        >>> discard_built_folder(folder, lambda p: p), folder.exists()
        (False, True)
    """
    bad = foreign_entry(folder, check)
    if bad is not None:
        log.warning("kept '%s': '%s' is not a file dyncal wrote", folder, bad)
        return False
    shutil.rmtree(folder, ignore_errors=True)
    return True
