"""The rollout plan: steps of traffic on the early exit and the shadow requests each needs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from dyncal.artifacts.fields import JsonFields
from dyncal.constraints import check
from dyncal.errors import DyncalError, param
from dyncal.monitor.bounds import shadow_requests_needed

__all__ = ["DEFAULT_STEPS", "RolloutStep", "RolloutPlan", "rollout_plan"]

DEFAULT_STEPS: tuple[float, ...] = (0.01, 0.05, 0.25, 1.0)
"""Shares of traffic on the early exit, one rollout step each."""


@dataclass(frozen=True)
class RolloutStep(JsonFields):
    """One rollout step.

    Attributes:
        share: Share of traffic on the early exit.
        shadow_requests: Shadow requests the step needs before its bound can pass.
        early_exit_requests: Early-exit requests that gives at the shadow share.
        total_requests: Requests to the service during the step at that share.
        hours: At ``requests_per_hour``, how long that takes (None when no rate was given).
    """

    share: float
    shadow_requests: int
    early_exit_requests: int
    total_requests: int
    hours: float | None = None


@dataclass(frozen=True)
class RolloutPlan(JsonFields):
    """``dyncal monitor --plan``: the steps and the evidence each needs.

    Attributes:
        max_drop: ε.
        delta: δ.
        shadow: Shadow share of early-exit requests.
        assumed_rate: Disagreement rate the sizes assume (the calibration run's, or 0).
        n_at_zero: Shadow requests at which zero disagreements pass (``ceil(log δ / log(1 - ε))``).
        n_at_rate: Shadow requests at which ``assumed_rate`` passes (None: never, the rate is at or above ε).
        steps: The steps.
        note: How to read the plan.
    """

    max_drop: float
    delta: float
    shadow: float
    assumed_rate: float
    n_at_zero: int
    n_at_rate: int | None
    steps: tuple[RolloutStep, ...]
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The ``dyncal monitor --plan --json`` document."""
        steps = [s.to_dict() for s in self.steps]  # in the fields' order: steps keeps its place
        return {"schema": "dyncal.rollout_plan", "schema_version": 1, **super().to_dict(), "steps": steps}


def rollout_plan(
    max_drop: float,
    delta: float = 0.05,
    *,
    shadow: float,
    steps: Sequence[float] = DEFAULT_STEPS,
    assumed_rate: float = 0.0,
    requests_per_hour: float | None = None,
) -> RolloutPlan:
    """Rollout steps and the shadow requests each needs before its drop bound can pass.

    Each step is decided once, on its own requests (a fresh sample per step keeps every
    decision's error at δ). A step needs ``n`` shadow requests: the fewest at which the
    Clopper-Pearson bound passes when the traffic disagrees at ``assumed_rate``
    (:func:`shadow_requests_needed`; with 0, at zero disagreements). At shadow share ``p`` and
    traffic share ``s`` that is ``n / p`` early-exit requests and ``n / (p s)`` requests in all.

    Raises:
        DyncalError: A shadow share of 0 (no evidence can ever pass), steps not increasing shares
            in (0, 1], or an assumed rate at or above ``max_drop``.

    Example:
        >>> plan = rollout_plan(0.01, 0.05, shadow=0.1, steps=(0.05, 1.0))
        >>> [(s.shadow_requests, s.early_exit_requests, s.total_requests) for s in plan.steps]
        [(299, 2990, 59800), (299, 2990, 2990)]
    """
    eps = float(check("max_drop", max_drop, rule="certified.max_drop"))
    dlt = float(check("delta", delta))
    if isinstance(shadow, bool) or not 0.0 < float(shadow) <= 1.0:
        raise DyncalError(
            f"{param('shadow')} {shadow!r} gives no quality evidence: the plan needs a shadow share in (0, 1]"
        )
    shares = [float(s) for s in steps]
    if not shares or any(not 0.0 < s <= 1.0 for s in shares) or any(b <= a for a, b in pairwise(shares)):
        raise DyncalError(f"{param('steps')} must be increasing shares in (0, 1], got {list(steps)}")
    if requests_per_hour is not None and not requests_per_hour > 0:
        raise DyncalError(f"{param('requests_per_hour')} must be positive, got {requests_per_hour!r}")
    n_zero = shadow_requests_needed(eps, dlt)
    assert n_zero is not None
    n_rate = shadow_requests_needed(eps, dlt, assumed_rate)
    if n_rate is None:
        raise DyncalError(
            f"at a disagreement rate of {assumed_rate:.4f} the drop bound never comes below `max_drop` {eps}; "
            "raise `max_drop` or lower the disagreement (re-solve at a larger budget)"
        )
    out = []
    for s in shares:
        ee = math.ceil(n_rate / float(shadow) - 1e-9)
        total = math.ceil(ee / s - 1e-9)
        hours = None if requests_per_hour is None else total / float(requests_per_hour)
        out.append(RolloutStep(s, n_rate, ee, total, hours))
    note = (
        f"each step needs {n_rate} shadow requests of its own before the bound can pass at {assumed_rate:.4f} "
        f"disagreements ({n_zero} if none disagree); run dyncal monitor once per step"
    )
    return RolloutPlan(eps, dlt, float(shadow), float(assumed_rate), n_zero, n_rate, tuple(out), note)
