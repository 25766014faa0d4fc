"""The monitor's statistics and decision: exact bounds, the plan's sample sizes, PROCEED / HOLD / ROLLBACK."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binom

from dyncal.artifacts.run import Provenance
from dyncal.artifacts.run_import import import_arrays
from dyncal.artifacts.thresholds import ThresholdsDocument
from dyncal.calibrate.estimator import ThresholdSolver
from dyncal.errors import DyncalError
from dyncal.monitor import (
    HOLD,
    PROCEED,
    ROLLBACK,
    CalibrationReference,
    MonitorOptions,
    atc_threshold,
    clopper_pearson,
    decide,
    monitor,
    population_stability_index,
    rollout_plan,
    shadow_requests_needed,
    simulated_telemetry,
)
from dyncal.telemetry import PackageIdentity, TelemetryData

K, C = 3, 4
MACS = (1e6, 2e6, 4e6)


def toy_logits(n: int, seed: int, noise: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3, 4) logits whose exits grow more accurate, and labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, n)
    z = np.eye(C)[y][:, None, :] * np.array([[1.0], [2.0], [3.5]]) + rng.normal(0, noise, (n, K, C))
    return z.astype(np.float32), y


@pytest.fixture(scope="module")
def solved(tmp_path_factory: pytest.TempPathFactory) -> tuple[ThresholdsDocument, np.ndarray, np.ndarray]:
    """Thresholds solved at 0.6x on a 4000-sample run, and that run's logits and labels."""
    z, y = toy_logits(4000, 0)
    prov = Provenance("toy:net", "aa" * 32, "toy:clean", "", "", "cpu")
    run = import_arrays(z, y, tmp_path_factory.mktemp("mon") / "run", macs=list(MACS), provenance=prov)
    doc = ThresholdSolver("0.6x", method="optimal").fit(run).result_
    return doc, z, y


@pytest.fixture(scope="module")
def reference(solved) -> CalibrationReference:
    doc, z, y = solved
    return CalibrationReference.from_arrays(z, y, doc, costs={"macs": MACS})


# --------------------------------------------------------------------------- exact bounds


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 5000), frac=st.floats(0, 1), delta=st.sampled_from([0.01, 0.05, 0.1, 0.2]))
def test_clopper_pearson_bounds_are_the_binomial_tails(n: int, frac: float, delta: float):
    count = min(n, int(frac * n))
    lower, upper = clopper_pearson(count, n, delta)
    assert 0.0 <= lower <= count / n <= upper <= 1.0
    if count < n:  # the upper bound is the rate at which seeing <= count is exactly delta likely
        assert binom.cdf(count, n, upper) == pytest.approx(delta, rel=1e-6, abs=1e-12)
    else:
        assert upper == 1.0
    if count > 0:  # the lower bound: seeing >= count is exactly delta likely
        assert binom.sf(count - 1, n, lower) == pytest.approx(delta, rel=1e-6, abs=1e-12)
    else:
        assert lower == 0.0


def test_clopper_pearson_at_zero_is_the_closed_form_and_no_data_bounds_nothing():
    for n in (1, 10, 299, 5000):
        assert clopper_pearson(0, n, 0.05)[1] == pytest.approx(1 - 0.05 ** (1 / n), rel=1e-9)
    assert clopper_pearson(0, 0, 0.05) == (0.0, 1.0)
    with pytest.raises(DyncalError, match="need 0 <= count <= n"):
        clopper_pearson(5, 3, 0.05)
    with pytest.raises(DyncalError, match=r"`delta` must be a fraction in \(0, 1\)"):
        clopper_pearson(0, 3, 0.0)


