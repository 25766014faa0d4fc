"""Output files: what a verb may write, and what ``--overwrite`` may replace.

Every verb that writes one file (solve, frontier, report, plot, verify --out) checks its
``--out`` with :func:`check_output_file` before doing any work and writes it with
:func:`write_output` (atomically). The rules, so that nothing the user owns is lost:

- an existing file is refused without ``--overwrite``;
- with ``--overwrite`` it is replaced only if dyncal wrote it, recognised from its contents
  (:func:`written_by_dyncal`): a JSON object whose ``"schema"`` starts with ``dyncal.``, a
  frontier CSV (its header), a PDF whose ``/Creator`` or ``/Producer`` names dyncal, a PNG
  whose ``Software`` text says dyncal, an SVG whose creator is dyncal;
- never a folder, a link, a FIFO or a device; never a path inside a run directory
  (complete, damaged or ``.partial``); never one of the command's own inputs (``protect``);
- from the check to the write the writer holds the output's lock (:func:`claim_output_file`,
  :class:`~dyncal.artifacts.lock.OutputLock`), so two commands writing one ``--out`` cannot
  both succeed: the second fails at once, or finds the first one's file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from dyncal.artifacts.ownership import EntryCheck, not_dyncals_message
from dyncal.artifacts.rundir import foreign_in_run, is_run_dir, run_dir_holding
from dyncal.artifacts.validate import file_kind
from dyncal.errors import DyncalError, RunError

__all__ = [
    "check_output_file",
    "claim_output_file",
    "check_output_folder",
    "check_out",
    "check_writable",
    "written_by_dyncal",
    "write_output",
    "output_errors",
    "dyncal_creator",
]

_EXAMPLES = {
    "thresholds": "thresholds.json",
    "frontier": "frontier.csv",
    "report": "report.pdf",
    "figure": "frontier.png",
    "verify": "verify.json",
}
_MAX_SNIFF_BYTES = 256 << 20  # larger files are not dyncal outputs
_PDF_CREATOR = re.compile(rb"/(?:Creator|Producer)\s*\(dyncal[ )]")
_SVG_CREATOR = re.compile(r"<dc:creator>\s*<cc:Agent>\s*<dc:title>dyncal[ <]")


def dyncal_creator() -> str:
    """``"dyncal <version>"``: the creator stamped into the metadata of every file dyncal writes.

    Example:
        >>> dyncal_creator().startswith("dyncal ")
        True
    """
    from importlib import metadata

    try:
        return f"dyncal {metadata.version('dyncal')}"
    except metadata.PackageNotFoundError:
        return "dyncal (development)"


def written_by_dyncal(path: str | os.PathLike[str]) -> bool:
    """Whether a regular file's contents show that dyncal wrote it.

    Recognised: a JSON object with a ``"schema": "dyncal.*"`` key; a CSV whose header is
    a frontier table's; a PDF with dyncal in its ``/Creator`` or ``/Producer``; a PNG with
    a ``Software`` text chunk starting with ``dyncal``; an SVG whose creator is dyncal.
    Anything else, anything unreadable and anything that is not a regular file is not.

    Example:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (folder / "t.json").write_text('{"schema": "dyncal.thresholds"}')
        >>> _ = (folder / "notes.txt").write_text("my notes")
        >>> written_by_dyncal(folder / "t.json"), written_by_dyncal(folder / "notes.txt")
        (True, False)
    """
    path = Path(path)
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_SNIFF_BYTES:
            return False
        with open(path, "rb") as fh:
            head = fh.read(64)
            if head.startswith(b"\x89PNG\r\n\x1a\n"):
                return _png_says_dyncal(fh)
            data = head + fh.read()
    except OSError:
        return False
    if data.startswith(b"%PDF-"):
        return _PDF_CREATOR.search(data) is not None
    text = data.decode("utf-8", errors="replace")
    stripped = text.lstrip()
    if stripped.startswith("{"):
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError):
            return False
        schema = doc.get("schema") if isinstance(doc, dict) else None
        return isinstance(schema, str) and schema.startswith("dyncal.")
    if stripped.startswith("<"):
        return _SVG_CREATOR.search(text[:65536]) is not None
    return _is_frontier_header(text.split("\n", 1)[0].rstrip("\r"))


def _png_says_dyncal(fh: BinaryIO) -> bool:
    """Walk a PNG's chunks (the signature already read) for a ``Software`` text naming dyncal."""
    fh.seek(8)
    while True:
        header = fh.read(8)
        if len(header) < 8:
            return False
        length = int.from_bytes(header[:4], "big")
        kind = header[4:]
        if kind in (b"IDAT", b"IEND"):
            return False
        if kind == b"tEXt" and length < 1 << 16:
            key, _, value = fh.read(length).partition(b"\0")
            if key == b"Software" and value.startswith(b"dyncal"):
                return True
            fh.seek(4, os.SEEK_CUR)
        else:
            fh.seek(length + 4, os.SEEK_CUR)


