"""Messages name parameters: `max_drop` for a Python caller, --max-drop on the command line.

The library never spells a flag (issue 10): it names what the caller passed by its parameter
name in backticks, and the CLI renders each name as the running verb's own flag
(:func:`dyncal.cli.params.flag_of`, with :data:`dyncal.cli.params._PARAMETER_FLAGS` for the few library
names that differ from the verb's). The guard at the end keeps bare flags out of library errors.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest
import typer
from conftest import assert_clean_error

from dyncal.artifacts.outputs import check_output_file
from dyncal.artifacts.run_import import import_arrays
from dyncal.calibrate.solvers import solve_run
from dyncal.cli import app
from dyncal.cli.params import _PARAMETER_FLAGS, flag_of
from dyncal.errors import DyncalError, param, render_params
from dyncal.stats import stratified_split

DYNCAL = Path(__file__).parent.parent / "dyncal"


@pytest.fixture
def run(tmp_path):
    """A two-exit run with MAC counts (imported, no model)."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    z = np.eye(3)[y][:, None, :] * [[1.0], [3.0]] + rng.normal(0, 1, (300, 2, 3))
    return import_arrays(z, y, tmp_path / "run", macs=[1e6, 4e6])


def _commands() -> dict[str, typer.core.TyperCommand]:
    return typer.main.get_command(app).commands  # type: ignore[attr-defined,no-any-return]


def _ctx(verb: str) -> typer.Context:
    root = typer.Context(typer.main.get_command(app), info_name="dyncal")
    return typer.Context(_commands()[verb], parent=root, info_name=verb)


# ----------------------------------------------------------------- Python callers read parameter names


def test_a_python_caller_reads_the_parameter_name(run, tmp_path):
    with pytest.raises(DyncalError, match=r"^`max_drop` .*, got 1.5$"):
        solve_run(run, None, max_drop=1.5)
    with pytest.raises(DyncalError, match=r"^`holdout` .*, got 1.5$"):
        stratified_split(np.zeros(10, dtype=np.int64), 1.5)
    foreign = tmp_path / "notes.txt"
    foreign.write_text("mine")
    with pytest.raises(DyncalError, match=r"`overwrite` only replaces dyncal's own outputs: choose another `path`"):
        check_output_file(foreign, overwrite=True)
    assert foreign.read_text() == "mine"


# ----------------------------------------------------------------- the CLI shows the verb's flags


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["solve", "{run}", "--max-drop", "1.5", "--out", "{tmp}/t.json"], r"--max-drop must be a fraction in \["),
        (
            ["report", "{run}", "--max-drop", "50", "--out", "{tmp}/r.pdf"],
            r"--max-drop must be a fraction in \[0, 1\], got 50; fractions, not percent",
        ),
        (["frontier", "{run}", "--holdout", "1.5", "--out", "{tmp}/f.csv"], r"--holdout must be a fraction in \["),
        # report's library parameter is out_pdf: mapped to --out by _PARAMETER_FLAGS
        (["report", "{run}", "--budget", "0.5x", "--out", "{tmp}/r.txt"], r"--out must name a \.pdf file"),
        # dyncal.artifacts.outputs names the output `path`: mapped to --out by _PARAMETER_FLAGS
        (
            ["solve", "{run}", "--budget", "0.5x", "--out", "{tmp}/notes.txt", "--overwrite"],
            r"--overwrite only replaces dyncal's own outputs: choose another --out,",
        ),
    ],
)
def test_the_cli_shows_the_verbs_flag(cli, run, tmp_path, args, pattern):
    foreign = tmp_path / "notes.txt"
    foreign.write_text("mine")
    before = sorted(p.name for p in tmp_path.iterdir())
    res = cli(*(a.format(run=run.path, tmp=tmp_path) for a in args))
    assert_clean_error(res, pattern)
    assert "`" not in res.stderr  # every parameter was rendered as a flag
    assert sorted(p.name for p in tmp_path.iterdir()) == before and foreign.read_text() == "mine"


# ----------------------------------------------------------------- flag_of and render_params


def test_flag_of_uses_the_verbs_own_declaration():
    solve, profile, report = _ctx("solve"), _ctx("profile"), _ctx("report")
    assert flag_of(solve, "max_drop") == "--max-drop"
    assert flag_of(solve, "temperature") == "--temperature"  # not its --no-temperature twin
    assert flag_of(solve, "json") == "--json"  # the Python parameter json_
    assert flag_of(solve, "run") == "RUN"  # an argument has no flag
    assert flag_of(profile, "batch_sizes") == "--batch-size"  # through _PARAMETER_FLAGS
    assert flag_of(report, "out_pdf") == "--out"
    assert flag_of(report, "min_accuracy") == "--min-accuracy"
    assert flag_of(solve, "min_accuracy") == "dyncal report --min-accuracy"  # solve has no such option
    assert flag_of(solve, "no_such_parameter") is None
    assert flag_of(None, "max_drop") is None


