"""``torch.export`` archives (``.pt2``) read as data: parsed and checked before torch sees them.

``torch.export.load`` is documented as unsafe on untrusted files. dyncal loads model
archives (``--model FILE.pt2``) and package stages, so it reads every archive itself first,
refuses anything through which loading or running it could execute code, and then hands
torch the *same bytes* it checked (:func:`dyncal.models.load_exported`).

Routes by which torch 2.14's ``torch.export.load`` (``torch/export/pt2_archive/_package.py``,
``torch/_export/serde/serialize.py``) or the loaded program's ``module()`` runs code or
evaluates strings from the archive, and what covers each:

1. **Pickled payloads.** ``_load_state_dict`` / ``_load_constants`` unpickle without
   restriction every ``data/weights`` or ``data/constants`` payload marked ``use_pickle``,
   *every* ``opaque_obj_*`` entry (``pickle.loads``) and ``custom_obj_*`` entry
   (``torch._C._pickle_load_obj``) whatever its flag says. Covered: entries are accepted only
   from a fixed list of names ``torch.export.save`` writes for tensors (:data:`_ENTRY`), so
   ``opaque_obj_*``, ``custom_obj_*`` and anything else are refused; every payload table
   entry must have ``use_pickle: false``, name a ``weight_N``/``tensor_N`` entry that exists,
   and describe a tensor that fits inside it.
2. **Fallback to plain pickle.** ``deserialize_torch_artifact`` retries with
   ``weights_only=False`` when the restricted unpickler refuses sample inputs
   (``data/sample_inputs/model.pt``) or legacy ``data/weights|constants/model.pt`` files.
   Covered: each must load with ``torch.load(weights_only=True)`` here (so torch's first try
   succeeds on the same bytes), and sample inputs must be a tuple of tensors and a dict of
   tensors keyed by identifiers.
3. **AOTInductor.** ``data/aotinductor/`` entries are compiled shared libraries that
   ``load_pt2`` loads. Covered: refused (not in :data:`_ENTRY`).
4. **The pre-2.7 format.** When ``load_pt2`` fails, ``torch.export.load`` falls back to a
   zip with a top-level ``version`` entry whose state dict goes through route 2. Covered:
   every entry must sit below the one root folder, so that fallback finds no ``version``.
5. **Symbolic expressions.** ``_parse_sym_expr`` passes every ``expr_str`` of the program
   JSON (``models/model.json``: tensor sizes, strides, symbolic ints, floats and bools) to
   ``sympy.sympify``, which evaluates Python. Covered: each must parse under a small grammar
   of shape arithmetic (:func:`check_expression`) over the symbols the archive declares in
   ``range_constraints`` (whose keys are checked by the same grammar).
6. **Guard code.** ``ExportedProgram.module()`` compiles ``guards_code`` strings with
   ``exec`` and runs them on every call. Covered: each must parse under the same grammar
   extended with input sizes (``L['x'].size()[0]``), comparisons and ``and``/``or``/``not``.
7. **Generated Python source.** ``torch.fx`` writes the graph as Python source and runs
   ``exec`` on it while loading: node, argument and signature names, ``forward_arg_names``
   and parameter/buffer paths are pasted into that source unescaped. Covered: names must be
   ASCII identifiers, paths dotted identifiers, and no string in the program JSON may hold a
   control character other than newline or tab.
8. **Imports by name.** Pytree specs (``in_spec``/``out_spec``) are JSON whose contexts are
   read with an object hook that imports ``{"__enum__": ..., "fqn": "module:Class"}``, and
   registered node types may import their own factories. Covered: specs may only be tuples,
   lists, dicts with string or integer keys, and leaves.
9. **Callables by name.** Node targets and ``as_operator`` arguments are resolved by
   attribute lookup under ``torch``, ``math`` and ``_operator``; higher-order operators run
   callables and subgraphs they are handed. Covered: a node may call only an ``aten`` or
   ``prims`` operator overload (none with a ``filename`` argument: ``aten.save`` and
   ``aten.from_file`` touch files) or a symbolic-shape operator; ``as_operator``,
   ``as_graph`` and custom-object arguments, custom-object inputs and effect tokens are
   refused, as is any program but ``model``.

The zip itself is parsed here, not by :mod:`zipfile` (which reads the last of two entries
with the same name where torch's reader finds the first, and accepts data before and after
the archive): the end record must close the file, the central directory must end where the
end records begin, every local header must agree with its directory entry, entries may not
overlap, names may not repeat even when they differ only in letter case (torch's reader looks
names up case-insensitively), compression is stored or deflate only, every entry's CRC and
size are checked (a deflated entry may not inflate beyond what it declares), and sizes are
bounded (:data:`ARCHIVE_LIMIT_BYTES`, :data:`PARSED_ENTRY_LIMIT_BYTES`).

What this does *not* promise: that running the model is cheap (a graph may allocate or
compute as much as any model), or that the archive is the one you meant to load (see the
package signature in :mod:`dyncal.export`).
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
import struct
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from dyncal.errors import DyncalError, ModelError, describe

__all__ = [
    "ARCHIVE_LIMIT_BYTES",
    "PARSED_ENTRY_LIMIT_BYTES",
    "check_archive",
    "check_expression",
    "read_regular_file",
]

ARCHIVE_LIMIT_BYTES = 16 * 2**30
"""Largest archive dyncal reads (16 GiB), and most bytes its entries may declare in all."""

PARSED_ENTRY_LIMIT_BYTES = 256 * 2**20
"""Largest entry dyncal parses itself (the program JSON, payload tables, sample inputs)."""

_MAX_ENTRIES = 100_000
_MAX_EXPR_CHARS = 20_000
_MAX_EXPR_DEPTH = 60
_MAX_EXPONENT = 64
_MAX_INT_DIGITS = 20

_REEXPORT = "re-export it with torch.export.save"
_PLAIN = "re-export it with torch.export.save from plain tensors"


# --------------------------------------------------------------------------- reading files


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


# --------------------------------------------------------------------------- the zip container


@dataclass(frozen=True)
class _Entry:
    """One archive entry as the central directory and its local header describe it."""

    name: str
    inner: str
    method: int
    crc: int
    size: int
    compressed: int
    header_offset: int
    data_offset: int


class _Refuse:
    """Builds the one-line refusals of one archive."""

    def __init__(self, name: str) -> None:
        self.name = name

    def malformed(self, detail: str) -> NoReturn:
        raise ModelError(f"'{self.name}' is not a well-formed torch.export archive ({detail}); {_REEXPORT}")

    def pickled(self, detail: str) -> NoReturn:
        raise ModelError(f"'{self.name}' holds pickled data that loading would execute ({detail}); {_PLAIN}")

    def code(self, kind: str, entry: str, value: object, why: str) -> NoReturn:
        shown = repr(value) if len(repr(value)) <= 100 else repr(value)[:97] + "..."
        raise ModelError(
            f"'{self.name}' holds {kind} that loading would run as code ({entry!r}: {shown}, {why}); {_REEXPORT}"
        )

    def unsupported(self, detail: str) -> NoReturn:
        raise ModelError(f"'{self.name}' holds {detail}, which dyncal does not load; {_REEXPORT}")


_EOCD = struct.Struct("<4sHHHHIIH")
_ZIP64_LOCATOR = struct.Struct("<4sIQI")
_ZIP64_EOCD = struct.Struct("<4sQHHIIQQQQ")
_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")
_LOCAL = struct.Struct("<4sHHHHHIIIHH")
_ALLOWED_FLAGS = 0x0002 | 0x0004 | 0x0008 | 0x0800  # deflate options, data descriptor, UTF-8 names
_FULL32 = 0xFFFFFFFF
_PRE_2_7 = frozenset(
    {"version", "serialized_exported_program.json", "serialized_state_dict.pt", "serialized_state_dict.json"}
)


def _u(data: memoryview, fmt: struct.Struct, offset: int, refuse: _Refuse, what: str) -> tuple[Any, ...]:
    """Unpack ``fmt`` at ``offset``, refusing a record that runs past the end."""
    if offset < 0 or offset + fmt.size > len(data):
        refuse.malformed(f"the {what} lies outside the file")
    return fmt.unpack_from(data, offset)


def _zip64_extra(extra: bytes, wanted: list[str], refuse: _Refuse, name: str) -> dict[str, int]:
    """The zip64 values (``size``, ``compressed``, ``offset``) an extra field holds for ``wanted``."""
    found: dict[str, int] = {}
    pos = 0
    seen = False
    while pos < len(extra):
        if pos + 4 > len(extra):
            refuse.malformed(f"entry {name!r} has a truncated extra field")
        tag, length = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4 : pos + 4 + length]
        if len(body) != length:
            refuse.malformed(f"entry {name!r} has a truncated extra field")
        if tag == 0x0001:
            if seen:
                refuse.malformed(f"entry {name!r} has two zip64 extra fields")
            seen = True
            if len(body) < 8 * len(wanted):
                refuse.malformed(f"entry {name!r} has a short zip64 extra field")
            for i, key in enumerate(wanted):
                found[key] = struct.unpack_from("<Q", body, 8 * i)[0]
        pos += 4 + length
    if len(found) != len(wanted):
        refuse.malformed(f"entry {name!r} needs zip64 sizes it does not hold")
    return found


def _end_records(data: memoryview, refuse: _Refuse) -> tuple[int, int, int, int]:
    """``(entries, directory offset, directory size, directory end)`` from the end records."""
    eocd = len(data) - _EOCD.size
    if eocd < 0 or bytes(data[eocd : eocd + 4]) != b"PK\x05\x06":
        if bytes(data[:4]) != b"PK\x03\x04":
            raise ModelError(
                f"'{refuse.name}' is not a torch.export archive (not a zip file); save it with torch.export.save"
            )
        refuse.malformed("the file does not end with the zip end record (data after the archive, or a comment)")
    _, disk, cd_disk, n_disk, n_total, cd_size, cd_offset, comment = _EOCD.unpack_from(data, eocd)
    if comment or disk or cd_disk or n_disk != n_total:
        refuse.malformed("a comment or several disks in the zip end record")
    cd_end = eocd
    locator = eocd - _ZIP64_LOCATOR.size
    if locator >= 0 and bytes(data[locator : locator + 4]) == b"PK\x06\x07":
        _, loc_disk, record_at, disks = _u(data, _ZIP64_LOCATOR, locator, refuse, "zip64 locator")
        if loc_disk or disks != 1 or record_at != locator - _ZIP64_EOCD.size:
            refuse.malformed("a zip64 end record that is not right before its locator")
        _, rec_size, _, _, r_disk, r_cd_disk, r_n_disk, r_n_total, r_cd_size, r_cd_offset = _u(
            data, _ZIP64_EOCD, record_at, refuse, "zip64 end record"
        )
        if bytes(data[record_at : record_at + 4]) != b"PK\x06\x06" or rec_size != _ZIP64_EOCD.size - 12:
            refuse.malformed("a malformed zip64 end record")
        if r_disk or r_cd_disk or r_n_disk != r_n_total:
            refuse.malformed("several disks in the zip64 end record")
        for short, wide, full in (
            (n_total, r_n_total, 0xFFFF),
            (cd_size, r_cd_size, _FULL32),
            (cd_offset, r_cd_offset, _FULL32),
        ):
            if short not in (wide, full):
                refuse.malformed("the zip end record and the zip64 end record disagree")
        n_total, cd_size, cd_offset, cd_end = r_n_total, r_cd_size, r_cd_offset, record_at
    elif _FULL32 in (cd_size, cd_offset) or n_total == 0xFFFF:
        refuse.malformed("zip64 values without a zip64 end record")
    if cd_offset + cd_size != cd_end:
        refuse.malformed(
            "the central directory does not end where the end records begin (data before or inside the archive)"
        )
    if n_total > _MAX_ENTRIES:
        refuse.malformed(f"{n_total} entries, more than the {_MAX_ENTRIES} dyncal reads")
    return n_total, cd_offset, cd_size, cd_end


def _decode_name(raw: bytes, flags: int, refuse: _Refuse) -> str:
    """An entry name as text; control characters, backslashes and undecodable bytes are refused."""
    try:
        text = raw.decode("utf-8") if flags & 0x0800 else raw.decode("ascii")
    except UnicodeDecodeError:
        refuse.malformed(f"an entry name that is not {'UTF-8' if flags & 0x0800 else 'ASCII'}: {raw[:80]!r}")
    if not text or "\\" in text or any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        refuse.malformed(f"an entry name with control characters or backslashes: {text[:80]!r}")
    return text


def _parse_zip(data: memoryview, refuse: _Refuse) -> dict[str, _Entry]:
    """Every entry below the archive's root folder, keyed by its name below that folder."""
    count, cd_offset, _cd_size, cd_end = _end_records(data, refuse)
    entries: dict[str, _Entry] = {}
    folded: dict[bytes, str] = {}
    root: str | None = None
    pos = cd_offset
    for _ in range(count):
        fields = _u(data, _CENTRAL, pos, refuse, "central directory")
        sig, _made, _need, flags, method, _t, _d, crc, csize, usize, nlen, xlen, clen, disk, _ia, _ea, offset = fields
        if sig != b"PK\x01\x02":
            refuse.malformed("a damaged central directory")
        end = pos + _CENTRAL.size + nlen + xlen + clen
        if end > cd_end:
            refuse.malformed("a central directory entry runs past the directory")
        raw = bytes(data[pos + _CENTRAL.size : pos + _CENTRAL.size + nlen])
        extra = bytes(data[pos + _CENTRAL.size + nlen : pos + _CENTRAL.size + nlen + xlen])
        pos = end
        name = _decode_name(raw, flags, refuse)
        wanted = [k for k, v in (("size", usize), ("compressed", csize), ("offset", offset)) if v == _FULL32]
        wide = _zip64_extra(extra, wanted, refuse, name) if wanted else {}
        usize, csize, offset = wide.get("size", usize), wide.get("compressed", csize), wide.get("offset", offset)
        if disk or clen:
            refuse.malformed(f"entry {name!r} has a comment or lies on another disk")
        if flags & ~_ALLOWED_FLAGS:
            refuse.malformed(
                f"entry {name!r} is encrypted or uses zip features torch.export.save does not (flags {flags:#06x})"
            )
        if method not in (0, 8):
            refuse.malformed(f"entry {name!r} is compressed with method {method}; only stored and deflate are read")
        if method == 0 and csize != usize:
            refuse.malformed(f"stored entry {name!r} declares {usize} bytes but occupies {csize}")
        if name in _PRE_2_7:
            refuse.unsupported(f"{name!r}: the format torch.export.save wrote before torch 2.7, with pickled weights")
        if name.endswith("/") or "/" not in name:
            refuse.malformed(f"entry {name!r} is a folder or lies outside the archive's root folder")
        top, inner = name.split("/", 1)
        if root is None:
            root = top
        elif top != root:
            refuse.malformed(f"entries in two root folders, {root!r} and {top!r}")
        key = inner.encode("utf-8").lower()
        if key in folded:
            other = f"{root}/{folded[key]}"
            if other == name:
                refuse.malformed(f"two entries named {name!r}")
            refuse.malformed(f"entries {other!r} and {name!r}, which torch's reader does not tell apart (letter case)")
        folded[key] = inner
        local = _u(data, _LOCAL, offset, refuse, f"local header of {name!r}")
        lsig, _lneed, lflags, lmethod, _lt, _ld, lcrc, lcsize, lusize, lnlen, lxlen = local
        if lsig != b"PK\x03\x04" or lflags != flags or lmethod != method:
            refuse.malformed(f"the local header of entry {name!r} disagrees with the central directory")
        if bytes(data[offset + _LOCAL.size : offset + _LOCAL.size + lnlen]) != raw:
            refuse.malformed(f"entry {name!r} has another name in its local header")
        if not flags & 0x0008 and (lcrc, lcsize, lusize) != (crc, csize, usize) and _FULL32 not in (lcsize, lusize):
            refuse.malformed(f"the local header of entry {name!r} declares other sizes than the central directory")
        data_offset = offset + _LOCAL.size + lnlen + lxlen
        if data_offset + csize > cd_offset:
            refuse.malformed(f"entry {name!r} runs into the central directory")
        entries[inner] = _Entry(name, inner, method, crc, usize, csize, offset, data_offset)
    if pos != cd_end:
        refuse.malformed("the central directory holds more than its entries")
    ordered = sorted(entries.values(), key=lambda e: e.header_offset)
    if ordered and ordered[0].header_offset != 0:
        refuse.malformed("data before the first entry")
    for a, b in zip(ordered, ordered[1:], strict=False):
        if b.header_offset < a.data_offset + a.compressed:
            refuse.malformed(f"entries {a.name!r} and {b.name!r} overlap")
    declared = sum(e.size for e in entries.values())
    if declared > ARCHIVE_LIMIT_BYTES:
        refuse.malformed(f"its entries declare {declared} bytes, more than the {ARCHIVE_LIMIT_BYTES} dyncal loads")
    return entries


