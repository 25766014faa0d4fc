"""The zip container of a ``.pt2`` archive, parsed by dyncal (not :mod:`zipfile`); one-line refusals.

See :mod:`dyncal.archives` for what is checked and why: the end record must close the file,
the central directory must end where the end records begin, every local header must agree
with its directory entry, entries may not overlap or repeat (letter case included), and
every entry's size and CRC are checked.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Any, NoReturn

from dyncal.errors import ModelError

__all__ = ["Entry", "Refuse", "parse_zip", "contents"]

_MAX_ENTRIES = 100_000

_REEXPORT = "re-export it with torch.export.save"
_PLAIN = "re-export it with torch.export.save from plain tensors"


@dataclass(frozen=True)
class Entry:
    """One archive entry as the central directory and its local header describe it."""

    name: str
    inner: str
    method: int
    crc: int
    size: int
    compressed: int
    header_offset: int
    data_offset: int


class Refuse:
    """Builds the one-line refusals of one archive."""

    def __init__(self, name: str) -> None:
        self.name = name

    def malformed(self, detail: str) -> NoReturn:
        """The archive is not a zip torch.export.save writes (``detail``: where)."""
        raise ModelError(f"'{self.name}' is not a well-formed torch.export archive ({detail}); {_REEXPORT}")

    def pickled(self, detail: str) -> NoReturn:
        """The archive holds data that loading would unpickle."""
        raise ModelError(f"'{self.name}' holds pickled data that loading would execute ({detail}); {_PLAIN}")

    def code(self, kind: str, entry: str, value: object, why: str) -> NoReturn:
        """The archive holds a string (``kind``, in ``entry``) that loading would run as code."""
        shown = repr(value) if len(repr(value)) <= 100 else repr(value)[:97] + "..."
        raise ModelError(
            f"'{self.name}' holds {kind} that loading would run as code ({entry!r}: {shown}, {why}); {_REEXPORT}"
        )

    def unsupported(self, detail: str) -> NoReturn:
        """The archive holds something dyncal does not load, though not code as far as dyncal knows."""
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


def _u(data: memoryview, fmt: struct.Struct, offset: int, refuse: Refuse, what: str) -> tuple[Any, ...]:
    """Unpack ``fmt`` at ``offset``, refusing a record that runs past the end."""
    if offset < 0 or offset + fmt.size > len(data):
        refuse.malformed(f"the {what} lies outside the file")
    return fmt.unpack_from(data, offset)


def _zip64_extra(extra: bytes, wanted: list[str], refuse: Refuse, name: str) -> dict[str, int]:
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


def _end_records(data: memoryview, refuse: Refuse) -> tuple[int, int, int, int]:
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


def _decode_name(raw: bytes, flags: int, refuse: Refuse) -> str:
    """An entry name as text; control characters, backslashes and undecodable bytes are refused."""
    try:
        text = raw.decode("utf-8") if flags & 0x0800 else raw.decode("ascii")
    except UnicodeDecodeError:
        refuse.malformed(f"an entry name that is not {'UTF-8' if flags & 0x0800 else 'ASCII'}: {raw[:80]!r}")
    if not text or "\\" in text or any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        refuse.malformed(f"an entry name with control characters or backslashes: {text[:80]!r}")
    return text


def parse_zip(data: memoryview, refuse: Refuse, limit: int) -> dict[str, Entry]:
    """Every entry below the archive's root folder, keyed by its name below that folder.

    Args:
        data: The archive's bytes.
        refuse: Raises the refusals of this archive.
        limit: Most bytes the entries may declare in all.
    """
    count, cd_offset, _cd_size, cd_end = _end_records(data, refuse)
    entries: dict[str, Entry] = {}
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
        entries[inner] = Entry(name, inner, method, crc, usize, csize, offset, data_offset)
    if pos != cd_end:
        refuse.malformed("the central directory holds more than its entries")
    ordered = sorted(entries.values(), key=lambda e: e.header_offset)
    if ordered and ordered[0].header_offset != 0:
        refuse.malformed("data before the first entry")
    for a, b in zip(ordered, ordered[1:], strict=False):
        if b.header_offset < a.data_offset + a.compressed:
            refuse.malformed(f"entries {a.name!r} and {b.name!r} overlap")
    declared = sum(e.size for e in entries.values())
    if declared > limit:
        refuse.malformed(f"its entries declare {declared} bytes, more than the {limit} dyncal loads")
    return entries


def contents(data: memoryview, entry: Entry, refuse: Refuse, keep: bool) -> bytes:
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
