"""dyncal export and dyncal.load_early_exit: a package that serves the early exit without the model's code.

Packages are loaded in a fresh process whose sys.path does not reach the model's code (and
where importing it is blocked), and must reproduce the exit rule on the run's stored logits
for every sample at batch sizes 1 and 64.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil
import subprocess
import sys
import textwrap
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_clean_error
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dyncal
from dyncal.analysis.package_runner import load_early_exit
from dyncal.artifacts.package import MANIFEST
from dyncal.artifacts.thresholds import ThresholdsDocument, decision_fingerprint, read_thresholds, thresholds_from_json
from dyncal.calibrate.policy import assign_exits
from dyncal.calibrate.scores import exit_scores
from dyncal.errors import DyncalError, ModelError
from dyncal.verbs.export import export_package

ROOT = Path(__file__).parents[1]
TESTS = Path(__file__).parent

# Runs in a fresh interpreter: only the repository root is importable, the model's module
# (and dyncal.demo) cannot be imported at all.
_FRESH = textwrap.dedent(
    """
    import importlib.abc, importlib.util, json, sys
    import numpy as np, torch

    blocked = set(json.loads(sys.argv[4]))

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name in blocked or any(name.startswith(b + ".") for b in blocked):
                raise ImportError(f"{name} is blocked: the package must not need the model's code")
            return None

    sys.meta_path.insert(0, Block())
    for name in blocked:  # the block is in force
        try:
            __import__(name)
        except ImportError:
            pass
        else:
            raise SystemExit(f"{name} could be imported")
    import dyncal

    runner = dyncal.load_early_exit(sys.argv[1])
    x = torch.from_numpy(np.load(sys.argv[2]))
    out = {}
    for b in (1, 64):
        runner.reset_counts()
        parts = [runner(x[i : i + b]) for i in range(0, len(x), b)]
        out[f"exits_{b}"] = torch.cat([p[0] for p in parts]).numpy()
        out[f"preds_{b}"] = torch.cat([p[1] for p in parts]).numpy()
        out[f"rows_{b}"] = np.array(runner.stage_rows)
    np.savez(sys.argv[3], **out)
    leaked = sorted(m for m in sys.modules if m in blocked or m.split(".")[0] in blocked)
    print(json.dumps({"leaked": leaked, "sys_path": sys.path}))
    """
)


def _simulated(run_dir: Path, th: ThresholdsDocument) -> tuple[np.ndarray, np.ndarray]:
    run = dyncal.load_run(run_dir)
    scores, preds = exit_scores(run.logits, th.score, th.temperatures)
    exits = assign_exits(scores, thresholds_from_json(list(th.thresholds)))
    return exits, preds[np.arange(run.n), exits]


def _run_fresh(pkg: Path, inputs: np.ndarray, tmp: Path, blocked: list[str]) -> tuple[dict[str, np.ndarray], dict]:
    x_file, out_file = tmp / "x.npy", tmp / "out.npz"
    np.save(x_file, inputs)
    script = tmp / "fresh.py"
    script.write_text(_FRESH)
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [sys.executable, str(script), str(pkg), str(x_file), str(out_file), json.dumps(blocked)],
        capture_output=True,
        text=True,
        cwd=tmp,
        env=env,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    info = json.loads(res.stdout.strip().splitlines()[-1])
    with np.load(out_file) as npz:
        return {k: npz[k] for k in npz.files}, info


def _check_fresh(out: dict[str, np.ndarray], exits: np.ndarray, preds: np.ndarray, k: int) -> None:
    reached = np.array([(exits >= j).sum() for j in range(k)])
    for b in (1, 64):
        np.testing.assert_array_equal(out[f"exits_{b}"], exits)
        np.testing.assert_array_equal(out[f"preds_{b}"], preds)
        # stage j computed exactly the rows whose exit is j or later: nothing more
        np.testing.assert_array_equal(out[f"rows_{b}"], reached)


# --------------------------------------------------------------------------- the demo


@pytest.fixture(scope="module")
def demo(demo_package: dict) -> dict:
    """The demo run (collected, MACs profiled), solved at 0.5x and exported; ``x``: its inputs in order."""
    from dyncal.data import load_dataset
    from dyncal.verbs.demo import DEMO_DATA

    ds = load_dataset(DEMO_DATA)
    x = torch.stack([ds[int(i)][0] for i in dyncal.load_run(demo_package["run"]).indices]).numpy()
    return {**demo_package, "x": x}


def test_demo_package_reproduces_the_exit_rule_in_a_fresh_process(demo, tmp_path):
    exits, preds = _simulated(demo["run"], demo["th"])
    assert len(set(exits.tolist())) >= 3, "the thresholds should use several exits"
    out, info = _run_fresh(demo["pkg"], demo["x"], tmp_path, ["dyncal.demo"])
    assert info["leaked"] == []
    _check_fresh(out, exits, preds, 4)


def _midpoint(sorted_scores: np.ndarray, q: float) -> float:
    """A threshold midway between two neighbouring scores near quantile ``q``, far from both (no float ties)."""
    gaps = np.diff(sorted_scores)
    i = int(q * (len(gaps) - 1))
    ok = np.flatnonzero(gaps > 1e-4)
    j = ok[np.argmin(np.abs(ok - i))]
    return float((sorted_scores[j] + sorted_scores[j + 1]) / 2)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    score=st.sampled_from(["maxprob", "margin", "entropy"]),
    quantiles=st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3),
    batch_size=st.integers(1, 97),
)
def test_package_stages_follow_the_exit_rule_for_any_thresholds(demo, score, quantiles, batch_size):
    """The package's stages under EarlyExitRunner take the simulated exit for any thresholds and batch size."""
    from dyncal.analysis.early_exit import EarlyExitRunner

    run = dyncal.load_run(demo["run"])
    temps = [1.0, 1.3, 0.8, 1.0]
    scores, preds = exit_scores(run.logits, score, temps)
    ts = [_midpoint(np.sort(scores[:, j]), q) for j, q in enumerate(quantiles)]
    n = 240  # rows replayed (kept small: batch size 1 is one runner call per row)
    want = assign_exits(scores[:n], ts)
    if "stages" not in demo:
        demo["stages"] = load_early_exit(demo["pkg"]).stages
    runner = EarlyExitRunner(demo["stages"], [*ts, None], temps, score)
    x = torch.from_numpy(demo["x"][:n])
    parts = [runner(x[i : i + batch_size]) for i in range(0, n, batch_size)]
    np.testing.assert_array_equal(torch.cat([p[0] for p in parts]).numpy(), want)
    np.testing.assert_array_equal(torch.cat([p[1] for p in parts]).numpy(), preds[np.arange(n), want])