def test_the_upper_bound_passes_epsilon_no_more_often_than_delta_when_the_rate_is_epsilon():
    eps, delta, n = 0.02, 0.05, 800
    rng = np.random.default_rng(0)
    counts = rng.binomial(n, eps, size=4000)
    upper = {int(c): clopper_pearson(int(c), n, delta)[1] for c in np.unique(counts)}
    passed = np.mean([upper[int(c)] <= eps for c in counts])
    largest = 0
    while clopper_pearson(largest + 1, n, delta)[1] <= eps:
        largest += 1
    exact = binom.cdf(largest, n, eps)  # the chance of a false PROCEED, exactly
    assert exact <= delta
    assert passed == pytest.approx(exact, abs=0.015)


@settings(max_examples=60, deadline=None)
@given(
    eps=st.sampled_from([0.005, 0.01, 0.02, 0.05, 0.1]),
    delta=st.sampled_from([0.01, 0.05, 0.1]),
    rate_share=st.sampled_from([0.0, 0.0, 0.25, 0.5]),
)
def test_plan_sample_sizes_are_the_smallest_that_pass_the_binomial_test(eps: float, delta: float, rate_share: float):
    rate = rate_share * eps
    n = shadow_requests_needed(eps, delta, rate)
    assert n is not None

    def passes(m: int) -> bool:
        return binom.cdf(math.ceil(rate * m), m, eps) <= delta

    assert passes(n)
    smaller = np.arange(1 if n < 20_000 else n - 5000, n)  # every smaller sample size, in one call
    assert not np.any(binom.cdf(np.ceil(rate * smaller), smaller, eps) <= delta)
    if rate == 0:
        assert n == math.ceil(math.log(delta) / math.log(1 - eps))
        assert (1 - eps) ** n <= delta < (1 - eps) ** (n - 1)
        assert clopper_pearson(0, n, delta)[1] <= eps < clopper_pearson(0, n - 1, delta)[1]


def test_no_plan_passes_at_a_rate_at_or_above_epsilon():
    assert shadow_requests_needed(0.01, 0.05, 0.01) is None
    assert shadow_requests_needed(0.01, 0.05, 0.02) is None


def test_the_rollout_plan_sizes_each_step():
    plan = rollout_plan(0.02, 0.05, shadow=0.05, requests_per_hour=10_000)
    n = math.ceil(math.log(0.05) / math.log(0.98))
    assert plan.n_at_zero == plan.n_at_rate == n == 149
    assert [s.share for s in plan.steps] == [0.01, 0.05, 0.25, 1.0]
    first = plan.steps[0]
    assert first.shadow_requests == n and first.early_exit_requests == math.ceil(n / 0.05)
    assert first.total_requests == math.ceil(first.early_exit_requests / 0.01)
    assert first.hours == pytest.approx(first.total_requests / 10_000)
    assert plan.steps[-1].total_requests == plan.steps[-1].early_exit_requests
    doc = plan.to_dict()
    assert doc["schema"] == "dyncal.rollout_plan" and len(doc["steps"]) == 4
    at_rate = rollout_plan(0.02, 0.05, shadow=0.05, assumed_rate=0.01)
    assert at_rate.n_at_rate == shadow_requests_needed(0.02, 0.05, 0.01) > n


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"shadow": 0.0}, r"`shadow` 0.0 gives no quality evidence: the plan needs a shadow share in \(0, 1\]"),
        ({"shadow": 0.1, "steps": (0.5, 0.2)}, r"`steps` must be increasing shares in \(0, 1\]"),
        ({"shadow": 0.1, "steps": (0.5, 1.5)}, r"`steps` must be increasing"),
        ({"shadow": 0.1, "assumed_rate": 0.05}, r"never comes below `max_drop`"),
        ({"shadow": 0.1, "requests_per_hour": 0}, r"`requests_per_hour` must be positive"),
    ],
)
def test_an_impossible_plan_is_refused(kwargs, pattern):
    with pytest.raises(DyncalError, match=pattern):
        rollout_plan(0.02, 0.05, **kwargs)


# --------------------------------------------------------------------------- the decision


