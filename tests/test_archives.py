"""torch.export archives are parsed, not trusted; packages can be signed.

Every crafted archive here carries a payload that creates a marker file when it runs. The
``live`` fixture first shows, in a separate process, that ``torch.export.load`` (and the
loaded program's ``module()``) alone does run each payload; the tests then feed the same
kind of archive to every dyncal entry point and check that it is refused in one line and
that its marker never appears.
"""

from __future__ import annotations

import builtins
import dataclasses
import hashlib
import io
import json
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys
import threading
import uuid
import warnings
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sympy
import torch
from conftest import TESTS, assert_clean_error
from hypothesis import given, settings
from hypothesis import strategies as st

from dyncal import archives
from dyncal.analysis.package_runner import load_early_exit
from dyncal.archives import check_archive
from dyncal.archives.expressions import check_expression
from dyncal.archives.files import read_regular_file
from dyncal.artifacts.package import MANIFEST, SIGNATURE
from dyncal.artifacts.run import load_run
from dyncal.artifacts.thresholds import decision_fingerprint
from dyncal.errors import DyncalError, ModelError
from dyncal.models import load_exported, load_model
from dyncal.verbs.export import export_package

ROOT = TESTS.parent
Members = list[tuple[str, bytes]]


# --------------------------------------------------------------------------- crafting archives


class _TouchMarker:
    """Unpickles to ``open(marker, "w")``: proof that a payload ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return builtins.open, (self.marker, "w")


def _torch_pickle(marker: Path) -> bytes:
    buf = io.BytesIO()
    torch.save(_TouchMarker(marker), buf)
    return buf.getvalue()


def _members(path: Path) -> Members:
    with zipfile.ZipFile(path) as z:
        return [(info.filename, z.read(info.filename)) for info in z.infolist()]


def _write(path: Path, members: Members, compression: int = zipfile.ZIP_STORED) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate names some tests want
        with zipfile.ZipFile(path, "w", compression) as z:
            for name, data in members:
                z.writestr(name, data)
    return path


def _edit(members: Members, inner: str, fn: Callable[[bytes], bytes]) -> Members:
    return [(n, fn(d) if n.split("/", 1)[1] == inner else d) for n, d in members]


def _edit_program(members: Members, fn: Callable[[dict[str, Any]], None]) -> Members:
    def edit(data: bytes) -> bytes:
        doc = json.loads(data)
        fn(doc)
        return json.dumps(doc).encode()

    return _edit(members, "models/model.json", edit)


def _strings(doc: Any, fn: Callable[[str, str | None], str], key: str | None = None) -> Any:
    """``doc`` with every string (keys too) replaced by ``fn(value, key)``."""
    if isinstance(doc, dict):
        return {fn(k, None): _strings(v, fn, k) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_strings(v, fn, key) for v in doc]
    return fn(doc, key) if isinstance(doc, str) else doc


def _craft(kind: str, clean: Path, out: Path, marker: Path, modules: Path, copies: int = 1) -> Path:
    """A copy of ``clean`` with a payload of ``kind`` that creates ``marker`` when it runs.

    ``copies``: how many pickling tables precede the honest one in a "duplicate entry"
    archive. zipfile reads the last (honest) table; which one torch's reader finds depends
    on how it sorts equal names, so the ``live`` fixture tries a few and keeps one it reads.
    """
    members = _members(clean)
    root = members[0][0].split("/")[0]
    if kind == "opaque object constant":  # flagged as no pickle: torch unpickles every opaque_obj_* anyway
        payload = pickle.dumps(_TouchMarker(marker))
        meta = {"dtype": 2, "sizes": [{"as_int": len(payload)}], "strides": [{"as_int": 1}]}
        meta |= {"storage_offset": {"as_int": 0}, "requires_grad": False, "layout": 7}
        meta |= {"device": {"type": "cpu", "index": None}}
        table = {"config": {"obj": {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": False}}}
        table["config"]["obj"]["tensor_meta"] = meta
        members = _edit(members, "data/constants/model_constants_config.json", lambda _: json.dumps(table).encode())
        return _write(out, [*members, (f"{root}/data/constants/opaque_obj_0", payload)])
    if kind == "use_pickle weight":

        def pickled(data: bytes) -> bytes:
            doc = json.loads(data)
            doc["config"]["stage1.0.weight"]["use_pickle"] = True
            return json.dumps(doc).encode()

        members = _edit(members, "data/weights/model_weights_config.json", pickled)
        return _write(out, _edit(members, "data/weights/weight_0", lambda _: _torch_pickle(marker)))
    if kind == "sample inputs":
        return _write(out, _edit(members, "data/sample_inputs/model.pt", lambda _: _torch_pickle(marker)))
    if kind == "duplicate entry":  # zipfile reads the last table (no pickle), torch's reader the first
        table = f"{root}/data/weights/model_weights_config.json"
        honest = dict(members)[table]
        doc = json.loads(honest)
        doc["config"]["stage1.0.weight"]["use_pickle"] = True
        at = [n for n, _ in members].index(table)
        members = [*members[:at], *[(table, json.dumps(doc).encode())] * copies, *members[at + 1 :], (table, honest)]
        members = _edit(members, "data/weights/weight_0", lambda _: _torch_pickle(marker))
        with zipfile.ZipFile(_write(out, members)) as z:
            assert z.read(table) == honest  # what the zipfile-based check used to read
        return out
    if kind == "symbolic expression":  # sympy.sympify evaluates it while loading
        done = []

        def inject(value: str, key: str | None) -> str:
            if key == "expr_str" and not done:
                done.append(value)
                return re.sub(r"Symbol\('(s\d+)'", rf"Symbol(open('{marker}', 'w').close() or '\1'", value, count=1)
            return value

        return _write(out, _edit_program(members, lambda doc: doc.update(_strings(doc, inject))))
    if kind == "guard code":  # exec'd by module() and run on every call
        return _write(
            out, _edit_program(members, lambda doc: doc.update(guards_code=[f"open('{marker}', 'w') is not None"]))
        )
    if kind == "name in generated code":  # fx pastes names into the source it execs while loading
        evil = f"x=open('{marker}', 'w')"
        return _write(
            out, _edit_program(members, lambda doc: doc.update(_strings(doc, lambda v, k: evil if v == "x" else v)))
        )
    if kind == "pytree import":  # the spec's context imports a module by name
        module = f"dyncal_evil_{uuid.uuid4().hex[:8]}"
        (modules / f"{module}.py").write_text(
            f"import enum\nopen({str(marker)!r}, 'w').close()\nE = enum.Enum('E', 'A')\n"
        )

        def evil_spec(doc: dict[str, Any]) -> None:
            sig = doc["graph_module"]["module_call_graph"][0]["signature"]
            spec = json.loads(sig["in_spec"])
            spec[1]["children_spec"][1]["context"] = json.dumps([{"__enum__": 1, "fqn": f"{module}:E", "name": "A"}])
            sig["in_spec"] = json.dumps(spec)

        return _write(out, _edit_program(members, evil_spec))
    raise AssertionError(kind)


LIVE = (
    "opaque object constant",
    "use_pickle weight",
    "sample inputs",
    "duplicate entry",
    "symbolic expression",
    "guard code",
    "name in generated code",
    "pytree import",
)
WHY = {
    "opaque object constant": r"holds pickled data that loading would execute \(an object constant "
    r"'demo/data/constants/opaque_obj_0', which torch loads whatever its flags say\)",
    "use_pickle weight": r"holds pickled data .*\(stage1\.0\.weight in 'demo/data/weights/model_weights_config\.json",
    "sample inputs": r"holds pickled data .*\('demo/data/sample_inputs/model\.pt' needs the unrestricted unpickler\)",
    "duplicate entry": r"is not a well-formed torch\.export archive \(two entries named "
    r"'demo/data/weights/model_weights_config\.json'\)",
    "symbolic expression": r"holds a symbolic expression that loading would run as code \('demo/models/model\.json': "
    r"\"Symbol\(open\(.*, not shape arithmetic: unexpected",
    "guard code": r"holds guard code that loading would run as code \('demo/models/model\.json': \"open\(",
    "name in generated code": r"holds a name that loading would run as code \('demo/models/model\.json': "
    r"\"x=open\(.*not an identifier\)",
    "pytree import": r"holds a pytree context that loading would run as code \('demo/models/model\.json': "
    r"'\[\{\"__enum__\"",
}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DYNCAL_TEST_")}
    return {**env, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)]), "OMP_NUM_THREADS": "1", **extra}


@pytest.fixture(scope="module")
def clean(demo_pt2: Path) -> Path:
    """The demo model exported with a dynamic batch: a clean archive."""
    return demo_pt2


@pytest.fixture(scope="module")
def modules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder on sys.path (here and in the live check) where crafted specs find their module."""
    folder = tmp_path_factory.mktemp("modules")
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))