def _contents(data: memoryview, entry: _Entry, refuse: _Refuse, keep: bool) -> bytes:
    """An entry's bytes (``keep``) or none, once its size and CRC are checked; a deflated entry is inflated in steps."""
    raw = data[entry.data_offset : entry.data_offset + entry.compressed]
    if entry.method == 0:
        crc = zlib.crc32(raw)
        out = bytes(raw) if keep else b""
    else:
        inflate = zlib.decompressobj(-15)
        crc, produced, parts = 0, 0, []
        pending: bytes | memoryview = raw
        while True:
            piece = inflate.decompress(pending, 1 << 20)
            produced += len(piece)
            if produced > entry.size:
                refuse.malformed(f"entry {entry.name!r} inflates to more than the {entry.size} bytes it declares")
            crc = zlib.crc32(piece, crc)
            if keep:
                parts.append(piece)
            pending = inflate.unconsumed_tail
            if inflate.eof or (not piece and not pending):
                break
        if not inflate.eof or inflate.unused_data or produced != entry.size:
            refuse.malformed(f"entry {entry.name!r} does not inflate to the {entry.size} bytes it declares")
        out = b"".join(parts)
    if crc != entry.crc:
        refuse.malformed(f"entry {entry.name!r} fails its CRC check (damaged)")
    return out


