"""The PDF go/no-go report: six pages a team lead can decide from.

1. Decision: GO / NO-GO (or the trade-off, when no criterion is given), the criteria with
   their 95% intervals, the operating point and the speed-up against the last exit.
2. Accuracy against MACs: every method's frontier, the static exits, the oracle bound.
3. Accuracy against latency, one panel per profiled device and batch size (or a page that
   says none was profiled and how to measure it).
4. Exits at the operating point.
5. Calibration: per-exit accuracy, confidence, ECE and reliability diagrams.
6. Thresholds and provenance.

The PDF is vector (matplotlib's PDF backend, TrueType text that extracts as text) and
deterministic: its metadata date is ``SOURCE_DATE_EPOCH`` when set, else the run's
creation time, and nothing on the pages depends on the clock.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import logging
import math
import os
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dyncal.errors import DyncalError
from dyncal.reports.decision import Criterion, ExitOutcome, Requirements, judge, speedup_of_units
from dyncal.reports.figures import (
    MS_PREFIX,
    OperatingPoint,
    latency_keys,
    main_method_of,
    plot_exits,
    plot_frontier,
    plot_latency,
    plot_reliability,
    reliability_columns,
)

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from dyncal.analysis.calibration import ReliabilityBins
    from dyncal.calibrate.solvers import PreparedRun
    from dyncal.run import Run

__all__ = [
    "ReportResult",
    "ReportData",
    "build_report",
    "prepare_report",
    "render_pdf",
    "export_figure",
    "report_date",
    "PAGE_TITLES",
    "FIGURE_KINDS",
]

log = logging.getLogger(__name__)

A4_INCHES = (8.27, 11.69)
MAX_REPORT_EXITS = 12
"""Most exits the report's pages have room for (tables and reliability diagrams, one per exit)."""
PAGE_TITLES = (
    "Decision",
    "Accuracy vs MACs",
    "Accuracy vs latency",
    "Exits at the operating point",
    "Calibration",
    "Thresholds and provenance",
)
_GO_COLOR = "#1a7f37"
_NOGO_COLOR = "#c62828"
_GREY = "#555555"
_DEFAULT_MAX_DROP = 0.01
_RC: dict[str, Any] = {
    "pdf.fonttype": 42,
    "pdf.compression": 9,
    "font.family": "DejaVu Sans",
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "svg.hashsalt": "dyncal",
}


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ReportResult:
    """What :func:`build_report` wrote and decided.

    Attributes:
        path: The PDF written.
        decision: ``"GO"``, ``"NO-GO"``, or None when no criterion was given.
        criteria: The judged criteria.
        pages: Page titles, in order.
        budget: The budget the thresholds were solved for (``"0.42x"``, ``"35ms"``).
        budget_reason: Why that budget (asked, or how it was chosen).
        thresholds: The ``thresholds.json`` document of the operating point.
        speedup: Speed-up against the last exit on every sample, per cost (``"macs"``,
            ``"cpu/b1"``, ...), on the judged rows.
        size_bytes: Size of the PDF.
        decision_provisional: True when a decision was made with nothing held out (point
            estimates on the samples the thresholds were fitted on, no intervals).

    Example:
        >>> r = ReportResult(Path("r.pdf"), None, (), PAGE_TITLES, "0.5x", "asked", {}, {}, 1)
        >>> r.to_dict()["decision"] is None
        True
    """

    path: Path
    decision: str | None
    criteria: tuple[Criterion, ...]
    pages: tuple[str, ...]
    budget: str
    budget_reason: str
    thresholds: dict[str, Any]
    speedup: dict[str, float]
    size_bytes: int
    decision_provisional: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The ``dyncal report --json`` document."""
        return {
            "path": str(self.path),
            "decision": self.decision,
            "decision_provisional": self.decision_provisional,
            "criteria": [c.to_dict() for c in self.criteria],
            "pages": [{"number": i + 1, "title": t} for i, t in enumerate(self.pages)],
            "budget": self.budget,
            "budget_reason": self.budget_reason,
            "operating_point": self.thresholds,
            "speedup": dict(self.speedup),
            "size_bytes": self.size_bytes,
        }


@dataclass(frozen=True)
class ReportData:
    """Everything the pages draw, computed once (what :func:`prepare_report` returns).

    Attributes:
        run: The run.
        frontier: The long-format frontier table.
        thresholds: The operating point's ``thresholds.json`` document.
        budget: The budget solved for.
        budget_reason: Why that budget.
        requirements: The criteria asked.
        criteria: The judged criteria.
        decision: ``"GO"``, ``"NO-GO"`` or None.
        outcome: Per-sample outcome on the judged (held-out) rows.
        speedup: Speed-up per cost name on the judged rows.
        speedup_cost: Cost name used for the speed-up criterion.
        exit_accuracy: ``(K,)`` accuracy of each exit on all samples (T = 1).
        exit_confidence: ``(K,)`` mean top probability of each exit (T = 1).
        bins: ``K`` reliability bins at T = 1.
        scaled_bins: ``K`` reliability bins with the fitted temperatures, or None.
        title: Report title.
        date: The report's fixed date (metadata and footer).
        command: The command line that made this report, if known.
    """

    run: Run
    frontier: pd.DataFrame
    thresholds: dict[str, Any]
    budget: str
    budget_reason: str
    requirements: Requirements
    criteria: tuple[Criterion, ...]
    decision: str | None
    outcome: ExitOutcome
    speedup: dict[str, float]
    speedup_cost: str
    exit_accuracy: np.ndarray
    exit_confidence: np.ndarray
    bins: tuple[ReliabilityBins, ...]
    scaled_bins: tuple[ReliabilityBins, ...] | None
    title: str
    date: _dt.datetime
    command: str = ""
    baselines: dict[str, float] = field(default_factory=dict)

    @property
    def k(self) -> int:
        """Number of exits."""
        return self.run.k

    def operating_point(self) -> OperatingPoint:
        """The operating point as the figures mark it."""
        t = self.thresholds
        acc, interval = _op_accuracy(t)
        ms = {str(k): float(v) for k, v in (t.get("expected_ms") or {}).items() if v is not None}
        return OperatingPoint(
            expected_macs=_float_or_none(t.get("expected_macs")),
            accuracy=acc,
            interval=interval,
            expected_ms=ms,
            label=f"operating point (budget {_budget_label(self).split(' (')[0]})",
        )


def _float_or_none(v: Any) -> float | None:
    return None if v is None else float(v)


def _op_accuracy(t: Mapping[str, Any]) -> tuple[float, tuple[float, float] | None]:
    """Held-out accuracy and interval of a thresholds document (fitted when none held out)."""
    held = t.get("holdout_accuracy")
    ci = t.get("holdout_ci")
    if held is not None and not (isinstance(held, float) and math.isnan(held)):
        interval = None if ci is None else (float(ci[0]), float(ci[1]))
        return float(held), interval
    return float(t.get("calibration_accuracy", float("nan"))), None


# --------------------------------------------------------------------------- dates


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


# --------------------------------------------------------------------------- computing


def _latency_choice(run: Run, device: str | None, batch_size: int | None) -> str | None:
    """The latency key asked by ``device``/``batch_size`` (None when neither was given)."""
    if device is None and batch_size is None:
        return None
    from dyncal.run import latency_key

    have = sorted((run.costs.latency if run.costs is not None else {}).keys())
    dev = device or "cpu"
    if batch_size is None:
        batches = sorted(int(k.split("/b")[1]) for k in have if k.split("/b")[0] == dev)
        batch_size = 1 if not batches or 1 in batches else batches[0]
    key = latency_key(dev, batch_size)
    if key not in have:
        raise DyncalError(
            f"no latency profiled for {key} (profiled: {', '.join(have) or 'none'}); run "
            f"'dyncal profile {run.path} --device {dev} --batch-size {batch_size}' first, or leave "
            "out --device/--batch-size to judge the speed-up in MACs"
        )
    return key


def _baselines(run: Run) -> dict[str, float]:
    """Cost of running the last exit on every sample, per cost name (MACs and latency keys).

    Latency is the sum of the stage medians up to the last exit, without exit decisions: a
    static model makes none.
    """
    out: dict[str, float] = {}
    costs = run.costs
    if costs is not None and costs.macs is not None:
        out["macs"] = float(costs.macs[-1])
    for key, prof in sorted((costs.latency if costs is not None else {}).items()):
        out[key] = float(prof.exit_ms[-1])
    return out


def _per_exit_costs(run: Run) -> dict[str, list[float]]:
    """Cost of a sample that leaves at exit k, per cost name (as solve counts it)."""
    from dyncal.calibrate.budget import cost_units

    units = cost_units(run.costs, run.k)
    return {(name[len(MS_PREFIX) :] if name.startswith(MS_PREFIX) else name): list(v) for name, v in units.items()}


_BATCH_ORDER_SEED = 20261128


def _batch_size_of(name: str) -> int:
    """Batch size of a latency key (``"cpu/b32"`` -> 32); 1 for ``"macs"``."""
    _, sep, b = name.partition("/b")
    return int(b) if sep and b.isdigit() else 1


def _unit_costs(run: Run, name: str, exits: np.ndarray) -> np.ndarray | None:
    """Cost of each unit the early-exit model runs on rows leaving at ``exits``.

    For MACs and batch size 1 a unit is a sample (``per_exit_cost[exit]``). For a latency
    key with batch size ``b > 1`` a unit is a batch: the rows are shuffled in a fixed
    seeded order (data order can be sorted by class) and cut into full batches of ``b``
    (the remainder, fewer than ``b`` rows, is left out unless it is all there is); each
    batch's time is predicted from the profiled stages by
    :func:`dyncal.analysis.costmodel.predict_batch_ms`, where a stage runs on the rows still in the
    batch and stops once none is left. A per-sample expectation would assume every batch
    stops as early as its average sample, which a batch does not.
    """
    per_exit = _per_exit_costs(run).get(name)
    if per_exit is None:
        return None
    b = _batch_size_of(name)
    exits = np.asarray(exits)
    if b <= 1 or name == "macs":
        per_sample: np.ndarray = np.asarray(per_exit, dtype=float)[exits]
        return per_sample
    from dyncal.analysis.costmodel import predict_batch_ms

    device = name.partition("/b")[0]
    order = np.random.default_rng(_BATCH_ORDER_SEED).permutation(len(exits))
    shuffled = exits[order]
    n_full = (len(shuffled) // b) * b
    starts = range(0, n_full, b) if n_full else [0]
    out = []
    for start in starts:
        batch = shuffled[start : start + b]
        if not len(batch):
            continue
        ms = predict_batch_ms(run.costs, device, batch, b)
        out.append(float("nan") if ms is None else ms)
    return np.asarray(out, dtype=float)


@dataclass(frozen=True)
class _FitHalf:
    """Scores and correctness of the fitting half: where a budget may be chosen."""

    scores: np.ndarray
    correct: np.ndarray
    n_held: int

    def shortfalls(
        self,
        thresholds: Sequence[float | None],
        req: Requirements,
        units: Callable[[np.ndarray], np.ndarray | None] | None,
        baseline: float,
        batch: int = 1,
    ) -> dict[str, float]:
        """How far each criterion misses on the fitting half, with room for both halves' noise.

        The margin is the fitting half's one-sided 95% normal bound plus the half-width the
        held-out 95% interval will have, so a budget chosen here is expected to pass there.
        Returns per criterion name the shortfall (0 when met): accuracy points for the
        accuracy criteria, a factor for the speed-up (``units`` gives the cost of each
        sample, or of each batch of ``batch`` rows, for the exits taken).
        """
        from dyncal.calibrate.policy import assign_exits

        n = self.scores.shape[0]
        exits = assign_exits(self.scores, thresholds)
        ok = self.correct[np.arange(n), exits].astype(float)
        out: dict[str, float] = {}

        def margin(n_units: float, n_held: float) -> float:
            return 1.645 / math.sqrt(max(n_units, 1)) + (1.96 / math.sqrt(n_held) if n_held >= 1 else 0.0)

        z = margin(n, self.n_held)
        if req.min_accuracy is not None:
            out["accuracy"] = max(0.0, req.min_accuracy - (ok.mean() - z * ok.std()))
        if req.max_drop is not None:
            diff = self.correct[:, -1].astype(float) - ok
            out["accuracy_drop"] = max(0.0, diff.mean() + z * diff.std() - req.max_drop)
        if req.min_speedup is not None and units is not None:
            c = units(exits)
            if c is not None and len(c):
                zc = margin(len(c), self.n_held / max(batch, 1))
                out["speedup"] = max(0.0, req.min_speedup - baseline / (c.mean() + zc * c.std()))
        return out

    def passes(
        self,
        thresholds: Sequence[float | None],
        req: Requirements,
        units: Callable[[np.ndarray], np.ndarray | None] | None,
        baseline: float,
        batch: int = 1,
    ) -> bool:
        """Whether every criterion holds on the fitting half (see :meth:`shortfalls`)."""
        return not any(v > 0 for v in self.shortfalls(thresholds, req, units, baseline, batch).values())


def _choose_budget(
    frontier: pd.DataFrame,
    method: str,
    req: Requirements,
    fit: _FitHalf,
    units: Callable[[np.ndarray], np.ndarray | None] | None,
    baseline: float,
    batch: int = 1,
) -> tuple[str, str]:
    """Pick a budget when none was asked: ``(budget for solve, reason for people)``.

    With criteria: the cheapest budget on ``method``'s frontier whose thresholds meet every
    criterion on the fitting half with a one-sided 95% margin, so that the held-out half,
    which decides, is not used to choose. When none does, the budget that comes closest:
    with a speed-up criterion, the cheapest budget meeting the accuracy criteria (a larger
    one is only slower); else the one with the smallest shortfall. Without criteria: the
    cheapest budget whose fitted accuracy is within one percentage point of the last exit's.
    """
    rows = frontier[frontier["method"].astype(str) == method].sort_values("budget_fraction")
    rows = rows[rows["thresholds"].astype(str) != "null"]
    if req.any:
        # an accuracy criterion: the cheapest budget that meets everything; only a speed-up:
        # the most accurate (largest) budget that still gives it.
        cheapest_first = req.min_accuracy is not None or req.max_drop is not None
        pairs = list(zip(rows["budget_fraction"], rows["thresholds"], strict=True))
        misses: list[tuple[float, dict[str, float]]] = []
        for frac, t_text in pairs if cheapest_first else pairs[::-1]:
            short = fit.shortfalls(json.loads(t_text), req, units, baseline, batch)
            if not any(v > 0 for v in short.values()):
                which = "cheapest" if cheapest_first else "largest (most accurate)"
                return f"{float(frac)!r}x", (
                    f"chosen as the {which} budget whose thresholds meet every criterion on the "
                    "fitting half "
                    "with a margin for sampling noise; "
                    + ("judged on the held-out half" if fit.n_held else "nothing held out: judged on the same samples")
                )
            misses.append((float(frac), short))
        if not misses:
            return "1x", "no budget on the frontier to choose from; the full budget is shown"
        closest = _closest_budget(misses, req)
        frac, short = closest
        how = "; ".join(_shortfall_text(name, v) for name, v in short.items() if v > 0)
        return f"{frac!r}x", (
            "no budget meets every criterion on the fitting half (with the margin for sampling "
            f"noise); shown: the budget that comes closest, short by {how}"
        )
    last_fit = float(fit.correct[:, -1].mean())
    ok = rows[rows["fitted_accuracy"] >= last_fit - _DEFAULT_MAX_DROP - 1e-12]
    frac = float(ok["budget_fraction"].iloc[0]) if len(ok) else 1.0
    return f"{frac!r}x", (
        "no --budget given: the cheapest budget whose fitted accuracy is within "
        f"{_pts(_DEFAULT_MAX_DROP)} "
        "of the last exit's"
    )


def _closest_budget(misses: list[tuple[float, dict[str, float]]], req: Requirements) -> tuple[float, dict[str, float]]:
    """The budget whose shortfalls are smallest (see :func:`_choose_budget`)."""
    acc_names = ("accuracy", "accuracy_drop")
    if req.min_speedup is not None:
        acc_ok = [m for m in misses if not any(m[1].get(n, 0.0) > 0 for n in acc_names)]
        if acc_ok:
            return min(acc_ok, key=lambda m: m[0])

    # smallest shortfall: speed-up relative to what was asked, accuracy in points
    def total(m: tuple[float, dict[str, float]]) -> tuple[int, float, float]:
        short = m[1]
        rel = sum(v / (req.min_speedup or 1.0) if n == "speedup" else v for n, v in short.items())
        return (sum(v > 0 for v in short.values()), rel, m[0])

    return min(misses, key=total)


def _shortfall_text(name: str, v: float) -> str:
    if name == "speedup":
        return f"{v:.2f}× of speed-up"
    return f"{_pts(v)} of {'accuracy' if name == 'accuracy' else 'accuracy drop'}"


def _outcome(prep: PreparedRun, thresholds: Mapping[str, Any]) -> ExitOutcome:
    """Apply the operating point to the held-out rows (all rows when nothing was held out)."""
    from dyncal.calibrate.policy import assign_exits, thresholds_from_json

    held = prep.holdout_idx
    rows = held if len(held) else np.arange(prep.scores.shape[0])
    exits = assign_exits(prep.scores[rows], thresholds_from_json(thresholds["thresholds"]))
    right = prep.correct[rows]
    return ExitOutcome(
        exits=exits,
        correct=right[np.arange(len(rows)), exits],
        last_correct=right[:, -1],
        held_out=bool(len(held)),
    )


def prepare_report(
    run_path: str | os.PathLike[str],
    *,
    budget: str | None = None,
    min_accuracy: float | None = None,
    max_drop: float | None = None,
    min_speedup: float | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    title: str | None = None,
    method: str | None = None,
    temperature: bool = False,
    holdout: float = 0.5,
    seed: int = 0,
    command: str = "",
) -> ReportData:
    """Compute everything a report shows, without drawing.

    Takes the arguments of :func:`build_report` (less ``out_pdf``); :func:`render_pdf`
    draws the result.

    Returns:
        The report's data: frontier, operating point, criteria, decision, calibration.

    Raises:
        DyncalError: As :func:`build_report`.

    Example:
        >>> data = prepare_report("run", min_accuracy=0.95)  # doctest: +SKIP
        >>> data.decision, data.thresholds["holdout_accuracy"]  # doctest: +SKIP
        ('GO', 0.9875)
    """
    from dyncal.analysis.calibration import reliability_bins
    from dyncal.analysis.frontier import compute_frontier
    from dyncal.calibrate.scores import exit_scores
    from dyncal.calibrate.solvers import prepare_run, solve_run
    from dyncal.run import load_run

    req = Requirements(min_accuracy, max_drop, min_speedup).validate()
    from dyncal.calibrate.solvers import METHODS

    if method is not None and method not in METHODS:
        raise DyncalError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if batch_size is not None and batch_size < 1:
        raise DyncalError(f"--batch-size must be a positive integer, got {batch_size}")
    run = load_run(run_path)
    if run.costs is None or (run.costs.macs is None and not run.costs.latency):
        raise DyncalError(
            f"run '{run.path}' has no costs, so there is no speed to trade for accuracy; run "
            f"'dyncal profile {run.path}' (or import with --macs) first"
        )
    latency = _latency_choice(run, device, batch_size)
    if latency is None and run.costs.macs is None:
        # no MACs: latency it is; the one profiled key, never a guess among several
        keys = sorted(run.costs.latency)
        if len(keys) > 1:
            raise DyncalError(
                f"run '{run.path}' has no MAC counts and latency for several devices or batch "
                f"sizes ({', '.join(keys)}); choose one with --device and --batch-size"
            )
        latency = keys[0]
    if latency is None and req.min_speedup is not None and run.costs.latency:
        # latency was profiled: a speed-up is judged in time, not in MACs
        keys = sorted(run.costs.latency)
        if len(keys) > 1:
            raise DyncalError(
                f"--min-speedup: run '{run.path}' has latency for {', '.join(keys)}; choose one with "
                "--device and --batch-size"
            )
        latency = keys[0]
    speedup_cost = latency if latency is not None else "macs"

    lat_dev, lat_batch = (None, None)
    if latency is not None:
        dev, _, b = latency.partition("/b")
        lat_dev, lat_batch = dev, int(b)
    # score the logits once: the frontier, the solve and the held-out simulation share it
    prep = prepare_run(run, temperature=temperature, holdout=holdout, seed=seed)
    frontier = compute_frontier(prep, device=lat_dev, batch_size=lat_batch)
    baselines = _baselines(run)
    per_exit = _per_exit_costs(run)
    main_method = method or main_method_of(frontier)
    labels = np.asarray(run.labels)
    if budget is None:
        fit = _FitHalf(prep.scores[prep.fit_idx], prep.correct[prep.fit_idx], len(prep.holdout_idx))
        budget, reason = _choose_budget(
            frontier,
            main_method,
            req,
            fit,
            lambda exits: _unit_costs(run, speedup_cost, exits),
            baselines.get(speedup_cost, float("nan")),
            _batch_size_of(speedup_cost),
        )
    else:
        reason = "asked with --budget"
    # The latency column matters to solve only for an ms budget; for the speed-up
    # criterion the report uses it itself.
    from dyncal.calibrate.budget import parse_budget

    ms_budget = parse_budget(budget).kind == "ms"
    solve_kwargs: dict[str, Any] = {
        "device": lat_dev if ms_budget else None,
        "batch_size": lat_batch if ms_budget else None,
    }
    if main_method in METHODS:
        solve_kwargs["method"] = main_method
    result = solve_run(prep, budget, **solve_kwargs)
    doc = result.to_dict()

    outcome = _outcome(prep, doc)
    acc, interval = _op_accuracy(doc)
    pairs = {name: (per_exit[name], baselines[name]) for name in per_exit if name in baselines}
    units = {name: _unit_costs(run, name, outcome.exits) for name in pairs}
    criteria = judge(
        req,
        accuracy=acc,
        accuracy_interval=interval,
        outcome=outcome,
        speedup_costs=pairs,
        speedup_cost=speedup_cost,
        speedup_units=units.get(speedup_cost),
    )
    speedups = {
        name: speedup_of_units(u, pairs[name][1], False)[0] for name, u in units.items() if u is not None and len(u)
    }
    decision = None if not criteria else ("GO" if all(c.passed for c in criteria) else "NO-GO")

    temps = [float(t) for t in (doc.get("temperatures") or [1.0] * run.k)]
    scaled = None
    if any(abs(t - 1.0) > 1e-9 for t in temps):
        # the prepared scores are temperature-scaled; the raw ones need their own pass
        scaled = tuple(reliability_bins(prep.scores[:, k], prep.correct[:, k]) for k in range(run.k))
        conf, pred = exit_scores(run.logits, "maxprob")
        correct = pred == labels[:, None]
    else:
        conf, correct = prep.scores, prep.correct
    bins = tuple(reliability_bins(conf[:, k], correct[:, k]) for k in range(run.k))
    return ReportData(
        run=run,
        frontier=frontier,
        thresholds=doc,
        budget=budget,
        budget_reason=reason,
        requirements=req,
        criteria=tuple(criteria),
        decision=decision,
        outcome=outcome,
        speedup=speedups,
        speedup_cost=speedup_cost,
        exit_accuracy=correct.mean(axis=0),
        exit_confidence=conf.mean(axis=0),
        bins=bins,
        scaled_bins=scaled,
        title=title or f"Early-exit report: {_short_model(run)}",
        date=report_date(run),
        command=command,
        baselines=baselines,
    )


def _short_model(run: Run) -> str:
    model = run.provenance.model or "(unnamed model)"
    return model if len(model) <= 60 else "…" + model[-59:]


# --------------------------------------------------------------------------- text helpers


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
    if v is None or not math.isfinite(v):
        return "n/a"
    return f"{v:.3g} ms" if v < 100 else f"{v:.0f} ms"


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
    bound = c.value if c.interval is None else c.interval[0 if c.comparison == ">=" else 1]
    digits = 2
    while (
        digits < 5
        and bound != c.required
        and _criterion_value(c, bound, digits) == _criterion_value(c, c.required, digits)
    ):
        digits += 1
    return digits


def _failure_text(c: Criterion) -> str:
    """Why a criterion failed, for people: the deciding bound against the requirement."""
    d = _criterion_digits(c)
    need = f"{'≥' if c.comparison == '>=' else '≤'} {_criterion_value(c, c.required, d)}"
    if c.interval is None:
        return f"{_criterion_label(c)} is {_criterion_value(c, c.value, d)}, needs {need}"
    side = "down" if c.comparison == ">=" else "up"
    bound = c.interval[0] if c.comparison == ">=" else c.interval[1]
    return (
        f"{_criterion_label(c)} is {_criterion_value(c, c.value, d)} but its interval reaches "
        f"{side} to {_criterion_value(c, bound, d)}, needs {need}"
    )


def _criterion_label(c: Criterion) -> str:
    if c.name == "accuracy":
        return "held-out accuracy" if c.interval is not None else "accuracy (fitted)"
    if c.name == "accuracy_drop":
        return "accuracy drop vs last exit"
    return "speed-up (" + ("MACs" if c.cost == "macs" else f"latency, {c.cost}") + ")"


def _thresholds_text(doc: Mapping[str, Any], run: Run) -> list[str]:
    """Each threshold for people: a number, or 'nobody leaves' / 'everybody leaves'."""
    from dyncal.calibrate.policy import score_range

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


# --------------------------------------------------------------------------- page frame


class _Page:
    """One A4 page: header, footer and a cursor for flowing text (figure coordinates)."""

    def __init__(self, data: ReportData, number: int, heading: str) -> None:
        from matplotlib.figure import Figure

        self.fig: Figure = Figure(figsize=A4_INCHES)
        self.fig.patch.set_facecolor("white")
        self.width_in, self.height_in = A4_INCHES
        self.y = 1.0 - 0.55 / self.height_in
        self.fig.text(0.06, 1 - 0.35 / self.height_in, data.title, fontsize=8, color=_GREY, va="top")
        self.fig.text(
            0.94,
            1 - 0.35 / self.height_in,
            f"page {number} of {len(PAGE_TITLES)}",
            fontsize=8,
            color=_GREY,
            va="top",
            ha="right",
        )
        run = data.run
        foot = (
            f"run {run.path.name}: N={run.n:,}, K={run.k}, C={run.c:,} · "
            f"run created {data.date.strftime('%Y-%m-%d %H:%M UTC')} · dyncal {_version()}"
        )
        self.fig.text(0.06, 0.3 / self.height_in, foot, fontsize=7, color=_GREY)
        self.fig.add_artist(_rule(self.fig, 1 - 0.45 / self.height_in))
        self.heading(heading, size=16)

    def skip(self, inches: float) -> None:
        """Move the cursor down."""
        self.y -= inches / self.height_in

    def heading(self, text: str, size: float = 12) -> None:
        """A bold heading at the cursor."""
        self.skip(size / 72 * 1.5)
        self.fig.text(0.06, self.y, text, fontsize=size, weight="bold", va="baseline")
        self.skip(size / 72 * 0.6)

    def para(
        self,
        text: str,
        size: float = 9.5,
        width: int = 100,
        color: str = "black",
        family: str | None = None,
        indent: float = 0.06,
        weight: str = "normal",
    ) -> None:
        """Wrapped text at the cursor."""
        lines = []
        for part in text.split("\n"):
            lines.extend(textwrap.wrap(part, width=width, break_on_hyphens=False) or [""])
        for line in lines:
            self.skip(size / 72 * 1.35)
            kw: dict[str, Any] = {
                "fontsize": size,
                "color": color,
                "va": "baseline",
                "weight": weight,
            }
            if family:
                kw["family"] = family
            self.fig.text(indent, self.y, line, **kw)

    def axes(self, height_in: float, left: float = 0.12, right: float = 0.94, gap_in: float = 0.15) -> Any:
        """New axes below the cursor, ``height_in`` tall (room left for tick labels)."""
        self.skip(gap_in)
        bottom = self.y - height_in / self.height_in
        ax = self.fig.add_axes((left, bottom, right - left, height_in / self.height_in))
        self.y = bottom
        return ax

    def grid(
        self,
        n: int,
        cols: int,
        panel_h_in: float,
        *,
        gap_in: float = 0.2,
        square: bool = False,
        left: float = 0.12,
        right: float = 0.94,
        hgap: float = 0.07,
    ) -> list[Any]:
        """``n`` axes in rows of ``cols`` below the cursor, each ``panel_h_in`` tall."""
        rows = math.ceil(n / cols)
        width = (right - left - hgap * (cols - 1)) / cols
        if square:
            width = min(width, panel_h_in / self.width_in)
            left = 0.5 - (cols * width + hgap * (cols - 1)) / 2 + 0.02
        out: list[Any] = []
        self.skip(gap_in)
        for r in range(rows):
            bottom = self.y - panel_h_in / self.height_in
            for c in range(cols):
                if len(out) < n:
                    out.append(
                        self.fig.add_axes((left + c * (width + hgap), bottom, width, panel_h_in / self.height_in))
                    )
            self.y = bottom
            if r < rows - 1:
                self.skip(0.8)
        return out

    def table(
        self,
        header: Sequence[str],
        rows: Sequence[Sequence[str]],
        *,
        col_widths: Sequence[float],
        size: float = 9,
        row_colors: Sequence[str | None] | None = None,
        left: float = 0.06,
    ) -> None:
        """A simple ruled table at the cursor; ``col_widths`` are figure fractions."""
        line_h = size / 72 * 1.6
        xs = [left + sum(col_widths[:i]) for i in range(len(col_widths))]
        right = left + sum(col_widths)
        self.skip(line_h)
        for x, h in zip(xs, header, strict=True):
            self.fig.text(x + 0.005, self.y, h, fontsize=size, weight="bold", va="baseline")
        self.fig.add_artist(_rule(self.fig, self.y - 0.3 * line_h / self.height_in, left, right, lw=0.8))
        for i, row in enumerate(rows):
            self.skip(line_h)
            color = row_colors[i] if row_colors is not None else None
            for j, (x, cell) in enumerate(zip(xs, row, strict=True)):
                kw: dict[str, Any] = {"fontsize": size, "va": "baseline"}
                if color is not None and j == len(row) - 1:
                    kw.update(color=color, weight="bold")
                self.fig.text(x + 0.005, self.y, cell, **kw)
        self.fig.add_artist(_rule(self.fig, self.y - 0.45 * line_h / self.height_in, left, right, lw=0.8))
        self.skip(0.45 * line_h)


def _style() -> Any:
    """The report's matplotlib settings, as a context manager."""
    import matplotlib

    return matplotlib.rc_context(_RC)  # type: ignore[arg-type]