@pytest.fixture(scope="module")
def live(clean: Path, modules: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """Every crafted kind is live: torch.export.load, module() and one call run its payload, in another process.

    Returns how many pickling tables a "duplicate entry" archive needs for torch to read one.
    """
    folder = tmp_path_factory.mktemp("live")
    crafted = {
        kind: _craft(kind, clean, folder / f"{i}.pt2", folder / f"marker-{i}", modules) for i, kind in enumerate(LIVE)
    }
    tries = range(1, 5)
    for n in tries:
        crafted[f"duplicate {n}"] = _craft(
            "duplicate entry", clean, folder / f"dup{n}.pt2", folder / f"marker-dup{n}", modules, n
        )
    script = (
        "import sys, torch\n"
        "for p in sys.argv[1:]:\n"
        "    try:\n"
        "        torch.export.load(p).module()(torch.zeros(3, 1, 8, 8))\n"
        "    except Exception:\n"
        "        pass\n"
    )
    env = _env()
    env["PYTHONPATH"] += os.pathsep + str(modules)
    subprocess.run(
        [sys.executable, "-c", script, *map(str, crafted.values())], env=env, capture_output=True, timeout=300
    )
    copies = next((n for n in tries if (folder / f"marker-dup{n}").exists()), None)
    dead = [kind for i, kind in enumerate(LIVE) if not (folder / f"marker-{i}").exists() and kind != "duplicate entry"]
    assert not dead and copies is not None, f"crafted archives that do not run under torch alone: {dead}, {copies}"
    return {"copies": copies}


# --------------------------------------------------------------------------- the checker on each route


@pytest.mark.parametrize("kind", LIVE)
def test_each_live_payload_is_refused_before_torch_sees_it(live, clean, modules, tmp_path, kind):
    marker = tmp_path / "marker"
    evil = _craft(kind, clean, tmp_path / "evil.pt2", marker, modules, live["copies"])
    with pytest.raises(ModelError) as e:
        load_exported(evil)
    message = str(e.value)
    assert len(message.splitlines()) == 1
    assert re.search(WHY[kind], message), message
    assert message.startswith(f"'{evil}' ") and message.endswith(
        "re-export it with torch.export.save" + (" from plain tensors" if "pickled" in message else "")
    )
    assert not marker.exists()


def test_real_archives_pass_and_load_from_the_checked_bytes(clean, tmp_path):
    """Archives torch.export writes for the zoo models pass, derived dimensions and their guards included."""
    import models_zoo

    class Halves(torch.nn.Module):  # a derived batch dimension: guards_code and range keys like '2*s65'
        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            y = x.reshape(x.shape[0] // 2, 2, 4)
            return [y.sum(1), y.mean(1)]

    cases = [
        (models_zoo.perceiver_like(), (3, 8, 8), torch.export.Dim("b", min=1)),
        (models_zoo.AttentionExits().eval(), (5, 16), torch.export.Dim("b", min=1)),
        (models_zoo.BranchyNet().eval(), (2, 8, 8), torch.export.Dim("b", min=1)),
        (Halves(), (4,), 2 * torch.export.Dim("b", min=1)),
    ]
    for i, (model, shape, dim) in enumerate(cases):
        x = torch.randn(6, *shape)
        program = torch.export.export(model, (x,), dynamic_shapes=({0: dim},), strict=False)
        path = tmp_path / f"{i}.pt2"
        torch.export.save(program, path)
        doc = json.loads(dict(_members(path))[f"{i}/models/model.json"])
        if i == 3:
            assert doc["guards_code"] and any("*" in k for k in doc["range_constraints"])
        loaded = load_exported(path).module()
        with torch.no_grad():
            for a, b in zip(loaded(x), model(x), strict=True):
                torch.testing.assert_close(a, b)
    check_archive(clean.read_bytes(), "demo.pt2")


def _program_with(clean: Path, out: Path, fn: Callable[[dict[str, Any]], None]) -> Path:
    return _write(out, _edit_program(_members(clean), fn))


def _first_node(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["graph_module"]["graph"]["nodes"][0]


def _call(target: str, *inputs: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    def add(doc: dict[str, Any]) -> None:
        node = {"target": target, "inputs": list(inputs), "outputs": [{"as_none": True}], "metadata": {}, "name": "n"}
        doc["graph_module"]["graph"]["nodes"].insert(0, node)

    return add


def _arg(name: str, **arg: Any) -> dict[str, Any]:
    return {"name": name, "arg": arg, "kind": 1}


REFUSED_PROGRAMS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "a call by attribute path": (
        _call("torch.serialization.os.system", _arg("command", as_string="true")),
        r"a call of 'torch\.serialization\.os\.system' .*\(not an aten or prims operator\), which dyncal does not load",
    ),
    "a higher-order operator handed a callable": (
        _call(
            "torch.ops.higher_order.wrap_with_set_grad_enabled",
            _arg("enable", as_bool=True),
            _arg("fn", as_operator="torch.serialization.os.system"),
        ),
        r"an operator passed by name|torch\.ops\.higher_order",
    ),
    "an aten operator that writes files": (
        _call("torch.ops.aten.save.default", _arg("filename", as_string="/tmp/x")),
        r"a call of 'torch\.ops\.aten\.save\.default' .*\(it reads or writes files\)",
    ),
    "a carriage return in a stack trace": (
        lambda doc: _first_node(doc)["metadata"].update(stack_trace='File "a", line 1, in f\n  x\rimport os\r#'),
        r"holds a string that loading would run as code .*control characters",
    ),
    "a parameter path with a quote": (
        lambda doc: doc["graph_module"]["signature"]["input_specs"][0]["parameter"].update(parameter_name='a"b'),
        r"holds a module path that loading would run as code .*not a dotted name",
    ),
    "a symbol no range declares": (
        lambda doc: doc.update(range_constraints={}),
        r"holds a symbolic expression .*the symbol 's\d+', which range_constraints does not declare",
    ),
    "a range key that is not arithmetic": (
        lambda doc: doc.update(range_constraints={"s0; import os": {"min_val": 1, "max_val": None}}),
        r"holds a symbolic expression .*'s0; import os'",
    ),
    "a pytree type other than tuple, list or dict": (
        lambda doc: doc["graph_module"]["module_call_graph"][0]["signature"].update(
            out_spec=json.dumps([1, {"type": "collections.defaultdict", "context": "{}", "children_spec": []}])
        ),
        r"holds a pytree type that loading would run as code .*'collections\.defaultdict'",
    ),
    "a graph input that is a string": (
        lambda doc: doc["graph_module"]["graph"]["inputs"].append({"as_string": "x'; import os; '"}),
        r"a graph input that is not a tensor",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED_PROGRAMS))
def test_program_strings_that_torch_evaluates_or_resolves_are_refused(clean, tmp_path, case):
    edit, pattern = REFUSED_PROGRAMS[case]
    evil = _program_with(clean, tmp_path / "evil.pt2", edit)
    with pytest.raises(ModelError, match=pattern) as e:
        check_archive(evil.read_bytes(), "evil.pt2")
    assert len(str(e.value).splitlines()) == 1


def test_entries_torch_export_save_does_not_write_are_refused(clean, tmp_path):
    members = _members(clean)
    cases = {
        "aotinductor": ("demo/data/aotinductor/model/model.so", b"\x7fELF", r"compiled AOTInductor package"),
        "custom object": (
            "demo/data/constants/custom_obj_0",
            b"x",
            r"an object constant 'demo/data/constants/custom_obj_0'",
        ),
        "second program": ("demo/models/other.json", b"{}", r"a second program 'demo/models/other\.json'"),
        "other file": ("demo/evil.py", b"print(1)", r"an entry torch\.export\.save does not write for tensors"),
    }
    for name, data, pattern in cases.values():
        with pytest.raises(ModelError, match=pattern):
            check_archive(_write(tmp_path / "x.pt2", [*members, (name, data)]).read_bytes(), "x.pt2")


def test_payload_tables_describe_tensors_inside_their_entries(clean, tmp_path):
    """A table may not make torch allocate more than the archive holds (an empty record becomes torch.zeros(size))."""

    def huge(data: bytes) -> bytes:
        doc = json.loads(data)
        meta = doc["config"]["stage1.0.weight"]["tensor_meta"]
        meta["sizes"] = [{"as_int": 2**40}]
        meta["strides"] = [{"as_int": 1}]
        return json.dumps(doc).encode()

    members = _edit(_members(clean), "data/weights/model_weights_config.json", huge)
    evil = _write(tmp_path / "evil.pt2", members)
    pattern = r"stage1\.0\.weight in 'demo/data/weights/model_weights_config\.json' describes 4398046511104 bytes but"
    with pytest.raises(ModelError, match=pattern):
        check_archive(evil.read_bytes(), "evil.pt2")


def test_the_format_of_torch_before_2_7_is_refused(tmp_path):
    old = _write(tmp_path / "old.pt2", [("version", b"0.1"), ("serialized_exported_program.json", b"{}")])
    with pytest.raises(ModelError, match=r"holds 'version': the format torch\.export\.save wrote"):
        check_archive(old.read_bytes(), "old.pt2")


# --------------------------------------------------------------------------- the zip container


def _local(name: bytes, data: bytes, flags: int = 0) -> bytes:
    crc = zlib.crc32(data)
    return (
        struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, flags, 0, 0, 0, crc, len(data), len(data), len(name), 0) + name
    )


def _central(name: bytes, data: bytes, offset: int, flags: int = 0) -> bytes:
    fields = (b"PK\x01\x02", 20, 20, flags, 0, 0, 0, zlib.crc32(data), len(data), len(data), len(name), 0, 0, 0, 0, 0)
    return struct.pack("<4sHHHHHHIIIHHHHHII", *fields, offset) + name


def _end(count: int, cd_size: int, cd_offset: int) -> bytes:
    return struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, count, count, cd_size, cd_offset, 0)


def _raw_zip(members: Members, flags: int = 0) -> bytes:
    """A zip written by hand (stored entries), so that tests control every byte."""
    body, central = b"", b""
    for name, data in members:
        central += _central(name.encode(), data, len(body), flags)
        body += _local(name.encode(), data, flags) + data
    return body + central + _end(len(members), len(central), len(body))


def _overlapping(members: Members) -> bytes:
    """Entry 'inner' hidden inside the data of the entry before it: consistent headers, shared bytes."""
    (first, first_data), (second, second_data), *rest = members
    hidden = _local(second.encode(), second_data) + second_data
    body = _local(first.encode(), first_data + hidden) + first_data + hidden
    central = _central(first.encode(), first_data + hidden, 0)
    central += _central(second.encode(), second_data, 30 + len(first) + len(first_data))
    for name, data in rest:
        central += _central(name.encode(), data, len(body))
        body += _local(name.encode(), data) + data
    return body + central + _end(len(members), len(central), len(body))


def _bomb(members: Members) -> bytes:
    """A deflated entry that inflates to far more than it declares (a decompression bomb)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members:
            z.writestr(name, data)
        z.writestr("demo/extra/readme", b"\0" * 5_000_000, compress_type=zipfile.ZIP_DEFLATED)
    raw = bytearray(buf.getvalue())
    name = b"demo/extra/readme"
    for sig, field in ((b"PK\x01\x02", 24), (b"PK\x03\x04", 22)):  # declared size: 100 bytes
        at = raw.find(sig)
        while at != -1:
            header = 46 if sig == b"PK\x01\x02" else 30
            n = struct.unpack_from("<H", raw, at + (28 if sig == b"PK\x01\x02" else 26))[0]
            if raw[at + header : at + header + n] == name:
                struct.pack_into("<I", raw, at + field, 100)
            at = raw.find(sig, at + 4)
    return bytes(raw)


def _damaged(raw: bytes, at: int) -> bytes:
    flipped = bytearray(raw)
    flipped[at] ^= 0xFF
    return bytes(flipped)


def _case_twin(members: Members) -> Members:
    name, data = next((n, d) for n, d in members if n.endswith("models/model.json"))
    return [*members, (name.replace("model.json", "MODEL.json"), data)]


ZIP_CASES: dict[str, tuple[Callable[[Members, bytes], bytes], str]] = {
    "data after the archive": (lambda m, raw: raw + b"junk", r"does not end with the zip end record"),
    "data before the archive": (lambda m, raw: b"junk" + _raw_zip(m), r"central directory does not end where"),
    "data before a zip64 archive": (lambda m, raw: b"junk" + raw, r"a zip64 end record that is not right before"),
    "a comment": (lambda m, raw: raw[:-2] + b"\x02\x00hi", r"does not end with the zip end record"),
    "two entries with one name": (lambda m, raw: _raw_zip([*m, m[3]]), r"two entries named 'demo/"),
    "names that differ in case": (lambda m, raw: _raw_zip(_case_twin(m)), r"which torch's reader does not tell apart"),
    "overlapping entries": (lambda m, raw: _overlapping(m), r"entries 'demo/[^']*' and 'demo/[^']*' overlap"),
    "a damaged entry": (
        lambda m, raw: _damaged(_raw_zip(m), 30 + len(m[0][0]) + 5),
        r"entry 'demo/[^']*' fails its CRC",
    ),
    "an encrypted entry": (lambda m, raw: _raw_zip(m, flags=1), r"is encrypted"),
    "a decompression bomb": (lambda m, raw: _bomb(m), r"'demo/extra/readme' inflates to more than the 100 bytes"),
    "entries outside one root folder": (
        lambda m, raw: _raw_zip([("notes.txt", b"0"), *m]),
        r"entry 'notes.txt' is a folder or lies outside the archive's root folder",
    ),
    "not a zip at all": (lambda m, raw: b"\x80\x02}q\x00.", r"is not a torch\.export archive \(not a zip file\)"),
}


@pytest.mark.parametrize("case", sorted(ZIP_CASES))
def test_malformed_or_ambiguous_zips_are_refused(clean, case):
    build, pattern = ZIP_CASES[case]
    members = _members(clean)
    assert _raw_zip(members) and check_archive(_raw_zip(members), "ok.pt2") is None  # the hand-made zip is fine
    with pytest.raises(ModelError, match=pattern) as e:
        check_archive(build(members, clean.read_bytes()), "x.pt2")
    assert len(str(e.value).splitlines()) == 1


def test_sizes_are_bounded_before_anything_is_inflated(clean, tmp_path, monkeypatch):
    members = _members(clean)
    big = _write(tmp_path / "big.pt2", [*members, ("demo/extra/zeros", bytes(20_000_000))], zipfile.ZIP_DEFLATED)
    size = big.stat().st_size
    assert size < 10_000_000  # the file is small; what it declares is not
    monkeypatch.setattr(archives, "ARCHIVE_LIMIT_BYTES", 10_000_000)
    with pytest.raises(ModelError, match=r"its entries declare \d+ bytes, more than the 10000000 dyncal loads"):
        load_exported(big)
    monkeypatch.setattr(archives, "ARCHIVE_LIMIT_BYTES", size - 1)
    with pytest.raises(ModelError, match=rf"has {size} bytes, more than the {size - 1} dyncal reads"):
        load_exported(big)
    monkeypatch.undo()
    monkeypatch.setattr(archives, "PARSED_ENTRY_LIMIT_BYTES", 1000)
    with pytest.raises(ModelError, match=r"entry 'demo/[^']*' has \d+ bytes, more than the 1000 dyncal parses"):
        check_archive(clean.read_bytes(), "demo.pt2")


# --------------------------------------------------------------------------- the expression grammar


S = [sympy.Symbol(f"s{i}", positive=True, integer=True) for i in (0, 1, 77)]


def _sympy_expressions() -> st.SearchStrategy[sympy.Expr]:
    from torch.utils._sympy.functions import CeilToInt, FloorDiv, Mod, PythonMod

    leaves = st.one_of(st.sampled_from(S), st.integers(-64, 64).map(sympy.Integer))

    def grow(inner: st.SearchStrategy[sympy.Expr]) -> st.SearchStrategy[sympy.Expr]:
        pairs = st.tuples(inner, inner)
        return st.one_of(
            pairs.map(lambda p: p[0] + p[1]),
            pairs.map(lambda p: p[0] * p[1]),
            pairs.map(lambda p: sympy.Max(*p)),
            pairs.map(lambda p: sympy.Min(*p)),
            st.tuples(inner, st.sampled_from(S)).map(lambda p: FloorDiv(*p)),
            st.tuples(inner, st.sampled_from(S)).map(lambda p: Mod(*p)),
            st.tuples(inner, st.sampled_from(S)).map(lambda p: PythonMod(*p)),
            st.sampled_from(S).map(lambda s: CeilToInt(s / 3)),
            st.tuples(st.sampled_from(S), st.integers(0, 4)).map(lambda p: p[0] ** p[1]),
        )

    return st.recursive(leaves, grow, max_leaves=8)


@settings(max_examples=150, deadline=None)
@given(_sympy_expressions(), st.sampled_from(["srepr", "str", "relation"]))
def test_every_expression_torch_prints_is_accepted_and_means_the_same(expr, form):
    """What torch.export writes (sympy's srepr; str in older releases) passes; srepr sympifies back to itself."""
    import torch.utils._sympy.functions as fns

    if form == "relation":
        expr = sympy.Ne(expr, 1) if expr.free_symbols else sympy.Lt(S[0], 3)
    text = str(expr) if form == "str" else sympy.srepr(expr)
    check_expression(text, symbols=frozenset({"s0", "s1", "s77"}))
    names = {n: getattr(fns, n) for n in ("FloorDiv", "Mod", "PythonMod", "CeilToInt")}
    names |= {s.name: s for s in S}
    if form != "str":  # str() is not a faithful printer (FloorDiv prints as //); torch writes srepr
        assert sympy.sympify(text, locals=names) == expr


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("__import__('os').system('ls')", r"the call __import__"),
        ("s0.__class__", r"unexpected '\.__class__'|expected"),
        ("Symbol('s0'); import os", r"unexpected ';"),
        ("lambda: 1", r"unexpected ': 1'"),
        ("eval('1')", r"the call eval"),
        ("Symbol('os', positive=True)", r"does not name a shape symbol"),
        ("Symbol('s0', cls=1)", r"the keyword cls="),
        ("s5 + 1", r"the symbol 's5', which range_constraints does not declare"),
        ("2**2**2", r"unexpected '\*\*'"),
        ("Pow(Pow(s0, 64), 64)", r"a power of a power"),
        ("s0**100000", r"the exponent 100000"),
        ("1" * 40, r"more than 20 digits"),
        ("(" * 70 + "s0" + ")" * 70, r"nested deeper than 60"),
        ("Integer(s0)", r"expected num"),
        ("'s0'", r"unexpected"),
        ("", r"empty"),
    ],
)
def test_expressions_outside_the_grammar_are_refused(text, why):
    with pytest.raises(ValueError, match=why):
        check_expression(text, symbols=frozenset({"s0"}))


