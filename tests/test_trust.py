"""Integrity of what dyncal writes and loads: locks, resume, the run's model, unwritable outputs, .pt2.

Concurrency and crashes use real processes made deterministic by the data factories in
``trust_data`` (one that waits at a gate while holding the run, one that SIGKILLs itself).
"""

from __future__ import annotations

import builtins
import contextlib
import io
import json
import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import toy_models
import trust_data
from conftest import TESTS, assert_clean_error, model_outputs

from dyncal.artifacts.costs import CostTable
from dyncal.artifacts.lock import RunLock, lock_path
from dyncal.artifacts.run import load_run, store_costs
from dyncal.errors import ModelError, RunError
from dyncal.models import load_model
from dyncal.run_model import ModelOverrides, open_run_model

ROOT = TESTS.parent
MODEL = ["--model", "toy_models:two_exit", "--model-path", TESTS]
FAST = ("--repeats", "3", "--warmup", "1")
RUN_FILES = ("logits.npy", "labels.npy", "indices.npy")


def _env(**extra: str) -> dict[str, str]:
    """This checkout's dyncal and the test helpers, one thread (the machine is shared)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DYNCAL_TEST_")}
    return {**env, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)]), "OMP_NUM_THREADS": "1", **extra}


def _dyncal(*args: object, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dyncal", *map(str, args)],
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _wait_for(path: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _same_run_json(a: Path, b: Path) -> None:
    """run.json of two runs agree except where time and the command line are recorded."""
    docs = [json.loads((p / "run.json").read_text()) for p in (a, b)]
    for doc in docs:
        prov = doc["provenance"]
        prov.pop("created"), prov.pop("command"), prov["extra"].pop("collect_seconds")
    assert docs[0] == docs[1]


# ----------------------------------------------------------------- writers hold a lock


def test_a_second_writer_fails_at_once_and_the_run_is_published_whole(cli, toy_npz, tmp_path):
    out = tmp_path / "run"
    assert cli("collect", *MODEL, "--data", toy_npz, "--out", out).exit_code == 0
    old = _snapshot(out)
    gate = tmp_path / "gate"
    gate.mkdir()
    args = [*MODEL, "--data", "trust_data:gated", "--out", out, "--batch-size", 5, "--overwrite", "-q"]
    first = subprocess.Popen(
        [sys.executable, "-m", "dyncal", "collect", *map(str, args)],
        env=_env(DYNCAL_TEST_GATE=str(gate)),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(gate / "ready", first)  # rows 0..9 written, the run's lock held
        assert lock_path(out).read_text() == f"dyncal lock: pid {first.pid}\n"
        held = rf"another dyncal process \(pid {first.pid}\) is writing '{out}'; wait for it"
        # a second collect --overwrite, a profile (rewrites run.json) and an import: all refused
        assert_clean_error(cli("collect", *MODEL, "--data", toy_npz, "--out", out, "--overwrite"), held)
        assert_clean_error(cli("profile", out, "--macs-only"), held)
        np.savez(tmp_path / "a.npz", logits=np.zeros((5, 2, 3)), labels=np.zeros(5, int))
        assert_clean_error(cli("import", tmp_path / "a.npz", "--out", out, "--overwrite"), held)
        with pytest.raises(RunError, match=held):
            store_costs(load_run(out), CostTable(macs=(1.0, 2.0)))
        assert _snapshot(out) == old  # the published run is untouched meanwhile
        (gate / "go").touch()
        assert first.wait(timeout=120) == 0, first.stderr.read() if first.stderr else ""
    finally:
        if first.poll() is None:
            first.kill()
        if first.stderr:
            first.stderr.close()
    run = load_run(out)
    data = trust_data.plain()
    x = torch.stack([data[i][0] for i in range(trust_data.N)])
    np.testing.assert_allclose(run.logits, model_outputs(toy_models.two_exit(), x), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(run.labels, data.y.numpy())
    assert not lock_path(out).exists() and not (tmp_path / "run.partial").exists()


def test_run_lock_names_its_holder_and_a_stale_lock_file_is_harmless(tmp_path):
    from dyncal.artifacts.run_import import import_arrays

    run = tmp_path / "run"
    opened = import_arrays(np.zeros((4, 2, 3), np.float32), [0, 1, 2, 0], run)
    before = (run / "run.json").read_bytes()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time, pathlib\n"
            "from dyncal.artifacts.lock import RunLock\n"
            "with RunLock(sys.argv[1]):\n"
            "    pathlib.Path(sys.argv[2]).touch()\n"
            "    while not pathlib.Path(sys.argv[3]).exists(): time.sleep(0.02)\n",
            str(run),
            str(tmp_path / "ready"),
            str(tmp_path / "go"),
        ],
        env=_env(),
    )
    try:
        _wait_for(tmp_path / "ready", holder)
        with pytest.raises(RunError, match=rf"another dyncal process \(pid {holder.pid}\) is writing"):
            store_costs(opened, CostTable(macs=(1.0, 2.0)))
        assert (run / "run.json").read_bytes() == before
        (tmp_path / "go").touch()
        assert holder.wait(timeout=60) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
    assert not lock_path(run).exists()
    # a lock file left behind by a killed writer holds no lock: the next writer proceeds
    lock_path(run).write_text("dyncal lock: pid 999999\n")
    assert store_costs(opened, CostTable(macs=(1.0, 2.0))).costs.macs == (1.0, 2.0)
    assert not lock_path(run).exists()
    # re-entrant in one process (profile holds it and then stores its costs)
    with RunLock(run), RunLock(run):
        store_costs(opened, CostTable(macs=(1.0, 3.0)))
        assert lock_path(run).exists()
    assert not lock_path(run).exists()


# ----------------------------------------------------------------- resume


def _killed_collect(tmp_path: Path, out: Path, kill_at: int, *extra: object) -> None:
    proc = _dyncal(
        "collect",
        *MODEL,
        "--data",
        "trust_data:killing",
        "--out",
        out,
        "--batch-size",
        5,
        "--checkpoint-every",
        0,
        "-q",
        *extra,
        DYNCAL_TEST_KILL_AT=str(kill_at),
    )
    assert proc.returncode == -9, proc.stderr
    assert not out.exists()


def test_a_collect_killed_with_sigkill_resumes_to_the_same_run_bit_for_bit(cli, tmp_path):
    reference = tmp_path / "reference"
    args = [*MODEL, "--data", "trust_data:killing", "--batch-size", 5]
    assert cli("collect", *args, "--out", reference).exit_code == 0

    out = tmp_path / "run"
    _killed_collect(tmp_path, out, kill_at=23)  # dies loading batch 4 (rows 20..24)
    partial = tmp_path / "run.partial"
    progress = json.loads((partial / "progress.0.json").read_text())
    assert progress["done"] == 20 and progress["spec"]["batch_size"] == 5
    saved = np.load(partial / "logits.npy")[:20].copy()

    res = cli("collect", *args, "--out", out, "--resume")
    assert res.exit_code == 0, res.output
    assert "continued the interrupted collect" in res.stderr
    for name in RUN_FILES:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    _same_run_json(out, reference)
    assert load_run(out).fingerprint == load_run(reference).fingerprint
    np.testing.assert_array_equal(np.load(out / "logits.npy")[:20], saved)  # kept, not recomputed
    assert not partial.exists() and not lock_path(out).exists()
    assert sorted(p.name for p in out.iterdir()) == ["indices.npy", "labels.npy", "logits.npy", "run.json"]


def test_resume_refuses_other_options_and_changed_data_and_keeps_the_partial(cli, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _killed_collect(tmp_path, out, kill_at=13)
    partial = tmp_path / "run.partial"
    before = _snapshot(partial)
    base = [*MODEL, "--data", "trust_data:killing", "--out", out]
    assert_clean_error(
        cli("collect", *base, "--batch-size", 4, "--resume"),
        rf"cannot resume '{partial}': --batch-size is 4 now but was 5; .*--overwrite instead of --resume",
    )
    assert_clean_error(
        cli("collect", *base, "--batch-size", 5, "--limit", 30, "--resume"),
        r"--limit is 30 now but was None \(and 1 more difference\)",
    )
    assert_clean_error(
        cli("collect", "--model", "toy_models:slow", "--model-path", TESTS, *base[4:], "--batch-size", 5, "--resume"),
        r"the model is 'toy_models:slow' now but was 'toy_models:two_exit'",
    )
    monkeypatch.setenv("DYNCAL_TEST_SHIFT", "0.5")  # same spec, other inputs: the recomputed batch shows it
    assert_clean_error(
        cli("collect", *base, "--batch-size", 5, "--resume"),
        r"rows 5\.\.9 come out with logits up to .* away .*the model or the data changed",
    )
    monkeypatch.delenv("DYNCAL_TEST_SHIFT")
    assert_clean_error(cli("collect", *base, "--batch-size", 5), r"\.partial' exists: .*--resume to continue it")
    assert _snapshot(partial) == before and not out.exists()
    assert cli("collect", *base, "--batch-size", 5, "--resume").exit_code == 0
    assert load_run(out).n == trust_data.N


@pytest.mark.slow
def test_torchrun_resumes_each_process_from_its_own_progress(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")

    def launch(port: int, out: Path, *extra: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(torchrun), "--nproc_per_node", "2", "--master_port", str(port), "-m", "dyncal", "collect"]
            + [*map(str, MODEL), "--data", "trust_data:killing", "--out", str(out), "--batch-size", "5", "-q", *extra],
            env=_env(**env),
            capture_output=True,
            text=True,
            timeout=300,
        )

    reference = tmp_path / "reference"
    assert launch(29541, reference).returncode == 0
    out = tmp_path / "run"
    killed = launch(29542, out, "--checkpoint-every", "0", DYNCAL_TEST_KILL_AT="40")  # in process 1's rows
    assert killed.returncode != 0 and not out.exists()
    saved = {r: json.loads((tmp_path / "run.partial" / f"progress.{r}.json").read_text()) for r in (0, 1)}
    # process 1 killed itself loading rows 36..40; process 0 was stopped by torchrun wherever it was
    assert (saved[1]["block"], saved[1]["done"]) == ([26, 53], 36)
    assert saved[0]["block"] == [0, 26] and saved[0]["done"] in (*range(0, 26, 5), 26)
    resumed = launch(29543, out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    for name in RUN_FILES:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    _same_run_json(out, reference)


def test_resume_with_nothing_to_resume_collects_from_the_start(cli, toy_npz, tmp_path):
    out = tmp_path / "run"
    res = cli("collect", *MODEL, "--data", toy_npz, "--out", out, "--resume")
    assert res.exit_code == 0, res.output
    assert "nothing to resume" in res.stderr and load_run(out).n == 37


# ----------------------------------------------------------------- the model is the run's model


def _two_exit_checkpoint(path: Path, scale: float = 1.0) -> Path:
    model = toy_models.two_exit()
    with torch.no_grad():
        model.head2.weight.mul_(scale)
    torch.save(model.state_dict(), path)
    return path


def test_profile_refuses_a_model_that_is_not_the_runs(cli, toy_npz, tmp_path):
    ckpt = _two_exit_checkpoint(tmp_path / "w.pth", scale=2.0)  # not the factory's own weights
    run = tmp_path / "run"
    assert cli("collect", *MODEL, "--weights", ckpt, "--data", toy_npz, "--out", run).exit_code == 0
    ok = cli("profile", run, "--macs-only", "--json")
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["model_check"] == {
        "weights": "match",
        "rows_checked": 8,
        "max_abs_diff": 0.0,
        "rows_note": None,
        "mismatch": None,
        "allowed": False,
    }
    assert f"note: loaded the model {run / 'run.json'} names: toy_models:two_exit, weights {ckpt}" in ok.stderr

    # the checkpoint was replaced since: refused, nothing written
    _two_exit_checkpoint(ckpt, scale=3.0)
    before = _snapshot(run)
    assert_clean_error(
        cli("profile", run, "--macs-only"),
        r"'toy_models:two_exit' is not the model run .* was collected with: the SHA-256 of .*w\.pth' is "
        r"[0-9a-f]{12}…, the run's weights had [0-9a-f]{12}…; re-collect the run with this model, "
        r"or pass --allow-other-model",
    )
    # another factory (the same class, its own weights): the recorded rows tell (the hash cannot)
    assert_clean_error(
        cli("profile", run, "--model", "toy_models:slow", "--macs-only"),
        r"re-running 8 recorded rows gives logits up to .* away from the run's",
    )
    assert _snapshot(run) == before
    allowed = cli("profile", run, "--allow-other-model", "--batch-size", "1", *FAST, "--json")
    assert allowed.exit_code == 0, allowed.output
    assert "note: --allow-other-model: used although the SHA-256" in allowed.stderr
    costs = load_run(run).costs
    assert costs.model["check"]["allowed"] is True and "SHA-256" in costs.model["check"]["mismatch"]
    assert "SHA-256" in costs.latency["cpu/b1"].settings["other_model"]


def test_open_run_model_checks_hash_and_rows(tmp_path, toy_npz):
    from dyncal.data import load_dataset
    from dyncal.verbs.collect import collect_run

    run = collect_run(
        load_model("toy_models:two_exit", model_path=TESTS),
        load_dataset(str(toy_npz)),
        tmp_path / "run",
        data_spec=str(toy_npz),
        batch_size=8,
    )
    assert run is not None
    loaded = open_run_model(run, ModelOverrides())
    assert (
        loaded.input_shape == (4,)
        and loaded.source.from_run
        and loaded.check.weights == "not recorded"
        and loaded.check.rows_checked == 8
    )
    # data moved away: rows cannot be re-run, and the same spec is still accepted (and says why)
    toy_npz.rename(tmp_path / "moved.npz")
    unchecked = open_run_model(run, ModelOverrides(), probe=None)
    assert unchecked.check.rows_checked == 0 and "no such file" in unchecked.check.rows_note
    assert unchecked.check.mismatch is None
    with pytest.raises(ModelError, match="collected with 'toy_models:two_exit', not 'toy_models:slow', and no rows"):
        open_run_model(run, ModelOverrides(model="toy_models:slow", model_path=TESTS), probe=None)
    # ... unless the data is given again, and the rows agree
    slow = ModelOverrides(model="toy_models:slow", model_path=str(TESTS))
    moved = open_run_model(run, slow, probe=None, data=str(tmp_path / "moved.npz"))
    assert moved.check.rows_checked == 8 and moved.check.mismatch is None and not moved.source.from_run


def test_profile_export_and_verify_refuse_a_model_of_another_c_in_the_same_words(tmp_path):
    """One probe (``probe_run_model``): the same ModelError, whichever verb runs the run's model again."""
    from torch.utils.data import TensorDataset

    from dyncal.artifacts.run_document import Provenance
    from dyncal.artifacts.run_import import import_arrays
    from dyncal.calibrate.solvers import solve_run
    from dyncal.verbs.export import export_package
    from dyncal.verbs.profile import profile_run
    from dyncal.verbs.verify import verify_run

    extra = {"model_path": str(TESTS), "input_shape": [3, 8, 8], "input_dtype": "float32"}
    prov = Provenance.here(model="models_zoo:conv_stack", data="(test)", device="cpu", extra=extra)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(40, 3, 4)).astype(np.float32)  # conv_stack has C=5, so no row can say so
    run = import_arrays(logits, rng.integers(0, 4, 40), tmp_path / "run", macs=(1e6, 2e6, 3e6), provenance=prov)
    thresholds = solve_run(run, "0.8x")
    wrong = r"^the model 'models_zoo:conv_stack' has K=3 exits and C=5 classes but run '.*' has K=3, C=4; use the model"
    with pytest.raises(ModelError, match=wrong):
        profile_run(run.path, latency=False)
    with pytest.raises(ModelError, match=wrong):
        export_package(run.path, thresholds, tmp_path / "pkg")
    inputs = TensorDataset(torch.randn(40, 3, 8, 8), torch.zeros(40, dtype=torch.int64))
    with pytest.raises(ModelError, match=wrong):
        verify_run(run.path, thresholds, data=inputs)
    assert load_run(run.path).costs.macs == (1e6, 2e6, 3e6) and not (tmp_path / "pkg").exists()