def telemetry(n: int, *, disagree: int, shadow: int, exits: np.ndarray | None = None, t0: int = 0) -> TelemetryData:
    """n requests, the first ``shadow`` shadowed, ``disagree`` of those disagreeing with the last exit."""
    ex = np.zeros(n, dtype=np.int64) if exits is None else exits
    preds = np.ones(n, dtype=np.int64)
    last = np.full(n, -1)
    last[:shadow] = 1
    last[:disagree] = 2
    scores = np.full((n, K), 0.9)
    return TelemetryData.from_arrays(
        exits=ex, predictions=preds, scores=scores, last_predictions=last, time_us=t0 + np.arange(n) * 1000
    )


def test_no_shadow_evidence_is_hold_never_proceed(reference: CalibrationReference):
    opts = MonitorOptions(max_drop=0.02)
    report = monitor(reference, telemetry(50_000, disagree=0, shadow=0), opts)
    assert report.decision == HOLD
    assert report.quality["n_shadow"] == 0 and report.quality["upper"] is None and not report.quality["passed"]
    assert any("no shadow requests" in r for r in report.reasons)
    assert report.cost["status"] == "ok"  # cheap traffic: only quality holds it


def test_enough_agreeing_shadow_requests_proceed(reference: CalibrationReference):
    opts = MonitorOptions(max_drop=0.02)
    n = shadow_requests_needed(0.02, 0.05)
    assert monitor(reference, telemetry(5000, disagree=0, shadow=n - 1), opts).decision == HOLD
    report = monitor(reference, telemetry(5000, disagree=0, shadow=n), opts)
    assert report.decision == PROCEED
    assert report.quality["upper"] <= 0.02 and report.quality["passed"]


def test_a_disagreement_surely_above_epsilon_without_labels_holds_never_rolls_back(reference: CalibrationReference):
    # disagreement bounds the drop only from above (the early exit may be the one that is right): no shown harm
    opts = MonitorOptions(max_drop=0.02)
    report = monitor(reference, telemetry(2000, disagree=100, shadow=1000), opts)  # 10% disagree
    assert report.quality["lower"] > 0.02 and report.cost["status"] == "ok"
    assert report.decision == HOLD
    assert any("cannot certify the drop without labels" in r and "--labels" in r for r in report.reasons)
    near = monitor(reference, telemetry(2000, disagree=25, shadow=1000), opts)  # 2.5%: not surely above 2%
    assert near.decision == HOLD and near.quality["lower"] <= 0.02 < near.quality["upper"]
    assert any("cannot certify the drop without labels" in r for r in near.reasons)


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 20_000),
    frac=st.floats(0.0, 1.0),
    eps=st.floats(0.001, 0.5),
    cost=st.sampled_from(["ok", "uncertain", "no budget", "no requests"]),
)
def test_without_labels_the_decision_is_never_rollback_unless_the_budget_breaks(
    n: int, frac: float, eps: float, cost: str
):
    count = round(frac * n)
    lo, hi = clopper_pearson(count, n, 0.05)
    quality = {"source": "shadow", "n": n, "n_shadow": n, "count": count, "lower": lo, "upper": hi}
    costs = {"status": cost, "mean": 1.0, "limit": 1.0, "budget": 1.0}
    decision, reasons = decide(quality, costs, MonitorOptions(max_drop=eps))
    assert decision != ROLLBACK
    assert (decision == PROCEED) == (hi <= eps and cost in ("ok", "no budget"))
    if hi > eps:
        assert any("cannot certify the drop without labels" in r for r in reasons)


def test_cost_over_the_budget_rolls_back_even_when_quality_holds(reference: CalibrationReference):
    opts = MonitorOptions(max_drop=0.02)
    everyone_last = np.full(5000, K - 1)
    report = monitor(reference, telemetry(5000, disagree=0, shadow=1000, exits=everyone_last), opts)
    assert report.quality["passed"]
    assert report.cost["status"] == "over" and report.cost["lower"] > report.cost["limit"]
    assert report.decision == ROLLBACK and any("above the limit" in r for r in report.reasons)


