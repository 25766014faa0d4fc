"""Tail criteria: a bound on a latency percentile, judged like every other criterion.

Design. A tail criterion bounds a percentile of the latency requests feel, in
milliseconds (``--max-p99-ms 2.5``, or any percentile: ``--max-latency-ms p99=2.5``) or
as a factor over the plain deployment's same percentile on the same requests
(``--max-p99-ratio 1.2``, ``--max-latency-ratio p99=1.2``). :func:`parse_tail_bound` and
:func:`tail_bounds` read those forms into :class:`TailBound`; :func:`judge_tail` turns each
into a :class:`~dyncal.reports.decision.Criterion` whose status comes from the report's one
rule, :func:`~dyncal.reports.decision.criterion_status`, fed with the three intervals of
:meth:`dyncal.artifacts.requests.RequestTimings.percentile` (which requests were timed,
timing noise, both). So a tail criterion is PASS, FAIL or INCONCLUSIVE by the same
semantics as the speed-up: load widens the timing interval and can make it INCONCLUSIVE,
never turn a PASS into a FAIL; and :func:`~dyncal.reports.decision.decide` makes a report
NO-GO or INCONCLUSIVE from it like from any other criterion.

It is judged on the ``fastest`` view by default (each request's fastest pair: the
noise-reduced latency, what the model costs rather than what this machine's load added);
``view="raw"`` judges every replicate.

Without a verify result, :func:`predicted_tail_criterion` judges the percentile the exit
shares predict from the profiled per-exit latency
(:func:`dyncal.calibrate.tail.predicted_percentile_ms`): a point estimate, no interval.

Wiring (not done here): the CLI declares ``--max-p99-ms``, ``--max-latency-ms`` (repeatable),
``--max-p99-ratio`` and ``--max-latency-ratio`` on ``report`` and passes them to
:func:`tail_bounds`; the report appends ``judge_tail(bounds, timings)`` (the batch-1
:class:`~dyncal.artifacts.requests.RequestTimings` of verify.json) to the criteria of
:func:`~dyncal.reports.decision.judge` before :func:`~dyncal.reports.decision.decide`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dyncal.artifacts.requests import IntervalEstimate, RequestTimings
from dyncal.errors import DyncalError, param
from dyncal.reports.decision import Criterion, criterion_status

__all__ = [
    "FORMS",
    "TailBound",
    "parse_tail_bound",
    "tail_bounds",
    "judge_tail",
    "tail_criterion",
    "predicted_tail_criterion",
]

FORMS = ("ms", "ratio")
"""``ms``: a bound in milliseconds; ``ratio``: a factor over the plain deployment's percentile."""
_SPEC = re.compile(r"^\s*(?:p(?P<p>\d+(?:\.\d+)?)|(?P<max>max))\s*=\s*(?P<v>[^\s=]+?)\s*(?P<unit>ms|x)?\s*$", re.I)