# --------------------------------------------------------------------------- which entries


_ENTRY = re.compile(
    r"archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
    r"|models/model\.json|data/sample_inputs/model\.pt"
    r"|data/weights/model_weights_config\.json|data/constants/model_constants_config\.json"
    r"|data/weights/weight_[0-9]{1,9}|data/constants/tensor_[0-9]{1,9}"
    r"|data/weights/model\.pt|data/constants/model\.pt"
    r"|extra/[A-Za-z0-9_][A-Za-z0-9_.-]{0,200}"
)
_PICKLED_ENTRY = re.compile(r"data/constants/(opaque_obj_|custom_obj_)[^/]*|data/aotinductor/.*")


def _check_entry_names(entries: Mapping[str, _Entry], refuse: _Refuse) -> None:
    """Refuse entries ``torch.export.save`` does not write for a program of tensors."""
    for inner, entry in entries.items():
        if _ENTRY.fullmatch(inner):
            continue
        if _PICKLED_ENTRY.fullmatch(inner):
            what = "a compiled AOTInductor package" if inner.startswith("data/aotinductor/") else "an object constant"
            refuse.pickled(f"{what} {entry.name!r}, which torch loads whatever its flags say")
        if inner.startswith("models/") and inner.endswith(".json"):
            refuse.unsupported(f"a second program {entry.name!r} (only 'model' is loaded, but torch reads them all)")
        refuse.unsupported(f"an entry torch.export.save does not write for tensors ({entry.name!r})")
    for needed in ("models/model.json", "archive_format", "archive_version"):
        if needed not in entries:
            refuse.malformed(f"no {needed!r} entry")