def _budget_macs(data: ReportData) -> float | None:
    """The budget in MACs, when it binds MACs."""
    b = data.thresholds.get("budget") or {}
    if b.get("unit") == "macs" and b.get("value") is not None:
        return float(b["value"])
    return None


_SETTING_KEYS = ("repeats", "warmup", "timer", "dtype", "input_shape", "decision")


def _latency_settings_text(settings: Mapping[str, Any]) -> str:
    """The measurement settings a reader needs, and which stages were noisy."""
    parts = [f"{k}={settings[k]}" for k in _SETTING_KEYS if k in settings]
    noisy = settings.get("noisy")
    if isinstance(noisy, Mapping) and noisy:
        spread = ", ".join(f"{k} {100 * float(v):.0f}%" for k, v in noisy.items())
        parts.append(f"IQR/median above 10%: {spread}")
    return ", ".join(parts)


def _rule(fig: Figure, y: float, x0: float = 0.06, x1: float = 0.94, lw: float = 0.5) -> Any:
    from matplotlib.lines import Line2D

    return Line2D([x0, x1], [y, y], transform=fig.transFigure, color="#999999", lw=lw)


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("dyncal")
    except metadata.PackageNotFoundError:
        return "(dev)"


# --------------------------------------------------------------------------- pages


def _page_decision(data: ReportData) -> Figure:
    p = _Page(data, 1, "Should this early-exit model ship?")
    t = data.thresholds
    acc, interval = _op_accuracy(t)
    p.skip(0.2)
    if data.decision is None:
        p.fig.text(0.06, p.y - 0.45 / p.height_in, "NO DECISION", fontsize=36, weight="bold", color=_GREY)
        p.skip(0.6)
        p.para(
            "No criterion was given, so this report does not decide; it states the trade-off.",
            size=11,
        )
    else:
        color = _GO_COLOR if data.decision == "GO" else _NOGO_COLOR
        p.fig.text(0.06, p.y - 0.75 / p.height_in, data.decision, fontsize=64, weight="bold", color=color)
        p.skip(0.95)
        failed = [c for c in data.criteria if not c.passed]
        if not data.outcome.held_out:
            p.fig.text(
                0.42,
                p.y + 0.3 / p.height_in,
                "(provisional: nothing held out)",
                fontsize=16,
                color=_GREY,
            )
            met = "Every criterion is met" if data.decision == "GO" else "Not every criterion is met"
            msg = (
                f"{met} by its point estimate, fitted on the same samples it is judged on "
                "(optimistic; no intervals). Hold samples out (--holdout 0.5) for a decision."
            )
        elif data.decision == "GO":
            msg = "Every criterion is met, each with its whole 95% interval on the right side."
        else:
            msg = "Not met with 95% confidence: " + "; ".join(_failure_text(c) for c in failed) + "."
        p.para(msg, size=11)
    # --- the trade-off in one sentence
    k_last = data.k
    last_acc = float(data.outcome.last_correct.mean()) if data.outcome.n else float("nan")
    early_acc = float(data.outcome.correct.mean()) if data.outcome.n else float("nan")
    rows_txt = "held-out samples" if data.outcome.held_out else "samples (nothing held out)"
    sp_macs = data.speedup.get("macs")
    parts = [
        f"At budget {_budget_label(data)}, early exit is right on {_pct(early_acc)} of "
        f"{data.outcome.n:,} {rows_txt}, "
        f"against {_pct(last_acc)} when exit {k_last} (the last) runs on every sample "
        f"({_change_text(last_acc - early_acc)})."
    ]
    if sp_macs is not None:
        parts.append(
            f"It spends {_macs(_held_cost(data, 'macs'))} per sample on average instead of "
            f"{_macs(data.baselines.get('macs'))}: {sp_macs:.2f}× fewer MACs."
        )
    for key in sorted(k for k in data.speedup if k != "macs"):
        b = _batch_size_of(key)
        what = "it takes" if b == 1 else f"a batch of {b} takes"
        parts.append(
            f"On {key} {what} {_ms(_held_cost(data, key))} instead of "
            f"{_ms(data.baselines.get(key))}: "
            f"{data.speedup[key]:.2f}× faster."
        )
    if not any(k != "macs" for k in data.speedup):
        parts.append("No latency was profiled, so the speed-up is in MACs only (see page 3).")
    else:
        parts.append(
            "Latency is predicted from the profiled stage times (per batch above batch size 1: "
            "a batch runs each stage until its last sample leaves); 'dyncal verify' measures "
            "a real early exit."
        )
    p.skip(0.1)
    p.para(" ".join(parts), size=10.5, width=92)
    # --- criteria table
    p.skip(0.15)
    p.heading("Criteria")
    if data.criteria:
        rows, colors = [], []
        for c in data.criteria:
            d = _criterion_digits(c)
            rows.append(
                [
                    _criterion_label(c),
                    _criterion_value(c, c.value, d),
                    "n/a"
                    if c.interval is None
                    else _criterion_value(c, c.interval[0], d) + " to " + _criterion_value(c, c.interval[1], d),
                    f"{'≥' if c.comparison == '>=' else '≤'} {_criterion_value(c, c.required, d)}",
                    "PASS" if c.passed else "FAIL",
                ]
            )
            colors.append(_GO_COLOR if c.passed else _NOGO_COLOR)
        p.table(
            ["criterion", "measured", "95% interval", "required", "result"],
            rows,
            col_widths=[0.28, 0.13, 0.25, 0.14, 0.1],
            size=10,
            row_colors=colors,
        )
        batch_note = ""
        sp = next((c for c in data.criteria if c.name == "speedup"), None)
        if sp is not None and _batch_size_of(str(sp.cost)) > 1:
            b = _batch_size_of(str(sp.cost))
            batch_note = (
                f" The speed-up's interval is a bootstrap over batches of {b} held-out samples "
                "(a fixed random order), each batch's time predicted from the profiled stages."
            )
        rule = (
            "A criterion passes only when its whole 95% interval (bootstrap over held-out "
            "samples) clears "
            "the requirement." + batch_note
            if data.outcome.held_out
            else "Nothing was held out, so the point estimates decide (fitted on the same samples: optimistic)."
        )
        p.para(rule, size=8.5, color=_GREY)
    else:
        p.para(
            "None given. To decide, add --min-accuracy A or --max-drop D (fractions, e.g. 0.95 "
            "or 0.01) "
            "and/or --min-speedup S (e.g. 1.5), optionally with --device/--batch-size to judge "
            "latency.",
            size=9.5,
        )
    # --- operating point
    p.skip(0.1)
    p.heading("Operating point")
    held_word = "held out" if data.outcome.held_out else "on all samples (nothing held out)"
    fit_macs = _float_or_none(t.get("expected_macs"))
    held_macs = _held_cost(data, "macs")
    op_rows = [
        ["budget", f"{_budget_label(data)}; {data.budget_reason}"],
        ["method, score", f"{t.get('method', 'n/a')}, {t.get('score', 'maxprob')}"],
        ["thresholds", ", ".join(_thresholds_text(t, data.run))],
        ["temperatures", ", ".join(f"{float(v):.3g}" for v in (t.get("temperatures") or []))],
        [
            "held-out accuracy" if data.outcome.held_out else "accuracy (fitted)",
            f"{_pct(acc)}  (95% interval {_interval_text(interval, _pct)})",
        ],
        ["accuracy on fitting half", _pct(_float_or_none(t.get("calibration_accuracy")))],
    ]
    if "macs" in data.baselines:
        op_rows.append(
            [
                "expected MACs",
                f"{_macs(held_macs)} per sample {held_word} "
                f"({_pct((held_macs or float('nan')) / data.baselines['macs'], 1)} of the last exit); "
                + (
                    f"{_macs(fit_macs)} on the fitting half, where the budget "
                    f"(at most {_macs(_budget_macs(data))}) is met; more would not buy accuracy"
                    if _budget_macs(data) is not None
                    and fit_macs is not None
                    and fit_macs < 0.8 * (_budget_macs(data) or 0.0)
                    else f"{_macs(fit_macs)} on the fitting half, where the budget is met"
                ),
            ]
        )
    for key in sorted(k for k in data.baselines if k != "macs"):
        b = _batch_size_of(key)
        per = "" if b == 1 else f" per batch of {b} (held-out samples in a fixed random order)"
        op_rows.append(
            [
                f"expected latency {key}",
                f"{_ms(_held_cost(data, key))}{per}, {held_word} (last exit alone: {_ms(data.baselines[key])})",
            ]
        )
    speed = [f"{v:.2f}× ({'MACs' if k == 'macs' else k})" for k, v in data.speedup.items()]
    op_rows.append(["speed-up vs last exit", ", ".join(speed) or "n/a"])
    op_rows.append(
        [
            "share leaving at exit 1..K",
            ", ".join(_pct(float(s), 1) for s in data.outcome.shares(data.k)) + f" ({held_word})",
        ]
    )
    for label, value in op_rows:
        p.skip(9.5 / 72 * 1.45)
        p.fig.text(0.06, p.y, label, fontsize=9.5, color=_GREY, va="baseline")
        wrapped = textwrap.wrap(value, width=78, break_on_hyphens=False) or [""]
        p.fig.text(0.32, p.y, wrapped[0], fontsize=9.5, va="baseline")
        for extra in wrapped[1:]:
            p.skip(9.5 / 72 * 1.35)
            p.fig.text(0.32, p.y, extra, fontsize=9.5, va="baseline")
    p.skip(0.2)
    p.para(
        (
            "Accuracies and speed-ups here are measured on samples held out of fitting the thresholds. "
            if data.outcome.held_out
            else "Nothing was held out: accuracies and speed-ups here are on the samples the thresholds "
            "were fitted on. "
        )
        + "Speed-up = cost of running the last exit on every sample / expected early-exit cost "
        "(latency includes one exit decision per exit passed). Pages 2–3 show the whole "
        "trade-off curve; "
        "page 4 where samples leave; page 5 calibration; page 6 thresholds and provenance.",
        size=8.5,
        color=_GREY,
        width=110,
    )
    return p.fig


