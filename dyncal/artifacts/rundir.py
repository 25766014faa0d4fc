"""The run directory on disk: its file names, and which folders and entries are a run's.

A run is a directory readable with numpy alone (no pickle)::

    RUN/
      logits.npy    float32 (N, K, C)  per-exit logits, exit 1 first
      labels.npy    int64   (N,)       true class of every row
      indices.npy   int64   (N,)       dataset index of every row (each >= 0, each item once)
      run.json      schema version, N/K/C, provenance, fingerprint and (once profiled) the cost table

A run is built in ``RUN.partial`` and renamed to ``RUN`` only after ``run.json`` (with
``"complete": true``) is on disk, so an interrupted collect leaves a ``.partial``
directory that :func:`dyncal.artifacts.run.load_run` refuses, never something that looks
finished. ``overwrite`` replaces a run, and ``resume``/``overwrite`` remove a
``RUN.partial``, only when every entry in it is one dyncal writes there
(:func:`foreign_in_run`, :func:`foreign_in_partial_run`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from dyncal.artifacts.atomic import temp_target
from dyncal.artifacts.ownership import foreign_entry, is_regular_file, json_schema, temp_of
from dyncal.artifacts.validate import read_json_document
from dyncal.errors import DyncalError

__all__ = [
    "RUN_JSON",
    "LOGITS_FILE",
    "LABELS_FILE",
    "INDICES_FILE",
    "RUN_ARRAYS",
    "PARTIAL_SUFFIX",
    "MAX_RUN_JSON_BYTES",
    "DAMAGED",
    "is_run_dir",
    "run_dir_holding",
    "partial_run_entry",
    "foreign_in_run",
    "foreign_in_partial_run",
]

RUN_JSON = "run.json"
LOGITS_FILE = "logits.npy"
LABELS_FILE = "labels.npy"
INDICES_FILE = "indices.npy"
RUN_ARRAYS = (LOGITS_FILE, LABELS_FILE, INDICES_FILE)
"""The array files of a run, in the order they are read and fingerprinted."""
PARTIAL_SUFFIX = ".partial"
MAX_RUN_JSON_BYTES = 64 << 20
"""Largest run.json accepted (raw latency replicates of many devices fit in a few MB)."""
DAMAGED = "the run is damaged: re-create it with dyncal collect or dyncal import"
"""What to do about a run whose files are not what dyncal wrote (ends the message)."""

_PROGRESS_FILE = re.compile(r"progress\.\d+\.json")
_PROGRESS_SCHEMA = "dyncal.collect-progress"  # verbs.collect_resume.PROGRESS_SCHEMA (not imported: it needs torch)


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is a directory dyncal wrote as a run (its run.json says so).

    Only regular files are read, so a FIFO named run.json never blocks.
    """
    try:
        meta = read_json_document(path / RUN_JSON, what="a run document", max_bytes=MAX_RUN_JSON_BYTES)
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
        >>> from dyncal.artifacts.run_import import import_arrays
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


def _run_entry(entry: Path) -> Path | None:
    """None if ``entry`` is one dyncal writes in a run: an array, run.json, or a temporary run.json."""
    array = entry.name in RUN_ARRAYS and is_regular_file(entry)
    document = entry.name == RUN_JSON and json_schema(entry) == "dyncal.run"
    return None if array or document or temp_of(entry, [RUN_JSON]) else entry


def partial_run_entry(entry: Path) -> Path | None:
    """None if ``entry`` is one dyncal writes in ``RUN.partial``: a run's files, or collect's progress files.

    Example:
        >>> import tempfile, pathlib
        >>> notes = pathlib.Path(tempfile.mkdtemp()) / "NOTES.md"
        >>> partial_run_entry(notes) == notes
        True
    """
    progress = _PROGRESS_FILE.fullmatch(entry.name) and json_schema(entry) == _PROGRESS_SCHEMA
    progress_temp = _PROGRESS_FILE.fullmatch(temp_target(entry.name) or "") and is_regular_file(entry)
    return None if _run_entry(entry) is None or progress or progress_temp else entry


def foreign_in_run(path: str | os.PathLike[str]) -> Path | None:
    """The first entry of the run directory ``path`` that dyncal did not write there, or None.

    A run holds exactly ``logits.npy``, ``labels.npy``, ``indices.npy`` (regular files) and
    a ``run.json`` whose schema is ``dyncal.run`` (and, after an interrupted profile, the
    temporary file of a ``run.json`` being written). Anything else, links and folders
    included, is somebody else's: ``overwrite`` does not replace the run then.

    Example:
        >>> import numpy as np, tempfile, pathlib
        >>> from dyncal.artifacts.run_import import import_arrays
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
    return foreign_entry(Path(path), partial_run_entry)
