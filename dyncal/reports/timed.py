"""How much of a run ``dyncal verify`` timed, and what to do when that is what leaves a verdict open.

verify times batches until its time bound (``--max-seconds``, all batch sizes together)
has passed; the rest are replayed untimed. A speed-up measured on part of the batches
carries the sampling noise of *that part*: when its interval straddles a requirement
because too few batches were timed, more timing would decide it, so the criterion is
**inconclusive** with the remedy "time more: --max-seconds N", never a failure
(:meth:`TimedCoverage.seconds_to_decide` estimates ``N`` from the rate verify measured).

numpy only, like the rest of the report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dyncal.artifacts.verify import VerifyResult

__all__ = ["TimedCoverage", "MARGIN"]

MARGIN = 1.5
"""Batches asked for beyond the estimate: an interval narrows as 1/sqrt(batches) only on average."""


@dataclass(frozen=True)
class TimedCoverage:
    """What verify timed at one device and batch size.

    Attributes:
        key: ``"<device>/b<batch>"``.
        samples_timed: Samples in the timed batches.
        samples: Samples verify replayed (all of them are checked for agreement).
        batches_timed: Batches timed.
        batches: Batches the replayed samples make at this batch size.
        seconds: Seconds spent timing at this key.
        max_seconds: verify's time bound, all batch sizes together.
        batch_sizes: How many batch sizes shared that bound.

    Example:
        >>> c = TimedCoverage("cpu/b1", 232, 797, 232, 797, 3.3, 10.0, 3)
        >>> c.text()
        '232 of 797 samples timed (time bound 10 s)'
        >>> c.remedy(1.63, (1.38, 2.02), 1.5)
        'time more: --max-seconds 40'
    """

    key: str
    samples_timed: int
    samples: int
    batches_timed: int
    batches: int
    seconds: float
    max_seconds: float
    batch_sizes: int = 1

    @property
    def stopped_early(self) -> bool:
        """Whether the time bound left batches untimed."""
        return self.batches_timed < self.batches

    @classmethod
    def of(cls, verify: VerifyResult, key: str) -> TimedCoverage | None:
        """The coverage verify recorded for ``key`` (None when it recorded none)."""
        settings = verify.settings
        coverage = settings.get("coverage")
        timing = verify.timing(key)
        if not isinstance(coverage, Mapping) or timing is None or not isinstance(coverage.get(key), Mapping):
            return None
        c: Mapping[str, Any] = coverage[key]
        return cls(
            key=key,
            samples_timed=int(c.get("samples_timed", 0)),
            samples=int(verify.n),
            batches_timed=int(c.get("batches_timed", timing.batches)),
            batches=int(c.get("batches", timing.batches)),
            seconds=float(c.get("seconds", 0.0)),
            max_seconds=float(settings.get("max_seconds", 0.0)),
            batch_sizes=max(1, len(coverage)),
        )

    def text(self) -> str:
        """How many samples were timed, for people.

        Example:
            >>> TimedCoverage("cpu/b32", 797, 797, 25, 25, 1.0, 10.0).text()
            'all 797 samples timed'
        """
        if not self.stopped_early:
            return f"all {self.samples:,} samples timed"
        return f"{self.samples_timed:,} of {self.samples:,} samples timed (time bound {self.max_seconds:g} s)"

    def seconds_to_decide(self, value: float, interval: tuple[float, float], required: float) -> float:
        """The ``verify --max-seconds`` that would time enough batches to put ``interval`` on one side of ``required``.

        The interval's half-width on the side facing ``required`` shrinks as one over the
        square root of the batches timed; the batches that bring it to the distance between
        ``value`` and ``required`` (times :data:`MARGIN`, at most every batch) take the
        seconds per batch verify measured, and the bound is shared by every batch size.
        The result is rounded up to 10 s and is always above the bound that was used.
        """
        low, high = interval
        width = value - low if value >= required else high - value
        distance = abs(value - required)
        batches = float(self.batches)
        if distance > 0 and width > 0:
            batches = min(batches, math.ceil(self.batches_timed * MARGIN * (width / distance) ** 2))
        per_batch = self.seconds / max(1, self.batches_timed)
        needed = max(batches * per_batch * self.batch_sizes, 1.5 * self.max_seconds)
        return float(10 * math.ceil(needed / 10))

    def remedy(self, value: float, interval: tuple[float, float], required: float) -> str:
        """What to run to decide the criterion: ``"time more: --max-seconds N"``."""
        return f"time more: --max-seconds {self.seconds_to_decide(value, interval, required):g}"
