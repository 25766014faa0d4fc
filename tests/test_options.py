"""Options objects and closed choices: one object per entry point, validated once; one-line CLI errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import typer
from conftest import assert_clean_error
from hypothesis import given
from hypothesis import strategies as st

from dyncal.artifacts.run_import import import_arrays
from dyncal.calibrate.options import FrontierOptions, SolveOptions
from dyncal.calibrate.solvers import solve_run
from dyncal.choices import FigureKind, Layout, Method, PValue, Score
from dyncal.cli import app
from dyncal.cli.params import flag_of, options
from dyncal.errors import DyncalError, render_params
from dyncal.reports.operating import ReportOptions
from dyncal.verbs.collect import CollectOptions
from dyncal.verbs.export import ExportOptions
from dyncal.verbs.profile import ProfileOptions
from dyncal.verbs.verify import VerifyOptions


@pytest.fixture
def small_run(tmp_path: Path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    z = np.eye(3)[y][:, None, :] * [[1.0], [3.0]] + rng.normal(0, 1, (200, 2, 3))
    return import_arrays(z, y, tmp_path / "run", macs=[1e6, 4e6])


# ----------------------------------------------------------------- CLI: a bad choice is one line


@pytest.mark.parametrize(
    ("args", "flag", "choices"),
    [
        (["solve", "{run}", "--budget", "0.5x", "--out", "{out}", "--method", "magic"], "--method", Method),
        (["solve", "{run}", "--budget", "0.5x", "--out", "{out}", "--score", "confidence"], "--score", Score),
        (["frontier", "{run}", "--out", "{out}", "--score", "Margin"], "--score", Score),
        (["frontier", "{run}", "--out", "{out}", "--methods", "optimal,magic"], "--methods", Method),
        (["report", "{run}", "--out", "{out}", "--method", ""], "--method", Method),
        (["plot", "{run}", "--kind", "pie", "--out", "{out}"], "--kind", FigureKind),
        (["import", "{npz}", "--out", "{out}", "--layout", "nck"], "--layout", Layout),
    ],
)
def test_bad_choice_is_one_line_exit_1_and_writes_nothing(cli, small_run, tmp_path, args, flag, choices):
    npz = tmp_path / "logits.npz"
    np.savez(npz, logits=np.zeros((4, 2, 3)), labels=np.zeros(4, int))
    out = tmp_path / "out.file"
    before = sorted(p.name for p in tmp_path.iterdir())
    res = cli(*[a.format(run=small_run.path, out=out, npz=npz) for a in args])
    assert_clean_error(res, rf"^error: {flag} must be one of {', '.join(choices)}; got '")
    assert "╭" not in res.output and "Usage" not in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def _verb(name: str) -> typer.core.TyperCommand:
    return typer.main.get_command(app).commands[name]  # type: ignore[attr-defined,no-any-return]


def test_a_good_choice_reaches_the_library_as_its_member(cli, small_run, tmp_path):
    out = tmp_path / "t.json"
    argv = [str(small_run.path), "--budget", "0.6x", "--method", "geometric", "--score", "margin", "--out", str(out)]
    res = cli("solve", *argv)
    assert res.exit_code == 0, res.output
    # the options object the verb hands solve_run, built from the same arguments as the verb builds it
    with _verb("solve").make_context("solve", argv) as ctx:
        asked = options(ctx, SolveOptions)
    assert asked.method is Method.GEOMETRIC and asked.score is Score.MARGIN
    doc = solve_run(small_run, options=asked)
    assert (out.read_text().count('"geometric"'), doc.method, doc.score) == (1, "geometric", "margin")


def test_option_values_refused_by_the_options_object_name_the_flag(cli, small_run, tmp_path):
    out = tmp_path / "t.json"
    assert_clean_error(
        cli("solve", small_run.path, "--max-drop", "1.5", "--out", out), r"^error: --max-drop must be a fraction"
    )
    assert_clean_error(
        cli("solve", small_run.path, "--out", out), r"give a --budget \(e.g. 0.6x\) or a risk target --max-drop"
    )
    assert not out.exists()


def test_each_meaning_of_batch_size_has_its_own_help():
    group = typer.main.get_command(app)

    def help_of(verb: str) -> str:
        (param,) = [p for p in group.commands[verb].params if p.name == "batch_size"]  # type: ignore[attr-defined]
        assert param.opts == ["--batch-size"]
        return str(param.help)

    assert help_of("collect").startswith("Samples per forward")
    assert help_of("profile") == help_of("verify") and help_of("verify").startswith("Batch sizes to time")
    latency = {help_of(v) for v in ("solve", "frontier", "report", "plot")}
    assert len(latency) == 1 and latency.pop().startswith("Latency column's batch size")


# ----------------------------------------------------------------- options objects


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: SolveOptions(budget="0.5x", method="magic"), r"`method` must be one of optimal, smoothed"),
        (lambda: SolveOptions(budget="0.5x", score="conf"), r"`score` must be one of maxprob, margin, entropy"),
        (lambda: SolveOptions(budget="0.5x", pvalue="z"), r"`pvalue` must be one of binomial, hb"),
        (lambda: SolveOptions(), r"give a `budget`"),
        (lambda: SolveOptions(max_drop=1.0), r"`max_drop` must be a fraction in \[0, 1\)"),
        (lambda: SolveOptions(max_drop=0.01, delta=0.0), r"`delta` must be a fraction in \(0, 1\)"),
        (lambda: SolveOptions(budget="0.5x", batch_size=0), r"`batch_size` must be at least 1"),
        (lambda: FrontierOptions(n_budgets=1), r"`n_budgets` must be from 2"),
        (lambda: FrontierOptions(methods=("optimal", "fast")), r"`methods` must be one of .*got 'fast'"),
        (lambda: VerifyOptions(repeats=0), r"`repeats` must be at least 1"),
        (lambda: VerifyOptions(batch_sizes=()), r"`batch_sizes` is empty"),
        (lambda: VerifyOptions(max_seconds=0), r"`max_seconds` must be positive"),
        (lambda: CollectOptions(data_spec="x.npz", checkpoint_s=-1), r"`checkpoint_s` must be >= 0"),
        (lambda: CollectOptions(data_spec="x.npz", batch_size=0), r"`batch_size` must be at least 1"),
        (lambda: ExportOptions(input_shape=(3, 0)), r"`input_shape` must be positive integers"),
        # solve and frontier: what the split, the solver and risk control would refuse later
        (lambda: SolveOptions(budget="0.5x", holdout=2), r"^`holdout` .*, got 2$"),
        (lambda: SolveOptions(budget="0.5x", holdout="0.5"), r"^`holdout` .*, got '0.5'$"),
        (lambda: FrontierOptions(holdout=float("nan")), r"^`holdout` .*, got nan$"),
        (lambda: SolveOptions(budget="0.5x", temperature="yes"), r"^`temperature` .*, got 'yes'$"),
        (lambda: SolveOptions(budget="0.5x", seed=-1), r"^`seed` .*, got -1$"),
        (lambda: FrontierOptions(seed=1.5), r"^`seed` .*, got 1.5$"),
        (lambda: SolveOptions(budget="0.5x", delta=1.0), r"^`delta` .*, got 1.0$"),
        (lambda: SolveOptions(max_drop=float("nan")), r"^`max_drop` .*, got nan$"),
        (lambda: SolveOptions(budget="half"), r"^cannot read `budget` 'half'"),
        (lambda: SolveOptions(budget="0.5x", batch_size=1.5), r"^`batch_size` must be an integer of at least 1"),
        (lambda: FrontierOptions(n_budgets=10_001), r"^`n_budgets` .*, got 10001$"),
        (lambda: FrontierOptions(n_budgets=4.5), r"^`n_budgets` .*, got 4.5$"),
        (lambda: FrontierOptions(methods="fast"), r"^`methods` must be one of .*got 'fast'$"),
        # profile: the latency settings and rows to re-run, by parameter name
        (lambda: ProfileOptions(repeats=2), r"^`repeats` .*, got 2$"),
        (lambda: ProfileOptions(warmup=-1), r"^`warmup` .*, got -1$"),
        (lambda: ProfileOptions(check_rows=-1), r"^`check_rows` .*, got -1$"),
    ],
)
def test_options_refuse_bad_values_in_one_line(build, match):
    with pytest.raises(DyncalError, match=match) as info:
        build()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"max_drop": 2}, r"^`max_drop` .*, got 2; fractions, not percent"),
        ({"min_accuracy": -0.1}, r"^`min_accuracy` .*, got -0.1$"),
        ({"min_accuracy": 0.9, "max_drop": 0.01}, r"^give `min_accuracy` or `max_drop`, not both"),
        ({"min_speedup": -1}, r"^`min_speedup` must be a positive factor"),
        ({"method": "foo"}, r"^`method` must be one of optimal, smoothed, geometric; got 'foo'$"),
        ({"holdout": 3}, r"^`holdout` .*, got 3$"),
        ({"seed": -2}, r"^`seed` .*, got -2$"),
        ({"temperature": "yes"}, r"^`temperature` .*, got 'yes'$"),
        ({"batch_size": 0}, r"^`batch_size` .*, got 0$"),
        ({"device": 0}, r"^`device` .*, got 0$"),
        ({"budget": "fast"}, r"^cannot read `budget` 'fast'"),
        ({"budget": "0.5x", "thresholds": "t.json"}, r"^give `budget` or `thresholds`, not both"),
        ({"thresholds": "t.json", "method": "optimal"}, r"^`thresholds` fixes the method.*leave out `method`$"),
        ({"thresholds": "t.json", "holdout": 0.3, "seed": 1}, r"leave out `holdout`, `seed`$"),
    ],
)
def test_report_options_refuse_each_bad_value_when_built(fields, match):
    with pytest.raises(DyncalError, match=match) as info:
        ReportOptions(**fields)
    assert "\n" not in str(info.value)


def test_report_options_hold_members_and_a_single_name_or_path_is_one():
    opts = ReportOptions(method="geometric", compare="other_run")
    assert opts.method is Method.GEOMETRIC and f"{opts.method}" == "geometric" and opts.compare == ("other_run",)
    assert ReportOptions().method is None  # the report's default solver
    assert FrontierOptions(methods="geometric").methods == (Method.GEOMETRIC,)
    assert ProfileOptions(devices="cpu").devices == ("cpu",)


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["--max-drop", "2"], r"^error: --max-drop must be a fraction in \[0, 1\], got 2; fractions, not percent"),
        (["--min-speedup", "0"], r"^error: --min-speedup must be a positive factor"),
        (["--budget", "half"], r"^error: cannot read --budget 'half'"),
    ],
)
def test_demo_refuses_a_bad_value_before_any_work(cli, tmp_path, args, pattern):
    out = tmp_path / "x"
    assert_clean_error(cli("demo", "--out", out, *args), pattern)
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["profile", "{run}", "--repeats", "1"], "--repeats"),
        (["profile", "{run}", "--warmup", "-1"], "--warmup"),
        (["profile", "{run}", "--check-rows", "-1"], "--check-rows"),
        (["profile", "{run}", "--threads", "0"], "--threads"),
        (["frontier", "{run}", "--out", "{out}", "--n-budgets", "1"], "--n-budgets"),
        (["frontier", "{run}", "--out", "{out}", "--batch-size", "0"], "--batch-size"),
        (["solve", "{run}", "--budget", "0.5x", "--out", "{out}", "--batch-size", "0"], "--batch-size"),
        (["report", "{run}", "--out", "{out}", "--batch-size", "-2"], "--batch-size"),
        (["plot", "{run}", "--kind", "frontier", "--out", "{out}.png", "--dpi", "10"], "--dpi"),
        (["verify", "{run}", "--thresholds", "{out}", "--repeats", "0"], "--repeats"),
        (["verify", "{run}", "--thresholds", "{out}", "--limit", "0"], "--limit"),
        (["verify", "{run}", "--thresholds", "{out}", "--max-seconds", "0"], "--max-seconds"),
        (["collect", "--model", "m:f", "--data", "d:f", "--out", "{out}", "--batch-size", "0"], "--batch-size"),
        (["collect", "--model", "m:f", "--data", "d:f", "--out", "{out}", "--workers", "-1"], "--workers"),
        (["collect", "--model", "m:f", "--data", "d:f", "--out", "{out}", "--limit", "0"], "--limit"),
        (["collect", "--model", "m:f", "--data", "d:f", "--out", "{out}", "--checkpoint-every", "-1"], "--checkpoint"),
        # huge values would hang or overflow, NaN would pass a comparison: refused too
        (["profile", "{run}", "--repeats", "1000000000000"], "--repeats"),
        (["profile", "{run}", "--warmup", "1000000000000"], "--warmup"),
        (["profile", "{run}", "--threads", "1000000000000"], "--threads"),
        (["verify", "{run}", "--thresholds", "{out}", "--repeats", "1000000000000"], "--repeats"),
        (["verify", "{run}", "--thresholds", "{out}", "--threads", "1000000000000"], "--threads"),
        (["collect", "--model", "m:f", "--data", "d:f", "--out", "{out}", "--workers", "1000000000000"], "--workers"),
        (["collect", "--model", "m:f", "--data", "d:f", "--out", "{out}", "--checkpoint-every", "nan"], "--checkpoint"),
        (["solve", "{run}", "--budget", "0x", "--out", "{out}"], "--budget"),
        (["collect", "--model", "m:f", "--data", "imagefolder:/x", "--out", "{out}", "--std", "nan,1,1"], "--mean"),
        (["collect", "--model", "m:f", "--data", "imagefolder:/x", "--out", "{out}", "--crop", "0"], "need 1 <= --cr"),
    ],
)
def test_a_value_below_its_bound_is_one_line_exit_1_naming_the_flag(cli, small_run, tmp_path, args, flag):
    """Bounds are the options objects' to check: the CLI prints their one line, never a usage box."""
    out = tmp_path / "out.file"
    before = sorted(p.name for p in tmp_path.iterdir())
    res = cli(*[a.format(run=small_run.path, out=out) for a in args])
    assert_clean_error(res, rf"^error: {flag}")
    assert "╭" not in res.output and "Usage" not in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_profile_setting_errors_show_the_flag(cli, small_run):
    # the library's message, rendered, shows the same flags as the command line
    with _verb("profile").make_context("profile", [str(small_run.path)]) as ctx:
        for fields, flag in (
            ({"repeats": 1}, "--repeats"),
            ({"warmup": -1}, "--warmup"),
            ({"check_rows": -1}, "--check-rows"),
        ):
            with pytest.raises(DyncalError) as info:
                ProfileOptions(**fields)
            shown = render_params(str(info.value), lambda n: flag_of(ctx, n))
            assert shown.startswith(flag + " ") and "`" not in shown, shown


