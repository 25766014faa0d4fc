"""Tampering: what a run's fingerprint covers, and hostile input that must end in one line.

A run is identified by everything that decides what is read from it (array order, byte
order, indices); a file changed under a process, thresholds bound to another run's
fingerprint, numbers outside their range, a printing model, a device spelled twice, and
command-line mistakes are each refused in one line (or, where the contract says so, read
correctly) and never crash the process.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import TESTS, assert_clean_error
from typer.testing import CliRunner

import dyncal.artifacts.run_arrays as run_module
from dyncal.artifacts.costs import device_name
from dyncal.artifacts.package import PackageManifest, PackageStage, read_manifest
from dyncal.artifacts.run import load_run
from dyncal.artifacts.run_arrays import compute_fingerprint
from dyncal.artifacts.run_import import import_arrays
from dyncal.artifacts.thresholds import check_thresholds_for_run, decision_fingerprint, read_thresholds
from dyncal.cli import app
from dyncal.errors import DyncalError, RunError

N, K, C = 60, 3, 4
FAST = ("--repeats", "3", "--warmup", "1")
REPO = TESTS.parent


def invoke(*args: object) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def _arrays(seed: int, n: int = N) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, C, n)
    logits = rng.normal(size=(n, K, C)).astype(np.float32)
    for j in range(K):  # later exits see the label more clearly
        logits[np.arange(n), j, labels] += 1.0 + j
    return logits, labels


def make_run(out: Path, seed: int = 0, n: int = N, labels: np.ndarray | None = None) -> Path:
    logits, own = _arrays(seed, n)
    import_arrays(logits, own if labels is None else labels, out, macs=[1e6 * (j + 1) for j in range(K)])
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a run ``run`` and its thresholds ``t.json`` (0.6x, half held out)."""
    d = tmp_path_factory.mktemp("tamper")
    make_run(d / "run")
    res = invoke("solve", d / "run", "--budget", "0.6x", "--out", d / "t.json")
    assert res.exit_code == 0, res.output
    return d


