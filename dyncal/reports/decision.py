"""Go/no-go criteria: what was asked, what was measured, and a verdict that load cannot flip.

A criterion is ``pass``, ``fail`` or ``inconclusive``. Accuracy criteria carry sampling
noise only (which samples were held out): they pass when their whole 95% interval clears
the requirement and fail otherwise. Without a held-out split (no interval) the point
estimate decides, and the report says so.

A latency criterion (the speed-up in ms) also carries *timing* noise: replicates of the
same batch differ, more so on a busy machine. It comes with three 95% intervals around
one estimate ``v``: ``S`` from sampling noise alone, ``T`` from timing noise alone and
``C`` from both. For a requirement ``value >= r`` (mirrored for ``<=``):

* PASS when the interval that carries both kinds of noise clears ``r``:
  ``min(C.low, S.low, T.low) >= r`` (never narrower than either part alone);
* FAIL when timing noise cannot rescue it: the whole interval is below ``r``
  (``max(C.high, S.high, T.high) < r``), or the sampling-only interval fails even when
  moved up by the most favourable timing noise, ``S.low + max(0, T.high - v) < r``;
* INCONCLUSIVE otherwise: timing noise alone decides (typically ``S`` clears ``r`` but
  ``C`` straddles it).

A measured speed-up for which ``dyncal verify`` stopped at its time bound before timing
every batch is *measurement-limited*: its sampling noise is that of the few batches timed,
which more timing removes. Unless it passes, or its whole interval is below ``r``, it is
INCONCLUSIVE with the remedy "time more: --max-seconds N"
(:class:`dyncal.reports.timed.TimedCoverage`), never FAIL.

PASS needs ``S.low >= r`` and FAIL implies ``S.low < r``, so for the same estimate and
sampling interval no amount of timing noise turns one into the other: load on the machine
widens ``T`` and ``C`` and can make a PASS or a FAIL inconclusive, never the opposite.
Without timing noise (``T = [v, v]``, ``C = S``) the rule is the sampling-only one: pass
iff ``S.low >= r``.

The decision is NO-GO when any criterion fails, else INCONCLUSIVE when any is
inconclusive, else GO.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dyncal.errors import DyncalError, param
from dyncal.reports.timed import TimedCoverage
from dyncal.stats import bootstrap_interval

__all__ = [
    "PASS",
    "FAIL",
    "INCONCLUSIVE",
    "Criterion",
    "Requirements",
    "ExitOutcome",
    "SpeedupEstimate",
    "bootstrap_interval",
    "criterion_status",
    "judged_criterion",
    "decide",
    "judge",
    "speedup_estimate",
]

PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"
_TOL = 1e-12

Interval = tuple[float, float]


@dataclass(frozen=True)
class Requirements:
    """What a user asked of the early-exit model (all optional; fractions, not percent).

    Attributes:
        min_accuracy: Held-out accuracy must be at least this (in [0, 1]).
        max_drop: Accuracy lost against the last exit must be at most this (in [0, 1]).
        min_speedup: Cost of the full model on every sample divided by the expected
            early-exit cost must be at least this (> 0); judged in ms when a latency key
            is chosen, else in MACs.

    Example:
        >>> Requirements(min_accuracy=0.9).any
        True
    """

    min_accuracy: float | None = None
    max_drop: float | None = None
    min_speedup: float | None = None

    @property
    def any(self) -> bool:
        """Whether any criterion was given."""
        return any(v is not None for v in (self.min_accuracy, self.max_drop, self.min_speedup))

    def validate(self) -> Requirements:
        """Check ranges; return ``self``.

        Raises:
            DyncalError: Both accuracy criteria, a percentage where a fraction is
                expected, or a non-positive speed-up.
        """
        if self.min_accuracy is not None and self.max_drop is not None:
            raise DyncalError(
                f"give `min_accuracy` or `max_drop`, not both (got {self.min_accuracy} and {self.max_drop})"
            )
        for name, v in ((param("min_accuracy"), self.min_accuracy), (param("max_drop"), self.max_drop)):
            if v is None:
                continue
            if not math.isfinite(v) or v < 0 or v > 1:
                hint = f"; fractions, not percent: did you mean {v / 100:g}?" if 1 < v <= 100 else ""
                raise DyncalError(f"{name} must be a fraction in [0, 1], got {v:g}{hint}")
        if self.min_speedup is not None and (not math.isfinite(self.min_speedup) or self.min_speedup <= 0):
            raise DyncalError(f"`min_speedup` must be a positive factor (e.g. 1.5 for 1.5x), got {self.min_speedup:g}")
        return self


def _iv(v: Any) -> Interval | None:
    return None if v is None else (float(v[0]), float(v[1]))


@dataclass(frozen=True)
class Criterion:
    """One judged requirement.

    Attributes:
        name: ``"accuracy"``, ``"accuracy_drop"`` or ``"speedup"``.
        value: The measured value (a fraction, or a factor for speed-up).
        interval: 95% interval ``(low, high)`` carrying every kind of noise known (sampling,
            and timing for latency), or None when nothing was held out.
        required: The requirement's threshold.
        comparison: ``">="`` or ``"<="``: how ``value`` must compare to ``required``.
        status: ``"pass"``, ``"fail"`` or ``"inconclusive"`` (see the module docstring).
        cost: For ``speedup``, the cost it is measured in: ``"macs"`` or a latency key.
        description: What the value is, for people.
        interval_sampling: 95% interval from sampling noise alone (latency criteria).
        interval_timing: 95% interval from timing noise alone (latency criteria).
        timing_spread: Relative spread (IQR / median) of the timings behind the value.
        source: For ``speedup``: ``"macs"``, ``"measured"`` (a real early exit timed by
            ``dyncal verify``) or ``"predicted"`` (from the profiled stage times).
        remedy: What to run to decide an inconclusive criterion that more measurement
            would decide (``"time more: --max-seconds 60"``), else None.

    Example:
        >>> c = Criterion("accuracy", 0.95, (0.93, 0.97), 0.9, ">=", PASS)
        >>> c.passed, c.to_dict()["status"]
        (True, 'pass')
    """

    name: str
    value: float
    interval: Interval | None
    required: float
    comparison: str
    status: str
    cost: str | None = None
    description: str = ""
    interval_sampling: Interval | None = None
    interval_timing: Interval | None = None
    timing_spread: float | None = None
    source: str | None = None
    remedy: str | None = None

    @property
    def passed(self) -> bool:
        """Whether the requirement is shown to be met (status ``pass``)."""
        return self.status == PASS

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (``passed`` kept for readers of older documents)."""
        return {
            "name": self.name,
            "value": self.value,
            "interval": None if self.interval is None else list(self.interval),
            "required": self.required,
            "comparison": self.comparison,
            "passed": self.passed,
            "status": self.status,
            "cost": self.cost,
            "source": self.source,
            "interval_sampling": None if self.interval_sampling is None else list(self.interval_sampling),
            "interval_timing": None if self.interval_timing is None else list(self.interval_timing),
            "timing_spread": self.timing_spread,
            "description": self.description,
            "remedy": self.remedy,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Criterion:
        """Build from :meth:`to_dict` output (a document without ``status`` reads ``passed``)."""
        status = d.get("status")
        if status not in (PASS, FAIL, INCONCLUSIVE):
            status = PASS if d.get("passed") else FAIL
        spread = d.get("timing_spread")
        return cls(
            name=str(d["name"]),
            value=float(d["value"]),
            interval=_iv(d.get("interval")),
            required=float(d["required"]),
            comparison=str(d["comparison"]),
            status=str(status),
            cost=d.get("cost"),
            description=str(d.get("description", "")),
            interval_sampling=_iv(d.get("interval_sampling")),
            interval_timing=_iv(d.get("interval_timing")),
            timing_spread=None if spread is None else float(spread),
            source=d.get("source"),
            remedy=None if d.get("remedy") is None else str(d["remedy"]),
        )


@dataclass(frozen=True)
class ExitOutcome:
    """Per-sample outcome of the operating point on the rows it is judged on.

    Attributes:
        exits: ``(n,)`` exit index taken (0 is exit 1).
        correct: ``(n,)`` whether the early-exit prediction is right.
        last_correct: ``(n,)`` whether the last exit's prediction is right.
        held_out: Whether the rows were held out of fitting the thresholds.
    """

    exits: np.ndarray
    correct: np.ndarray
    last_correct: np.ndarray
    held_out: bool

    @property
    def n(self) -> int:
        """Number of rows judged."""
        return int(self.exits.shape[0])

    def shares(self, k: int) -> np.ndarray:
        """``(k,)`` share of rows leaving at each exit."""
        return np.bincount(self.exits, minlength=k) / max(self.n, 1)

    def counts(self, k: int) -> np.ndarray:
        """``(k,)`` rows leaving at each exit."""
        return np.bincount(self.exits, minlength=k)

    def accuracy_per_exit(self, k: int) -> np.ndarray:
        """``(k,)`` accuracy of the rows leaving at each exit (NaN where none)."""
        n_k = np.bincount(self.exits, minlength=k).astype(float)
        right = np.bincount(self.exits, weights=self.correct.astype(float), minlength=k)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n_k > 0, right / np.maximum(n_k, 1), np.nan)