def _parsed(data: memoryview, entry: _Entry, refuse: _Refuse) -> bytes:
    """The bytes of an entry dyncal parses (bounded by :data:`PARSED_ENTRY_LIMIT_BYTES`)."""
    if entry.size > PARSED_ENTRY_LIMIT_BYTES:
        refuse.malformed(
            f"entry {entry.name!r} has {entry.size} bytes, more than the {PARSED_ENTRY_LIMIT_BYTES} dyncal parses"
        )
    return _contents(data, entry, refuse, keep=True)


def _json(data: memoryview, entry: _Entry, refuse: _Refuse) -> Any:
    try:
        return json.loads(_parsed(data, entry, refuse).decode("utf-8"))
    except (ValueError, RecursionError) as e:
        refuse.malformed(f"entry {entry.name!r} is not readable JSON: {describe(e, 120)}")


# --------------------------------------------------------------------------- payloads


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FQN = re.compile(r"[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*")


def _as_int(value: object) -> int | None:
    """``{"as_int": n}`` as ``n`` (None otherwise)."""
    if isinstance(value, Mapping) and set(value) == {"as_int"}:
        n = value["as_int"]
        if isinstance(n, int) and not isinstance(n, bool):
            return n
    return None


def _itemsizes() -> dict[int, int]:
    """Bytes per element of each dtype code a payload table uses (empty if this torch lays them out otherwise)."""
    try:
        from torch._export.serde.serialize import _SERIALIZE_TO_TORCH_DTYPE
    except ImportError:  # then tensors are bounded by bytes, not elements
        return {}
    return {int(code): dtype.itemsize for code, dtype in _SERIALIZE_TO_TORCH_DTYPE.items()}


def _check_payload_table(
    data: memoryview, entries: Mapping[str, _Entry], table: str, folder: str, prefix: str, refuse: _Refuse
) -> None:
    """A weights or constants table: tensors only, each inside the entry it names."""
    itemsizes = _itemsizes()

    if table not in entries:
        return
    entry = entries[table]
    doc = _json(data, entry, refuse)
    config = doc.get("config") if isinstance(doc, Mapping) else None
    if not isinstance(config, Mapping):
        refuse.malformed(f"entry {entry.name!r} is not a payload table")
    for fqn, meta in config.items():
        if not isinstance(meta, Mapping):
            refuse.malformed(f"entry {entry.name!r}: {fqn!r} is not a payload description")
        if meta.get("use_pickle") is not False:
            refuse.pickled(f"{fqn} in {entry.name!r}")
        if not isinstance(fqn, str) or not _FQN.fullmatch(fqn):
            refuse.code("a parameter path", entry.name, fqn, "not a dotted name")
        path_name = meta.get("path_name")
        if not isinstance(path_name, str) or not re.fullmatch(prefix + r"[0-9]{1,9}", path_name):
            refuse.pickled(f"{fqn} in {entry.name!r} names the payload {path_name!r}")
        payload = entries.get(folder + path_name)
        if payload is None:
            refuse.malformed(f"{fqn} in {entry.name!r} names the missing payload {path_name!r}")
        tm = meta.get("tensor_meta")
        if not isinstance(tm, Mapping):
            refuse.malformed(f"{fqn} in {entry.name!r} has no tensor description")
        sizes = [_as_int(v) for v in tm.get("sizes") or []]
        strides = [_as_int(v) for v in tm.get("strides") or []]
        offset = _as_int(tm.get("storage_offset"))
        try:
            itemsize = itemsizes[int(tm["dtype"])] if itemsizes else 1
        except (ValueError, KeyError, TypeError):
            refuse.malformed(f"{fqn} in {entry.name!r} has the unknown dtype {tm.get('dtype')!r}")
        ints = [*sizes, *strides, offset]
        if len(sizes) != len(strides) or len(sizes) > 64 or any(v is None or v < 0 for v in ints):
            refuse.malformed(f"{fqn} in {entry.name!r} has sizes, strides or offset that are not non-negative integers")
        dims = [(int(s or 0), int(t or 0)) for s, t in zip(sizes, strides, strict=True)]
        extent = 0 if any(s == 0 for s, _ in dims) else 1 + int(offset or 0) + sum((s - 1) * t for s, t in dims)
        if extent * itemsize > payload.size:
            needed = extent * itemsize
            refuse.malformed(
                f"{fqn} in {entry.name!r} describes {needed} bytes but {payload.name!r} holds {payload.size}"
            )