@dataclass(frozen=True)
class TailBound:
    """A bound on one percentile of request latency.

    Attributes:
        percentile: In ``(0, 100]`` (100 is the maximum).
        bound: Milliseconds (``form="ms"``) or a factor over the plain deployment (``"ratio"``).
        form: ``"ms"`` or ``"ratio"``.

    Example:
        >>> b = TailBound(99.0, 2.5)
        >>> b.name, b.label, b.text
        ('latency_p99_ms', 'p99', 'p99=2.5ms')
    """

    percentile: float
    bound: float
    form: str = "ms"

    def __post_init__(self) -> None:
        if self.form not in FORMS:
            raise DyncalError(f"a tail bound's form must be one of {', '.join(FORMS)}, got {self.form!r}")
        if not (0.0 < self.percentile <= 100.0):
            raise DyncalError(f"a tail percentile must lie in (0, 100], got {self.percentile:g}")
        if not (math.isfinite(self.bound) and self.bound > 0):
            raise DyncalError(f"a tail bound must be a positive number, got {self.bound:g}")

    @property
    def label(self) -> str:
        """``"p99"``, ``"p99.9"`` or ``"max"``."""
        return "max" if self.percentile == 100.0 else f"p{self.percentile:g}"

    @property
    def name(self) -> str:
        """The criterion's name: ``latency_p99_ms``, ``latency_p99_ratio``."""
        return f"latency_{self.label}_{self.form}"

    @property
    def text(self) -> str:
        """As a user writes it: ``p99=2.5ms`` or ``p99=1.2x``."""
        return f"{self.label}={self.bound:g}{'ms' if self.form == 'ms' else 'x'}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"percentile": self.percentile, "bound": self.bound, "form": self.form}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TailBound:
        """Build from :meth:`to_dict` output.

        Raises:
            DyncalError: A missing or malformed field.
        """
        try:
            return cls(float(d["percentile"]), float(d["bound"]), str(d.get("form", "ms")))
        except (KeyError, TypeError, ValueError) as e:
            raise DyncalError(f"a tail bound needs 'percentile', 'bound' and 'form', got {dict(d)!r:.80}") from e


def parse_tail_bound(text: str, form: str = "ms", name: str = "max_latency_ms") -> TailBound:
    """Read ``p99=2.5`` (any percentile ``p<q>`` with ``0 < q <= 100``, or ``max``).

    Args:
        text: What the user wrote; ``ms`` may follow a bound in milliseconds, ``x`` a factor.
        form: ``"ms"`` or ``"ratio"`` (the option it came with says which).
        name: The parameter, for the message.

    Raises:
        DyncalError: Not of that form, a percentile out of range, a bound that is not a
            positive number, or a unit that does not fit the form.

    Example:
        >>> parse_tail_bound("p99=2.5")
        TailBound(percentile=99.0, bound=2.5, form='ms')
        >>> parse_tail_bound("p99.9 = 1.2x", "ratio").text
        'p99.9=1.2x'
    """
    what = "a bound in ms" if form == "ms" else "a factor over the plain deployment's"
    example = "p99=2.5" if form == "ms" else "p99=1.2"
    m = _SPEC.match(str(text))
    unit_ok = m is not None and (m["unit"] is None or m["unit"].lower() == ("ms" if form == "ms" else "x"))
    value = _number(m["v"]) if m is not None else None
    if m is None or not unit_ok or value is None:
        raise DyncalError(
            f"{param(name)} must look like {example} (a percentile p1..p100 or max, '=', {what}), got {text!r:.60}"
        )
    pct = 100.0 if m["max"] else float(m["p"])
    if not 0.0 < pct <= 100.0:
        raise DyncalError(f"{param(name)}: the percentile must lie in (0, 100], got p{m['p']} in {text!r:.60}")
    if not (math.isfinite(value) and value > 0):
        raise DyncalError(f"{param(name)}: the bound must be a positive number, got {m['v']!r:.30} in {text!r:.60}")
    return TailBound(pct, value, form)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def tail_bounds(
    *,
    max_p99_ms: float | None = None,
    max_latency_ms: Sequence[str] = (),
    max_p99_ratio: float | None = None,
    max_latency_ratio: Sequence[str] = (),
) -> tuple[TailBound, ...]:
    """Every tail bound the options give, one per percentile and form.

    Raises:
        DyncalError: A malformed option, a bound that is not positive, or one percentile
            bounded twice in the same form.

    Example:
        >>> [b.text for b in tail_bounds(max_p99_ms=2.5, max_latency_ms=["p90=1"], max_p99_ratio=1.2)]
        ['p99=2.5ms', 'p90=1ms', 'p99=1.2x']
    """
    out: list[TailBound] = []
    for name, value, texts, form in (
        ("max_p99_ms", max_p99_ms, max_latency_ms, "ms"),
        ("max_p99_ratio", max_p99_ratio, max_latency_ratio, "ratio"),
    ):
        if value is not None:
            if not (math.isfinite(value) and value > 0):
                raise DyncalError(f"{param(name)} must be a positive number, got {value:g}")
            out.append(TailBound(99.0, float(value), form))
        out += [parse_tail_bound(t, form, "max_latency_ms" if form == "ms" else "max_latency_ratio") for t in texts]
    seen: dict[tuple[float, str], TailBound] = {}
    for b in out:
        if (b.percentile, b.form) in seen:
            raise DyncalError(f"{b.label} is bounded twice ({seen[b.percentile, b.form].text} and {b.text}); keep one")
        seen[b.percentile, b.form] = b
    return tuple(out)


