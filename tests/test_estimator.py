"""ThresholdSolver: the estimator face of solve, equal to solve_run and to the exit rule."""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest

from dyncal.artifacts.run_import import import_arrays
from dyncal.calibrate import estimator
from dyncal.calibrate.estimator import ThresholdSolver
from dyncal.calibrate.options import SolveOptions
from dyncal.calibrate.solvers import solve_run
from dyncal.errors import DyncalError


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    rng = np.random.default_rng(7)
    y = rng.integers(0, 4, 600)
    z = rng.normal(0, 1, (600, 3, 4)) + np.eye(4)[y][:, None, :] * np.array([0.8, 1.8, 3.0])[None, :, None]
    return import_arrays(z.astype(np.float32), y, tmp_path_factory.mktemp("e") / "run", macs=[1e6, 2e6, 5e6])


@pytest.mark.parametrize("method", ["smoothed", "optimal", "geometric"])
def test_fit_equals_solve_run_and_predict_applies_the_exit_rule(run, method):
    solver = ThresholdSolver("0.5x", method=method, seed=3).fit(run)
    doc = solve_run(run, "0.5x", method=method, seed=3)
    assert solver.result_.to_dict() == doc.to_dict()
    exits, preds = solver.predict(np.asarray(run.logits))
    fit = np.array(sorted(set(range(run.n)) - set(_holdout_rows(run, seed=3))))
    shares = np.bincount(exits[fit], minlength=run.k) / fit.size
    np.testing.assert_allclose(shares, solver.exit_shares_)
    assert np.mean(preds[fit] == np.asarray(run.labels)[fit]) == pytest.approx(doc.calibration_accuracy)
    assert set(solver.path_["method"]) == {doc.method} and len(solver.path_) > 2


def _holdout_rows(run, seed):
    from dyncal.stats import stratified_split

    return stratified_split(np.asarray(run.labels), 0.5, seed=seed)[1]


def test_options_are_stored_untouched_and_validated_in_fit(run):
    solver = ThresholdSolver("0.01x")  # unreachable, but __init__ does not judge
    assert solver.get_params()["budget"] == "0.01x"
    with pytest.raises(DyncalError, match="budget"):
        solver.fit(run)
    with pytest.raises(DyncalError, match="not fitted"):
        ThresholdSolver("0.5x").predict(np.zeros((1, 3, 4)))
    with pytest.raises(DyncalError, match="no option 'budgit'"):
        ThresholdSolver().set_params(budgit="0.5x")
    fitted = ThresholdSolver().set_params(budget="0.6x").fit(run)
    with pytest.raises(DyncalError, match=r"shape \(N, 3, C\)"):
        fitted.predict(np.zeros((2, 2, 4)))


def test_the_parameters_are_solve_options_fields_with_their_defaults():
    options = dataclasses.fields(SolveOptions)
    params = inspect.signature(ThresholdSolver).parameters
    assert sorted(params) == sorted(f.name for f in options)
    assert {n: p.default for n, p in params.items()} == {f.name: f.default for f in options}
    assert ThresholdSolver().get_params() == {f.name: f.default for f in options}
    assert [n for n, p in params.items() if p.kind is not p.KEYWORD_ONLY] == ["budget"]


def test_clone_round_trips_and_set_params_changes_only_what_it_names():
    from sklearn.base import clone  # here, not at the top: importing scikit-learn costs every worker ~1 s

    solver = ThresholdSolver("0.4x", method="geometric", holdout=0.2, max_drop=0.01)
    twin = clone(solver)
    assert twin is not solver and twin.get_params() == solver.get_params()
    assert repr(twin) == "ThresholdSolver(holdout=0.2, budget='0.4x', method='geometric', max_drop=0.01)"
    assert twin.set_params(seed=4) is twin and twin.get_params() == {**solver.get_params(), "seed": 4}
    with pytest.raises(DyncalError, match="no option 'budgit'"):
        ThresholdSolver(budgit="0.5x")


def test_a_field_added_to_the_solve_options_becomes_a_parameter(monkeypatch):
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Wider(SolveOptions):
        patience: int = 3

    monkeypatch.setattr(estimator, "_FIELDS", dataclasses.fields(Wider))
    solver = ThresholdSolver("0.5x")
    assert solver.get_params()["patience"] == 3
    assert solver.set_params(patience=5).get_params()["patience"] == 5
    assert repr(solver) == "ThresholdSolver(budget='0.5x', patience=5)"
