"""Issue 17: one latency per (device, batch, what), in every verb and the report.

A real run file with a synthetic profile (one fake CPU, batch sizes 1 and 8) whose exit paths
(the early-exit runner leaving at exit k: stages, decisions, bookkeeping) differ from its
stage medians summed, as a real profile's do. Every latency a verb prints for a key is checked
against the report's for the same thing: per exit, the full model, the operating point.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from synthetic_profiles import spread_profile
from typer.testing import CliRunner

from dyncal.artifacts.costs import CostTable, LatencyProfile
from dyncal.artifacts.run import load_run, store_costs
from dyncal.artifacts.run_import import import_arrays
from dyncal.cli import app
from dyncal.reports.figures import format_ms

pypdf = pytest.importorskip("pypdf")
N, K, C = 600, 3, 5
STAGES = (0.05, 0.10, 0.35)
PATHS = (0.20, 0.35, 0.80)  # exit paths: the stages plus decisions and the runner's bookkeeping
FULL = 0.70


def _profile(batch: int) -> LatencyProfile:
    return spread_profile(
        batch, STAGES, decision_ms=0.02, full_model_ms=FULL, reps=9, spread=0.02, scale=batch**0.5, exit_path_ms=PATHS
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, C, N)
    skill = np.array([1.0, 2.0, 3.0])
    logits = rng.normal(size=(N, K, C)) + skill[None, :, None] * np.eye(C)[labels][:, None, :]
    path = tmp_path_factory.mktemp("latency") / "run"
    opened = import_arrays(logits.astype(np.float32), labels, path, macs=[1e6, 3e6, 9e6])
    store_costs(opened, CostTable(macs=(1e6, 3e6, 9e6), latency={"cpu/b1": _profile(1), "cpu/b8": _profile(8)}))
    return path


@pytest.fixture(scope="module")
def reported(run: Path) -> dict[str, Any]:
    """Thresholds solved at 0.5x (``t.json``) and the report of them at cpu batch 1, built once for the file's tests.

    Keys: ``out`` (t.json), ``doc`` (solve's JSON), ``pdf`` and ``report`` (report's JSON).
    """
    runner = CliRunner()
    out = run.parent / "t.json"
    solved = runner.invoke(app, ["solve", str(run), "--budget", "0.5x", "--out", str(out), "--json"])
    assert solved.exit_code == 0, solved.output
    pdf = run.parent / "r.pdf"
    args = ["report", str(run), "--thresholds", str(out), "--device", "cpu", "--batch-size", "1", "--out", str(pdf)]
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    return {"out": out, "doc": json.loads(solved.stdout), "pdf": pdf, "report": json.loads(res.stdout)}


def test_every_verb_prints_the_reports_latency(run: Path, reported: dict[str, Any], tmp_path: Path, cli) -> None:
    costs = load_run(run).costs
    assert costs is not None
    info = json.loads(cli("info", run, "--json").stdout)
    out = tmp_path / "t.json"
    doc, pdf, report = reported["doc"], reported["pdf"], reported["report"]
    frontier = json.loads(cli("frontier", run, "--out", tmp_path / "f.csv", "--json").stdout)["rows"]
    pages = " ".join(" ".join(p.extract_text().split()) for p in pypdf.PdfReader(str(pdf)).pages)
    for key in ("cpu/b1", "cpu/b8"):
        prof = costs.latency[key]
        assert prof.early_exit_ms != pytest.approx(prof.exit_ms)  # the two "whats" really differ here
        per_exit = [e["latency_ms"][key] for e in info["exits"]]
        # per exit: info, solve's exits alone and the frontier's rows are the exit paths the report uses
        assert per_exit == prof.early_exit_ms
        assert [e["stage_sum_ms"][key] for e in info["exits"]] == prof.exit_ms  # named apart
        assert [s["ms"][key] for s in doc["static"]] == per_exit
        statics = sorted((r for r in frontier if r["method"] == "static"), key=lambda r: r["exit"])
        assert [r[f"ms:{key}"] for r in statics] == pytest.approx(per_exit, rel=1e-12)  # 15 digits in JSON
        # the full model: info's is the report's (no verify result), and says where it comes from
        assert info["full_model_ms"][key] == report["latency"][key]["full_model_ms"]
        assert info["full_model_source"][key].startswith("profiled: the unpartitioned model")
    # the operating point at batch 1: solve's held-out figure is the report's early exit
    assert doc["holdout"]["expected_ms"]["cpu/b1"] == pytest.approx(report["latency"]["cpu/b1"]["early_exit_ms"])
    # page 4's per-exit ms are info's figures
    assert all(format_ms(ms) in pages for ms in (e["latency_ms"]["cpu/b1"] for e in info["exits"]))
    text = " ".join(cli("info", run).stdout.split())
    assert "ms: a batch whose rows all leave at that exit (the exit path" in text
    assert f"cpu/b1: full model {info['full_model_ms']['cpu/b1']:.4g} ms (profiled" in text
    human = " ".join(cli("solve", run, "--budget", "0.5x", "--out", out, "--overwrite").stdout.split())
    assert "ms at batch size > 1: per batch, each sample at its own exit's path" in human


def test_the_plot_star_is_page_ones_figure_and_plot_draws_the_shipped_thresholds(
    run: Path, reported: dict[str, Any], tmp_path: Path, cli
):
    from dyncal.reports.operating import ReportOptions
    from dyncal.reports.pdf import _figure_at_operating_point

    out, report = reported["out"], reported["report"]
    for kind in ("latency", "frontier"):
        fig = _figure_at_operating_point(run, kind, ReportOptions(thresholds=str(out)))
        stars = [(ax.get_title(), line) for ax in fig.axes for line in ax.get_lines() if line.get_marker() == "*"]
        assert stars and all(line.get_label().startswith("operating point (t.json") for _, line in stars)
        for title, line in stars:
            assert line.get_ydata()[0] == pytest.approx(report["held_out"]["accuracy"])
            if kind == "frontier":
                assert line.get_xdata()[0] == pytest.approx(report["held_out"]["expected_macs"])
            else:
                key = "cpu/b1" if title.endswith("batch size 1") else "cpu/b8"
                assert line.get_xdata()[0] == pytest.approx(report["latency"][key]["early_exit_ms"])
    png = tmp_path / "l.png"
    res = cli("plot", run, "--kind", "latency", "--thresholds", out, "--out", png, "--dpi", "40")
    assert res.exit_code == 0, res.output
    assert png.stat().st_size > 0
    res = cli("plot", run, "--kind", "latency", "--thresholds", out, "--budget", "0.3x", "--out", png, "--overwrite")
    assert res.exit_code == 1 and "not both" in res.stderr