def _is_frontier_header(line: str) -> bool:
    """Whether ``line`` is the header :func:`dyncal.artifacts.frontier.write_frontier_csv` writes."""
    cols = line.split(",")
    from dyncal.artifacts.frontier import frontier_columns

    fixed = frontier_columns(0, [])
    if cols[: len(fixed)] != fixed:
        return False
    rest = cols[len(fixed) :]
    ms = [c for c in rest if c.startswith("ms:")]
    shares = rest[len(ms) :]
    return rest[: len(ms)] == ms and shares == [f"share_{j + 1}" for j in range(len(shares))] and len(shares) >= 2


def check_output_file(
    path: str | os.PathLike[str],
    *,
    overwrite: bool,
    kind: str = "output",
    protect: Sequence[str | os.PathLike[str]] = (),
) -> Path:
    """Refuse an output file that would destroy something; call before doing the work.

    Args:
        path: The ``--out`` file.
        overwrite: Whether ``--overwrite`` was given.
        kind: ``thresholds``, ``frontier``, ``report``, ``figure`` or ``verify`` (for the
            example file name in messages).
        protect: The command's inputs (the run directory, a thresholds file, ...): ``path``
            may be none of them nor lie inside one.

    Returns:
        ``path``, as a :class:`~pathlib.Path`.

    Raises:
        DyncalError: ``path`` lies inside a run directory or an input; is a folder, a link or
            not a regular file; exists without ``overwrite``; exists but dyncal did not write
            it; or its folder is missing or not writable.

    Example:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (folder / "notes.txt").write_text("mine")
        >>> check_output_file(folder / "notes.txt", overwrite=True, kind="thresholds")
        Traceback (most recent call last):
        ...
        dyncal.errors.DyncalError: '...notes.txt' exists and dyncal did not write it; `overwrite` only \
replaces dyncal's own outputs: choose another `path`, or move the file away yourself
    """
    path = Path(path)
    example = _EXAMPLES.get(kind, "out.json")
    real = Path(os.path.realpath(path))
    run_dir = run_dir_holding(real)
    if run_dir is not None:
        raise DyncalError(
            f"`path` '{path}' lies inside the run directory '{run_dir}'; dyncal never writes into a run: "
            f"give a path outside it, e.g. {example}"
        )
    for item in protect:
        guarded = Path(os.path.realpath(item))
        if real == guarded or guarded in real.parents:
            raise DyncalError(
                f"`path` '{path}' would overwrite '{item}', an input of this command; choose another `path`"
            )
    if not path.parent.is_dir():
        raise DyncalError(f"the folder '{path.parent}' for `path` does not exist; create it first")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise DyncalError(f"cannot check `path` '{path}': {e.strerror or e}; choose another `path`") from e
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            raise DyncalError(
                f"`path` '{path}' is a symbolic link; dyncal never writes through or over a link: "
                "give the file's own path, or another `path`"
            )
        if stat.S_ISDIR(st.st_mode):
            raise DyncalError(f"`path` '{path}' is a folder; give a file name such as {path / example}")
        if not stat.S_ISREG(st.st_mode):
            raise DyncalError(f"`path` '{path}' is {file_kind(st.st_mode)}, not a file; choose another `path`")
        if not overwrite:
            raise DyncalError(f"'{path}' already exists; choose another `path` or pass `overwrite`")
        if not written_by_dyncal(path):
            raise DyncalError(
                f"'{path}' exists and dyncal did not write it; `overwrite` only replaces dyncal's own outputs: "
                "choose another `path`, or move the file away yourself"
            )
    check_writable(path.parent)
    return path


@contextlib.contextmanager
def claim_output_file(
    path: str | os.PathLike[str],
    *,
    overwrite: bool,
    kind: str = "output",
    protect: Sequence[str | os.PathLike[str]] = (),
) -> Iterator[Path]:
    """:func:`check_output_file`, then hold the output's lock until the block (the work and the write) ends.

    The check runs again once the lock is held, so of two commands writing one ``path``
    without ``overwrite`` only one writes: the other fails at once ("another dyncal process
    ... is writing"), or, started after the first finished, finds its file. The lock is
    ``.dyncal-lock-NAME`` beside ``path`` (:class:`~dyncal.artifacts.lock.OutputLock`).

    Raises:
        DyncalError: See :func:`check_output_file`; or another process writes ``path``.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "t.json"
        >>> with claim_output_file(p, overwrite=False, kind="thresholds") as out:
        ...     write_output(out, '{"schema": "dyncal.thresholds"}')
        >>> sorted(q.name for q in p.parent.iterdir())
        ['t.json']
    """
    from dyncal.artifacts.lock import OutputLock

    path = check_output_file(path, overwrite=overwrite, kind=kind, protect=protect)
    with OutputLock(path, error=DyncalError):
        yield check_output_file(path, overwrite=overwrite, kind=kind, protect=protect)


