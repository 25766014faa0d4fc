"""The rollout from the command line: evaluate, collect --perturb, report --robustness, telemetry, monitor."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import dyncal
from dyncal.artifacts.run import Provenance
from dyncal.artifacts.run_import import import_arrays
from dyncal.calibrate.estimator import ThresholdSolver
from dyncal.monitor import rollout_plan, shadow_requests_needed
from tests.conftest import assert_clean_error

MACS = [1e6, 2e6, 4e6]
N_SERVED = 120  # batch-1 requests through the exported demo


def _run(path: Path, seed: int, *, data: str, scale: float = 1.0, sha: str = "aa" * 32, n: int = 1500):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    z = np.eye(4)[y][:, None, :] * np.array([[1.0], [2.0], [3.5]]) + rng.normal(0, 1, (n, 3, 4))
    prov = Provenance("toy:net", sha, data, "", "", "cpu", extra={"input_shape": [1, 8, 8]})
    return import_arrays((z * scale).astype(np.float32), y, path, macs=MACS, provenance=prov)


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Run A (clean) with thresholds solved at 0.8x, run B (the same model on blurrier data), run C (another model)."""
    tmp = tmp_path_factory.mktemp("toy")
    a = _run(tmp / "A", 0, data="toy:clean")
    _run(tmp / "B", 1, data="toy:clean [perturbed blur:2 seed 0]", scale=0.4)
    _run(tmp / "C", 2, data="toy:clean", sha="bb" * 32)  # other weights
    doc = ThresholdSolver("0.8x", method="optimal", max_drop=0.05).fit(a).result_
    (tmp / "t.json").write_text(json.dumps(doc.to_dict()))
    return {"A": tmp / "A", "B": tmp / "B", "C": tmp / "C", "t": tmp / "t.json"}