def test_an_exported_run_is_checked_by_the_archives_hash(tmp_path, archives):
    from dyncal.data import load_dataset
    from dyncal.verbs.collect import collect_run

    archive = archives["clean"]
    run = collect_run(
        load_model(str(archive)),
        load_dataset("dyncal.demo:validation"),
        tmp_path / "run",
        data_spec="dyncal.demo:validation",
        batch_size=16,
        limit=32,
    )
    assert run is not None
    loaded = open_run_model(run, ModelOverrides(), probe=None, check_rows=4)
    assert loaded.check.weights == "match" and loaded.check.rows_checked == 4
    # the same graph with other weights (the first convolution's, scaled): another archive
    scaled = {"data/weights/weight_0": lambda raw: (np.frombuffer(raw, np.float32) * 1.5).tobytes()}
    other = _rewrite(archive, tmp_path / "other.pt2", scaled)
    with pytest.raises(ModelError, match=r"SHA-256 of '.*other\.pt2' is"):
        open_run_model(run, ModelOverrides(model=str(other)), probe=None)


# ----------------------------------------------------------------- unwritable outputs


@contextlib.contextmanager
def _read_only(folder: Path) -> Iterator[None]:
    """``folder`` made unwritable: by mode, or as root (who ignores modes) by the immutable flag."""
    if os.geteuid() != 0:
        mode = folder.stat().st_mode
        folder.chmod(0o555)

        def undo() -> None:
            folder.chmod(mode)
    else:
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
            pytest.skip("cannot make a folder read-only here (root, and chattr +i is refused)")

        def undo() -> None:
            subprocess.run(["chattr", "-i", str(folder)], check=True)

    try:
        probe = folder / ".probe"
        with contextlib.suppress(OSError):
            probe.touch()
        if probe.exists():
            probe.unlink()
            pytest.skip(f"'{folder}' stays writable")
        yield
    finally:
        undo()


