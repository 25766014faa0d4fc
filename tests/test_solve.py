"""dyncal solve / frontier: exit rule, budgets, solvers, thresholds.json, CLI errors."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import assert_clean_error
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from synthetic_profiles import synthetic_profile

import dyncal.demo as demo
from dyncal.artifacts.costs import CostTable, LatencyProfile
from dyncal.artifacts.frontier import frontier_columns
from dyncal.artifacts.run import load_run, store_costs
from dyncal.artifacts.run_import import import_arrays
from dyncal.artifacts.thresholds import ThresholdsDocument, finite_thresholds
from dyncal.calibrate.budget import format_budget, parse_budget, resolve_budget
from dyncal.calibrate.frontier import compute_frontier, oracle_at_budget
from dyncal.calibrate.policy import assign_exits, evaluate_policy
from dyncal.calibrate.prepare import prepare_run
from dyncal.calibrate.problem import ExitProblem, geometric_thresholds
from dyncal.calibrate.risk import learn_then_test
from dyncal.calibrate.scores import exit_scores
from dyncal.calibrate.search import solve_path
from dyncal.calibrate.solvers import solve_run
from dyncal.calibrate.temperature import TemperatureScaler
from dyncal.choices import DEFAULT_METHOD, Method
from dyncal.errors import BudgetError, DyncalError
from dyncal.stats import mean_bootstrap_ci, stratified_split

DEMO_MACS = [1.0e5, 5.0e5, 2.0e6, 5.0e6]


@pytest.fixture(scope="module")
def demo_logits() -> tuple[np.ndarray, np.ndarray]:
    """Real logits: the demo 4-exit model over its 797 held-out digits."""
    ds = demo.validation()
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = np.array([int(ds[i][1]) for i in range(len(ds))])
    with torch.inference_mode():
        z = torch.stack(list(demo.pretrained()(x)), dim=1).numpy()
    return z, y


@pytest.fixture(scope="module")
def demo_run(demo_logits, tmp_path_factory):
    z, y = demo_logits
    return import_arrays(z, y, tmp_path_factory.mktemp("runs") / "demo", macs=DEMO_MACS)


# --------------------------------------------------------------------------- exit rule, budgets


def test_exit_rule_by_hand():
    s = np.array([[0.9, 0.5, 0.1], [0.2, 0.7, 0.3], [0.1, 0.1, 0.9], [0.8, 0.9, 0.9]])
    assert assign_exits(s, [0.8, 0.6]).tolist() == [0, 1, 2, 0]
    assert assign_exits(s, [0.8, 0.6, None]).tolist() == [0, 1, 2, 0]
    assert assign_exits(s, [np.inf, np.inf]).tolist() == [2, 2, 2, 2]
    ok = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0], [1, 1, 1]], bool)
    o = evaluate_policy(s, ok, [1.0, 2.0, 4.0], [0.8, 0.6])
    assert (o.accuracy, o.expected_cost, o.shares) == (0.75, 2.0, (0.5, 0.25, 0.25))
    assert finite_thresholds([np.inf, -np.inf], "entropy", 10) == [1.0, -math.log(10) - 1.0, None]


@pytest.mark.parametrize(
    "text,kind,value",
    [
        ("0.6x", "fraction", 0.6),
        ("1.2GMAC", "macs", 1.2e9),
        ("850MMAC", "macs", 8.5e8),
        ("35ms", "ms", 35.0),
        ("3e5MAC", "macs", 3e5),
        ("12 KMACs", "macs", 1.2e4),
    ],
)
def test_parse_budget(text, kind, value):
    b = parse_budget(text)
    assert (b.kind, b.value) == (kind, pytest.approx(value))


@pytest.mark.parametrize(
    "text,match",
    [
        ("fast", "cannot read"),
        ("0.6", "unknown unit"),
        ("-1x", "cannot read"),
        ("0x", "positive"),
        ("5QMAC", "unknown MAC prefix"),
    ],
)
def test_parse_budget_errors(text, match):
    with pytest.raises(BudgetError, match=match):
        parse_budget(text)


def test_budget_below_first_exit_names_cheapest():
    costs = CostTable(macs=(1e5, 4e5, 1e6))
    with pytest.raises(BudgetError, match=r"cheapest feasible budget is 0\.1x"):
        resolve_budget("0.05x", costs, 3)
    with pytest.raises(BudgetError, match=r"cheapest feasible budget is 100KMAC"):
        resolve_budget("50KMAC", costs, 3)
    assert resolve_budget("0.1x", costs, 3).value == pytest.approx(1e5)
    assert format_budget(0.123401, "fraction") == "0.1235x"
    with pytest.raises(DyncalError, match="run has no costs"):
        resolve_budget("0.5x", None, 3)
    with pytest.raises(BudgetError, match="needs measured latency"):
        resolve_budget("3ms", costs, 3)


# --------------------------------------------------------------------------- geometric baseline


def _geometric_reference(scores: np.ndarray, q: float) -> list[float]:
    """MSDNet's dynamic evaluation as published: loops over sorted samples."""
    n, k = scores.shape
    p = [q ** (i + 1) for i in range(k)]
    p = [v / sum(p) for v in p]
    filtered = [0] * n
    t = [1e8] * k
    for i in range(k - 1):
        order = sorted(range(n), key=lambda r: -scores[r, i])
        count, out_n = 0, math.floor(n * p[i])
        for r in order:
            if filtered[r] == 0:
                count += 1
                if count == out_n:
                    t[i] = float(scores[r, i])
                    break
        for r in range(n):
            if scores[r, i] >= t[i]:
                filtered[r] += 1
    return t[:-1]


