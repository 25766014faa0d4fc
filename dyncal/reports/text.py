"""How the report's numbers and criteria read for people: percentages, MACs, verdict sentences.

Plain string formatting (no matplotlib); fractions become percentages only here. Milliseconds
read as :func:`dyncal.reports.figures.format_ms` writes them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from dyncal.reports.decision import FAIL, INCONCLUSIVE, PASS, Criterion

if TYPE_CHECKING:
    from dyncal.artifacts.run import Run

__all__ = [
    "REMEDY",
    "pct",
    "pts",
    "change_text",
    "format_macs",
    "interval_text",
    "criterion_value",
    "criterion_digits",
    "criterion_label",
    "need_text",
    "failure_text",
    "inconclusive_text",
    "status_word",
    "thresholds_text",
]

REMEDY = (
    "measure again on a quiet machine with more --repeats (dyncal profile RUN --repeats 100; dyncal verify RUN "
    "--repeats 20 --out verify.json), pinning one thread (--threads 1) if more were used"
)
"""What to do when timing noise alone decides a latency criterion."""


def pct(v: float | None, digits: int = 2, missing: str = "n/a") -> str:
    """A fraction as a percentage for people (``missing`` when missing or not finite).

    Example:
        >>> pct(0.98765), pct(0.5, 1), pct(None), pct(None, missing="-")
        ('98.77%', '50.0%', 'n/a', '-')
    """
    if v is None or not math.isfinite(v):
        return missing
    return f"{100 * v:.{digits}f}%"


def pts(v: float, digits: int = 1) -> str:
    """A difference of fractions in percentage points.

    Example:
        >>> pts(0.01), pts(0.0123, 2)
        ('1.0 percentage point', '1.23 percentage points')
    """
    return f"{100 * v:.{digits}f} percentage point" + ("" if abs(100 * v - 1) < 1e-9 else "s")


def change_text(drop: float) -> str:
    """An accuracy drop in words: lost, gained or unchanged.

    Example:
        >>> change_text(0.02), change_text(-0.005), change_text(0.0)
        ('2.00 percentage points lost', '0.50 percentage points better', 'no accuracy lost')
    """
    if not math.isfinite(drop):
        return "change not available"
    if abs(drop) < 5e-5:
        return "no accuracy lost"
    return f"{pts(abs(drop), 2)} {'lost' if drop > 0 else 'better'}"


def format_macs(v: float | None) -> str:
    """MACs for people, in the largest unit that keeps a number of at least 1.

    Example:
        >>> format_macs(1.234e9), format_macs(70880), format_macs(None)
        ('1.23 GMAC', '70.9 KMAC', 'n/a')
    """
    if v is None or not math.isfinite(v):
        return "n/a"
    for unit, scale in (("GMAC", 1e9), ("MMAC", 1e6), ("KMAC", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.3g} {unit}"
    return f"{v:.3g} MAC"


def interval_text(iv: tuple[float, float] | None, fmt: Any) -> str:
    """A 95% interval written with ``fmt``, or why there is none.

    Example:
        >>> interval_text((0.9, 0.95), pct), interval_text(None, pct)
        ('90.00% to 95.00%', 'not available (nothing held out)')
    """
    return "not available (nothing held out)" if iv is None else f"{fmt(iv[0])} to {fmt(iv[1])}"


def criterion_value(c: Criterion, v: float, digits: int = 2) -> str:
    """A value of criterion ``c`` in its unit: a factor, points of drop, or a percentage.

    Example:
        >>> c = Criterion("accuracy_drop", 0.004, None, 0.01, "<=", "pass")
        >>> criterion_value(c, c.value), criterion_value(c, c.required, 3)
        ('+0.40 pts', '+1.000 pts')
    """
    if c.name == "speedup" or (c.name.startswith("latency_") and c.name.endswith("_ratio")):
        return f"{v:.{digits}f}×"
    if c.name.startswith("latency_"):
        return f"{v:.{digits}f} ms"
    if c.name == "accuracy_drop":
        return f"{100 * v:+.{digits}f} pts"
    return pct(v, digits)


def criterion_digits(c: Criterion) -> int:
    """Decimals that keep the deciding bound visibly apart from the requirement (2 to 5).

    Example:
        >>> criterion_digits(Criterion("speedup", 2.0004, (1.9999, 2.1), 2.0, ">=", "fail"))
        4
    """
    deciding_end = 0 if c.comparison == ">=" else 1
    bounds = [c.value] + [iv[deciding_end] for iv in (c.interval, c.interval_sampling) if iv is not None]
    digits = 2
    while digits < 5 and any(
        b != c.required and criterion_value(c, b, digits) == criterion_value(c, c.required, digits) for b in bounds
    ):
        digits += 1
    return digits


def need_text(c: Criterion, digits: int) -> str:
    """What criterion ``c`` requires, as the pages print it.

    Example:
        >>> need_text(Criterion("speedup", 2.4, None, 2.0, ">=", "pass"), 2)
        '≥ 2.00×'
    """
    return f"{'≥' if c.comparison == '>=' else '≤'} {criterion_value(c, c.required, digits)}"


def _value_clears(c: Criterion) -> bool:
    if c.comparison == ">=":
        return c.value >= c.required - 1e-12
    return c.value <= c.required + 1e-12


def _reaches(c: Criterion, iv: tuple[float, float], digits: int) -> str:
    """Where interval ``iv`` reaches on the side the requirement bounds (down for ``>=``, up for ``<=``)."""
    side, end = ("down", iv[0]) if c.comparison == ">=" else ("up", iv[1])
    return f"its 95% interval reaches {side} to {criterion_value(c, end, digits)}"


def failure_text(c: Criterion) -> str:
    """Why a criterion failed, for people: the estimate itself, or the bound that decides.

    Example:
        >>> failure_text(Criterion("speedup", 1.92, (1.86, 1.98), 2.0, ">=", "fail", cost="macs"))
        'speed-up (MACs) is 1.92×, needs ≥ 2.00×'
    """
    d = criterion_digits(c)
    stated = f"{criterion_label(c)} is {criterion_value(c, c.value, d)}"
    if c.interval is None or not _value_clears(c):
        return f"{stated}, needs {need_text(c, d)}"
    return f"{stated} but {_reaches(c, c.interval, d)}, needs {need_text(c, d)}"


def inconclusive_text(c: Criterion) -> str:
    """Why timing noise alone decides a criterion, for people.

    Example:
        >>> c = Criterion("speedup", 2.4, (1.8, 3.0), 2.0, ">=", "inconclusive", cost="cpu/b1",
        ...               interval_sampling=(2.2, 2.6), source="measured")
        >>> inconclusive_text(c).split("; ")[1]
        'sampling noise alone puts it at 2.20× to 2.60×'
    """
    d = criterion_digits(c)
    parts = [f"{criterion_label(c)} is {criterion_value(c, c.value, d)}, needs {need_text(c, d)}"]
    if c.interval_sampling is not None:
        low, high = (criterion_value(c, v, d) for v in c.interval_sampling)
        parts.append(f"sampling noise alone puts it at {low} to {high}")
    if c.interval is not None:
        spread = "" if c.timing_spread is None else f" (timing spread {100 * c.timing_spread:.0f}% of the median)"
        parts.append(f"with timing noise{spread} {_reaches(c, c.interval, d)}")
    return "; ".join(parts)


def status_word(c: Criterion) -> str:
    """A criterion's status as the tables print it.

    Example:
        >>> status_word(Criterion("accuracy", 0.97, None, 0.95, ">=", "pass"))
        'PASS'
    """
    return {PASS: "PASS", FAIL: "FAIL", INCONCLUSIVE: "INCONCLUSIVE"}[c.status]


def criterion_label(c: Criterion) -> str:
    """What a criterion judges, for people (with its cost and evidence for a speed-up).

    Example:
        >>> criterion_label(Criterion("speedup", 2.4, None, 2.0, ">=", "pass", cost="cpu/b1", source="measured"))
        'speed-up (latency, cpu/b1), measured'
    """
    if c.name == "accuracy":
        return "held-out accuracy" if c.interval is not None else "accuracy (fitted)"
    if c.name == "accuracy_drop":
        return "accuracy drop vs last exit"
    if c.name.startswith("latency_"):
        label = c.name.split("_")[1]
        if c.name.endswith("_ratio"):
            return f"{label} vs plain deployment ({c.cost})"
        return f"{label} latency ({c.cost}), {c.source or 'measured'}"
    if c.cost == "macs":
        return "speed-up (MACs)"
    return f"speed-up (latency, {c.cost}), {c.source or 'predicted'}"


def thresholds_text(doc: Mapping[str, Any], run: Run) -> list[str]:
    """Each threshold of a ``thresholds.json`` document for people: a number, or who leaves.

    Read as the exit rule reads them (:func:`dyncal.calibrate.policy.describe_thresholds`):
    a placeholder beyond the score's range is ``"all leave"`` or ``"none leave"``, and an exit
    after one where all leave is ``"not reached"``; the last exit ``"takes the rest"``.

    Example:
        >>> from types import SimpleNamespace
        >>> thresholds_text({"score": "maxprob", "thresholds": [0.9, 2.0, None]}, SimpleNamespace(c=10))
        ['0.9000', 'none leave', 'takes the rest']
        >>> thresholds_text({"score": "maxprob", "thresholds": [0.56, -0.9, None]}, SimpleNamespace(c=10))
        ['0.5600', 'all leave', 'not reached']
    """
    from dyncal.calibrate.policy import NOT_REACHED, describe_thresholds

    values = list(doc.get("thresholds", []))
    words = describe_thresholds(values, str(doc.get("score", "maxprob")), run.c)
    out = [f"{float(t):.4f}" if w.startswith("score >=") else w for t, w in zip(values[:-1], words, strict=False)]
    out.append(NOT_REACHED if words[-1] == NOT_REACHED else "takes the rest")
    return out
