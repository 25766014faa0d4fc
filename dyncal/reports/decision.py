"""Go/no-go criteria: what was asked, what was measured on held-out data, and the verdict.

A criterion passes only when its whole 95% interval clears the requirement, so a GO
means "shown with 95% confidence", not "the point estimate happens to be above the line".
Without a held-out split (no interval) the point estimate decides, and the report says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dyncal.errors import DyncalError

__all__ = [
    "Criterion",
    "Requirements",
    "ExitOutcome",
    "bootstrap_interval",
    "judge",
    "speedup_of_units",
]

N_BOOTSTRAP = 2000
_BOOTSTRAP_SEED = 20240607


@dataclass(frozen=True)
class Requirements:
    """What a user asked of the early-exit model (all optional; fractions, not percent).

    Attributes:
        min_accuracy: Held-out accuracy must be at least this (in [0, 1]).
        max_drop: Accuracy lost against the last exit must be at most this (in [0, 1]).
        min_speedup: Cost of the last exit on every sample divided by the expected cost
            must be at least this (> 0); judged in ms when a latency key is chosen,
            else in MACs.

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
                f"give --min-accuracy or --max-drop, not both (got {self.min_accuracy} and {self.max_drop})"
            )
        for name, v in (("--min-accuracy", self.min_accuracy), ("--max-drop", self.max_drop)):
            if v is None:
                continue
            if not math.isfinite(v) or v < 0 or v > 1:
                hint = f"; fractions, not percent: did you mean {v / 100:g}?" if 1 < v <= 100 else ""
                raise DyncalError(f"{name} must be a fraction in [0, 1], got {v:g}{hint}")
        if self.min_speedup is not None and (not math.isfinite(self.min_speedup) or self.min_speedup <= 0):
            raise DyncalError(f"--min-speedup must be a positive factor (e.g. 1.5 for 1.5x), got {self.min_speedup:g}")
        return self


