"""The closed sets of names dyncal accepts: solver methods, scores, p-values, figures, layouts.

Each is a string enum (what ``enum.StrEnum`` is on Python 3.11, spelled out for 3.10), so a member
*is* its name (``Method.OPTIMAL == "optimal"``; JSON and f-strings show ``optimal``) and plain
strings keep working wherever one is expected.
The options objects and the command line share these; :meth:`Choice.parse` turns a string
into a member or refuses it in one line that names the parameter. This module imports
nothing heavy: the CLI declares its options with it at startup.
"""

from __future__ import annotations

import enum
from typing import TypeVar

from dyncal.errors import DyncalError, param

__all__ = ["Choice", "Method", "Score", "PValue", "FigureKind", "Layout", "DEFAULT_METHOD", "DEFAULT_RISK_METHOD"]


C = TypeVar("C", bound="Choice")


class Choice(str, enum.Enum):
    """A closed set of names; members compare equal to, print, show and serialise as their names."""

    def __str__(self) -> str:
        return str(self.value)

    def __repr__(self) -> str:
        # as the plain string it stands for, so messages quoting a value read the same either way
        return repr(str(self.value))

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    def __hash__(self) -> int:
        return str.__hash__(self)

    @classmethod
    def parse(cls: type[C], value: str, name: str) -> C:
        """The member named ``value``, or a one-line error naming the parameter ``name``.

        Example:
            >>> Method.parse("geometric", "method") is Method.GEOMETRIC
            True
            >>> Method.parse("magic", "method")
            Traceback (most recent call last):
            ...
            dyncal.errors.DyncalError: `method` must be one of optimal, smoothed, geometric; got 'magic'
        """
        try:
            return cls(value)
        except ValueError:
            raise DyncalError(f"{param(name)} must be one of {', '.join(cls)}; got {str(value)!r}") from None


class Method(Choice):
    """Threshold solvers (:mod:`dyncal.calibrate.search` describes each)."""

    OPTIMAL = "optimal"
    SMOOTHED = "smoothed"
    GEOMETRIC = "geometric"


DEFAULT_METHOD = Method.OPTIMAL
"""The solver ``dyncal solve --budget`` uses unless told otherwise: the least held-out regret across monotone
and non-monotone models (``benchmarks/heldout_comparison.md``)."""

DEFAULT_RISK_METHOD = Method.SMOOTHED
"""The solver that orders risk control's candidates unless told otherwise (``dyncal solve --max-drop``).

Its candidates disagree with the last exit on fewer samples, which is what the binomial test
counts: ``optimal``'s, tuned to accuracy, fix and break more samples and stop the test early
(on the demo only the last exit alone passes with ``optimal``; 0.14x with ``smoothed``)."""


class Score(Choice):
    """Confidence scores (:mod:`dyncal.calibrate.scores`)."""

    MAXPROB = "maxprob"
    MARGIN = "margin"
    ENTROPY = "entropy"


class PValue(Choice):
    """P-values of risk control: exact binomial or Hoeffding-Bentkus."""

    BINOMIAL = "binomial"
    HB = "hb"


class FigureKind(Choice):
    """The report's figures that ``dyncal plot`` exports alone."""

    FRONTIER = "frontier"
    LATENCY = "latency"
    EXITS = "exits"
    RELIABILITY = "reliability"


class Layout(Choice):
    """Array layout of imported logits: ``(N, K, C)`` or MSDNet-style ``(K, N, C)``."""

    NKC = "nkc"
    KNC = "knc"