@pytest.mark.parametrize("q", [0.05, 0.5, 1.0, 1.45, 1.95])
def test_geometric_matches_published_loop(q):
    rng = np.random.default_rng(int(q * 100))
    s = np.round(rng.uniform(size=(97, 4)), 2)  # ties on purpose
    ours = geometric_thresholds(s, q)
    ref = np.array(_geometric_reference(s, q))
    # same decisions on every fit sample; each threshold sits midway below the published
    # one (the quota's score), above the next lower score still present
    assert assign_exits(s, ours).tolist() == assign_exits(s, ref).tolist()
    assert np.all(np.where(np.isinf(ours), 1e8, ours) <= ref)


# --------------------------------------------------------------------------- solve_run, thresholds.json


def _reapply(doc: dict, run) -> tuple[float, float, float | None]:
    """Apply a thresholds document with the exit rule, from scratch."""
    s, p = exit_scores(run.logits, doc["score"], doc["temperatures"])
    ok = p == np.asarray(run.labels)[:, None]
    fit, held = stratified_split(np.asarray(run.labels), doc["split"]["holdout"], doc["split"]["seed"])
    t = np.array(doc["thresholds"][:-1], dtype=float)
    e = assign_exits(s[fit], t)
    acc = float(np.mean(ok[fit][np.arange(fit.size), e]))
    macs = float(np.dot(np.bincount(e, minlength=4) / e.size, run.costs.macs))  # share-weighted mean
    h = None
    if held.size:
        eh = assign_exits(s[held], t)
        h = float(np.mean(ok[held][np.arange(held.size), eh]))
    return acc, macs, h


@pytest.mark.parametrize(
    "budget,method,score,temperature,holdout",
    [
        ("0.15x", "smoothed", "maxprob", False, 0.5),
        ("0.3x", "optimal", "entropy", True, 0.5),
        ("0.5x", "geometric", "margin", False, 0.3),
        ("1.5MMAC", "optimal", "maxprob", False, 0.0),
    ],
)
def test_thresholds_json_reproduces_numbers(demo_run, budget, method, score, temperature, holdout, tmp_path):
    res = solve_run(demo_run, budget, method=method, score=score, temperature=temperature, holdout=holdout)
    path = tmp_path / "t.json"
    path.write_text(json.dumps(res.to_dict()))
    doc = json.loads(path.read_text())
    for key in (
        "schema_version",
        "score",
        "temperatures",
        "thresholds",
        "method",
        "budget",
        "expected_macs",
        "expected_ms",
        "calibration_accuracy",
        "holdout_accuracy",
        "holdout_ci",
        "exit_shares",
        "static",
    ):
        assert key in doc
    assert len(doc["thresholds"]) == 4 and doc["thresholds"][-1] is None
    assert doc["budget"]["met"] <= doc["budget"]["value"]
    acc, macs, held = _reapply(doc, demo_run)
    assert acc == doc["calibration_accuracy"]
    assert macs == doc["expected_macs"] == doc["budget"]["met"]
    assert held == doc["holdout_accuracy"]
    assert (doc["holdout_ci"] is None) == (holdout == 0)
    assert ThresholdsDocument.from_dict(doc).to_dict() == doc