@dataclass(frozen=True)
class SpeedupEstimate:
    """A speed-up against the full model, with the noise it carries.

    Attributes:
        cost: ``"macs"`` or a latency key (``"cpu/b1"``).
        value: Full-model cost over the expected early-exit cost.
        interval: 95% interval with every kind of noise known (None: nothing held out).
        interval_sampling: From sampling noise alone (which samples or batches).
        interval_timing: From timing noise alone (None for MACs, which are counted).
        timing_spread: IQR / median of the timings behind it (None for MACs).
        source: ``"macs"``, ``"measured"`` (``dyncal verify``) or ``"predicted"``.
        full_model: The full model's cost in the same unit.
        timed: For ``"measured"``: how much of the run ``dyncal verify`` timed (None:
            not recorded, or not measured).

    Example:
        >>> SpeedupEstimate("macs", 2.0, None).source
        'macs'
    """

    cost: str
    value: float
    interval: Interval | None
    interval_sampling: Interval | None = None
    interval_timing: Interval | None = None
    timing_spread: float | None = None
    source: str = "macs"
    full_model: float = float("nan")
    timed: TimedCoverage | None = None

    @property
    def measurement_limited(self) -> bool:
        """Whether verify stopped at its time bound before timing every batch behind this figure."""
        return self.timed is not None and self.timed.stopped_early


