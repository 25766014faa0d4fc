"""Integrity: a damaged run or thresholds file is refused in one line, and nothing the user owns is lost.

Every verb that reads a run is fed corrupted run directories (and verify corrupted
thresholds files); each must exit with status 1, print exactly one ``error: ...`` line and
no traceback, and change no file. Output verbs must never replace a file dyncal did not
write, nor write into a run directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import TESTS, assert_clean_error
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from synthetic_profiles import synthetic_profile
from typer.testing import CliRunner

from dyncal.artifacts.costs import CostTable
from dyncal.artifacts.run import load_run, store_costs
from dyncal.artifacts.run_import import import_arrays
from dyncal.artifacts.verify import ModelIdentity
from dyncal.cli import app
from dyncal.errors import DyncalError, RunError

N, K, C = 60, 3, 4
HYPOTHESIS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _arrays(seed: int, n: int = N, k: int = K, c: int = C) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    logits = rng.normal(size=(n, k, c)).astype(np.float32)
    for j in range(k):  # later exits see the label more clearly
        logits[np.arange(n), j, labels] += 1.0 + j
    return logits, labels


def make_run(out: Path, seed: int = 0, k: int = K) -> Path:
    """A small imported run with MACs and one latency entry, so every cost field is present."""
    logits, labels = _arrays(seed, k=k)
    run = import_arrays(logits, labels, out, macs=[1e6 * (j + 1) for j in range(k)])
    stage = tuple((0.1, 0.12, 0.11) for _ in range(k))
    prof = synthetic_profile("cpu", 1, stage, (0.01, 0.01, 0.01), (0.5, 0.5, 0.5), 1, "test cpu")
    store_costs(run, CostTable(latency={prof.key: prof}))
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a good run ``run`` and its thresholds ``t.json``."""
    d = tmp_path_factory.mktemp("integrity")
    make_run(d / "run")
    res = invoke("solve", d / "run", "--budget", "0.6x", "--out", d / "t.json")
    assert res.exit_code == 0, res.output
    return d


def invoke(*args: object) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def tree_hash(*roots: Path) -> dict[str, str]:
    """SHA-256 of every file under ``roots`` (FIFOs recorded as such, never opened)."""
    out: dict[str, str] = {}
    for root in roots:
        for p in sorted(root.rglob("*")) if root.is_dir() else [root]:
            if p.is_fifo():
                out[str(p)] = "fifo"
            elif p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture
def fifo_guard() -> Iterator[Callable[[Path], bool]]:
    """``watch(fifo)``: after the test, whether anything opened ``fifo`` for reading.

    A thread keeps trying to open the FIFO's write end without blocking; that succeeds only
    while a reader is blocked on it, which it then releases (so a regression fails, never hangs).
    """
    stop = threading.Event()
    opened: dict[Path, bool] = {}

    def watch(path: Path) -> None:
        while not stop.is_set():
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                time.sleep(0.01)
                continue
            opened[path] = True
            os.close(fd)

    threads: list[threading.Thread] = []

    def start(path: Path) -> bool:
        opened[path] = False
        t = threading.Thread(target=watch, args=(path,), daemon=True)
        t.start()
        threads.append(t)
        return True

    yield start
    stop.set()
    for t in threads:
        t.join()
    assert not any(opened.values()), f"a FIFO was opened: {opened}"


# --------------------------------------------------------------------------- corrupted runs


def _meta(run: Path) -> dict[str, Any]:
    return json.loads((run / "run.json").read_text())