def _held_cost(data: ReportData, name: str) -> float | None:
    """Expected cost on the judged rows: ``"macs"`` or a latency key (per batch above batch size 1)."""
    if not data.outcome.n:
        return None
    units = _unit_costs(data.run, name, data.outcome.exits)
    return None if units is None or not len(units) else float(np.mean(units))


def _short_budget(data: ReportData) -> str:
    """The budget as asked, or a chosen one rounded for people."""
    from dyncal.calibrate.budget import format_budget

    frac = (data.thresholds.get("budget") or {}).get("fraction")
    if frac is None or data.budget_reason.startswith("asked"):
        return data.budget
    return format_budget(float(frac), "fraction")


def _budget_label(data: ReportData) -> str:
    """The budget for people: short form and share of the last exit's cost."""
    b = data.thresholds.get("budget") or {}
    frac = b.get("fraction")
    unit = str(b.get("unit") or "macs")
    what = "MACs" if unit == "macs" else f"latency on {unit.removeprefix(MS_PREFIX)}"
    if frac is None:
        return data.budget
    return f"{_short_budget(data)} ({_pct(float(frac), 1)} of the last exit's {what})"


def _page_frontier(data: ReportData) -> Figure:
    p = _Page(data, 2, "Accuracy vs compute (MACs)")
    main = str(data.thresholds.get("method") or "smoothed")
    if "macs" not in data.baselines:
        p.skip(0.3)
        p.para("This run has no MAC counts.", size=14, weight="bold")
        p.skip(0.1)
        p.para(
            "The run's costs are latency only, so the trade-off curves are on page 3 (accuracy vs "
            "latency). To count compute per exit with fvcore, profile the run (it needs the "
            "model), "
            "or give the counts when importing:",
            size=10.5,
            width=90,
        )
        p.skip(0.1)
        mono = "DejaVu Sans Mono"
        p.para(f"dyncal profile {data.run.path} --device cpu", size=10.5, family=mono, indent=0.1)
        p.para(
            "dyncal import logits.npz --macs 1.2e8,3.1e8,... --out run",
            size=10.5,
            family=mono,
            indent=0.1,
        )
        return p.fig
    p.para(
        "Each curve is the accuracy on held-out samples against the mean MACs spent per sample, "
        "as the "
        "budget sweeps from exit 1 alone to the whole model. The band is the 95% interval of "
        f"the {main} "
        "thresholds (the ones deployed); squares are single exits used for every sample (a "
        "static model); "
        "the geometric curve is the MSDNet-style baseline; the oracle is an upper bound that "
        "knows the "
        "cheapest exit that gets each sample right. The star is the operating point, with its "
        "interval.",
        size=9.5,
    )
    ax = p.axes(4.7, gap_in=0.25)
    plot_frontier(data.frontier, operating_point=data.operating_point(), ax=ax, main_method=main)
    p.skip(0.9)  # the legend sits below the axes
    p.skip(0.6)
    p.heading("At the operating point's budget", size=11)
    rows, note = _method_rows(data, main)
    if rows:
        p.table(
            ["method", "held-out accuracy", "95% interval", "MACs (share of last exit)"],
            rows,
            col_widths=[0.26, 0.17, 0.22, 0.23],
            size=9,
        )
    p.para(note, size=9.5)
    return p.fig


