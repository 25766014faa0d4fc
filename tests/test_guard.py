"""Issue 17: ``dyncal solve`` is never beaten on its fit data by what it could have chosen, and says so.

Real logits of a model whose exits are not monotone in accuracy (``fmnist_early_best``:
exit 1 is the best, 87.0 / 84.2 / 85.8 %; ``benchmarks/nonmonotone_models.py``). There the
old default ``smoothed`` lost to an exit alone or to ``geometric`` on most budgets; the
property tests in test_solver_properties.py cover random problems.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from dyncal.artifacts.run_import import import_arrays
from dyncal.artifacts.thresholds import ThresholdsDocument
from dyncal.calibrate.frontier import compute_frontier
from dyncal.calibrate.policy import describe_thresholds, threshold_meanings
from dyncal.calibrate.prepare import prepare_run
from dyncal.calibrate.solvers import solve_run
from dyncal.choices import DEFAULT_METHOD, DEFAULT_RISK_METHOD
from dyncal.stats import mcnemar_pvalue

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def early_best(tmp_path_factory):
    """fmnist_early_best: 10,000 Fashion-MNIST test images, 3 exits, the first the most accurate."""
    d = np.load(BENCHMARKS / "fmnist_early_best_logits.npz")
    run = import_arrays(d["logits"], d["labels"], tmp_path_factory.mktemp("runs") / "early", macs=list(d["macs"]))
    return prepare_run(run)


def test_the_default_is_optimal_for_budgets_and_smoothed_for_risk_control():
    assert (DEFAULT_METHOD, DEFAULT_RISK_METHOD) == ("optimal", "smoothed")


def test_smoothed_beaten_by_a_rival_returns_the_rival_and_records_why(early_best):
    res = solve_run(early_best, "0.8x", method="smoothed")
    guard = res.guard
    assert res.method == "smoothed" and guard is not None and guard["replaced"] == "smoothed"
    assert guard["fit_accuracy"] == res.calibration_accuracy > guard["method_fit_accuracy"]
    names = [r["name"] for r in guard["rivals"]]
    assert names == ["exit 1 alone", "exit 2 alone", "geometric"]  # exit 3 costs 1x: not within 0.8x
    best = max(guard["rivals"], key=lambda r: r["fit_accuracy"])
    assert guard["by"] == best["name"] and list(res.thresholds) == best["thresholds"]
    assert guard["exit"] == best["exit"]
    assert guard["reason"] == (
        f"{best['name']} is more accurate on the fit half than smoothed within the budget "
        f"({100 * guard['fit_accuracy']:.2f}% vs {100 * guard['method_fit_accuracy']:.2f}%)"
    )
    for r in guard["rivals"]:  # each rival as the exit alone (or geometric) gives it, on both parts
        assert 0.0 <= r["holdout_p_value"] <= 1.0 and r["cost_fraction"] <= 0.8
        if r["exit"] is not None:
            alone = res.static[r["exit"] - 1]
            assert (r["fit_accuracy"], r["holdout_accuracy"]) == (
                alone["calibration_accuracy"],
                alone["holdout_accuracy"],
            )
    chosen = next(r for r in guard["rivals"] if r["name"] == guard["by"])
    assert chosen["holdout_accuracy"] == res.holdout_accuracy and chosen["holdout_p_value"] == 1.0
    doc = json.loads(json.dumps(res.to_dict()))
    assert ThresholdsDocument.from_dict(doc).to_dict() == doc


def test_solve_says_in_its_output_what_the_guard_returned_and_what_the_thresholds_mean(early_best, tmp_path, cli):
    # the CLI on the same run: the guard's replacement, the exit rule in words, fit-half figures labelled
    run = Path(early_best.path)
    out = tmp_path / "t.json"
    res = cli("solve", run, "--budget", "0.8x", "--method", "smoothed", "--out", out)
    assert res.exit_code == 0, res.output
    text = " ".join(res.stdout.split())
    doc = json.loads(out.read_text())
    guard = doc["guard"]
    assert guard["by"] and f"guard: {guard['reason']}; returned {guard['by']}" in text
    meanings = describe_thresholds(doc["thresholds"], doc["score"], doc["n_classes"])
    assert "exit rule: " + "; ".join(f"exit {j + 1}: {m}" for j, m in enumerate(meanings)) in text
    assert "-0.9" not in text.split("exit rule:")[1].split("temperatures")[0]
    assert "on the fit half: expected cost per sample" in text and "held out: expected cost per sample" in text
    assert f"accuracy: fit half {100 * doc['calibration_accuracy']:.2f}%" in text
    res = cli("solve", run, "--budget", "0.8x", "--out", out, "--overwrite")  # optimal: nothing replaced
    assert res.exit_code == 0 and "guard:" not in res.stdout


def test_optimal_keeps_its_answer_and_it_is_at_least_every_rivals(early_best):
    for budget in ("0.2x", "0.4x", "0.8x"):
        res = solve_run(early_best, budget)
        guard = res.guard
        assert res.method == "optimal" and guard is not None
        assert guard["replaced"] is None and guard["by"] is None and guard["reason"] is None
        assert guard["method_fit_accuracy"] == guard["fit_accuracy"] == res.calibration_accuracy
        assert guard["rivals"] and all(res.calibration_accuracy >= r["fit_accuracy"] for r in guard["rivals"])


def test_the_frontier_is_what_solve_returns_and_never_falls(early_best):
    df = compute_frontier(early_best, methods=("smoothed", "optimal", "geometric"))
    for method in ("smoothed", "optimal", "geometric"):
        rows = df[df.method == method].sort_values("budget_fraction")
        fitted = rows.fitted_accuracy.to_numpy()
        assert not np.isnan(fitted).any() and np.all(np.diff(fitted) >= 0), method
        for _, row in rows.iloc[[1, 12, 25, 40]].iterrows():
            res = solve_run(early_best, f"{row.budget_fraction!r}x", method=method)
            assert list(res.thresholds) == json.loads(row.thresholds), (method, row.budget_fraction)
            assert res.calibration_accuracy == row.fitted_accuracy
    statics = df[df.method == "static"]
    for method in ("smoothed", "optimal", "geometric"):  # never below an exit alone that fits
        rows = df[df.method == method]
        for _, alone in statics.iterrows():
            fits = rows[rows.budget_fraction >= alone.budget_fraction - 1e-12]
            assert np.all(fits.fitted_accuracy.to_numpy() >= alone.fitted_accuracy), (method, alone.exit)


def test_risk_mode_has_no_guard_and_orders_candidates_with_smoothed(early_best):
    res = solve_run(early_best, None, max_drop=0.02, delta=0.1)
    assert res.method == "smoothed" and res.guard is None and res.budget["met_fraction"] < 1.0


def test_a_document_written_before_the_guard_still_reads(early_best):
    doc = json.loads(json.dumps(solve_run(early_best, "0.5x").to_dict()))
    del doc["guard"]
    assert ThresholdsDocument.from_dict(doc).guard is None
    doc["guard"] = ["not", "an", "object"]
    with pytest.raises(Exception, match="guard"):
        ThresholdsDocument.from_dict(doc)


def test_threshold_meanings_say_in_words_what_the_numbers_encode(early_best):
    # issue 17's "[0.5607, -0.9, -]": the unsure at exit 1 all leave at exit 2, exit 3 is never used
    assert describe_thresholds([0.5607, -0.9, None], "maxprob", 10) == ["score >= 0.5607", "all leave", "not reached"]
    assert describe_thresholds([2.0, 0.7, None], "maxprob", 10) == ["none leave", "score >= 0.7", "all leave"]
    assert describe_thresholds([float("-inf"), float("inf")], "margin") == ["all leave", "not reached", "not reached"]
    assert describe_thresholds([-1.0, None], "margin", 3) == ["all leave", "not reached"]
    assert describe_thresholds([0.1, None], "maxprob", 10) == ["all leave", "not reached"]  # 1/C: every score
    assert describe_thresholds([-math.log(10) - 1, None], "entropy", 10) == ["all leave", "not reached"]
    assert describe_thresholds([1.0, None], "entropy", 10) == ["none leave", "all leave"]
    # a real document: exit 1 alone, as the guard returns it for geometric at exit 1's cost
    macs = early_best.units["macs"]
    res = solve_run(early_best, f"{macs[0] / macs[-1]!r}x", method="geometric")
    assert res.guard is not None and res.guard["by"] == "exit 1 alone" and res.exit_shares[0] == 1.0
    assert threshold_meanings(res) == ["all leave", "not reached", "not reached"]
    meanings = threshold_meanings(solve_run(early_best, "0.6x"))
    assert len(meanings) == 3 and all(
        re.fullmatch(r"all leave|none leave|not reached|score >= \S+", m) for m in meanings
    )
    with pytest.raises(Exception, match="only the last threshold may be null"):
        describe_thresholds([None, 0.5, None], "maxprob", 10)


def test_mcnemar_pvalue_is_the_exact_two_sided_binomial_of_the_discordant_samples():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.random(60) < 0.7, rng.random(60) < rng.uniform(0.4, 0.9)
        only_a, only_b = int(np.sum(a & ~b)), int(np.sum(b & ~a))
        n, low = only_a + only_b, min(only_a, only_b)
        tail = sum(math.comb(n, i) for i in range(low + 1)) / 2**n
        expected = 1.0 if only_a == only_b else min(1.0, 2 * tail)
        assert mcnemar_pvalue(a, b) == pytest.approx(expected, rel=1e-9)
