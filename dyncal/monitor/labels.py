"""Labels that arrive after the requests: ``dyncal monitor --labels FILE``, joined on request ids.

A CSV file with a header naming ``request_id`` and ``label`` columns (others are ignored), or a
JSON object ``{"<request id>": <class>, ...}``. Labels are integer classes in ``[0, C)``.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from dyncal.errors import DyncalError

__all__ = ["read_labels", "MAX_LABEL_BYTES"]

MAX_LABEL_BYTES = 1 << 30
"""Largest labels file read (1 GiB)."""


def _label(value: object, where: str, n_classes: int | None) -> int:
    try:
        label = int(str(value).strip())
    except ValueError:
        raise DyncalError(f"{where}: label {str(value)[:40]!r} is not an integer class") from None
    if label < 0 or (n_classes is not None and label >= n_classes):
        span = f"[0, {n_classes})" if n_classes is not None else "0 or more"
        raise DyncalError(f"{where}: label {label} is not a class in {span}")
    return label


def read_labels(path: str | os.PathLike[str], *, n_classes: int | None = None) -> dict[str, int]:
    r"""Read a labels file into ``{request id: class}``.

    Args:
        path: ``.csv`` (header with ``request_id`` and ``label``) or ``.json`` (an object).
        n_classes: ``C``, to refuse labels outside ``[0, C)``.

    Raises:
        DyncalError: Missing or unreadable file, another format, missing columns, a label that is
            not a class, or a request id given twice (one line naming the file and the row).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "labels.csv"
        >>> _ = p.write_text("request_id,label\nr1,3\nr2,0\n")
        >>> read_labels(p, n_classes=10)
        {'r1': 3, 'r2': 0}
    """
    file = Path(path)
    if not file.is_file():
        raise DyncalError(f"no labels file '{file}'; give a CSV with request_id,label columns")
    if file.stat().st_size > MAX_LABEL_BYTES:
        raise DyncalError(f"labels file '{file}' is over {MAX_LABEL_BYTES >> 20} MiB; split it")
    suffix = file.suffix.lower()
    out: dict[str, int] = {}
    try:
        if suffix == ".json":
            doc = json.loads(file.read_text(encoding="utf-8"))
            if not isinstance(doc, dict):
                raise DyncalError(f"labels file '{file}' must hold a JSON object {{request id: class}}")
            for rid, value in doc.items():
                out[str(rid)] = _label(value, f"labels file '{file}', request {rid!r}", n_classes)
            return out
        if suffix != ".csv":
            raise DyncalError(f"labels file '{file}' must be .csv (request_id,label) or .json")
        with file.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in ("request_id", "label") if c not in (reader.fieldnames or [])]
            if missing:
                raise DyncalError(
                    f"labels file '{file}' has no {missing[0]!r} column (header: "
                    f"{', '.join(reader.fieldnames or [])}); it needs request_id,label"
                )
            for row_number, row in enumerate(reader, start=2):
                where = f"labels file '{file}', line {row_number}"
                rid = (row.get("request_id") or "").strip()
                if not rid:
                    raise DyncalError(f"{where}: empty request_id")
                if rid in out:
                    raise DyncalError(f"{where}: request {rid!r} is labelled twice")
                out[rid] = _label(row.get("label"), where, n_classes)
    except (UnicodeDecodeError, json.JSONDecodeError, csv.Error) as e:
        raise DyncalError(f"labels file '{file}' cannot be read: {type(e).__name__}: {str(e)[:120]}") from None
    return out
