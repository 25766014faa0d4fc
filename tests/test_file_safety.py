"""Nothing outside what dyncal made is touched: locks, --overwrite, .partial folders, atomic writes, concurrent writers.

Each test plants what a user (or somebody hostile) may have beside or inside an output:
another tool's lock file, a symbolic link at a name dyncal uses, notes in a run folder, a
.git in a demo folder; and checks, entry by entry and byte for byte, that it is still there
afterwards. Concurrent writers are real processes, made deterministic by a gate (a file the
test creates) rather than by timing.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TESTS, assert_clean_error

from dyncal.artifacts import atomic
from dyncal.artifacts.atomic import atomic_write_bytes, atomic_write_text
from dyncal.artifacts.lock import OutputLock, lock_path
from dyncal.artifacts.run import load_run
from dyncal.artifacts.run_import import import_arrays
from dyncal.calibrate.solvers import solve_run

ROOT = TESTS.parent
MODEL = ["--model", "toy_models:two_exit", "--model-path", TESTS]
TOOL_LOCKS = ("poetry", "Cargo", "uv")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DYNCAL_TEST_")}
    return {
        **env,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)]),
        "OMP_NUM_THREADS": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def _dyncal(*args: object, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dyncal", *map(str, args)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
        **kwargs,  # type: ignore[call-overload]
    )


def _one_line_error(proc: subprocess.CompletedProcess[str], pattern: str) -> None:
    """A user error from a real process: exit status 1 and one line on stderr matching ``pattern``."""
    err = proc.stderr.strip()
    assert proc.returncode == 1, (proc.returncode, proc.stdout, err)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert re.search(pattern, err), err


def _tree(folder: Path) -> dict[str, object]:
    """Every entry under ``folder``, hidden ones and links included (never followed): kind and contents."""
    out: dict[str, object] = {}
    for top, dirs, files in os.walk(folder, followlinks=False):
        for name in sorted(dirs + files):
            p = Path(top, name)
            st = os.lstat(p)
            key = str(p.relative_to(folder))
            if stat.S_ISLNK(st.st_mode):
                out[key] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[key] = ("dir", stat.S_IMODE(st.st_mode))
            elif stat.S_ISREG(st.st_mode):
                out[key] = ("file", p.read_bytes())
            else:
                out[key] = ("other", stat.S_IFMT(st.st_mode))
    return out


def _no_dyncal_leftovers(folder: Path) -> None:
    names = [p.name for p in folder.iterdir()]
    assert not [n for n in names if n.startswith(".dyncal-lock-") or n.endswith(".tmp")], names


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An imported run with MACs (``run``), thresholds solved on it (``t.json``), and ``x.npz``: its arrays to
    import, and inputs for ``toy_models:two_exit`` to collect."""
    tmp = tmp_path_factory.mktemp("toy")
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(60, 2, 3)).astype(np.float32)
    labels = rng.integers(0, 3, 60)
    import_arrays(logits, labels, tmp / "run", macs=[1e6, 2e6])
    solve_run(load_run(tmp / "run"), "0.6x").save(tmp / "t.json")
    np.savez(tmp / "x.npz", logits=logits, labels=labels, inputs=rng.normal(size=(60, 4)).astype(np.float32))
    return tmp


def _verb(verb: str, toy: Path, out: Path) -> list[object]:
    """The arguments of ``verb`` writing ``out`` from the toy run (export and verify stop at the run's model)."""
    run = toy / "run"
    return {
        "solve": ["solve", run, "--budget", "0.6x", "--out", out],
        "frontier": ["frontier", run, "--out", out, "--n-budgets", "3"],
        "report": ["report", run, "--out", out],
        "plot": ["plot", run, "--kind", "exits", "--out", out],
        "verify": ["verify", run, "--thresholds", toy / "t.json", "--out", out],
        "import": ["import", toy / "x.npz", "--out", out],
        "collect": ["collect", *MODEL, "--data", toy / "x.npz", "--out", out],
        "export": ["export", run, "--thresholds", toy / "t.json", "--out", out],
        "demo": ["demo", "--out", out],
    }[verb]


# --------------------------------------------------------------------------- other tools' lock files