def _method_rows(data: ReportData, main: str) -> tuple[list[list[str]], str]:
    """Each method on the frontier at the budget nearest the operating point's, and a summary."""
    f = data.frontier
    b = data.thresholds.get("budget") or {}
    op_frac = b.get("fraction")
    if op_frac is None or "budget_fraction" not in f.columns:
        return [], "The operating point has no budget fraction; see the curves."
    acc_col = "holdout_accuracy" if f["holdout_accuracy"].notna().any() else "fitted_accuracy"
    found: dict[str, Any] = {}
    for method in [m for m in dict.fromkeys(f["method"].astype(str)) if m != "static"]:
        rows = f[(f["method"].astype(str) == method) & f[acc_col].notna()]
        if not len(rows):
            continue
        i = int(np.argmin(np.abs(rows["budget_fraction"].to_numpy(float) - float(op_frac))))
        found[method] = rows.iloc[i]
    order = sorted(found, key=lambda m: {main: 0, "geometric": 2, "oracle": 3}.get(m, 1))
    table = []
    for m in order:
        r = found[m]
        lo, hi = r.get("holdout_ci_low"), r.get("holdout_ci_high")
        iv = "n/a" if lo is None or not np.isfinite(float(lo)) else f"{_pct(float(lo))} to {_pct(float(hi))}"
        table.append(
            [
                m + (" (deployed)" if m == main else ""),
                _pct(float(r[acc_col])),
                iv,
                f"{_macs(float(r['expected_macs']))} ({_pct(float(r['expected_fraction']), 1)})",
            ]
        )
    share = _pct(float(op_frac), 1)
    note = f"Budget nearest the operating point's ({share} of the last exit) on the frontier grid."
    if main in found and "geometric" in found:
        gain = float(found[main][acc_col]) - float(found["geometric"][acc_col])
        note += (
            f" {main} is {_pts(abs(gain), 2)} {'above' if gain >= 0 else 'below'} the geometric "
            "baseline "
            "at this budget."
        )
    return table, note


