"""The typed artifact layer: each file has one document class that reads and writes it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import assert_clean_error
from hypothesis import given, settings
from hypothesis import strategies as st
from synthetic_profiles import synthetic_profile

from dyncal.artifacts import validate as V
from dyncal.artifacts.costs import CostTable, LatencyKey, LatencyProfile, UnmeasuredProfileError
from dyncal.artifacts.run import load_run, store_costs
from dyncal.artifacts.run_document import Provenance, RunDocument
from dyncal.artifacts.run_import import import_arrays
from dyncal.artifacts.thresholds import ThresholdsDocument, read_thresholds
from dyncal.errors import DyncalError, RunError


def _run(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    out = tmp_path / "run"
    prov = Provenance("m", None, "d", "cmd", "2026-01-01T00:00:00+00:00", "cpu")
    import_arrays(rng.normal(size=(20, 2, 3)).astype(np.float32), rng.integers(0, 3, 20), out, provenance=prov)
    return out


def test_run_document_is_what_load_run_reads_and_round_trips(tmp_path: Path) -> None:
    out = _run(tmp_path)
    doc = RunDocument.load(out)
    run = load_run(out)
    assert run.document == doc
    assert (doc.n, doc.k, doc.c) == (20, 2, 3)
    assert doc.fingerprint == run.fingerprint
    assert RunDocument.from_dict(json.loads((out / "run.json").read_text()), out) == doc
    assert json.loads((out / "run.json").read_text()) == doc.to_dict()


def test_keys_of_a_later_dyncal_survive_profiling(tmp_path: Path) -> None:
    """A key this dyncal does not know is kept when the cost table is rewritten, not dropped."""
    out = _run(tmp_path)
    doc = json.loads((out / "run.json").read_text())
    doc["added_later"] = {"kept": [1, 2]}
    doc["provenance"]["added_later_too"] = "kept"
    (out / "run.json").write_text(json.dumps(doc))
    profile = synthetic_profile("cpu", 1, ((1.0, 1.1), (1.0, 0.9)), (0.0, 0.0), (2.0, 2.1))
    store_costs(load_run(out), CostTable(macs=(1e6, 2e6), latency={str(LatencyKey("cpu", 1)): profile}))
    after = json.loads((out / "run.json").read_text())
    assert after["added_later"] == {"kept": [1, 2]}
    assert after["provenance"]["added_later_too"] == "kept"
    assert list(after["provenance"]) == [*list(doc["provenance"])[:-1], "added_later_too"]
    assert after["costs"]["macs"] == [1e6, 2e6]
    assert load_run(out).costs.latency["cpu/b1"] == profile
    assert RunDocument.load(out).other == {"added_later": {"kept": [1, 2]}}


def test_run_document_refuses_an_incomplete_run_in_one_line(tmp_path: Path) -> None:
    out = _run(tmp_path)
    doc = json.loads((out / "run.json").read_text())
    doc["complete"] = False
    (out / "run.json").write_text(json.dumps(doc))
    with pytest.raises(RunError, match=r"marks the run incomplete .*re-run 'dyncal collect") as info:
        RunDocument.load(out)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("value", "problem"), [(None, "is missing"), ("abc", "must be a SHA-256 hex digest")])
def test_a_run_without_its_fingerprint_is_refused_as_damaged(tmp_path: Path, value: str | None, problem: str) -> None:
    out = _run(tmp_path)
    doc = json.loads((out / "run.json").read_text())
    if value is None:
        del doc["fingerprint"]
    else:
        doc["fingerprint"] = value
    (out / "run.json").write_text(json.dumps(doc))
    with pytest.raises(RunError, match=rf"run.json field 'fingerprint' {problem}.*the run is damaged: re-create it"):
        load_run(out)


def test_thresholds_without_their_runs_fingerprint_are_refused_when_read(tmp_path: Path) -> None:
    doc = ThresholdsDocument("maxprob", (1.0, 1.0), (0.5, None), "optimal", {}, None, {}, 0.9, None, None, (1, 0))
    doc.save(tmp_path / "t.json")  # solved on bare arrays: no run to name
    with pytest.raises(DyncalError, match=r"field 'run_fingerprint' must be a string, got null; write a new one"):
        read_thresholds(tmp_path / "t.json")


def test_costs_are_not_stored_into_a_run_replaced_after_it_was_opened(tmp_path: Path) -> None:
    out = _run(tmp_path)
    opened = load_run(out)
    import_arrays(np.ones((20, 2, 3), np.float32), np.zeros(20, int), out, overwrite=True)
    before = (out / "run.json").read_bytes()
    with pytest.raises(RunError, match=r"run '.*run' was replaced after it was opened .*; open it again"):
        store_costs(opened, CostTable(macs=(1e6, 2e6)))
    assert (out / "run.json").read_bytes() == before


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 10**9),
    k=st.integers(1, 64),
    c=st.integers(2, 10**5),
    macs=st.lists(st.floats(1.0, 1e12), min_size=1, max_size=64),
)
def test_run_document_round_trips_through_json(n: int, k: int, c: int, macs: list[float]) -> None:
    macs = sorted(macs)[:k]
    k = len(macs)
    costs = CostTable(macs=tuple(macs))
    doc = RunDocument(
        n=n, k=k, c=c, provenance=Provenance("m", None, "d", "", "", "cpu"), fingerprint="0" * 64, costs=costs
    )
    assert RunDocument.from_dict(json.loads(json.dumps(doc.to_dict())), "run") == doc


def test_thresholds_document_saves_and_loads_itself(tmp_path: Path) -> None:
    doc = ThresholdsDocument(
        "maxprob",
        (1.0, 1.5),
        (0.75, None),
        "optimal",
        {"asked": "2x"},
        1e6,
        {},
        0.9,
        0.88,
        (0.85, 0.91),
        (0.6, 0.4),
        run_fingerprint="f" * 64,
    )
    doc.save(tmp_path / "t.json")
    assert read_thresholds(tmp_path / "t.json") == doc


@pytest.mark.integration  # a fresh process renders the whole report
def test_a_report_with_latency_at_several_batch_sizes_never_imports_torch(tmp_path: Path) -> None:
    """The cost model and every page are numpy work: reporting a profiled run needs no torch."""
    import subprocess
    import sys

    out = _run(tmp_path)
    stages = ((1.0, 1.1, 0.9), (2.0, 2.1, 1.9))
    latency = {
        str(LatencyKey("cpu", b)): synthetic_profile("cpu", b, stages, (0.1, 0.1), (3.0, 3.1, 2.9), 1, "test")
        for b in (1, 8)
    }
    store_costs(load_run(out), CostTable(macs=(1e6, 2e6), latency=latency))
    code = (
        "import sys\nfrom dyncal.cli import app\n"
        f"sys.argv = ['dyncal', 'report', {str(out)!r}, '--out', {str(tmp_path / 'r.pdf')!r}, '--budget', '0.8x',"
        " '--device', 'cpu', '--batch-size', '8']\n"
        "try:\n    app()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"
    assert (tmp_path / "r.pdf").read_bytes().startswith(b"%PDF")


def _profile_doc(**changes: object) -> dict[str, object]:
    """A cpu/b1 profile of 2 exits as run.json stores it, with ``changes`` (None drops a key)."""
    doc = synthetic_profile("cpu", 1, ((1.0, 1.1), (1.0, 0.9)), (0.1, 0.1), (2.0, 2.1)).to_dict()
    for key, value in changes.items():
        if value is None:
            doc.pop(key)
        else:
            doc[key] = value
    return doc


@pytest.mark.parametrize("paths", [None, []])
def test_a_latency_profile_without_exit_paths_is_refused_naming_the_field(paths: list[object] | None) -> None:
    """No profile dyncal writes lacks exit paths: one without them is an error, not a guess from the stages."""
    with pytest.raises(UnmeasuredProfileError) as e:
        LatencyProfile.from_dict(_profile_doc(exit_path_ms=paths), "costs.latency['cpu/b1']")
    assert e.value.field == "costs.latency['cpu/b1'].exit_path_ms"
    assert "cpu/b1" in e.value.problem and "exit paths" in e.value.problem
    with pytest.raises(UnmeasuredProfileError, match="'exit_path_ms'"):
        LatencyProfile("cpu", 1, ((1.0,), (2.0,)), (0.1,), (3.0,), 1, "x", exit_path_ms=())
    with pytest.raises(UnmeasuredProfileError, match="'exit_path_ms'"):
        LatencyProfile("cpu", 1, ((1.0,), (2.0,)), (0.1,), (3.0,), 1, "x", exit_path_ms=((1.1,), ()))


@pytest.mark.parametrize("full", [None, []])
def test_a_latency_profile_without_full_model_timing_is_refused_naming_the_field(full: list[object] | None) -> None:
    """dyncal profile always times the full model: no profile falls back to the stages summed."""
    with pytest.raises(UnmeasuredProfileError, match=r"'latency\.full_model_ms' is missing .*cpu/b1.*full model"):
        LatencyProfile.from_dict(_profile_doc(full_model_ms=full))
    with pytest.raises(UnmeasuredProfileError, match="'full_model_ms'"):
        LatencyProfile("cpu", 1, ((1.0,),), (), (), 1, "x", exit_path_ms=((1.0,),))


def test_exit_paths_must_be_one_per_exit() -> None:
    with pytest.raises(V.FieldError, match=r"'latency\.exit_path_ms' must have one entry per exit \(K=2\), got 1"):
        LatencyProfile.from_dict(_profile_doc(exit_path_ms=[[1.0]]))
    with pytest.raises(V.FieldError, match=r"'exit_path_ms' must have one entry per exit \(K=2\), got 3"):
        LatencyProfile("cpu", 1, ((1.0,), (2.0,)), (0.1,), (3.0,), 1, "x", exit_path_ms=((1.1,), (2.2,), (3.0,)))


@pytest.mark.parametrize("verb", ["solve", "report", "info"])
def test_a_run_whose_profile_lacks_exit_paths_is_one_line_naming_the_field_and_profile(
    tmp_path: Path, cli: Any, verb: str
) -> None:
    """The CLI says which profile lacks them and that only profiling again mends it (not 'fix it')."""
    out = _run(tmp_path)
    store_costs(load_run(out), CostTable(latency={"cpu/b1": LatencyProfile.from_dict(_profile_doc())}))
    doc = json.loads((out / "run.json").read_text())
    del doc["costs"]["latency"]["cpu/b1"]["exit_path_ms"]
    (out / "run.json").write_text(json.dumps(doc))
    args = {"solve": ["--budget", "0.6x", "--out", tmp_path / "t.json"], "report": ["--out", tmp_path / "r.pdf"]}
    res = cli(verb, out, *args.get(verb, []))
    assert_clean_error(res, r"'costs\.latency\['cpu/b1'\]\.exit_path_ms' is missing .*no measured exit paths")
    assert "re-run 'dyncal profile" in res.stderr and "fix it" not in res.stderr
    assert not (tmp_path / "t.json").exists() and not (tmp_path / "r.pdf").exists()
    doc["costs"] = None  # the remedy's first step: the run loads again, ready to be profiled
    (out / "run.json").write_text(json.dumps(doc))
    assert load_run(out).costs is None