def tail_criterion(
    bound: TailBound, estimate: IntervalEstimate, *, cost: str, description: str = "", source: str = "measured"
) -> Criterion:
    """A tail bound judged on a percentile and its three intervals (the report's rule).

    Example:
        >>> est = IntervalEstimate(2.2, (2.0, 2.6), (2.1, 2.3), (2.05, 2.5))
        >>> tail_criterion(TailBound(99.0, 2.4), est, cost="cpu/b1").status
        'inconclusive'
    """
    status = criterion_status(
        estimate.value,
        estimate.interval,
        bound.bound,
        "<=",
        sampling=estimate.interval_sampling,
        timing=estimate.interval_timing,
    )
    spread = abs(estimate.interval_timing[1] - estimate.interval_timing[0]) / estimate.value if estimate.value else None
    return Criterion(
        bound.name,
        estimate.value,
        estimate.interval,
        bound.bound,
        "<=",
        status,
        cost=cost,
        description=description,
        interval_sampling=estimate.interval_sampling,
        interval_timing=estimate.interval_timing,
        timing_spread=spread,
        source=source,
    )


def judge_tail(bounds: Sequence[TailBound], timings: RequestTimings, view: str = "fastest") -> list[Criterion]:
    """Judge every tail bound on measured per-request timings.

    Args:
        bounds: The tail bounds (:func:`tail_bounds`).
        timings: Verify's per-request timings (batch 1 for SingleStream; at batch B a unit is a batch).
        view: ``"fastest"`` (default: each request's fastest pair) or ``"raw"``.

    Returns:
        One criterion per bound, in order.
    """
    unit = "request" if timings.batch_size == 1 else f"batch of {timings.batch_size}"
    pairs = "its fastest pair" if view == "fastest" else "every pair"
    out = []
    for b in bounds:
        side = "early_exit" if b.form == "ms" else "ratio"
        est = timings.percentile(b.percentile, side, view)
        if b.form == "ms":
            what = f"{b.label} latency of the early exit per {unit} on {timings.key}"
        else:
            what = f"early exit's {b.label} latency over the plain deployment's, same {unit}s, on {timings.key}"
        out.append(tail_criterion(b, est, cost=timings.key, description=f"{what} ({pairs}; {timings.coverage()})"))
    return out


def predicted_tail_criterion(
    bound: TailBound, exits: np.ndarray, per_exit_ms: Sequence[float], *, cost: str
) -> Criterion:
    """A millisecond tail bound judged on the percentile the exit shares predict (no verify: no interval).

    Example:
        >>> c = predicted_tail_criterion(TailBound(90.0, 2.0), np.array([0] * 95 + [1] * 5), [1.0, 3.0], cost="cpu/b1")
        >>> c.value, c.status
        (1.0, 'pass')
    """
    from dyncal.calibrate.tail import predicted_percentile_ms

    if bound.form != "ms":
        raise DyncalError(f"{bound.text}: a ratio to the plain deployment needs a verify result (dyncal verify)")
    value = predicted_percentile_ms(exits, per_exit_ms, bound.percentile)
    return Criterion(
        bound.name,
        value,
        None,
        bound.bound,
        "<=",
        criterion_status(value, None, bound.bound, "<="),
        cost=cost,
        description=f"{bound.label} latency predicted from the exit shares and the profiled latency of each exit",
        source="predicted",
    )
