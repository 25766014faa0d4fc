"""The errors dyncal raises for user mistakes.

Every message says what is wrong, the value seen, and what to do. The CLI prints the
message as one line and exits with status 1; anything that is not a ``DyncalError`` is a
bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "DyncalError",
    "ModelError",
    "DataError",
    "RunError",
    "BudgetError",
    "ProfileError",
    "first_line",
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