def _restricted_load(blob: bytes) -> tuple[Any, str | None]:
    """``torch.load(weights_only=True)`` of ``blob``: ``(object, None)``, or ``(None, why it failed)``."""
    import torch

    try:
        # exactly torch's own first try (no map_location: a load that fails there falls back to pickle)
        return torch.load(io.BytesIO(blob), weights_only=True), None
    except Exception as e:  # noqa: BLE001 - any failure means torch would fall back to plain pickle
        return None, describe(e, 120)


def _check_pickles(data: memoryview, entries: Mapping[str, _Entry], refuse: _Refuse) -> None:
    """Sample inputs and legacy weights must load with torch's restricted unpickler; inputs must be tensors."""
    import torch

    for inner in ("data/sample_inputs/model.pt", "data/weights/model.pt", "data/constants/model.pt"):
        if inner not in entries:
            continue
        entry = entries[inner]
        value, why = _restricted_load(_parsed(data, entry, refuse))
        if why is not None:
            refuse.pickled(f"{entry.name!r} needs the unrestricted unpickler")
        if inner.startswith("data/sample_inputs/"):
            ok = (
                isinstance(value, tuple)
                and len(value) == 2
                and isinstance(value[0], tuple)
                and isinstance(value[1], dict)
                and all(isinstance(v, torch.Tensor) for v in (*value[0], *value[1].values()))
                and all(isinstance(k, str) and _IDENT.fullmatch(k) for k in value[1])
            )
            if not ok:
                refuse.unsupported(f"sample inputs {entry.name!r} that are not tensors passed by position or name")
        elif not isinstance(value, dict) or not all(isinstance(k, str) and _FQN.fullmatch(k) for k in value):
            refuse.unsupported(f"a legacy payload {entry.name!r} that is not a state dict of tensors")


# --------------------------------------------------------------------------- expressions


_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+(?:\.\d+)?(?:[eE][-+]?\d{1,3})?)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<str>'[A-Za-z0-9_.+-]*'|\"[A-Za-z0-9_.+-]*\")"
    r"|(?P<op>\*\*|//|==|!=|<=|>=|<<|>>|[-+*/%()<>,=\[\].&|]))"
)
_CMP = {"==", "!=", "<", "<=", ">", ">="}
_SYMBOL = re.compile(r"[a-z]{1,3}[0-9]{1,9}")
_SYMPY_FUNCTIONS = frozenset(
    """Add Mul Integer Rational Float Symbol Max Min Abs floor ceiling Mod sqrt
    Eq Ne Lt Le Gt Ge Equality Unequality StrictLessThan StrictGreaterThan LessThan GreaterThan
    And Or Not Piecewise ExprCondPair
    FloorDiv ModularIndexing Where PythonMod CleanDiv CeilToInt FloorToInt CeilDiv LShift RShift
    IntTrueDiv FloatTrueDiv TruncToFloat TruncToInt RoundToInt RoundDecimal ToFloat Identity
    IsNonOverlappingAndDenseIndicator""".split()
)
_POWERS = frozenset({"Pow", "PowByNatural", "FloatPow"})
_GUARD_FUNCTIONS = frozenset({"max", "min", "abs", "int", "float", "TrueDiv"})
_MATH = frozenset({"floor", "ceil", "trunc", "sqrt", "isnan"})
_CONSTANTS = frozenset({"True", "False", "true", "false", "oo"})
_KEYWORDS = frozenset(
    """positive negative nonnegative nonpositive integer real finite infinite zero nonzero
    even odd rational commutative extended_real precision evaluate""".split()
)


class _ExprError(Exception):
    """Why an expression is refused."""