def test_unwritable_outputs_fail_in_one_line_before_any_work(cli, toy_npz, tmp_path):
    run = tmp_path / "runs" / "run"
    run.parent.mkdir()
    assert cli("collect", *MODEL, "--data", toy_npz, "--out", run).exit_code == 0
    before = _snapshot(run)
    with _read_only(run):
        assert_clean_error(
            cli("profile", run, "--batch-size", "1", *FAST),
            rf"cannot write the cost table \(run\.json\) in '{run}' \(.*\); make the folder writable or work on a "
            r"copy \(nothing was computed\)",
        )
    assert _snapshot(run) == before and load_run(run).costs is None
    with _read_only(run.parent):
        assert_clean_error(
            cli("collect", *MODEL, "--data", toy_npz, "--out", run.parent / "new"),
            rf"cannot write in the folder '{run.parent}' \(",
        )
        assert_clean_error(cli("profile", run, "--macs-only"), r"cannot create the lock file .*\.dyncal-lock-run'")
        assert_clean_error(cli("demo", "--out", run.parent / "demo"), rf"cannot write in the folder '{run.parent}'")
    assert sorted(p.name for p in run.parent.iterdir()) == ["run"]


# ----------------------------------------------------------------- .pt2 archives with pickles


class _TouchMarker:
    """Unpickles to ``open(marker, "w")``: proof that a payload ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return builtins.open, (self.marker, "w")


def _rewrite(src: Path, dst: Path, entries: dict[str, object]) -> Path:
    """Copy a zip archive, replacing entries (by path below the root folder) with bytes or a function of them."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            new = entries.get(info.filename.split("/", 1)[1], data)
            zout.writestr(info, new(data) if callable(new) else new)  # type: ignore[arg-type]
    return dst