def test_cost_slightly_over_is_hold_until_significant(reference: CalibrationReference):
    budget = reference.budget["value"]
    costs = np.asarray(MACS)
    # a mix of exit 1 and exit 3 whose mean is 3% above the budget (within no tolerance)
    share = (budget * 1.03 - costs[0]) / (costs[2] - costs[0])
    n = 400
    exits = np.where(np.arange(n) < round(share * n), K - 1, 0)
    opts = MonitorOptions(max_drop=0.02, cost_tolerance=0.0)
    report = monitor(reference, telemetry(n, disagree=0, shadow=n, exits=exits), opts)
    assert report.cost["mean"] > report.cost["limit"] >= report.cost["lower"]
    assert report.cost["status"] == "uncertain" and report.decision == HOLD
    tolerant = monitor(reference, telemetry(n, disagree=0, shadow=n, exits=exits), MonitorOptions(max_drop=0.02))
    assert tolerant.cost["status"] == "ok" and tolerant.decision == PROCEED


def test_drift_alone_never_decides(reference: CalibrationReference):
    # every request leaves at exit 1 (the exit shares moved far), yet none disagrees and cost fell
    report = monitor(reference, telemetry(3000, disagree=0, shadow=3000), MonitorOptions(max_drop=0.02))
    assert report.drift["exit_shares"]["p_value"] < 1e-6
    assert report.decision == PROCEED


def test_the_mean_cost_is_the_exit_mix_of_the_costs(reference: CalibrationReference):
    exits = np.array([0] * 500 + [1] * 300 + [2] * 200)
    report = monitor(reference, telemetry(1000, disagree=0, shadow=0, exits=exits), MonitorOptions(max_drop=0.02))
    macs = report.cost["per_unit"]["macs"]
    assert macs["mean"] == pytest.approx((500 * 1e6 + 300 * 2e6 + 200 * 4e6) / 1000)
    assert macs["lower"] < macs["mean"] < macs["upper"]
    assert report.cost["budget"] == reference.budget["value"] == pytest.approx(0.6 * MACS[-1])
    no_budget = replace(reference, budget={"unit": "macs", "value": None, "met": 1.5e6})
    assert (
        monitor(no_budget, telemetry(10, disagree=0, shadow=0), MonitorOptions(max_drop=0.02)).cost["budget"] == 1.5e6
    )


def test_labels_bound_the_drop_by_losses(reference: CalibrationReference):
    n = 3000
    data = telemetry(n, disagree=300, shadow=n)  # 10% disagree ...
    ids = np.array([str(i) for i in range(n)], dtype=object)
    data = replace(data, request_ids=ids)
    # ... but where they disagree the early exit is right (label 1 = its prediction): no loss at all
    labels = {str(i): 1 for i in range(n)}
    opts = MonitorOptions(max_drop=0.02)
    unlabelled = monitor(reference, data, opts)
    assert unlabelled.decision == HOLD  # 10% disagreement is no shown drop
    report = monitor(reference, data, opts, labels=labels)
    assert report.quality["source"] == "labels" and report.quality["count"] == 0
    assert report.labels is not None and report.labels["drop"] == pytest.approx(-0.1)
    assert report.decision == PROCEED
    # where the last exit is right instead (label 2), the drop is 10%: harm shown
    harmed = {str(i): (2 if i < 300 else 1) for i in range(n)}
    bad = monitor(reference, data, opts, labels=harmed)
    assert bad.labels is not None and bad.labels["drop"] == pytest.approx(0.1)
    assert bad.quality["harm_lower"] > 0.02 and bad.decision == ROLLBACK
    assert any("labelled drop is above" in r for r in bad.reasons)
    # losses whose upper bound is above ε but whose drop is not surely above it: wait, do not roll back
    few = {str(i): (2 if i < 75 else 1) for i in range(n)}  # 2.5% losses
    unsure = monitor(reference, data, opts, labels=few)
    assert unsure.quality["harm_lower"] <= 0.02 < unsure.quality["upper"]
    assert unsure.decision == HOLD and any("wait for more requests" in r for r in unsure.reasons)