@pytest.mark.parametrize("name", TOOL_LOCKS)
def test_other_tools_lock_files_beside_out_survive_every_writer(cli, toy, tmp_path, name):
    """``--out poetry`` beside ``poetry.lock``: dyncal's lock is elsewhere, so the file is never opened."""
    content = f"# {name} lock file\n[[package]]\nname = 'x'\n".encode()
    cases = {  # a verb, then the same again (which fails), then one that fails after taking its lock
        "import": [(0, []), (1, []), (0, ["--overwrite"])],
        "solve": [(0, []), (1, []), (0, ["--overwrite"])],
        "export": [(1, [])],  # the imported run names no model: fails holding the package's lock
        "demo": [(1, ["--overwrite"])],  # the folder holds a file dyncal did not write
    }
    for verb, runs in cases.items():
        folder = tmp_path / verb
        folder.mkdir()
        (folder / f"{name}.lock").write_bytes(content)
        if verb == "demo":
            (folder / name).mkdir()
            (folder / name / "NOTES.md").write_text("mine")
        for code, extra in runs:
            res = cli(*_verb(verb, toy, folder / name), *extra)
            assert res.exit_code == code, (verb, extra, res.output)
            assert (folder / f"{name}.lock").read_bytes() == content, (verb, extra)
            _no_dyncal_leftovers(folder)


def test_a_link_named_like_another_tools_lock_is_left_alone(cli, toy, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "poetry.lock").symlink_to(victim)
    assert cli(*_verb("import", toy, tmp_path / "poetry")).exit_code == 0
    assert cli(*_verb("import", toy, tmp_path / "poetry")).exit_code == 1
    assert os.readlink(tmp_path / "poetry.lock") == str(victim) and victim.read_text() == "precious"


# --------------------------------------------------------------------------- dyncal's own lock file


def _plant(path: Path, kind: str, victim: Path) -> None:
    if kind == "link":
        path.symlink_to(victim)
    elif kind == "dangling link":
        path.symlink_to(victim.with_name("never-created"))
    elif kind == "user file":
        path.write_text("my data\n")
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()


@pytest.mark.parametrize("kind", ["link", "dangling link", "user file", "fifo", "folder"])
@pytest.mark.parametrize("verb", ["solve", "import", "export"])
def test_something_else_at_the_lock_name_is_refused_and_never_followed(cli, toy, tmp_path, verb, kind):
    victim = tmp_path / "victim.json"
    victim.write_text('{"schema": "dyncal.thresholds"}')  # looks like dyncal's: still never written through
    out = tmp_path / "out"
    _plant(lock_path(out), kind, victim)
    before = _tree(tmp_path)
    what = {"link": "a symbolic link", "dangling link": "a symbolic link", "user file": "not a dyncal lock"}
    res = cli(*_verb(verb, toy, out))
    assert_clean_error(res, rf"\.dyncal-lock-out' (is )?{what.get(kind, 'not a regular file')}.*never touches one")
    assert _tree(tmp_path) == before
    assert not victim.with_name("never-created").exists()


def test_an_empty_file_at_the_lock_name_is_not_taken(cli, toy, tmp_path):
    out = tmp_path / "t.json"
    lock_path(out).touch()
    assert_clean_error(cli(*_verb("solve", toy, out)), r"is an empty file, not a dyncal lock")
    assert lock_path(out).read_bytes() == b"" and not out.exists()


def test_a_stale_dyncal_lock_is_taken_over_and_removed(cli, toy, tmp_path):
    """A lock file left by a killed dyncal (no process holds its flock) does not block the next writer."""
    for verb, out in (("solve", tmp_path / "t.json"), ("import", tmp_path / "run")):
        lock_path(out).write_text("dyncal lock: pid 999999\n")
        res = cli(*_verb(verb, toy, out))
        assert res.exit_code == 0, res.output
        assert not lock_path(out).exists()


def test_the_lock_of_the_current_folder_lies_beside_it(tmp_path, monkeypatch):
    """``dyncal profile .`` inside a run: the folder is locked by its own name, beside it."""
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path / "run")
    assert lock_path(".") == tmp_path / ".dyncal-lock-run"
    with OutputLock("."):
        assert (tmp_path / ".dyncal-lock-run").is_file() and os.listdir(".") == []
    assert os.listdir(tmp_path) == ["run"]


# --------------------------------------------------------------------------- atomic writes


