"""Field checks for the JSON documents dyncal reads (run.json, thresholds.json, ...).

A document is opened with :func:`read_json_document`, which refuses what is not a small
UTF-8 JSON object of bounded nesting, and its fields are read through the checkers here,
which raise :class:`FieldError` naming the field, what it must be and what it holds.
The reader of each document catches :class:`FieldError` and adds the file and what to do,
so every malformed field becomes one line.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from dyncal.errors import DyncalError

__all__ = [
    "FieldError",
    "show",
    "number",
    "integer",
    "string",
    "sha256",
    "mapping",
    "sequence",
    "number_list",
    "integer_list",
    "file_kind",
    "regular_file",
    "optional",
    "string_map",
    "require",
    "required",
    "read_json_document",
    "parse_json_document",
    "MAX_JSON_DEPTH",
]

T = TypeVar("T")

_SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_JSON_DEPTH = 32
"""Deepest nesting of lists and objects accepted in a document (dyncal writes at most ~6)."""


class FieldError(DyncalError):
    """A field of a document has the wrong type or value.

    Attributes:
        field: Dotted path of the field (``costs.macs[2]``).
        problem: What it must be and what it holds.

    Example:
        >>> str(FieldError("k", "must be an integer >= 2, got 1"))
        "field 'k' must be an integer >= 2, got 1"
    """

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"field '{field}' {problem}")


def show(value: Any, limit: int = 40) -> str:
    """A short one-line rendering of a value for a message.

    Example:
        >>> show("x" * 100, limit=10)
        "'xxxxxx..."
        >>> show(10**5000)
        'an integer of about 5001 digits'
        >>> show(True), show([1, 2])
        ('true', '[1, 2]')
    """
    if isinstance(value, bool) or value is None:
        text = json.dumps(value)
    elif isinstance(value, int) and abs(value) > 10**limit:
        text = f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    else:
        try:
            text = repr(value)
        except (ValueError, RecursionError):  # huge int, deep nesting
            text = f"a {type(value).__name__}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type_name(value: Any) -> str:
    names = {bool: "a boolean", str: "a string", list: "a list", dict: "an object", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


def _got(value: Any) -> str:
    """``got ...`` for a value of the wrong type: its JSON type and a short rendering."""
    if value is None:
        return "got null"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"got {show(value)}"
    return f"got {_type_name(value)} {show(value)}"


def number(
    value: Any,
    field: str,
    *,
    minimum: float | None = None,
    positive: bool = False,
    maximum: float | None = None,
    finite: bool = True,
) -> float:
    """A JSON number (not a boolean) as a float, within the given bounds.

    Args:
        value: The value read.
        field: Its name in messages.
        minimum: Smallest value allowed (inclusive).
        positive: Require ``value > 0``.
        maximum: Largest value allowed (inclusive).
        finite: Refuse NaN and infinities (default).

    Raises:
        FieldError: Not a number, not finite, or out of bounds.

    Example:
        >>> number(3, "macs[0]", positive=True)
        3.0
        >>> number(-1, "macs[0]", positive=True)
        Traceback (most recent call last):
        ...
        dyncal.artifacts.validate.FieldError: field 'macs[0]' must be a positive finite number, got -1
    """
    kind = "positive " if positive else "non-negative " if minimum == 0 else ""
    want = f"must be a {kind}{'finite ' if finite else ''}number"
    if minimum is not None and minimum != 0:
        want += f" >= {minimum:g}"
    if maximum is not None:
        want += f" <= {maximum:g}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FieldError(field, f"{want}, {_got(value)}")
    try:
        x = float(value)
    except OverflowError:
        raise FieldError(field, f"{want}, got {show(value)}") from None
    outside = (positive and not x > 0) or (minimum is not None and x < minimum) or (maximum is not None and x > maximum)
    if (finite and not math.isfinite(x)) or math.isnan(x) or outside:
        raise FieldError(field, f"{want}, got {show(value)}")
    return x


def integer(value: Any, field: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """A JSON integer (not a boolean, not a float) within the given bounds.

    Example:
        >>> integer(4, "k", minimum=2)
        4
        >>> integer(2.5, "k")
        Traceback (most recent call last):
        ...
        dyncal.artifacts.validate.FieldError: field 'k' must be an integer, got 2.5
    """
    want = "must be an integer"
    if minimum is not None:
        want += f" >= {minimum}"
    if maximum is not None:
        want += f" <= {maximum}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(field, f"{want}, {_got(value)}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise FieldError(field, f"{want}, got {show(value)}")
    return value


def string(value: Any, field: str, *, choices: Sequence[str] | None = None) -> str:
    """A JSON string, optionally one of ``choices``.

    Example:
        >>> string("maxprob", "score", choices=("maxprob", "margin"))
        'maxprob'
    """
    if not isinstance(value, str):
        raise FieldError(field, f"must be a string, {_got(value)}")
    if choices is not None and value not in choices:
        raise FieldError(field, f"must be one of {', '.join(choices)}, got {show(value)}")
    return value


def sha256(value: Any, field: str) -> str:
    """A SHA-256 hex digest: a string of 64 lower-case hex digits (fingerprints, file hashes).

    Example:
        >>> sha256("ABC", "fingerprint")
        Traceback (most recent call last):
        ...
        dyncal.artifacts.validate.FieldError: field 'fingerprint' must be a SHA-256 hex digest, got 'ABC'
    """
    if _SHA256.fullmatch(string(value, field)) is None:
        raise FieldError(field, f"must be a SHA-256 hex digest, got {show(value)}")
    return str(value)


def mapping(value: Any, field: str) -> dict[str, Any]:
    """A JSON object.

    Example:
        >>> mapping({"a": 1}, "extra")
        {'a': 1}
    """
    if not isinstance(value, dict):
        raise FieldError(field, f"must be an object, {_got(value)}")
    return value


def sequence(value: Any, field: str, *, length: int | None = None, min_length: int = 0) -> list[Any]:
    """A JSON list, of exactly ``length`` items when given.

    Example:
        >>> sequence([1, 2], "macs", length=2)
        [1, 2]
    """
    if not isinstance(value, (list, tuple)):
        raise FieldError(field, f"must be a list, {_got(value)}")
    if length is not None and len(value) != length:
        raise FieldError(field, f"must have {length} entries, got {len(value)}")
    if len(value) < min_length:
        raise FieldError(field, f"must have at least {min_length} entries, got {len(value)}")
    return list(value)


def number_list(
    value: Any,
    field: str,
    *,
    length: int | None = None,
    min_length: int = 0,
    minimum: float | None = None,
    positive: bool = False,
    maximum: float | None = None,
    nondecreasing: bool = False,
) -> tuple[float, ...]:
    """A JSON list of finite numbers, each checked as :func:`number` does.

    Args:
        value: The value read.
        field: Its name in messages.
        length: Exact number of entries, if known.
        min_length: Fewest entries allowed.
        minimum: Smallest value allowed.
        positive: Require every value > 0.
        maximum: Largest value allowed.
        nondecreasing: Require each value >= the one before (cumulative costs).

    Example:
        >>> number_list([1, 2.5], "macs", length=2, positive=True, nondecreasing=True)
        (1.0, 2.5)
        >>> number_list([2, 1], "macs", nondecreasing=True)
        Traceback (most recent call last):
        ...
        dyncal.artifacts.validate.FieldError: field 'macs' must be cumulative (non-decreasing), got [2, 1]
    """
    items = sequence(value, field, length=length, min_length=min_length)
    out = tuple(
        number(v, f"{field}[{i}]", minimum=minimum, positive=positive, maximum=maximum) for i, v in enumerate(items)
    )
    if nondecreasing and any(b < a for a, b in zip(out, out[1:], strict=False)):
        raise FieldError(field, f"must be cumulative (non-decreasing), got {show(items, 80)}")
    return out


def integer_list(
    value: Any, field: str, *, length: int | None = None, minimum: int | None = None, maximum: int | None = None
) -> tuple[int, ...]:
    """A JSON list of integers, each checked as :func:`integer` does.

    Example:
        >>> integer_list([3, 224, 224], "input.shape", minimum=1)
        (3, 224, 224)
    """
    items = sequence(value, field, length=length)
    return tuple(integer(v, f"{field}[{i}]", minimum=minimum, maximum=maximum) for i, v in enumerate(items))


def file_kind(mode: int) -> str:
    """What a ``stat`` mode is, for messages about files that are not regular files.

    Example:
        >>> import stat
        >>> file_kind(stat.S_IFIFO)
        'a named pipe (FIFO)'
    """
    kinds = (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISREG, "a regular file"),
    )
    return next((name for test, name in kinds if test(mode)), "not a regular file")


_Refusal = Callable[[str], DyncalError]
"""Builds a caller's own one-line refusal from a detail (a reason, or what a path is)."""


