"""The ``dyncal`` typer application, whose usage errors are one line like every other user mistake."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import typer
from typer.core import TyperGroup

# click's UsageError, the base of every command-line mistake (unknown option, missing or malformed value);
# typer vendors click, so it is found through the public typer.BadParameter
_UsageError: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


@contextlib.contextmanager
def _one_line_usage_errors(ctx: Any = None) -> Iterator[None]:
    """A usage error becomes one ``error:`` line and exit status 1, as every other user mistake.

    (Typer would print a multi-line box and exit with status 2.) Asking for help with no
    arguments stays help.
    """
    try:
        yield
    except _UsageError as e:
        if type(e).__name__ == "NoArgsIsHelpError":
            raise
        where = getattr(e, "ctx", None) or ctx
        command = getattr(where, "command_path", "") or "dyncal"
        message = " ".join(e.format_message().split())  # type: ignore[attr-defined]
        typer.echo(f"error: {message.rstrip('.')}; see '{command} --help'", err=True)
        raise typer.Exit(code=1) from None


class _Verbs(TyperGroup):
    """dyncal's verbs, whose usage errors are one line (:func:`_one_line_usage_errors`)."""

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        with _one_line_usage_errors():
            return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx: Any) -> Any:
        with _one_line_usage_errors(ctx):
            return super().invoke(ctx)


app = typer.Typer(
    cls=_Verbs,
    name="dyncal",
    help="Measure, calibrate and verify early-exit (multi-exit) classifiers.",
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    add_completion=False,
    no_args_is_help=True,
    # plain help: paragraphs re-wrapped to the terminal (80 columns at most), one option per
    # entry with its text beside it or below, no boxes or metavar columns that squeeze the
    # text into a narrow column at 80 columns (tests/test_help.py)
    rich_markup_mode=None,
)