def test_optimal_monotone_and_above_geometric_on_real_frontier(demo_run):
    df = compute_frontier(demo_run, n_budgets=15)
    assert list(df.columns) == frontier_columns(4, [])
    opt = df[df.method == "optimal"].sort_values("budget_fraction")
    geo = df[df.method == "geometric"].sort_values("budget_fraction")
    assert np.all(np.diff(opt.fitted_accuracy.to_numpy()) >= -1e-12)
    g = geo.fitted_accuracy.to_numpy()
    o = opt.fitted_accuracy.to_numpy()
    assert np.all(np.isnan(g) | (o >= g - 1e-12))
    assert np.all(opt.expected_fraction.to_numpy() <= opt.budget_fraction.to_numpy() + 1e-12)
    assert set(df.method) == {"optimal", "geometric", DEFAULT_METHOD, "oracle", "static"}
    assert df[df.method == "static"]["exit"].tolist() == [1, 2, 3, 4]
    orc = df[df.method == "oracle"]
    assert np.all(orc.fitted_accuracy.to_numpy() >= o - 1e-12)
    shares = df.loc[df.method == "optimal", [f"share_{j}" for j in range(1, 5)]].sum(axis=1)
    assert np.allclose(shares, 1.0)


def test_oracle_is_knapsack_optimal():
    ok = np.array([[0, 1, 1], [1, 1, 1], [0, 0, 1], [0, 0, 0]], bool)
    e = oracle_at_budget(ok, [1.0, 2.0, 5.0], 2.0)
    assert e.tolist() == [1, 0, 0, 0]
    assert oracle_at_budget(ok, [1.0, 2.0, 5.0], 5.0).tolist() == [1, 0, 2, 0]


def test_ms_budget_on_run_without_macs(demo_logits, tmp_path):
    z, y = demo_logits
    run = import_arrays(z, y, tmp_path / "lat")
    prof = synthetic_profile("cpu", 1, ((1.0,), (2.0,), (3.0,), (4.0,)), (0.1,), (10.0,), 1, "test cpu")
    store_costs(run, CostTable(latency={"cpu/b1": prof}, source="profile"))
    run = load_run(run.path)
    res = solve_run(run, "4ms", device="cpu", batch_size=1)
    assert res.expected_macs is None
    assert res.expected_ms["cpu/b1"] <= 4.0
    df = compute_frontier(run, n_budgets=5, methods=("geometric",))
    assert "ms:cpu/b1" in df.columns and df["budget_macs"].isna().all()
    with pytest.raises(BudgetError, match="no latency profiled for cuda/b8"):
        solve_run(run, "4ms", device="cuda", batch_size=8)


def test_temperature_scaler_minimises_nll(demo_logits):
    z, y = demo_logits
    ts = TemperatureScaler().fit(z, y)
    assert ts.temperatures_.shape == (4,)
    for j in range(4):
        zj = z[:, j].astype(np.float64)

        def nll(t, zj=zj):
            a = zj / t
            return float(
                np.mean(np.log(np.exp(a - a.max(1, keepdims=True)).sum(1)) + a.max(1) - a[np.arange(len(y)), y])
            )

        best = nll(ts.temperatures_[j])
        assert all(best <= nll(t) + 1e-6 for t in np.geomspace(0.1, 10, 41))


def test_split_and_bootstrap():
    y = np.repeat(np.arange(3), [10, 20, 30])
    fit, held = stratified_split(y, 0.5, seed=3)
    assert np.bincount(y[held]).tolist() == [5, 10, 15] and len(np.intersect1d(fit, held)) == 0
    lo, hi = mean_bootstrap_ci(np.array([1] * 80 + [0] * 20), seed=0)
    assert 0.7 < lo < 0.8 < hi < 0.9


