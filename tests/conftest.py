from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

# Cache the test modules' rewritten asserts and the package's bytecode (in __pycache__/, git-ignored) even
# where PYTHONDONTWRITEBYTECODE is set: otherwise every run and every parallel worker recompiles ~180 test
# modules and the package from source, ~4 CPU seconds each before the first test runs.
sys.dont_write_bytecode = False

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from dyncal.cli import app  # noqa: E402

TESTS = Path(__file__).parent

if "PYTEST_XDIST_WORKER_COUNT" in os.environ:  # parallel workers (test.sh): share the cores, do not oversubscribe them
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


@pytest.fixture
def cli():
    """Invoke the dyncal CLI in-process; returns the click Result."""
    runner = CliRunner()

    def invoke(*args: object):
        return runner.invoke(app, [str(a) for a in args])

    return invoke


def assert_clean_error(result, pattern: str) -> None:
    """A user error: exit status 1, one line on stderr matching ``pattern``, no traceback."""
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    err = result.stderr.strip()
    assert "Traceback" not in result.output
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    assert re.search(pattern, err), err


@pytest.fixture
def toy_npz(tmp_path: Path) -> Path:
    """An .npz data set of 37 samples with 4 features and labels in [0, 3)."""
    rng = np.random.default_rng(0)
    path = tmp_path / "toy.npz"
    np.savez(path, inputs=rng.normal(size=(37, 4)).astype(np.float32), labels=rng.integers(0, 3, 37))
    return path


def model_outputs(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """(N, K, C) logits straight from the model."""
    with torch.inference_mode():
        return torch.stack(list(model.eval()(x)), dim=1).numpy()


# The two tiers: ``./test.sh -m unit`` checks the numbers (solvers, statistics, documents,
# validation) in about a minute; ``-m integration`` runs real models end to end (collect,
# profile, verify, export, reports of collected runs, subprocesses, torchrun).
INTEGRATION_MODULES = {
    "test_archives.py",
    "test_collect.py",
    "test_compare.py",
    "test_export.py",
    "test_file_safety.py",
    "test_profile.py",
    "test_readme.py",
    "test_report.py",
    "test_static_runs.py",
    "test_trust.py",
    "test_verify.py",
}


# A doctest that traces a model into stages (torch.export: what `dyncal profile` does) and runs
# them: the examples of dyncal/analysis/ and the profile verb. Each costs a few tenths of a second.
MODEL_RUNNING_DOCTEST = re.compile(r"\b(build_stages|export_partition|profile_run|load_exported)\(|\btorch\.export\.")


def _runs_a_model(item: pytest.Item) -> bool:
    """A test marked ``integration`` itself, in an integration module, or a doctest that exports a model."""
    if item.get_closest_marker("integration") is not None or item.path.name in INTEGRATION_MODULES:
        return True
    examples = getattr(getattr(item, "dtest", None), "examples", ())
    return any(MODEL_RUNNING_DOCTEST.search(example.source) for example in examples)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test ``unit`` or ``integration`` by its module or its doctest; model-running files first.

    A test of another module that runs a model says so itself with ``@pytest.mark.integration``;
    a doctest is ``integration`` when its examples export a model (:data:`MODEL_RUNNING_DOCTEST`).
    """
    heavy: set[Path] = set()
    for item in items:
        tier = "integration" if _runs_a_model(item) else "unit"
        item.add_marker(getattr(pytest.mark, tier))
        if tier == "integration":
            heavy.add(item.path)
    # Files that run models first, each file's tests together and in their order: parallel
    # workers (test.sh) then end on short files instead of one waiting for the other's long one.
    items.sort(key=lambda item: item.path not in heavy)


def solved_demo(tmp: Path, *, export: bool = False) -> tuple[Path, Any]:
    """The demo collected into ``tmp/run`` with its MACs counted and thresholds solved at 0.5x (``tmp/th.json``).

    With ``export`` the early exit is also exported to ``tmp/pkg``. Returns the run folder and
    the thresholds document.
    """
    import json

    import dyncal
    from dyncal.calibrate.solvers import solve_run
    from dyncal.data import load_dataset
    from dyncal.demo import WEIGHTS
    from dyncal.models import load_model
    from dyncal.verbs.collect import collect_run
    from dyncal.verbs.demo import DEMO_DATA, DEMO_MODEL
    from dyncal.verbs.profile import ProfileOptions, profile_run

    run_dir = tmp / "run"
    collect_run(load_model(DEMO_MODEL, weights=WEIGHTS), load_dataset(DEMO_DATA), run_dir, data_spec=DEMO_DATA)
    profile_run(run_dir, options=ProfileOptions(latency=False))
    th = solve_run(dyncal.load_run(run_dir), "0.5x")
    (tmp / "th.json").write_text(json.dumps(th.to_dict()))
    if export:
        dyncal.export_package(run_dir, th, tmp / "pkg")
    return run_dir, th


@pytest.fixture(scope="session")
def text_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Weights of ``text_encoders:text_encoder`` trained once per session (seconds on a CPU), as a state dict file."""
    from tests import text_encoders

    path = tmp_path_factory.mktemp("text_encoder") / "text_encoder.pt"
    torch.save(text_encoders.train(text_encoders.text_encoder(), **text_encoders.TEST_TRAINING).state_dict(), path)
    return path


@pytest.fixture(scope="session")
def demo_package(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """:func:`solved_demo` with the export, once a session for every test file that reads it.

    Keys: ``tmp`` (the folder), ``run``, ``th`` (the document), ``th_path`` and ``pkg``. Tests only
    read these; one that changes a file works on a copy.
    """
    tmp = tmp_path_factory.mktemp("demo_package")
    run_dir, th = solved_demo(tmp, export=True)
    return {"tmp": tmp, "run": run_dir, "th": th, "th_path": tmp / "th.json", "pkg": tmp / "pkg"}


@pytest.fixture(scope="session")
def demo_pt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model exported with a dynamic batch (``demo.pt2``): a clean archive, shared read-only."""
    from dyncal.demo import pretrained

    path = tmp_path_factory.mktemp("demo_pt2") / "demo.pt2"
    program = torch.export.export(
        pretrained().eval(), (torch.zeros(3, 1, 8, 8),), dynamic_shapes=({0: torch.export.Dim("b")},)
    )
    torch.export.save(program, str(path))
    return path
