"""Issue 17: the report warns on page 1 when, held out, an exit alone or geometric beats the thresholds.

A synthetic run whose halves disagree: on the fit half exit 2 is right on 90% of samples and
exit 1 on 60%, on the held-out half the other way round. ``dyncal solve``'s guard sees only
the fit half, so the operating point leans on exit 2; held out, exit 1 alone is far better.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dyncal.artifacts.run_import import import_arrays
from dyncal.calibrate.prepare import prepare_run
from dyncal.reports.decision import ExitOutcome
from dyncal.reports.rivals import held_out_rivals, rival_warnings
from dyncal.stats import stratified_split

pypdf = pytest.importorskip("pypdf")
N, C = 1200, 4


@pytest.fixture(scope="module")
def disagreeing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(7)
    labels = np.arange(N) % C
    fit, held = stratified_split(labels, 0.5, seed=0)
    p_right = np.empty((N, 2))
    p_right[fit] = (0.6, 0.9)
    p_right[held] = (0.9, 0.6)
    right = rng.uniform(size=(N, 2)) < p_right
    logits = rng.normal(0, 0.3, size=(N, 2, C))  # confidence says nothing
    for k in range(2):
        wrong = (labels + 1 + rng.integers(0, C - 1, N)) % C
        top = np.where(right[:, k], labels, wrong)
        logits[np.arange(N), k, top] += 2.0
    path = tmp_path_factory.mktemp("rivals") / "run"
    return import_arrays(logits.astype(np.float32), labels, path, macs=[1e6, 2e6]).path


def test_held_out_rivals_are_the_exits_alone_within_the_budget_and_geometric(disagreeing: Path) -> None:
    from dyncal.artifacts.run import load_run

    prep = prepare_run(load_run(disagreeing))
    held = prep.holdout_idx
    everyone_at_2 = {"budget": {"unit": "macs", "fraction": 1.0}}
    right = prep.correct[held]
    outcome = ExitOutcome(np.ones(len(held), int), right[:, 1], right[:, 1], True)
    rivals = held_out_rivals(prep, everyone_at_2, outcome)
    assert [r.name for r in rivals] == ["exit 1 alone", "exit 2 alone", "geometric"]
    first, second = rivals[0], rivals[1]
    assert first.accuracy == pytest.approx(right[:, 0].mean()) and first.cost_fraction == 0.5
    assert first.significantly_better and first.p_value < 1e-6
    assert second.difference == 0.0 and second.p_value == 1.0 and not second.significantly_better
    (warning,) = [w for w in rival_warnings(rivals, float(right[:, 1].mean())) if "exit 1 alone" in w]
    assert warning.startswith("held out, exit 1 alone is more accurate than these thresholds: ")
    # at half the budget only exit 1 fits; with nothing held out there is nothing to compare
    half = held_out_rivals(prep, {"budget": {"unit": "macs", "fraction": 0.5}}, outcome)
    assert [r.name for r in half][0] == "exit 1 alone" and "exit 2 alone" not in [r.name for r in half]
    fitted_only = ExitOutcome(outcome.exits, outcome.correct, outcome.correct, False)
    assert held_out_rivals(prep, everyone_at_2, fitted_only) == []


def test_the_report_warns_on_page_one(disagreeing: Path, tmp_path: Path, cli) -> None:
    out = tmp_path / "r.pdf"
    res = cli("report", disagreeing, "--budget", "1x", "--out", out, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    warnings = [n for n in doc["notes"] if n.startswith("held out, exit 1 alone is more accurate")]
    assert len(warnings) == 1, doc["notes"]
    page1 = " ".join(pypdf.PdfReader(str(out)).pages[0].extract_text().split())
    assert "held out, exit 1 alone is more accurate than these thresholds" in page1


def test_the_report_says_when_solve_returned_a_rival(disagreeing: Path, tmp_path: Path, cli) -> None:
    # geometric has no answer at exactly exit 1's cost: the guard returns exit 1 alone, and page 1 says so
    out = tmp_path / "r.pdf"
    res = cli("report", disagreeing, "--budget", "0.5x", "--method", "geometric", "--out", out, "--json")
    assert res.exit_code == 0, res.output
    notes = json.loads(res.stdout)["notes"]
    assert any(n.startswith("the thresholds are exit 1 alone, not geometric's own answer: ") for n in notes), notes
    page1 = " ".join(pypdf.PdfReader(str(out)).pages[0].extract_text().split())
    assert "the thresholds are exit 1 alone, not geometric's own answer" in page1