def test_manifest_binds_run_thresholds_model_and_files(demo):
    m = json.loads((demo["pkg"] / MANIFEST).read_text())
    th, run = demo["th"], dyncal.load_run(demo["run"])
    assert (m["schema"], m["schema_version"], m["k"], m["c"]) == ("dyncal.package", 1, 4, 10)
    assert m["run_fingerprint"] == run.fingerprint
    assert m["decision_fingerprint"] == th.decision_fingerprint
    assert m["thresholds"] == list(th.thresholds) and m["temperatures"] == list(th.temperatures)
    assert m["score"] == th.score
    assert m["input"] == {"shape": [1, 8, 8], "dtype": "float32"}
    assert m["model"]["weights_sha256"] == run.provenance.weights_sha256
    assert m["model"]["spec"] == run.provenance.model
    files = sorted(p.name for p in demo["pkg"].iterdir() if p.name != MANIFEST)
    assert sorted(m["files"]) == files == [f"stage_{i}.pt2" for i in range(1, 5)]
    for name, sha in m["files"].items():
        assert hashlib.sha256((demo["pkg"] / name).read_bytes()).hexdigest() == sha
    assert m["check"]["batch_sizes"] == [1, 4] and max(m["check"]["max_abs_diff"]) < 1e-4
    assert not (demo["tmp"] / "pkg.partial").exists()


def test_no_pickled_entry_in_any_archive(demo):
    from dyncal.archives import check_archive

    for name in json.loads((demo["pkg"] / MANIFEST).read_text())["files"]:
        check_archive((demo["pkg"] / name).read_bytes(), name)  # raises on a pickled entry


def _copy_with(pkg: Path, dst: Path, manifest_edit=None, files: dict[str, bytes] | None = None) -> Path:
    """A copy of ``pkg`` with files replaced and the manifest edited and re-hashed (a consistent package)."""
    shutil.copytree(pkg, dst)
    m = json.loads((dst / MANIFEST).read_text())
    for name, data in (files or {}).items():
        (dst / name).write_bytes(data)
        m["files"][name] = hashlib.sha256(data).hexdigest()
    if manifest_edit is not None:
        manifest_edit(m)
    (dst / MANIFEST).write_text(json.dumps(m))
    return dst


