"""Resuming an interrupted collect: the progress each process saves, and the checks before continuing.

Every process saves ``OUT.partial/progress.<rank>.json`` after the rows it names are on
disk: what the collect was (model, weights, data, options: the *spec*), K and C, its block
of rows and how far it got. ``resume`` continues only when the spec is unchanged, and the
last saved batch is re-run and compared (:func:`compare_saved`) before anything new is written.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dyncal.artifacts.atomic import atomic_write_text
from dyncal.artifacts.run_writer import RunWriter
from dyncal.errors import RunError, param
from dyncal.run_model import logits_difference

__all__ = ["PROGRESS_SCHEMA", "PROGRESS_VERSION", "write_progress", "read_progress", "resume_point", "compare_saved"]

PROGRESS_SCHEMA = "dyncal.collect-progress"
PROGRESS_VERSION = 1

# What a partial run must agree on to be continued, with how to name each in a message.
_SPEC_NAMES = {
    "model": "the model",
    "weights_sha256": "the weights' SHA-256",
    "data": param("data_spec"),
    "dataset_len": "the data set's length",
    "limit": param("limit"),
    "n": "N",
    "batch_size": param("batch_size"),
    "device": param("device"),
    "world_size": "the number of processes",
    "input_shape": "the input shape",
    "input_dtype": "the input dtype",
    "image_transform": "the image transform",
    "collate": param("collate"),
}


def _progress_path(partial: Path, rank: int) -> Path:
    return partial / f"progress.{rank}.json"


def write_progress(
    partial: Path, rank: int, spec: Mapping[str, Any], k: int, c: int, block: tuple[int, int], done: int
) -> None:
    """Save process ``rank``'s progress: rows ``block[0]..done - 1`` are on disk."""
    doc = {
        "schema": PROGRESS_SCHEMA,
        "schema_version": PROGRESS_VERSION,
        "spec": dict(spec),
        "k": k,
        "c": c,
        "rank": rank,
        "block": list(block),
        "done": done,
    }
    atomic_write_text(_progress_path(partial, rank), json.dumps(doc, indent=1))


def read_progress(partial: Path, rank: int) -> dict[str, Any] | None:
    """Process ``rank``'s saved progress, or None when there is none (or it is unreadable)."""
    try:
        doc = json.loads(_progress_path(partial, rank).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = (
        isinstance(doc, dict)
        and doc.get("schema") == PROGRESS_SCHEMA
        and doc.get("schema_version") == PROGRESS_VERSION
        and isinstance(doc.get("spec"), dict)
        and all(isinstance(doc.get(key), int) for key in ("k", "c", "done"))
        and isinstance(doc.get("block"), list)
    )
    return doc if ok else None


def _spec_difference(partial: Path, saved: Mapping[str, Any], now: Mapping[str, Any]) -> str | None:
    """One line saying how this collect differs from the interrupted one, or None."""
    diffs = [
        f"{name} is {now.get(key)!r} now but was {saved.get(key)!r}"
        for key, name in _SPEC_NAMES.items()
        if saved.get(key) != now.get(key)
    ]
    if not diffs:
        return None
    more = f" (and {len(diffs) - 1} more difference{'s' if len(diffs) > 2 else ''})" if len(diffs) > 1 else ""
    return (
        f"cannot resume '{partial}': {diffs[0]}{more}; repeat the interrupted collect's options, "
        "or pass `overwrite` instead of `resume` to start again"
    )


def resume_point(
    partial: Path, rank: int, spec: Mapping[str, Any], block: tuple[int, int]
) -> tuple[int, tuple[int, int], str | None]:
    """Where process ``rank`` continues a resumed collect: ``(first row to write, saved (K, C), error)``.

    The error (one line, or None) says why this process cannot continue: another spec than
    the interrupted collect's, or another block of rows.
    """
    start, stop = block
    first_doc = read_progress(partial, 0)
    assert first_doc is not None  # process 0 checked it under the lock
    saved_kc = (int(first_doc["k"]), int(first_doc["c"]))
    mine = read_progress(partial, rank)  # None: this process died before saving any
    error = _spec_difference(partial, (mine or first_doc)["spec"], spec)
    done = start if mine is None else int(mine["done"])
    if mine is not None and error is None and (list(mine["block"]) != list(block) or not start <= done <= stop):
        error = (
            f"cannot resume '{partial}': this process's rows are {list(block)} now but were "
            f"{mine['block']} (saved up to {done}); pass `overwrite` instead of `resume` to start again"
        )
    return done, saved_kc, error


def compare_saved(writer: RunWriter, row: int, logits: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> None:
    """Refuse to resume when rows the interrupted collect saved come out differently now.

    Raises:
        RunError: The rows' logits (beyond :data:`~dyncal.run_model.ROWS_RTOL`), labels or indices differ.
    """
    old_logits, old_labels, old_indices = writer.read(row, row + logits.shape[0])
    diff, ok = logits_difference(logits, old_logits)
    if ok and np.array_equal(labels, old_labels) and np.array_equal(indices, old_indices):
        return
    what = f"logits up to {diff:.3g} away" if not ok else "other labels"
    raise RunError(
        f"cannot resume '{writer.partial}': rows {row}..{row + logits.shape[0] - 1} come out with {what} than "
        "the interrupted collect saved, so the model or the data changed; pass `overwrite` instead of `resume` "
        "to start again"
    )
