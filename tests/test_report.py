"""The PDF go/no-go report and ``dyncal plot``, opened and read back like a reader would.

The run is the real demo model (4-exit digits CNN) over its 797 held-out digits, with
hand-counted cumulative MACs and a fixed synthetic latency table so that every number
is deterministic.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_clean_error
from hypothesis import given
from hypothesis import strategies as st
from synthetic_profiles import spread_profile

from dyncal.artifacts.costs import CostTable, LatencyProfile
from dyncal.artifacts.run import load_run, store_costs
from dyncal.artifacts.run_document import Provenance
from dyncal.artifacts.run_import import import_arrays
from dyncal.calibrate.solvers import solve_run
from dyncal.choices import DEFAULT_METHOD
from dyncal.errors import DyncalError

pypdf = pytest.importorskip("pypdf")

# conv + linear multiply-accumulates of DigitsExitNet on 1x8x8 inputs, cumulative per exit
DEMO_MACS = (4928.0, 153664.0, 1926976.0, 9897280.0)
CREATED = "2026-11-27T23:00:00+00:00"


def _latency(batch: int) -> LatencyProfile:
    stage = (0.02, 0.05, 0.12, 0.3)
    return spread_profile(batch, stage, decision_ms=0.01, full_model_ms=0.5, reps=9, spread=0.02, scale=batch**0.5)


def _demo_logits() -> tuple[np.ndarray, np.ndarray]:
    from dyncal.demo import pretrained, validation

    ds = validation()
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = np.array([int(ds[i][1]) for i in range(len(ds))])
    with torch.inference_mode():
        z = torch.stack(list(pretrained()(x)), dim=1).numpy()
    return z, y


@pytest.fixture(scope="session")
def demo_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two demo runs: MACs only, and MACs plus cpu/b1 and cpu/b32 latency."""
    z, y = _demo_logits()
    root = tmp_path_factory.mktemp("report_runs")
    prov = Provenance(
        model="dyncal.demo:pretrained",
        weights_sha256="0" * 64,
        data="dyncal.demo:validation",
        command="dyncal collect --model dyncal.demo:pretrained --data dyncal.demo:validation --out run",
        created=CREATED,
        device="cpu",
        versions={"dyncal": "test"},
    )
    plain = import_arrays(z, y, root / "plain", macs=DEMO_MACS, provenance=prov).path
    lat = import_arrays(z, y, root / "lat", macs=DEMO_MACS, provenance=prov)
    store_costs(lat, CostTable(macs=DEMO_MACS, latency={"cpu/b1": _latency(1), "cpu/b32": _latency(32)}))
    return {"plain": plain, "lat": lat.path}