def test_atomic_writes_never_follow_a_link_at_a_temporary_name(tmp_path, monkeypatch):
    """Even a temporary name guessed in advance (here: forced) is never opened through a link planted there."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    names = iter(["a" * 16, "b" * 16])
    monkeypatch.setattr(atomic.secrets, "token_hex", lambda n: next(names))
    planted = tmp_path / f".x.json.{'a' * 16}.tmp"
    planted.symlink_to(victim)
    atomic_write_text(tmp_path / "x.json", "{}")
    assert victim.read_bytes() == b"precious" and os.readlink(planted) == str(victim)
    assert (tmp_path / "x.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".x.json.aaaaaaaaaaaaaaaa.tmp", "victim", "x.json"])


def test_the_old_predictable_temporary_name_is_not_used(cli, toy, tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    out = tmp_path / "t.json"
    (tmp_path / f".t.json.tmp-{os.getpid()}").symlink_to(victim)  # the in-process CLI's pid
    assert cli(*_verb("solve", toy, out)).exit_code == 0
    assert victim.read_bytes() == b"precious" and json.loads(out.read_text())["schema"] == "dyncal.thresholds"


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_are_created_as_open_would_create_them(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "x", b"1")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x").stat().st_mode) == mode


def test_a_link_at_the_destination_is_replaced_never_written_through(tmp_path):
    """The library replaces a link at its destination with the file; the link's target is untouched."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / "x").symlink_to(victim)
    atomic_write_bytes(tmp_path / "x", b"new")
    assert victim.read_bytes() == b"precious"
    assert not (tmp_path / "x").is_symlink() and (tmp_path / "x").read_bytes() == b"new"


@pytest.mark.parametrize("verb", ["solve", "import"])
def test_a_link_given_as_out_is_refused_even_with_overwrite(cli, toy, tmp_path, verb):
    """``--out`` that is a link (even to a file or run dyncal wrote) is refused: dyncal never writes through one."""
    target = tmp_path / "real"
    if verb == "solve":
        shutil.copy(toy / "t.json", target)
    else:
        shutil.copytree(toy / "run", target)
    (tmp_path / "link").symlink_to(target)
    before = _tree(tmp_path)
    assert_clean_error(cli(*_verb(verb, toy, tmp_path / "link"), "--overwrite"), r"is a symbolic link")
    assert _tree(tmp_path) == before


# --------------------------------------------------------------------------- --overwrite: only what is all dyncal's


def _plant_in(folder: Path, what: str, victim: Path) -> str:
    """Put a user's thing into ``folder``; return the entry named in the refusal."""
    if what == "NOTES.md":
        (folder / "NOTES.md").write_text("# how I made this run\n")
    elif what == "DEPLOY.md":
        (folder / "DEPLOY.md").write_text("kubectl apply ...\n")
    elif what == "client/serve.py":
        (folder / "client").mkdir()
        (folder / "client" / "serve.py").write_text("import dyncal\n")
        return "client"
    elif what == ".git":
        (folder / ".git").mkdir()
        (folder / ".git" / "config").write_text("[core]\n")
    elif what == ".env":
        (folder / ".env").write_text("TOKEN=secret\n")
    elif what == "report.pdf":
        (folder / "report.pdf").write_bytes(b"%PDF-1.5\n1 0 obj << /Creator (LaTeX with hyperref) >> endobj\n%%EOF\n")
    elif what == "link":
        (folder / "logits.npy").unlink(missing_ok=True)
        (folder / "logits.npy").symlink_to(victim)
        return "logits.npy"
    return what.split("/")[0]


@pytest.mark.parametrize("what", ["NOTES.md", "client/serve.py", "link", ".env"])
@pytest.mark.parametrize("verb", ["import", "collect"])
def test_overwrite_keeps_a_run_folder_holding_a_users_file(cli, toy, tmp_path, verb, what):
    out = Path(shutil.copytree(toy / "run", tmp_path / "run"))
    victim = tmp_path / "my-logits.npy"
    victim.write_bytes(b"\x93NUMPY mine")
    entry = _plant_in(out, what, victim)
    before = _tree(tmp_path)
    res = cli(*_verb(verb, toy, out), "--overwrite")
    assert_clean_error(
        res, rf"'{out / entry}' is not a file dyncal wrote, so dyncal will not replace '{out}': move it out or choose "
    )
    assert _tree(tmp_path) == before