def _page_latency(data: ReportData) -> Figure:
    p = _Page(data, 3, "Accuracy vs latency")
    keys = latency_keys(data.frontier)
    if not keys:
        p.skip(0.3)
        p.para("No latency was profiled for this run.", size=14, weight="bold")
        p.skip(0.1)
        p.para(
            "MACs (page 2) are not time: early exit pays for the exit heads and a decision at "
            "each exit, "
            "and batches shrink as samples leave. To see accuracy against measured milliseconds "
            "here, "
            "measure the run's stages on the device you will deploy to, then build the report "
            "again:",
            size=10.5,
            width=90,
        )
        p.skip(0.1)
        p.para(
            f"dyncal profile {data.run.path} --device cpu --batch-size 1,32",
            size=10.5,
            family="DejaVu Sans Mono",
            indent=0.1,
        )
        p.para(
            f"dyncal report {data.run.path} --out report.pdf",
            size=10.5,
            family="DejaVu Sans Mono",
            indent=0.1,
        )
        p.skip(0.1)
        p.para(
            "Latency criteria (--min-speedup with --device, budgets in ms) need this too.",
            size=10.5,
        )
        return p.fig
    p.para(
        "Held-out accuracy against expected latency, one panel per device and batch size. "
        "Expected latency "
        "counts the stages a sample runs through plus one exit decision at each exit it passes; "
        "squares are "
        "single exits run on every sample.",
        size=9.5,
    )
    cols = 1 if len(keys) <= 2 else 2
    n_rows = math.ceil(len(keys) / cols)
    panel_h = 5.4 if len(keys) == 1 else min(3.3, 6.8 / n_rows - 0.6)
    axes = p.grid(len(keys), cols, panel_h, gap_in=0.35, hgap=0.1)
    plot_latency(
        data.frontier,
        operating_point=data.operating_point(),
        keys=keys,
        axes=axes,
        main_method=str(data.thresholds.get("method") or "") or None,
    )
    p.skip(0.45)
    p.heading("How it was measured", size=11)
    costs = data.run.costs
    assert costs is not None
    for key in keys:
        prof = costs.latency.get(key)
        if prof is None:
            continue
        iqr = prof.stage_iqr_ms
        med = prof.stage_median_ms
        noisy = [i + 1 for i, (q, m) in enumerate(zip(iqr, med, strict=True)) if m > 0 and q > 0.1 * m]
        line = (
            f"{key}: {prof.hardware or 'hardware not recorded'}"
            + (f", {prof.threads} thread(s)" if prof.threads else "")
            + f"; full model {_ms(prof.full_model_median_ms)} median; exit decision "
            f"{_ms(prof.decision_median_ms)}; " + f"{len(prof.stage_ms[0]) if prof.stage_ms else 0} repeats per stage."
        )
        if noisy:
            stages = ", ".join(map(str, noisy))
            line += f" Warning: spread (IQR) above 10% of the median for stage(s) {stages}."
        p.para(line, size=8.5, width=120, color=_NOGO_COLOR if noisy else "black")
    verified = _verify_beside(data.run)
    if verified:
        p.skip(0.15)
        p.heading("Measured by 'dyncal verify' (verify.json beside the run)", size=11)
        rows = [
            [key, _ms(measured), _ms(predicted), f"{measured / predicted:.2f}" if predicted else "n/a"]
            for key, measured, predicted in verified
        ]
        p.table(["latency", "measured", "predicted", "measured / predicted"], rows, col_widths=[0.2, 0.2, 0.2, 0.25])
        p.para(
            "A real early exit on the thresholds verify ran (which may differ from this report's "
            "operating point); ms per batch.",
            size=8.5,
            color=_GREY,
        )
    return p.fig