def regular_file(
    path: str | os.PathLike[str], *, missing: _Refusal, unreadable: _Refusal, other: _Refusal
) -> os.stat_result:
    """``os.stat`` of a regular file (a link to one is followed), checked before anything opens it.

    Each refusal is the caller's own message: ``missing(path)`` for no such file,
    ``unreadable(reason)`` when ``stat`` fails otherwise, ``other(kind)`` for anything but a
    regular file (``kind`` as :func:`file_kind` words it), so a FIFO or a device is never opened.

    Raises:
        DyncalError: What the matching refusal returns.

    Example:
        >>> refuse = lambda detail: DyncalError(f"'/dev/null' is {detail}")
        >>> regular_file("/dev/null", missing=refuse, unreadable=refuse, other=refuse)
        Traceback (most recent call last):
        ...
        dyncal.errors.DyncalError: '/dev/null' is a character device
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise missing(os.fspath(path)) from None
    except OSError as e:
        raise unreadable(str(e.strerror or e)) from e
    if not stat.S_ISREG(st.st_mode):
        raise other(file_kind(st.st_mode))
    return st


def _scan(doc: Any) -> tuple[int, bool]:
    """Deepest nesting of lists and objects in ``doc``, and whether it holds a NaN or an infinity anywhere.

    One iterative walk (no recursion limit, no field paths); past :data:`MAX_JSON_DEPTH` it stops.
    """
    deepest, nonfinite = 0, False
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, float):
            nonfinite = nonfinite or not math.isfinite(node)
            continue
        if not isinstance(node, (dict, list)):
            continue
        deepest = max(deepest, d)
        if deepest > MAX_JSON_DEPTH:
            break
        stack.extend((c, d + 1) for c in (node.values() if isinstance(node, dict) else node))
    return deepest, nonfinite


def read_json_document(path: str | os.PathLike[str], *, what: str, max_bytes: int) -> dict[str, Any]:
    """Read a JSON object from a regular file, refusing anything that is not one.

    Refused, each with one line: a missing file, a folder, FIFO or device (checked with
    ``stat`` before opening, so a FIFO never blocks), a file larger than ``max_bytes``,
    bytes that are not UTF-8, invalid JSON, integers too long to convert, nesting deeper
    than :data:`MAX_JSON_DEPTH`, and a top level that is not an object.

    Args:
        path: The file.
        what: What the document is, for messages (``"a thresholds document"``).
        max_bytes: Largest size accepted.

    Returns:
        The parsed object.

    Raises:
        DyncalError: The file is missing or is not such a document; the message starts
            with the path.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "t.json"
        >>> _ = p.write_bytes(b"[" * 5000 + b"]" * 5000)
        >>> read_json_document(p, what="a thresholds document", max_bytes=1 << 20)
        Traceback (most recent call last):
        ...
        dyncal.errors.DyncalError: '...t.json' is not a thresholds document: its JSON nests deeper than 32 levels
    """
    path = Path(path)
    st = regular_file(
        path,
        missing=lambda _: DyncalError(f"'{path}': no such file"),
        unreadable=lambda why: DyncalError(f"'{path}': cannot read it ({why})"),
        other=lambda kind: DyncalError(f"'{path}' is {kind}, not {what}"),
    )
    if st.st_size > max_bytes:
        raise DyncalError(f"'{path}' is {st.st_size:,} bytes, larger than {what} can be ({max_bytes:,}); is it one?")
    try:
        with open(path, "rb") as fh:
            raw = fh.read(max_bytes + 1)
    except OSError as e:
        raise DyncalError(f"'{path}': cannot read it ({e.strerror or e})") from e
    return parse_json_document(raw, where=str(path), what=what)


def _first_nonfinite(doc: Any) -> tuple[str, float] | None:
    """The first NaN or infinity in ``doc`` with its field path (``costs.macs[1]``), or None."""
    stack: list[tuple[Any, str]] = [(doc, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            return path or "(document)", node
        if isinstance(node, dict):
            stack.extend((v, f"{path}.{k}" if path else str(k)) for k, v in reversed(list(node.items())))
        elif isinstance(node, list):
            stack.extend((v, f"{path}[{i}]") for i, v in reversed(list(enumerate(node))))
    return None


def parse_json_document(raw: bytes, *, where: str, what: str) -> dict[str, Any]:
    """Parse bytes that must hold one JSON object: UTF-8, strict JSON, bounded nesting.

    Refused, each with one line starting with ``'where'``: bytes that are not UTF-8,
    invalid JSON, integers too long to convert, nesting deeper than
    :data:`MAX_JSON_DEPTH` (the parser's own recursion limit included), a top level that is
    not an object, and any ``NaN`` or infinity (``NaN``, ``Infinity`` and ``1e999`` are no
    JSON numbers; dyncal never writes them), named by its field whatever the field.

    Example:
        >>> parse_json_document(b'{"t": [1, Infinity]}', where="m.json", what="a manifest")
        Traceback (most recent call last):
        ...
        dyncal.errors.DyncalError: 'm.json' is not a manifest: field 't[1]' must be a finite number, got inf
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DyncalError(f"'{where}' is not {what}: not UTF-8 text (byte {e.start})") from None
    try:
        doc = json.loads(text)
    except RecursionError:
        raise DyncalError(f"'{where}' is not {what}: its JSON nests deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as e:  # JSONDecodeError, and integers longer than Python converts
        reason = str(e).split(";")[0]
        raise DyncalError(f"'{where}' is not {what}: invalid JSON ({reason})") from None
    deepest, nonfinite = _scan(doc)
    if deepest > MAX_JSON_DEPTH:
        raise DyncalError(f"'{where}' is not {what}: its JSON nests deeper than {MAX_JSON_DEPTH} levels")
    if not isinstance(doc, dict):
        raise DyncalError(f"'{where}' is not {what}: it holds {_type_name(doc)}, not a JSON object")
    if nonfinite:
        field, value = _first_nonfinite(doc) or ("(document)", math.nan)
        raise DyncalError(f"'{where}' is not {what}: field '{field}' must be a finite number, got {value}")
    return doc


def optional(value: Any, check: Callable[..., T], field: str, **bounds: Any) -> T | None:
    """None (JSON null, or a key left out), or ``value`` read by ``check`` (:func:`number`, :func:`mapping`, ...).

    Example:
        >>> optional(None, mapping, "risk") is None, optional(2, number, "macs", positive=True)
        (True, 2.0)
    """
    return None if value is None else check(value, field, **bounds)


def string_map(value: Any, field: str) -> dict[str, str]:
    """A JSON object whose values are strings.

    Example:
        >>> string_map({"torch": "2.5"}, "versions")
        {'torch': '2.5'}
    """
    return {str(k): string(v, f"{field}.{k}") for k, v in mapping(value, field).items()}


def require(doc: Mapping[str, Any], key: str, prefix: str = "") -> Any:
    """``doc[key]``, or a :class:`FieldError` saying it is missing.

    Example:
        >>> require({}, "n")
        Traceback (most recent call last):
        ...
        dyncal.artifacts.validate.FieldError: field 'n' is missing
    """
    if key not in doc:
        raise FieldError(f"{prefix}{key}", "is missing")
    return doc[key]


def required(doc: Mapping[str, Any], key: str, check: Callable[..., T], prefix: str = "", **bounds: Any) -> T:
    """``doc[key]`` (:func:`require`) read by ``check`` (:func:`integer`, :func:`string`, ...) under its name.

    Example:
        >>> required({"k": 3}, "k", integer, minimum=2), required({"k": 3}, "c", integer, "run.")
        Traceback (most recent call last):
        ...
        dyncal.artifacts.validate.FieldError: field 'run.c' is missing
    """
    return check(require(doc, key, prefix), f"{prefix}{key}", **bounds)