def _fake_package(folder: Path) -> None:
    folder.mkdir()
    for name in ("stage_1.pt2", "stage_2.pt2"):
        (folder / name).write_bytes(b"PK\x03\x04 stage")
    files = {"stage_1.pt2": "0" * 64, "stage_2.pt2": "1" * 64}
    (folder / "manifest.json").write_text(json.dumps({"schema": "dyncal.package", "files": files}))


@pytest.mark.parametrize("what", ["DEPLOY.md", "client/serve.py", "NOTES.md"])
def test_overwrite_keeps_a_package_holding_a_users_file(cli, toy, tmp_path, what):
    pkg = tmp_path / "pkg"
    _fake_package(pkg)
    entry = _plant_in(pkg, what, tmp_path)
    before = _tree(tmp_path)
    assert_clean_error(cli(*_verb("export", toy, pkg), "--overwrite"), rf"'{pkg / entry}' is not a file dyncal wrote")
    assert _tree(tmp_path) == before


def test_a_package_of_dyncals_files_only_passes_the_overwrite_check(cli, toy, tmp_path):
    pkg = tmp_path / "pkg"
    _fake_package(pkg)
    # the signature of a package exported with --sign-key is dyncal's too
    (pkg / "signature.json").write_text(json.dumps({"schema": "dyncal.package-signature"}))
    before = _tree(tmp_path)
    res = cli(*_verb("export", toy, pkg), "--overwrite")
    assert res.exit_code == 1 and "not a file dyncal wrote" not in res.stderr  # it stops at the run's model
    assert _tree(tmp_path) == before  # and the old package stays until a new one is whole


def _demo_folder(folder: Path, toy: Path) -> None:
    folder.mkdir()
    shutil.copytree(toy / "run", folder / "run")
    shutil.copy(toy / "t.json", folder / "thresholds.json")
    (folder / ".dyncal-lock-report.pdf").write_text("dyncal lock: pid 999999\n")  # a killed step's stale lock


@pytest.mark.parametrize("what", [".git", ".env", "report.pdf", "NOTES.md", "run/NOTES.md"])
def test_overwrite_keeps_a_demo_folder_holding_a_users_file(cli, toy, tmp_path, what):
    demo = tmp_path / "demo"
    _demo_folder(demo, toy)
    if what == "run/NOTES.md":
        entry = "run/NOTES.md"
        (demo / entry).write_text("mine")
    else:
        entry = _plant_in(demo, what, tmp_path)
    before = _tree(tmp_path)
    res = cli("demo", "--out", demo, "--overwrite")
    assert_clean_error(res, rf"'{demo / entry}' is not a file dyncal wrote, so dyncal will not replace '{demo}'")
    assert _tree(tmp_path) == before


def test_a_demo_folder_of_dyncals_files_is_recognised_as_dyncals(toy, tmp_path):
    from dyncal.artifacts.ownership import foreign_entry
    from dyncal.verbs.demo import _demo_entry

    demo = tmp_path / "demo"
    _demo_folder(demo, toy)
    (demo / ".verify.json.0123456789abcdef.tmp").write_text("{")  # an interrupted write's temporary file
    assert foreign_entry(demo, _demo_entry) is None
    (demo / "report.pdf").write_bytes(b"%PDF-1.5\n1 0 obj << /Creator (dyncal 0.1) >> endobj\n%%EOF\n")
    assert foreign_entry(demo, _demo_entry) is None
    (demo / "report.pdf").write_bytes(b"%PDF-1.5\n1 0 obj << /Creator (LaTeX) >> endobj\n%%EOF\n")
    assert foreign_entry(demo, _demo_entry) == demo / "report.pdf"


# --------------------------------------------------------------------------- .partial folders


