"""Everything a report shows, computed once: the operating point with its evidence, verdict and calibration.

:func:`prepare_report` chooses the operating point (:mod:`dyncal.reports.operating`), takes
the latency evidence (measured by a matching verify result, else predicted from the profile),
judges the criteria, weighs other runs (``compare``), solves the other methods at the same
budget and bins the calibration into a :class:`ReportData`. numpy only; nothing is drawn here.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dyncal.artifacts.costs import LatencyKey
from dyncal.choices import Method
from dyncal.errors import DyncalError
from dyncal.options import options_from
from dyncal.reports.choice import OperatingChoice
from dyncal.reports.compare import Alternative, compare_alternatives
from dyncal.reports.decision import Criterion, decide, judge, speedup_estimate
from dyncal.reports.evidence import (
    LatencyEvidence,
    _per_exit_macs,
    latency_keywords,
    mean_unit_cost,
    measured_latency,
    predicted_latency,
    usable_verify,
)
from dyncal.reports.figures import MS_PREFIX, OperatingPoint
from dyncal.reports.operating import ReportOptions, choose_operating_point
from dyncal.reports.robustness import robustness_table
from dyncal.reports.tail_evidence import report_savings, report_tail_criteria, stored_requests
from dyncal.reports.throughput import throughput_notes
from dyncal.reports.timed import TimedCoverage

if TYPE_CHECKING:
    import pandas as pd

    from dyncal.analysis.calibration import ReliabilityBins
    from dyncal.analysis.capacity import Savings
    from dyncal.artifacts.requests import RequestTimings
    from dyncal.artifacts.run import Run
    from dyncal.artifacts.verify import VerifyResult

__all__ = ["ReportData", "prepare_report", "report_date", "latency_evidence", "held_out_point", "reliability_per_exit"]


@dataclass(frozen=True, kw_only=True)
class ReportData(OperatingChoice):
    """Everything the pages draw, computed once (what :func:`prepare_report` returns).

    The operating point and how it was reached are the
    :class:`~dyncal.reports.choice.OperatingChoice` fields; here ``frontier`` is always
    computed, ``verify`` is the verify result used as evidence (it matched) or None, and
    ``notes`` say why one was not used.

    Attributes:
        frontier: The long-format frontier table.
        criteria: The judged criteria.
        decision: ``"GO"``, ``"NO-GO"``, ``"INCONCLUSIVE"`` or None.
        speedup: Speed-up per cost name (MACs on the judged rows; latency as in ``latency``).
        exit_accuracy: ``(K,)`` accuracy of each exit on all samples (T = 1).
        exit_confidence: ``(K,)`` mean top probability of each exit (T = 1).
        bins: ``K`` reliability bins at T = 1.
        scaled_bins: ``K`` reliability bins with the fitted temperatures, or None.
        date: The report's fixed date (metadata and footer).
        command: The command line that made this report, if known.
        full_model: The full model's cost per cost name: MACs, and ms per batch per latency
            key (:func:`dyncal.reports.evidence.full_model_ms`): the one figure every page shows.
        latency: Per latency key, the early exit against the full model (measured or predicted).
        methods: Every solver (and the oracle) at the operating point's budget (page 2's table).
        alternatives: Other runs judged against the operating point (``--compare``).
        requests: Verify's per-request timings, one per batch size (the tail and the savings).
        savings: What early exit saves at the asked ``rate``, or None.
        robustness: The thresholds on perturbed runs, one row each (``--robustness``,
            :func:`dyncal.reports.robustness.robustness_table`).

    Example:
        >>> data = prepare_report("run", min_accuracy=0.95)  # doctest: +SKIP
        >>> data.decision, data.held_out_summary()["n"]  # doctest: +SKIP
        ('GO', 2500)
    """

    frontier: pd.DataFrame
    criteria: tuple[Criterion, ...]
    decision: str | None
    speedup: dict[str, float]
    exit_accuracy: np.ndarray
    exit_confidence: np.ndarray
    bins: tuple[ReliabilityBins, ...]
    scaled_bins: tuple[ReliabilityBins, ...] | None
    date: _dt.datetime
    command: str
    full_model: dict[str, float]
    latency: dict[str, LatencyEvidence]
    methods: tuple[_MethodAtBudget, ...]
    alternatives: tuple[Alternative, ...]
    requests: tuple[RequestTimings, ...] = ()
    savings: Savings | None = None
    robustness: tuple[dict[str, Any], ...] = ()

    @property
    def dominating_static(self) -> tuple[Alternative, ...]:
        """The static alternatives that are as accurate and cheaper: early exit does not pay against them."""
        return tuple(a for a in self.alternatives if a.static and a.dominates)

    def held_cost(self, name: str) -> float | None:
        """Expected cost on the judged rows: MACs per sample, or a latency key's early-exit ms per batch."""
        if name in self.latency:
            return self.latency[name].early_exit_ms
        return mean_unit_cost(self.run, name, self.outcome.exits)

    def operating_point(self, label: str | None = None) -> OperatingPoint:
        """The operating point as the figures mark it: page 1's held-out figures (:func:`held_out_point`)."""
        return held_out_point(self, self.latency, label)

    def held_out_summary(self) -> dict[str, Any]:
        """The operating point on the judged rows: what page 1, 2 and 4, the JSON and the terminal show."""
        o = self.outcome
        return {
            "rows": "held out" if o.held_out else "all samples (nothing held out)",
            "n": o.n,
            "accuracy": self.accuracy,
            "accuracy_ci": None if self.accuracy_interval is None else list(self.accuracy_interval),
            "last_exit_accuracy": float(o.last_correct.mean()) if o.n else None,
            "expected_macs": self.held_cost("macs"),
            "exit_shares": [float(s) for s in o.shares(self.k)],
            "exit_counts": [int(c) for c in o.counts(self.k)],
        }