def _verify_beside(run: Run) -> list[tuple[str, float, float | None]]:
    """``(key, measured ms, predicted ms)`` from ``verify.json`` beside the run directory, if any."""
    path = Path(run.path).parent / "verify.json"
    try:
        doc = json.loads(path.read_text())
        measured = doc.get("measured_ms") or {}
        predicted = doc.get("predicted_ms") or {}
        return [
            (str(k), float(v), None if predicted.get(k) is None else float(predicted[k]))
            for k, v in sorted(measured.items())
            if v is not None
        ]
    except (OSError, ValueError, TypeError, AttributeError):
        return []


def _page_exits(data: ReportData) -> Figure:
    p = _Page(data, 4, "Where samples leave at the operating point")
    o = data.outcome
    k = data.k
    shares, counts, acc = o.shares(k), o.counts(k), o.accuracy_per_exit(k)
    where = "held-out samples" if o.held_out else "samples"
    p.para(
        f"Bars: share of the {o.n:,} {where} that leave at each exit under the operating "
        "point's thresholds "
        f"(budget {_budget_label(data)}). Red diamonds: accuracy of those samples; grey "
        "circles: the exit's accuracy "
        "on all samples, for reference. Samples that leave early are the confident ones, so "
        "they are usually "
        "more accurate than the exit is on average.",
        size=9.5,
    )
    ax = p.axes(4.8, gap_in=0.25, right=0.88)
    plot_exits(shares, acc, counts=counts, exit_accuracy=data.exit_accuracy, ax=ax)
    p.skip(0.85)
    macs = data.run.costs.macs if data.run.costs is not None else None
    keys = sorted(k_ for k_ in data.baselines if k_ != "macs")
    if data.speedup_cost in keys:  # the latency the decision used, first
        keys.remove(data.speedup_cost)
        keys.insert(0, data.speedup_cost)
    per_exit = _per_exit_costs(data.run)
    th = _thresholds_text(data.thresholds, data.run)
    header = [
        "exit",
        "threshold",
        "leave here",
        "n",
        "their accuracy",
        "exit accuracy",
        "cum. MACs",
    ]
    widths = [0.07, 0.14, 0.11, 0.09, 0.14, 0.13, 0.12]
    if keys:
        header.append(f"ms {keys[0]}")
        widths.append(0.14)
    rows = []
    for i in range(k):
        row = [
            str(i + 1),
            th[i],
            _pct(float(shares[i]), 1),
            f"{int(counts[i]):,}",
            _pct(float(acc[i]), 1) if np.isfinite(acc[i]) else "—",
            _pct(float(data.exit_accuracy[i]), 1),
            _macs(macs[i]) if macs is not None else "n/a",
        ]
        if keys:
            row.append(_ms(per_exit[keys[0]][i]))
        rows.append(row)
    p.table(header, rows, col_widths=widths, size=9)
    if keys:
        p.para(
            f"ms: latency on {keys[0]} when leaving at that exit (stages so far plus the exit "
            "decisions)" + ("" if keys[0].endswith("/b1") else ", for a whole batch") + ".",
            size=8.5,
            color=_GREY,
        )
    return p.fig