@pytest.mark.parametrize(
    "args",
    [
        ["collect", "--resume"],
        ["collect", "--overwrite"],
        ["collect", "--resume", "--overwrite"],
        ["import", "--overwrite"],
        ["import"],
    ],
)
def test_a_partial_folder_holding_a_users_file_survives(cli, toy, tmp_path, args):
    out = tmp_path / "run"
    partial = tmp_path / "run.partial"
    partial.mkdir()
    (partial / "logits.npy").write_bytes(b"\x93NUMPY")
    (partial / "NOTES.md").write_text("my notes")
    before = _tree(tmp_path)
    res = cli(*_verb(args[0], toy, out), *args[1:])
    assert_clean_error(
        res, rf"'{partial / 'NOTES.md'}' is not a file dyncal wrote, so dyncal will not remove or resume '{partial}'"
    )
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("kind", ["user file", "link"])
def test_something_not_a_folder_at_the_partial_name_survives(cli, toy, tmp_path, kind):
    partial = tmp_path / "run.partial"
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "logits.npy").write_bytes(b"mine")
    if kind == "link":
        partial.symlink_to(target)
    else:
        partial.write_text("mine")
    before = _tree(tmp_path)
    for args in (["--overwrite"], ["--resume"]):
        verb = "import" if args == ["--overwrite"] else "collect"
        res = cli(*_verb(verb, toy, tmp_path / "run"), *args)
        assert_clean_error(res, rf"'{partial}' is not a folder dyncal wrote, so dyncal will not remove or resume it")
    assert _tree(tmp_path) == before


def test_dyncals_own_partial_folder_is_still_discarded_or_restarted(cli, toy, tmp_path):
    """What an interrupted collect leaves (arrays, progress, a temporary progress file) is dyncal's to remove."""
    partial = tmp_path / "run.partial"
    partial.mkdir()
    for name in ("logits.npy", "labels.npy", "indices.npy"):
        (partial / name).write_bytes(b"\x93NUMPY")
    (partial / ".progress.0.json.0123456789abcdef.tmp").write_text("{")
    res = cli(*_verb("collect", toy, tmp_path / "run"), "--resume")  # no progress saved: starts afresh
    assert res.exit_code == 0, res.output
    assert "nothing to resume" in res.stderr and load_run(tmp_path / "run").n == 60
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    partial.mkdir()
    (partial / "progress.0.json").write_text(json.dumps({"schema": "dyncal.collect-progress"}))
    assert cli(*_verb("import", toy, tmp_path / "run"), "--overwrite").exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_an_export_partial_holding_a_users_file_survives(cli, toy, tmp_path):
    partial = tmp_path / "pkg.partial"
    partial.mkdir()
    (partial / "stage_1.pt2").write_bytes(b"PK")
    (partial / "DEPLOY.md").write_text("mine")
    before = _tree(tmp_path)
    for extra in ([], ["--overwrite"]):
        res = cli(*_verb("export", toy, tmp_path / "pkg"), *extra)
        assert_clean_error(res, rf"'{partial / 'DEPLOY.md'}' is not a file dyncal wrote, so dyncal will not remove")
    assert _tree(tmp_path) == before


# --------------------------------------------------------------------------- concurrent writers (real processes)

_HOLDER = """
import pathlib, sys, time
from dyncal.artifacts.lock import OutputLock
gate = pathlib.Path(sys.argv[1])
locks = [OutputLock(p).acquire() for p in sys.argv[2:]]
(gate / "ready").touch()
deadline = time.monotonic() + 240
while not (gate / "go").exists() and time.monotonic() < deadline:
    time.sleep(0.02)
for lock in locks:
    lock.release()
"""

_GATED_SOLVE = """
import pathlib, sys, time
import dyncal.artifacts.outputs as outputs
from dyncal.cli import app
gate = pathlib.Path(sys.argv[1])
write = outputs.write_output

def gated(path, data):  # the lock is held and the file checked absent: wait here
    (gate / "ready").touch()
    deadline = time.monotonic() + 240
    while not (gate / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    write(path, data)

outputs.write_output = gated
app(sys.argv[2:], prog_name="dyncal")
"""


def _start(script: str, gate: Path, *args: object) -> subprocess.Popen[str]:
    gate.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(gate), *map(str, args)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not (gate / "ready").exists():
        if proc.poll() is not None:
            raise AssertionError(proc.communicate())
        assert time.monotonic() < deadline, "the first process never got ready"
        time.sleep(0.02)
    return proc


def _finish(proc: subprocess.Popen[str], gate: Path) -> tuple[int, str]:
    (gate / "go").touch()
    try:
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err


