"""One rule per named value: every options object, public function and the CLI refuse the same values."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dyncal.calibrate.options import SolveOptions
from dyncal.calibrate.risk import learn_then_test
from dyncal.cli.params import timed_batch_sizes
from dyncal.constraints import CONSTRAINTS, check
from dyncal.errors import DyncalError, ProfileError
from dyncal.monitor.plan import rollout_plan
from dyncal.reports.operating import ReportOptions
from dyncal.stats import stratified_split
from dyncal.verbs.collect import CollectOptions
from dyncal.verbs.profile import ProfileOptions
from dyncal.verbs.verify import VerifyOptions

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).resolve().parents[1] / "dyncal"


def _checked_rules() -> set[str]:
    """The rule keys every ``check(name, ..., rule=...)`` call in dyncal/ uses."""
    used: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "check":
                rule = next((k.value for k in node.keywords if k.arg == "rule"), node.args[0] if node.args else None)
                if isinstance(rule, ast.Constant) and isinstance(rule.value, str):
                    used.add(rule.value)
    return used


def test_every_checked_name_is_declared_and_every_rule_is_used() -> None:
    used = _checked_rules()
    assert used, "the scan found no check() call"
    assert used <= set(CONSTRAINTS), f"undeclared: {sorted(used - set(CONSTRAINTS))}"
    assert set(CONSTRAINTS) <= used, f"declared, never checked: {sorted(set(CONSTRAINTS) - used)}"


@given(value=st.one_of(st.integers(-(10**12), 10**12), st.floats(allow_nan=True), st.booleans(), st.text(max_size=3)))
def test_a_rule_accepts_exactly_the_values_in_its_range(value: object) -> None:
    for key, rule in CONSTRAINTS.items():
        is_num = isinstance(value, (int, float)) and not isinstance(value, bool)
        if rule.kind == "flag":
            want = isinstance(value, bool)
        elif rule.kind == "fraction":
            v = float(value) if is_num else math.nan  # type: ignore[arg-type]
            low_ok = 0 < v if rule.interval[0] == "(" else 0 <= v
            want = is_num and low_ok and (v < 1 if rule.interval[-1] == ")" else v <= 1)
        else:
            in_type = isinstance(value, int) if rule.kind == "integer" else is_num and not math.isnan(float(value))  # type: ignore[arg-type]
            want = (
                is_num
                and in_type
                and (rule.low is None or value >= rule.low)  # type: ignore[operator]
                and (rule.high is None or value <= rule.high)  # type: ignore[operator]
            )
        if want:
            assert check("x", value, rule=key) is value
        else:
            with pytest.raises(DyncalError, match=r"^`x` must be .*, got ") as e:
                check("x", value, rule=key)
            assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "build",
    [
        lambda: ProfileOptions(batch_sizes=(10**9,)),
        lambda: VerifyOptions(batch_sizes=(1, 10**9)),
        lambda: CollectOptions(data_spec="x.npz", batch_size=10**9),
        lambda: SolveOptions(budget="0.5x", batch_size=10**9),
        lambda: ReportOptions(batch_size=10**9),
    ],
)
def test_python_callers_meet_the_cli_batch_bound(build) -> None:
    """A batch the CLI refuses is refused from Python too (the bound lived only in the CLI)."""
    with pytest.raises(DyncalError, match=r"batch_size.* must be at most 65536"):
        build()
    with pytest.raises(DyncalError, match=r"--batch-size must be positive integers up to 65536"):
        timed_batch_sizes(str(10**9))


@pytest.mark.parametrize(
    ("call", "name", "bad"),
    [
        (lambda: SolveOptions(max_drop=1.0), "max_drop", 1.0),
        (
            lambda: learn_then_test([], np.zeros((0, 2)), np.zeros((0, 2), bool), max_drop=1.0, delta=0.1),
            "max_drop",
            1.0,
        ),
        (lambda: SolveOptions(budget="0.5x", delta=0.0), "delta", 0.0),
        (lambda: rollout_plan(0.01, 0.0, shadow=0.1), "delta", 0.0),
        (lambda: stratified_split(np.zeros(4), 1.0), "holdout", 1.0),
        (lambda: stratified_split(np.zeros(4), 0.5, seed=-1), "seed", -1),
        (lambda: VerifyOptions(repeats=0), "repeats", 0),
        (lambda: VerifyOptions(threads=0), "threads", 0),
        (lambda: CollectOptions(data_spec="x.npz", workers=-1), "workers", -1),
    ],
)
def test_one_name_one_message_wherever_it_enters(call, name: str, bad: object) -> None:
    """Each entry point's refusal is the declared rule's message, word for word."""
    with pytest.raises(DyncalError) as declared:
        check(name, bad)
    with pytest.raises(DyncalError) as got:
        call()
    assert str(got.value) == str(declared.value)


def test_profile_repeats_need_a_spread_and_keep_the_profile_error_class() -> None:
    with pytest.raises(ProfileError, match=r"`repeats` must be at least 3 to give a spread, got 2"):
        ProfileOptions(repeats=2)
    with pytest.raises(ProfileError, match=r"`threads` must be at most 1024"):
        ProfileOptions(threads=5000)
