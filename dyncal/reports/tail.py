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

Where it is used: ``report`` declares ``--max-p99-ms``, ``--max-latency-ms`` (repeatable),
``--max-p99-ratio`` and ``--max-latency-ratio`` (:attr:`dyncal.reports.operating.ReportOptions.tail_bounds`
reads them with :func:`tail_bounds`); :func:`dyncal.reports.tail_evidence.report_tail_criteria`
judges them on verify's batch-1 requests and :func:`~dyncal.reports.data.prepare_report` adds
them to the criteria before :func:`~dyncal.reports.decision.decide`. :class:`TailBound` and
:func:`parse_tail_bound` live in :mod:`dyncal.calibrate.tail` (``solve`` reads a bound too).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from dyncal.artifacts.requests import IntervalEstimate, RequestTimings
from dyncal.calibrate.tail import FORMS, TailBound, parse_tail_bound
from dyncal.errors import DyncalError, param
from dyncal.reports.decision import Criterion, judged_criterion

__all__ = [
    "FORMS",
    "TailBound",
    "parse_tail_bound",
    "tail_bounds",
    "judge_tail",
    "tail_criterion",
    "predicted_tail_criterion",
]


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
    spread = abs(estimate.interval_timing[1] - estimate.interval_timing[0]) / estimate.value if estimate.value else None
    return judged_criterion(
        bound.name,
        estimate.value,
        estimate.interval,
        bound.bound,
        "<=",
        sampling=estimate.interval_sampling,
        timing=estimate.interval_timing,
        cost=cost,
        description=description,
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
    what = f"{bound.label} latency predicted from the exit shares and the profiled latency of each exit"
    return judged_criterion(bound.name, value, None, bound.bound, "<=", cost=cost, description=what, source="predicted")