def criterion_status(
    value: float,
    interval: Interval | None,
    required: float,
    comparison: str,
    *,
    sampling: Interval | None = None,
    timing: Interval | None = None,
    limited: bool = False,
) -> str:
    """Pass, fail or inconclusive, by the rule of the module docstring.

    Args:
        value: The estimate ``v``.
        interval: ``C``, with every kind of noise (None: the estimate alone decides).
        required: ``r``.
        comparison: ``">="`` or ``"<="``.
        sampling: ``S``, sampling noise alone (default: ``interval`` without ``timing``,
            else none, ``[v, v]``: nothing held out).
        timing: ``T``, timing noise alone (default: none, ``[v, v]``).
        limited: Whether too few batches were timed (measurement-limited): then only a
            whole interval below ``r`` fails.

    Returns:
        ``"pass"``, ``"fail"`` or ``"inconclusive"``.

    Example:
        >>> criterion_status(2.4, (1.8, 3.0), 2.0, ">=", sampling=(2.2, 2.6), timing=(1.9, 2.9))
        'inconclusive'
        >>> criterion_status(2.4, (1.8, 3.0), 2.0, ">=")
        'fail'
        >>> criterion_status(2.4, (1.8, 3.0), 2.0, ">=", limited=True)
        'inconclusive'
    """
    if comparison not in (">=", "<="):
        raise DyncalError(f"comparison must be '>=' or '<=', got {comparison!r}")
    sign = 1.0 if comparison == ">=" else -1.0

    def flip(iv: Interval | None) -> Interval | None:
        if iv is None:
            return None
        a, b = sign * iv[0], sign * iv[1]
        return (min(a, b), max(a, b))

    v, r = sign * value, sign * required
    c = flip(interval) or (v, v)
    t = flip(timing) or (v, v)
    s = flip(sampling) or (c if timing is None else (v, v))
    if min(c[0], s[0], t[0]) >= r - _TOL:
        return PASS
    if max(c[1], s[1], t[1]) < r - _TOL:
        return FAIL
    if not limited and s[0] + max(0.0, t[1] - v) < r - _TOL:
        return FAIL
    return INCONCLUSIVE


def judged_criterion(
    name: str,
    value: float,
    interval: Interval | None,
    required: float,
    comparison: str,
    *,
    sampling: Interval | None = None,
    timing: Interval | None = None,
    limited: bool = False,
    **fields: Any,
) -> Criterion:
    """A :class:`Criterion` with its status by :func:`criterion_status`; ``fields`` are its other attributes.

    Example:
        >>> judged_criterion("accuracy", 0.95, (0.93, 0.97), 0.9, ">=", sampling=(0.93, 0.97)).status
        'pass'
    """
    status = criterion_status(value, interval, required, comparison, sampling=sampling, timing=timing, limited=limited)
    return Criterion(
        name,
        value,
        interval,
        required,
        comparison,
        status,
        interval_sampling=sampling,
        interval_timing=timing,
        **fields,
    )


def decide(criteria: Sequence[Criterion]) -> str | None:
    """NO-GO if any criterion fails, else INCONCLUSIVE if any is, else GO (None without criteria).

    Example:
        >>> c = Criterion("accuracy", 0.95, None, 0.9, ">=", PASS)
        >>> decide([c]), decide([c, Criterion("speedup", 2.1, None, 2.0, ">=", INCONCLUSIVE)]), decide([])
        ('GO', 'INCONCLUSIVE', None)
    """
    if not criteria:
        return None
    if any(c.status == FAIL for c in criteria):
        return "NO-GO"
    if any(c.status == INCONCLUSIVE for c in criteria):
        return "INCONCLUSIVE"
    return "GO"