def test_two_solves_to_one_out_cannot_both_write(toy, tmp_path):
    """The second ``solve --out same.json`` fails while the first holds it, and finds its file afterwards."""
    out = tmp_path / "same.json"
    args = _verb("solve", toy, out)
    first = _start(_GATED_SOLVE, tmp_path / "gate", *args)
    try:
        assert not out.exists()  # the first one checked, and waits to write
        for extra in ([], ["--overwrite"]):
            second = _dyncal(*args, *extra)
            _one_line_error(
                second,
                rf"error: another dyncal process \(pid {first.pid}\) is writing '{out}'; wait for it to finish",
            )
    finally:
        code, err = _finish(first, tmp_path / "gate")
    assert code == 0 and "wrote" in err, err
    written = out.read_bytes()
    _one_line_error(_dyncal(*args), r"already exists; choose another --out or pass --overwrite")
    assert out.read_bytes() == written
    _no_dyncal_leftovers(tmp_path)


def test_every_writer_fails_at_once_while_another_process_writes_its_out(cli, toy, tmp_path):
    outs = {
        "solve": tmp_path / "t.json",
        "frontier": tmp_path / "f.csv",
        "report": tmp_path / "r.pdf",
        "plot": tmp_path / "p.png",
        "verify": tmp_path / "v.json",
        "import": tmp_path / "run",
        "collect": tmp_path / "run",
        "export": tmp_path / "pkg",
        "demo": tmp_path / "demo",
    }
    holder = _start(_HOLDER, tmp_path / "gate", *sorted(set(outs.values())))
    try:
        for verb, out in outs.items():
            res = cli(*_verb(verb, toy, out))
            assert_clean_error(res, rf"another dyncal process \(pid {holder.pid}\) is writing '{out}'; wait for it")
            assert not os.path.lexists(out), verb
    finally:
        code, err = _finish(holder, tmp_path / "gate")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gate"]


def test_a_lock_held_in_this_process_is_reentrant_but_another_process_waits(toy, tmp_path):
    out = tmp_path / "pkg"
    with OutputLock(out), OutputLock(out):
        assert lock_path(out).read_text() == f"dyncal lock: pid {os.getpid()}\n"
        _one_line_error(
            _dyncal(*_verb("export", toy, out)), rf"another dyncal process \(pid {os.getpid()}\) is writing '{out}'"
        )
    assert not lock_path(out).exists()


# --------------------------------------------------------------------------- --out ''


OUT_VERBS = ("solve", "frontier", "report", "plot", "verify", "import", "collect", "export", "demo")


@pytest.mark.parametrize("verb", OUT_VERBS)
def test_an_empty_out_is_one_line(cli, toy, tmp_path, monkeypatch, verb):
    monkeypatch.chdir(tmp_path)
    before = _tree(tmp_path)
    res = cli(*_verb(verb, toy, ""))  # type: ignore[arg-type]
    assert_clean_error(res, r"--out '\.' (is a folder|names no folder)|--out must name a \.pdf")
    assert _tree(tmp_path) == before


# --------------------------------------------------------------------------- a full disk during export


