"""The report's tail and savings: verify's stored requests, the tail criteria judged on them, what early exit saves.

Verify's per-request timings (:class:`~dyncal.artifacts.requests.RequestTimings`, one per
batch size) are read from the verify result: its ``requests`` attribute when it has one,
else the document's ``requests`` list (or a ``requests`` object inside each of its
``timings``), each in :meth:`RequestTimings.to_dict`'s format (:func:`stored_requests`). A
verify result that stores none still has its paired timings: at batch 1 each timed batch is
a request, only its exit is not recorded (:func:`requests_from_pairs`).

:func:`report_tail_criteria` judges the tail bounds the report was asked
(:func:`dyncal.reports.tail.tail_bounds`): on verify's batch-1 requests when it timed them
(measured, with the three intervals), else a bound in ms on the percentile the exit shares
predict from the profiled batch-1 latency (a point estimate). A ratio to the plain
deployment needs verify's requests. :func:`report_savings` is "what it saves" at a request
rate (:func:`dyncal.analysis.capacity.what_it_saves`): it needs verify's requests too.
numpy only; nothing is drawn here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from dyncal.artifacts import validate as V
from dyncal.artifacts.requests import RequestTimings
from dyncal.errors import DyncalError, param
from dyncal.reports.decision import Criterion
from dyncal.reports.tail import TailBound, judge_tail, predicted_tail_criterion

if TYPE_CHECKING:
    from dyncal.analysis.capacity import Savings
    from dyncal.artifacts.costs import CostTable
    from dyncal.artifacts.verify import VerifyResult

__all__ = [
    "stored_requests",
    "requests_from_document",
    "requests_from_pairs",
    "requests_document",
    "report_tail_criteria",
    "report_savings",
    "batch_one",
]

_VERIFY_HINT = (
    "run 'dyncal verify RUN --thresholds T --batch-size 1 --out verify.json' (it stores every timed request) "
    "and pass it with `verify`"
)


def requests_from_document(doc: Mapping[str, Any]) -> tuple[RequestTimings, ...]:
    """The per-request timings a verify document stores (none when it stores none).

    Raises:
        dyncal.artifacts.validate.FieldError: A stored timing is malformed (named by its place).

    Example:
        >>> t = RequestTimings("cpu/b1", 1, np.arange(2), np.array([0, 1]), np.ones((2, 1)), np.ones((2, 1)), n_exits=2)
        >>> [r.key for r in requests_from_document({"requests": [t.to_dict(summaries=False)]})]
        ['cpu/b1']
    """
    listed = doc.get("requests")
    places = [] if listed is None else [(f"requests[{i}]", r) for i, r in enumerate(V.sequence(listed, "requests"))]
    for i, timing in enumerate(doc.get("timings") or ()):
        if isinstance(timing, Mapping) and timing.get("requests") is not None:
            places.append((f"timings[{i}].requests", timing["requests"]))
    found = [RequestTimings.from_dict(V.mapping(item, where), where + ".") for where, item in places]
    keys = [t.key for t in found]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise V.FieldError("requests", f"holds {', '.join(twice)} more than once")
    return tuple(sorted(found, key=lambda t: t.batch_size))


def stored_requests(
    verify: VerifyResult | None, source: str | os.PathLike[str] | VerifyResult | None
) -> tuple[RequestTimings, ...]:
    """Verify's per-request timings, from the result itself or from the document it was read from.

    Args:
        verify: The verify result the report uses (None: not given, or it did not match).
        source: Where it came from (a path is read again for its ``requests``).

    Raises:
        DyncalError: The stored requests are malformed (one line naming the file and field).
    """
    if verify is None:
        return ()
    held = getattr(verify, "requests", None)
    if held:
        return tuple(sorted(held, key=lambda t: t.batch_size))
    if isinstance(source, (str, os.PathLike)):
        from dyncal.artifacts.verify import MAX_VERIFY_BYTES

        doc = V.read_json_document(source, what="a verify result", max_bytes=MAX_VERIFY_BYTES)
        try:
            found = requests_from_document(doc)
        except V.FieldError as e:
            raise DyncalError(
                f"'{source}' is not a valid verify result: {e}; run 'dyncal verify ... --out' again"
            ) from e
        if found:
            return found
    return requests_from_pairs(verify)


def requests_from_pairs(verify: VerifyResult) -> tuple[RequestTimings, ...]:
    """A verify result that stores no requests: each paired timing's batches as units, their exits not recorded.

    At batch 1 a timed batch is one request, so its pairs are that request's latencies; only
    the exit each took is unknown (one stratum: ``n_exits`` is 1, and no figure is per exit).
    The rows timed come from the result's coverage (``samples_timed``) where it records it.

    Example:
        >>> from dyncal.artifacts.verify import ModelIdentity, PairedTiming, VerifyResult
        >>> pair = PairedTiming("cpu/b1", 1, ((1.0, 1.1),) * 3, ((2.0, 2.0),) * 3)
        >>> v = VerifyResult("r", "d", ModelIdentity("m", None), 10, 1, 1, 1, 1, (1,), (1,), (pair,), "cpu", "x", 1,
        ...                  settings={"max_seconds": 10.0})
        >>> requests_from_pairs(v)[0].coverage()
        '3 of 10 requests timed (time bound 10 s)'
    """
    coverage = verify.settings.get("coverage")
    bound = verify.settings.get("max_seconds")
    out = []
    for t in verify.timings:
        if not t.batches:
            continue
        b = t.batch_size
        known = coverage.get(t.key) if isinstance(coverage, Mapping) else None
        samples = known.get("samples_timed") if isinstance(known, Mapping) else None
        rows = t.batches * b if not isinstance(samples, int) else samples
        rows = min(max(rows, (t.batches - 1) * b + 1), t.batches * b)  # as many units as batches timed
        out.append(
            RequestTimings(
                t.key,
                b,
                np.arange(rows),
                np.zeros(rows, dtype=np.int64),
                np.asarray(t.early_exit_ms),
                np.asarray(t.full_model_ms),
                n_exits=1,
                n_available=max(rows, verify.n),
                time_bound_s=float(bound) if isinstance(bound, (int, float)) and bound > 0 else None,
            )
        )
    return tuple(sorted(out, key=lambda t: t.batch_size))


def batch_one(requests: Sequence[RequestTimings]) -> RequestTimings | None:
    """The batch-1 timings (single requests: the SingleStream scenario), if verify timed them."""
    return next((t for t in requests if t.batch_size == 1), None)


def _predicted_key(costs: CostTable | None, k: int, device: str | None) -> tuple[str, list[float]]:
    """The profiled batch-1 latency column the tail is predicted from, and its per-exit ms."""
    from dyncal.artifacts.costs import LatencyKey
    from dyncal.calibrate.budget import cost_units, pick_latency
    from dyncal.errors import BudgetError

    units = cost_units(costs, k)
    try:
        column = pick_latency(units, device, 1)
    except BudgetError as e:
        raise DyncalError(
            f"a bound on the latency of a request needs single requests timed: {_VERIFY_HINT}, or profile batch 1 "
            f"to predict it ({e})"
        ) from None
    return str(LatencyKey.from_column(column)), [float(v) for v in units[column]]


def report_tail_criteria(
    bounds: Sequence[TailBound],
    requests: Sequence[RequestTimings],
    *,
    exits: np.ndarray,
    costs: CostTable | None,
    k: int,
    device: str | None = None,
    unused: str | None = None,
) -> list[Criterion]:
    """Judge the report's tail bounds: measured on verify's batch-1 requests, else predicted from the profile.

    Args:
        bounds: What was asked (:func:`dyncal.reports.tail.tail_bounds`).
        requests: Verify's per-request timings (:func:`stored_requests`).
        exits: The exit of each judged row at the operating point (for a prediction).
        costs: The run's costs (the profiled batch-1 latency, for a prediction).
        k: Exits.
        device: The latency device asked, if any.
        unused: Why a verify result that was given is not used (its note), if so.

    Raises:
        DyncalError: A ratio to the plain deployment without verify's batch-1 requests, or
            nothing to judge a bound in ms on.
    """
    if not bounds:
        return []
    b1 = batch_one(requests)
    if b1 is not None:
        return judge_tail(bounds, b1)
    ratio = next((b for b in bounds if b.form == "ratio"), None)
    if ratio is not None:
        name = "max_p99_ratio" if ratio.percentile == 99.0 else "max_latency_ratio"
        raise DyncalError(
            f"{param(name)} {ratio.text}: the plain deployment's latency per request is measured by verify, not "
            f"predicted; " + (unused or _VERIFY_HINT)
        )
    key, per_exit = _predicted_key(costs, k, device)
    return [predicted_tail_criterion(b, exits, per_exit, cost=key) for b in bounds]


def report_savings(
    rate: str | None,
    requests: Sequence[RequestTimings],
    verify: VerifyResult | None,
    bounds: Sequence[TailBound] = (),
    unused: str | None = None,
) -> Savings | None:
    """What early exit saves at ``rate`` (None when no rate was asked).

    The Server scenario is provisioned for the report's p99 bound in ms when one was given.

    Raises:
        DyncalError: A rate without verify's per-request timings, or a malformed rate.
    """
    if rate is None:
        return None
    from dyncal.analysis.capacity import parse_rate, what_it_saves

    per_s = parse_rate(rate)
    if verify is None or not requests:
        if unused is not None:
            raise DyncalError(f"{param('rate')} needs verify's measured service times; {unused}")
        why = "no verify result was given" if verify is None else "the verify result stores no timed requests"
        raise DyncalError(f"{param('rate')} needs verify's measured service times and {why}; {_VERIFY_HINT}")
    p99 = next((b.bound for b in bounds if b.form == "ms" and b.percentile == 99.0), None)
    same_device = [t for t in requests if t.key.split("/b")[0] == requests[0].key.split("/b")[0]]
    return what_it_saves(same_device, per_s, cores_per_server=verify.threads or 1, p99_bound_ms=p99)


def requests_document(requests: Sequence[RequestTimings]) -> dict[str, dict[str, Any]]:
    """``report --json``'s latency as requests feel it: per key, what was timed and every summary.

    Example:
        >>> t = RequestTimings("cpu/b1", 1, np.arange(2), np.array([0, 1]), np.ones((2, 1)), np.ones((2, 1)), n_exits=2)
        >>> doc = requests_document([t])["cpu/b1"]
        >>> doc["coverage"], doc["summaries"][0]["p99_ms"]
        ('2 of 2 requests timed', 1.0)
    """
    return {t.key: {"coverage": t.coverage(), "summaries": [s.to_dict() for s in t.summaries()]} for t in requests}