def test_guard_grammar_reads_input_sizes_only():
    ok = "(4*L['x'].size()[0]) == (8*(L['x'].size()[0] // 2)) and not L['x'].size()[0] != 6 or math.floor(2) >= 1"
    check_expression(ok, mode="guard")
    for bad, why in [
        ("L['x'].size()[0] == __import__('os').getpid()", "__import__"),
        ("L['x'].__class__", r"the method \.__class__"),
        ("L['x'); import os; ('']", "unexpected"),
        ("math.os", "math.os"),
        ("s0 > 1", "the name 's0'"),
        ("torch.load('x') == 1", "torch.load"),
        ("torch.sym_max.__globals__", r"expected \( at"),
    ]:
        with pytest.raises(ValueError, match=why):
            check_expression(bad, mode="guard")


def test_guards_of_attention_reshapes_pass():
    """nn.TransformerEncoderLayer with a padding mask, exported with a dynamic length, guards with torch.sym_max."""
    guard = "(32*L['ids'].size()[0]) != torch.sym_max(1, (8*L['ids'].size()[0]) // L['mask'].size()[1])"
    check_expression(guard, mode="guard")
    check_expression("torch.sym_min(L['x'].size()[1], 64) >= 1", mode="guard")
    with pytest.raises(ValueError, match="the name 'torch'"):
        check_expression("torch.sym_max(s0, 1)", symbols=frozenset({"s0"}))