def held_out_point(
    choice: OperatingChoice, latency: Mapping[str, LatencyEvidence], label: str | None = None
) -> OperatingPoint:
    """The operating point at the figures page 1 shows: held-out accuracy, held-out MACs and ms.

    The star of the frontier and latency figures (the report's and ``dyncal plot``'s) sits at
    the same accuracy and cost as page 1's text: MACs per sample on the judged rows, and per
    latency key the early exit's ms there (:class:`~dyncal.reports.evidence.LatencyEvidence`:
    measured by verify, else predicted per batch from the profile). The curves are the
    frontier's (fit-half costs), so the star may sit a little off them.
    """
    point = OperatingChoice.operating_point(choice, label)  # the fit-half point, whatever subclass
    macs = mean_unit_cost(choice.run, "macs", choice.outcome.exits)
    return dataclasses.replace(
        point,
        expected_macs=macs if macs is not None else point.expected_macs,
        expected_ms={**point.expected_ms, **{k: e.early_exit_ms for k, e in latency.items()}},
    )


def _float_or_none(v: Any) -> float | None:
    return None if v is None else float(v)


def report_date(run: Run) -> _dt.datetime:
    """The fixed date of a report: ``SOURCE_DATE_EPOCH`` if set, else the run's creation time.

    Example:
        >>> from types import SimpleNamespace
        >>> run = SimpleNamespace(provenance=SimpleNamespace(created="2026-01-02T03:04:05+00:00"))
        >>> fixed = "SOURCE_DATE_EPOCH" in os.environ
        >>> fixed or report_date(run).isoformat() == "2026-01-02T03:04:05+00:00"
        True
    """
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch:
        try:
            return _dt.datetime.fromtimestamp(int(epoch), tz=_dt.timezone.utc)
        except (ValueError, OverflowError) as e:
            raise DyncalError(
                f"SOURCE_DATE_EPOCH must be whole seconds since 1970, got {epoch!r}; unset it or fix it"
            ) from e
    created = run.provenance.created if run is not None else ""
    try:
        d = _dt.datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
    return d if d.tzinfo else d.replace(tzinfo=_dt.timezone.utc)


