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
   of shape arithmetic (:func:`dyncal.archives.expressions.check_expression`) over the
   symbols the archive declares in ``range_constraints`` (whose keys are checked by the same
   grammar).
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

The zip itself is parsed by dyncal (:mod:`dyncal.archives.container`), not by :mod:`zipfile`
(which reads the last of two entries with the same name where torch's reader finds the
first, and accepts data before and after the archive): the end record must close the file,
the central directory must end where the end records begin, every local header must agree
with its directory entry, entries may not overlap, names may not repeat even when they
differ only in letter case (torch's reader looks names up case-insensitively), compression
is stored or deflate only, every entry's CRC and size are checked (a deflated entry may not
inflate beyond what it declares), and sizes are bounded (:data:`ARCHIVE_LIMIT_BYTES`,
:data:`PARSED_ENTRY_LIMIT_BYTES`).

What this does *not* promise: that running the model is cheap (a graph may allocate or
compute as much as any model), or that the archive is the one you meant to load (see the
package signature in :mod:`dyncal.artifacts.package`).
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping
from typing import Any

from dyncal.archives.container import Entry, Refuse, contents, parse_zip
from dyncal.archives.expressions import FQN, IDENT
from dyncal.archives.program import check_program
from dyncal.errors import describe

__all__ = ["ARCHIVE_LIMIT_BYTES", "PARSED_ENTRY_LIMIT_BYTES", "check_archive"]

ARCHIVE_LIMIT_BYTES = 16 * 2**30
"""Largest archive dyncal reads (16 GiB), and most bytes its entries may declare in all."""

PARSED_ENTRY_LIMIT_BYTES = 256 * 2**20
"""Largest entry dyncal parses itself (the program JSON, payload tables, sample inputs)."""


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


def _check_entry_names(entries: Mapping[str, Entry], refuse: Refuse) -> None:
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


def _parsed(data: memoryview, entry: Entry, refuse: Refuse) -> bytes:
    """The bytes of an entry dyncal parses (bounded by :data:`PARSED_ENTRY_LIMIT_BYTES`)."""
    if entry.size > PARSED_ENTRY_LIMIT_BYTES:
        refuse.malformed(
            f"entry {entry.name!r} has {entry.size} bytes, more than the {PARSED_ENTRY_LIMIT_BYTES} dyncal parses"
        )
    return contents(data, entry, refuse, keep=True)


def _json(data: memoryview, entry: Entry, refuse: Refuse) -> Any:
    try:
        return json.loads(_parsed(data, entry, refuse).decode("utf-8"))
    except (ValueError, RecursionError) as e:
        refuse.malformed(f"entry {entry.name!r} is not readable JSON: {describe(e, 120)}")


# --------------------------------------------------------------------------- payloads


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
    data: memoryview, entries: Mapping[str, Entry], table: str, folder: str, prefix: str, refuse: Refuse
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
        if not isinstance(fqn, str) or not FQN.fullmatch(fqn):
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


def _check_pickles(data: memoryview, entries: Mapping[str, Entry], refuse: Refuse) -> None:
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
                and all(isinstance(k, str) and IDENT.fullmatch(k) for k in value[1])
            )
            if not ok:
                refuse.unsupported(f"sample inputs {entry.name!r} that are not tensors passed by position or name")
        elif not isinstance(value, dict) or not all(isinstance(k, str) and FQN.fullmatch(k) for k in value):
            refuse.unsupported(f"a legacy payload {entry.name!r} that is not a state dict of tensors")


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
    refuse = Refuse(name)
    if len(view) > ARCHIVE_LIMIT_BYTES:
        refuse.malformed(f"{len(view)} bytes, more than the {ARCHIVE_LIMIT_BYTES} dyncal loads")
    entries = parse_zip(view, refuse, ARCHIVE_LIMIT_BYTES)
    _check_entry_names(entries, refuse)
    for entry in entries.values():  # sizes and CRCs of everything torch will read
        contents(view, entry, refuse, keep=False)
    _check_payload_table(view, entries, "data/weights/model_weights_config.json", "data/weights/", "weight_", refuse)
    _check_payload_table(
        view, entries, "data/constants/model_constants_config.json", "data/constants/", "tensor_", refuse
    )
    _check_pickles(view, entries, refuse)
    program = entries["models/model.json"]
    check_program(_json(view, program, refuse), program.name, refuse)