def test_evaluate_says_the_data_differ_and_shows_b_against_a(cli, toy):
    result = cli("evaluate", toy["B"], "--thresholds", toy["t"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith("the data differ: thresholds solved on 'toy:clean', judged on 'toy:clean [perturbed blur:2")
    for row in ("accuracy", "last exit", "drop vs last exit", "exit shares", "mean macs"):
        assert row in out
    doc = json.loads(cli("evaluate", toy["B"], "--thresholds", toy["t"], "--json").stdout)
    assert doc["data_differ"] is True and doc["schema"] == "dyncal.evaluation"
    b, a = doc["target"], doc["reference"]
    assert b["n"] == 1500 and a["part"] == "held-out"
    assert doc["deltas"]["accuracy"] == pytest.approx(b["accuracy"] - a["accuracy"])
    assert b["accuracy_ci"][0] <= b["accuracy"] <= b["accuracy_ci"][1]
    assert doc["deltas"]["costs"]["macs"]["ratio"] > 1.2  # less confident on worse data: later exits
    assert doc["drop_bound"]["max_drop"] == 0.05  # the thresholds' own risk control is checked on B


@pytest.mark.parametrize(
    ("which", "pattern"),
    [
        ("C", r"weights"),
        ("A", r"is the run the thresholds were solved on"),
    ],
)
def test_evaluate_refuses_another_model_and_the_run_itself(cli, toy, which, pattern):
    assert_clean_error(cli("evaluate", toy[which], "--thresholds", toy["t"]), pattern)


def test_report_compare_sends_one_model_on_other_data_to_evaluate(cli, toy, tmp_path):
    result = cli("report", toy["A"], "--compare", toy["B"], "--out", tmp_path / "r.pdf")
    assert_clean_error(result, r"same model .* on other data .* dyncal evaluate")
    assert not (tmp_path / "r.pdf").exists()


def test_report_robustness_page_flags_what_breaks(cli, toy, tmp_path):
    out = tmp_path / "r.pdf"
    result = cli("report", toy["A"], "--thresholds", toy["t"], "--robustness", toy["B"], "--out", out, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["pages"][-1]["title"] == "Robustness under perturbed data"
    (row,) = doc["robustness"]
    assert row["perturbation"] == "blur:2" and row["path"] == str(toy["B"])
    assert row["cost_ratio"] > 1.2 and row["budget"] in ("holds", "uncertain", "breaks")
    assert_clean_error(
        cli("report", toy["A"], "--thresholds", toy["t"], "--robustness", toy["C"], "--out", tmp_path / "x.pdf"),
        r"model",
    )


def test_monitor_plan_prints_the_binomial_sample_sizes(cli):
    doc = json.loads(cli("monitor", "--plan", "--max-drop", "0.02", "--shadow", "0.05", "--json").stdout)
    n = shadow_requests_needed(0.02, 0.05)
    assert n == math.ceil(math.log(0.05) / math.log(1 - 0.02))
    assert [s["shadow_requests"] for s in doc["steps"]] == [n] * 4
    assert doc == rollout_plan(0.02, 0.05, shadow=0.05, steps=(0.01, 0.05, 0.25, 1.0)).to_dict()
    assert_clean_error(cli("monitor", "--plan"), r"give --max-drop")
    assert_clean_error(cli("monitor", "--plan", "--max-drop", "0.02", "--shadow", "0"), r"--shadow 0.0 gives no")
    assert_clean_error(cli("monitor", "--max-drop", "0.02"), r"monitor needs RUN, --thresholds, --telemetry")


# ------------------------------------------------------------------ real models: the demo


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo collected clean and under noise from the CLI, MACs profiled, solved, exported."""
    from typer.testing import CliRunner

    from dyncal.cli import app

    tmp = tmp_path_factory.mktemp("demo")
    run = CliRunner()

    def ok(*args: object) -> None:
        result = run.invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output

    ok(
        "collect", "--model", "dyncal.demo:pretrained", "--data", "dyncal.demo:validation", "--out", tmp / "run",
        "--perturb", "gaussian_noise:0.5", "--perturb", "shift:1", "--pixel-mean", "0.5", "--pixel-std", "0.5",
        "--limit", "240", "-q",
    )  # fmt: skip
    ok("profile", tmp / "run", "--macs-only")
    ok("solve", tmp / "run", "--budget", "0.5x", "--out", tmp / "t.json")
    ok("export", tmp / "run", "--thresholds", tmp / "t.json", "--out", tmp / "pkg")
    return {"tmp": tmp, "run": tmp / "run", "t": tmp / "t.json", "pkg": tmp / "pkg"}


@pytest.mark.integration
def test_collect_perturb_writes_one_run_per_severity_beside_the_clean_one(demo_runs, cli):
    tmp = demo_runs["tmp"]
    assert sorted(p.name for p in tmp.iterdir() if p.name.startswith("run")) == [
        "run",
        "run-gaussian_noise-0.5",
        "run-shift-1",
    ]
    clean, noisy = dyncal.load_run(tmp / "run"), dyncal.load_run(tmp / "run-gaussian_noise-0.5")
    assert noisy.provenance.data == "dyncal.demo:validation [perturbed gaussian_noise:0.5 seed 0]"
    assert np.array_equal(noisy.labels, clean.labels) and not np.allclose(noisy.logits, clean.logits)
    doc = json.loads(cli("evaluate", tmp / "run-gaussian_noise-0.5", "--thresholds", demo_runs["t"], "--json").stdout)
    assert doc["data_differ"] and doc["target"]["accuracy"] < doc["reference"]["accuracy"] - 0.2


@pytest.mark.integration
def test_collect_perturb_with_the_wrong_normalisation_collects_nothing(cli, tmp_path):
    result = cli(
        "collect", "--model", "dyncal.demo:pretrained", "--data", "dyncal.demo:validation", "--out", tmp_path / "r",
        "--perturb", "blur:1", "-q",
    )  # fmt: skip
    assert_clean_error(result, r"--pixel-mean and --pixel-std")
    assert list(tmp_path.iterdir()) == []
    assert_clean_error(
        cli("collect", "--model", "m:f", "--data", "d:f", "--out", tmp_path / "r", "--perturb", "blurr:1"),
        r"unknown perturbation 'blurr' \(did you mean blur\?\)",
    )


def _serve(pkg: Path, folder: Path, x: torch.Tensor, shadow: float) -> tuple[np.ndarray, np.ndarray]:
    """Batch-1 requests through the package's runner with telemetry on (shares 0 and 1: no draw decides)."""
    from dyncal.analysis.package_runner import load_early_exit

    runner = load_early_exit(pkg, telemetry=folder, shadow=shadow)
    assert runner.telemetry is not None
    exits, preds = [], []
    for i in range(x.shape[0]):
        e, p = runner(x[i : i + 1], request_ids=[f"r{i}"])
        exits.append(int(e[0]))
        preds.append(int(p[0]))
    runner.telemetry.close()
    return np.array(exits), np.array(preds)


@pytest.mark.integration
def test_the_runner_records_each_request_and_monitor_decides_on_it(demo_runs, cli, tmp_path):
    pytest.importorskip("pyarrow", reason="telemetry needs pyarrow (the rollout extra)")
    from dyncal.analysis.package_runner import load_early_exit
    from dyncal.calibrate.scores import exit_scores
    from dyncal.telemetry import read_telemetry

    run = dyncal.load_run(demo_runs["run"])
    ds = dyncal.load_dataset("dyncal.demo:validation")
    x = torch.stack([ds[int(i)][0] for i in run.indices[:N_SERVED]])
    exits, preds = _serve(demo_runs["pkg"], tmp_path / "tele", x, shadow=1.0)
    plain = load_early_exit(demo_runs["pkg"])
    e0, p0 = plain(x)
    assert np.array_equal(exits, e0.numpy()) and np.array_equal(preds, p0.numpy())  # telemetry changes no answer
    data = read_telemetry(tmp_path / "tele").data
    assert data.n == N_SERVED and np.array_equal(data.exits, exits) and np.array_equal(data.predictions, preds)
    assert data.request_ids.tolist() == [f"r{i}" for i in range(N_SERVED)]
    th = json.loads(demo_runs["t"].read_text())
    scores, z_preds = exit_scores(run.logits[:N_SERVED], th["score"], th["temperatures"])
    for i in range(N_SERVED):
        np.testing.assert_allclose(data.scores[i, : exits[i] + 1], scores[i, : exits[i] + 1], rtol=1e-4, atol=1e-5)
        assert np.isnan(data.scores[i, exits[i] + 1 :]).all()
    assert np.array_equal(data.last_predictions, z_preds[:, -1])  # shadow 1: every request's last exit
    assert (data.latency_ms > 0).all()

    common = ("monitor", demo_runs["run"], "--thresholds", demo_runs["t"], "--telemetry", tmp_path / "tele")
    doc = json.loads(cli(*common, "--max-drop", "0.1", "--json").stdout)
    assert doc["decision"] == "PROCEED" and doc["quality"]["n_shadow"] == N_SERVED
    assert doc["telemetry"]["rows"] == N_SERVED and doc["windows"]
    assert doc["quality"]["disagreements"] == int((z_preds[np.arange(N_SERVED), exits] != z_preds[:, -1]).sum())
    text = cli(*common, "--max-drop", "0.1").stdout
    assert text.startswith("decision: PROCEED") and "drift (context)" in text
    # an ε no label-free evidence of this size can certify: HOLD and ask for labels, never ROLLBACK on disagreement
    doc = json.loads(cli(*common, "--max-drop", "0.001", "--json").stdout)
    assert doc["quality"]["upper"] > 0.001 and doc["cost"]["status"] != "over"
    assert doc["decision"] == "HOLD" and any("cannot certify the drop without labels" in r for r in doc["reasons"])

    labels = tmp_path / "labels.csv"  # labels that arrive later, joined by request id
    labels.write_text("request_id,label\n" + "".join(f"r{i},{int(y)}\n" for i, y in enumerate(run.labels[:N_SERVED])))
    doc = json.loads(cli(*common, "--max-drop", "0.1", "--labels", labels, "--json").stdout)
    early_ok = preds == run.labels[:N_SERVED]
    assert doc["quality"]["source"] == "labels" and doc["labels"]["accuracy"] == pytest.approx(early_ok.mean())

    page = tmp_path / "monitor.pdf"
    assert cli(*common, "--max-drop", "0.1", "--out", page).exit_code == 0
    assert page.read_bytes()[:5] == b"%PDF-"
    assert_clean_error(cli(*common, "--max-drop", "0.1", "--out", page), r"exists|overwrite")

    _serve(demo_runs["pkg"], tmp_path / "none", x[:50], shadow=0.0)
    doc = json.loads(cli(*common[:-1], tmp_path / "none", "--max-drop", "0.05", "--json").stdout)
    assert doc["decision"] == "HOLD" and any("no shadow requests" in r for r in doc["reasons"])

    other = demo_runs["tmp"] / "t_other.json"
    assert cli("solve", demo_runs["run"], "--budget", "0.2x", "--method", "geometric", "--out", other).exit_code == 0
    assert_clean_error(
        cli("monitor", demo_runs["run"], "--thresholds", other, "--telemetry", tmp_path / "tele", "--max-drop", "0.05"),
        r"written by another package: decision fingerprint .* \(other thresholds\)",
    )


def test_load_early_exit_refuses_a_shadow_without_telemetry(tmp_path):
    from dyncal.analysis.package_runner import load_early_exit
    from dyncal.errors import DyncalError

    with pytest.raises(DyncalError, match=r"`shadow` and `metrics` need `telemetry`"):
        load_early_exit(tmp_path, shadow=0.1)


@pytest.mark.integration
def test_the_serving_example_writes_telemetry_that_monitor_reads(demo_runs, tmp_path):
    for module in ("fastapi", "uvicorn", "httpx", "pyarrow"):
        pytest.importorskip(module, reason=f"the serving example needs {module} (the serve and rollout extras)")
    import os
    import signal
    import subprocess
    import sys

    import httpx

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    tele = tmp_path / "tele"
    server = subprocess.Popen(
        [sys.executable, str(root / "examples/serve/app.py"), "--package", str(demo_runs["pkg"]), "--telemetry",
         str(tele), "--canary", "0.5", "--shadow", "1", "--port", "0", "--seed", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        line = server.stdout.readline() if server.stdout else ""
        assert line.startswith("serving on http://127.0.0.1:"), (line, server.stderr and server.stderr.read())
        url = line.split()[-1]
        ds = dyncal.load_dataset("dyncal.demo:validation")
        answers = []
        with httpx.Client(base_url=url, timeout=60) as client:
            assert client.get("/healthz").json()["shadow"] == 1.0
            for i in range(40):
                x = ds[i][0].numpy()[None].tolist()
                r = client.post("/predict", json={"inputs": x, "request_ids": [f"q{i}"]})
                assert r.status_code == 200, r.text
                answers.append(r.json())
            bad = client.post("/predict", json={"inputs": [[1.0, 2.0]]})
            assert bad.status_code == 422 and "want (B, (1, 8, 8))" in bad.text
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    canary = [a for a in answers if a["path"] == ["early_exit"]]
    assert 5 < len(canary) < 35  # a canary share of 0.5 of 40 requests
    assert all(a["exits"][0] is not None for a in canary)
    assert list(tele.glob("*.arrows")) == [] and len(list(tele.glob("*.parquet"))) == 1  # finished on SIGTERM
    done = subprocess.run(
        [sys.executable, "-m", "dyncal", "monitor", str(demo_runs["run"]), "--thresholds", str(demo_runs["t"]),
         "--telemetry", str(tele), "--max-drop", "0.2", "--json"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["n"] == len(canary) and doc["quality"]["n_shadow"] == len(canary)
    assert doc["decision"] in ("PROCEED", "HOLD")
    assert doc["telemetry"]["files"] and not doc["telemetry"]["streams"]


@pytest.mark.integration
def test_the_runner_counts_requests_per_exit_in_prometheus(demo_runs, tmp_path):
    pytest.importorskip("pyarrow", reason="telemetry needs pyarrow (the rollout extra)")
    prom = pytest.importorskip("prometheus_client", reason="metrics need prometheus-client (the rollout extra)")
    from dyncal.analysis.package_runner import load_early_exit

    registry = prom.CollectorRegistry()
    runner = load_early_exit(demo_runs["pkg"], telemetry=tmp_path / "t", shadow=1.0, metrics=registry)
    ds = dyncal.load_dataset("dyncal.demo:validation")
    exits, preds = runner(torch.stack([ds[i][0] for i in range(30)]))
    assert runner.telemetry is not None
    runner.telemetry.close()
    per_exit = [
        registry.get_sample_value("dyncal_early_exit_requests_total", {"exit": str(j + 1)}) or 0.0 for j in range(4)
    ]
    assert per_exit == np.bincount(exits.numpy(), minlength=4).tolist()
    assert registry.get_sample_value("dyncal_shadow_requests_total") == 30
    assert registry.get_sample_value("dyncal_early_exit_latency_seconds_count") == 30


@pytest.mark.integration
def test_batch_one_rows_converted_at_the_flush_equal_rows_converted_per_request(demo_runs, tmp_path):
    """The runner's batch-1 path (numbers into lists, last-exit scores at the flush): the same rows and metrics."""
    pa = pytest.importorskip("pyarrow", reason="telemetry needs pyarrow (the rollout extra)")
    pq = pytest.importorskip("pyarrow.parquet", reason="telemetry needs pyarrow (the rollout extra)")
    prom = pytest.importorskip("prometheus_client", reason="metrics need prometheus-client (the rollout extra)")
    from dyncal.analysis.package_runner import load_early_exit
    from dyncal.analysis.package_telemetry import open_telemetry

    ds = dyncal.load_dataset("dyncal.demo:validation")
    x = torch.stack([ds[i][0] for i in range(70)])
    plain_exits, plain_preds = load_early_exit(demo_runs["pkg"])(x)
    tables, samples = {}, {}
    for name, deferred in (("deferred", True), ("per_request", False)):
        runner = load_early_exit(demo_runs["pkg"])
        registry = prom.CollectorRegistry()
        writer = open_telemetry(
            runner, tmp_path / name, shadow=0.5, seed=3, background=False, flush_rows=7,
            metrics=registry, **({} if deferred else {"deferred": None}),
        )  # fmt: skip
        assert (writer.deferred is not None) == deferred
        runner.telemetry = writer
        answers = []
        for i in range(60):  # batch 1, some with ids; the writer's own record() and a batch of 5 in between
            answers.append(runner(x[i : i + 1], request_ids=[f"r{i}"] if i % 3 else None))
            if i == 20:
                writer.record([1], [2], np.full((1, 4), 0.5, np.float32), 1.0, request_ids=["own"])
            if i == 40:
                answers.append(runner(x[60:65]))
        answers.append(runner(x[65:70]))
        writer.close()
        exits, preds = torch.cat([a[0] for a in answers]), torch.cat([a[1] for a in answers])
        order = [*range(41), *range(60, 65), *range(41, 60), *range(65, 70)]
        assert torch.equal(exits, plain_exits[order]) and torch.equal(preds, plain_preds[order])
        files = sorted((tmp_path / name).glob("*.parquet"))
        assert len(files) == 1 and not list((tmp_path / name).glob("*.arrows"))
        tables[name] = pq.read_table(files[0]).drop(["time", "latency_ms"])
        samples[name] = [
            (s.name, s.labels, s.value) for m in registry.collect() for s in m.samples if "_sum" not in s.name
        ]
        samples[name] = [s for s in samples[name] if not s[0].endswith("_created") and "bucket" not in s[0]]
    fast, slow = tables["deferred"], tables["per_request"]
    assert fast.num_rows == slow.num_rows == 71 and fast.column_names == slow.column_names
    for column in fast.column_names:
        assert fast.column(column).to_pylist() == slow.column(column).to_pylist(), column
    assert fast.column("batch").to_pylist() == [*range(42), *[42] * 5, *range(43, 62), *[62] * 5]  # recorded order
    assert pa.compute.sum(fast.column("shadow")).as_py() > 0
    assert samples["deferred"] == samples["per_request"]