def test_options_are_frozen_and_hold_members():
    opts = SolveOptions(budget="0.5x", method="optimal", pvalue="hb")
    assert (type(opts.method), type(opts.pvalue), type(opts.score)) == (Method, PValue, Score)
    with pytest.raises(AttributeError):
        opts.method = Method.GEOMETRIC  # type: ignore[misc]


def test_keywords_and_options_object_give_the_same_result_but_not_both(small_run):
    by_keywords = solve_run(small_run, "0.6x", method="optimal", holdout=0.3, seed=2)
    by_object = solve_run(small_run, options=SolveOptions(budget="0.6x", method="optimal", holdout=0.3, seed=2))
    assert by_keywords.to_dict() == by_object.to_dict()
    with pytest.raises(DyncalError, match=r"not both"):
        solve_run(small_run, "0.6x", options=SolveOptions(budget="0.6x"))
    with pytest.raises(DyncalError, match=r"no solve option 'methd'"):
        solve_run(small_run, "0.6x", methd="optimal")


@given(st.text(max_size=12))
def test_choice_parse_accepts_exactly_the_members(text):
    if text in set(Method):
        assert Method.parse(text, "method") is Method(text)
    else:
        with pytest.raises(DyncalError, match=r"^`method` must be one of") as info:
            Method.parse(text, "method")
        assert "\n" not in str(info.value) or "\n" in text
