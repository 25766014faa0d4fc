"""How the report's numbers and criteria read for people: percentages, MACs, ms, verdict sentences.

Plain string formatting (no matplotlib); fractions become percentages only here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from dyncal.reports.decision import FAIL, INCONCLUSIVE, PASS, Criterion
from dyncal.reports.figures import format_ms

if TYPE_CHECKING:
    from dyncal.artifacts.run import Run


def _pct(v: float | None, digits: int = 2) -> str:
    """A fraction as a percentage for people."""
    if v is None or not math.isfinite(v):
        return "n/a"
    return f"{100 * v:.{digits}f}%"


def _pts(v: float, digits: int = 1) -> str:
    """A difference of fractions in percentage points."""
    return f"{100 * v:.{digits}f} percentage point" + ("" if abs(100 * v - 1) < 1e-9 else "s")


def _change_text(drop: float) -> str:
    """An accuracy drop in words: lost, gained or unchanged."""
    if not math.isfinite(drop):
        return "change not available"
    if abs(drop) < 5e-5:
        return "no accuracy lost"
    return f"{_pts(abs(drop), 2)} {'lost' if drop > 0 else 'better'}"


def _macs(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "n/a"
    for unit, scale in (("GMAC", 1e9), ("MMAC", 1e6), ("KMAC", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.3g} {unit}"
    return f"{v:.3g} MAC"


def _ms(v: float | None) -> str:
    return format_ms(v)


def _interval_text(iv: tuple[float, float] | None, fmt: Any) -> str:
    return "not available (nothing held out)" if iv is None else f"{fmt(iv[0])} to {fmt(iv[1])}"


def _criterion_value(c: Criterion, v: float, digits: int = 2) -> str:
    if c.name == "speedup":
        return f"{v:.{digits}f}×"
    if c.name == "accuracy_drop":
        return f"{100 * v:+.{digits}f} pts"
    return _pct(v, digits)


def _criterion_digits(c: Criterion) -> int:
    """Decimals that keep the deciding bound visibly apart from the requirement (2 to 5)."""
    bounds = [c.value]
    if c.interval is not None:
        bounds.append(c.interval[0 if c.comparison == ">=" else 1])
    if c.interval_sampling is not None:
        bounds.append(c.interval_sampling[0 if c.comparison == ">=" else 1])
    digits = 2
    while digits < 5 and any(
        b != c.required and _criterion_value(c, b, digits) == _criterion_value(c, c.required, digits) for b in bounds
    ):
        digits += 1
    return digits


def _need_text(c: Criterion, digits: int) -> str:
    return f"{'≥' if c.comparison == '>=' else '≤'} {_criterion_value(c, c.required, digits)}"


def _value_clears(c: Criterion) -> bool:
    if c.comparison == ">=":
        return c.value >= c.required - 1e-12
    return c.value <= c.required + 1e-12


def _failure_text(c: Criterion) -> str:
    """Why a criterion failed, for people: the estimate itself, or the bound that decides."""
    d = _criterion_digits(c)
    need = _need_text(c, d)
    label = _criterion_label(c)
    if c.interval is None or not _value_clears(c):
        return f"{label} is {_criterion_value(c, c.value, d)}, needs {need}"
    side = "down" if c.comparison == ">=" else "up"
    bound = c.interval[0] if c.comparison == ">=" else c.interval[1]
    return (
        f"{label} is {_criterion_value(c, c.value, d)} but its 95% interval reaches "
        f"{side} to {_criterion_value(c, bound, d)}, needs {need}"
    )


def _inconclusive_text(c: Criterion) -> str:
    """Why timing noise alone decides a criterion, for people."""
    d = _criterion_digits(c)
    s_iv = c.interval_sampling
    iv = c.interval
    side = "down" if c.comparison == ">=" else "up"
    parts = [f"{_criterion_label(c)} is {_criterion_value(c, c.value, d)}, needs {_need_text(c, d)}"]
    if s_iv is not None:
        parts.append(
            f"sampling noise alone puts it at {_criterion_value(c, s_iv[0], d)} to {_criterion_value(c, s_iv[1], d)}"
        )
    if iv is not None:
        bound = iv[0] if c.comparison == ">=" else iv[1]
        spread = "" if c.timing_spread is None else f" (timing spread {100 * c.timing_spread:.0f}% of the median)"
        parts.append(f"with timing noise{spread} its 95% interval reaches {side} to {_criterion_value(c, bound, d)}")
    return "; ".join(parts)


REMEDY = (
    "measure again on a quiet machine, with --threads 1 and more --repeats "
    "(dyncal profile RUN --threads 1 --repeats 100; dyncal verify RUN --threads 1 --repeats 20 --out verify.json)"
)


def _status_word(c: Criterion) -> str:
    return {PASS: "PASS", FAIL: "FAIL", INCONCLUSIVE: "INCONCLUSIVE"}[c.status]


def _criterion_label(c: Criterion) -> str:
    if c.name == "accuracy":
        return "held-out accuracy" if c.interval is not None else "accuracy (fitted)"
    if c.name == "accuracy_drop":
        return "accuracy drop vs last exit"
    if c.cost == "macs":
        return "speed-up (MACs)"
    return f"speed-up (latency, {c.cost}), {c.source or 'predicted'}"


def _thresholds_text(doc: Mapping[str, Any], run: Run) -> list[str]:
    """Each threshold for people: a number, or 'nobody leaves' / 'everybody leaves'."""
    from dyncal.artifacts.thresholds import score_range

    lo, hi = score_range(str(doc.get("score", "maxprob")), run.c)
    out = []
    for t in doc.get("thresholds", [])[:-1]:
        if t is None:
            out.append("—")
        elif t > hi:
            out.append("none leave")
        elif t < lo:
            out.append("all leave")
        else:
            out.append(f"{t:.4f}")
    out.append("takes the rest")
    return out