def test_windows_show_the_trend(reference: CalibrationReference):
    good = telemetry(1000, disagree=0, shadow=1000, t0=0)
    bad = telemetry(1000, disagree=200, shadow=1000, t0=10_000_000)
    both = TelemetryData(*(np.concatenate([getattr(good, f), getattr(bad, f)]) for f in good.__dataclass_fields__))
    report = monitor(reference, both, MonitorOptions(max_drop=0.02, window_seconds=5.0))
    decisions = [w["decision"] for w in report.windows if w["n"]]
    assert decisions == [PROCEED, HOLD]  # without labels the disagreeing window cannot be certified
    assert report.decision == HOLD
    # labels showing that the last exit was right where they disagree: the second window rolls back
    both = replace(both, request_ids=np.array([str(i) for i in range(2000)], dtype=object))
    labels = {str(i): (2 if 1000 <= i < 1200 else 1) for i in range(2000)}
    report = monitor(reference, both, MonitorOptions(max_drop=0.02, window_seconds=5.0), labels=labels)
    assert [w["decision"] for w in report.windows if w["n"]] == [PROCEED, ROLLBACK]
    assert report.decision == ROLLBACK
    assert sum(w["n"] for w in report.windows) == 2000


def test_telemetry_of_other_thresholds_is_refused(reference: CalibrationReference):
    assert reference.identity is not None
    other = replace(reference.identity, decision_fingerprint="0" * 64)
    with pytest.raises(DyncalError, match=r"written by another package: decision fingerprint 000000000000"):
        monitor(reference, telemetry(10, disagree=0, shadow=0), MonitorOptions(max_drop=0.02), identity=other)
    with pytest.raises(DyncalError, match="the telemetry has K=2 exits but the calibration run has K=3"):
        two = TelemetryData.from_arrays(exits=[0], predictions=[0], scores=[[0.5, 0.5]])
        monitor(reference, two, MonitorOptions(max_drop=0.02))


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"max_drop": 0.0}, r"`max_drop` must be a fraction in \(0, 1\)"),
        ({"max_drop": 0.02, "delta": 1.0}, r"`delta` must be a fraction"),
        ({"max_drop": 0.02, "cost_tolerance": -0.1}, r"`cost_tolerance` must be in \[0, 10\)"),
        ({"max_drop": 0.02, "window_seconds": 0}, r"`window_seconds` must be positive"),
        ({"max_drop": 0.02, "n_windows": 0}, r"`n_windows` must be a positive integer"),
    ],
)
def test_bad_options_are_refused(kwargs, pattern):
    with pytest.raises(DyncalError, match=pattern):
        MonitorOptions(**kwargs)


# --------------------------------------------------------------------------- simulated production


def test_clean_traffic_matches_calibration_and_proceeds(solved, reference: CalibrationReference):
    doc, _, _ = solved
    z, y = toy_logits(6000, 1)  # fresh samples of the same distribution
    data = simulated_telemetry(z, doc, shadow=1.0, seed=0)
    report = monitor(reference, data, MonitorOptions(max_drop=0.1))
    cal = reference.summary()
    assert report.quality["disagreement_rate"] == pytest.approx(cal["disagreement_rate"], abs=0.02)
    assert report.drift["exit_shares"]["p_value"] > 0.001
    assert all(e["psi"] < 0.1 for e in report.drift["scores"])
    truth = float(np.mean(data.predictions == y))
    assert report.drift["atc"]["estimate"] == pytest.approx(truth, abs=0.03)
    assert report.decision == PROCEED
    json.dumps(report.to_dict(), allow_nan=False)