# --------------------------------------------------------------------------- files that are not files


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _unblocking(fifo: Path) -> threading.Timer:
    """If a regression blocks opening ``fifo`` for reading, open it for writing after a while: a failure, not a hang."""

    def release() -> None:
        with open(fifo, "wb"):
            pass

    timer = threading.Timer(60, release)
    timer.daemon = True
    timer.start()
    return timer


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory"])
def test_model_archives_that_are_not_regular_files_are_refused_unread(cli, tmp_path, kind):
    path = tmp_path / "model.pt2"
    if kind == "fifo":
        _fifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    else:
        path.mkdir()
    words = {"fifo": "a named pipe", "dev-zero": "a character device", "directory": "a directory"}[kind]
    timer = _unblocking(path) if kind == "fifo" else None
    try:
        res = cli("collect", "--model", path, "--data", "dyncal.demo:validation", "--out", tmp_path / "run")
    finally:
        if timer is not None:
            timer.cancel()
    assert_clean_error(res, rf"the model archive: '{path}' is {words}, not a regular file")
    assert not (tmp_path / "run").exists()


def test_read_regular_file_bounds_and_names_what_it_refuses(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"12345")
    assert read_regular_file(f, what="x", limit=5) == b"12345"
    with pytest.raises(DyncalError, match=r"x: '.*f' has 5 bytes, more than the 4 dyncal reads"):
        read_regular_file(f, what="x", limit=4)
    with pytest.raises(DyncalError, match=r"x: no such file"):
        read_regular_file(tmp_path / "missing", what="x", limit=4)
    (tmp_path / "link").symlink_to(f)  # a link to a regular file is read like the file
    assert read_regular_file(tmp_path / "link", what="x", limit=5) == b"12345"