@pytest.fixture(scope="session")
def go_report(demo_runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The GO report on the run with latency, via the CLI's --json."""
    from typer.testing import CliRunner

    from dyncal.cli import app

    out = tmp_path_factory.mktemp("go") / "report.pdf"
    res = CliRunner().invoke(
        app,
        [
            "report",
            str(demo_runs["lat"]),
            "--out",
            str(out),
            "--min-accuracy",
            "0.9",
            "--min-speedup",
            "3",
            "--device",
            "cpu",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    return out, json.loads(res.stdout)


def _pages_text(path: Path) -> list[str]:
    return [p.extract_text() for p in pypdf.PdfReader(str(path)).pages]


def _flat(text: str) -> str:
    return " ".join(text.split())


# --------------------------------------------------------------------------- content


def test_report_has_six_pages_and_the_decision(go_report: tuple[Path, dict]) -> None:
    path, doc = go_report
    text = _pages_text(path)
    assert len(text) == 6
    assert [p["title"] for p in doc["pages"]] == [
        "Decision",
        "Accuracy vs MACs",
        "Accuracy vs latency",
        "Exits at the operating point",
        "Calibration",
        "Thresholds and provenance",
    ]
    assert doc["decision"] == "GO"
    assert [c["name"] for c in doc["criteria"]] == ["accuracy", "speedup"]
    assert all(c["passed"] for c in doc["criteria"])
    speed = doc["criteria"][1]
    assert speed["cost"] == "cpu/b1" and speed["interval"][0] >= 3
    first = _flat(text[0])
    assert "GO" in first and "NO-GO" not in first and "PASS" in first and "FAIL" not in first


def test_key_numbers_equal_what_solve_reports(go_report: tuple[Path, dict], demo_runs: dict[str, Path]) -> None:
    path, doc = go_report
    op = doc["operating_point"]
    again = solve_run(load_run(demo_runs["lat"]), doc["budget"], method=op["method"], device="cpu", batch_size=1)
    solved = again.to_dict()
    for key in (
        "thresholds",
        "temperatures",
        "holdout_accuracy",
        "holdout_ci",
        "expected_macs",
        "exit_shares",
    ):
        assert op[key] == solved[key], key
    first, last = _flat(_pages_text(path)[0]), _flat(_pages_text(path)[5])
    acc = f"{100 * solved['holdout_accuracy']:.2f}%"
    lo, hi = (f"{100 * v:.2f}%" for v in solved["holdout_ci"])
    assert f"held-out accuracy {acc} {lo} to {hi}" in first
    assert f"{acc} (95% interval {lo} to {hi}; 399 samples)" in first
    # the accuracy criterion's value is solve's number, exactly
    assert doc["criteria"][0]["value"] == solved["holdout_accuracy"]
    assert doc["criteria"][0]["interval"] == solved["holdout_ci"]
    for t in solved["thresholds"][:-1]:
        assert f"{t:.6g}" in last
    speedup = DEMO_MACS[-1] / solved["holdout"]["expected_macs"]
    assert doc["speedup"]["macs"] == pytest.approx(speedup)
    assert f"{speedup:.2f}× fewer MACs" in first


def test_provenance_page(go_report: tuple[Path, dict]) -> None:
    last = _flat(_pages_text(go_report[0])[5])
    for needle in (
        "dyncal.demo:pretrained",
        "0" * 40,
        "dyncal.demo:validation",
        "797 samples / 4 exits / 10 classes",
        "dyncal collect --model",
        "test CPU",
        "--min-accuracy 0.9",
    ):
        assert needle in last, needle


def test_go_and_nogo_reachable_and_no_criteria_states_the_tradeoff(
    demo_runs: dict[str, Path], tmp_path: Path, cli
) -> None:
    out = tmp_path / "r.pdf"
    res = cli("report", demo_runs["plain"], "--out", out, "--min-accuracy", "0.999", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["decision"] == "NO-GO" and doc["criteria"][0]["passed"] is False
    first = _flat(_pages_text(out)[0])
    assert "NO-GO" in first and "FAIL" in first
    before = out.read_bytes()
    assert_clean_error(
        cli("report", demo_runs["plain"], "--out", out, "--max-drop", "0.05"),
        r"already exists; choose another --out or pass --overwrite",
    )
    assert out.read_bytes() == before
    res = cli(
        "report",
        demo_runs["plain"],
        "--out",
        out,
        "--max-drop",
        "0.05",
        "--budget",
        "0.3x",
        "--json",
        "--overwrite",
    )
    doc = json.loads(res.stdout)
    assert doc["decision"] == "GO" and doc["budget"] == "0.3x"
    assert doc["criteria"][0]["name"] == "accuracy_drop" and doc["criteria"][0]["interval"][1] <= 0.05
    res = cli("report", demo_runs["plain"], "--out", out, "--json", "--overwrite")
    doc = json.loads(res.stdout)
    assert doc["decision"] is None and doc["criteria"] == []
    text = [_flat(t) for t in _pages_text(out)]
    assert "NO DECISION" in text[0] and "trade-off" in text[0]
    # no latency: page 3 says so and how to measure it
    assert "No latency was profiled" in text[2] and "dyncal profile" in text[2]


def test_human_summary(demo_runs: dict[str, Path], tmp_path: Path, cli) -> None:
    res = cli("report", demo_runs["plain"], "--out", tmp_path / "r.pdf", "--min-accuracy", "0.9")
    assert res.exit_code == 0, res.output
    assert "decision: GO" in res.stdout and "accuracy:" in res.stdout and "%" in res.stdout


# --------------------------------------------------------------------------- the file


def test_deterministic_small_and_dated(demo_runs: dict[str, Path], tmp_path: Path, go_report) -> None:
    from dyncal.reports.pdf import build_report

    a, b = tmp_path / "a.pdf", tmp_path / "b.pdf"
    kw = {"min_accuracy": 0.9, "min_speedup": 3.0, "device": "cpu"}
    build_report(demo_runs["lat"], a, **kw)
    build_report(demo_runs["lat"], b, **kw)
    assert a.read_bytes() == b.read_bytes()
    assert a.stat().st_size < 2_000_000 and go_report[0].stat().st_size < 2_000_000
    meta = pypdf.PdfReader(str(a)).metadata
    assert meta.creation_date.isoformat().startswith("2026-11-27T23:00:00")


def test_source_date_epoch_sets_the_date(demo_runs: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    from dyncal.reports.pdf import build_report

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "86400")
    build_report(demo_runs["plain"], tmp_path / "r.pdf", budget="0.2x")
    assert pypdf.PdfReader(str(tmp_path / "r.pdf")).metadata.creation_date.year == 1970


@pytest.mark.skipif(shutil.which("pdftoppm") is None, reason="pdftoppm (poppler-utils) is not installed")
def test_every_page_renders_and_is_not_blank(go_report: tuple[Path, dict], tmp_path: Path) -> None:
    from matplotlib.image import imread

    cmd = ["pdftoppm", "-png", "-r", "30", str(go_report[0]), str(tmp_path / "p")]
    subprocess.run(cmd, check=True)
    pages = sorted(tmp_path.glob("p-*.png"))
    assert len(pages) == 6
    for page in pages:
        grey = imread(page)[..., :3].mean(axis=-1)  # in [0, 1], 1 is white
        ink = float(np.mean(grey < 0.8))
        assert ink > 0.01, (page.name, ink)
        # not just a header: ink below the top fifth of the page
        assert float(np.mean(grey[grey.shape[0] // 5 :] < 0.8)) > 0.005, page.name


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["--min-accuracy", "95"], r"fraction in \[0, 1\], got 95.*did you mean 0.95"),
        (["--min-accuracy", "0.9", "--max-drop", "0.01"], r"not both"),
        (["--min-speedup", "0"], r"positive factor"),
        (
            ["--min-speedup", "2", "--device", "cpu"],
            r"no latency profiled for cpu/b1.*dyncal profile",
        ),
        (["--budget", "3ms"], r"ms needs measured latency"),
        (["--budget", "0.0001x"], r"cheapest feasible"),
        (["--method", "magic"], r"--method must be one of"),
    ],
)
def test_report_user_errors(demo_runs: dict[str, Path], tmp_path: Path, cli, args: list[str], pattern: str) -> None:
    assert_clean_error(cli("report", demo_runs["plain"], "--out", tmp_path / "r.pdf", *args), pattern)
    assert not (tmp_path / "r.pdf").exists()


def test_report_path_errors(demo_runs: dict[str, Path], tmp_path: Path, cli) -> None:
    assert_clean_error(cli("report", tmp_path / "nope", "--out", tmp_path / "r.pdf"), r"no run directory")
    assert_clean_error(cli("report", demo_runs["plain"], "--out", tmp_path / "no" / "r.pdf"), r"does not exist")
    assert_clean_error(cli("report", demo_runs["plain"], "--out", tmp_path / "r.png"), r"\.pdf")


def test_run_without_costs_is_an_error(tmp_path: Path, cli) -> None:
    rng = np.random.default_rng(0)
    run = import_arrays(rng.normal(size=(60, 2, 3)).astype(np.float32), rng.integers(0, 3, 60), tmp_path / "r").path
    assert_clean_error(cli("report", run, "--out", tmp_path / "r.pdf"), r"no costs.*dyncal profile")


# --------------------------------------------------------------------------- plot


@pytest.mark.parametrize("kind", ["frontier", "latency", "exits", "reliability"])
def test_plot_every_kind(demo_runs: dict[str, Path], tmp_path: Path, cli, kind: str) -> None:
    png = tmp_path / f"{kind}.png"
    res = cli("plot", demo_runs["lat"], "--kind", kind, "--out", png, "--budget", "0.1x", "--dpi", "40")
    assert res.exit_code == 0, res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_svg_is_deterministic(demo_runs: dict[str, Path], tmp_path: Path, cli) -> None:
    a, b = tmp_path / "a.svg", tmp_path / "b.svg"
    for out in (a, b):
        assert cli("plot", demo_runs["plain"], "--kind", "reliability", "--out", out).exit_code == 0
    assert a.read_bytes() == b.read_bytes() and b"<svg" in a.read_bytes()


def test_plot_errors(demo_runs: dict[str, Path], tmp_path: Path, cli) -> None:
    assert_clean_error(
        cli("plot", demo_runs["plain"], "--kind", "latency", "--out", tmp_path / "l.png"),
        r"no latency profiled.*dyncal profile",
    )
    assert_clean_error(cli("plot", demo_runs["plain"], "--kind", "pie", "--out", tmp_path / "x.png"), r"--kind")
    assert_clean_error(cli("plot", demo_runs["plain"], "--kind", "exits", "--out", tmp_path / "x.jpg"), r"\.png")
    kept = tmp_path / "kept.png"
    kept.write_bytes(b"mine")
    assert_clean_error(
        cli("plot", demo_runs["plain"], "--kind", "exits", "--out", kept), r"already exists.*--overwrite"
    )
    assert kept.read_bytes() == b"mine"
    assert_clean_error(  # --overwrite replaces only what dyncal wrote
        cli("plot", demo_runs["plain"], "--kind", "exits", "--out", kept, "--overwrite"), r"dyncal did not write it"
    )
    assert kept.read_bytes() == b"mine"
    kept.unlink()
    assert cli("plot", demo_runs["plain"], "--kind", "exits", "--out", kept).exit_code == 0
    assert cli("plot", demo_runs["plain"], "--kind", "exits", "--out", kept, "--overwrite").exit_code == 0


# --------------------------------------------------------------------------- figures alone


def _toy_frontier():
    import pandas as pd

    rows = []
    for method, acc in (("smoothed", 0.9), ("geometric", 0.85), ("oracle", 0.97)):
        for f in (0.2, 0.6, 1.0):
            rows.append(
                {
                    "method": method,
                    "exit": pd.NA,
                    "budget_fraction": f,
                    "expected_macs": f * 1e9,
                    "fitted_accuracy": acc + 0.05 * f,
                    "holdout_accuracy": acc + 0.04 * f,
                    "holdout_ci_low": acc,
                    "holdout_ci_high": acc + 0.06,
                    "ms:cpu/b1": f * 10,
                    "ms:cuda/b64": f,
                }
            )
    for k, f in ((1, 0.2), (2, 1.0)):
        rows.append(
            {
                "method": "static",
                "exit": k,
                "budget_fraction": f,
                "expected_macs": f * 1e9,
                "fitted_accuracy": 0.8 + 0.1 * k,
                "holdout_accuracy": 0.8 + 0.1 * k,
                "ms:cpu/b1": f * 10,
                "ms:cuda/b64": f,
            }
        )
    return pd.DataFrame(rows)


def test_figure_functions_draw_on_given_axes() -> None:
    from matplotlib.figure import Figure

    from dyncal.reports.figures import OperatingPoint, plot_frontier, plot_latency
    from dyncal.reports.figures_exits import plot_exits

    df = _toy_frontier()
    fig = Figure()
    ax = fig.add_subplot()
    op = OperatingPoint(expected_macs=5e8, accuracy=0.93, interval=(0.9, 0.95), expected_ms={"cpu/b1": 5.0})
    assert plot_frontier(df, operating_point=op, ax=ax) is fig
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("geometric" in t for t in labels) and any("oracle" in t for t in labels)
    assert any("95% interval" in t for t in labels) and any("operating point" in t for t in labels)
    lat = plot_latency(df, operating_point=op)
    assert [a.get_title() for a in lat.axes] == ["cpu, batch size 1", "cuda, batch size 64"]
    ex = plot_exits([0.5, 0.5], [0.9, np.nan], counts=[5, 5])
    assert "no samples" in " ".join(t.get_text() for t in ex.axes[0].texts)


def test_figure_functions_refuse_what_they_cannot_draw() -> None:
    from dyncal.reports.figures import plot_frontier, plot_latency
    from dyncal.reports.figures_exits import plot_exits

    df = _toy_frontier()
    with pytest.raises(DyncalError, match="no latency was profiled"):
        plot_latency(df.drop(columns=["ms:cpu/b1", "ms:cuda/b64"]))
    with pytest.raises(DyncalError, match="no latency profiled for cpu/b8"):
        plot_latency(df, keys=["cpu/b8"])
    with pytest.raises(DyncalError, match="lacks column"):
        plot_frontier(df.drop(columns=["expected_macs"]))
    with pytest.raises(DyncalError, match="one value per exit"):
        plot_exits([0.5, 0.5], [0.9])


def test_latency_only_run_and_nothing_held_out(demo_runs: dict[str, Path], tmp_path: Path) -> None:
    from dyncal.reports.pdf import build_report

    src = load_run(demo_runs["plain"])
    opened = import_arrays(np.asarray(src.logits), np.asarray(src.labels), tmp_path / "lat_only")
    store_costs(opened, CostTable(latency={"cpu/b1": _latency(1)}))
    run = opened.path
    res = build_report(run, tmp_path / "r.pdf", min_speedup=2.0)
    assert res.criteria[0].cost == "cpu/b1" and set(res.speedup) == {"cpu/b1"}
    text = [_flat(t) for t in _pages_text(tmp_path / "r.pdf")]
    assert "This run has no MAC counts" in text[1] and "cpu, batch size 1" in text[2]
    res = build_report(demo_runs["plain"], tmp_path / "h.pdf", min_accuracy=0.9, holdout=0.0)
    assert res.criteria[0].interval is None and res.decision == "GO"
    assert "point estimates decide" in _flat(_pages_text(tmp_path / "h.pdf")[0])


# --------------------------------------------------------------------------- decision rules


def test_judge_by_hand() -> None:
    from dyncal.reports.decision import ExitOutcome, Requirements, judge, speedup_estimate

    # 4 rows: exits 0,0,1,1; early exit wrong on row 3, last exit right everywhere
    outcome = ExitOutcome(
        exits=np.array([0, 0, 1, 1]),
        correct=np.array([True, True, True, False]),
        last_correct=np.ones(4, bool),
        held_out=False,
    )
    speed = speedup_estimate(outcome, [1.0, 3.0], 4.0)
    crit = judge(
        Requirements(max_drop=0.25, min_speedup=2.0),
        accuracy=0.75,
        accuracy_interval=None,
        outcome=outcome,
        speedup=speed,
    )
    drop, sp = crit
    assert (drop.name, drop.value, drop.status) == ("accuracy_drop", 0.25, "pass")
    assert (sp.name, sp.value, sp.status, sp.source) == ("speedup", 2.0, "pass", "macs")  # 4 / mean(1,1,3,3)
    crit = judge(Requirements(min_accuracy=0.8), accuracy=0.85, accuracy_interval=(0.79, 0.9), outcome=outcome)
    assert crit[0].status == "fail" and crit[0].passed is False  # the point clears 0.8, the interval does not
    with pytest.raises(DyncalError, match="`min_speedup` criterion needs costs"):
        judge(Requirements(min_speedup=2.0), accuracy=0.8, accuracy_interval=None, outcome=outcome)


def test_held_out_intervals_bracket_the_values() -> None:
    from dyncal.reports.decision import ExitOutcome, accuracy_drop, speedup_estimate

    rng = np.random.default_rng(0)
    n = 400
    outcome = ExitOutcome(
        exits=rng.integers(0, 3, n),
        correct=rng.random(n) < 0.9,
        last_correct=rng.random(n) < 0.92,
        held_out=True,
    )
    d, (lo, hi) = accuracy_drop(outcome)
    assert lo <= d <= hi and hi - lo < 0.1
    est = speedup_estimate(outcome, [1.0, 2.0, 4.0], 4.0)
    lo, hi = est.interval
    assert lo <= est.value <= hi
    assert est.value == pytest.approx(4.0 / np.mean(np.array([1.0, 2.0, 4.0])[outcome.exits]))
    assert accuracy_drop(outcome) == accuracy_drop(outcome)  # seeded: the same every time


def test_temperature_scaling_shows_on_the_calibration_page(demo_runs: dict[str, Path], tmp_path: Path, cli) -> None:
    out = tmp_path / "t.pdf"
    res = cli("report", demo_runs["plain"], "--out", out, "--budget", "0.2x", "--temperature", "--json")
    assert res.exit_code == 0, res.output
    temps = json.loads(res.stdout)["operating_point"]["temperatures"]
    assert any(abs(t - 1) > 1e-3 for t in temps)
    page = _flat(_pages_text(out)[4])
    assert "ECE (fitted T)" in page and f"{temps[0]:.3f}" in page
    assert "--temperature" in _flat(_pages_text(out)[5])


def test_calibration_shows_top_probability_whatever_the_exit_score(demo_runs: dict[str, Path], tmp_path: Path, cli):
    """Thresholds on the margin score: the calibration page still shows the top softmax probability."""
    from dyncal.analysis.calibration import reliability_bins
    from dyncal.calibrate.scores import exit_scores
    from dyncal.reports.data import prepare_report

    run = load_run(demo_runs["plain"])
    conf, pred = exit_scores(run.logits, "maxprob")
    th = tmp_path / "margin.json"
    res = cli("solve", demo_runs["plain"], "--budget", "0.3x", "--score", "margin", "--out", th)
    assert res.exit_code == 0, res.output
    data = prepare_report(demo_runs["plain"], thresholds=th)
    assert data.thresholds["score"] == "margin"
    np.testing.assert_allclose(data.exit_confidence, conf.mean(axis=0))
    np.testing.assert_allclose(data.exit_accuracy, (pred == run.labels[:, None]).mean(axis=0))
    th_t = tmp_path / "margin_t.json"
    res = cli("solve", demo_runs["plain"], "--budget", "0.3x", "--score", "entropy", "--temperature", "--out", th_t)
    assert res.exit_code == 0, res.output
    data = prepare_report(demo_runs["plain"], thresholds=th_t)
    scaled, pred_t = exit_scores(run.logits, "maxprob", data.thresholds["temperatures"])
    assert data.scaled_bins is not None
    for k, b in enumerate(data.scaled_bins):
        want = reliability_bins(scaled[:, k], pred_t[:, k] == run.labels)
        np.testing.assert_array_equal(b.count, want.count)
        np.testing.assert_allclose(b.confidence, want.confidence)


def test_report_scores_the_logits_once(
    demo_runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The frontier, the solve and the held-out simulation used to score the run 3 times."""
    import dyncal.calibrate.prepare as prepare_mod
    import dyncal.calibrate.scores as scores_mod
    from dyncal.reports.pdf import build_report

    calls: list[int] = []
    real = scores_mod.exit_scores

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(scores_mod, "exit_scores", counting)
    monkeypatch.setattr(prepare_mod, "exit_scores", counting)
    build_report(demo_runs["lat"], tmp_path / "r.pdf", min_accuracy=0.9)
    assert len(calls) == 1
    calls.clear()
    build_report(demo_runs["lat"], tmp_path / "t.pdf", temperature=True)
    assert len(calls) == 2  # scaled scores, and raw ones for the calibration page


def test_prepared_run_stands_in_for_the_run(demo_runs: dict[str, Path]) -> None:
    from dyncal.calibrate.frontier import compute_frontier
    from dyncal.calibrate.prepare import prepare_run

    run = load_run(demo_runs["lat"])
    prep = prepare_run(run, holdout=0.3, seed=2)
    a = solve_run(prep, "0.3x", holdout=0.3).to_dict()
    b = solve_run(run, "0.3x", holdout=0.3, seed=2).to_dict()
    assert a == b
    fa = compute_frontier(prep, n_budgets=5)
    fb = compute_frontier(run, n_budgets=5, holdout=0.3, seed=2)
    assert fa.equals(fb)
    # after a default frontier, solve_run walks the cached path: same answers, any budget
    compute_frontier(prep)
    assert (DEFAULT_METHOD, "macs", 41) in prep.cache.paths
    for budget in ("0.3x", "0.1234x", "1.2MMAC"):
        fresh = solve_run(run, budget, holdout=0.3, seed=2).to_dict()
        assert solve_run(prep, budget).to_dict() == fresh
    with pytest.raises(DyncalError, match=r"seed=5 contradicts the prepared run \(seed=2\)"):
        solve_run(prep, "0.3x", seed=5)
    with pytest.raises(DyncalError, match="score='margin' contradicts"):
        compute_frontier(prep, score="margin")


def test_temperature_at_the_bound_is_flagged_on_the_calibration_page(tmp_path: Path) -> None:
    from dyncal.reports.pdf import build_report

    z, y = _demo_logits()
    z[:, 0] = np.random.default_rng(0).normal(0, 10, z[:, 0].shape)  # exit 1: pure noise
    run = import_arrays(z, y, tmp_path / "noise", macs=DEMO_MACS)
    res = build_report(run.path, tmp_path / "n.pdf", budget="0.5x", temperature=True)
    assert res.thresholds["temperature_at_bound"] == [True, False, False, False]
    page = _flat(_pages_text(tmp_path / "n.pdf")[4])
    assert "(at bound)" in page
    assert "temperature of exit 1 stopped at the search bound" in page


# --------------------------------------------------------------------------- review fixes


def _edited_thresholds(run_path: Path, tmp_path: Path, thresholds: list, name: str) -> Path:
    """A thresholds.json solved on the run, with its thresholds replaced by hand."""
    doc = solve_run(load_run(run_path), "0.5x").to_dict()
    doc["thresholds"] = thresholds
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def test_batch_latency_speedup_is_per_batch_not_per_sample(demo_runs: dict[str, Path], tmp_path: Path, cli) -> None:
    """At batch 32 a batch runs each stage until its last sample leaves: judge that, not samples."""
    run = load_run(demo_runs["lat"])
    prof = run.costs.latency["cpu/b32"]
    full = prof.full_model_median_ms
    stage, decision = prof.stage_median_ms, prof.decision_median_ms
    args = ["--min-speedup", "2", "--device", "cpu", "--batch-size", "32", "--json"]
    # everyone leaves at exit 1: every batch runs stage 1 and one decision, nothing else
    first = _edited_thresholds(demo_runs["lat"], tmp_path, [0.0, 1.5, 1.5, None], "first.json")
    res = cli("report", demo_runs["lat"], "--thresholds", first, "--out", tmp_path / "a.pdf", *args)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["held_out"]["exit_shares"] == [1.0, 0.0, 0.0, 0.0]
    assert doc["latency"]["cpu/b32"]["early_exit_ms"] == pytest.approx(stage[0] + decision)
    assert doc["criteria"][0]["value"] == pytest.approx(full / (stage[0] + decision))
    # nobody leaves early: every batch runs every stage and three decisions, slower than the full model
    last = _edited_thresholds(demo_runs["lat"], tmp_path, [1.5, 1.5, 1.5, None], "last.json")
    res = cli("report", demo_runs["lat"], "--thresholds", last, "--out", tmp_path / "b.pdf", *args)
    doc = json.loads(res.stdout)
    assert doc["latency"]["cpu/b32"]["early_exit_ms"] == pytest.approx(sum(stage) + 3 * decision)
    full_last = run.costs.latency["cpu/b32"].full_model_median_ms / (sum(stage) + 3 * decision)
    assert doc["criteria"][0]["value"] == pytest.approx(full_last) and doc["decision"] == "NO-GO"
    # mixed exits: a batch waits for its slowest sample, so it gains less than the per-sample expectation
    res = cli("report", demo_runs["lat"], "--budget", "0.5x", "--out", tmp_path / "c.pdf", *args)
    doc = json.loads(res.stdout)
    speed = doc["criteria"][0]
    assert speed["cost"] == "cpu/b32" and speed["source"] == "predicted"
    per_sample = full / float(np.dot(doc["held_out"]["exit_shares"], prof.early_exit_ms))
    assert 1 < speed["value"] < 0.95 * per_sample
    assert speed["interval"][0] <= speed["value"] <= speed["interval"][1]
    assert doc["speedup"]["cpu/b32"] == speed["value"]
    # batch 1 keeps the per-sample expectation
    b1 = run.costs.latency["cpu/b1"]
    expected_b1 = b1.full_model_median_ms / float(np.dot(doc["held_out"]["exit_shares"], b1.early_exit_ms))
    assert doc["speedup"]["cpu/b1"] == pytest.approx(expected_b1)
    page = _flat(_pages_text(tmp_path / "c.pdf")[0])
    assert "a batch of 32 takes" in page and "dyncal verify" in page
    assert "units are batches of 32 held-out samples" in page


def test_nothing_held_out_decision_is_provisional(demo_runs: dict[str, Path], tmp_path: Path, cli) -> None:
    out = tmp_path / "r.pdf"
    res = cli("report", demo_runs["plain"], "--out", out, "--min-accuracy", "0.9", "--holdout", "0", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["decision"] == "GO" and doc["decision_provisional"] is True
    first = _flat(_pages_text(out)[0])
    assert "provisional: nothing held out" in first
    assert "whole 95% interval on the right side" not in first
    assert "per sample held out" not in first and "measured on samples held out" not in first
    assert "per sample on all samples (nothing held out)" in first  # the MACs row keeps its number
    assert "judged on the held-out half" not in first
    res = cli("report", demo_runs["plain"], "--out", out, "--min-accuracy", "0.9", "--holdout", "0", "--overwrite")
    assert "decision: GO (provisional: nothing held out)" in res.stdout
    res = cli("report", demo_runs["plain"], "--out", out, "--min-accuracy", "0.9", "--json", "--overwrite")
    assert json.loads(res.stdout)["decision_provisional"] is False


def test_no_budget_meets_the_criteria_shows_the_closest(demo_runs: dict[str, Path], tmp_path: Path, cli) -> None:
    out = tmp_path / "r.pdf"
    res = cli("report", demo_runs["plain"], "--out", out, "--max-drop", "0.01", "--min-speedup", "50", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["decision"] == "NO-GO"
    assert doc["budget"] != "1x" and "comes closest" in doc["budget_reason"]
    assert "of speed-up" in doc["budget_reason"]
    # the cheapest budget that meets the drop: the speed-up is the best such budget gives
    drop, speed = doc["criteria"]
    assert speed["value"] > 2
    assert "comes closest" in _flat(_pages_text(out)[0])


def test_speedup_uses_latency_when_profiled(demo_runs: dict[str, Path], tmp_path: Path, cli) -> None:
    # several latency keys and no --device: say which to choose
    assert_clean_error(
        cli("report", demo_runs["lat"], "--out", tmp_path / "r.pdf", "--min-speedup", "2"),
        r"cpu/b1, cpu/b32.*--device and --batch-size",
    )
    # one latency key: judged on it, not on MACs
    src = load_run(demo_runs["plain"])
    opened = import_arrays(np.asarray(src.logits), np.asarray(src.labels), tmp_path / "one", macs=DEMO_MACS)
    store_costs(opened, CostTable(macs=DEMO_MACS, latency={"cpu/b1": _latency(1)}))
    run = opened.path
    res = cli("report", run, "--out", tmp_path / "r.pdf", "--min-speedup", "2", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["criteria"][0]["cost"] == "cpu/b1"
    # MACs only: MACs, labelled
    res = cli("report", demo_runs["plain"], "--out", tmp_path / "m.pdf", "--min-speedup", "2", "--json")
    crit = json.loads(res.stdout)["criteria"][0]
    assert crit["cost"] == "macs" and "MACs" in crit["description"]


def test_frontier_legend_sits_outside_the_curves(tmp_path: Path) -> None:
    """An imported MAC-only run's curves fill the lower right, where the legend used to cover them."""
    from dyncal.reports.data import prepare_report
    from dyncal.reports.pages.curves import _page_frontier

    npz = np.load(Path(__file__).parents[1] / "benchmarks" / "fashion_mnist_logits.npz")
    run = import_arrays(npz["logits"], npz["labels"], tmp_path / "fm", macs=(70880, 304368, 990864, 3716048)).path
    fig = _page_frontier(prepare_report(run, budget="0.2x"))
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    ax = next(a for a in fig.axes if a.get_legend() is not None)
    legend = ax.get_legend().get_window_extent(renderer)
    axes = ax.get_window_extent(renderer)
    assert legend.y1 <= axes.y0  # wholly below the plotting area
    assert legend.y0 >= 0 and legend.x0 >= 0 and legend.x1 <= fig.bbox.x1  # and on the page
    # nothing drawn later on the page (the budget table) starts above the legend's bottom
    below = [t for t in fig.texts if t.get_window_extent(renderer).y1 < axes.y0 and t.get_text().strip()]
    assert all(t.get_window_extent(renderer).y1 <= legend.y0 for t in below)


# --------------------------------------------------------------------------- the third verdict


_iv = st.floats(-5, 5, allow_nan=False, allow_infinity=False)


@given(
    value=_iv,
    s_lo=st.floats(0, 2),
    s_hi=st.floats(0, 2),
    t_lo=st.floats(0, 2),
    t_hi=st.floats(0, 2),
    widen=st.floats(1, 50),
    required=_iv,
    comparison=st.sampled_from([">=", "<="]),
)
def test_more_timing_noise_never_flips_the_verdict(
    value: float, s_lo: float, s_hi: float, t_lo: float, t_hi: float, widen: float, required: float, comparison: str
) -> None:
    """Widening the timing interval around the same estimate: PASS never becomes FAIL, nor FAIL PASS."""
    from dyncal.reports.decision import FAIL, PASS, criterion_status

    def status(t_scale: float) -> str:
        sampling = (value - s_lo, value + s_hi)
        timing = (value - t_scale * t_lo, value + t_scale * t_hi)
        # both kinds of noise: half-widths added in quadrature, as a joint bootstrap roughly gives
        combined = (value - np.hypot(s_lo, t_scale * t_lo), value + np.hypot(s_hi, t_scale * t_hi))
        return criterion_status(value, combined, required, comparison, sampling=sampling, timing=timing)

    quiet, busy = status(1.0), status(widen)
    assert not (quiet == PASS and busy == FAIL)
    assert not (quiet == FAIL and busy == PASS)
    # and with no timing noise at all the rule is the sampling-only one: never inconclusive
    both = (value - s_lo, value + s_hi)
    exact = criterion_status(value, both, required, comparison, sampling=both, timing=(value, value))
    clears = (value - s_lo >= required - 1e-12) if comparison == ">=" else (value + s_hi <= required + 1e-12)
    assert exact == (PASS if clears else FAIL)


@pytest.mark.parametrize(
    ("combined", "sampling", "timing", "required", "expected"),
    [
        ((2.2, 2.8), (2.4, 2.6), (2.3, 2.7), 2.0, "pass"),  # everything clears
        ((1.8, 3.2), (2.2, 2.8), (1.9, 3.1), 2.0, "inconclusive"),  # sampling clears, timing straddles
        ((1.0, 1.6), (1.2, 1.4), (1.1, 1.5), 2.0, "fail"),  # the whole interval below
        ((1.5, 3.5), (1.6, 3.4), (2.4, 2.6), 2.0, "fail"),  # sampling noise fails it; timing cannot rescue
        ((1.5, 3.5), (1.9, 3.1), (1.8, 3.2), 2.0, "inconclusive"),  # ... but here it could
    ],
)
def test_criterion_status_by_hand(combined, sampling, timing, required, expected) -> None:
    from dyncal.reports.decision import criterion_status

    assert criterion_status(2.5, combined, required, ">=", sampling=sampling, timing=timing) == expected
    # the mirror image for an upper bound
    mirror = tuple(-v for v in combined[::-1]), tuple(-v for v in sampling[::-1]), tuple(-v for v in timing[::-1])
    assert criterion_status(-2.5, mirror[0], -required, "<=", sampling=mirror[1], timing=mirror[2]) == expected


def test_decision_from_statuses() -> None:
    from dyncal.reports.decision import Criterion, decide

    def c(status: str) -> Criterion:
        return Criterion("speedup", 2.0, None, 1.0, ">=", status)

    assert decide([c("pass"), c("pass")]) == "GO"
    assert decide([c("pass"), c("inconclusive")]) == "INCONCLUSIVE"
    assert decide([c("inconclusive"), c("fail")]) == "NO-GO"
    assert Criterion.from_dict({**c("inconclusive").to_dict()}).status == "inconclusive"
    old = {k: v for k, v in c("fail").to_dict().items() if k != "status"}  # a document from before status
    assert Criterion.from_dict({**old, "passed": True}).status == "pass"


# --------------------------------------------------------------------------- verify as evidence


def _verify_result(run_path: Path, thresholds: dict, *, full: list[float], early: list[float], batches: int = 3, **kw):
    """A verify result for the run and thresholds: every batch times ``early``/``full`` (ms) as replicates."""
    from dyncal.artifacts.thresholds import decision_fingerprint
    from dyncal.artifacts.verify import ModelIdentity, PairedTiming, VerifyResult

    run = load_run(run_path)
    timing = PairedTiming(
        key="cpu/b1",
        batch_size=1,
        early_exit_ms=tuple(tuple(early) for _ in range(batches)),
        full_model_ms=tuple(tuple(full) for _ in range(batches)),
        predicted_ms=0.2,
        estimator=kw.get("estimator", "auto"),
    )
    return VerifyResult(
        run_fingerprint=kw.get("run_fingerprint", run.fingerprint),
        decision_fingerprint=kw.get(
            "decision_fingerprint",
            decision_fingerprint(thresholds["score"], thresholds["temperatures"], thresholds["thresholds"]),
        ),
        model=ModelIdentity("dyncal.demo:pretrained", kw.get("weights", "0" * 64)),
        n=run.n,
        agreement=1.0,
        exit_agreement=1.0,
        runtime_accuracy=0.98,
        simulated_accuracy=0.98,
        runtime_exit_shares=(0.25,) * 4,
        simulated_exit_shares=(0.25,) * 4,
        timings=(timing,),
        device="cpu",
        hardware="test CPU",
        threads=1,
    )


@pytest.fixture(scope="module")
def solved(demo_runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """thresholds.json solved on the latency run at 0.5x (what verify would have run)."""
    doc = solve_run(load_run(demo_runs["lat"]), "0.5x").to_dict()
    path = tmp_path_factory.mktemp("solved") / "thresholds.json"
    path.write_text(json.dumps(doc))
    return path, doc


_CRIT = ["--max-drop", "0.05", "--min-speedup", "2.5", "--device", "cpu", "--batch-size", "1"]


def test_a_matching_verify_result_decides_the_latency_criterion(
    demo_runs: dict[str, Path], solved: tuple[Path, dict], tmp_path: Path, cli
) -> None:
    th_path, th = solved
    # quiet machine: every replicate of a pair alike; the plain model 3x the early exit
    quiet = tmp_path / "quiet.json"
    _verify_result(demo_runs["lat"], th, full=[0.6] * 5, early=[0.2] * 5).save(quiet)
    out = tmp_path / "q.pdf"
    res = cli("report", demo_runs["lat"], "--thresholds", th_path, "--verify", quiet, "--out", out, *_CRIT, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    speed = doc["criteria"][1]
    assert (speed["source"], speed["status"], doc["decision"]) == ("measured", "pass", "GO")
    assert speed["value"] == pytest.approx(3.0) and doc["notes"] == []
    assert doc["latency"]["cpu/b1"]["full_model_ms"] == pytest.approx(0.6)
    assert doc["verify"]["source"] == str(quiet)
    assert "Measured by dyncal verify" in _flat(_pages_text(out)[2])
    # busy machine, same batch medians: replicates spread 3x wide. GO may become INCONCLUSIVE, never NO-GO
    # (judged by the ratio of medians: `auto` would read these plain runs' floor, 0.2 ms, as the clean time)
    busy = tmp_path / "busy.json"
    spread = [0.2, 0.4, 0.6, 0.8, 1.0]
    _verify_result(demo_runs["lat"], th, full=spread, early=[0.2] * 5, estimator="median-ratio").save(busy)
    out = tmp_path / "b.pdf"
    res = cli("report", demo_runs["lat"], "--thresholds", th_path, "--verify", busy, "--out", out, *_CRIT, "--json")
    doc = json.loads(res.stdout)
    speed = doc["criteria"][1]
    assert speed["value"] == pytest.approx(3.0) and speed["status"] == "inconclusive"
    assert doc["decision"] == "INCONCLUSIVE"
    assert speed["interval_sampling"] == pytest.approx([3.0, 3.0])  # the batches agree; only timing is noisy
    assert speed["interval"][0] < 2.5 < speed["interval"][1]
    first = _flat(_pages_text(out)[0])
    assert "INCONCLUSIVE" in first and "NO-GO" not in first and "Timing noise alone decides" in first
    assert "--threads 1" in first and "--repeats" in first and "timing spread" in first
    res = cli(
        "report", demo_runs["lat"], "--thresholds", th_path, "--verify", busy, "--out", out, *_CRIT, "--overwrite"
    )
    assert "decision: INCONCLUSIVE" in res.stdout and "--threads 1" in res.stdout and "timing spread" in res.stdout
    assert "speedup (cpu/b1, measured)" in res.stdout and ": INCONCLUSIVE" in res.stdout


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"decision_fingerprint": "f" * 64}, "it was measured with other thresholds"),
        ({"run_fingerprint": "e" * 64}, "it was measured on another run"),
        ({"weights": "a" * 64}, "it was measured with other weights"),
    ],
)
def test_a_verify_result_for_something_else_is_ignored_with_a_note(
    demo_runs: dict[str, Path], solved: tuple[Path, dict], tmp_path: Path, cli, change: dict, why: str
) -> None:
    th_path, th = solved
    other = tmp_path / "verify.json"
    _verify_result(demo_runs["lat"], th, full=[6.0] * 5, early=[0.2] * 5, **change).save(other)
    out = tmp_path / "r.pdf"
    res = cli("report", demo_runs["lat"], "--thresholds", th_path, "--verify", other, "--out", out, *_CRIT, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["verify"] is None and doc["criteria"][1]["source"] == "predicted"
    assert doc["latency"]["cpu/b1"]["full_model_ms"] != pytest.approx(6.0)  # none of its numbers is used
    assert len(doc["notes"]) == 1 and why in doc["notes"][0] and "ignored" in doc["notes"][0]
    assert why in _flat(_pages_text(out)[0]) and "Measured by dyncal verify" not in _flat(_pages_text(out)[2])
    res = cli(
        "report", demo_runs["lat"], "--thresholds", th_path, "--verify", other, "--out", out, *_CRIT, "--overwrite"
    )
    assert f"note: verify result '{other}' ignored: {why}" in res.stdout


def test_a_broken_verify_file_is_an_error(demo_runs: dict[str, Path], solved: tuple[Path, dict], tmp_path: Path, cli):
    bad = tmp_path / "verify.json"
    bad.write_text(json.dumps({"schema": "dyncal.verify", "schema_version": 1}))
    out = tmp_path / "r.pdf"
    res = cli("report", demo_runs["lat"], "--thresholds", solved[0], "--verify", bad, "--out", out)
    assert_clean_error(res, r"is not a valid verify result: .*run 'dyncal verify \.\.\. --out' again")
    assert_clean_error(
        cli("report", demo_runs["lat"], "--verify", tmp_path / "none.json", "--out", out), r"no verify result at"
    )
    assert not out.exists()


def test_the_full_model_latency_is_one_figure_everywhere(
    demo_runs: dict[str, Path], solved: tuple[Path, dict], tmp_path: Path, cli
) -> None:
    """Pages 1, 3 and 4, the JSON and the terminal print the same full-model ms per device and batch size."""
    import re

    from dyncal.reports.figures import format_ms

    th_path, th = solved
    verify = tmp_path / "verify.json"
    _verify_result(demo_runs["lat"], th, full=[0.61, 0.62, 0.63], early=[0.2] * 3).save(verify)
    for extra in ([], ["--verify", str(verify)]):  # predicted (profile) and measured (verify)
        out = tmp_path / f"r{len(extra)}.pdf"
        args = ["report", demo_runs["lat"], "--thresholds", th_path, *extra, "--out", out, *_CRIT]
        res = cli(*args, "--json")
        assert res.exit_code == 0, res.output
        doc = json.loads(res.stdout)
        figures = {k: format_ms(v) for k, v in doc["full_model_ms"].items()}
        run = load_run(demo_runs["lat"])
        expected_b1 = 0.62 if extra else run.costs.latency["cpu/b1"].full_model_median_ms
        assert doc["full_model_ms"]["cpu/b1"] == pytest.approx(expected_b1)
        assert doc["full_model_ms"]["cpu/b32"] == pytest.approx(run.costs.latency["cpu/b32"].full_model_median_ms)
        assert {k: v["full_model_ms"] for k, v in doc["latency"].items()} == doc["full_model_ms"]
        pages = [_flat(t) for t in _pages_text(out)]
        for number in (0, 2):
            assert all(f in pages[number] for f in figures.values()), number
        assert figures["cpu/b1"] in pages[3]
        printed = [m for page in pages for m in re.findall(r"full model (\d[\d.]*) ms", page)]
        assert len(printed) >= 5 and set(printed) <= {f.removesuffix(" ms") for f in figures.values()}
        terminal = cli(*args, "--overwrite").stdout
        found = re.findall(r"full model (\d[\d.]*) ms", terminal)
        assert sorted(found) == sorted(f.removesuffix(" ms") for f in figures.values())


# --------------------------------------------------------------------------- --thresholds


def test_report_the_thresholds_a_team_chose(demo_runs: dict[str, Path], tmp_path: Path, cli) -> None:
    th = tmp_path / "t.json"
    res = cli("solve", demo_runs["lat"], "--budget", "0.3x", "--holdout", "0.3", "--seed", "2", "--out", th, "--json")
    assert res.exit_code == 0, res.output
    solved_doc = json.loads(res.stdout)
    out = tmp_path / "r.pdf"
    res = cli("report", demo_runs["lat"], "--thresholds", th, "--min-accuracy", "0.9", "--out", out, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    # held-out numbers on the document's own split: what solve printed
    assert doc["held_out"]["accuracy"] == solved_doc["holdout_accuracy"]
    assert doc["held_out"]["accuracy_ci"] == solved_doc["holdout_ci"]
    assert doc["held_out"]["n"] == solved_doc["split"]["n_holdout"]
    assert doc["held_out"]["exit_shares"] == pytest.approx(solved_doc["holdout"]["exit_shares"])
    assert doc["held_out"]["expected_macs"] == pytest.approx(solved_doc["holdout"]["expected_macs"])
    assert doc["operating_point"]["thresholds"] == solved_doc["thresholds"] and doc["notes"] == []
    assert doc["criteria"][0]["value"] == solved_doc["holdout_accuracy"]
    assert f"--thresholds {th}" in _flat(_pages_text(out)[5])


def test_thresholds_options_that_contradict_it_are_errors(
    demo_runs: dict[str, Path], solved: tuple[Path, dict], tmp_path: Path, cli
) -> None:
    th_path, th = solved
    out = tmp_path / "r.pdf"
    for args, pattern in (
        (["--budget", "0.5x"], r"give --budget or --thresholds, not both"),
        (["--seed", "3"], r"--thresholds fixes the method, temperatures and held-out split; leave out --seed"),
        (["--method", "optimal"], r"leave out --method"),
    ):
        assert_clean_error(cli("report", demo_runs["lat"], "--thresholds", th_path, *args, "--out", out), pattern)
    other = dict(th, run_fingerprint="d" * 64)
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert_clean_error(
        cli("report", demo_runs["lat"], "--thresholds", tmp_path / "other.json", "--out", out),
        r"the thresholds were solved on another run",
    )
    assert not out.exists()


# --------------------------------------------------------------------------- one set of numbers


def test_one_operating_point_one_set_of_numbers(go_report: tuple[Path, dict], demo_runs: dict[str, Path], cli) -> None:
    path, doc = go_report
    held = doc["held_out"]
    pages = [_flat(t) for t in _pages_text(path)]
    acc = f"{100 * held['accuracy']:.2f}%"
    shares = [f"{100 * s:.1f}%" for s in held["exit_shares"]]
    # page 1: accuracy, shares and the MACs on the held-out half
    assert f"right on {acc} of {held['n']} held-out samples" in pages[0]
    assert ", ".join(shares) + " (held out)" in pages[0]
    # page 2: the deployed row is the operating point
    assert re.search(rf"{DEFAULT_METHOD} \(deployed\) {re.escape(acc)}", pages[1])
    # page 4: the same shares and accuracy
    assert all(f"{s} leave" in pages[3] for s in shares) and f"Overall: {acc} right" in pages[3]
    # terminal
    res = cli(
        "report",
        demo_runs["lat"],
        "--out",
        path,
        "--min-accuracy",
        "0.9",
        "--min-speedup",
        "3",
        "--device",
        "cpu",
        "--overwrite",
    )
    assert f"accuracy {acc}" in res.stdout and "exit shares " + ", ".join(shares) in res.stdout


def test_failure_text_says_the_estimate_itself_fails() -> None:
    from dyncal.reports.decision import Criterion
    from dyncal.reports.text import failure_text

    below = Criterion("speedup", 1.92, (1.86, 1.98), 2.0, ">=", "fail", cost="cpu/b1", source="predicted")
    assert failure_text(below) == "speed-up (latency, cpu/b1), predicted is 1.92×, needs ≥ 2.00×"
    above = Criterion("speedup", 2.1, (1.9, 2.3), 2.0, ">=", "fail", cost="macs")
    assert "is 2.10× but its 95% interval reaches down to 1.90×, needs ≥ 2.00×" in failure_text(above)


def test_plot_says_which_budget_it_marks(demo_runs: dict[str, Path], tmp_path: Path, cli) -> None:
    from dyncal.reports.choice import BudgetSource
    from dyncal.reports.data import prepare_report
    from dyncal.reports.operating import ReportOptions, choose_operating_point

    chosen = prepare_report(demo_runs["plain"])
    assert chosen.budget_source is BudgetSource.CHOSEN
    label = " ".join(chosen.legend_label().split())
    assert "the cheapest within 1.0 percentage point of the last exit" in label and "--budget" in label
    asked = prepare_report(demo_runs["plain"], budget="0.2x")
    assert asked.budget_source is BudgetSource.ASKED and asked.legend_label() == "operating point (budget 0.2x)"
    assert "within 1 percentage point of the last exit" in " ".join(cli("plot", "-h").stdout.split())
    th = tmp_path / "team.json"
    assert cli("solve", demo_runs["plain"], "--budget", "0.2x", "--out", th).exit_code == 0
    read = choose_operating_point(demo_runs["plain"], ReportOptions(thresholds=th), frontier=False)
    assert read.budget_source is BudgetSource.THRESHOLDS and read.frontier is None
    assert read.legend_label().startswith("operating point (team.json, budget ")
    # the source decides, not the prose: a reason that reads "asked" does not make a chosen budget asked
    reworded = dataclasses.replace(chosen, budget_reason="asked for nothing")
    assert reworded.legend_label() == chosen.legend_label()


def test_exit_figure_has_one_scale_per_panel_and_room_above_100_percent() -> None:
    from dyncal.reports.figures_exits import plot_exits

    fig = plot_exits([0.0, 1.0], [np.nan, 1.0], counts=[0, 10], exit_accuracy=[0.5, 1.0])
    shares, accuracy = fig.axes[:2]
    assert shares.get_ylabel() == "share of samples leaving" and accuracy.get_ylabel() == "accuracy"
    assert accuracy.get_ylim()[1] > 1.0 and shares.get_ylim()[1] > 1.0  # markers and bars at 100% stay whole
    assert max(accuracy.get_yticks()) <= 1.0 and max(shares.get_yticks()) <= 1.0  # no tick above 100%
    assert "no samples" in " ".join(t.get_text() for t in shares.texts)


def test_the_operating_point_star_does_not_cover_an_exit_label() -> None:
    from matplotlib.figure import Figure

    from dyncal.reports.figures import _label_offset

    ax = Figure(figsize=(6, 4)).add_subplot()
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 1)
    to_points = 72.0 / ax.figure.dpi
    square = (5.0, 0.5)
    for star_offset in ((15, -7), (15, 8), (-15, 8), (0, 0)):
        # the star where the label would go by default
        xy = ax.transData.inverted().transform(ax.transData.transform(square) + np.array(star_offset) / to_points)
        (ox, oy), ha = _label_offset(ax, square, tuple(xy))
        x0, x1 = (ox, ox + 30) if ha == "left" else (ox - 30, ox)
        if star_offset != (0, 0):
            assert not (x0 - 8 <= star_offset[0] <= x1 + 8 and oy - 8 <= star_offset[1] <= oy + 17)
    assert _label_offset(ax, square, None) == ((4, -11), "left")


def test_report_options_are_one_object_or_keywords_never_a_typo(demo_runs, tmp_path):
    from dyncal.reports.data import prepare_report
    from dyncal.reports.operating import ReportOptions
    from dyncal.reports.pdf import build_report

    with pytest.raises(DyncalError, match="no report option 'max_dorp'; report options are: batch_size"):
        build_report(demo_runs["plain"], tmp_path / "r.pdf", max_dorp=0.01)
    with pytest.raises(DyncalError, match="not both"):
        prepare_report(demo_runs["plain"], ReportOptions(budget="0.2x"), budget="0.3x")
    by_object = prepare_report(demo_runs["plain"], ReportOptions(budget="0.2x", min_accuracy=0.9))
    by_keywords = prepare_report(demo_runs["plain"], budget="0.2x", min_accuracy=0.9)
    assert by_object.decision == by_keywords.decision and by_object.thresholds == by_keywords.thresholds
    assert not (tmp_path / "r.pdf").exists()