@dataclass(frozen=True)
class Criterion:
    """One judged requirement.

    Attributes:
        name: ``"accuracy"``, ``"accuracy_drop"`` or ``"speedup"``.
        value: The measured value (a fraction, or a factor for speed-up).
        interval: 95% interval ``(low, high)``, or None when nothing was held out.
        required: The requirement's threshold.
        comparison: ``">="`` or ``"<="``: how ``value`` must compare to ``required``.
        passed: Whether the requirement is met (the whole interval clears it when known).
        cost: For ``speedup``, the cost it is measured in: ``"macs"`` or a latency key.
        description: What the value is, for people.

    Example:
        >>> c = Criterion("accuracy", 0.95, (0.93, 0.97), 0.9, ">=", True)
        >>> c.to_dict()["passed"]
        True
    """

    name: str
    value: float
    interval: tuple[float, float] | None
    required: float
    comparison: str
    passed: bool
    cost: str | None = None
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "name": self.name,
            "value": self.value,
            "interval": None if self.interval is None else list(self.interval),
            "required": self.required,
            "comparison": self.comparison,
            "passed": self.passed,
            "cost": self.cost,
            "description": self.description,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Criterion:
        """Build from :meth:`to_dict` output."""
        iv = d.get("interval")
        return cls(
            name=str(d["name"]),
            value=float(d["value"]),
            interval=None if iv is None else (float(iv[0]), float(iv[1])),
            required=float(d["required"]),
            comparison=str(d["comparison"]),
            passed=bool(d["passed"]),
            cost=d.get("cost"),
            description=str(d.get("description", "")),
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


def bootstrap_interval(
    n: int,
    statistic: Callable[[np.ndarray], np.ndarray],
    *,
    level: float = 0.95,
    n_resamples: int = N_BOOTSTRAP,
    seed: int = _BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile bootstrap interval of a statistic of ``n`` rows, deterministic for a seed.

    Args:
        n: Number of rows.
        statistic: Maps a ``(B, n)`` array of resampled row indices to ``B`` values.
        level: Coverage (default 0.95).
        n_resamples: Bootstrap resamples (default 2000).
        seed: Seed of the resampling.

    Returns:
        ``(low, high)``.

    Example:
        >>> x = np.array([0.0, 1.0] * 50)
        >>> lo, hi = bootstrap_interval(100, lambda idx: x[idx].mean(axis=1))
        >>> lo < 0.5 < hi
        True
    """
    if n <= 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    values: list[np.ndarray] = []
    chunk = max(1, min(n_resamples, 4_000_000 // max(n, 1)))
    done = 0
    while done < n_resamples:
        b = min(chunk, n_resamples - done)
        values.append(np.asarray(statistic(rng.integers(0, n, size=(b, n))), dtype=float))
        done += b
    v = np.concatenate(values)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(v, [alpha, 1.0 - alpha])
    return (float(lo), float(hi))


def _clears(value: float, interval: tuple[float, float] | None, required: float, comparison: str) -> bool:
    """Whether ``value`` (its whole interval, when known) is on the right side of ``required``."""
    if comparison == ">=":
        bound = value if interval is None else interval[0]
        return bool(bound >= required - 1e-12)
    bound = value if interval is None else interval[1]
    return bool(bound <= required + 1e-12)


def judge(
    requirements: Requirements,
    *,
    accuracy: float,
    accuracy_interval: tuple[float, float] | None,
    outcome: ExitOutcome,
    speedup_costs: Mapping[str, tuple[Sequence[float], float]],
    speedup_cost: str,
    speedup_units: np.ndarray | None = None,
) -> list[Criterion]:
    """Judge every requirement given.

    Args:
        requirements: What was asked.
        accuracy: Held-out accuracy of the operating point (as solve reports it).
        accuracy_interval: Its 95% interval, or None.
        outcome: Per-sample outcome on the judged rows (drop and speed-up intervals).
        speedup_costs: Per cost name (``"macs"`` or a latency key): ``(per_exit_cost,
            baseline_cost)``, the cost of a sample leaving at each exit and of running
            the last exit on every sample.
        speedup_cost: Which entry of ``speedup_costs`` the speed-up criterion uses.
        speedup_units: Instead of per-sample costs from ``speedup_costs``, the cost of
            each unit the early-exit model runs (one value per batch for batch sizes
            above 1); the interval is then a bootstrap over these units.

    Returns:
        The criteria, in the order accuracy, drop, speed-up.
    """
    out: list[Criterion] = []
    held = outcome.held_out
    if requirements.min_accuracy is not None:
        out.append(
            Criterion(
                "accuracy",
                accuracy,
                accuracy_interval,
                requirements.min_accuracy,
                ">=",
                _clears(accuracy, accuracy_interval, requirements.min_accuracy, ">="),
                description="top-1 accuracy with early exit" + (" (held out)" if held else ""),
            )
        )
    if requirements.max_drop is not None:
        drop, interval = accuracy_drop(outcome)
        out.append(
            Criterion(
                "accuracy_drop",
                drop,
                interval,
                requirements.max_drop,
                "<=",
                _clears(drop, interval, requirements.max_drop, "<="),
                description="last exit's accuracy minus early exit's, same samples" + (" (held out)" if held else ""),
            )
        )
    if requirements.min_speedup is not None:
        per_exit, baseline = speedup_costs[speedup_cost]
        if speedup_units is None:
            value, interval = speedup(outcome, per_exit, baseline)
        else:
            value, interval = speedup_of_units(speedup_units, baseline, held)
        unit = "MACs" if speedup_cost == "macs" else f"latency on {speedup_cost}"
        out.append(
            Criterion(
                "speedup",
                value,
                interval,
                requirements.min_speedup,
                ">=",
                _clears(value, interval, requirements.min_speedup, ">="),
                cost=speedup_cost,
                description=f"last exit on every sample / expected cost ({unit})",
            )
        )
    return out


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


def speedup(
    outcome: ExitOutcome, per_exit_cost: Sequence[float], baseline: float
) -> tuple[float, tuple[float, float] | None]:
    """Baseline cost over the expected early-exit cost of the judged rows, with interval.

    Args:
        outcome: Per-sample exits.
        per_exit_cost: ``K`` costs of a sample leaving at exit k.
        baseline: Cost of running the last exit on every sample.

    Returns:
        ``(speedup, interval)``.

    Example:
        >>> o = ExitOutcome(np.array([0, 1]), np.ones(2, bool), np.ones(2, bool), False)
        >>> speedup(o, [1.0, 3.0], 3.0)
        (1.5, None)
    """
    cost = np.asarray(per_exit_cost, dtype=float)[outcome.exits]
    value = float(baseline / cost.mean()) if outcome.n else float("nan")
    if not outcome.held_out:
        return value, None
    lo, hi = bootstrap_interval(outcome.n, lambda idx: baseline / cost[idx].mean(axis=1))
    return value, (lo, hi)


def speedup_of_units(units: np.ndarray, baseline: float, held_out: bool) -> tuple[float, tuple[float, float] | None]:
    """Baseline cost over the mean cost of ``units`` (samples or batches), with a bootstrap over them.

    Example:
        >>> speedup_of_units(np.array([2.0, 4.0]), 6.0, False)
        (2.0, None)
    """
    u = np.asarray(units, dtype=float)
    value = float(baseline / u.mean()) if len(u) else float("nan")
    if not held_out or not len(u):
        return value, None
    return value, bootstrap_interval(len(u), lambda idx: baseline / u[idx].mean(axis=1))
