"""verify and demo: a real early exit agrees with the simulation; the demo runs end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import assert_clean_error

from dyncal.analysis.stages import build_stages
from dyncal.demo import pretrained, validation
from dyncal.run import load_run
from dyncal.runtime import EarlyExitRunner


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    from typer.testing import CliRunner

    from dyncal.cli import app

    out = tmp_path_factory.mktemp("demo") / "demo"
    res = CliRunner().invoke(app, ["demo", "--out", str(out)])
    assert res.exit_code == 0, (res.output, res.exception)
    return out


def test_demo_writes_every_artifact(demo_dir):
    for name in ("run/run.json", "thresholds.json", "frontier.csv", "report.pdf", "verify.json"):
        assert (demo_dir / name).exists(), name
    run = load_run(demo_dir / "run")
    assert (run.n, run.k, run.c) == (797, 4, 10)
    assert len(run.provenance.weights_sha256) == 64 and run.provenance.extra["weights"].endswith(".pt")
    assert run.costs.macs is not None and set(run.costs.latency) == {"cpu/b1", "cpu/b32"}
    assert (demo_dir / "report.pdf").read_bytes().startswith(b"%PDF")
    from pypdf import PdfReader

    first_page = PdfReader(demo_dir / "report.pdf").pages[0].extract_text()
    assert {"GO", "INCONCLUSIVE"} & set(first_page.split()) and "speed-up (latency, cpu/b1)" in first_page


def test_demo_refuses_existing_folder(cli, demo_dir):
    assert_clean_error(cli("demo", "--out", demo_dir), "already exists.*--overwrite")
    assert (demo_dir / "report.pdf").exists()


def test_verify_agrees_with_simulation(cli, demo_dir):
    res = cli(
        "verify",
        demo_dir / "run",
        "--thresholds",
        demo_dir / "thresholds.json",
        "--batch-size",
        "1,8",
        "--limit",
        200,
        "--json",
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["n"] == 200
    # The runtime recomputes logits, so a score within float noise of a threshold could flip;
    # on this model and these thresholds none does.
    assert doc["agreement"] == 1.0
    assert doc["runtime_accuracy"] == doc["simulated_accuracy"]
    assert doc["runtime_exit_shares"] == doc["simulated_exit_shares"]
    assert set(doc["measured_ms"]) == {"cpu/b1", "cpu/b8"}
    # b1 and b32 were profiled by the demo; b8 is predicted from them by interpolation.
    assert doc["predicted_ms"]["cpu/b1"] > 0 and doc["predicted_ms"]["cpu/b8"] > 0
    # At batch 1 the prediction is the per-sample expectation over the same rows.
    run = load_run(demo_dir / "run")
    th = json.loads((demo_dir / "thresholds.json").read_text())
    from dyncal.calibrate.policy import assign_exits, thresholds_from_json
    from dyncal.calibrate.scores import exit_scores

    scores, _ = exit_scores(run.logits[:200], th["score"], th["temperatures"])
    exits = assign_exits(scores, thresholds_from_json(th["thresholds"]))
    per_sample = np.asarray(run.costs.latency["cpu/b1"].early_exit_ms)[exits].mean()
    assert doc["predicted_ms"]["cpu/b1"] == pytest.approx(per_sample)
    assert all(v > 0 for v in doc["measured_ms"].values())


def test_runner_stops_computing_when_everyone_has_left():
    model = pretrained()
    stages = build_stages(model, torch.zeros(2, 1, 8, 8))
    calls = [0] * stages.k
    for i, m in enumerate(stages.modules):
        m.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    x = torch.stack([validation()[i][0] for i in range(16)])
    exits, preds = EarlyExitRunner(stages, [-1.0, 2.0, 2.0, None], [1.0] * 4)(x)
    assert exits.tolist() == [0] * 16 and calls == [1, 0, 0, 0]
    with torch.inference_mode():
        np.testing.assert_array_equal(preds.numpy(), model(x)[0].argmax(1).numpy())
    # Nobody leaves before the last exit: every stage runs once, predictions are the last exit's.
    calls[:] = [0] * stages.k
    exits, preds = EarlyExitRunner(stages, [2.0, 2.0, 2.0, None], [1.0] * 4)(x)
    assert exits.tolist() == [3] * 16 and calls == [1, 1, 1, 1]
    with torch.inference_mode():
        np.testing.assert_array_equal(preds.numpy(), model(x)[3].argmax(1).numpy())


def test_runner_mixed_exits_keep_sample_order():
    model = pretrained()
    stages = build_stages(model, torch.zeros(2, 1, 8, 8))
    x = torch.stack([validation()[i][0] for i in range(64)])
    t = [0.5, 0.9, 0.95, None]
    exits, preds = EarlyExitRunner(stages, t, [1.0] * 4)(x)
    with torch.inference_mode():
        probs = [torch.softmax(o, 1) for o in model(x)]
    for n in range(64):
        k = next((j for j in range(3) if probs[j][n].max() >= t[j]), 3)
        assert exits[n] == k and preds[n] == probs[k][n].argmax()
    assert len(set(exits.tolist())) > 1  # the case really mixes exits


def test_verify_errors(cli, demo_dir, tmp_path):
    assert_clean_error(cli("verify", demo_dir / "run", "--thresholds", tmp_path / "none.json"), "no such file")
    doc = json.loads((demo_dir / "thresholds.json").read_text())
    doc["thresholds"] = [0.5, None]
    doc["temperatures"] = [1.0, 1.0]
    doc["exit_shares"], doc["temperature_at_bound"] = [0.5, 0.5], None  # a whole K=2 document
    (tmp_path / "k2.json").write_text(json.dumps(doc))
    assert_clean_error(
        cli("verify", demo_dir / "run", "--thresholds", tmp_path / "k2.json"), "K=2 exits but run .* has K=4"
    )
    assert_clean_error(
        cli("verify", demo_dir / "run", "--thresholds", demo_dir / "thresholds.json", "--batch-size", "0"), "positive"
    )


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """A collected two-exit MLP run with MACs and thresholds (no latency)."""
    from conftest import TESTS
    from typer.testing import CliRunner

    from dyncal.cli import app

    d = tmp_path_factory.mktemp("toy")
    rng = np.random.default_rng(0)
    np.savez(d / "x.npz", inputs=rng.normal(size=(60, 4)).astype(np.float32), labels=rng.integers(0, 3, 60))
    runner = CliRunner()
    for args in (
        ["collect", "--model", "toy_models:two_exit", "--model-path", TESTS, "--data", d / "x.npz", "--out", d / "run"],
        ["profile", d / "run", "--macs-only"],
        ["solve", d / "run", "--budget", "0.8x", "--holdout", "0", "--out", d / "t.json"],
    ):
        res = runner.invoke(app, [str(a) for a in args])
        assert res.exit_code == 0, (args, res.output, res.exception)
    return d


@pytest.mark.parametrize(
    ("model", "pattern"),
    [
        ("toy_models:tiny_conv", r"the model failed at batch size 4: RuntimeError"),
        ("toy_models:mixed_classes", r"disagree on the number of classes"),
    ],
)
def test_verify_with_a_model_that_does_not_fit_the_run(cli, toy_run, model, pattern):
    from conftest import TESTS

    res = cli("verify", toy_run / "run", "--thresholds", toy_run / "t.json", "--model", model, "--model-path", TESTS)
    assert_clean_error(res, pattern)


def test_verify_toy_run_agrees(cli, toy_run):
    res = cli("verify", toy_run / "run", "--thresholds", toy_run / "t.json", "--batch-size", "1,7", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["agreement"] == 1.0 and doc["predicted_ms"] == {"cpu/b1": None, "cpu/b7": None}