def latency_evidence(choice: OperatingChoice, verify_result: VerifyResult | None = None) -> dict[str, LatencyEvidence]:
    """The operating point's latency per key: measured by ``verify_result`` where it timed it, else predicted.

    Predictions come from the profile on the judged rows; a key verify timed that was not
    profiled is measured only.

    Example:
        >>> evidence = latency_evidence(choose_operating_point("run", ReportOptions()))  # doctest: +SKIP
        >>> evidence["cpu/b1"].source  # doctest: +SKIP
        'predicted'
    """
    costs, outcome, v = choice.run.costs, choice.outcome, verify_result
    assert costs is not None  # choose_operating_point refuses a run without costs
    held_rows = f"{outcome.n:,} held-out samples" if outcome.held_out else f"{outcome.n:,} samples (nothing held out)"
    measured = {} if v is None else {t.key: measured_latency(t, v.n, TimedCoverage.of(v, t.key)) for t in v.timings}
    evidence = {
        key: measured.get(key)
        or predicted_latency(costs, key, outcome.exits, held_out=outcome.held_out, rows=held_rows)
        for key in sorted(costs.latency)
    }
    return evidence | measured  # the profiled keys first, then the ones verify timed alone


def _usable_verify(choice: OperatingChoice) -> tuple[VerifyResult | None, tuple[str, ...]]:
    """The verify result the report may judge on (None when it does not match), and the notes with why not."""
    result, label, latency = choice.verify, choice.verify_label, choice.latency_key
    if result is None:
        return None, choice.notes
    why = usable_verify(result, label, choice.run, choice.fingerprint)
    if why is not None:
        return None, (*choice.notes, why)
    if latency is not None and choice.requirements.min_speedup is not None and result.timing(latency) is None:
        timed = ", ".join(t.key for t in result.timings) or "none"
        asked = LatencyKey.parse(latency)
        return result, (
            *choice.notes,
            f"verify result '{label}' has no timing for {latency} (it timed {timed}); the speed-up "
            f"on {latency} is predicted: verify with --batch-size {asked.batch_size} on {asked.device}",
        )
    return result, choice.notes


def prepare_report(run_path: str | os.PathLike[str], options: ReportOptions | None = None, **fields: Any) -> ReportData:
    """Compute everything a report shows, without drawing.

    Args:
        run_path: The run.
        options: What is asked (:class:`ReportOptions`); or give its fields as keywords.
        **fields: :class:`ReportOptions` fields, when ``options`` is None.

    :func:`dyncal.reports.pdf.render_pdf` draws the result.

    Returns:
        The report's data: frontier, operating point, criteria, decision, calibration.

    Raises:
        DyncalError: As :func:`dyncal.reports.pdf.build_report`.

    Example:
        >>> data = prepare_report("run", ReportOptions(min_accuracy=0.95))  # doctest: +SKIP
        >>> data.decision, data.accuracy  # doctest: +SKIP
        ('GO', 0.9875)
    """
    options = options_from(ReportOptions, options, fields, "report")
    choice = choose_operating_point(run_path, options)
    run, outcome = choice.run, choice.outcome
    verify_result, notes = _usable_verify(choice)
    evidence = latency_evidence(choice, verify_result)
    estimates = {k: e.speedup for k, e in evidence.items()}
    macs = _per_exit_macs(run)
    if macs is not None:
        estimates["macs"] = speedup_estimate(outcome, macs, macs[-1])
    criteria = judge(
        choice.requirements,
        accuracy=choice.accuracy,
        accuracy_interval=choice.accuracy_interval,
        outcome=outcome,
        speedup=estimates.get(choice.speedup_cost),
    )
    requests = stored_requests(verify_result, options.verify)
    bounds = options.tail_bounds
    unused = notes[-1] if verify_result is None and options.verify is not None and notes else None
    criteria += report_tail_criteria(
        bounds, requests, exits=outcome.exits, costs=run.costs, k=run.k, device=options.device, unused=unused
    )
    savings = report_savings(options.rate, requests, verify_result, bounds, unused)
    decision = decide(criteria)
    alternatives = compare_alternatives(choice, evidence, options.compare) if options.compare else ()
    if decision is not None and any(a.static and a.dominates for a in alternatives):
        decision = "NO-GO"  # a static model is as accurate and cheaper: early exit does not pay
    fitted = any(abs(float(t) - 1.0) > 1e-9 for t in choice.thresholds.get("temperatures") or ())
    conf, correct = choice.confidence()
    shared = {f.name: getattr(choice, f.name) for f in dataclasses.fields(OperatingChoice)}
    shared.update(notes=(*notes, *throughput_notes(verify_result, choice.latency_key)), verify=verify_result)
    return ReportData(
        **shared,
        criteria=tuple(criteria),
        decision=decision,
        speedup={name: estimates[name].value for name in (["macs"] if "macs" in estimates else []) + sorted(evidence)},
        exit_accuracy=correct.mean(axis=0),
        exit_confidence=conf.mean(axis=0),
        bins=reliability_per_exit(conf, correct),
        scaled_bins=reliability_per_exit(*choice.confidence(fitted_temperatures=True)) if fitted else None,
        date=report_date(run),
        command=options.command,
        full_model={name: e.full_model for name, e in estimates.items()},
        latency=evidence,
        methods=_methods_at_budget(choice),
        alternatives=alternatives,
        requests=requests,
        savings=savings,
        robustness=robustness_table(choice, options.robustness, options.max_drop) if options.robustness else (),
    )


