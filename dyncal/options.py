"""Options objects: one frozen dataclass per entry point, built once and passed on.

Each library entry point (``solve_run``, ``compute_frontier``, ``verify_run``, ``collect_run``,
``export_package``, ``build_report``, ``profile_run_full``) takes its options as one frozen
dataclass declared next to it, which validates its values when built (``__post_init__``,
raising :class:`~dyncal.errors.DyncalError`). Python callers may pass the same options as
keywords instead; :func:`options_from` turns either into the object, so no layer forwards a
list of keywords. The CLI builds the object from its own parameters (same names).
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from dyncal.errors import DyncalError, param

__all__ = [
    "MAX_REPEATS",
    "MAX_THREADS",
    "MAX_WORKERS",
    "options_from",
    "input_shape_of",
    "is_integer",
    "check_fraction",
    "check_flag",
    "check_seed",
    "check_at_least",
]

T = TypeVar("T")


def options_from(cls: type[T], options: T | None, fields: Mapping[str, Any], what: str) -> T:
    """``options``, or a ``cls`` built from keyword ``fields`` (not both).

    Args:
        cls: The options dataclass.
        options: An instance given as ``options=``, or None.
        fields: The keywords given instead.
        what: The entry point, for messages (``"report"``).

    Raises:
        DyncalError: Both given, a keyword that is no option, or a value the options refuse.

    Example:
        >>> from dyncal.calibrate.options import SolveOptions
        >>> options_from(SolveOptions, None, {"budget": "0.5x"}, "solve").budget
        '0.5x'
        >>> options_from(SolveOptions, None, {"budgt": "0.5x"}, "solve")
        Traceback (most recent call last):
        ...
        dyncal.errors.DyncalError: no solve option 'budgt'; solve options are: batch_size, budget, ...
    """
    if options is not None:
        if fields:
            raise DyncalError(
                f"give {what} options as options={cls.__name__}(...) or as keywords, not both: {sorted(fields)}"
            )
        return options
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(fields) - known)
    if unknown:
        raise DyncalError(f"no {what} option {unknown[0]!r}; {what} options are: {', '.join(sorted(known))}")
    return cls(**fields)


def input_shape_of(shape: Sequence[int] | None) -> tuple[int, ...] | None:
    """A per-sample input shape as a tuple, or a one-line error naming `` `input_shape` ``.

    Example:
        >>> input_shape_of([3, 8, 8])
        (3, 8, 8)
        >>> input_shape_of((3, 0))
        Traceback (most recent call last):
        ...
        dyncal.errors.DyncalError: `input_shape` must be positive integers per sample (e.g. 3,224,224), got [3, 0]
    """
    if shape is None:
        return None
    if not shape or any(int(d) < 1 for d in shape):
        raise DyncalError(
            f"{param('input_shape')} must be positive integers per sample (e.g. 3,224,224), got {list(shape)}"
        )
    return tuple(int(d) for d in shape)


def is_integer(value: object) -> bool:
    """Whether ``value`` is an integer (Python's or numpy's), not a bool.

    Example:
        >>> is_integer(3), is_integer(3.0), is_integer(True)
        (True, False, False)
    """
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_fraction(name: str, value: object, interval: str = "[0, 1)") -> None:
    """Refuse ``value`` unless it is a number in ``interval`` (``[0, 1)``, ``(0, 1)``, ``[0, 1]``).

    Example:
        >>> check_fraction("holdout", 0.5)
        >>> check_fraction("delta", 0.0, "(0, 1)")
        Traceback (most recent call last):
        ...
        dyncal.errors.DyncalError: `delta` must be a fraction in (0, 1), got 0.0
    """
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok:
        v = float(value)  # type: ignore[arg-type]
        ok = (0.0 < v if interval[0] == "(" else 0.0 <= v) and (v < 1.0 if interval[-1] == ")" else v <= 1.0)
    if not ok:
        shown = value if isinstance(value, numbers.Real) and not isinstance(value, bool) else repr(value)
        raise DyncalError(f"{param(name)} must be a fraction in {interval}, got {shown}")


def check_flag(name: str, value: object) -> None:
    """Refuse ``value`` unless it is True or False (a string such as ``"no"`` would count as true).

    Example:
        >>> check_flag("temperature", "yes")
        Traceback (most recent call last):
        ...
        dyncal.errors.DyncalError: `temperature` must be True or False, got 'yes'
    """
    if not isinstance(value, bool):
        raise DyncalError(f"{param(name)} must be True or False, got {value!r}")


MAX_REPEATS = 10_000
"""Most timed replicates or warm-up calls (more is a typo: it would run for hours)."""
MAX_THREADS = 1024
"""Most CPU threads a measurement may pin."""
MAX_WORKERS = 256
"""Most data-loading worker processes."""


def check_at_least(name: str, value: object, low: int, high: int | None = None) -> None:
    """Refuse ``value`` unless it is an integer of at least ``low`` (and at most ``high``).

    Example:
        >>> check_at_least("batch_size", 0, 1)
        Traceback (most recent call last):
        ...
        dyncal.errors.DyncalError: `batch_size` must be at least 1, got 0
        >>> check_at_least("repeats", 10**12, 1, MAX_REPEATS)
        Traceback (most recent call last):
        ...
        dyncal.errors.DyncalError: `repeats` must be at most 10000, got 1000000000000
    """
    if not is_integer(value):
        raise DyncalError(f"{param(name)} must be an integer of at least {low}, got {value!r}")
    if value < low:  # type: ignore[operator]
        raise DyncalError(f"{param(name)} must be at least {low}, got {value!r}")
    if high is not None and value > high:  # type: ignore[operator]
        raise DyncalError(f"{param(name)} must be at most {high}, got {value!r}")


def check_seed(name: str, value: object) -> None:
    """Refuse ``value`` unless it is a non-negative integer (the split seeds' rule).

    Example:
        >>> check_seed("seed", -1)
        Traceback (most recent call last):
        ...
        dyncal.errors.DyncalError: `seed` must be a non-negative integer, got -1
    """
    if not is_integer(value) or value < 0:  # type: ignore[operator]
        raise DyncalError(f"{param(name)} must be a non-negative integer, got {value!r}")
