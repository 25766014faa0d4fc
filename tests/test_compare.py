"""``dyncal report --compare``: the demo early exit judged against static models on the same digits.

The runs are real: the demo model, its last exit alone, and a small CNN trained here, each
collected over the demo's 797 validation digits and counted by fvcore. Their latency tables
are synthetic (one fake CPU for all three), so every number the report shows is deterministic.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_clean_error
from hypothesis import given, settings
from hypothesis import strategies as st
from static_models import SMALL_CNN_MACS
from synthetic_profiles import spread_profile

from dyncal.artifacts.costs import LatencyProfile
from dyncal.artifacts.run import load_run, store_costs
from dyncal.artifacts.run_import import import_arrays

pypdf = pytest.importorskip("pypdf")
TESTS = Path(__file__).parent


def _profile(batch: int, stage_ms: list[float], full_ms: float) -> LatencyProfile:
    """A fake CPU's profile: replicates spread ±2% around the given medians, ms per batch."""
    return spread_profile(
        batch, stage_ms, decision_ms=0.01, full_model_ms=full_ms, reps=9, spread=0.02, scale=batch**0.5
    )


def _with_latency(path: Path, stage_ms: list[float], full_ms: float) -> None:
    run = load_run(path)
    costs = run.costs
    assert costs is not None and costs.macs is not None
    latency = {f"cpu/b{b}": _profile(b, stage_ms, full_ms) for b in (1, 32)}
    store_costs(run, dataclasses.replace(costs, latency=latency))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo (early exit), its last exit alone and a small CNN: collected, MACs counted, fake latency."""
    from typer.testing import CliRunner

    from dyncal.cli import app

    root = tmp_path_factory.mktemp("compare")
    models = {
        "demo": "dyncal.demo:pretrained",
        "last-exit": "static_models:demo_last_exit",
        "small-cnn": "static_models:small_digits_cnn",
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: more threads only wait for each other on a busy machine
    try:
        for name, model in models.items():
            out = root / name
            args = ["collect", "--model", model, "--model-path", TESTS, "--data", "dyncal.demo:validation", "-q"]
            res = CliRunner().invoke(app, [str(a) for a in [*args, "--out", out]])
            assert res.exit_code == 0, res.output
            res = CliRunner().invoke(app, ["profile", str(out), "--macs-only"])
            assert res.exit_code == 0, res.output
    finally:
        torch.set_num_threads(threads)
    _with_latency(root / "demo", [0.02, 0.05, 0.12, 0.3], 0.5)
    _with_latency(root / "last-exit", [0.48], 0.48)
    _with_latency(root / "small-cnn", [0.015], 0.015)
    return {name: root / name for name in models}


@pytest.fixture(scope="module")
def compared(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    """The report comparing the demo with both static models, by the CLI: PDF, --json, terminal summary."""
    from typer.testing import CliRunner

    from dyncal.cli import app

    out = tmp_path_factory.mktemp("report") / "report.pdf"
    args = ["report", runs["demo"], "--max-drop", "0.02", "--device", "cpu", "--batch-size", "1"]
    args += ["--compare", f"{runs['last-exit']},{runs['small-cnn']}", "--out", out]
    res = CliRunner().invoke(app, [str(a) for a in [*args, "--json"]])
    assert res.exit_code == 0, res.output
    human = CliRunner().invoke(app, [str(a) for a in [*args, "--overwrite"]])
    assert human.exit_code == 0, human.output
    return out, json.loads(res.stdout), human.stdout


def _pages(path: Path) -> list[str]:
    return [" ".join(p.extract_text().split()) for p in pypdf.PdfReader(str(path)).pages]


# --------------------------------------------------------------------------- the comparison


def test_static_alternatives_are_in_the_json(compared: tuple[Path, dict, str], runs: dict[str, Path]) -> None:
    _, doc, _ = compared
    alts = {a["name"]: a for a in doc["alternatives"]}
    assert list(alts) == ["last-exit", "small-cnn"]
    for a in alts.values():
        assert {"name", "accuracy", "ci", "macs", "latency_ms", "paired", "dominates"} <= set(a)
        assert a["kind"] == "static" and a["paired"] and a["n"] == doc["held_out"]["n"]
        lo, hi = a["ci"]
        assert lo <= a["accuracy"] <= hi
        assert set(a["latency_ms"]) == {"cpu/b1", "cpu/b32"}
        assert a["cost"] == "cpu/b1"  # the report judges speed on cpu/b1, and both were profiled there
    last, small = alts["last-exit"], alts["small-cnn"]
    # paired on the held-out digits: the demo's exit 4 alone is exactly the report's last exit there
    assert last["accuracy"] == doc["held_out"]["last_exit_accuracy"]
    drop = next(c for c in doc["criteria"] if c["name"] == "accuracy_drop")
    assert last["accuracy_difference"] == pytest.approx(drop["value"])
    assert last["accuracy_difference_ci"] == pytest.approx(drop["interval"])  # same per-sample differences
    # fvcore's counts: exit 4 less heads 1-3 (linear 40*c_in + adaptive pooling c_in*h*w each), which it skips
    demo_macs = load_run(runs["demo"]).costs.macs
    assert last["macs"] == demo_macs[-1] - (320 + 512) - (1280 + 2048) - (3840 + 1536)
    assert small["macs"] == SMALL_CNN_MACS
    assert last["latency_ms"]["cpu/b1"] == pytest.approx(0.48)
    assert not last["cheaper"] and not last["dominates"]  # the whole model costs more than the early exit
    assert small["cheaper"] and small["accuracy"] < doc["held_out"]["accuracy"]
    assert doc["decision"] == "GO" and not any(a["dominates"] for a in alts.values())


def test_alternatives_on_pages_one_to_three_and_their_own_page(compared: tuple[Path, dict, str]) -> None:
    path, doc, _ = compared
    pages = _pages(path)
    assert len(pages) == 7 and [p["title"] for p in doc["pages"]][-1] == "Against other models"
    assert "page 1 of 7" in pages[0] and "page 7 of 7" in pages[6]
    assert "Against other models (page 7): At the operating point's cost" in pages[0]
    assert "the operating point's accuracy (" in pages[0]
    for page in pages[1:3]:  # the legends of the accuracy-vs-MACs and -latency figures
        assert "last-exit (static)" in page and "small-cnn (static)" in page
    table = pages[6]
    assert "last-exit (static)" in table and "small-cnn (static)" in table
    assert "costlier" in table and "cheaper" in table
    small = next(a for a in doc["alternatives"] if a["name"] == "small-cnn")
    assert f"{100 * small['accuracy']:.2f}%" in table
    assert "Paired (last-exit, small-cnn)" in table


def test_the_terminal_summary_lists_the_alternatives(compared: tuple[Path, dict, str]) -> None:
    _, doc, human = compared
    assert "decision: GO" in human
    for a in doc["alternatives"]:
        assert f"vs {a['name']} (static, paired): accuracy {100 * a['accuracy']:.2f}%" in human


def test_the_at_cost_and_at_accuracy_sentences_name_the_right_models(compared: tuple[Path, dict, str]) -> None:
    path, doc, _ = compared
    page1 = _pages(path)[0]
    alts = {a["name"]: a for a in doc["alternatives"]}
    # only the small CNN runs within the early exit's cpu/b1 time; only the whole model is at least as accurate
    assert "the most accurate alternative is small-cnn" in page1
    if alts["last-exit"]["accuracy"] >= doc["held_out"]["accuracy"]:
        assert "the cheapest alternative is last-exit" in page1
    else:
        assert "No alternative reaches the operating point's accuracy" in page1


def test_without_compare_the_report_is_unchanged(runs: dict[str, Path], tmp_path: Path, cli) -> None:
    res = cli("report", runs["demo"], "--out", tmp_path / "r.pdf", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert "alternatives" not in doc and len(doc["pages"]) == 6
    assert "page 1 of 6" in _pages(tmp_path / "r.pdf")[0]


# --------------------------------------------------------------------------- NO-GO


def _static_run(runs: dict[str, Path], out: Path, *, right: bool, macs: float, keep: slice = slice(None)) -> Path:
    """A static run on the demo's digits: always right (one-hot logits) or the demo's exit 1."""
    demo = load_run(runs["demo"])
    labels = np.asarray(demo.labels)[keep]
    logits = (np.eye(demo.c)[labels] * 5.0) if right else np.asarray(demo.logits[keep, 0])
    indices = np.asarray(demo.indices)[keep]
    return import_arrays(logits[:, None, :].astype(np.float32), labels, out, macs=[macs], indices=indices).path


def test_a_static_model_as_accurate_and_cheaper_makes_it_no_go(runs: dict[str, Path], tmp_path: Path, cli) -> None:
    perfect = _static_run(runs, tmp_path / "perfect", right=True, macs=1e4)
    out = tmp_path / "r.pdf"
    res = cli("report", runs["demo"], "--min-accuracy", "0.9", "--compare", perfect, "--out", out, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert all(c["status"] == "pass" for c in doc["criteria"])  # the early exit meets the criterion ...
    assert doc["decision"] == "NO-GO"  # ... but a static model is as accurate and cheaper
    (alt,) = doc["alternatives"]
    assert alt["dominates"] and alt["accuracy"] == 1.0 and alt["cost"] == "macs"
    assert alt["accuracy_difference_ci"][0] > 0
    page1 = _pages(out)[0]
    assert page1.startswith(page1[: page1.index("NO-GO")]) and "NO-GO" in page1
    assert "A static model is as accurate and faster: NO-GO for early exit (perfect: 100.00%" in page1
    assert "Every criterion is met on its own." in page1
    assert "A static model is as accurate and faster: NO-GO for early exit." in _pages(out)[6]
    human = cli("report", runs["demo"], "--min-accuracy", "0.9", "--compare", perfect, "--out", out, "--overwrite")
    assert "decision: NO-GO (a static model is as accurate and faster)" in human.stdout
    assert "as accurate and cheaper" in human.stdout


def test_without_criteria_a_dominating_static_model_is_the_trade_off(
    runs: dict[str, Path], tmp_path: Path, cli
) -> None:
    perfect = _static_run(runs, tmp_path / "perfect", right=True, macs=1e4)
    out = tmp_path / "r.pdf"
    res = cli("report", runs["demo"], "--compare", perfect, "--out", out, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["decision"] is None and doc["alternatives"][0]["dominates"]
    page1 = _pages(out)[0]
    assert "NO DECISION" in page1
    assert "A static model is as accurate and faster (perfect" in page1
    assert "early exit does not pay off against it" in page1


def test_a_more_accurate_but_costlier_static_model_does_not_decide(runs: dict[str, Path], tmp_path: Path, cli) -> None:
    costly = _static_run(runs, tmp_path / "costly", right=True, macs=5e7)
    res = cli(
        "report", runs["demo"], "--min-accuracy", "0.9", "--compare", costly, "--out", tmp_path / "r.pdf", "--json"
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    (alt,) = doc["alternatives"]
    assert alt["accuracy_difference_ci"][0] > 0 and not alt["cheaper"] and not alt["dominates"]
    assert doc["decision"] == "GO"


def test_a_static_model_cheaper_only_at_the_judged_batch_size_makes_it_no_go(
    runs: dict[str, Path], tmp_path: Path, cli
) -> None:
    # issue 17: more accurate, dearer in MACs and at cpu/b1, cheaper per batch at cpu/b32 where it is judged
    static = _static_run(runs, tmp_path / "batched", right=True, macs=5e7)
    opened = load_run(static)
    latency = {"cpu/b1": _profile(1, [2.0], 2.0), "cpu/b32": _profile(32, [0.01], 0.01)}
    store_costs(opened, dataclasses.replace(opened.costs, latency=latency))
    out = tmp_path / "r.pdf"
    common = ["--min-accuracy", "0.9", "--device", "cpu", "--compare", static, "--out", out, "--json"]
    res = cli("report", runs["demo"], "--batch-size", "32", *common)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    (alt,) = doc["alternatives"]
    assert alt["cost"] == "cpu/b32" and alt["cheaper"] and alt["dominates"]
    assert alt["cheaper_on"] == {"macs": False, "cpu/b1": False, "cpu/b32": True}  # the other units: context
    assert all(c["status"] == "pass" for c in doc["criteria"]) and doc["decision"] == "NO-GO"
    human = cli("report", runs["demo"], "--batch-size", "32", *common[:-1], "--overwrite")
    assert "decision: NO-GO (a static model is as accurate and faster)" in human.stdout
    assert "judged on cpu/b32; context: costlier in MACs, costlier on cpu/b1" in human.stdout
    # judged at batch size 1 the same model is dearer: early exit stands
    res = cli("report", runs["demo"], "--batch-size", "1", *common, "--overwrite")
    doc = json.loads(res.stdout)
    (alt,) = doc["alternatives"]
    assert alt["cost"] == "cpu/b1" and not alt["cheaper"] and not alt["dominates"]
    assert alt["cheaper_on"]["cpu/b32"] and doc["decision"] == "GO"


# --------------------------------------------------------------------------- pairing


def test_a_run_on_other_samples_is_compared_unpaired(runs: dict[str, Path], tmp_path: Path, cli) -> None:
    part = _static_run(runs, tmp_path / "part", right=False, macs=1e4, keep=slice(0, 300))
    out = tmp_path / "r.pdf"
    res = cli("report", runs["demo"], "--compare", part, "--out", out, "--json")
    assert res.exit_code == 0, res.output
    (alt,) = json.loads(res.stdout)["alternatives"]
    demo = load_run(runs["demo"])
    want = float(np.mean(np.asarray(demo.logits[:300, 0]).argmax(1) == np.asarray(demo.labels)[:300]))
    assert not alt["paired"] and alt["n"] == 300 and alt["accuracy"] == pytest.approx(want)
    assert "unpaired" in alt["note"]
    text = _pages(out)[6]
    assert "part (static)*" in text and "Unpaired (part)" in text


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_pairing_does_not_depend_on_row_order(seed: int, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The same static model with its rows shuffled is judged on the same samples, with the same numbers."""
    from dyncal.reports.data import prepare_report

    rng = np.random.default_rng(seed)
    n, c = 80, 3
    labels = rng.integers(0, c, n)
    main_logits = rng.normal(size=(n, 2, c)) + np.eye(c)[labels][:, None, :] * [[1.0], [2.5]]
    static = rng.normal(size=(n, 1, c)) + np.eye(c)[labels][:, None, :] * 1.5
    root = tmp_path_factory.mktemp("order")
    main = import_arrays(main_logits, labels, root / "main", macs=[1e6, 4e6]).path
    a = import_arrays(static, labels, root / "a", macs=[2e6]).path
    perm = rng.permutation(n)
    b = import_arrays(static[perm], labels[perm], root / "b", macs=[2e6], indices=perm).path
    first, second = prepare_report(main, budget="0.5x", compare=[a, b]).alternatives
    assert first.paired and second.paired
    assert (first.accuracy, first.difference, first.difference_ci) == (
        second.accuracy,
        second.difference,
        second.difference_ci,
    )