def test_split_keeps_classes_too_small_to_split_in_the_fit_part(demo_logits, tmp_path, caplog, cli):
    # a singleton class (and one where round(0.2 * 2) == 0) go whole into the fit part
    y = np.array([0, 1, 1, 1, 1, 2, 2])
    with caplog.at_level("WARNING", logger="dyncal.stats"):
        fit, held = stratified_split(y, 0.2)
    assert y[held].tolist() == [1] and sorted(y[fit].tolist()) == [0, 1, 1, 1, 2, 2]
    assert "2 class(es) too small to split" in caplog.text and "0 (1), 2 (2)" in caplog.text
    assert fit.size == 6
    # holdout 0.5 with a singleton used to say "--holdout 0.5 is too small ... nearer 0.5"
    z, labels = demo_logits
    z11 = np.concatenate([z, np.full((*z.shape[:2], 1), -5.0, dtype=z.dtype)], axis=2)
    run = import_arrays(
        np.concatenate([z11, z11[:1]]),
        np.concatenate([labels, [10]]),
        tmp_path / "one",
        macs=DEMO_MACS,
    )
    res = solve_run(run, "0.5x")
    assert res.split["n_unsplit_classes"] == 1 and res.split["unsplit_classes"] == [10]
    assert res.split["n_calibration"] + res.split["n_holdout"] == run.n
    # a fraction so large that a class has nothing left to fit on says "too large"
    with pytest.raises(DyncalError, match=r"`holdout` 0.999 is too large: .* class 0"):
        stratified_split(np.repeat([0, 1], 5), 0.999)
    assert_clean_error(
        cli(
            "solve",
            run.path,
            "--budget",
            "0.5x",
            "--holdout",
            "0.999",
            "--out",
            tmp_path / "t.json",
        ),
        r"--holdout 0.999 is too large",
    )
    with pytest.raises(DyncalError, match="holds nothing out: no class has enough samples"):
        stratified_split(np.array([0, 1, 2]), 0.3)


# --------------------------------------------------------------------------- risk control


def test_learn_then_test_controls_risk():
    """Over 300 calibration draws, the chosen thresholds' true drop exceeds ε at most δ of the time."""
    from dyncal.calibrate.risk import learn_then_test

    rng = np.random.default_rng(0)
    n_pop = 200_000
    s1 = rng.uniform(size=n_pop)
    ok1 = rng.uniform(size=n_pop) < 0.3 + 0.7 * s1  # exit 1 is right more often when confident
    ok2 = rng.uniform(size=n_pop) < 0.9
    scores = np.stack([s1, np.ones(n_pop)], 1)
    correct = np.stack([ok1, ok2], 1)
    cands = [np.array([t]) for t in np.linspace(1.0, 0.0, 41)]
    cands[0] = np.array([np.inf])
    true_drop = np.array([ok2.mean() - evaluate_policy(scores, correct, [1, 2], c).accuracy for c in cands])
    eps, delta = 0.02, 0.1
    bad = 0
    for _ in range(300):
        idx = rng.integers(0, n_pop, 1500)
        res = learn_then_test(cands, scores[idx], correct[idx], max_drop=eps, delta=delta)
        bad += res.index >= 0 and true_drop[res.index] > eps
    assert bad / 300 <= delta
    assert res.index > 0  # and it does accept something


def test_solve_run_risk_mode(demo_run):
    res = solve_run(demo_run, None, max_drop=0.05, delta=0.1)
    assert res.risk is not None and res.risk["max_drop"] == 0.05
    assert res.risk["n_accepted"] >= 1
    assert "exchangeable" in res.risk["assumption"]
    assert res.budget["met_fraction"] < 1.0


# --------------------------------------------------------------------------- CLI