@pytest.fixture(scope="module")
def exportable(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A collected run of a model that exports, with MACs and thresholds (``run``, ``t.json``).

    Made in this process: only the export under test runs as a real process.
    """
    from typer.testing import CliRunner

    from dyncal.cli import app

    tmp = tmp_path_factory.mktemp("exportable")
    rng = np.random.default_rng(0)
    np.savez(tmp / "toy.npz", inputs=rng.normal(size=(37, 4)).astype(np.float32), labels=rng.integers(0, 3, 37))
    for args in (
        ["collect", *MODEL, "--data", tmp / "toy.npz", "--out", tmp / "run", "-q"],
        ["profile", tmp / "run", "--macs-only"],
        ["solve", tmp / "run", "--budget", "0.7x", "--out", tmp / "t.json"],
    ):
        res = CliRunner().invoke(app, [str(a) for a in args])
        assert res.exit_code == 0, (res.output, res.exception)
    return tmp


def _limit_file_size(max_bytes: int) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))


def test_export_that_cannot_write_its_files_is_one_line_and_leaves_nothing(exportable, tmp_path):
    """A real write failure (the kernel's file size limit, EFBIG) in the middle of an export."""
    pkg = tmp_path / "pkg"
    proc = _dyncal(
        "export",
        exportable / "run",
        "--thresholds",
        exportable / "t.json",
        "--out",
        pkg,
        preexec_fn=lambda: _limit_file_size(8192),  # a stage archive is larger
    )
    _one_line_error(proc, rf"cannot write the package '{pkg}' \(File too large\); nothing was published: free some")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


_FULL_DISK = """
set -e
mount -t tmpfs -o size=24k,nr_inodes=64 tmpfs "$1"
shift
out="$1"
shift
set +e
"$@" --out "$out/pkg"
echo "exit=$?"
ls -A "$out"
"""


def _on_a_small_disk(tmp_path: Path, cmd: list[str], out_name: str) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """``cmd --out DISK/out_name`` on a 24 KB tmpfs in a private mount namespace (skips where none can be made)."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) to mount a small tmpfs")
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot enter a user and mount namespace here: {probe.stderr.decode().strip()}")
    disk = tmp_path / "disk"
    disk.mkdir()
    proc = subprocess.run(
        ["unshare", "-rm", "sh", "-c", _FULL_DISK.replace("pkg", out_name), "sh", str(disk), str(disk), *cmd],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if "mount:" in proc.stderr and "exit=" not in proc.stdout:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    return disk, proc


def test_export_on_a_full_disk_is_one_line_and_leaves_nothing(exportable, tmp_path):
    """ENOSPC for real: a 24 KB tmpfs (in a private mount namespace) holds the first stage, not the second."""
    cmd = [sys.executable, "-m", "dyncal", "export", str(exportable / "run"), "--thresholds"]
    disk, proc = _on_a_small_disk(tmp_path, [*cmd, str(exportable / "t.json")], "pkg")
    assert proc.stdout.splitlines()[0] == "exit=1", (proc.stdout, proc.stderr)
    assert proc.stdout.splitlines()[1:] == []  # nothing left on the full disk: no package, partial, lock or temp
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err == (
        f"error: cannot write the package '{disk / 'pkg'}' (No space left on device); nothing was published: "
        "free some space or choose another --out"
    )


# --------------------------------------------------------------------------- a full disk during collect


@pytest.fixture(scope="module")
def big_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6,000 rows: a run of 0.25 MB, more than the small disks below hold."""
    path = tmp_path_factory.mktemp("big") / "toy.npz"
    rng = np.random.default_rng(0)
    np.savez(path, inputs=rng.normal(size=(6000, 4)).astype(np.float32), labels=rng.integers(0, 3, 6000))
    return path


def test_collect_on_a_disk_too_small_is_refused_before_writing(big_npz, tmp_path):
    """The arrays are sparse until written: without the check a full disk shows only midway (or as SIGBUS)."""
    cmd = [sys.executable, "-m", "dyncal", "collect", *map(str, MODEL), "--data", str(big_npz), "-q"]
    _, proc = _on_a_small_disk(tmp_path, cmd, "run")
    assert proc.stdout.splitlines() == ["exit=1"], (proc.stdout, proc.stderr)  # and nothing left on the disk
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("error: a run of 6,000 rows x 2 exits x 3 classes needs 0.25 MB and the disk holding")
    assert err.endswith("MB free: free some space or choose another --out")


def test_collect_whose_files_cannot_be_made_is_one_line_and_publishes_nothing(big_npz, tmp_path):
    """A real write failure after the room check passed (the kernel's file size limit, EFBIG)."""
    out = tmp_path / "run"
    proc = _dyncal("collect", *MODEL, "--data", big_npz, "--out", out, "-q", preexec_fn=lambda: _limit_file_size(8192))
    _one_line_error(proc, r"cannot write '.*logits\.npy' \(File too large\); no run was published: free some space")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_rows_that_hit_a_full_disk_midway_are_one_line(tmp_path):
    """ENOSPC from the kernel on a row write (the fd swapped for /dev/full): a RunError, not an OSError."""
    from dyncal.artifacts.run_writer import _RowFile
    from dyncal.errors import RunError

    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    f = _RowFile(tmp_path / "logits.npy", np.float32, (10, 2, 3), create=True)
    os.close(f.fd)
    f.fd = os.open("/dev/full", os.O_WRONLY)
    with pytest.raises(
        RunError, match=r"^cannot write '.*logits\.npy' \(No space left on device\); no run was published"
    ):
        f.write(0, np.zeros((4, 2, 3), np.float32))
    f.close(sync=False)