def test_noisy_traffic_moves_cost_and_scores(solved, reference: CalibrationReference):
    doc, _, _ = solved
    z, _ = toy_logits(6000, 2)
    z = z * 0.4  # less confident everywhere: later exits
    report = monitor(reference, simulated_telemetry(z, doc, shadow=0.2, seed=1), MonitorOptions(max_drop=0.02))
    assert report.cost["per_unit"]["macs"]["mean"] > report.cost["per_unit"]["macs"]["calibration"]
    assert report.drift["scores"][0]["ks_p_value"] < 1e-6
    assert report.decision in (HOLD, ROLLBACK)


def test_the_reference_from_a_run_checks_its_thresholds(tmp_path: Path, solved):
    doc, z, y = solved
    prov = Provenance("toy:net", "aa" * 32, "toy:clean", "", "", "cpu")
    run = import_arrays(z, y, tmp_path / "same", macs=list(MACS), provenance=prov)
    ref = CalibrationReference.from_run(run, doc)
    assert ref.costs == {"macs": MACS} and ref.identity == PackageIdentity.from_thresholds(doc)
    summary = ref.summary()
    assert summary["exit_shares"] == pytest.approx(list(np.bincount(ref.exits, minlength=K) / len(y)), abs=1e-12)
    other = import_arrays(z[:3000], y[:3000], tmp_path / "other", macs=list(MACS), provenance=prov)
    with pytest.raises(DyncalError, match="solved on another run"):
        CalibrationReference.from_run(other, doc)


def test_psi_and_atc_on_known_inputs():
    x = np.random.default_rng(0).normal(size=4000)
    assert population_stability_index(x, x) == 0.0
    assert 0.0 < population_stability_index(x, x + 0.1) < 0.1 < population_stability_index(x, x + 1.0)
    assert math.isnan(population_stability_index(x, x[:0]))
    conf = np.random.default_rng(1).random(1000)
    correct = np.random.default_rng(2).random(1000) < conf
    t = atc_threshold(conf, correct)
    assert np.mean(conf > t) == pytest.approx(correct.mean(), abs=1e-9)
    assert np.mean(conf > atc_threshold(conf, np.ones(1000, bool))) == 1.0


def test_thresholds_that_disagree_above_epsilon_on_calibration_say_so(reference: CalibrationReference):
    rate = reference.summary()["disagreement_rate"]
    report = monitor(reference, telemetry(100, disagree=0, shadow=100), MonitorOptions(max_drop=rate * 0.9))
    assert report.quality["calibration_disagreement_rate"] == rate
    assert any("label-free evidence cannot certify this drop" in r for r in report.reasons)


def test_labels_files_read_into_request_ids(tmp_path: Path):
    from dyncal.monitor import read_labels

    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("request_id,label,note\nr1,3,x\nr2,0,y\n")
    assert read_labels(csv_file, n_classes=4) == {"r1": 3, "r2": 0}
    json_file = tmp_path / "labels.json"
    json_file.write_text('{"a": 1, "b": 2}')
    assert read_labels(json_file) == {"a": 1, "b": 2}
    cases = [
        ("missing.csv", None, r"no labels file"),
        ("bad.txt", "x", r"must be .csv \(request_id,label\) or .json"),
        ("cols.csv", "id,label\n1,2\n", r"has no 'request_id' column"),
        ("twice.csv", "request_id,label\nr,1\nr,2\n", r"line 3: request 'r' is labelled twice"),
        ("range.csv", "request_id,label\nr,7\n", r"line 2: label 7 is not a class in \[0, 4\)"),
        ("text.csv", "request_id,label\nr,cat\n", r"label 'cat' is not an integer class"),
        ("list.json", "[1, 2]", r"must hold a JSON object"),
        ("broken.json", "{", r"cannot be read: JSONDecodeError"),
    ]
    for name, text, pattern in cases:
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        with pytest.raises(DyncalError, match=pattern) as info:
            read_labels(path, n_classes=4)
        assert "\n" not in str(info.value)