def test_cli_solve_and_frontier(cli, demo_run, tmp_path):
    out = tmp_path / "thresholds.json"
    r = cli("solve", demo_run.path, "--budget", "0.2x", "--out", out, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc == json.loads(out.read_text())
    assert doc["method"] == DEFAULT_METHOD and doc["budget"]["asked"] == "0.2x"
    # an existing thresholds.json is refused, as collect refuses a run, unless --overwrite
    before = out.read_text()
    assert_clean_error(
        cli("solve", demo_run.path, "--budget", "0.2x", "--method", "geometric", "--out", out),
        r"already exists; choose another --out or pass --overwrite",
    )
    assert out.read_text() == before
    r = cli(
        "solve",
        demo_run.path,
        "--budget",
        "0.2x",
        "--method",
        "geometric",
        "--out",
        out,
        "--overwrite",
    )
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["method"] == "geometric"
    assert "held-out" in r.stdout and "95% CI" in r.stdout and "each exit alone" in r.stdout
    csv = tmp_path / "frontier.csv"
    r = cli("frontier", demo_run.path, "--out", csv, "--n-budgets", "6")
    assert r.exit_code == 0, r.output
    df = pd.read_csv(csv)
    assert list(df.columns) == frontier_columns(4, [])
    assert_clean_error(cli("frontier", demo_run.path, "--out", csv, "--n-budgets", "3"), r"already exists")
    assert len(pd.read_csv(csv)) == len(df)
    r = cli("frontier", demo_run.path, "--out", csv, "--n-budgets", "3", "--overwrite")
    assert r.exit_code == 0 and len(pd.read_csv(csv)) < len(df)
    # --json: thresholds as numbers (a list, the last null), and what they mean in words
    r = cli("frontier", demo_run.path, "--out", csv, "--n-budgets", "3", "--overwrite", "--json")
    rows = json.loads(r.stdout)["rows"]
    solved = [row for row in rows if row["method"] != "oracle"]
    assert solved and all(isinstance(row["thresholds"], list) and row["thresholds"][-1] is None for row in solved)
    assert all(len(row["exit_rule"]) == 4 for row in solved)
    first = next(row for row in solved if row["method"] == "static" and row["exit"] == 1)
    assert first["exit_rule"] == ["all leave", "not reached", "not reached", "not reached"]
    assert all(row["thresholds"] is None and row["exit_rule"] is None for row in rows if row["method"] == "oracle")
    r = cli(
        "solve",
        demo_run.path,
        "--max-drop",
        "0.05",
        "--delta",
        "0.1",
        "--out",
        out,
        "--json",
        "--overwrite",
    )
    assert r.exit_code == 0 and json.loads(r.stdout)["risk"]["delta"] == 0.1
    r = cli("solve", "--help")
    assert "exchangeable" in r.stdout
    assert list(Method)[0] == DEFAULT_METHOD


def test_cli_errors(cli, demo_run, demo_logits, tmp_path):
    out = tmp_path / "t.json"
    assert_clean_error(
        cli("solve", demo_run.path, "--budget", "0.001x", "--out", out),
        r"cheapest feasible budget is 0\.02x",
    )
    assert_clean_error(
        cli("solve", demo_run.path, "--budget", "3ms", "--out", out),
        r"needs measured latency.*dyncal profile",
    )
    assert_clean_error(
        cli(
            "solve",
            demo_run.path,
            "--budget",
            "3ms",
            "--device",
            "cpu",
            "--batch-size",
            "1",
            "--out",
            out,
        ),
        r"no latency profiled for cpu/b1",
    )
    assert_clean_error(
        cli("solve", demo_run.path, "--budget", "0.5x", "--holdout", "0.001", "--out", out),
        r"--holdout 0.001 holds nothing out",
    )
    assert_clean_error(cli("solve", tmp_path / "nope", "--budget", "0.5x", "--out", out), r"no run directory")
    assert_clean_error(
        cli("solve", demo_run.path, "--budget", "0.5x", "--method", "magic", "--out", out),
        r"--method",
    )
    z, y = demo_logits
    nocost = import_arrays(z, y, tmp_path / "nocost")
    assert_clean_error(cli("solve", nocost.path, "--budget", "0.5x", "--out", out), r"run has no costs")
    assert_clean_error(cli("frontier", nocost.path, "--out", tmp_path / "f.csv"), r"run has no costs")
    # NaN scores: corrupt a finished run's logits on disk
    bad = import_arrays(z, y, tmp_path / "nan", macs=DEMO_MACS)
    arr = np.load(bad.path / "logits.npy")
    arr[5, 1, 2] = np.nan
    np.save(bad.path / "logits.npy", arr)
    assert_clean_error(cli("solve", bad.path, "--budget", "0.5x", "--out", out), r"NaN")
    # incomplete run directory
    inc = import_arrays(z, y, tmp_path / "inc", macs=DEMO_MACS)
    (inc.path / "run.json").unlink()
    assert_clean_error(cli("solve", inc.path, "--budget", "0.5x", "--out", out), r"not a complete dyncal run")
    # a static run (K = 1) imports, but has no thresholds to solve
    np.savez(tmp_path / "k1.npz", logits=z[:, :1], labels=y)
    assert cli("import", tmp_path / "k1.npz", "--out", tmp_path / "k1", "--macs", "1e6").exit_code == 0
    assert_clean_error(cli("solve", tmp_path / "k1", "--budget", "1x", "--out", out), r"K=1 exit \(a static model\)")


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fraction=st.floats(0.02, 1.2), method=st.sampled_from(list(Method)), seed=st.integers(0, 5))
def test_thresholds_json_reproduces_numbers_property(demo_run, fraction, method, seed):
    try:
        res = solve_run(demo_run, f"{fraction!r}x", method=method, seed=seed)
    except BudgetError as e:  # a budget below exit 1's cost after rounding the fraction
        assert "below the cost of exit 1 alone" in str(e)
        return
    doc = json.loads(json.dumps(res.to_dict()))
    acc, macs, held = _reapply(doc, demo_run)
    assert (acc, macs, held) == (
        doc["calibration_accuracy"],
        doc["expected_macs"],
        doc["holdout_accuracy"],
    )
    assert doc["budget"]["met"] <= doc["budget"]["value"]


