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
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from dyncal.errors import DyncalError, param

__all__ = ["options_from", "input_shape_of"]

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