def test_an_early_exit_alternative_is_a_curve_judged_at_the_same_cost(
    runs: dict[str, Path], tmp_path: Path, cli
) -> None:
    demo = load_run(runs["demo"])
    # the demo without its first exit: another early-exit model on the same digits
    three = import_arrays(
        np.asarray(demo.logits[:, 1:]), np.asarray(demo.labels), tmp_path / "three-exit", macs=list(demo.costs.macs[1:])
    ).path
    out = tmp_path / "r.pdf"
    res = cli("report", runs["demo"], "--budget", "0.3x", "--compare", three, "--out", out, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    (alt,) = doc["alternatives"]
    assert alt["kind"] == "early exit" and alt["k"] == 3 and alt["paired"] and alt["n"] == doc["held_out"]["n"]
    assert alt["at_operating_point_cost"] and alt["cost"] == "macs"
    # solved at the operating point's MACs on its fitting rows: within that budget there too
    assert alt["macs"] <= 1.1 * doc["held_out"]["expected_macs"]
    assert "three-exit (early exit)" in _pages(out)[1]


# --------------------------------------------------------------------------- refused


def test_runs_of_other_data_are_refused(runs: dict[str, Path], tmp_path: Path, cli) -> None:
    from dyncal.calibrate.prepare import prepare_run

    demo = load_run(runs["demo"])
    labels = (np.asarray(demo.labels) + 1) % demo.c  # the same dataset indices, other labels
    other = import_arrays(np.asarray(demo.logits[:, -1:]), labels, tmp_path / "other", macs=[1e4]).path
    three = import_arrays(np.zeros((5, 1, 3), np.float32), [0, 1, 2, 0, 1], tmp_path / "three", macs=[1e4]).path
    no_cost = import_arrays(np.asarray(demo.logits[:, -1:]), np.asarray(demo.labels), tmp_path / "nocost").path
    held = prepare_run(demo).holdout_idx  # the rows the report judges on (its default split)
    only_held = import_arrays(
        np.asarray(demo.logits[held][:, :2]),
        np.asarray(demo.labels)[held],
        tmp_path / "only-held",
        macs=list(demo.costs.macs[:2]),
        indices=np.asarray(demo.indices)[held],
    ).path
    out = tmp_path / "r.pdf"
    for alt, pattern in (
        (other, r"--compare: run '.*other' labels 797 of the 797 samples both runs hold differently"),
        (three, r"--compare: run '.*three' has C=3 classes and run '.*demo' C=10"),
        (no_cost, r"--compare: run\(s\) .*nocost share no cost with run"),
        (",".join([str(other)] * 7), r"--compare takes at most 6 runs"),
        (only_held, r"--compare: early-exit run '.*only-held' holds only the 399 samples .* none to fit"),
        (runs["demo"], r"--compare '.*demo' holds the same rows as '.*demo' \(the same run, or a copy\)"),
        (f"{runs['small-cnn']},{runs['small-cnn']}", r"holds the same rows as '.*small-cnn'"),
    ):
        before = sorted(p.name for p in tmp_path.iterdir())
        assert_clean_error(cli("report", runs["demo"], "--compare", alt, "--out", out), pattern)
        assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_the_report_may_not_be_written_into_a_compared_run(runs: dict[str, Path], cli) -> None:
    target = runs["small-cnn"] / "report.pdf"
    res = cli("report", runs["demo"], "--compare", runs["small-cnn"], "--out", target)
    assert_clean_error(res, "small-cnn")
    assert not target.exists()


def test_plot_draws_the_compared_runs_as_the_report_does(runs: dict[str, Path], tmp_path: Path, cli) -> None:
    """``plot --compare`` puts the other runs on the frontier and latency figures; other kinds refuse it."""
    alone, compared = tmp_path / "alone.svg", tmp_path / "compared.svg"
    assert cli("plot", runs["demo"], "--kind", "frontier", "--out", alone).exit_code == 0
    others = f"{runs['last-exit']},{runs['small-cnn']}"
    res = cli("plot", runs["demo"], "--kind", "frontier", "--out", compared, "--compare", others)
    assert res.exit_code == 0, res.output
    drawn = compared.read_text()
    assert "last-exit (static)" in drawn and "small-cnn (static)" in drawn
    assert "(static)" not in alone.read_text().replace("single exit (static)", "")
    latency = tmp_path / "latency.svg"
    res = cli("plot", runs["demo"], "--kind", "latency", "--out", latency, "--compare", runs["small-cnn"])
    assert res.exit_code == 0, res.output
    assert "small-cnn (static)" in latency.read_text()
    exits = tmp_path / "exits.svg"
    res = cli("plot", runs["demo"], "--kind", "exits", "--out", exits, "--compare", runs["small-cnn"])
    assert_clean_error(res, r"--compare draws on the frontier and latency figures, not on --kind exits")
    assert not exits.exists()
    target = runs["small-cnn"] / "f.svg"
    assert_clean_error(cli("plot", runs["demo"], "--kind", "frontier", "--out", target, "--compare", others), "")
    assert not target.exists()