def test_p_values():
    # exact values against independent references: tests/test_references.py
    from dyncal.calibrate.risk import fixed_sequence_test, hoeffding_bentkus_pvalue

    hb = [hoeffding_bentkus_pvalue(m, 1000, 0.3) for m in (0.2, 0.25, 0.29, 0.35)]
    assert all(0 <= p <= 1 for p in hb) and hb == sorted(hb) and hb[-1] == 1.0
    assert fixed_sequence_test([0.01, 0.2, 0.01], 0.05) == 1


def test_risk_mode_with_budget_too_small(demo_run):
    with pytest.raises(BudgetError, match=r"drop <= `max_drop` 0.05 \(`delta` 0.1\) cost"):
        solve_run(demo_run, "0.03x", max_drop=0.05, delta=0.1)
    with pytest.raises(DyncalError, match="give a `budget`"):
        solve_run(demo_run, None)


def test_geometric_at_first_exit_cost_returns_exit_1_alone_and_says_so(demo_run):
    """It used to be an error ("no geometric solution fits"): geometric always keeps some samples for later exits."""
    res = solve_run(demo_run, "0.02x", method="geometric")
    assert res.method == "geometric" and res.exit_shares[0] == 1.0
    guard = res.guard
    assert guard is not None and guard["replaced"] == "geometric" and guard["by"] == "exit 1 alone"
    assert guard["exit"] == 1 and guard["method_fit_accuracy"] is None
    assert guard["reason"] == "geometric has no solution within the budget; exit 1 alone fits"
    assert solve_run(demo_run, "0.02x", method="optimal").exit_shares[0] == 1.0


# ------------------------------------------------------------------- one budget vs the frontier

FASHION = Path(__file__).parent.parent / "benchmarks"
FASHION_MACS = [70880.0, 304368.0, 990864.0, 3716048.0]


@pytest.fixture(scope="module")
def fashion_run(tmp_path_factory):
    """Real logits: the 4-exit Fashion-MNIST model of benchmarks/ on its 10,000 test images."""
    data = np.load(FASHION / "fashion_mnist_logits.npz")
    return import_arrays(data["logits"], data["labels"], tmp_path_factory.mktemp("runs") / "fx", macs=FASHION_MACS)


def test_single_solve_agrees_with_the_frontier_on_real_data(fashion_run):
    """The reviewer's repro: 0.154x / 0.1662x / 0.17x fitted 91.12% / 90.96% / 91.06% before."""
    accs = [solve_run(fashion_run, b, method="optimal").calibration_accuracy for b in ("0.154x", "0.1662x", "0.17x")]
    assert accs == sorted(accs), accs
    df = compute_frontier(fashion_run, methods=("optimal",))
    opt = df[df.method == "optimal"]
    for frac, fitted in zip(opt.budget_fraction, opt.fitted_accuracy, strict=True):
        if 0.1 < frac < 0.3:
            one = solve_run(fashion_run, f"{frac!r}x", method="optimal")
            assert one.calibration_accuracy >= fitted - 1e-12, (frac, fitted)


