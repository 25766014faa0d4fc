"""The Python entry points: reading a run needs numpy only; every public name resolves."""

from __future__ import annotations

import subprocess
import sys

import dyncal


def test_reading_runs_does_not_import_torch():
    code = "import sys, dyncal; dyncal.load_run; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_every_public_name_resolves_and_is_documented():
    for name in dyncal.__all__:
        obj = getattr(dyncal, name)
        if callable(obj):
            assert obj.__doc__, f"dyncal.{name} has no docstring"


def test_moved_names_keep_their_old_addresses():
    from dyncal.analysis import frontier
    from dyncal.artifacts import frontier as frontier_csv
    from dyncal.artifacts import thresholds
    from dyncal.calibrate import frontier as solved
    from dyncal.calibrate import policy

    assert frontier.compute_frontier is solved.compute_frontier is dyncal.compute_frontier
    assert frontier.oracle_at_budget is solved.oracle_at_budget
    assert frontier.frontier_columns is frontier_csv.frontier_columns
    assert frontier.write_frontier_csv is frontier_csv.write_frontier_csv
    for name in ("thresholds_from_json", "finite_thresholds", "score_range"):
        assert getattr(policy, name) is getattr(thresholds, name)