def _page_calibration(data: ReportData) -> Figure:
    p = _Page(data, 5, "Calibration of each exit")
    temps = [float(v) for v in (data.thresholds.get("temperatures") or [1.0] * data.k)]
    stuck = {i for i, v in enumerate(data.thresholds.get("temperature_at_bound") or []) if v}
    p.para(
        "Early exit trusts each exit's confidence. A calibrated exit is right on about 90% of "
        "the samples "
        "it gives 90% confidence; ECE (expected calibration error) is the sample-weighted mean "
        "gap between "
        "confidence and accuracy over 15 bins, on all samples."
        + (" Bars use the fitted temperatures; black ticks show temperature 1." if data.scaled_bins else ""),
        size=9.5,
    )
    p.skip(0.05)
    p.para(
        "In each diagram: blue bars, the accuracy of the samples in a confidence bin; red "
        "ticks, their mean "
        "confidence; dashed line, perfect calibration. Bars above the line: the exit is "
        "under-confident "
        "(it could exit more); below: over-confident. Bins holding few samples are noisy.",
        size=9.5,
    )
    header = ["exit", "accuracy", "mean confidence", "ECE (T = 1)"]
    widths = [0.08, 0.14, 0.18, 0.16]
    if data.scaled_bins:
        header += ["temperature", "ECE (fitted T)"]
        widths += [0.15, 0.17]
    rows = []
    for i in range(data.k):
        row = [
            str(i + 1),
            _pct(float(data.exit_accuracy[i])),
            f"{float(data.exit_confidence[i]):.3f}",
            f"{data.bins[i].ece:.3f}",
        ]
        if data.scaled_bins:
            mark = " (at bound)" if i in stuck else ""
            row += [f"{temps[i]:.3f}{mark}", f"{data.scaled_bins[i].ece:.3f}"]
        rows.append(row)
    p.table(header, rows, col_widths=widths, size=9.5)
    if stuck:
        p.skip(0.05)
        p.para(
            "Warning: the fitted temperature of exit "
            + ", ".join(str(i + 1) for i in sorted(stuck))
            + " stopped at the search bound (0.05 or 20): its likelihood wants a more extreme "
            "temperature (near-constant logits, or an exit almost always right or wrong), so "
            "its confidence may be poorly calibrated.",
            size=9.5,
        )
    p.skip(0.2)
    cols = reliability_columns(data.k)
    n_rows = math.ceil(data.k / cols)
    room = p.y * p.height_in - 1.1 - 0.8 * n_rows
    panel_h = min(3.0 if cols == 2 else 2.2, room / n_rows)
    axes = p.grid(data.k, cols, panel_h, gap_in=0.35, square=True)
    plot_reliability(
        data.bins,
        scaled=data.scaled_bins,
        temperatures=temps if data.scaled_bins else None,
        legend=False,
        axes=axes,
    )
    return p.fig


def _page_provenance(data: ReportData) -> Figure:
    p = _Page(data, 6, "Thresholds and provenance")
    run = data.run
    t = data.thresholds
    p.heading("Thresholds (deploy these with the model)", size=11)
    th = _thresholds_text(t, run)
    temps = [float(v) for v in (t.get("temperatures") or [1.0] * run.k)]
    raw = t.get("thresholds") or []
    rows = [
        [
            str(i + 1),
            th[i],
            "null" if i >= len(raw) or raw[i] is None else f"{float(raw[i]):.6g}",
            f"{temps[i]:.4g}",
        ]
        for i in range(run.k)
    ]
    p.table(
        ["exit", "threshold", "thresholds.json", "temperature"],
        rows,
        col_widths=[0.08, 0.2, 0.2, 0.16],
        size=9,
    )
    p.para(
        f"score: {t.get('score', 'maxprob')}; method: {t.get('method', 'n/a')}; a sample leaves "
        "at the first exit "
        "whose score (from logits / temperature) is at least that exit's threshold; the last "
        "exit takes the rest.",
        size=8.5,
        color=_GREY,
    )
    p.skip(0.1)
    p.heading("Run", size=11)
    prov = run.provenance
    costs = run.costs
    items: list[tuple[str, str]] = [
        ("run directory", str(run.path)),
        ("model", prov.model or "n/a"),
        ("weights SHA-256", prov.weights_sha256 or "n/a"),
        ("data", prov.data or "n/a"),
        ("N / K / C", f"{run.n:,} samples / {run.k} exits / {run.c:,} classes"),
        ("logits computed on", prov.device or "n/a"),
        ("created", prov.created or "n/a"),
        ("command", prov.command or "n/a"),
        ("libraries", ", ".join(f"{k} {v}" for k, v in sorted(prov.versions.items())) or "n/a"),
    ]
    if prov.extra:
        items.append(("details", ", ".join(f"{k}={v}" for k, v in sorted(prov.extra.items()))))
    if costs is not None:
        items.append(
            (
                "costs",
                f"source: {costs.source}; cumulative MACs: "
                + (", ".join(_macs(m) for m in costs.macs) if costs.macs else "none"),
            )
        )
        if costs.unsupported_ops:
            items.append(
                (
                    "not counted by fvcore",
                    ", ".join(f"{u.op}×{u.count} (stage {u.stage})" for u in costs.unsupported_ops),
                )
            )
        for key, prof in sorted(costs.latency.items()):
            setting = _latency_settings_text(prof.settings)
            items.append((f"latency {key}", f"{prof.hardware or 'n/a'}; threads {prof.threads}; {setting}"))
    else:
        items.append(("costs", "none"))
    for label, value in items:
        p.skip(9 / 72 * 1.4)
        p.fig.text(0.06, p.y, label, fontsize=9, color=_GREY, va="baseline")
        mono = label in ("weights SHA-256", "command")
        wrapped = textwrap.wrap(value, width=70 if mono else 80, break_long_words=True) or [""]
        if len(wrapped) > 4:
            wrapped = [*wrapped[:3], wrapped[3][:-2] + " …"]
        for j, line in enumerate(wrapped):
            if j:
                p.skip(9 / 72 * 1.3)
            p.fig.text(
                0.3,
                p.y,
                line,
                fontsize=8.5 if mono else 9,
                va="baseline",
                family="DejaVu Sans Mono" if mono else None,
            )
    p.skip(0.15)
    p.heading("This report", size=11)
    req = data.requirements
    asked = [
        f"--budget {data.budget}"
        if data.budget_reason.startswith("asked")
        else f"budget {_short_budget(data)} ({data.budget_reason})",
    ]
    if req.min_accuracy is not None:
        asked.append(f"--min-accuracy {req.min_accuracy:g}")
    if req.max_drop is not None:
        asked.append(f"--max-drop {req.max_drop:g}")
    if req.min_speedup is not None:
        asked.append(f"--min-speedup {req.min_speedup:g} (judged on {data.speedup_cost})")
    p.para("; ".join(asked), size=9)
    if data.command:
        p.para(data.command, size=8.5, family="DejaVu Sans Mono", width=100)
    return p.fig


# --------------------------------------------------------------------------- assembly


def render_pdf(data: ReportData) -> bytes:
    """Draw the six pages and return the PDF's bytes (deterministic for the same data).

    Args:
        data: What :func:`prepare_report` computed.

    Returns:
        The PDF file's content.

    Example:
        >>> render_pdf(prepare_report("run"))[:5]  # doctest: +SKIP
        b'%PDF-'
    """
    from matplotlib.backends.backend_pdf import PdfPages

    _check_report_exits(data.run)
    pages = (
        _page_decision,
        _page_frontier,
        _page_latency,
        _page_exits,
        _page_calibration,
        _page_provenance,
    )
    metadata = {
        "Title": data.title,
        "Subject": "early-exit go/no-go report",
        "Creator": f"dyncal {_version()}",
        "CreationDate": data.date,
        "ModDate": data.date,
    }
    buf = io.BytesIO()
    with _style(), PdfPages(buf, metadata=metadata) as pdf:
        for draw in pages:
            fig = draw(data)
            pdf.savefig(fig)
    return buf.getvalue()


