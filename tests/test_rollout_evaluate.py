"""Thresholds of run A judged on run B: same model required, other data said plainly, figures exact."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from dyncal.artifacts.run import Provenance
from dyncal.artifacts.run_import import import_arrays
from dyncal.calibrate.estimator import ThresholdSolver
from dyncal.calibrate.policy import evaluate_policy
from dyncal.calibrate.scores import exit_scores
from dyncal.errors import DyncalError
from dyncal.evaluate import check_same_model, data_relation, evaluate_thresholds
from dyncal.stats import stratified_split

MACS = [1e6, 2e6, 4e6]
SHA = "aa" * 32


def logits(n: int, seed: int, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    z = np.eye(4)[y][:, None, :] * np.array([[1.0], [2.0], [3.5]]) + rng.normal(0, 1, (n, 3, 4))
    return (z * scale).astype(np.float32), y


def make_run(path: Path, n: int, seed: int, *, data: str, scale: float = 1.0, macs=MACS, model="toy:net", sha=SHA):
    z, y = logits(n, seed, scale)
    prov = Provenance(model, sha, data, "", "", "cpu", extra={"input_shape": [1, 8, 8]})
    return import_arrays(z, y, path, macs=macs, provenance=prov)


@pytest.fixture(scope="module")
def a_and_doc(tmp_path_factory: pytest.TempPathFactory):
    run = make_run(tmp_path_factory.mktemp("a") / "A", 3000, 0, data="toy:clean")
    doc = ThresholdSolver("0.6x", method="optimal").fit(run).result_
    return run, doc


def test_thresholds_on_the_same_run_are_refused(a_and_doc):
    run, doc = a_and_doc
    with pytest.raises(
        DyncalError, match="is the run the thresholds were solved on; .* evaluate them on a run of other data"
    ):
        evaluate_thresholds(run, doc)


def test_figures_on_b_are_the_exit_rule_applied_to_b(tmp_path: Path, a_and_doc):
    a, doc = a_and_doc
    b = make_run(tmp_path / "B", 2000, 1, data="toy:shifted", scale=0.5)
    ev = evaluate_thresholds(b, doc)
    scores, preds = exit_scores(b.logits, doc.score, doc.temperatures)
    correct = preds == np.asarray(b.labels)[:, None]
    outcome = evaluate_policy(scores, correct, MACS, doc.threshold_array)
    t = ev.target
    assert t.n == 2000 and t.accuracy == pytest.approx(outcome.accuracy)
    assert t.exit_shares == pytest.approx(outcome.shares)
    assert t.expected_macs == pytest.approx(outcome.expected_cost)
    assert t.last_exit_accuracy == pytest.approx(correct[:, -1].mean())
    assert t.drop == pytest.approx(t.last_exit_accuracy - t.accuracy)
    assert t.accuracy_ci[0] <= t.accuracy <= t.accuracy_ci[1]
    assert t.drop_ci[0] <= t.drop <= t.drop_ci[1]
    lo, hi = t.costs["macs"]["ci"]
    assert lo <= t.expected_macs <= hi
    # the reference is A's held-out part: exactly what solve reported for it
    r = ev.reference
    _, held = stratified_split(np.asarray(a.labels), doc.split["holdout"], doc.split["seed"])
    assert r.part == "held-out" and r.n == held.size == doc.split["n_holdout"]
    assert r.accuracy == pytest.approx(doc.holdout_accuracy)
    assert r.expected_macs == pytest.approx(doc.holdout["expected_macs"])
    assert ev.deltas["accuracy"] == pytest.approx(t.accuracy - r.accuracy)
    assert ev.deltas["costs"]["macs"]["ratio"] == pytest.approx(t.expected_macs / r.expected_macs)
    assert ev.data_relation == "other data"
    assert any("the data differ: the thresholds were solved on 'toy:clean'" in n for n in ev.notes)
    json.dumps(ev.to_dict(), allow_nan=False)
    assert ev.to_dict()["data_differ"] is True


def test_the_budget_breaks_where_cost_moves_with_the_data(tmp_path: Path, a_and_doc):
    _, doc = a_and_doc
    same_kind = evaluate_thresholds(make_run(tmp_path / "clean", 3000, 2, data="toy:clean-2"), doc)
    assert same_kind.budget is not None and same_kind.budget["status"] == "holds"
    unsure = evaluate_thresholds(make_run(tmp_path / "soft", 3000, 3, data="toy:soft", scale=0.3), doc)
    assert unsure.budget is not None
    assert unsure.budget["mean"] > unsure.budget["value"] and unsure.budget["status"] == "breaks"
    assert unsure.deltas["costs"]["macs"]["ratio"] > 1.5
    assert any("does not hold on run B" in n for n in unsure.notes)


def test_the_drop_bound_is_checked_when_one_is_given(tmp_path: Path, a_and_doc):
    _, doc = a_and_doc
    b = make_run(tmp_path / "B", 3000, 4, data="toy:clean-3")
    assert evaluate_thresholds(b, doc).drop_bound is None  # solved without max_drop, none given
    loose = evaluate_thresholds(b, doc, max_drop=0.5)
    assert loose.drop_bound is not None and loose.drop_bound["status"] == "holds"
    assert loose.drop_bound["losses"] == loose.target.losses
    tight = evaluate_thresholds(b, doc, max_drop=0.001)
    assert tight.drop_bound is not None and tight.drop_bound["status"] == "breaks"
    with pytest.raises(DyncalError, match=r"`max_drop` must be a fraction in \(0, 1\)"):
        evaluate_thresholds(b, doc, max_drop=1.5)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"sha": "bb" * 32}, r"collected with other weights \(bbbbbbbbbbbb\) than the thresholds' run"),
        ({"sha": None, "model": "other:net"}, r"with model 'other:net'.*no weights hash shows them the same"),
        ({"macs": [1e6, 2e6, 5e6]}, r"records other MACs per exit"),
    ],
)
def test_another_model_is_refused(tmp_path: Path, a_and_doc, kwargs, pattern):
    _, doc = a_and_doc
    b = make_run(tmp_path / "B", 500, 5, data="toy:other", **kwargs)
    with pytest.raises(DyncalError, match=pattern) as info:
        evaluate_thresholds(b, doc)
    assert "\n" not in str(info.value) and "solve on run" in str(info.value)


def test_other_k_or_input_shape_is_refused(tmp_path: Path, a_and_doc):
    a, doc = a_and_doc
    z, y = logits(100, 6)
    two = import_arrays(z[:, :2], y, tmp_path / "two", macs=MACS[:2], provenance=a.provenance)
    with pytest.raises(DyncalError, match="has K=2, C=4 but the thresholds' run has K=3, C=4"):
        evaluate_thresholds(two, doc)
    prov = replace(a.provenance, data="toy:big", extra={"input_shape": [1, 16, 16]})
    big = import_arrays(z, y, tmp_path / "big", macs=MACS, provenance=prov)
    with pytest.raises(DyncalError, match=r"inputs of shape \[1, 16, 16\], the thresholds' run \[1, 8, 8\]"):
        evaluate_thresholds(big, doc)


def test_how_sameness_and_data_are_described(tmp_path: Path):
    a = make_run(tmp_path / "a", 50, 0, data="d1", sha=None)
    b = make_run(tmp_path / "b", 50, 1, data="d1", sha=None)
    check = check_same_model(a, b)
    assert check.verified == ("model", "macs")
    assert data_relation(a, b) == "same data" and data_relation(a, a) == "same run"
    z, y = logits(50, 2)
    imported = [import_arrays(z, y, tmp_path / name, macs=None) for name in ("i1", "i2")]
    unchecked = check_same_model(imported[0], imported[1])
    assert unchecked.verified == () and "not checked" in unchecked.note
    assert data_relation(imported[0], imported[1]) == "same run"


def test_costs_come_from_a_when_b_was_not_profiled(tmp_path: Path, a_and_doc):
    _, doc = a_and_doc
    b = make_run(tmp_path / "B", 1000, 7, data="toy:new", macs=None)
    ev = evaluate_thresholds(b, doc)
    assert ev.target.expected_macs is not None
    assert any("run A's profile" in n for n in ev.notes)
    assert ev.model_check.verified == ("weights_sha256", "model")


def test_a_missing_reference_run_is_named(tmp_path: Path):
    a = make_run(tmp_path / "A", 800, 0, data="toy:clean")
    doc = ThresholdSolver("0.6x", method="optimal").fit(a).result_
    b = make_run(tmp_path / "B", 300, 1, data="toy:other")
    shutil.rmtree(a.path)
    with pytest.raises(DyncalError, match=r"the thresholds' run '.*A' cannot be opened .*; pass it as `reference`"):
        evaluate_thresholds(b, doc)
    again = make_run(tmp_path / "A2", 800, 9, data="toy:clean")
    with pytest.raises(DyncalError, match="solved on another run"):
        evaluate_thresholds(b, doc, reference=again)


@pytest.mark.integration
def test_the_demo_model_under_noise_costs_more_and_says_the_data_differ(tmp_path: Path):
    from dyncal.demo import pretrained, validation
    from dyncal.perturb import PerturbedDataset, parse_perturbation, perturbed_data_spec

    net = pretrained()
    clean = validation()

    def run_of(ds, name: str, data: str):
        x = torch.stack([ds[i][0] for i in range(len(ds))])
        with torch.inference_mode():
            z = torch.stack(list(net(x)), dim=1).numpy()
        y = np.array([int(ds[i][1]) for i in range(len(ds))])
        prov = Provenance("dyncal.demo:pretrained", None, data, "", "", "cpu")
        return import_arrays(z, y, tmp_path / name, macs=[2.0e5, 1.0e6, 4.0e6, 9.0e6], provenance=prov)

    a = run_of(clean, "A", "dyncal.demo:validation")
    doc = ThresholdSolver("0.3x", method="optimal").fit(a).result_
    (noise,) = parse_perturbation("gaussian_noise:0.5")
    noisy = PerturbedDataset(clean, noise, pixel_mean=0.5, pixel_std=0.5)
    b = run_of(noisy, "B", perturbed_data_spec("dyncal.demo:validation", noise))
    ev = evaluate_thresholds(b, doc)
    assert ev.data_relation == "other data" and "[perturbed gaussian_noise:0.5 seed 0]" in ev.notes[0]
    assert ev.target.accuracy < ev.reference.accuracy - 0.3
    assert ev.deltas["costs"]["macs"]["ratio"] > 1.5
    assert ev.model_check.verified == ("model", "macs")


def test_robustness_rows_name_each_perturbation(tmp_path: Path, a_and_doc):
    from dyncal.evaluate import robustness_rows
    from dyncal.perturb import Perturbation, perturbed_data_spec

    _, doc = a_and_doc
    noise = Perturbation("gaussian_noise", 0.5)
    soft = make_run(tmp_path / "soft", 2000, 8, data=perturbed_data_spec("toy:clean", noise), scale=0.3)
    other = make_run(tmp_path / "other", 2000, 9, data="toy:site-2")
    rows = robustness_rows([evaluate_thresholds(soft, doc, max_drop=0.5), evaluate_thresholds(other, doc)])
    assert [r["perturbation"] for r in rows] == ["gaussian_noise:0.5", None]
    assert rows[0]["budget"] == "breaks" and rows[0]["cost_ratio"] > 1.5 and rows[0]["drop_bound"] == "holds"
    assert rows[1]["drop_bound"] is None and rows[1]["budget"] == "holds"


def test_a_comparison_of_one_model_on_other_data_is_sent_to_evaluate(tmp_path: Path):
    from dyncal.evaluate import refuse_other_data

    a = make_run(tmp_path / "a", 100, 0, data="toy:clean")
    b = make_run(tmp_path / "b", 100, 1, data="toy:noisy")
    with pytest.raises(DyncalError, match=r"same model as run .* on other data .*dyncal evaluate .*b --thresholds"):
        refuse_other_data(a, b)
    refuse_other_data(a, make_run(tmp_path / "c", 100, 2, data="toy:clean"))  # same data: a comparison
    refuse_other_data(a, make_run(tmp_path / "d", 100, 3, data="toy:noisy", sha="cc" * 32))  # another model