def _set_meta(run: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    doc = _meta(run)
    edit(doc)
    (run / "run.json").write_text(json.dumps(doc))


def _save(run: Path, name: str, arr: np.ndarray) -> None:
    np.save(run / name, arr)


def _logits(run: Path) -> np.ndarray:
    return np.load(run / "logits.npy")


def _labels(run: Path) -> np.ndarray:
    return np.load(run / "labels.npy")


def _with_nan(run: Path) -> None:
    z = _logits(run)
    z[3, 1, 2], z[7, 0, 0], z[59, 2, 3] = np.nan, np.inf, -np.inf
    _save(run, "logits.npy", z)


def _labels_out_of_range(run: Path) -> None:
    y = _labels(run)
    y[0], y[5] = 57, -1
    _save(run, "labels.npy", y)


def _fifo(name: str) -> Callable[[Path], None]:
    def make(run: Path) -> None:
        (run / name).unlink()
        os.mkfifo(run / name)

    return make


def _deep(run: Path) -> None:
    text = (run / "run.json").read_text()
    (run / "run.json").write_text(text.replace('"source"', '"x": ' + "[" * 5000 + "]" * 5000 + ', "source"', 1))


def _macs(value: Any) -> Callable[[Path], None]:
    return lambda run: _set_meta(run, lambda d: d["costs"].__setitem__("macs", value))


def _latency(key: str, value: Any) -> Callable[[Path], None]:
    return lambda run: _set_meta(run, lambda d: d["costs"]["latency"]["cpu/b1"].__setitem__(key, value))


CORRUPTIONS: dict[str, tuple[Callable[[Path], None], str]] = {
    "logits empty": (lambda r: (r / "logits.npy").write_bytes(b""), r"logits\.npy is empty \(0 bytes\)"),
    "logits fifo": (_fifo("logits.npy"), r"logits\.npy is a named pipe"),
    "run.json fifo": (_fifo("run.json"), r"run\.json' is a named pipe"),
    "logits folder": (
        lambda r: ((r / "logits.npy").unlink(), (r / "logits.npy").mkdir()),
        r"logits\.npy is a folder",
    ),
    "logits truncated": (
        lambda r: (r / "logits.npy").write_bytes((r / "logits.npy").read_bytes()[:-100]),
        r"logits\.npy is not a whole \.npy array",
    ),
    "logits text": (lambda r: (r / "logits.npy").write_text("hello"), r"logits\.npy is not a whole \.npy"),
    "logits npz": (lambda r: np.savez(r / "x.npz", a=1) or (r / "x.npz").rename(r / "logits.npy"), r"\.npz archive"),
    "logits int": (lambda r: _save(r, "logits.npy", _logits(r).astype(np.int32)), r"int32 values, not floating"),
    "logits complex": (lambda r: _save(r, "logits.npy", _logits(r).astype(np.complex64)), r"not floating"),
    "logits shape": (lambda r: _save(r, "logits.npy", _logits(r)[:, :2]), r"shape \(60, 2, 4\) but run\.json"),
    "logits NaN": (_with_nan, r"logits\.npy holds 3 NaN or infinite values"),
    "labels float": (
        lambda r: _save(r, "labels.npy", _labels(r).astype(np.float64)),
        r"labels\.npy holds float64 values, not integers",
    ),
    "labels bool": (lambda r: _save(r, "labels.npy", _labels(r) > 1), r"labels\.npy holds bool values"),
    "labels out of range": (_labels_out_of_range, r"2 of 60 labels outside \[0, 4\)"),
    "labels object": (
        lambda r: np.save(r / "labels.npy", np.array([None] * N, dtype=object), allow_pickle=True),
        r"labels\.npy is not a whole \.npy array",
    ),
    "indices missing": (lambda r: (r / "indices.npy").unlink(), r"indices\.npy is missing"),
    "run.json utf-8": (lambda r: (r / "run.json").write_bytes(b'{"schema": "\xff\xfe"}'), r"not UTF-8"),
    "run.json 5000 digits": (
        lambda r: (r / "run.json").write_text('{"n": ' + "9" * 5000 + "}"),
        r"invalid JSON",
    ),
    "run.json deep": (_deep, r"nests deeper than 32 levels"),
    "run.json list": (lambda r: (r / "run.json").write_text("[1, 2]"), r"holds a list, not a JSON object"),
    "n string": (lambda r: _set_meta(r, lambda d: d.__setitem__("n", "60")), r"field 'n' must be an integer"),
    "k float": (lambda r: _set_meta(r, lambda d: d.__setitem__("k", 3.0)), r"field 'k' must be an integer"),
    "c huge": (lambda r: _set_meta(r, lambda d: d.__setitem__("c", 10**300)), r"labels\.npy|logits\.npy has shape"),
    "schema newer": (lambda r: _set_meta(r, lambda d: d.__setitem__("schema_version", 99)), r"upgrade dyncal"),
    "schema bool": (lambda r: _set_meta(r, lambda d: d.__setitem__("schema_version", True)), r"schema_version"),
    "schema other": (lambda r: _set_meta(r, lambda d: d.__setitem__("schema", "x")), r"not a dyncal run document"),
    "incomplete": (lambda r: _set_meta(r, lambda d: d.__setitem__("complete", False)), r"marks the run incomplete"),
    "fingerprint": (lambda r: _set_meta(r, lambda d: d.__setitem__("fingerprint", 5)), r"field 'fingerprint'"),
    "files": (lambda r: _set_meta(r, lambda d: d.__setitem__("files", {"logits": "x.npy"})), r"field 'files'"),
    "provenance list": (lambda r: _set_meta(r, lambda d: d.__setitem__("provenance", [])), r"'provenance' must be"),
    "provenance model": (
        lambda r: _set_meta(r, lambda d: d["provenance"].__setitem__("model", 3)),
        r"'provenance\.model' must be a string",
    ),
    "versions": (
        lambda r: _set_meta(r, lambda d: d["provenance"].__setitem__("versions", {"torch": 2})),
        r"provenance\.versions\.torch",
    ),
    "costs list": (lambda r: _set_meta(r, lambda d: d.__setitem__("costs", [1])), r"'costs' must be an object"),
    "macs short": (_macs([1e6, 2e6]), r"'costs\.macs' must have 3 entries, got 2"),
    "macs text": (_macs([1e6, "2e6", 3e6]), r"'costs\.macs\[1\]' must be a positive finite number"),
    "macs negative": (_macs([-1e6, 2e6, 3e6]), r"'costs\.macs\[0\]' must be a positive"),
    "macs decreasing": (_macs([3e6, 2e6, 4e6]), r"'costs\.macs' must be cumulative"),
    "macs NaN": (_macs([1e6, float("nan"), 3e6]), r"'costs\.macs\[1\]'"),
    "macs huge int": (_macs([1, 2, 10**400]), r"'costs\.macs\[2\]'"),
    "macs nested": (_macs([[1], [2], [3]]), r"'costs\.macs\[0\]'"),
    "stage_macs": (
        lambda r: _set_meta(r, lambda d: d["costs"].__setitem__("stage_macs", [1, -2, 3])),
        r"'costs\.stage_macs\[1\]' must be a non-negative",
    ),
    "unsupported ops": (
        lambda r: _set_meta(r, lambda d: d["costs"].__setitem__("unsupported_ops", [{"stage": 1}])),
        r"'costs\.unsupported_ops\[0\]\.op' is missing",
    ),
    "latency stages": (_latency("stage_ms", [[0.1], [0.2]]), r"stage_ms' must have one entry per exit \(K=3\)"),
    "latency empty stage": (_latency("stage_ms", [[0.1], [], [0.2]]), r"stage_ms\[1\]' must have at least 1"),
    "latency negative": (_latency("stage_ms", [[0.1], [-0.2], [0.2]]), r"stage_ms\[1\]\[0\]'"),
    "latency batch": (_latency("batch_size", 0), r"batch_size' must be an integer >= 1"),
    "latency key": (_latency("batch_size", 32), r"holds device 'cpu' at batch 32"),
    "latency threads": (_latency("threads", "four"), r"threads' must be an integer"),
    "latency device": (_latency("device", None), r"device' must be a string, got null"),
}


@pytest.fixture(scope="module")
def corrupted(base: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One damaged copy of the base run per entry of CORRUPTIONS."""
    d = tmp_path_factory.mktemp("corrupted")
    out = {}
    for i, (name, (damage, _)) in enumerate(CORRUPTIONS.items()):
        run = d / f"run{i}"
        shutil.copytree(base / "run", run)
        damage(run)
        out[name] = run
    return out


def _verb_args(verb: str, run: Path, base: Path, out_dir: Path) -> list[object]:
    return {
        "info": ["info", run],
        "solve": ["solve", run, "--budget", "0.6x", "--out", out_dir / "t.json"],
        "frontier": ["frontier", run, "--out", out_dir / "f.csv", "--n-budgets", "3"],
        "report": ["report", run, "--out", out_dir / "r.pdf"],
        "plot": ["plot", run, "--kind", "exits", "--out", out_dir / "p.png"],
        "verify": ["verify", run, "--thresholds", base / "t.json"],
        "profile": ["profile", run, "--macs-only"],
    }[verb]


VERBS = ("info", "solve", "frontier", "report", "plot", "verify", "profile")
# every verb opens runs through load_run: info meets every corruption, the others one of each kind
SAMPLE = (
    "logits empty",
    "logits fifo",
    "run.json fifo",
    "logits truncated",
    "logits int",
    "logits NaN",
    "labels float",
    "labels out of range",
    "run.json 5000 digits",
    "run.json deep",
    "n string",
    "schema newer",
    "provenance model",
    "macs short",
    "macs negative",
    "latency stages",
)
CASES = [("info", name) for name in CORRUPTIONS] + [(verb, name) for verb in VERBS[1:] for name in SAMPLE]


@pytest.mark.parametrize(("verb", "name"), CASES)
def test_every_verb_refuses_a_corrupted_run(verb, name, corrupted, base, tmp_path, fifo_guard):
    run = corrupted[name]
    for p in run.iterdir():
        if p.is_fifo():
            fifo_guard(p)
    before = tree_hash(run, base)
    res = invoke(*_verb_args(verb, run, base, tmp_path))
    assert_clean_error(res, CORRUPTIONS[name][1])
    assert tree_hash(run, base) == before
    assert list(tmp_path.iterdir()) == []


def test_the_good_run_passes_every_check(base):
    run = load_run(base / "run")
    assert (run.n, run.k, run.c) == (N, K, C) and run.costs is not None and "cpu/b1" in run.costs.latency
    res = invoke("info", base / "run", "--json")
    assert res.exit_code == 0, res.output


def test_check_results_are_remembered_only_while_the_files_are_unchanged(base, tmp_path):
    run = shutil.copytree(base / "run", tmp_path / "run")
    assert load_run(run).n == N
    _with_nan(run)  # a new file: scanned again
    assert_clean_error(invoke("info", run), r"holds 3 NaN")


# --------------------------------------------------------------------------- generated corruptions


@pytest.fixture
def fresh(base: Path) -> Iterator[Callable[[], Path]]:
    """``fresh()``: a new copy of the base run (hypothesis examples share one test call)."""
    with tempfile.TemporaryDirectory() as d:
        count = iter(range(10**6))

        def copy() -> Path:
            return Path(shutil.copytree(base / "run", Path(d) / f"run{next(count)}"))

        yield copy


def _refused(run: Path, pattern: str) -> None:
    before = tree_hash(run)
    assert_clean_error(invoke("info", run), pattern)
    assert tree_hash(run) == before


@HYPOTHESIS
@given(name=st.sampled_from(["logits.npy", "labels.npy", "indices.npy", "run.json"]), cut=st.floats(0, 0.999))
def test_truncated_files_are_refused(fresh, name, cut):
    run = fresh()
    data = (run / name).read_bytes()
    (run / name).write_bytes(data[: int(cut * len(data))])
    _refused(run, name.replace(".", r"\."))


@HYPOTHESIS
@given(
    target=st.sampled_from(
        [("logits.npy", t) for t in ("int64", "uint8", "bool", "complex64", "S4")]
        + [(name, t) for name in ("labels.npy", "indices.npy") for t in ("float32", "float64", "bool", "complex64")]
    )
)
def test_wrong_dtypes_are_refused(fresh, target):
    name, dtype = target
    run = fresh()
    _save(run, name, np.load(run / name).astype(dtype))
    _refused(run, rf"{name.replace('.', '[.]')} holds {dtype}|{name.replace('.', '[.]')} holds \|?S4")


@HYPOTHESIS
@given(
    name=st.sampled_from(["logits.npy", "labels.npy", "indices.npy"]),
    shape=st.lists(st.integers(0, 7), min_size=0, max_size=4),
)
def test_wrong_shapes_are_refused(fresh, name, shape):
    expected = (N, K, C) if name == "logits.npy" else (N,)
    run = fresh()
    dtype = np.load(run / name).dtype
    _save(run, name, np.zeros(tuple(shape), dtype=dtype))
    if tuple(shape) != expected:
        _refused(run, name.replace(".", r"\."))


@HYPOTHESIS
@given(
    cells=st.sets(st.integers(0, N * K * C - 1), min_size=1, max_size=20),
    value=st.sampled_from([np.nan, np.inf, -np.inf]),
)
def test_nonfinite_logits_are_counted(fresh, cells, value):
    run = fresh()
    z = _logits(run)
    z.reshape(-1)[sorted(cells)] = value
    _save(run, "logits.npy", z)
    _refused(run, rf"logits\.npy holds {len(cells)} NaN or infinite values of {N * K * C}")


@HYPOTHESIS
@given(bad=st.dictionaries(st.integers(0, N - 1), st.integers(-(10**12), 10**12).filter(lambda v: not 0 <= v < C)))
def test_labels_out_of_range_are_counted(fresh, bad):
    run = fresh()
    y = _labels(run)
    for i, v in bad.items():
        y[i] = v
    _save(run, "labels.npy", y)
    if bad:
        _refused(run, rf"labels\.npy has {len(bad)} of {N} labels outside \[0, {C}\)")


_NOT_INT = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=4),
    st.floats(allow_nan=True),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
_NOT_NUMBER = st.one_of(st.none(), st.booleans(), st.text(max_size=4), st.lists(st.floats(), max_size=2), st.just({}))
_BAD_NUMBER = st.one_of(
    _NOT_NUMBER,
    st.floats(max_value=0),
    st.sampled_from([float("nan"), float("inf"), 10**400]),
)
_BAD_LIST = st.one_of(
    st.lists(st.floats(1, 1e9), max_size=6).filter(lambda v: len(v) != K),
    st.lists(_BAD_NUMBER, min_size=K, max_size=K),
    _NOT_NUMBER.filter(lambda v: v is not None),
)
_NOT_TEXT = st.one_of(st.booleans(), st.integers(), st.floats(), st.lists(st.text(max_size=2), max_size=2))

# (path in run.json, invalid values for it)
FIELDS: list[tuple[tuple[str, ...], st.SearchStrategy[Any]]] = [
    (("n",), st.one_of(_NOT_INT, st.integers().filter(lambda v: v != N))),
    (("k",), st.one_of(_NOT_INT, st.integers().filter(lambda v: v != K))),
    (("c",), st.one_of(_NOT_INT, st.integers().filter(lambda v: v != C))),
    (("schema_version",), st.one_of(_NOT_INT, st.integers().filter(lambda v: v != 1))),
    (("complete",), st.one_of(_NOT_INT.filter(lambda v: v is not True), st.just(False))),
    (("schema",), st.one_of(_NOT_TEXT, st.text(max_size=8))),
    (("fingerprint",), st.one_of(_NOT_TEXT, st.text(max_size=8))),
    (("provenance",), st.one_of(_NOT_TEXT, st.none())),
    (("provenance", "model"), st.one_of(_NOT_TEXT, st.none())),
    (("provenance", "versions"), st.one_of(_NOT_TEXT, st.dictionaries(st.text(max_size=3), _NOT_TEXT, min_size=1))),
    (("provenance", "extra"), _NOT_TEXT),
    (("costs",), _NOT_TEXT),
    (("costs", "macs"), _BAD_LIST),
    (("costs", "stage_macs"), st.one_of(_BAD_LIST.filter(lambda v: not isinstance(v, list) or len(v) != K))),
    (("costs", "source"), st.one_of(_NOT_TEXT, st.none())),
    (("costs", "latency"), _NOT_TEXT),
    (("costs", "latency", "cpu/b1"), st.one_of(_NOT_TEXT, st.just({}))),
    (("costs", "latency", "cpu/b1", "batch_size"), st.one_of(_NOT_INT, st.integers().filter(lambda v: v != 1))),
    (("costs", "latency", "cpu/b1", "stage_ms"), _BAD_LIST.filter(lambda v: v != [])),
    (("costs", "latency", "cpu/b1", "decision_ms"), st.lists(_BAD_NUMBER.filter(lambda v: v != 0.0), min_size=1)),
    (("costs", "unsupported_ops"), st.one_of(_NOT_TEXT.filter(lambda v: v != []), st.lists(_NOT_TEXT, min_size=1))),
]


def _put(doc: Any, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        doc = doc[key]
    doc[path[-1]] = value


@HYPOTHESIS
@given(data=st.data(), field=st.sampled_from(range(len(FIELDS))))
def test_malformed_run_json_fields_are_refused(fresh, data, field):
    path, values = FIELDS[field]
    value = data.draw(values)
    run = fresh()
    _set_meta(run, lambda d: _put(d, path, value))
    _refused(run, r"run\.json|\.npy")


@HYPOTHESIS
@given(field=st.sampled_from([p for p, _ in FIELDS]), depth=st.integers(33, 3000))
def test_deeply_nested_run_json_is_refused(fresh, field, depth):
    run = fresh()
    _set_meta(run, lambda d: _put(d, field, json.loads("[" * depth + "]" * depth) if depth < 900 else None))
    if depth >= 900:  # too deep for json.dumps: write the text by hand
        text = (run / "run.json").read_text().replace("null", "[" * depth + "]" * depth, 1)
        (run / "run.json").write_text(text)
    _refused(run, r"run\.json")


# --------------------------------------------------------------------------- thresholds files


def _thresholds(base: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((base / "t.json").read_text())
    return doc


BAD_THRESHOLDS: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "NaN threshold": (lambda d: d["thresholds"].__setitem__(0, float("nan")), r"'thresholds\[0\]' must be a finite"),
    "last not null": (lambda d: d["thresholds"].__setitem__(-1, 0.5), r"'thresholds\[2\]' \(the last exit's\)"),
    "too few": (lambda d: d.__setitem__("thresholds", [None]), r"'thresholds' must have at least 2"),
    "K mismatch": (
        lambda d: (d.__setitem__("thresholds", [0.5, None]), d.__setitem__("temperatures", [1.0, 1.0])),
        r"field 'exit_shares' must have 2 entries",
    ),
    "temperature zero": (lambda d: d["temperatures"].__setitem__(1, 0), r"'temperatures\[1\]' must be a positive"),
    "temperatures short": (lambda d: d["temperatures"].pop(), r"'temperatures' must have 3 entries"),
    "score": (lambda d: d.__setitem__("score", "confidence"), r"'score' must be one of maxprob, margin, entropy"),
    "score missing": (lambda d: d.pop("score"), r"'score' is missing"),
    "shares text": (lambda d: d.__setitem__("exit_shares", "all"), r"'exit_shares' must be a list"),
    "accuracy": (lambda d: d.__setitem__("calibration_accuracy", 1.5), r"'calibration_accuracy' must be"),
    "version newer": (lambda d: d.__setitem__("schema_version", 99), r"upgrade dyncal"),
    "version text": (lambda d: d.__setitem__("schema_version", "1"), r"'schema_version' must be an integer"),
    "schema": (lambda d: d.__setitem__("schema", "dyncal.run"), r"'schema' must be \"dyncal\.thresholds\""),
    "budget": (lambda d: d["budget"].__setitem__("met_fraction", "half"), r"'budget\.met_fraction'"),
    "at bound": (lambda d: d.__setitem__("temperature_at_bound", [1, 0, 0]), r"temperature_at_bound\[0\]"),
    "n_classes": (lambda d: d.__setitem__("n_classes", 7), r"solved on C=7 classes"),
    "other run": (lambda d: d.__setitem__("run_fingerprint", "0" * 64), r"solved on another run"),
}


@pytest.mark.parametrize("name", list(BAD_THRESHOLDS))
def test_verify_refuses_a_malformed_thresholds_file(name, base, tmp_path):
    doc = _thresholds(base)
    BAD_THRESHOLDS[name][0](doc)
    t = tmp_path / "t.json"
    t.write_text(json.dumps(doc))
    before = tree_hash(base, tmp_path)
    assert_clean_error(invoke("verify", base / "run", "--thresholds", t), BAD_THRESHOLDS[name][1])
    assert tree_hash(base, tmp_path) == before


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        (b'{"thresholds": "\xff"}', r"not UTF-8"),
        (b'{"thresholds": ' + b"1" * 5000 + b"}", r"invalid JSON"),
        (b"[" * 10000 + b"]" * 10000, r"nests deeper"),
        (b'{"thresholds": ' + b"[" * 40 + b"]" * 40 + b"}", r"nests deeper"),
        (b"", r"invalid JSON"),
        (b"[]", r"holds a list"),
        (b"{}", r"not a thresholds document \(no thresholds key\)"),
        (b'{"thresholds": [0.5, null, null]', r"invalid JSON"),
    ],
)
def test_verify_refuses_a_thresholds_file_that_is_not_json(content, pattern, base, tmp_path):
    t = tmp_path / "t.json"
    t.write_bytes(content)
    assert_clean_error(invoke("verify", base / "run", "--thresholds", t), pattern)
    assert t.read_bytes() == content


def test_verify_never_opens_a_fifo_as_thresholds(base, tmp_path, fifo_guard):
    os.mkfifo(tmp_path / "t.json")
    fifo_guard(tmp_path / "t.json")
    assert_clean_error(invoke("verify", base / "run", "--thresholds", tmp_path / "t.json"), r"named pipe")


_JSON = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)


@HYPOTHESIS
@given(
    key=st.sampled_from(
        ["score", "temperatures", "thresholds", "method", "budget", "calibration_accuracy", "holdout_accuracy"]
        + ["holdout_ci", "exit_shares", "static", "split", "n_classes", "temperature_at_bound", "expected_ms"]
    ),
    value=_JSON,
)
@example(key="score", value={"\x1e": float("inf")})  # a key that splits a line is escaped, not echoed
def test_thresholds_fields_of_any_json_type(base, tmp_path, key, value):
    """Any JSON value in any field: the file verifies (the value fits) or is refused in one line."""
    doc = _thresholds(base)
    doc[key] = value
    t = tmp_path / "t.json"
    t.write_text(json.dumps(doc))
    res = invoke("verify", base / "run", "--thresholds", t)
    if res.exit_code != 1 or "does not name its model" not in res.stderr:
        assert_clean_error(res, r"t\.json|thresholds")


def test_verify_refuses_thresholds_from_another_run(base, tmp_path):
    other = make_run(tmp_path / "other", seed=1)  # same N, K, C; other rows
    res = invoke("solve", other, "--budget", "0.6x", "--out", tmp_path / "other.json")
    assert res.exit_code == 0, res.output
    for run, t in ((base / "run", tmp_path / "other.json"), (other, base / "t.json")):
        assert_clean_error(invoke("verify", run, "--thresholds", t), r"solved on another run.*dyncal solve")
    # the run's own thresholds pass the binding (and stop only at the model an imported run lacks)
    assert_clean_error(invoke("verify", other, "--thresholds", tmp_path / "other.json"), r"does not name its model")


# --------------------------------------------------------------------------- --out and --overwrite


def _user_pdf(path: Path) -> None:
    path.write_bytes(b"%PDF-1.5\n1 0 obj << /Creator (LaTeX with hyperref) /Producer (pdfTeX-1.40) >> endobj\n%%EOF\n")


def _user_png(path: Path) -> None:
    from matplotlib.figure import Figure

    Figure(figsize=(1, 1)).savefig(path, format="png", dpi=20)  # matplotlib's own Software tag


USER_FILES: dict[str, Callable[[Path], None]] = {
    "notes.txt": lambda p: p.write_text("my notes\n"),
    "paper.pdf": _user_pdf,
    "figure.png": _user_png,
    "drawing.svg": lambda p: p.write_text('<svg xmlns="http://www.w3.org/2000/svg"><!-- dyncal --></svg>'),
    "data.json": lambda p: p.write_text('{"schema": "mine", "note": "dyncal.run"}'),
    "table.csv": lambda p: p.write_text("method,accuracy\nmine,0.9\n"),
}


def _output_args(verb: str, run: Path, out: Path) -> list[object]:
    return {
        "solve": ["solve", run, "--budget", "0.6x", "--out", out],
        "frontier": ["frontier", run, "--out", out, "--n-budgets", "3"],
        "report": ["report", run, "--out", out],
        "plot": ["plot", run, "--kind", "exits", "--out", out],
    }[verb]


@pytest.mark.parametrize("verb", ["solve", "frontier", "report", "plot"])
@pytest.mark.parametrize("name", list(USER_FILES))
def test_overwrite_never_replaces_a_file_dyncal_did_not_write(verb, name, base, tmp_path):
    user = tmp_path / name
    USER_FILES[name](user)
    before = tree_hash(tmp_path, base)
    res = invoke(*_output_args(verb, base / "run", user), "--overwrite")
    assert_clean_error(res, r"dyncal did not write it|must (name|end in)")
    assert tree_hash(tmp_path, base) == before


@pytest.mark.parametrize(
    ("verb", "name"),
    [
        ("solve", "t.json"),
        ("frontier", "f.csv"),
        ("report", "r.pdf"),
        ("plot", "p.png"),
        ("plot", "p.svg"),
        ("plot", "p.pdf"),
    ],
)
def test_overwrite_replaces_what_dyncal_wrote(verb, name, base, tmp_path, request):
    out = tmp_path / name
    if verb == "report":  # a report dyncal wrote for another run: one report built here instead of two
        shutil.copyfile(request.getfixturevalue("twelve_exit_report"), out)
    else:
        assert invoke(*_output_args(verb, base / "run", out)).exit_code == 0
    earlier = out.read_bytes()
    assert_clean_error(invoke(*_output_args(verb, base / "run", out)), r"already exists.*--overwrite")
    assert out.read_bytes() == earlier
    first = out.stat().st_mtime_ns
    res = invoke(*_output_args(verb, base / "run", out), "--overwrite")
    assert res.exit_code == 0, res.output
    assert out.stat().st_mtime_ns >= first and [p.name for p in tmp_path.iterdir()] == [name]
    if verb == "report":
        assert out.read_bytes() != earlier  # this run's report (3 exits), not the 12-exit one


@pytest.mark.parametrize(
    "args",
    [
        ["solve", "{run}", "--budget", "0.6x", "--out", "{run}/run.json", "--overwrite"],
        ["solve", "{run}", "--budget", "0.6x", "--out", "{run}", "--overwrite"],
        ["frontier", "{run}", "--out", "{run}/logits.npy", "--overwrite"],
        ["frontier", "{run}", "--out", "{run}/new.csv"],
        ["report", "{run}", "--out", "{run}/report.pdf", "--overwrite"],
        ["plot", "{run}", "--kind", "exits", "--out", "{run}/p.png"],
        ["solve", "{run}", "--budget", "0.6x", "--out", "{run}.partial/t.json"],
        ["solve", "{run}", "--budget", "0.6x", "--out", "{other}/t.json"],
        ["import", "{npz}", "--out", "{run}/sub"],
        ["import", "{npz}", "--out", "{other}/sub"],
        ["demo", "--out", "{run}/demo"],
        ["collect", "--model", "toy_models:two_exit", "--model-path", TESTS, "--data", "{npz}", "--out", "{run}/sub"],
    ],
)
def test_nothing_is_written_into_a_run(args, base, tmp_path):
    run = Path(shutil.copytree(base / "run", tmp_path / "run"))
    other = Path(shutil.copytree(base / "run", tmp_path / "other"))
    (other / "logits.npy").write_bytes(b"")  # a damaged run is still a run
    (tmp_path / "run.partial").mkdir()
    (tmp_path / "run.partial" / "logits.npy").write_bytes(b"\0" * 16)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "x.npz", logits=rng.normal(size=(5, 2, 3)), labels=[0, 1, 2, 0, 1], inputs=np.zeros((5, 4)))
    before = tree_hash(tmp_path)
    fill = {"run": run, "other": other, "npz": tmp_path / "x.npz"}
    res = invoke(*[str(a).format(**fill) for a in args])
    assert_clean_error(res, r"lies inside the run directory|would overwrite")
    assert tree_hash(tmp_path) == before


def test_dyncal_outputs_are_recognised_by_their_contents(base, tmp_path):
    from dyncal.artifacts.outputs import written_by_dyncal

    f = tmp_path / "f.csv"
    assert invoke("frontier", base / "run", "--out", f, "--n-budgets", "3").exit_code == 0
    assert written_by_dyncal(f) and written_by_dyncal(base / "t.json")
    header, rest = f.read_text().split("\n", 1)
    for other in (header.replace("share_3", "share_4"), header + ",mine", "method,exit", header.replace("method", "m")):
        (tmp_path / "g.csv").write_text(other + "\n" + rest)
        assert not written_by_dyncal(tmp_path / "g.csv"), other
    assert not written_by_dyncal(base / "run" / "logits.npy")  # dyncal wrote it, but it is a run's
    assert not written_by_dyncal(tmp_path / "missing.json")


def test_outputs_are_never_folders_or_inputs(base, tmp_path):
    (tmp_path / "dir").mkdir()
    assert_clean_error(
        invoke("solve", base / "run", "--budget", "0.6x", "--out", tmp_path / "dir", "--overwrite"), r"is a folder"
    )
    os.mkfifo(tmp_path / "pipe.json")
    assert_clean_error(
        invoke("solve", base / "run", "--budget", "0.6x", "--out", tmp_path / "pipe.json", "--overwrite"),
        r"named pipe",
    )
    assert_clean_error(
        invoke("solve", base / "run", "--budget", "0.6x", "--out", tmp_path / "missing" / "t.json"),
        r"folder .* does not exist",
    )


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc, a folder nobody can create files in")
@pytest.mark.parametrize(
    "args",
    [
        ["solve", "{run}", "--budget", "0.6x", "--out", "/proc/dyncal-t.json"],
        ["frontier", "{run}", "--out", "/proc/dyncal-f.csv", "--n-budgets", "3"],
        ["report", "{run}", "--out", "/proc/dyncal-r.pdf"],
        ["plot", "{run}", "--kind", "exits", "--out", "/proc/dyncal-p.png"],
        ["import", "{npz}", "--out", "/proc/dyncal-run"],
        ["demo", "--out", "/proc/dyncal-demo"],
        ["collect", "--model", "toy_models:two_exit", "--model-path", TESTS, "--data", "{npz}", "--out", "/proc/r"],
    ],
)
def test_an_unwritable_out_is_one_line(args, base, tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "x.npz", logits=rng.normal(size=(5, 2, 3)), labels=[0, 1, 2, 0, 1], inputs=np.zeros((5, 4)))
    fill = {"run": base / "run", "npz": tmp_path / "x.npz"}
    assert_clean_error(invoke(*[str(a).format(**fill) for a in args]), r"cannot (write|create)|permission denied")


# --------------------------------------------------------------------------- other hostile options


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["solve", "{run}", "--budget", "0.6x", "--out", "{tmp}/t.json", "--seed", "-5"], r"--seed must be a non-neg"),
        (["frontier", "{run}", "--out", "{tmp}/f.csv", "--seed", "-5"], r"--seed must be a non-negative"),
        (["report", "{run}", "--out", "{tmp}/r.pdf", "--seed", "-5"], r"--seed must be a non-negative"),
        (["plot", "{run}", "--kind", "exits", "--out", "{tmp}/p.png", "--dpi", "100000"], r"--dpi 100000 would draw"),
        (["profile", "{run}", "--batch-size", "1e11"], r"--batch-size must be comma-separated integers"),
        (["profile", "{run}", "--batch-size", "100000000000"], r"--batch-size must be positive integers up to 65536"),
        (
            ["verify", "{run}", "--thresholds", "{t}", "--batch-size", "9" * 30],
            r"--batch-size must be positive integers",
        ),
        (["report", "{wide}", "--out", "{tmp}/r.pdf"], r"at most 12 exits and run .* has K=13"),
        (["frontier", "{run}", "--out", "{tmp}/f.csv", "--n-budgets", "100000000"], r"--n-budgets must be from 2"),
        (["info", "{tmp}/pipe"], r"'.*pipe' is a named pipe \(FIFO\), not a run directory"),
        (["import", "{tmp}/pipe", "--out", "{tmp}/r"], r"is a named pipe \(FIFO\), not an \.npz file"),
        (["import", "{tmp}/none.npz", "--out", "{tmp}/r"], r"no such file"),
        (["import", "{run}/logits.npy", "--out", "{tmp}/r"], r"single \.npy array"),
        (["import", "{run}", "--out", "{tmp}/r"], r"is a folder, not an \.npz"),
    ],
)
def test_hostile_options_are_one_line(args, pattern, base, tmp_path, fifo_guard):
    fill = {"run": base / "run", "tmp": tmp_path, "t": base / "t.json", "wide": tmp_path / "wide"}
    if "{wide}" in args:
        make_run(tmp_path / "wide", k=13)
    os.mkfifo(tmp_path / "pipe")  # never opened: a regression fails on the guard instead of hanging
    fifo_guard(tmp_path / "pipe")
    before = tree_hash(base)
    assert_clean_error(invoke(*[str(a).format(**fill) for a in args]), pattern)
    assert tree_hash(base) == before
    assert not any(p.suffix in (".json", ".csv", ".pdf", ".png") for p in tmp_path.iterdir())


_XHTML = "{http://www.w3.org/1999/xhtml}"
_Word = tuple[float, float, float, float, str]


def _pdf_words(pdf: Path) -> list[tuple[float, float, list[_Word]]]:
    """Every page's (width, height, words with their boxes), as ``pdftotext -bbox`` places them."""
    import subprocess
    from xml.etree import ElementTree

    if shutil.which("pdftotext") is None:
        pytest.skip("pdftotext (poppler-utils) is not installed")
    xhtml = subprocess.run(["pdftotext", "-bbox", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    pages = []
    for page in ElementTree.fromstring(xhtml).iter(f"{_XHTML}page"):
        words = [
            (*(float(w.get(a, "nan")) for a in ("xMin", "yMin", "xMax", "yMax")), w.text or "")
            for w in page.iter(f"{_XHTML}word")
        ]
        pages.append((float(page.get("width", "nan")), float(page.get("height", "nan")), words))
    return pages


def _adjacent(words: list[_Word]) -> set[tuple[str, str]]:
    return {(a[4], b[4]) for a, b in zip(words, words[1:], strict=False)}


def _names_exits(words: list[_Word], k: int, suffix: str = "") -> bool:
    """Whether ``exit 1`` .. ``exit k`` (each followed by ``suffix``) appear as consecutive words."""
    return all(("exit", f"{j}{suffix}") in _adjacent(words) for j in range(1, k + 1))


def _overlapping(words: list[_Word], slack: float = 1.0) -> list[tuple[str, str]]:
    return [
        (a[4], b[4])
        for i, a in enumerate(words)
        for b in words[i + 1 :]
        if min(a[2], b[2]) - max(a[0], b[0]) > slack and min(a[3], b[3]) - max(a[1], b[1]) > slack
    ]


@pytest.fixture(scope="module")
def twelve_exit_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dyncal.reports.layout import PAGE_TITLES

    d = tmp_path_factory.mktemp("k12")
    res = invoke("report", make_run(d / "run", k=12), "--out", d / "r.pdf")
    assert res.exit_code == 0, res.output
    assert f"({len(PAGE_TITLES)} pages" in res.output
    return d / "r.pdf"


def test_a_report_with_twelve_exits_fits(twelve_exit_report):
    from dyncal.reports.layout import A4_INCHES, PAGE_TITLES

    pages = _pdf_words(twelve_exit_report)
    assert len(pages) == len(PAGE_TITLES)
    for n, (width, height, words) in enumerate(pages, 1):
        assert (width, height) == pytest.approx((72 * A4_INCHES[0], 72 * A4_INCHES[1]), abs=1), n
        assert words, f"page {n} has no text"
        outside = [w[4] for w in words if w[0] < 0 or w[1] < 0 or w[2] > width or w[3] > height]
        assert not outside, f"page {n}: text outside the page: {outside[:5]}"
        assert ("page", str(n)) in _adjacent(words), n
    # the exits page names every exit on its axis, and the calibration page draws a panel per exit
    assert _names_exits(pages[3][2], 12) and not _names_exits(pages[3][2], 13)
    assert _names_exits(pages[4][2], 12)


def test_a_report_with_twelve_exits_has_no_overlapping_text(twelve_exit_report):
    for n, (_, _, words) in enumerate(_pdf_words(twelve_exit_report), 1):
        assert not _overlapping(words), f"page {n}: overlapping text {_overlapping(words)[:5]}"


@pytest.mark.parametrize(
    ("logits", "labels", "macs", "pattern"),
    [
        (np.zeros((4, 2, 3)), [0, 1, 2, 3], None, r"1 of 4 do not \(e\.g\. \[3\]\)"),
        (np.zeros((4, 2, 3)), [0, -1, 2, 57], None, r"2 of 4 do not"),
        (np.zeros((4, 2, 3)), [0.0, 1.5, 2.0, 1.0], None, r"must be whole numbers; 1 of 4"),
        (np.zeros((4, 2, 3)), [0.0, np.nan, 2.0, 1.0], None, r"must be whole numbers"),
        (np.zeros((4, 2, 3)), [True, False, True, True], None, r"labels must be integers, got dtype bool"),
        (np.zeros((4, 2, 3)), [0, 1, 2, 0], [-1, 2], r"`macs`\[0\] must be a positive"),
        (np.zeros((4, 2, 3)), [0, 1, 2, 0], [1], r"`macs` must have 2 entries"),
        (np.zeros((4, 2, 3)), [0, 1, 2, 0], [2, 2], r"strictly increasing"),
        (np.zeros((4, 2, 3)), [0, 1, 2, 0], [1, float("inf")], r"`macs`\[1\]"),
        (np.zeros((4, 2, 3), dtype=complex), [0, 1, 2, 0], None, r"logits must be real numbers"),
        (np.zeros((4, 2, 1)), [0, 0, 0, 0], None, r"C >= 2 classes"),
        (np.zeros((0, 2, 3)), np.zeros(0, int), None, r"at least one sample"),
        (np.full((4, 2, 3), np.nan), [0, 1, 2, 0], None, r"24 NaN or infinite values .*first at row 0, exit 1\)"),
        (np.full((4, 2, 3), 1e39), [0, 1, 2, 0], None, r"24 NaN or infinite values \(or beyond float32"),
    ],
)
def test_import_refuses_what_load_refuses(logits, labels, macs, pattern, tmp_path):
    from dyncal.errors import RunError

    with pytest.raises(RunError, match=pattern):
        import_arrays(logits, np.asarray(labels), tmp_path / "run", macs=macs)
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()


# ----------------------------------------------------------------- evidence that must not be trusted


_RAW = ("early_exit_ms_raw", "full_model_ms_raw")


def _verify_doc(**change):
    from dyncal.artifacts.verify import ModelIdentity, PairedTiming, VerifyResult

    timing = PairedTiming("cpu/b1", 1, ((1.0, 1.1), (1.2, 1.0)), ((3.0, 3.1), (3.2, 3.0)))
    fields = dict(
        run_fingerprint="r",
        decision_fingerprint="d",
        model=ModelIdentity("m:f", "sha"),
        n=2,
        agreement=1.0,
        exit_agreement=1.0,
        runtime_accuracy=1.0,
        simulated_accuracy=1.0,
        runtime_exit_shares=(1.0, 0.0),
        simulated_exit_shares=(1.0, 0.0),
        timings=(timing,),
        device="cpu",
        hardware="x",
        threads=1,
    )
    fields.update(change)
    return VerifyResult(**fields)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({}, None),
        ({"model": ModelIdentity("m:f", None)}, "records none"),
        ({"settings": {"model_check": {"allowed": True, "mismatch": "other logits"}}}, "not the run's"),
        ({"agreement": 0.58}, "only 58.00% of samples"),
    ],
)
def test_a_verify_result_of_another_model_is_no_evidence(change, why):
    got = _verify_doc(**change).mismatch(run_fingerprint="r", decision_fingerprint="d", weights_sha256="sha")
    assert got is None if why is None else why in got


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: [d["timings"][0][raw][0].append(1.0) for raw in _RAW], "same number of replicates"),
        (lambda d: d["timings"].append(dict(d["timings"][0])), "holds cpu/b1 more than once"),
        (lambda d: d["timings"][0].update(key="cpu/bX"), "is not a latency key"),
        (lambda d: d["timings"][0].update(batch_size=4), "the key says 1"),
        (lambda d: d["timings"][0]["early_exit_ms_raw"][0].__setitem__(0, 1e-320), "raw.0..0.' must be .* >= 1e-06"),
    ],
)
def test_malformed_verify_files_are_one_line(tmp_path, edit, message):
    from dyncal.artifacts.verify import VerifyResult

    doc = _verify_doc().to_dict()
    edit(doc)
    path = tmp_path / "v.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(DyncalError, match=message) as info:
        VerifyResult.load(path)
    assert "\n" not in str(info.value)


