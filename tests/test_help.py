"""Every verb's help reads at 80 columns: no line past it, no word split, each verb's own text."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from dyncal.cli import app

VERBS = sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def _help(*args: str, columns: int = 80) -> str:
    res = CliRunner().invoke(app, [*args, "-h"], env={"COLUMNS": str(columns)})
    assert res.exit_code == 0, res.output
    return res.output


@pytest.mark.parametrize("verb", ["", *VERBS])
def test_help_fits_80_columns(verb):
    text = _help(*([verb] if verb else []))
    too_long = [line for line in text.splitlines() if len(line) > 80]
    assert not too_long, too_long
    if not verb:
        return
    # an option's text starts beside it or on its own line below, in a column wide enough to read
    starts = {len(line) - len(line.lstrip()) for line in text.splitlines() if line.startswith(" " * 20)}
    assert max(starts, default=0) <= 80 - 40, starts
    # paragraphs are re-wrapped: a line ends early only where the next word would not fit (no hard breaks)
    body = text.split("Arguments:")[0].split("Options:")[0].splitlines()
    for line, after in zip(body, body[1:], strict=False):
        if line.strip() and after.strip():
            assert len(line) + 1 + len(after.split()[0]) > 70, (line, after)


def test_choices_are_never_split_mid_word():
    text = _help("solve")
    assert "[optimal|smoothed|geometric]" in text and "[maxprob|margin|entropy]" in text
    assert "[frontier|latency|exits|reliability]" in _help("plot")


def test_verify_help_carries_no_profile_text():
    text = " ".join(_help("verify").split())
    assert not re.search(r"profile (keeps|then)", text), text
    assert "--threads" in text and "the run's profile timed with" in text
    profile = " ".join(_help("profile").split())
    assert "Default 1: steady figures on a busy or shared machine" in profile  # the choice is stated


def test_help_is_plain_text_without_boxes():
    assert not set("╭╰│") & set(_help("report"))