def reliability_per_exit(conf: np.ndarray, correct: np.ndarray) -> tuple[ReliabilityBins, ...]:
    """One reliability summary per exit, from ``(N, K)`` top probabilities and correctness."""
    from dyncal.analysis.calibration import reliability_bins

    return tuple(reliability_bins(conf[:, k], correct[:, k]) for k in range(conf.shape[1]))


@dataclass(frozen=True)
class _MethodAtBudget:
    """One method at the operating point's budget (page 2's table)."""

    method: str
    accuracy: float | None
    interval: tuple[float, float] | None
    fit_macs: float | None


def _methods_at_budget(choice: OperatingChoice) -> tuple[_MethodAtBudget, ...]:
    """The deployed operating point, then every other solver and the oracle solved at the same budget."""
    from dyncal.calibrate.budget import resolve_budget
    from dyncal.calibrate.frontier import oracle_at_budget
    from dyncal.calibrate.solvers import solve_run
    from dyncal.stats import mean_bootstrap_ci

    prep, frontier, doc = choice.prep, choice.frontier, choice.thresholds
    main = str(doc.get("method"))
    out = [_MethodAtBudget(main, choice.accuracy, choice.accuracy_interval, choice.fit_costs.get("macs"))]
    budget = (doc.get("budget") or {}).get("asked")
    if budget is None or frontier is None:
        return tuple(out)
    unit = str((doc.get("budget") or {}).get("unit") or "macs")
    at = latency_keywords(LatencyKey.from_column(unit) if unit.startswith(MS_PREFIX) else None)
    solvers = {m.value for m in Method}
    names = [str(m) for m in dict.fromkeys(frontier["method"].astype(str)) if m not in ("static", "oracle", main)]
    for name in sorted((n for n in names if n in solvers), key=lambda n: n == "geometric"):
        try:
            solved = solve_run(prep, str(budget), method=name, **at).to_dict()
        except DyncalError:
            out.append(_MethodAtBudget(name, None, None, None))
            continue
        ci = solved.get("holdout_ci")
        out.append(
            _MethodAtBudget(
                name,
                _float_or_none(solved.get("holdout_accuracy")),
                None if ci is None else (float(ci[0]), float(ci[1])),
                _float_or_none(solved.get("expected_macs")),
            )
        )
    target = resolve_budget(str(budget), prep.costs, prep.k, **at)
    costs = np.asarray(prep.units[target.unit])
    fit, held = prep.correct[prep.fit_idx], prep.correct[prep.holdout_idx]
    fit_exits = oracle_at_budget(fit, costs, target.value)
    macs = prep.units.get("macs")
    fit_macs = None if macs is None else float(np.asarray(macs)[fit_exits].mean())
    judged, exits = (held, oracle_at_budget(held, costs, target.value)) if len(held) else (fit, fit_exits)
    ok = judged[np.arange(len(judged)), exits]
    ci = mean_bootstrap_ci(ok, seed=prep.seed) if len(held) else None
    out.append(_MethodAtBudget("oracle", float(ok.mean()), ci, fit_macs))
    return tuple(out)