def test_every_mapped_flag_exists():
    names = {p.name for cmd in _commands().values() for p in cmd.params}
    for library, cli_name in _PARAMETER_FLAGS.items():
        assert cli_name in names, (library, cli_name)
        assert library not in names, f"{library} is already a CLI parameter: the entry would hide it"


def test_render_params_edge_cases():
    flags = {"max_drop": "--max-drop", "delta": "--delta"}.get
    assert render_params("", flags) == ""
    assert render_params("no parameters here", flags) == "no parameters here"
    assert render_params("`max_drop` or `delta`, not `max_drop`", flags) == "--max-drop or --delta, not --max-drop"
    # unknown names keep their backticks; backticks around non-identifiers are left alone
    assert render_params("`n_bins` and `max_drop`", flags) == "`n_bins` and --max-drop"
    assert render_params("`0.5x`, `a b`, ``, `max_drop", flags) == "`0.5x`, `a b`, ``, `max_drop"
    assert render_params(f"{param('delta')}=0.1", flags) == "--delta=0.1"
    assert render_params("`max_drop` must be below 1", lambda _: None) == "`max_drop` must be below 1"


def test_a_parameter_the_running_verb_lacks_is_shown_with_the_verb_that_has_it():
    from dyncal.measurement import NOISE_ADVICE as advice

    assert render_params(advice, lambda n: flag_of(_ctx("demo"), n)) == (
        "run on a quiet machine, pin one thread (dyncal profile --threads 1), or take more replicates "
        "(dyncal profile --repeats)"
    )
    assert render_params("`n_bins` 2", lambda n: flag_of(_ctx("plot"), n)) == "`n_bins` 2"  # no verb sets it


def test_warnings_and_errors_of_the_cli_never_show_a_backticked_name(tmp_path, cli):
    """A warning on a verb without the flag names the verb that has it (a tiny run: the split warns)."""
    rng = np.random.default_rng(0)
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 2])  # class 2 is too small to split
    logits = rng.normal(size=(10, 2, 3)).astype(np.float32)
    run = tmp_path / "run"
    import_arrays(logits, labels, run, macs=[1.0, 2.0])
    res = cli("plot", run, "--kind", "frontier", "--out", tmp_path / "f.png", "--budget", "1.5x")
    assert res.exit_code == 0, res.output
    assert "too small to split at dyncal solve --holdout 0.5" in res.stderr
    assert "`" not in res.stderr


# ----------------------------------------------------------------- the guard


_FLAG = re.compile(r"--[a-z][a-z0-9-]*")
_COMMAND = re.compile(r"dyncal [a-z]+ ")
_EXEMPT = DYNCAL / "cli"  # the command line spells flags: that is its job


def _raised_texts(call: ast.Call):
    """The text of every string literal in a raise's call; an f-string's fields read as {}."""
    parts = {id(v) for node in ast.walk(call) if isinstance(node, ast.JoinedStr) for v in node.values}
    for node in ast.walk(call):
        if id(node) in parts:
            continue
        if isinstance(node, ast.JoinedStr):
            yield "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value


def bare_flags(source: str) -> list[tuple[int, str]]:
    """``(line, flag)`` for each flag in a raised error's text not part of a ``dyncal VERB ...`` command."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            for text in _raised_texts(node.exc):
                found += [
                    (node.lineno, m.group(0)) for m in _FLAG.finditer(text) if not _COMMAND.search(text[: m.start()])
                ]
    return found


def test_the_guard_finds_bare_flags():
    assert bare_flags('raise DyncalError(f"--max-drop must be below 1, got {x}")') == [(1, "--max-drop")]
    assert bare_flags('raise RunError("choose another " "--out")') == [(1, "--out")]
    assert bare_flags('raise E(f"solve again: dyncal solve {run} --budget ... --out t.json")') == []
    assert bare_flags('raise E("`max_drop` must be below 1")') == []
    assert bare_flags('msg = "--max-drop"') == []  # only what is raised


def test_library_errors_name_parameters_not_flags():
    modules = [p for p in sorted(DYNCAL.rglob("*.py")) if not p.is_relative_to(_EXEMPT)]
    assert len(modules) > 20
    offenders = [
        f"{p.relative_to(DYNCAL.parent)}:{line}: {flag}"
        for p in modules
        for line, flag in bare_flags(p.read_text(encoding="utf-8"))
    ]
    assert not offenders, "library errors spell flags; name the parameter (`name`, errors.param):\n" + "\n".join(
        offenders
    )


def test_the_demo_refuses_a_bad_budget_before_writing_anything(tmp_path, cli):
    out = tmp_path / "demo"
    assert_clean_error(cli("demo", "--out", out, "--budget", "fast"), r"budget")
    assert not out.exists() and list(tmp_path.iterdir()) == []