def _check_report_exits(run: Run) -> None:
    """Refuse a run with more exits than the report's pages have room for."""
    if run.k > MAX_REPORT_EXITS:
        raise DyncalError(
            f"the PDF report lays out at most {MAX_REPORT_EXITS} exits and run '{run.path}' has K={run.k}; "
            "use 'dyncal solve', 'dyncal frontier' and 'dyncal plot' for this run"
        )


def build_report(
    run_path: str | os.PathLike[str],
    out_pdf: str | os.PathLike[str],
    *,
    budget: str | None = None,
    min_accuracy: float | None = None,
    max_drop: float | None = None,
    min_speedup: float | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    title: str | None = None,
    method: str | None = None,
    temperature: bool = False,
    holdout: float = 0.5,
    seed: int = 0,
    command: str = "",
    overwrite: bool = True,
) -> ReportResult:
    """Solve a run's thresholds, judge the criteria and write the six-page PDF report.

    Args:
        run_path: A run directory with costs (MACs and/or profiled latency).
        out_pdf: The PDF to write (atomically; an existing one is replaced only with
            ``overwrite``).
        budget: Budget for the operating point (``0.6x``, ``1.2GMAC``, ``35ms``). Default:
            the cheapest frontier budget meeting the accuracy criterion on the fitting half;
            with only ``min_speedup``, the budget giving that speed-up; with no criterion,
            the cheapest within 1 percentage point of the last exit's fitted accuracy.
        min_accuracy: Held-out accuracy must be at least this fraction.
        max_drop: Accuracy lost against the last exit must be at most this fraction.
        min_speedup: Speed-up against the last exit on every sample must be at least this
            factor; in latency when ``device``/``batch_size`` is given, else in MACs.
        device: Latency device (``cpu``, ``cuda``) for the speed-up and ms budgets.
        batch_size: Latency batch size (default 1, or the smallest profiled).
        title: Title on every page (default from the model spec).
        method: Threshold solver (default: solve's default).
        temperature: Fit one temperature per exit on the fitting half (default False).
        holdout: Fraction of samples held out of fitting (default 0.5).
        seed: Seed of the held-out split (default 0).
        command: The command line, printed on the provenance page.
        overwrite: Replace an existing ``out_pdf`` (default True here; ``dyncal report``
            refuses one unless ``--overwrite`` is given, as collect does).

    Returns:
        What was written and decided; ``to_dict()`` is the ``--json`` document.

    Raises:
        DyncalError: Missing run or costs, a criterion that cannot be judged (e.g. a
            latency criterion without profiled latency), bad values, an unwritable path.

    Example:
        >>> import tempfile, pathlib  # doctest: +SKIP
        >>> r = build_report("run", "report.pdf", min_accuracy=0.95)  # doctest: +SKIP
        >>> r.decision  # doctest: +SKIP
        'GO'
    """
    from dyncal.artifacts.outputs import check_output_file, write_output
    from dyncal.run import load_run

    out = Path(out_pdf)
    if out.suffix.lower() != ".pdf":
        raise DyncalError(f"--out must name a .pdf file, got '{out}'")
    check_output_file(out, overwrite=overwrite, kind="report", protect=(run_path,))
    _check_report_exits(load_run(run_path))  # before the solving (the run's scan is remembered)
    data = prepare_report(
        run_path,
        budget=budget,
        min_accuracy=min_accuracy,
        max_drop=max_drop,
        min_speedup=min_speedup,
        device=device,
        batch_size=batch_size,
        title=title,
        method=method,
        temperature=temperature,
        holdout=holdout,
        seed=seed,
        command=command,
    )
    pdf = render_pdf(data)
    write_output(out, pdf)
    return ReportResult(
        path=out,
        decision=data.decision,
        criteria=data.criteria,
        pages=PAGE_TITLES,
        budget=data.budget,
        budget_reason=data.budget_reason,
        thresholds=data.thresholds,
        speedup=dict(data.speedup),
        size_bytes=len(pdf),
        decision_provisional=data.decision is not None and not data.outcome.held_out,
    )


# --------------------------------------------------------------------------- single figures

FIGURE_KINDS = ("frontier", "latency", "exits", "reliability")
MAX_FIGURE_PIXELS = 50_000_000
"""Largest image ``plot`` draws (about 200 MB of memory while drawing)."""
_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}


def export_figure(
    run_path: str | os.PathLike[str],
    kind: str,
    out: str | os.PathLike[str],
    *,
    budget: str | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    method: str | None = None,
    holdout: float = 0.5,
    seed: int = 0,
    dpi: int = 150,
) -> Path:
    """Write one report figure alone (what ``dyncal plot`` does).

    Args:
        run_path: A run directory.
        kind: ``frontier``, ``latency``, ``exits`` or ``reliability``.
        out: Output file; the format follows the suffix (``.png``, ``.svg`` or ``.pdf``).
        budget: Operating point's budget (default as in :func:`build_report` without criteria).
        device: Latency device for ms budgets.
        batch_size: Latency batch size.
        method: Threshold solver (default solve's).
        holdout: Held-out fraction (default 0.5).
        seed: Split seed (default 0).
        dpi: Resolution of ``.png`` output (default 150).

    Returns:
        The path written.

    Raises:
        DyncalError: Unknown kind or suffix, a run without what the figure needs (latency
            for ``latency``, costs for the others), or an unwritable path.

    Example:
        >>> export_figure("run", "frontier", "frontier.svg", budget="0.5x")  # doctest: +SKIP
        PosixPath('frontier.svg')
    """
    from dyncal.artifacts.outputs import dyncal_creator, write_output

    if kind not in FIGURE_KINDS:
        raise DyncalError(f"--kind must be one of {', '.join(FIGURE_KINDS)}, got {kind!r}")
    path = Path(out)
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DyncalError(f"--out must end in .png, .svg or .pdf, got '{path}'")
    if not path.parent.exists():
        raise DyncalError(f"the folder '{path.parent}' for --out does not exist; create it first")
    with _style():
        if kind == "reliability":
            fig = _reliability_alone(run_path)
        else:
            if kind == "latency":
                _require_latency(run_path)
            data = prepare_report(
                run_path,
                budget=budget,
                device=device,
                batch_size=batch_size,
                method=method,
                holdout=holdout,
                seed=seed,
            )
            main = str(data.thresholds.get("method") or "") or None
            op = data.operating_point()
            if kind == "frontier":
                fig = plot_frontier(
                    data.frontier,
                    operating_point=op,
                    main_method=main,
                    title=f"{data.title}: accuracy vs MACs",
                )
            elif kind == "latency":
                fig = plot_latency(data.frontier, operating_point=op, main_method=main)
            else:
                o = data.outcome
                fig = plot_exits(
                    o.shares(data.k),
                    o.accuracy_per_exit(data.k),
                    counts=o.counts(data.k),
                    exit_accuracy=data.exit_accuracy,
                    title=f"exits at the operating point (budget {_budget_label(data).split(' (')[0]})",
                )
        width_in, height_in = fig.get_size_inches()
        if width_in * height_in * dpi * dpi > MAX_FIGURE_PIXELS:
            most = int((MAX_FIGURE_PIXELS / (width_in * height_in)) ** 0.5)
            raise DyncalError(
                f"--dpi {dpi} would draw a {width_in * dpi:.0f} x {height_in * dpi:.0f} pixel image; "
                f"use --dpi {most} or less"
            )
        buf = io.BytesIO()
        creator = dyncal_creator()  # marks the file as dyncal's, so --overwrite may replace it
        metadata: dict[str, dict[str, Any]] = {
            "svg": {"Date": None, "Creator": creator},
            "png": {"Software": creator},
            "pdf": {"CreationDate": None, "Creator": creator},
        }
        meta = metadata[fmt]
        fig.savefig(buf, format=fmt, dpi=dpi, metadata=meta, bbox_inches="tight")
    write_output(path, buf.getvalue())
    return path


def _require_latency(run_path: str | os.PathLike[str]) -> None:
    """Fail early, before solving, when a run has no latency to plot."""
    from dyncal.run import load_run

    run = load_run(run_path)
    if run.costs is None or not run.costs.latency:
        raise DyncalError(
            f"run '{run.path}' has no latency profiled, so there is no accuracy-vs-latency "
            "figure; measure it "
            f"with 'dyncal profile {run.path} --device cpu --batch-size 1,32'"
        )


def _reliability_alone(run_path: str | os.PathLike[str]) -> Figure:
    """Reliability diagrams of every exit at temperature 1."""
    from dyncal.analysis.calibration import reliability_bins
    from dyncal.calibrate.scores import exit_scores
    from dyncal.run import load_run

    run = load_run(run_path)
    conf, pred = exit_scores(run.logits, "maxprob")
    right = pred == np.asarray(run.labels)[:, None]
    return plot_reliability([reliability_bins(conf[:, k], right[:, k]) for k in range(run.k)])
