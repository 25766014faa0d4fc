"""Every verb has help with an example, and the README documents it."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import typer

from dyncal.cli import app
from dyncal.cli.params import with_options

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


def test_a_shared_option_block_is_spliced_after_the_named_parameter():
    def block(a: int = 1, b: str = "b") -> None:
        """Two options."""

    @with_options(block, after="x")
    def verb(x: int, y: int = 0, **shared: object) -> dict[str, object]:
        return shared

    assert list(inspect.signature(verb).parameters) == ["x", "a", "b", "y"]
    assert verb(x=1, a=2, b="c", y=3) == {"a": 2, "b": "c"}


@pytest.mark.parametrize(
    ("verb", "after", "block"),
    [
        ("solve", "method", ["score", "temperature", "holdout", "seed", "device", "batch_size", "max_drop"]),
        ("frontier", "methods", ["score", "temperature", "holdout", "seed", "device", "batch_size", "overwrite"]),
        ("report", "min_speedup", ["device", "batch_size", "title"]),
        ("plot", "budget", ["device", "batch_size", "method"]),
        ("profile", "threads", ["model", "weights", "model_path", "input_shape"]),
        ("verify", "repeats", ["model", "weights", "model_path", "data"]),
        ("export", "out", ["model", "weights", "model_path", "stages"]),
    ],
)
def test_shared_options_stand_where_the_verb_lists_them(verb, after, block):
    names = [p.name for p in typer.main.get_command(app).commands[verb].params]
    at = names.index(after) + 1
    assert names[at : at + len(block)] == block