def _poison_stage() -> bytes:
    """An exported stage that fails on the carry a real stage 1 hands on (it expects 3 features)."""

    class Poison(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = torch.nn.Linear(3, 10)

        def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.head(h), h

    example = torch.zeros(2, 3)
    ep = torch.export.export(Poison(), (example,), dynamic_shapes=({0: torch.export.Dim("b", min=1)},))
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    return buf.getvalue()


def test_everyone_leaving_at_exit_1_never_runs_later_stages(demo, tmp_path):
    """Later stages are replaced by ones that fail if called: with t_1 = 0 nobody reaches them."""
    poison = _poison_stage()
    replaced = {f"stage_{i}.pt2": poison for i in (2, 3, 4)}

    def everyone_leaves(m: dict) -> None:
        m["thresholds"] = [0.0, *m["thresholds"][1:]]  # maxprob >= 0 always
        m["decision_fingerprint"] = decision_fingerprint(m["score"], m["temperatures"], m["thresholds"])

    pkg = _copy_with(demo["pkg"], tmp_path / "first", everyone_leaves, replaced)
    runner = load_early_exit(pkg)
    x = torch.from_numpy(demo["x"])
    run = dyncal.load_run(demo["run"])
    for b in (1, 64):
        runner.reset_counts()
        parts = [runner(x[i : i + b]) for i in range(0, len(x), b)]
        exits = torch.cat([p[0] for p in parts]).numpy()
        preds = torch.cat([p[1] for p in parts]).numpy()
        assert (exits == 0).all()
        np.testing.assert_array_equal(preds, np.asarray(run.logits[:, 0]).argmax(1))
        assert runner.stage_rows == [len(x), 0, 0, 0]
        assert runner.stage_calls == [len(parts), 0, 0, 0]
    # the same package with the solved thresholds does reach stage 2, and fails there
    pkg2 = _copy_with(demo["pkg"], tmp_path / "solved", None, replaced)
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        load_early_exit(pkg2)(x[:64])


def test_a_pickled_entry_is_refused_on_load(demo, tmp_path):
    src = (demo["pkg"] / "stage_2.pt2").read_bytes()
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(src)) as zin, zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if item.filename.endswith("data/weights/model_weights_config.json"):
                cfg = json.loads(data)
                first = next(iter(cfg["config"]))
                cfg["config"][first]["use_pickle"] = True
                data = json.dumps(cfg).encode()
            zout.writestr(item, data)
    pkg = _copy_with(demo["pkg"], tmp_path / "pickled", None, {"stage_2.pt2": buf.getvalue()})
    with pytest.raises(ModelError, match="pickled") as e:
        load_early_exit(pkg)
    assert len(str(e.value).splitlines()) == 1