def judge(
    requirements: Requirements,
    *,
    accuracy: float,
    accuracy_interval: Interval | None,
    outcome: ExitOutcome,
    speedup: SpeedupEstimate | None = None,
) -> list[Criterion]:
    """Judge every requirement given.

    Args:
        requirements: What was asked.
        accuracy: Held-out accuracy of the operating point (as solve reports it).
        accuracy_interval: Its 95% interval, or None.
        outcome: Per-sample outcome on the judged rows (the drop's interval).
        speedup: The speed-up the speed-up criterion is judged on (needed when asked).

    Returns:
        The criteria, in the order accuracy, drop, speed-up.

    Raises:
        DyncalError: A speed-up criterion without a speed-up estimate.
    """
    held = " (held out)" if outcome.held_out else ""
    out = []
    if requirements.min_accuracy is not None:
        what = "top-1 accuracy with early exit" + held
        iv = accuracy_interval
        out.append(
            judged_criterion("accuracy", accuracy, iv, requirements.min_accuracy, ">=", sampling=iv, description=what)
        )
    if requirements.max_drop is not None:
        drop, iv = accuracy_drop(outcome)
        what = "last exit's accuracy minus early exit's, same samples" + held
        out.append(
            judged_criterion("accuracy_drop", drop, iv, requirements.max_drop, "<=", sampling=iv, description=what)
        )
    if requirements.min_speedup is not None:
        if speedup is None:
            raise DyncalError("a `min_speedup` criterion needs costs to judge it on; profile the run first")
        unit = "MACs" if speedup.cost == "macs" else f"latency on {speedup.cost}, {speedup.source}"
        c = judged_criterion(
            "speedup",
            speedup.value,
            speedup.interval,
            requirements.min_speedup,
            ">=",
            sampling=speedup.interval_sampling,
            timing=speedup.interval_timing,
            limited=speedup.measurement_limited,
            cost=speedup.cost,
            description=f"full model on every sample / expected early-exit cost ({unit})",
            timing_spread=speedup.timing_spread,
            source=speedup.source,
        )
        out.append(dataclasses.replace(c, remedy=_time_more(speedup, c.required) if c.status == INCONCLUSIVE else None))
    return out


def _time_more(speedup: SpeedupEstimate, required: float) -> str | None:
    """The remedy of a measurement-limited speed-up (None when it is not limited)."""
    if speedup.timed is None or not speedup.measurement_limited:
        return None
    ivs = [iv for iv in (speedup.interval, speedup.interval_sampling, speedup.interval_timing) if iv is not None]
    hull = (min(iv[0] for iv in ivs), max(iv[1] for iv in ivs)) if ivs else (speedup.value, speedup.value)
    return speedup.timed.remedy(speedup.value, hull, required)


def accuracy_drop(outcome: ExitOutcome) -> tuple[float, tuple[float, float] | None]:
    """Last exit's accuracy minus the early-exit accuracy, with a paired bootstrap interval.

    Example:
        >>> o = ExitOutcome(np.zeros(4, int), np.array([1, 1, 0, 1], bool), np.ones(4, bool), True)
        >>> accuracy_drop(o)[0]
        0.25
    """
    diff = outcome.last_correct.astype(float) - outcome.correct.astype(float)
    value = float(diff.mean()) if outcome.n else float("nan")
    if not outcome.held_out:
        return value, None
    return value, bootstrap_interval(outcome.n, lambda idx: diff[idx].mean(axis=1))


def speedup_estimate(
    outcome: ExitOutcome, per_exit_cost: Sequence[float], full_model: float, cost: str = "macs"
) -> SpeedupEstimate:
    """Full-model cost over the expected early-exit cost of the judged rows (per sample), with interval.

    Args:
        outcome: Per-sample exits.
        per_exit_cost: ``K`` costs of a sample leaving at exit k.
        full_model: Cost of the full model on one sample.
        cost: Name of the cost (default ``"macs"``).

    Returns:
        The estimate; its interval is a bootstrap over the rows when they were held out.

    Example:
        >>> o = ExitOutcome(np.array([0, 1]), np.ones(2, bool), np.ones(2, bool), False)
        >>> speedup_estimate(o, [1.0, 3.0], 3.0).value
        1.5
    """
    units = np.asarray(per_exit_cost, dtype=float)[outcome.exits]
    value = float(full_model / units.mean()) if len(units) else float("nan")
    interval = None
    if outcome.held_out and len(units):
        interval = bootstrap_interval(len(units), lambda idx: full_model / units[idx].mean(axis=1))
    return SpeedupEstimate(cost, value, interval, interval_sampling=interval, full_model=full_model)