def test_a_weights_file_that_is_a_device_is_refused(cli, tmp_path):
    zero = tmp_path / "w.pth"
    zero.symlink_to("/dev/zero")
    res = cli(
        "collect", "--model", "dyncal.demo:pretrained", "--weights", zero, "--data", "dyncal.demo:validation",
        "--out", tmp_path / "run",
    )  # fmt: skip
    assert_clean_error(res, r"--weights: '.*w\.pth' is not a regular file")


# --------------------------------------------------------------------------- every entry point


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small demo run, profiled for MACs, solved at 0.5x and exported (unsigned)."""
    from dyncal.calibrate.solvers import solve_run
    from dyncal.data import load_dataset
    from dyncal.demo import WEIGHTS
    from dyncal.verbs.collect import collect_run
    from dyncal.verbs.demo import DEMO_DATA, DEMO_MODEL
    from dyncal.verbs.profile import ProfileOptions, profile_run

    tmp = tmp_path_factory.mktemp("pipeline")
    run = tmp / "run"
    collect_run(load_model(DEMO_MODEL, weights=WEIGHTS), load_dataset(DEMO_DATA), run, data_spec=DEMO_DATA, limit=96)
    profile_run(run, options=ProfileOptions(latency=False))
    th = solve_run(load_run(run), "0.5x")
    (tmp / "th.json").write_text(json.dumps(th.to_dict()))
    export_package(run, th, tmp / "pkg")
    return {"tmp": tmp, "run": run, "th": tmp / "th.json", "pkg": tmp / "pkg"}


def _package_with(pkg: Path, dst: Path, files: dict[str, bytes | Callable[[Path], None]] | None = None) -> Path:
    """A copy of ``pkg`` with files replaced (bytes re-hashed in the manifest; a callable makes the file itself)."""
    shutil.copytree(pkg, dst)
    doc = json.loads((dst / MANIFEST).read_text())
    for name, new in (files or {}).items():
        (dst / name).unlink()
        if callable(new):
            new(dst / name)
        else:
            (dst / name).write_bytes(new)
            doc["files"][name] = hashlib.sha256(new).hexdigest()
    (dst / MANIFEST).write_text(json.dumps(doc))
    return dst


@pytest.mark.parametrize("kind", ["symbolic expression", "opaque object constant"])
def test_every_entry_point_refuses_the_archive_and_never_runs_it(live, pipeline, clean, modules, cli, tmp_path, kind):
    marker = tmp_path / "marker"
    evil = _craft(kind, clean, tmp_path / "evil.pt2", marker, modules)
    run, th = pipeline["run"], pipeline["th"]
    why = WHY[kind]
    model = ["--model", evil]
    calls = {
        "collect": ("collect", *model, "--data", "dyncal.demo:validation", "--limit", 8, "--out", tmp_path / "run"),
        "profile": ("profile", run, *model, "--macs-only"),
        "verify": ("verify", run, "--thresholds", th, *model, "--max-seconds", 1, "--limit", 8),
        "export": ("export", run, "--thresholds", th, *model, "--out", tmp_path / "pkg"),
    }
    before = (run / "run.json").read_bytes()
    for verb, args in calls.items():
        res = cli(*args)
        assert_clean_error(res, rf"'{re.escape(str(evil))}' {why}")
        assert not marker.exists(), verb
    assert (run / "run.json").read_bytes() == before
    assert not (tmp_path / "run").exists() and not (tmp_path / "pkg").exists()
    assert not (tmp_path / "pkg.partial").exists()

    # the same payload as a package stage (stage 2 replaced by a re-rooted copy, the manifest re-hashed)
    stage = _write(tmp_path / "stage.pt2", [("archive/" + n.split("/", 1)[1], d) for n, d in _members(evil)])
    pkg = _package_with(pipeline["pkg"], tmp_path / "evil-pkg", {"stage_2.pt2": stage.read_bytes()})
    stage_why = WHY[kind].replace("'demo/", "'archive/")
    res = cli("verify", run, "--thresholds", th, "--package", pkg, "--max-seconds", 1, "--limit", 8)
    assert_clean_error(res, rf"'{re.escape(str(pkg / 'stage_2.pt2'))}' {stage_why}")
    with pytest.raises(ModelError, match=stage_why) as e:
        load_early_exit(pkg)
    assert len(str(e.value).splitlines()) == 1
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory", "duplicate entry"])
def test_a_package_stage_that_is_not_an_archive_file_is_refused(live, pipeline, clean, modules, cli, tmp_path, kind):
    marker = tmp_path / "marker"
    if kind == "duplicate entry":
        evil = _craft(kind, clean, tmp_path / "evil.pt2", marker, modules, live["copies"])
        stage: bytes | Callable[[Path], None] = _write(
            tmp_path / "stage.pt2", [("archive/" + n.split("/", 1)[1], d) for n, d in _members(evil)]
        ).read_bytes()
        pattern = r"two entries named 'archive/data/weights/model_weights_config\.json'"
    else:
        words = {"fifo": "a named pipe", "dev-zero": "a character device", "directory": "a directory"}[kind]
        pattern = rf"package stage 3: '.*stage_3\.pt2' is {words}, not a regular file"
        stage = {
            "fifo": _fifo,
            "dev-zero": lambda p: p.symlink_to("/dev/zero"),
            "directory": lambda p: p.mkdir(),
        }[kind]
    name = "stage_2.pt2" if kind == "duplicate entry" else "stage_3.pt2"
    pkg = _package_with(pipeline["pkg"], tmp_path / "pkg", {name: stage})
    timer = _unblocking(pkg / name) if kind == "fifo" else None
    try:
        with pytest.raises(DyncalError, match=pattern) as e:
            load_early_exit(pkg)
        assert len(str(e.value).splitlines()) == 1
        res = cli("verify", pipeline["run"], "--thresholds", pipeline["th"], "--package", pkg, "--max-seconds", 1)
        assert_clean_error(res, pattern)
    finally:
        if timer is not None:
            timer.cancel()
    assert not marker.exists()


# --------------------------------------------------------------------------- signed packages


def _key(path: Path, byte: int = 7) -> Path:
    path.write_text(bytes([byte]).hex() * 32 + "\n")  # 64 hex digits, as secrets.token_hex(32) prints
    return path


@pytest.fixture(scope="module")
def signed(pipeline: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The pipeline's run exported again, signed with a key, through the CLI; what was in the folder at publish."""
    from typer.testing import CliRunner

    import dyncal.verbs.export as export_module
    from dyncal.cli import app

    tmp = tmp_path_factory.mktemp("signed")
    key = _key(tmp / "package.key")
    seen: dict[str, list[str]] = {}
    publish = export_module.publish_dir

    def watching(partial: Path, out: Path, *args: Any, **kwargs: Any) -> Any:
        seen[str(out)] = sorted(p.name for p in Path(partial).iterdir())
        return publish(partial, out, *args, **kwargs)

    export_module.publish_dir = watching  # type: ignore[assignment]
    try:
        res = CliRunner().invoke(
            app,
            ["export", str(pipeline["run"]), "--thresholds", str(pipeline["th"]), "--out", str(tmp / "pkg"),
             "--sign-key", str(key), "--json"],
        )  # fmt: skip
    finally:
        export_module.publish_dir = publish  # type: ignore[assignment]
    assert res.exit_code == 0, res.output
    return {"pkg": tmp / "pkg", "key": key, "doc": json.loads(res.stdout), "seen": seen, "tmp": tmp}


