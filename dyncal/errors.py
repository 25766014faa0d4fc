"""The errors dyncal raises for user mistakes.

Every message says what is wrong, the value seen, and what to do. The CLI prints the
message as one line and exits with status 1; anything that is not a ``DyncalError`` is a
bug and keeps its traceback.

Messages name what the caller passed by its **parameter name** in backticks
(:func:`param`): a Python caller reads `` `max_drop` ``, and the command line shows the
flag of the verb that ran (``--max-drop``, :func:`render_params`). The library never
spells a flag; the one mapping from parameters to flags is the CLI's own declaration.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")

__all__ = [
    "DyncalError",
    "one_line",
    "ModelError",
    "DataError",
    "RunError",
    "BudgetError",
    "ProfileError",
    "first_line",
    "describe",
    "short_list",
    "user_call",
    "param",
    "render_params",
]


class DyncalError(Exception):
    """Base class of every error caused by input the user can fix.

    Example:
        >>> try:
        ...     raise DyncalError("budget '0.1x' is below the cheapest exit; try 0.25x")
        ... except DyncalError as e:
        ...     print(e)
        budget '0.1x' is below the cheapest exit; try 0.25x
    """


class ModelError(DyncalError):
    """The model cannot be loaded, or its outputs break the multi-exit contract."""


class DataError(DyncalError):
    """The data set cannot be loaded, or its items or labels are malformed."""


class RunError(DyncalError):
    """A run directory is missing, incomplete, malformed or would be overwritten."""


class BudgetError(DyncalError):
    """A compute budget cannot be parsed or cannot be met."""


class ProfileError(DyncalError):
    """The model cannot be partitioned into stages or measured on the asked device."""


def first_line(e: BaseException, limit: int = 300) -> str:
    r"""The first line of an exception's message (at most ``limit`` characters), for one-line errors.

    A user's model or data set may raise anything with any message; dyncal quotes only its
    first line so that its own error stays one line.

    Example:
        >>> first_line(ValueError("bad shape\n  more detail"))
        'bad shape'
        >>> first_line(KeyError())
        'KeyError'
    """
    lines = str(e).strip().splitlines()
    return (lines[0] if lines else type(e).__name__)[:limit]


def describe(e: BaseException, limit: int = 300) -> str:
    r"""``TypeName: first line`` of an exception (just the type when it has no message), for one-line errors.

    Example:
        >>> describe(ValueError("bad shape\n  more detail")), describe(KeyError())
        ('ValueError: bad shape', 'KeyError')
    """
    return f"{type(e).__name__}: {first_line(e, limit)}" if str(e).strip() else type(e).__name__


def short_list(items: Sequence[str], limit: int = 6) -> str:
    """The first ``limit`` items joined by commas, then how many more there are: a long list in one line.

    Example:
        >>> short_list(["a", "b", "c"], 2)
        'a, b and 1 more'
    """
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def user_call(fn: Callable[[], T], failed: str, error: type[DyncalError] = DyncalError) -> T:
    """``fn()``, where ``fn`` runs the user's code (a model, a factory, stages).

    A :class:`DyncalError` passes through; anything else the user's code raises becomes one
    line, ``error(f"{failed}: {describe(e)}")``, chained to the original.

    Example:
        >>> user_call(lambda: 1 / 0, "the model failed at batch size 4")
        Traceback (most recent call last):
        ...
        dyncal.errors.DyncalError: the model failed at batch size 4: ZeroDivisionError: division by zero
    """
    try:
        return fn()
    except DyncalError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's code may raise anything
        raise error(f"{failed}: {describe(e)}") from e


_PARAM = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")


def param(name: str) -> str:
    """Name the parameter ``name`` in a message: `` `name` `` for Python, its flag on the CLI.

    Example:
        >>> f"{param('max_drop')} must be below 1, got 1.5"
        '`max_drop` must be below 1, got 1.5'
    """
    return f"`{name}`"


_LINE_BREAKS = {c: repr(chr(c))[1:-1] for c in (0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x85, 0x2028, 0x2029)}


def one_line(message: str) -> str:
    """``message`` with every character that splits a line escaped: an error stays one line whatever a file named.

    Example:
        >>> text = "key " + chr(30) + " refused"
        >>> len(text.splitlines()), len(one_line(text).splitlines())
        (2, 1)
    """
    return message.translate(_LINE_BREAKS)


def render_params(message: str, flag_of: Callable[[str], str | None]) -> str:
    """``message`` with every `` `parameter` `` replaced by ``flag_of(parameter)``.

    A name ``flag_of`` does not know (it returns None) keeps its backticks.

    Example:
        >>> flags = {"max_drop": "--max-drop"}
        >>> render_params("`max_drop` must be below 1; see `n_bins`", flags.get)
        '--max-drop must be below 1; see `n_bins`'
    """

    def swap(m: re.Match[str]) -> str:
        flag = flag_of(m.group(1))
        return m.group(0) if flag is None else flag

    return _PARAM.sub(swap, message)