class _Expression:
    """Recursive-descent check of one expression; ``mode`` is ``sympy``, ``declare`` or ``guard``."""

    def __init__(self, text: str, mode: str, symbols: frozenset[str]) -> None:
        if len(text) > _MAX_EXPR_CHARS:
            raise _ExprError(f"longer than {_MAX_EXPR_CHARS} characters")
        self.mode = mode
        self.symbols = symbols
        self.found: set[str] = set()
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        text = text.rstrip()
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None or m.end() == pos:
                raise _ExprError(f"unexpected {text[pos:].lstrip()[:12]!r}")
            kind = m.lastgroup or ""
            self.tokens.append((kind, m.group(kind)))
            pos = m.end()
        self.i = 0
        self.depth = 0
        self.in_power = False

    # -- helpers
    def peek(self, offset: int = 0) -> tuple[str, str]:
        j = self.i + offset
        return self.tokens[j] if j < len(self.tokens) else ("end", "")

    def take(self, value: str | None = None, kind: str | None = None) -> str:
        k, v = self.peek()
        if (value is not None and v != value) or (kind is not None and k != kind) or k == "end":
            raise _ExprError(f"expected {value or kind} at {v or 'the end'!r}")
        self.i += 1
        return v

    def at(self, *values: str) -> bool:
        k, v = self.peek()
        return k in ("op", "name") and v in values

    def check(self) -> None:
        self.expr()
        if self.i != len(self.tokens):
            raise _ExprError(f"unexpected {self.peek()[1]!r}")

    def nested(self, parse: Callable[[], None]) -> None:
        self.depth += 1
        if self.depth > _MAX_EXPR_DEPTH:
            raise _ExprError(f"nested deeper than {_MAX_EXPR_DEPTH}")
        parse()
        self.depth -= 1

    # -- grammar, lowest precedence first
    def expr(self) -> None:
        self.disjunction()

    def disjunction(self) -> None:
        self.conjunction()
        while self.mode == "guard" and self.at("or"):
            self.take()
            self.conjunction()

    def conjunction(self) -> None:
        self.negation()
        while self.mode == "guard" and self.at("and"):
            self.take()
            self.negation()

    def negation(self) -> None:
        if self.mode == "guard" and self.at("not"):
            self.take()
            self.nested(self.negation)
        else:
            self.comparison()

    def comparison(self) -> None:
        self.bitwise()
        while self.at(*_CMP):
            self.take()
            self.bitwise()

    def bitwise(self) -> None:
        self.shift()
        while self.at("&", "|"):
            self.take()
            self.shift()

    def shift(self) -> None:
        self.arith()
        while self.at("<<", ">>"):
            self.take()
            self.arith()

    def arith(self) -> None:
        self.term()
        while self.at("+", "-"):
            self.take()
            self.term()

    def term(self) -> None:
        self.unary()
        while self.at("*", "/", "//", "%"):
            self.take()
            self.unary()

    def unary(self) -> None:
        if self.at("-", "+"):
            self.take()
            self.nested(self.unary)
        else:
            self.power()

    def power(self) -> None:
        if self.at("**"):
            raise _ExprError("'**' without a base")
        start = self.i
        self.primary()
        if self.at("**"):
            if self.in_power or any(v in ("**", *_POWERS) for _, v in self.tokens[start : self.i]):
                raise _ExprError("a power of a power")
            self.take()
            self.small_exponent()

    def small_exponent(self) -> None:
        """An exponent: a small integer literal (``2``, ``-1``, ``(2)``, ``Integer(2)``)."""
        parens = self.at("(")
        if parens:
            self.take()
        if self.at("Integer") and self.peek(1)[1] == "(":
            self.take()
            self.take("(")
            self.small_exponent()
            self.take(")")
        else:
            if self.at("-"):
                self.take()
            n = self.take(kind="num")
            if not n.isdigit() or int(n) > _MAX_EXPONENT:
                raise _ExprError(f"the exponent {n} (integers up to {_MAX_EXPONENT} only)")
        if parens:
            self.take(")")

    def primary(self) -> None:
        kind, value = self.peek()
        if kind == "num":
            self.take()
            if len(value) > _MAX_INT_DIGITS:
                raise _ExprError(f"the number {value[:12]}... has more than {_MAX_INT_DIGITS} digits")
        elif value == "(":
            self.take()
            self.nested(self.expr)
            while self.at(","):  # a tuple, as str() prints Piecewise's pairs
                self.take()
                self.nested(self.expr)
            self.take(")")
        elif kind == "name":
            self.name()
        else:
            raise _ExprError(f"unexpected {value or 'end'!r}")

    def name(self) -> None:
        value = self.take(kind="name")
        if self.mode == "guard" and value == "L" and self.at("["):
            self.source()
        elif self.mode == "guard" and value == "math" and self.at("."):
            self.take(".")
            attr = self.take(kind="name")
            if attr == "inf":
                return
            if attr not in _MATH:
                raise _ExprError(f"math.{attr}")
            self.call(f"math.{attr}")
        elif self.at("("):
            allowed = _SYMPY_FUNCTIONS | _POWERS | (_GUARD_FUNCTIONS if self.mode == "guard" else frozenset())
            if value not in allowed:
                raise _ExprError(f"the call {value}(...)")
            self.call(value)
        elif value in _CONSTANTS or (self.mode == "guard" and value == "inf"):
            return
        elif self.mode != "guard" and _SYMBOL.fullmatch(value):
            self.symbol(value)
        else:
            raise _ExprError(f"the name {value!r}")

    def symbol(self, value: str) -> None:
        if self.mode == "declare":
            self.found.add(value)
        elif value not in self.symbols:
            raise _ExprError(f"the symbol {value!r}, which range_constraints does not declare")

    def call(self, function: str) -> None:
        self.take("(")
        if function == "Symbol":
            kind, value = self.peek()
            if kind != "str" or not _SYMBOL.fullmatch(value[1:-1]):
                raise _ExprError(f"Symbol({value[:20]}...) that does not name a shape symbol")
            self.take()
            self.symbol(value[1:-1])
            self.keywords()
        elif function in ("Integer", "Rational", "Float"):
            self.literals(function)
        elif function in _POWERS:
            if self.in_power:
                raise _ExprError("a power of a power")
            self.in_power = True
            self.nested(self.expr)
            self.take(",")
            self.small_exponent()
            self.in_power = False
        else:
            first = True
            while not self.at(")"):
                if not first:
                    self.take(",")
                first = False
                if self.peek()[0] == "name" and self.peek(1)[1] == "=":
                    self.keyword()
                else:
                    self.nested(self.expr)
        self.take(")")

    def literals(self, function: str) -> None:
        """``Integer(n)``, ``Rational(p, q)``, ``Float('x', precision=n)`` / ``Float(x)``."""
        for i in range(2 if function == "Rational" else 1):
            if i:
                self.take(",")
            if self.at("-"):
                self.take()
            kind, value = self.peek()
            if function == "Float" and kind == "str":
                value = value[1:-1]
                if not re.fullmatch(r"-?\d+(\.\d+)?([eE][-+]?\d{1,3})?", value):
                    raise _ExprError(f"Float({value[:20]!r})")
                self.take()
            else:
                self.take(kind="num")
                if function != "Float" and not value.isdigit():
                    raise _ExprError(f"{function}({value[:20]})")
            if len(value) > _MAX_INT_DIGITS + 8:
                raise _ExprError(f"the number {value[:12]}... is too long")
        self.keywords()

    def keywords(self) -> None:
        """Trailing ``, name=True`` / ``, precision=53`` arguments."""
        while self.at(","):
            self.take(",")
            self.keyword()

    def keyword(self) -> None:
        """``name=True`` or ``precision=53``: the only keywords a printed expression holds."""
        key = self.take(kind="name")
        if key not in _KEYWORDS:
            raise _ExprError(f"the keyword {key}=")
        self.take("=")
        kind, value = self.peek()
        if not (kind == "num" and value.isdigit() and len(value) < 6) and value not in ("True", "False"):
            raise _ExprError(f"{key}={value[:20]}")
        self.take()

    def source(self) -> None:
        """``L['x'][0].size()[1]``: an input or its size, stride or offset (guards only)."""
        while self.at("["):
            self.take("[")
            kind, value = self.peek()
            if kind == "str" and _IDENT.fullmatch(value[1:-1]):
                self.take()
            elif kind == "num" and value.isdigit():
                self.take()
            else:
                raise _ExprError(f"L[{value[:20]}]")
            self.take("]")
        if self.at("."):
            self.take(".")
            method = self.take(kind="name")
            if method not in ("size", "stride", "storage_offset", "dim", "numel"):
                raise _ExprError(f"the method .{method}()")
            self.take("(")
            self.take(")")
            if self.at("["):
                self.take("[")
                if not self.take(kind="num").isdigit():
                    raise _ExprError("a size index that is not an integer")
                self.take("]")