def test_export_signs_the_manifest_inside_the_partial_folder(signed):
    pkg, doc = signed["pkg"], signed["doc"]
    sig = json.loads((pkg / SIGNATURE).read_text())
    manifest = (pkg / MANIFEST).read_bytes()
    assert sig["algorithm"] == "hmac-sha256" and sig["manifest_sha256"] == hashlib.sha256(manifest).hexdigest()
    assert doc["signature"] == {"algorithm": "hmac-sha256", "key_id": sig["key_id"]}
    assert SIGNATURE not in json.loads(manifest)["files"]  # the signature is not among the files it signs
    assert signed["seen"][str(pkg)] == sorted(
        [MANIFEST, SIGNATURE, "stage_1.pt2", "stage_2.pt2", "stage_3.pt2", "stage_4.pt2"]
    )
    runner = load_early_exit(pkg, verify_key=signed["key"])
    assert runner.key_id == sig["key_id"]
    assert load_early_exit(pkg).key_id is None  # without a key: hashes only
    assert load_early_exit(pkg, verify_key=signed["key"].read_text().strip().encode()).key_id == sig["key_id"]


def _forged(pkg: Path, dst: Path) -> Path:
    """A consistent forgery: other thresholds, their fingerprint, the manifest rewritten to match."""
    shutil.copytree(pkg, dst)
    m = json.loads((dst / MANIFEST).read_text())
    m["thresholds"] = [0.0, *m["thresholds"][1:]]
    m["decision_fingerprint"] = decision_fingerprint(m["score"], m["temperatures"], m["thresholds"])
    (dst / MANIFEST).write_text(json.dumps(m, indent=2))
    return dst