def _float32_scores(logits: np.ndarray, score: str, temperatures) -> np.ndarray:
    """Scores as a float32 deployment computes them (EarlyExitRunner._score in analysis/early_exit.py)."""
    z = torch.from_numpy(np.array(logits, dtype=np.float32))
    out = []
    for k, t in enumerate(temperatures):
        p = torch.softmax(z[:, k].float() / t, dim=1)
        if score == "maxprob":
            s = p.amax(dim=1)
        elif score == "margin":
            top2 = p.topk(2, dim=1).values
            s = top2[:, 0] - top2[:, 1]
        else:
            s = torch.special.xlogy(p, p).sum(dim=1)
        out.append(s.numpy())
    return np.stack(out, axis=1).astype(np.float64)


@pytest.mark.parametrize(
    "method,score,budget",
    [
        ("smoothed", "maxprob", "0.2x"),
        ("smoothed", "margin", "0.1x"),
        ("optimal", "maxprob", "0.1x"),
        ("optimal", "entropy", "0.3x"),
        ("geometric", "margin", "0.2x"),
        ("geometric", "entropy", "0.1x"),
    ],
)
def test_float32_deployment_takes_the_same_exits(fashion_run, method, score, budget):
    """thresholds.json applied to float32 softmax scores: same exits, accuracy and cost.

    Thresholds used to be exact float64 scores of fit samples, so 1-3 of them flipped.
    """
    res = solve_run(fashion_run, budget, method=method, score=score)
    doc = json.loads(json.dumps(res.to_dict()))
    t = np.array(doc["thresholds"][:-1], dtype=float)
    s64, pred = exit_scores(fashion_run.logits, score, doc["temperatures"])
    s32 = _float32_scores(fashion_run.logits, score, doc["temperatures"])
    e64, e32 = assign_exits(s64, t), assign_exits(s32, t)
    assert np.flatnonzero(e64 != e32).tolist() == []
    y = np.asarray(fashion_run.labels)
    fit, _ = stratified_split(y, doc["split"]["holdout"], doc["split"]["seed"])
    ok = pred[fit] == y[fit, None]
    o = evaluate_policy(s32[fit], ok, FASHION_MACS, t)
    assert o.accuracy == doc["calibration_accuracy"]
    assert o.expected_cost == doc["expected_macs"] == doc["budget"]["met"]


def test_risk_mode_with_too_few_test_samples_says_so(demo_run, cli, tmp_path):
    """It used to say the cheapest thresholds 'cost 1x' (or return them without a word)."""
    from dyncal.calibrate.risk import min_test_samples

    assert min_test_samples(0.001, 0.05) == 2995  # (1 - 0.001)^n <= 0.05
    for budget in ("0.5x", None):
        with pytest.raises(DyncalError) as e:
            solve_run(demo_run, budget, max_drop=0.001, delta=0.05)
        msg = str(e.value)
        assert "accepted no thresholds" in msg and "1x" not in msg
        assert "`max_drop` 0.001" in msg and "`delta` 0.05" in msg
        assert re.search(r"on the \d{3} test samples", msg), msg
        assert "needs at least 2995 test samples" in msg, msg
    with pytest.raises(DyncalError, match="`max_drop` 0.0 can never be shown"):
        solve_run(demo_run, None, max_drop=0.0, delta=0.05)
    assert_clean_error(
        cli("solve", demo_run.path, "--max-drop", "0.001", "--out", tmp_path / "t.json"),
        r"accepted no thresholds.*needs at least 2995",
    )