def check_writable(
    folder: str | os.PathLike[str], *, what: str | None = None, error: type[DyncalError] = DyncalError
) -> None:
    """Refuse a folder no file can be created in, by creating (and removing) an empty hidden one.

    Called before the work, so that a long computation is not lost to an unwritable ``--out``
    or run (``os.access`` alone says yes to root on a read-only file system).

    Args:
        folder: The folder to write in.
        what: What is to be written there (e.g. "the cost table (run.json)"), for the message;
            None: an ``--out`` file.
        error: The error class to raise.

    Example:
        >>> check_writable("/no-such-folder")
        Traceback (most recent call last):
        ...
        dyncal.errors.DyncalError: cannot write in the folder '/no-such-folder' (No such file or directory); ...
    """
    import tempfile

    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".dyncal-probe-"):
            pass
    except OSError as e:
        if what is None:
            raise error(f"cannot write in the folder '{folder}' ({e.strerror or e}); choose another `path`") from e
        raise error(
            f"cannot write {what} in '{folder}' ({e.strerror or e}); make the folder writable "
            "or work on a copy (nothing was computed)"
        ) from e


def check_output_folder(path: str | os.PathLike[str]) -> Path:
    """Refuse an output folder (``demo --out``) that names no folder or lies inside a run directory.

    Example:
        >>> import tempfile, pathlib
        >>> check_output_folder(pathlib.Path(tempfile.mkdtemp()) / "demo").name
        'demo'
    """
    path = Path(path)
    if path.name in ("", ".", ".."):
        raise DyncalError(f"`path` '{path}' names no folder to create; give a new folder's name")
    run_dir = run_dir_holding(Path(os.path.realpath(path)).parent)
    if run_dir is not None:
        raise DyncalError(f"`path` '{path}' lies inside the run directory '{run_dir}'; choose a folder outside any run")
    return path


def check_out(
    out: Path,
    *,
    overwrite: bool,
    what: str = "run",
    is_ours: Callable[[Path], bool] = is_run_dir,
    foreign: EntryCheck = foreign_in_run,
    error: type[DyncalError] = RunError,
) -> None:
    """Refuse an output directory (a run, or another folder dyncal builds) that is unsafe to create or replace.

    ``--overwrite`` never deletes anything dyncal did not write: an existing ``out`` must be
    an empty folder, or one of ours (``is_ours``; default: a dyncal run) in which every
    entry is one dyncal wrote (``foreign`` finds none; default
    :func:`~dyncal.artifacts.rundir.foreign_in_run`).
    ``out`` may not be a link, name no folder (``''``, ``.``, ``..``) or lie inside a run
    directory, and its parent folder must exist and be writable.

    Args:
        out: The folder to create.
        overwrite: Whether an existing ``out`` may be replaced.
        what: What is built there, for messages (``"run"``, ``"package"``).
        is_ours: Recognises a folder of that kind dyncal wrote (default: a dyncal run).
        foreign: The first entry of such a folder that dyncal did not write, or None
            (default: anything but a run's files).
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
    check_writable(out.parent, error=error)


@contextlib.contextmanager
def output_errors(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn an ``OSError`` raised while writing ``path`` into one :class:`DyncalError` line.

    Example:
        >>> with output_errors("/no-such-folder/x.json"):
        ...     open("/no-such-folder/x.json", "w")
        Traceback (most recent call last):
        ...
        dyncal.errors.DyncalError: cannot write '/no-such-folder/x.json': No such file or directory; choose ...
    """
    try:
        yield
    except OSError as e:
        raise DyncalError(f"cannot write '{path}': {e.strerror or e}; choose another `path`") from e


def write_output(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Write an output file atomically (readers see the old file or the new one, never half).

    Raises:
        DyncalError: The file cannot be written (one line with the path and the reason).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "t.json"
        >>> write_output(p, '{"schema": "dyncal.thresholds"}')
        >>> written_by_dyncal(p)
        True
    """
    from dyncal.artifacts.atomic import atomic_write_bytes

    with output_errors(path):
        atomic_write_bytes(path, data.encode("utf-8") if isinstance(data, str) else data)