def test_a_signature_catches_the_forgery_hashes_cannot(signed, pipeline, cli, tmp_path):
    key = signed["key"]
    forged = _forged(signed["pkg"], tmp_path / "forged")
    assert load_early_exit(forged).manifest.thresholds[0] == 0.0  # hashes alone accept a consistent forgery
    with pytest.raises(
        DyncalError, match=r"does not verify: the manifest was changed after it was signed; do not load it"
    ):
        load_early_exit(forged, verify_key=key)
    other = _key(tmp_path / "other.key", byte=9)
    with pytest.raises(
        DyncalError, match=r"does not verify: it was signed with another key \(key id [0-9a-f]{16}, `verify_key` is"
    ):
        load_early_exit(signed["pkg"], verify_key=other)
    with pytest.raises(
        DyncalError, match=rf"package '{pipeline['pkg']}' is not signed \(no {SIGNATURE}\) but `verify_key`"
    ):
        load_early_exit(pipeline["pkg"], verify_key=key)
    base = [
        "verify",
        pipeline["run"],
        "--thresholds",
        pipeline["th"],
        "--max-seconds",
        1,
        "--repeats",
        1,
        "--limit",
        16,
    ]
    assert_clean_error(
        cli(*base, "--package", forged, "--verify-key", key), r"the manifest was changed after it was signed"
    )
    assert_clean_error(
        cli(*base, "--package", pipeline["pkg"], "--verify-key", key), r"is not signed .* but --verify-key"
    )
    assert_clean_error(
        cli(*base, "--verify-key", key), r"--verify-key checks the signature of a --package; pass one too"
    )
    ok = cli(*base, "--package", signed["pkg"], "--verify-key", key, "--json")
    assert ok.exit_code == 0, ok.output