def _set_meta(run: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    doc = json.loads((run / "run.json").read_text())
    edit(doc)
    (run / "run.json").write_text(json.dumps(doc))


def _restamp(run: Path) -> None:
    """run.json made to record the arrays as they are now: they are then checked for what they hold."""
    _set_meta(run, lambda d: d.__setitem__("fingerprint", compute_fingerprint(run)))


def _rewrite_header(path: Path, **change: Any) -> None:
    """Rewrite an .npy file's header (``fortran_order``, ``descr``), keeping its data bytes as they are."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        assert version == (1, 0)
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        data = fh.read()
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": fortran, "shape": shape, **change}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    path.write_bytes(buf.getvalue() + data)


# --------------------------------------------------------------------------- the fingerprint covers what is read


def test_a_header_flipped_to_fortran_order_is_another_run(base, tmp_path):
    run = Path(shutil.copytree(base / "run", tmp_path / "run"))
    before = compute_fingerprint(run)
    _rewrite_header(run / "logits.npy", fortran_order=True)  # same bytes, read in another order
    assert compute_fingerprint(run) != before
    assert_clean_error(invoke("info", run), r"logits\.npy, labels\.npy or indices\.npy changed after the run was")
    _restamp(run)  # even then, what was solved on the old reading is not this run's
    assert load_run(run).logits.flags.f_contiguous
    res = invoke("report", run, "--thresholds", base / "t.json", "--out", tmp_path / "r.pdf")
    assert_clean_error(res, r"the thresholds were solved on another run")
    assert not (tmp_path / "r.pdf").exists()


def test_big_endian_arrays_are_fingerprinted_as_such_and_read_as_their_values(base, tmp_path):
    run = Path(shutil.copytree(base / "run", tmp_path / "run"))
    original = load_run(run)
    for name, dtype in (("logits.npy", ">f4"), ("labels.npy", ">i8"), ("indices.npy", ">i8")):
        np.save(run / name, np.load(run / name).astype(dtype))
    assert_clean_error(invoke("info", run), r"changed after the run was written")
    _restamp(run)
    swapped = load_run(run)
    assert swapped.logits.dtype == np.float32 and swapped.logits.dtype.isnative and swapped.labels.dtype.isnative
    assert np.array_equal(swapped.logits, original.logits) and np.array_equal(swapped.labels, original.labels)
    assert swapped.fingerprint != original.fingerprint
    res = invoke("solve", run, "--budget", "0.6x", "--out", tmp_path / "t.json", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["run_fingerprint"] == swapped.fingerprint


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ({0: -1}, r"indices\.npy has 1 of 60 dataset indices below 0 \(e\.g\. -1\)"),
        ({3: -7, 9: -2}, r"indices\.npy has 2 of 60 dataset indices below 0"),
        ({0: 5}, r"indices\.npy names dataset item 5 for more than one row \(1 rows repeat an item\)"),
    ],
)
def test_indices_must_be_dataset_indices_named_once(change, pattern, base, tmp_path):
    run = Path(shutil.copytree(base / "run", tmp_path / "run"))
    indices = np.load(run / "indices.npy")
    for row, value in change.items():
        indices[row] = value
    np.save(run / "indices.npy", indices)
    for restamp in (False, True):  # with its fingerprint, or with run.json made to match the new arrays
        if restamp:
            _restamp(run)
        for verb in (["info", run], ["verify", run, "--thresholds", base / "t.json"]):
            assert_clean_error(invoke(*verb), pattern)


def test_indices_are_fingerprinted(base, tmp_path):
    run = Path(shutil.copytree(base / "run", tmp_path / "run"))
    indices = np.load(run / "indices.npy")
    indices[[0, 1]] = indices[[1, 0]]  # still every item once: other rows, other items
    np.save(run / "indices.npy", indices)
    assert_clean_error(invoke("info", run), r"indices\.npy changed after the run was written")
    _restamp(run)
    assert_clean_error(
        invoke("verify", run, "--thresholds", base / "t.json"), r"the thresholds were solved on another run"
    )


@pytest.mark.parametrize(
    ("indices", "pattern"),
    [
        ([0, 1, -1, 3], r"indices must be dataset indices >= 0; 1 of 4 are not \(e\.g\. \[-1\]\)"),
        ([0, 1, 1, 3], r"indices must name each dataset item once; 1 rows repeat one \(e\.g\. 1\)"),
    ],
)
def test_import_refuses_indices_that_load_refuses(indices, pattern, tmp_path):
    with pytest.raises(RunError, match=pattern):
        import_arrays(np.zeros((4, 2, 3), np.float32), [0, 1, 2, 0], tmp_path / "r", indices=np.array(indices))
    assert list(tmp_path.iterdir()) == []


def test_the_writer_and_the_reader_share_one_fingerprint(base, tmp_path):
    """compute_fingerprint (what a writer stores) and load_run (what a reader checks) agree, whatever the layout."""
    stored = json.loads((base / "run" / "run.json").read_text())["fingerprint"]
    assert compute_fingerprint(base / "run") == load_run(base / "run").fingerprint == stored
    layouts: dict[str, Callable[[Path], None]] = {
        "fortran": lambda r: _rewrite_header(r / "logits.npy", fortran_order=True),
        "big-endian": lambda r: np.save(r / "labels.npy", np.load(r / "labels.npy").astype(">i8")),
        "int32 indices": lambda r: np.save(r / "indices.npy", np.load(r / "indices.npy").astype(np.int32)),
    }
    seen = {stored}
    for name, change in layouts.items():
        run = Path(shutil.copytree(base / "run", tmp_path / name))
        change(run)
        _restamp(run)
        assert compute_fingerprint(run) == load_run(run).fingerprint, name
        seen.add(compute_fingerprint(run))
    assert len(seen) == 1 + len(layouts)  # each layout is another identity


def _change_in_place(path: Path) -> None:
    """Swap two rows of logits.npy inside the same file (same inode and size), then set its mtime back."""
    st = os.stat(path)
    logits = np.load(path)
    with open(path, "r+b") as fh:
        np.lib.format.read_magic(fh)
        np.lib.format.read_array_header_1_0(fh)
        fh.write(logits[[1, 0, *range(2, logits.shape[0])]].tobytes())
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns)


def test_a_run_changed_in_place_with_its_mtime_set_back_is_checked_again(base, tmp_path, monkeypatch):
    monkeypatch.setattr(run_module, "_RACY_NS", 0)  # trust a remembered check at once: only the file state guards it
    run = Path(shutil.copytree(base / "run", tmp_path / "run"))
    newest = max(os.stat(p).st_ctime_ns for p in run.iterdir())
    for _ in range(200):  # let the clock pass the files' last change, so the first check is remembered
        if time.time_ns() > newest + 50_000_000:
            break
        time.sleep(0.01)
    held = load_run(run)
    kept = np.array(held.logits)
    reads: list[int] = []
    real = run_module._read_arrays
    monkeypatch.setattr(run_module, "_read_arrays", lambda *a, **k: reads.append(1) or real(*a, **k))
    load_run(run)
    assert reads == []  # unchanged files: the remembered check is used
    _change_in_place(run / "logits.npy")
    with pytest.raises(RunError, match=r"changed after the run was written"):
        load_run(run)
    assert reads == [1]
    assert np.array_equal(held.logits, kept) and not held.logits.flags.writeable  # what was checked is what is held


def test_a_file_truncated_while_it_is_read_is_refused(base, tmp_path, monkeypatch):
    run = Path(shutil.copytree(base / "run", tmp_path / "run"))
    monkeypatch.setattr(run_module, "_READ_BYTES", 64)  # many blocks
    real = run_module._read_into
    calls: list[int] = []

    def truncate_after_first(fh: Any, block: np.ndarray) -> int:
        calls.append(1)
        if len(calls) == 2:
            os.truncate(run / "logits.npy", os.stat(run / "logits.npy").st_size // 2)
        return real(fh, block)

    monkeypatch.setattr(run_module, "_read_into", truncate_after_first)
    with pytest.raises(RunError, match=r"logits\.npy changed while it was read") as info:
        load_run(run)
    assert "\n" not in str(info.value)


_HOLDER = """
import pathlib, sys, time
import numpy as np
from dyncal.calibrate.scores import exit_scores
from dyncal.artifacts.run import load_run

run = load_run(sys.argv[1])
gate = pathlib.Path(sys.argv[2])
(gate / "ready").touch()
deadline = time.monotonic() + 120
while not (gate / "go").exists() and time.monotonic() < deadline:
    time.sleep(0.01)
scores, _ = exit_scores(run.logits)
print(float(np.asarray(run.logits, dtype=np.float64).sum()), float(scores.sum()))
"""


def test_a_process_holding_a_run_survives_its_truncation(tmp_path):
    """Memory-mapped logits die with SIGBUS when the file shrinks; a held run must not."""
    logits, labels = _arrays(3, n=4000)
    run = tmp_path / "run"
    import_arrays(np.repeat(logits, 25, axis=2), labels, run)  # 4000 x 3 x 100: several MB
    gate = tmp_path / "gate"
    gate.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(run), str(gate)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        for _ in range(12000):
            if (gate / "ready").exists() or proc.poll() is not None:
                break
            time.sleep(0.01)
        assert (gate / "ready").exists(), proc.communicate()[1]
        os.truncate(run / "logits.npy", 4096)
        (gate / "go").touch()
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, (proc.returncode, err[-2000:])  # -7 would be SIGBUS
    total = float(out.split()[0])
    assert total == pytest.approx(float(np.repeat(logits, 25, axis=2).astype(np.float64).sum()))
    assert_clean_error(invoke("info", run), r"logits\.npy is not a whole \.npy array \(holds only 4,096 bytes")


# --------------------------------------------------------------------------- thresholds bound to their run


def test_thresholds_with_another_runs_fingerprint_pasted_in_are_refused(base, tmp_path, cli):
    labels = np.load(base / "run" / "labels.npy")
    other = make_run(tmp_path / "other", seed=5, labels=labels)  # same data, same split: only the figures differ
    doc = json.loads((base / "t.json").read_text())
    doc["run_fingerprint"] = load_run(other).fingerprint
    pasted = tmp_path / "pasted.json"
    pasted.write_text(json.dumps(doc))
    wanted = r"the thresholds' exits do not match run .*other'.*another run's \(its fingerprint pasted in\?\)"
    for verb in (
        ["report", other, "--thresholds", pasted, "--out", tmp_path / "r.pdf"],
        ["verify", other, "--thresholds", pasted],
        ["export", other, "--thresholds", pasted, "--out", tmp_path / "pkg"],
    ):
        assert_clean_error(cli(*verb), wanted)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "pasted.json"]
    smaller = make_run(tmp_path / "smaller", n=50)
    doc["run_fingerprint"] = load_run(smaller).fingerprint
    wanted = r"solved on 60 samples \(\d+ calibration \+ \d+ held out\) but run .*smaller' has N=50"
    with pytest.raises(DyncalError, match=wanted):
        check_thresholds_for_run(read_thresholds(_write(tmp_path / "s.json", doc)), load_run(smaller))


def _write(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(json.dumps(doc))
    return path


def test_thresholds_edited_by_hand_still_belong_to_their_run(base, tmp_path):
    """The figures bind the document to the run; the thresholds themselves may be set by hand (the report says so)."""
    doc = json.loads((base / "t.json").read_text())
    doc["thresholds"] = [0.99] * (K - 1) + [None]
    check_thresholds_for_run(read_thresholds(_write(tmp_path / "e.json", doc)), load_run(base / "run"))
    doc["static"][1]["calibration_accuracy"] = 0.5  # but not what the run's exits get alone
    with pytest.raises(DyncalError, match=r"exits do not match run"):
        check_thresholds_for_run(read_thresholds(_write(tmp_path / "f.json", doc)), load_run(base / "run"))


def _edit(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        for key in path[:-1]:
            doc = doc[key]
        doc[path[-1]] = value

    return edit


@pytest.mark.parametrize(
    ("path", "value", "pattern"),
    [
        (("temperatures",), [1e-320, 1.0, 1.0], r"'temperatures\[0\]' must be a positive finite number >= 0\.001"),
        (("temperatures",), [1.0, 1e4, 1.0], r"'temperatures\[1\]' must be .*<= 1000, got 10000"),
        (("n_classes",), 4.0, r"'n_classes' must be an integer >= 0, got 4\.0"),
        (("n_classes",), True, r"'n_classes' must be an integer >= 0, got a boolean true"),
        (("split", "holdout"), "0.5", r"'split\.holdout' must be a non-negative finite number <= 1, got a string"),
        (("split", "holdout"), 1.0, r"'split\.holdout' must be a fraction in \[0, 1\), got 1\.0"),
        (("split", "seed"), [1], r"'split\.seed' must be an integer >= 0, got a list"),
        (("split", "seed"), 1.0, r"'split\.seed' must be an integer >= 0, got 1\.0"),
        (("split", "n_holdout"), True, r"'split\.n_holdout' must be an integer >= 0, got a boolean"),
        (("split", "n_calibration"), -3, r"'split\.n_calibration' must be an integer >= 1, got -3"),
        (("split", "unsplit_classes"), ["a"], r"'split\.unsplit_classes\[0\]' must be an integer"),
        (("holdout", "n"), "30", r"'holdout\.n' must be an integer >= 1"),
        (("holdout", "exit_shares"), [0.5, 0.5], r"'holdout\.exit_shares' must have 3 entries"),
        (("static", 0, "calibration_accuracy"), 2, r"'static\[0\]\.calibration_accuracy' must be .*<= 1, got 2"),
        (("static", 0, "exit"), 0, r"'static\[0\]\.exit' must be an integer >= 1, got 0"),
    ],
)
def test_thresholds_numbers_are_typed_and_range_checked(path, value, pattern, base, tmp_path):
    doc = json.loads((base / "t.json").read_text())
    _edit(path, value)(doc)
    t = _write(tmp_path / "t.json", doc)
    for verb in (
        ["report", base / "run", "--thresholds", t, "--out", tmp_path / "r.pdf"],
        ["verify", base / "run", "--thresholds", t],
    ):
        assert_clean_error(invoke(*verb), pattern)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json"]


def test_the_figures_of_thresholds_must_add_up_on_their_run(base, tmp_path):
    doc = json.loads((base / "t.json").read_text())
    fit, held = doc["split"]["n_calibration"], doc["split"]["n_holdout"]
    cases: list[tuple[Callable[[dict[str, Any]], None], str]] = [
        (_edit(("split", "n_holdout"), held - 1), rf"solved on {N - 1} samples \({fit} calibration \+ {held - 1} held"),
        (
            lambda d: d["split"].update(n_calibration=fit + 1, n_holdout=held - 1),
            rf"record {fit + 1} calibration and {held - 1} held-out samples, but their split \(holdout 0\.5, seed 0\) "
            rf"gives {fit} and {held}",
        ),
        (_edit(("split", "seed"), 7), r"exits do not match run"),  # another split of the same sizes
        (_edit(("holdout", "n"), held + 1), rf"'holdout\.n' is {held + 1}, their split holds {held} out"),
        (_edit(("holdout",), None), rf"held-out figures do not fit their {held} held-out samples"),
        (_edit(("exit_shares",), [0.5, 0.25, 0.2]), rf"calibration exit shares .* are no counts of {fit} samples"),
        (_edit(("calibration_accuracy",), 0.5 + 0.1 / fit), rf"accuracy 0\.50\d+ are no counts of {fit}"),
        (_edit(("static",), doc["static"][:-1]), r"do not record 3 'static' entries"),
        (lambda d: d.pop("split"), r"do not record 'split\.holdout'"),
    ]
    run = load_run(base / "run")
    for i, (edit, pattern) in enumerate(cases):
        changed = json.loads(json.dumps(doc))
        edit(changed)
        with pytest.raises(DyncalError, match=pattern) as info:
            check_thresholds_for_run(read_thresholds(_write(tmp_path / f"{i}.json", changed)), run)
        assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- package manifests


def _manifest() -> dict[str, Any]:
    temps, thresholds = (1.0, 1.0), (0.9, None)
    return PackageManifest(
        k=2,
        c=3,
        score="maxprob",
        temperatures=temps,
        thresholds=thresholds,
        decision_fingerprint=decision_fingerprint("maxprob", temps, thresholds),
        input_shape=(4,),
        input_dtype="float32",
        stages=(PackageStage("stage_1.pt2", (0,)), PackageStage("stage_2.pt2", ())),
        files={"stage_1.pt2": "a" * 64, "stage_2.pt2": "b" * 64},
        run_fingerprint="c" * 64,
    ).to_dict()


def _manifest_text(**change: Any) -> str:
    doc = _manifest()
    for key, value in change.items():
        _edit(tuple(int(part) if part.isdigit() else part for part in key.split("__")), value)(doc)
    return json.dumps(doc)


MANIFESTS: dict[str, tuple[str, str]] = {
    "infinity": (_manifest_text(temperatures=[float("inf"), 1.0]), r"'temperatures\[0\]' must be a finite number"),
    "nan": (_manifest_text(thresholds=[float("nan"), None]), r"field 'thresholds\[0\]' must be a finite number"),
    "1e999": (_manifest_text().replace('"k": 2', '"k": 1e999'), r"field 'k' must be a finite number, got inf"),
    "free-form": (_manifest_text(solve={"x": [1, float("nan")]}), r"field 'solve\.x\[1\]' must be a finite number"),
    "nested": ('{"schema": "dyncal.package", "x": ' + "[" * 100_000 + "]" * 100_000 + "}", r"nests deeper than 32"),
    "k float": (_manifest_text(k=2.0), r"field 'k' must be an integer >= 2, got 2\.0"),
    "k bool": (_manifest_text(k=True), r"field 'k' must be an integer >= 2, got a boolean"),
    "tiny temperature": (_manifest_text(temperatures=[1e-320, 1.0]), r"'temperatures\[0\]' must be a positive"),
    "input shape": (_manifest_text(input__shape=[99999999999]), r"'input\.shape\[0\]' must be an integer >= 1 <= "),
    "carry dims": (_manifest_text(stages__0__carry_batch_dims=["0"]), r"'stages\[0\]\.carry_batch_dims\[0\]'"),
    "stages": (_manifest_text(stages=7), r"field 'stages' must be a list"),
    "files": (_manifest_text(files={"stage_1.pt2": 5}), r"field 'files\.stage_1\.pt2' must be a string"),
    "versions": (_manifest_text(versions={"torch": 2}), r"field 'versions\.torch' must be a string"),
    "list": ("[1, 2]", r"holds a list, not a JSON object"),
}


@pytest.mark.parametrize("name", list(MANIFESTS))
def test_a_malformed_manifest_is_one_line(name, tmp_path):
    text, pattern = MANIFESTS[name]
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "manifest.json").write_text(text)
    with pytest.raises(DyncalError, match=pattern) as info:
        read_manifest(tmp_path / "pkg")
    assert "\n" not in str(info.value) and "re-export" in str(info.value)


def test_the_base_manifest_is_valid(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "manifest.json").write_text(_manifest_text())
    assert read_manifest(tmp_path / "pkg").k == 2


def test_verify_with_a_malformed_package_manifest_is_one_line(base, tmp_path, cli):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "manifest.json").write_text(MANIFESTS["nested"][0])
    res = cli("verify", base / "run", "--thresholds", base / "t.json", "--package", tmp_path / "pkg")
    assert_clean_error(res, r"manifest\.json' is not a dyncal package manifest: its JSON nests deeper than 32")


# --------------------------------------------------------------------------- other JSON documents


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ('{"n": Infinity}', r"run\.json' is not a dyncal run document: field 'n' must be a finite number, got inf"),
        ('{"n": 60, "provenance": {"extra": {"x": -Infinity}}}', r"field 'provenance\.extra\.x' must be a finite"),
        ('{"n": 1e400}', r"field 'n' must be a finite number, got inf"),
    ],
)
def test_run_json_holds_strict_json(text, pattern, base, tmp_path):
    run = Path(shutil.copytree(base / "run", tmp_path / "run"))
    (run / "run.json").write_text(text)
    assert_clean_error(invoke("info", run), pattern)


@pytest.mark.parametrize(
    ("key", "value", "pattern"),
    [
        ("agreement", 1.5, r"field 'agreement' must be a non-negative finite number <= 1, got 1\.5"),
        ("runtime_exit_shares", [0.5, -0.5], r"field 'runtime_exit_shares\[1\]' must be a non-negative .* got -0\.5"),
        ("runtime_exit_shares", [], r"field 'runtime_exit_shares' must have at least 1 entries, got 0"),
        ("n", 0, r"field 'n' must be an integer >= 1, got 0"),
        ("threads", 0, r"field 'threads' must be an integer >= 1, got 0"),
    ],
)
def test_verify_results_hold_fractions(key, value, pattern, tmp_path):
    from dyncal.artifacts.verify import ModelIdentity, PairedTiming, VerifyResult

    timing = PairedTiming("cpu/b1", 1, ((1.0, 1.1), (1.2, 1.0)), ((3.0, 3.1), (3.2, 3.0)))
    doc = VerifyResult(
        "r", "d", ModelIdentity("m:f", "sha"), 2, 1.0, 1.0, 1.0, 1.0, (1.0, 0.0), (1.0, 0.0), (timing,), "cpu", "x", 1
    ).to_dict()
    doc[key] = value
    path = _write(tmp_path / "v.json", doc)
    with pytest.raises(DyncalError, match=pattern):
        VerifyResult.load(path)
    path.write_text(json.dumps(doc).replace(f'"{key}": ', f'"{key}": NaN, "x{key}": ', 1))
    with pytest.raises(DyncalError, match=rf"field '{key}' must be a finite number, got nan"):
        VerifyResult.load(path)


# --------------------------------------------------------------------------- imports


def _npz_claiming_rows(path: Path, rows: int) -> None:
    """An .npz whose logits header claims ``rows`` rows of (2, 3) while holding 4."""
    buf = io.BytesIO()
    np.save(buf, np.zeros((4, 2, 3), np.float32))
    data = buf.getvalue()
    header_end = data.index(b"\n")
    claimed = data[:header_end].replace(b"(4, 2, 3)", f"({rows}, 2, 3)".encode())
    padding = len(data[:header_end]) - len(claimed)  # keep the header's length (and so its alignment)
    claimed = claimed.replace(b"}", b"}" + b" " * padding) if padding > 0 else claimed.replace(b" " * -padding, b"", 1)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("logits.npy", claimed + data[header_end:])
        labels = io.BytesIO()
        np.save(labels, np.array([0, 1, 2, 0]))
        z.writestr("labels.npy", labels.getvalue())


def test_an_npz_header_claiming_a_trillion_rows_is_one_line(tmp_path, cli):
    _npz_claiming_rows(tmp_path / "big.npz", 10**12)
    res = cli("import", tmp_path / "big.npz", "--out", tmp_path / "run")
    assert_clean_error(res, r"array 'logits' declares shape \(1000000000000, 2, 3\) \(24,000,000,000,000 bytes\)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.npz"]


# --------------------------------------------------------------------------- the user's code


def _module(folder: Path, name: str, body: str) -> str:
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.py").write_text(body)
    return name


_CHATTY = """
import torch
from torch import nn
print("importing the model's module")

class Chatty(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(4, 3), nn.Linear(3, 3)

    def forward(self, x):
        print("forward on", tuple(x.shape))
        h = self.a(x)
        return [h, self.b(torch.relu(h))]

def make():
    print("building the model")
    return Chatty()
"""

_META = """
import torch
from torch import nn

class OnMeta(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 3)

    def forward(self, x):
        h = self.a(x)
        return [h.to("meta"), h.to("meta")]

def make():
    return OnMeta()
"""


@pytest.mark.integration
def test_a_model_that_prints_keeps_json_output_valid(cli, tmp_path, toy_npz):
    name = _module(tmp_path / "code", "chatty_tamper", _CHATTY)
    res = cli("collect", "--model", f"{name}:make", "--model-path", tmp_path / "code", "--data", toy_npz,
              "--out", tmp_path / "run")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert res.stdout == "" and "building the model" in res.stderr
    res = cli("profile", tmp_path / "run", "--macs-only", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["model"] == f"{name}:make" and len(doc["exits"]) == 2
    assert "forward on" in res.stderr


@pytest.mark.integration
def test_meta_device_outputs_are_one_line(cli, tmp_path, toy_npz):
    name = _module(tmp_path / "code", "meta_tamper", _META)
    code = tmp_path / "code"
    res = cli("collect", "--model", f"{name}:make", "--model-path", code, "--data", toy_npz, "--out", tmp_path / "r")
    assert_clean_error(res, r"exit 1 is on the meta device \(a tensor without values\)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["code", "toy.npz"]
    res = cli("collect", "--model", "toy_models:two_exit", "--model-path", TESTS, "--data", toy_npz,
              "--out", tmp_path / "run")  # fmt: skip
    assert res.exit_code == 0, res.output
    res = cli("profile", tmp_path / "run", "--model", f"{name}:make", "--model-path", code, "--allow-other-model",
              "--macs-only")  # fmt: skip
    assert_clean_error(res, r"exit 1 is on the meta device")


@pytest.mark.parametrize(
    ("spec", "body", "pattern"),
    [
        (".relative_tamper:make", None, r"a relative module such as '\.mod' cannot be imported.*got '\.relative"),
        ("pkg..mod:make", None, r"must look like 'pkg\.module:factory' with dotted Python names"),
        ("syntax_tamper:make", "def make(:\n    pass\n", r"importing module 'syntax_tamper' failed: SyntaxError"),
        ("raising_tamper:make", "raise ImportError('no GPU here')\n", r"failed: ImportError: no GPU here"),
        ("script_tamper:make", "import sys\nsys.exit(2)\n", r"exited while being imported \(SystemExit 2\)"),
    ],
)
def test_a_model_module_that_cannot_be_imported_is_one_line(spec, body, pattern, cli, tmp_path, toy_npz):
    if body is not None:
        _module(tmp_path / "code", spec.split(":")[0], body)
    (tmp_path / "code").mkdir(exist_ok=True)
    res = cli("collect", "--model", spec, "--model-path", tmp_path / "code", "--data", toy_npz, "--out", tmp_path / "r")
    assert_clean_error(res, pattern)
    assert not (tmp_path / "r").exists() and not (tmp_path / "r.partial").exists()


@pytest.fixture
def collected(cli, tmp_path, toy_npz) -> Path:
    """A run collected with toy_models:two_exit (its provenance names the model and input shape)."""
    res = cli("collect", "--model", "toy_models:two_exit", "--model-path", TESTS, "--data", toy_npz,
              "--out", tmp_path / "run")  # fmt: skip
    assert res.exit_code == 0, res.output
    return tmp_path / "run"


@pytest.mark.integration
def test_profile_refuses_an_input_shape_no_sample_has(cli, collected):
    before = (collected / "run.json").read_bytes()
    res = cli("profile", collected, "--input-shape", "99999999999,8,8", "--macs-only")
    assert_clean_error(res, r"--input-shape 99999999999,8,8 has 6\.4e\+12 values per sample, more than the")
    assert (collected / "run.json").read_bytes() == before


@pytest.mark.integration
def test_profile_dot_inside_a_run_and_outside_one(cli, collected, tmp_path, monkeypatch):
    monkeypatch.chdir(collected)
    res = cli("profile", ".", "--macs-only")
    assert res.exit_code == 0, res.output
    assert load_run(collected).costs.macs is not None
    assert sorted(p.name for p in collected.iterdir()) == ["indices.npy", "labels.npy", "logits.npy", "run.json"]
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    res = cli("profile", ".", "--macs-only")
    assert_clean_error(res, r"'.*elsewhere' is not a complete dyncal run \(no run\.json\)")


# --------------------------------------------------------------------------- devices


def test_one_device_is_one_name():
    assert [device_name(d) for d in ("cpu", "cpu:0", "cuda", "cuda:0", "cuda:1", "cuda:00")] == [
        "cpu",
        "cpu",
        "cuda",
        "cuda",
        "cuda:1",
        "cuda",
    ]
    for bad, pattern in (("cpu:99", r"one CPU device"), ("gpu", r"must be cpu, cuda or cuda:N"), ("cuda:x", r"cuda:N")):
        with pytest.raises(DyncalError, match=pattern):
            device_name(bad)


@pytest.mark.integration
def test_a_device_spelled_two_ways_is_one_latency_key(cli, collected, tmp_path):
    res = cli("profile", collected, "--device", "cpu:0", "--device", "cpu", *FAST)
    assert res.exit_code == 0, res.output
    assert sorted(load_run(collected).costs.latency) == ["cpu/b1"]
    assert load_run(collected).costs.latency["cpu/b1"].device == "cpu"
    before = (collected / "run.json").read_bytes()
    for args in (["profile", collected, "--device", "cpu:99", *FAST], ["verify", collected, "--device", "cpu:99",
                 "--thresholds", tmp_path / "missing.json"]):  # fmt: skip
        assert_clean_error(cli(*args), r"--device cpu:99: a process has one CPU device, cpu .*use --device cpu")
    assert (collected / "run.json").read_bytes() == before
    res = cli("solve", collected, "--budget", "0.6x", "--device", "cpu:0", "--out", tmp_path / "t.json", "--json")
    assert res.exit_code == 0, res.output
    assert list(json.loads(res.stdout)["expected_ms"]) == ["cpu/b1"]


# --------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["solve"], r"^error: Missing argument 'run'; see '.* solve --help'$"),
        (["solve", "{run}", "--budget", "0.6x", "--out", "{tmp}/t.json", "--bogus"], r"No such option: --bogus"),
        (["solve", "{run}", "--budget", "0.6x", "--out", "{tmp}/t.json", "--seed", "x"], r"Invalid value for '--seed'"),
        (["profile", "{run}", "--repeats", "1.5"], r"Invalid value for '--repeats'"),
        (["info"], r"Missing argument 'run'"),
        (["no-such-verb"], r"No such command 'no-such-verb'; see '.* --help'"),
        (["--bogus"], r"No such option: --bogus"),
    ],
)
def test_usage_errors_are_one_line_with_status_1(args, pattern, base, tmp_path, cli):
    res = cli(*[str(a).format(run=base / "run", tmp=tmp_path) for a in args])
    assert_clean_error(res, pattern)
    assert "╭" not in res.output and "Usage:" not in res.output
    assert list(tmp_path.iterdir()) == []


def test_help_is_still_help(cli):
    res = cli("solve", "--help")
    assert res.exit_code == 0 and "--budget" in res.stdout
