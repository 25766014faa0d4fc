"""Every rule a value must meet, declared once.

A value enters dyncal through an options object, a public function or the CLI; each of
those checks it with :func:`check` by its name, so one name has one rule and one message
wherever it is given. Code past the boundary trusts its typed inputs. The CLI reads bounds
from here too (the largest ``--batch-size``), so Python callers and the command line refuse
the same values.

Example:
    >>> check("max_drop", 0.02)
    0.02
    >>> check("batch_size", 10**9)
    Traceback (most recent call last):
    ...
    dyncal.errors.DyncalError: `batch_size` must be at most 65536, got 1000000000
    >>> check("repeats", 2, rule="profile.repeats")
    Traceback (most recent call last):
    ...
    dyncal.errors.DyncalError: `repeats` must be at least 3 to give a spread, got 2
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, TypeVar

from dyncal.errors import DyncalError, param

__all__ = [
    "Constraint",
    "CONSTRAINTS",
    "MAX_BATCH_SIZE",
    "MAX_REPEATS",
    "MAX_THREADS",
    "MAX_WORKERS",
    "check",
    "is_integer",
]

V = TypeVar("V")

MAX_BATCH_SIZE = 65536
"""Largest batch size a measurement accepts (a bigger batch is a typo, not a measurement)."""
MAX_REPEATS = 10_000
"""Most timed replicates or warm-up calls (more is a typo: it would run for hours)."""
MAX_THREADS = 1024
"""Most CPU threads a measurement may pin."""
MAX_WORKERS = 256
"""Most data-loading worker processes."""


def is_integer(value: object) -> bool:
    """Whether ``value`` is an integer (Python's or numpy's), not a bool.

    Example:
        >>> is_integer(3), is_integer(3.0), is_integer(True)
        (True, False, False)
    """
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(float(value))


@dataclass(frozen=True)
class Constraint:
    """The rule of one named value.

    Attributes:
        kind: ``integer``, ``fraction`` (a number in ``interval``), ``number`` (a real in
            ``[low, high]``) or ``flag`` (True or False).
        low: Smallest integer or number allowed (None: no bound).
        high: Largest integer or number allowed (None: no bound).
        interval: A fraction's interval: ``[0, 1)``, ``(0, 1)`` or ``[0, 1]``.
        why: Said after the lower bound when it is refused (``to give a spread``).
    """

    kind: Literal["integer", "fraction", "number", "flag"]
    low: float | None = None
    high: float | None = None
    interval: str = "[0, 1)"
    why: str = ""

    def check(self, name: str, value: V, error: type[DyncalError] = DyncalError) -> V:
        """``value`` unchanged, or ``error`` with one line naming ``name``."""
        problem = self._problem(value)
        if problem:
            shown = value if _is_real(value) else repr(value)
            raise error(f"{param(name)} must be {problem}, got {shown}")
        return value

    def _problem(self, value: object) -> str | None:
        if self.kind == "flag":
            return None if isinstance(value, bool) else "True or False"
        if self.kind == "fraction":
            if _is_real(value):
                v = float(value)  # type: ignore[arg-type]
                low_ok = 0.0 < v if self.interval[0] == "(" else 0.0 <= v
                if low_ok and (v < 1.0 if self.interval[-1] == ")" else v <= 1.0):
                    return None
            return f"a fraction in {self.interval}"
        ok_type = is_integer(value) if self.kind == "integer" else _is_real(value)
        if self.kind == "integer" and self.low == 0 and self.high is None:
            return None if ok_type and value >= 0 else "a non-negative integer"  # type: ignore[operator]
        if not ok_type:
            return f"an integer of at least {self.low:g}" if self.kind == "integer" else "a number"
        if self.low is not None and value < self.low:  # type: ignore[operator]
            return f"at least {self.low:g}" + (f" {self.why}" if self.why else "")
        if self.high is not None and value > self.high:  # type: ignore[operator]
            return f"at most {self.high:g}"
        return None


_INTEGER_RULES = {
    "batch_size": (1, MAX_BATCH_SIZE),
    "limit": (1, None),
    "repeats": (1, MAX_REPEATS),
    "warmup": (0, MAX_REPEATS),
    "threads": (1, MAX_THREADS),
    "workers": (0, MAX_WORKERS),
    "seed": (0, None),
    "max_block_calls": (1, None),
    "seq_len": (1, None),
}

CONSTRAINTS: Mapping[str, Constraint] = MappingProxyType(
    {
        **{name: Constraint("integer", low, high) for name, (low, high) in _INTEGER_RULES.items()},
        # A profile's replicates give a median and a spread: fewer than 3 give no spread.
        "profile.repeats": Constraint("integer", 3, MAX_REPEATS, why="to give a spread"),
        "min_block_ms": Constraint("number", 0.0, None),
        "holdout": Constraint("fraction", interval="[0, 1)"),
        "max_drop": Constraint("fraction", interval="[0, 1)"),
        "delta": Constraint("fraction", interval="(0, 1)"),
        "temperature": Constraint("flag"),
        # An exact (Clopper-Pearson) bound certifies a drop above 0 only, at a rate the traffic can sit below.
        "certified.max_drop": Constraint("fraction", interval="(0, 1)"),
        "certified.rate": Constraint("fraction", interval="[0, 1)"),
    }
)
"""Every named rule. A key ``verb.name`` is the rule of ``name`` where that verb needs more."""


def check(name: str, value: V, *, rule: str | None = None, error: type[DyncalError] = DyncalError) -> V:
    """``value`` when it meets the rule of ``name`` (or of ``rule``), else a one-line ``error``.

    Args:
        name: The value's name as the user gave it (shown as `` `name` ``).
        value: The value.
        rule: The rule's key when it is not ``name`` (``profile.repeats``).
        error: The error class (a :class:`~dyncal.errors.DyncalError`).

    Example:
        >>> check("delta", 0.0)
        Traceback (most recent call last):
        ...
        dyncal.errors.DyncalError: `delta` must be a fraction in (0, 1), got 0.0
        >>> check("seed", -1)
        Traceback (most recent call last):
        ...
        dyncal.errors.DyncalError: `seed` must be a non-negative integer, got -1
    """
    return CONSTRAINTS[rule or name].check(name, value, error)