def test_several_latency_columns_need_device_and_batch(demo_logits, tmp_path, cli, caplog):
    """An ms budget used cpu/b1 silently when several columns existed."""
    z, y = demo_logits

    def prof(dev: str, b: int, scale: float) -> LatencyProfile:
        stages = tuple((scale * (j + 1),) for j in range(4))
        return synthetic_profile(dev, b, stages, (0.1,), (10.0,), 1, "test")

    latency = {"cpu/b1": prof("cpu", 1, 1.0), "cuda/b32": prof("cuda", 32, 0.1)}
    for macs in (None, DEMO_MACS):
        run = import_arrays(z, y, tmp_path / f"lat{macs is None}", macs=macs)
        store_costs(run, CostTable(macs=macs, latency=latency, source="profile"))
        run = load_run(run.path)
        several = r"several devices or batch sizes \(cpu/b1, cuda/b32\)"
        with pytest.raises(BudgetError, match=several):
            solve_run(run, "3ms")
        assert solve_run(run, "0.3ms", device="cuda").budget["unit"] == "ms:cuda/b32"
        assert solve_run(run, "3ms", batch_size=1).budget["unit"] == "ms:cpu/b1"
    # MACs and latency: --device with a budget in MACs is reported, not ignored
    with caplog.at_level("WARNING", logger="dyncal.calibrate.solvers"):
        res = solve_run(run, "0.5x", device="cuda", batch_size=32)
    assert res.budget["unit"] == "macs"
    assert "binds MACs, so `device` cuda `batch_size` 32 does not choose" in caplog.text
    out = tmp_path / "t.json"
    r = cli("solve", run.path, "--budget", "0.5x", "--device", "cuda", "--out", out)
    assert r.exit_code == 0, r.output
    assert "latency column cuda/b32, expected" in r.stdout and "binds macs" in r.stdout
    assert "binds MACs, so --device cuda does not choose" in r.stderr  # the CLI shows the warning in flags
    norun = import_arrays(z, y, tmp_path / "nomacs2")
    store_costs(norun, CostTable(latency=latency, source="profile"))
    assert_clean_error(cli("frontier", norun.path, "--out", tmp_path / "f.csv"), r"several devices or batch sizes")


def test_temperature_at_the_search_bound_is_flagged(demo_logits, tmp_path, caplog, cli):
    z, y = demo_logits
    z = z.copy()
    z[:, 0] = np.random.default_rng(0).normal(0, 10, z[:, 0].shape)  # exit 1: pure noise
    run = import_arrays(z, y, tmp_path / "noise", macs=DEMO_MACS)
    with caplog.at_level("WARNING", logger="dyncal.calibrate.temperature"):
        res = solve_run(run, "0.5x", temperature=True)
    assert res.temperatures[0] == pytest.approx(20.0, rel=1e-3)
    assert res.temperature_at_bound == (True, False, False, False)
    assert "hit the search bound [0.05, 20]" in caplog.text and "exit 1: T=20" in caplog.text
    doc = json.loads(json.dumps(res.to_dict()))
    assert doc["temperature_at_bound"] == [True, False, False, False]
    assert ThresholdsDocument.from_dict(doc).to_dict() == doc
    assert solve_run(run, "0.5x").to_dict()["temperature_at_bound"] is None
    r = cli("solve", run.path, "--budget", "0.5x", "--temperature", "--out", tmp_path / "t.json")
    assert r.exit_code == 0 and "temperature of exit 1 stopped at the search bound" in r.stdout


LTT = {"max_drop": 0.1, "delta": 0.1}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: solve_path(ExitProblem(np.ones((4, 2)), np.ones((4, 2)), [1.0, 2.0]), [1.5], "fast"),
            "`method` must be one of optimal, smoothed, geometric; got 'fast'",
        ),
        (
            lambda: exit_scores(np.zeros((1, 2, 3)), "conf"),
            "`score` must be one of maxprob, margin, entropy; got 'conf'",
        ),
        (
            lambda: learn_then_test([np.array([0.5])], np.ones((4, 2)), np.ones((4, 2), bool), **LTT, pvalue="z"),
            "`pvalue` must be one of binomial, hb; got 'z'",
        ),
        (
            lambda: prepare_run(None, score="conf"),  # checked by its options before the run is read
            "`score` must be one of maxprob, margin, entropy; got 'conf'",
        ),
        (
            lambda: finite_thresholds([0.5], "margins", 3),
            "`score` must be one of maxprob, margin, entropy; got 'margins'",
        ),
    ],
)
def test_closed_choices_are_refused_in_one_line_naming_the_parameter(call, message):
    with pytest.raises(DyncalError) as info:
        call()
    assert str(info.value) == message
