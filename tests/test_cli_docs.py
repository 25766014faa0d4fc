"""Every verb has help with an example, and the README documents it."""

from __future__ import annotations

from pathlib import Path

import pytest

from dyncal.cli import app

README = (Path(__file__).parents[1] / "README.md").read_text()
COMMANDS = [c.name or c.callback.__name__ for c in app.registered_commands]


def test_expected_verbs_exist():
    assert {"collect", "import", "info", "profile", "solve", "frontier", "report", "plot", "verify", "demo"} <= set(
        COMMANDS
    )


@pytest.mark.parametrize("name", COMMANDS)
def test_command_has_help_with_example_and_is_in_readme(cli, name):
    res = cli(name, "--help")
    assert res.exit_code == 0, res.output
    assert "Example" in res.stdout, f"'dyncal {name} --help' shows no example"
    assert f"dyncal {name}" in README, f"README does not mention 'dyncal {name}'"


def test_short_help_flag(cli):
    assert cli("-h").exit_code == 0
    assert "collect" in cli("-h").stdout


def test_no_command_prints_usage(cli):
    res = cli()
    assert "Usage" in res.output