def _evil_archive(clean: Path, out: Path, kind: str, marker: Path) -> Path:
    payload = io.BytesIO()
    torch.save(_TouchMarker(marker), payload)
    if kind == "use_pickle weight":

        def pickled(data: bytes) -> bytes:
            doc = json.loads(data)
            doc["config"]["stage1.0.weight"]["use_pickle"] = True
            return json.dumps(doc).encode()

        entries = {"data/weights/model_weights_config.json": pickled, "data/weights/weight_0": payload.getvalue()}
    else:
        entries = {"data/sample_inputs/model.pt": payload.getvalue()}
    return _rewrite(clean, out, entries)


KINDS = ("use_pickle weight", "sample inputs")


@pytest.fixture(scope="module")
def archives(demo_pt2: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A clean export of the demo model, and for each kind a crafted copy shown to be live."""
    folder = tmp_path_factory.mktemp("pt2")
    found = {"clean": demo_pt2}
    live = [
        _evil_archive(found["clean"], folder / f"live-{i}.pt2", kind, folder / f"live-{i}")
        for i, kind in enumerate(KINDS)
    ]
    # The crafted archives are live: torch.export.load alone runs their payloads.
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, torch\nfor p in sys.argv[1:]:\n    try: torch.export.load(p)\n    except Exception: pass",
            *map(str, live),
        ],
        env=_env(),
        capture_output=True,
        timeout=300,
    )
    assert all((folder / f"live-{i}").exists() for i in range(len(KINDS)))
    return found


@pytest.mark.parametrize(
    ("kind", "pattern"),
    [
        ("use_pickle weight", r"stage1\.0\.weight in 'demo/data/weights/model_weights_config\.json'"),
        ("sample inputs", r"'demo/data/sample_inputs/model\.pt' needs the unrestricted unpickler"),
    ],
)
def test_a_pt2_with_a_pickled_payload_is_refused_and_never_runs(cli, tmp_path, archives, kind, pattern):
    data = ["--data", "dyncal.demo:validation", "--limit", 16, "--batch-size", 8]
    marker = tmp_path / "marker"
    evil = _evil_archive(archives["clean"], tmp_path / "evil.pt2", kind, marker)
    res = cli("collect", "--model", evil, *data, "--out", tmp_path / "run")
    assert_clean_error(res, rf"'{evil}' holds pickled data that loading would execute \({pattern}\); re-export it")
    assert not marker.exists() and not (tmp_path / "run").exists()
    ok = cli("collect", "--model", archives["clean"], *data, "--out", tmp_path / "clean-run")
    assert ok.exit_code == 0, ok.output
    assert load_run(tmp_path / "clean-run").n == 16