def check_expression(text: object, *, symbols: frozenset[str] = frozenset(), mode: str = "sympy") -> frozenset[str]:
    """Check that ``text`` is shape arithmetic that ``sympy.sympify`` (or ``exec``) may evaluate safely.

    Accepted: integers, the symbols given (``s0``, ``s77``, ``u3``: bare or as
    ``Symbol('s77', positive=True, integer=True)``), ``+ - * / // % **`` (a power only of a
    small integer, and never of a power), comparisons, parentheses, and the functions
    ``torch.export`` prints (``Mul``, ``Add``, ``Max``, ``Min``, ``FloorDiv``, ``Mod``,
    ``CeilToInt``, ``Eq``, ``StrictLessThan``, ...). Nothing else: no other names, no
    attribute access, no strings but symbol names.

    Args:
        text: The expression (anything else is refused).
        symbols: The declared symbols (``mode="sympy"``).
        mode: ``"sympy"`` (an ``expr_str``), ``"declare"`` (a ``range_constraints`` key, whose
            symbols become declared) or ``"guard"`` (a ``guards_code`` line: sizes of the inputs
            as ``L['x'].size()[0]``, ``and``/``or``/``not``, ``math.floor``...).

    Returns:
        The symbols ``text`` declares (``mode="declare"``), else an empty set.

    Raises:
        ValueError: Not such an expression (why, in a few words).

    Example:
        >>> check_expression("Mul(Integer(16), Symbol('s77', positive=True, integer=True))", symbols=frozenset({"s77"}))
        frozenset()
        >>> check_expression("2*s65", mode="declare")
        frozenset({'s65'})
        >>> check_expression("__import__('os').system('ls')")
        Traceback (most recent call last):
        ...
        ValueError: the call __import__(...)
    """
    if mode not in ("sympy", "declare", "guard"):
        raise ValueError(f"mode must be sympy, declare or guard, got {mode!r}")
    if not isinstance(text, str):
        raise ValueError(f"a {type(text).__name__}, not a string")
    try:
        parser = _Expression(text, mode, symbols)
        if not parser.tokens:
            raise _ExprError("empty")
        parser.check()
    except _ExprError as e:
        raise ValueError(str(e)) from None
    return frozenset(parser.found)


# --------------------------------------------------------------------------- the program JSON


_SYM_TARGETS = frozenset(
    [
        f"_operator.{n}"
        for n in "eq ne le ge lt gt neg pos mul add sub floordiv mod pow truediv and_ or_ not_ "
        "lshift rshift getitem".split()
    ]
    + ["math.trunc"]
    + [f"torch.sym_{n}" for n in "not int float ite max min sqrt".split()]
)
_OP_TARGET = re.compile(r"torch\.ops\.(aten|prims)\.([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)")
_NAME_KEYS = frozenset({"name", "as_name", "custom_obj_name", "token_name", "forward_arg_names"})
_PATH_KEYS = frozenset({"parameter_name", "buffer_name", "tensor_constant_name", "fqn"})
_REFUSED_ARGS = {
    "as_operator": "an operator passed by name",
    "as_graph": "a subgraph (higher-order operators)",
    "as_custom_obj": "a custom object",
}
_INPUT_KINDS = frozenset({"user_input", "parameter", "buffer", "tensor_constant"})
_OUTPUT_KINDS = frozenset(
    {
        "user_output",
        "loss_output",
        "buffer_mutation",
        "parameter_mutation",
        "user_input_mutation",
        "gradient_to_parameter",
        "gradient_to_user_input",
    }
)
_TREE_TYPES = frozenset({"builtins.tuple", "builtins.list", "builtins.dict"})
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u2028\u2029\x85]")