def test_thresholds_that_do_not_name_their_run_are_refused(tmp_path):
    import dataclasses

    from dyncal.artifacts.thresholds import check_thresholds_for_run, read_thresholds
    from dyncal.calibrate.solvers import solve_run

    rng = np.random.default_rng(1)
    logits, labels = rng.normal(size=(200, 2, 3)).astype(np.float32), rng.integers(0, 3, 200)
    run = import_arrays(logits, labels, tmp_path / "r", macs=[1e6, 2e6])
    solved = solve_run(run, "0.7x")
    doc = solved.to_dict()
    doc.pop("run_fingerprint")
    path = tmp_path / "t.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(DyncalError, match=r"t\.json' is not a valid thresholds document: field 'run_fingerprint' is"):
        read_thresholds(path)
    with pytest.raises(DyncalError, match="do not record the run they were solved on"):  # solved on bare arrays
        check_thresholds_for_run(dataclasses.replace(solved, run_fingerprint=None), run)


def test_a_run_whose_arrays_changed_after_it_was_written_is_refused(tmp_path):
    rng = np.random.default_rng(2)
    out = tmp_path / "r"
    import_arrays(rng.normal(size=(50, 2, 3)).astype(np.float32), rng.integers(0, 3, 50), out)
    logits = np.load(out / "logits.npy")
    np.save(out / "logits.npy", logits[::-1].copy())  # same shape, same values, other rows
    with pytest.raises(RunError, match="changed after the run was written"):
        load_run(out)


def test_json_output_never_holds_nan_or_infinity():
    from dyncal.artifacts.thresholds import json_ready

    doc = {"a": [float("inf"), float("nan"), -float("inf"), 1.5]}
    assert json.dumps(json_ready(doc)) == '{"a": [null, null, null, 1.5]}'