def test_keys_are_regular_files_of_at_least_32_bytes(pipeline, cli, tmp_path):
    short = tmp_path / "short.key"
    short.write_text("secret\n")
    res = cli("export", pipeline["run"], "--thresholds", pipeline["th"], "--out", tmp_path / "pkg", "--sign-key", short)
    assert_clean_error(res, r"--sign-key: key file '.*short\.key' holds 6 bytes; a signing key needs at least 32")
    assert not (tmp_path / "pkg").exists() and not (tmp_path / "pkg.partial").exists()
    fifo = _fifo(tmp_path / "key.fifo")
    timer = _unblocking(fifo)
    try:
        with pytest.raises(DyncalError, match=r"`verify_key`: '.*key\.fifo' is a named pipe, not a regular file"):
            load_early_exit(pipeline["pkg"], verify_key=fifo)
    finally:
        timer.cancel()
    with pytest.raises(DyncalError, match=r"the key given holds 3 bytes"):
        load_early_exit(pipeline["pkg"], verify_key=b"abc")


def test_signature_is_checked_before_the_manifest_is_parsed(signed, tmp_path):
    pkg = tmp_path / "pkg"
    shutil.copytree(signed["pkg"], pkg)
    (pkg / MANIFEST).write_text("{ not json")
    with pytest.raises(DyncalError, match=r"the manifest was changed after it was signed"):
        load_early_exit(pkg, verify_key=signed["key"])
    with pytest.raises(DyncalError, match=r"manifest\.json' is not a dyncal package manifest: invalid JSON"):
        load_early_exit(pkg)


def test_export_result_without_a_key_says_unsigned(pipeline):
    from dyncal.artifacts.package import read_manifest
    from dyncal.verbs.export import ExportResult

    manifest = read_manifest(pipeline["pkg"])
    result = ExportResult(pipeline["pkg"], manifest, "0" * 64, 1, 0.0)
    assert result.to_dict()["signature"] is None
    assert not (pipeline["pkg"] / SIGNATURE).exists()
    assert dataclasses.replace(result, key_id="ab").to_dict()["signature"] == {
        "algorithm": "hmac-sha256",
        "key_id": "ab",
    }
