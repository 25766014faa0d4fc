"""Runs from arrays a user already has: :func:`import_arrays` and :func:`import_npz` (skipping collect)."""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dyncal.artifacts import validate as V
from dyncal.artifacts.costs import CostTable
from dyncal.artifacts.run import Run, load_run
from dyncal.artifacts.run_arrays import npy_header
from dyncal.artifacts.run_document import Provenance
from dyncal.artifacts.run_writer import RunWriter
from dyncal.errors import RunError, first_line

__all__ = ["NPZ_READ_ERRORS", "import_arrays", "import_npz"]

# What np.load raises for truncated, corrupt or pickled .npz files.
NPZ_READ_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


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
    if k < 1:
        raise RunError(f"a run needs K >= 1 exits (K = 1: a static model), got K={k}")
    if c < 2:
        raise RunError(f"a classifier needs C >= 2 classes, got C={c}")
    labels = _integral_labels(labels, c)
    if indices is not None:
        indices = _checked_indices(np.asarray(indices), n)
    cost_table = None if macs is None else CostTable(macs=_validate_macs(macs, k), source="import")
    try:
        with RunWriter(out, n, overwrite=overwrite) as writer:
            writer.allocate(k, c)
            _write_rows(writer, logits, labels, indices, layout == "knc", chunk_rows)
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


def _write_rows(
    writer: RunWriter, logits: np.ndarray, labels: np.ndarray, indices: np.ndarray | None, knc: bool, chunk_rows: int
) -> None:
    """Copy the rows as float32, ``chunk_rows`` at a time; refuse NaN or infinite logits (all of them counted)."""
    n = writer.n
    nonfinite = 0
    first: tuple[int, int] | None = None
    for start in range(0, n, chunk_rows):
        stop = min(n, start + chunk_rows)
        block = np.swapaxes(logits[:, start:stop], 0, 1) if knc else logits[start:stop]
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


def _checked_indices(indices: np.ndarray, n: int) -> np.ndarray:
    """Refuse dataset indices that are no ``(N,)`` integers, below 0 or naming one item twice (as load_run does)."""
    if indices.shape != (n,):
        raise RunError(f"indices must have shape ({n},), got {indices.shape}")
    if not np.issubdtype(indices.dtype, np.integer):
        raise RunError(f"indices must be integers, got dtype {indices.dtype}")
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
    return indices


def _check_npz_entry(npz: Any, key: str, path: Path) -> None:
    """Refuse an ``.npz`` entry whose header declares more data than the entry holds, before reading it.

    ``np.load`` allocates the array its header declares before reading it, so a header
    claiming 10^12 rows would exhaust memory rather than fail.
    """
    archive: zipfile.ZipFile = npz.zip
    member = f"{key}.npy" if f"{key}.npy" in archive.namelist() else key
    info = archive.getinfo(member)
    with archive.open(member) as fh:
        _, header = npy_header(fh)
        if header is None:
            return  # np.load reads (or refuses) the rest itself
        shape, _, dtype = header
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
    V.regular_file(
        path,
        missing=lambda _: RunError(f"no such file '{path}'"),
        unreadable=lambda _: RunError(f"no such file '{path}'"),
        other=lambda kind: RunError(f"'{path}' is {kind}, not an .npz file"),
    )
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