def test_a_tampered_file_is_refused(demo, tmp_path):
    pkg = tmp_path / "tampered"
    shutil.copytree(demo["pkg"], pkg)
    data = bytearray((pkg / "stage_3.pt2").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (pkg / "stage_3.pt2").write_bytes(bytes(data))
    with pytest.raises(DyncalError, match="SHA-256") as e:
        load_early_exit(pkg)
    assert len(str(e.value).splitlines()) == 1


def test_edited_thresholds_are_refused(demo, tmp_path):
    def edit(m: dict) -> None:
        m["thresholds"] = [0.0, *m["thresholds"][1:]]

    pkg = _copy_with(demo["pkg"], tmp_path / "edited", edit)
    with pytest.raises(DyncalError, match="decision fingerprint"):
        load_early_exit(pkg)


def test_missing_stage_file_and_not_a_package(demo, tmp_path):
    pkg = tmp_path / "missing"
    shutil.copytree(demo["pkg"], pkg)
    (pkg / "stage_4.pt2").unlink()
    with pytest.raises(DyncalError, match="stage_4.pt2"):
        load_early_exit(pkg)
    with pytest.raises(DyncalError, match="not a dyncal package"):
        load_early_exit(tmp_path)


def test_runner_checks_its_input_and_handles_an_empty_batch(demo):
    runner = load_early_exit(demo["pkg"])
    with pytest.raises(DyncalError, match=r"takes \(B, 1, 8, 8\)"):
        runner(torch.zeros(2, 8, 8))
    with pytest.raises(DyncalError, match="float32"):
        runner(torch.zeros(2, 1, 8, 8, dtype=torch.float64))
    exits, preds = runner(torch.zeros(0, 1, 8, 8))
    assert exits.shape == preds.shape == (0,) and exits.dtype == torch.int64
    assert runner.to("cpu") is runner and runner.device == torch.device("cpu")


def test_runner_is_a_drop_in_early_exit_runner(demo):
    from dyncal.analysis.early_exit import EarlyExitRunner

    runner = load_early_exit(demo["pkg"])
    assert isinstance(runner, EarlyExitRunner)
    x = torch.from_numpy(demo["x"][:50])
    exits, preds = runner(x)
    assert exits.dtype == preds.dtype == torch.int64 and exits.shape == (50,)
    # the package's stand-in for the plain model (what verify times it against): every exit, every row
    logits = runner.full_model(x)
    np.testing.assert_allclose(torch.stack(logits, 1).numpy(), dyncal.load_run(demo["run"]).logits[:50], atol=1e-4)


def test_cli_export_refuses_existing_outputs_and_leaves_them(demo, cli, tmp_path):
    th = demo["tmp"] / "th.json"
    existing = tmp_path / "taken"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    res = cli("export", demo["run"], "--thresholds", th, "--out", existing)
    assert_clean_error(res, "already exists")
    res = cli("export", demo["run"], "--thresholds", th, "--out", existing, "--overwrite")
    assert_clean_error(res, "not a dyncal package")
    assert [p.name for p in existing.iterdir()] == ["notes.txt"]
    assert (existing / "notes.txt").read_text() == "mine"
    before = {p.name: p.read_bytes() for p in demo["pkg"].iterdir()}
    res = cli("export", demo["run"], "--thresholds", th, "--out", demo["pkg"])
    assert_clean_error(res, "already exists")
    assert {p.name: p.read_bytes() for p in demo["pkg"].iterdir()} == before


def test_cli_export_refuses_thresholds_of_another_run(demo, cli, tmp_path):
    other = dataclasses.replace(demo["th"], run_fingerprint="0" * 64)
    (tmp_path / "other.json").write_text(json.dumps(other.to_dict()))
    res = cli("export", demo["run"], "--thresholds", tmp_path / "other.json", "--out", tmp_path / "pkg")
    assert_clean_error(res, "another run")
    assert not (tmp_path / "pkg").exists() and not (tmp_path / "pkg.partial").exists()


def test_cli_export_overwrites_a_package(demo, cli, tmp_path):
    pkg = tmp_path / "pkg"
    shutil.copytree(demo["pkg"], pkg)
    (pkg / "stage_1.pt2").write_bytes(b"stale")
    res = cli("export", demo["run"], "--thresholds", demo["tmp"] / "th.json", "--out", pkg, "--overwrite", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["path"] == str(pkg) and doc["size_bytes"] > 0
    assert doc["decision_fingerprint"] == demo["th"].decision_fingerprint
    load_early_exit(pkg)  # whole again
    assert not (tmp_path / "pkg.partial").exists()


# --------------------------------------------------------------------------- a branching 4-exit model


@pytest.fixture(scope="module")
def branchy(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A two-branch 4-exit model (cross-attention between a CNN and latent tokens), importable only
    from a temporary folder; collected, profiled for MACs and given thresholds that spread the exits."""
    from typer.testing import CliRunner

    from dyncal.calibrate.solvers import solve_run
    from dyncal.cli import app
    from dyncal.verbs.profile import ProfileOptions, profile_run

    tmp = tmp_path_factory.mktemp("branchy")
    code = tmp / "code"
    code.mkdir()
    module = f"branchy_{uuid.uuid4().hex[:8]}"
    shutil.copy(TESTS / "models_zoo.py", code / f"{module}.py")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(150, 3, 8, 8)).astype(np.float32)
    np.savez(tmp / "data.npz", inputs=x, labels=rng.integers(0, 7, 150))
    res = CliRunner().invoke(
        app,
        [
            "collect",
            "--model",
            f"{module}:perceiver_like",
            "--model-path",
            str(code),
            "--data",
            str(tmp / "data.npz"),
            "--out",
            str(tmp / "run"),
            "-q",
        ],
    )
    assert res.exit_code == 0, res.output
    profile_run(tmp / "run", options=ProfileOptions(latency=False))
    run = dyncal.load_run(tmp / "run")
    th = solve_run(run, "0.6x")
    # thresholds midway between two scores near each exit's 60th percentile: every exit is used
    scores, _ = exit_scores(run.logits, th.score, th.temperatures)
    ts: list[float | None] = []
    for j in range(run.k - 1):
        s = np.sort(scores[:, j])
        i = int(0.6 * len(s))
        ts.append(float((s[i - 1] + s[i]) / 2))
    th = dataclasses.replace(th, thresholds=(*ts, None))
    (tmp / "th.json").write_text(json.dumps(th.to_dict()))
    return {"tmp": tmp, "run": tmp / "run", "th": th, "module": module, "code": code, "x": x}


def test_branching_model_package_reproduces_the_exit_rule_without_its_code(branchy, cli, tmp_path):
    pkg = branchy["tmp"] / "pkg"
    res = cli("export", branchy["run"], "--thresholds", branchy["tmp"] / "th.json", "--out", pkg)
    assert res.exit_code == 0, res.output
    assert (
        read_thresholds(branchy["tmp"] / "th.json").decision_fingerprint
        == json.loads((pkg / MANIFEST).read_text())["decision_fingerprint"]
    )
    exits, preds = _simulated(branchy["run"], branchy["th"])
    assert set(exits.tolist()) == {0, 1, 2, 3}
    out, info = _run_fresh(pkg, branchy["x"], tmp_path, [branchy["module"], "models_zoo", "tests"])
    assert info["leaked"] == [] and str(branchy["code"]) not in info["sys_path"]
    _check_fresh(out, exits, preds, 4)


def test_export_refuses_weights_that_are_not_the_runs(demo, tmp_path):
    from dyncal.demo import DigitsExitNet

    torch.manual_seed(5)
    other = tmp_path / "other.pt"
    torch.save(DigitsExitNet().state_dict(), other)
    with pytest.raises(DyncalError, match="is not the model run .* was collected with: the SHA-256") as info:
        export_package(demo["run"], demo["th"], tmp_path / "pkg", weights=str(other))
    # a package ships the run's model only: no override is offered that export does not have
    assert str(info.value).endswith("re-collect the run with this model")
    assert not (tmp_path / "pkg").exists() and not (tmp_path / "pkg.partial").exists()


def test_verify_measures_the_package_that_ships(demo, tmp_path, cli):
    """verify --package replays the exported stages: what is measured is what is shipped."""
    out = tmp_path / "verify.json"
    res = cli(
        "verify", demo["run"], "--thresholds", demo["tmp"] / "th.json", "--package", demo["pkg"],
        "--batch-size", "1,16", "--max-seconds", "2", "--repeats", "2", "--out", out,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    from dyncal.artifacts.verify import VerifyResult

    result = VerifyResult.load(out)
    assert result.model.kind == "package" and result.model.spec == str(demo["pkg"])
    assert result.model.weights_sha256 == dyncal.load_run(demo["run"]).provenance.weights_sha256
    assert result.agreement == 1.0 and result.n == dyncal.load_run(demo["run"]).n
    assert [t.key for t in result.timings] == ["cpu/b1", "cpu/b16"]
    assert result.decision_fingerprint == demo["th"].decision_fingerprint


def test_verify_refuses_a_package_of_other_thresholds(demo, tmp_path, cli):
    from dyncal.calibrate.solvers import solve_run

    other = tmp_path / "other.json"
    th = solve_run(dyncal.load_run(demo["run"]), "0.05x", method="geometric")  # optimal is flat from 0.04x to 0.5x
    assert th.decision_fingerprint != demo["th"].decision_fingerprint
    other.write_text(json.dumps(th.to_dict()))
    res = cli("verify", demo["run"], "--thresholds", other, "--package", demo["pkg"], "--max-seconds", "1")
    assert_clean_error(res, "holds other thresholds than --thresholds; pass")
    res = cli(
        "verify", demo["run"], "--thresholds", demo["tmp"] / "th.json", "--package", demo["pkg"],
        "--weights", demo["tmp"] / "th.json",
    )  # fmt: skip
    assert_clean_error(res, "--package replays the exported stages")