def _walk(doc: Any) -> Iterator[tuple[str | None, Any]]:
    """Every ``(key, value)`` of a JSON document, depth first, without recursion (keys of lists: None)."""
    stack: list[tuple[str | None, Any]] = [(None, doc)]
    while stack:
        key, value = stack.pop()
        yield key, value
        if isinstance(value, Mapping):
            stack.extend((str(k), v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((key, v) for v in value)


def _operator_ok(target: str) -> str | None:
    """Why a node may not call ``target`` (None when it may)."""
    if target in _SYM_TARGETS:
        return None
    m = _OP_TARGET.fullmatch(target)
    if m is None:
        return "not an aten or prims operator"
    import torch

    try:
        op = getattr(getattr(getattr(torch.ops, m.group(1)), m.group(2)), m.group(3))
    except (AttributeError, RuntimeError):
        return "no such operator"
    if not isinstance(op, torch._ops.OpOverload):
        return "not an operator overload"
    if any(a.name == "filename" for a in op._schema.arguments):
        return "it reads or writes files"
    return None


def _check_tree_spec(spec: object, entry: str, refuse: _Refuse) -> None:
    """A pytree spec (JSON text): tuples, lists, dicts and leaves only, so nothing is imported by name."""
    try:
        protocol, root = json.loads(spec) if isinstance(spec, str) else (None, None)
    except (ValueError, TypeError, RecursionError):
        refuse.code("a pytree spec", entry, spec, "not a spec dyncal reads")
    stack = [root]
    while stack:
        node = stack.pop()
        if not isinstance(node, Mapping) or set(node) != {"type", "context", "children_spec"} or protocol != 1:
            refuse.code("a pytree spec", entry, spec, "not a spec dyncal reads")
        typ, context, children = node["type"], node["context"], node["children_spec"]
        if typ is None and context is None and children == []:
            continue
        if typ not in _TREE_TYPES or not isinstance(children, list) or not isinstance(context, str):
            refuse.code("a pytree type", entry, typ, "loading would import it by name")
        try:
            keys = json.loads(context)
        except (ValueError, RecursionError):
            keys = ...
        if typ == "builtins.dict":
            ok = isinstance(keys, list) and all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in keys)
        else:
            ok = keys is None
        if not ok:
            refuse.code("a pytree context", entry, context, "loading would read objects from it")
        stack.extend(children)


def _check_program(doc: Any, entry: str, refuse: _Refuse) -> None:
    """The program JSON: every string torch evaluates, pastes into code or resolves by name."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("graph_module"), Mapping):
        refuse.malformed(f"entry {entry!r} is not a serialized program")
    ranges = doc.get("range_constraints") or {}
    if not isinstance(ranges, Mapping):
        refuse.malformed(f"entry {entry!r}: range_constraints is not a mapping")
    symbols: set[str] = set()
    for key, bounds in ranges.items():
        try:
            symbols |= check_expression(key, mode="declare")
        except ValueError as e:
            refuse.code("a symbolic expression", entry, key, f"not shape arithmetic: {e}")
        if not isinstance(bounds, Mapping) or not all(
            v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in bounds.values()
        ):
            refuse.malformed(f"entry {entry!r}: the range of {key!r} is not integers")
    declared = frozenset(symbols)
    guards = doc.get("guards_code") or []
    if not isinstance(guards, list):
        refuse.malformed(f"entry {entry!r}: guards_code is not a list")
    for guard in guards:
        try:
            check_expression(guard, mode="guard")
        except ValueError as e:
            refuse.code("guard code", entry, guard, f"not a comparison of input sizes: {e}")
    graph_module = doc["graph_module"]
    for key, value in _walk(doc):
        if isinstance(key, str) and _CONTROL.search(key):
            refuse.code("a name", entry, key, "control characters")
        if isinstance(value, str):
            if _CONTROL.search(value):
                refuse.code("a string", entry, value, "control characters end lines of the generated code")
            if key == "expr_str":
                try:
                    check_expression(value, symbols=declared)
                except ValueError as e:
                    refuse.code("a symbolic expression", entry, value, f"not shape arithmetic: {e}")
            elif key in _NAME_KEYS and not _IDENT.fullmatch(value):
                refuse.code("a name", entry, value, "not an identifier")
            elif key in _PATH_KEYS and not (_FQN.fullmatch(value) or (key == "fqn" and value == "")):
                refuse.code("a module path", entry, value, "not a dotted name")
            elif key in ("in_spec", "out_spec"):
                _check_tree_spec(value, entry, refuse)
        if key in _REFUSED_ARGS and value is not None:
            refuse.unsupported(f"{_REFUSED_ARGS[key]} in {entry!r}")
        if key in ("tensor_values", "sym_int_values", "sym_float_values", "sym_bool_values") and isinstance(
            value, Mapping
        ):
            for name in value:
                if not _IDENT.fullmatch(name):
                    refuse.code("a name", entry, name, "not an identifier")
        if key == "custom_obj_values" and value:
            refuse.unsupported(f"custom objects in {entry!r}")
        if key == "nodes" and isinstance(value, list):
            for node in value:
                target = node.get("target") if isinstance(node, Mapping) else None
                why = _operator_ok(target) if isinstance(target, str) else "not a name"
                if why is not None:
                    refuse.unsupported(f"a call of {target!r} in {entry!r} ({why})")
    graph = graph_module.get("graph")
    signature = graph_module.get("signature")
    if not isinstance(graph, Mapping) or not isinstance(signature, Mapping):
        refuse.malformed(f"entry {entry!r} has no graph or signature")
    for value in graph.get("inputs") or []:
        if not isinstance(value, Mapping) or set(value) != {"as_tensor"}:
            refuse.unsupported(f"a graph input that is not a tensor in {entry!r}")
    for specs, kinds in (("input_specs", _INPUT_KINDS), ("output_specs", _OUTPUT_KINDS)):
        for spec in signature.get(specs) or []:
            kind = next(iter(spec), None) if isinstance(spec, Mapping) and len(spec) == 1 else None
            if kind not in kinds:
                refuse.unsupported(f"a program {specs[:-6]} of kind {kind!r} in {entry!r}")


# --------------------------------------------------------------------------- the whole check


def check_archive(data: bytes | memoryview, name: str) -> None:
    """Refuse a ``torch.export`` archive that loading or running could make execute code.

    See the module docstring for every route and how it is covered. Hand
    ``torch.export.load`` these same bytes afterwards (``io.BytesIO(data)``), never the
    file again.

    Args:
        data: The archive's bytes.
        name: How to name the archive in messages.

    Raises:
        ModelError: Not a zip archive, a malformed or ambiguous one, one too large, or one
            holding an entry, payload, expression, name, spec or call that is refused (one
            line naming the entry).

    Example:
        >>> import io, torch
        >>> from dyncal.demo import pretrained
        >>> buf = io.BytesIO()
        >>> torch.export.save(torch.export.export(pretrained(), (torch.zeros(2, 1, 8, 8),)), buf)
        >>> check_archive(buf.getvalue(), "demo.pt2")
        >>> check_archive(buf.getvalue() + b"junk", "demo.pt2")
        Traceback (most recent call last):
        ...
        dyncal.errors.ModelError: 'demo.pt2' is not a well-formed torch.export archive (the file does not end ...
    """
    view = memoryview(data).cast("B")
    refuse = _Refuse(name)
    if len(view) > ARCHIVE_LIMIT_BYTES:
        refuse.malformed(f"{len(view)} bytes, more than the {ARCHIVE_LIMIT_BYTES} dyncal loads")
    entries = _parse_zip(view, refuse)
    _check_entry_names(entries, refuse)
    for entry in entries.values():  # sizes and CRCs of everything torch will read
        _contents(view, entry, refuse, keep=False)
    _check_payload_table(view, entries, "data/weights/model_weights_config.json", "data/weights/", "weight_", refuse)
    _check_payload_table(
        view, entries, "data/constants/model_constants_config.json", "data/constants/", "tensor_", refuse
    )
    _check_pickles(view, entries, refuse)
    program = entries["models/model.json"]
    _check_program(_json(view, program, refuse), program.name, refuse)
