"""The PDF go/no-go report: six pages a team lead can decide from.

1. Decision: GO / NO-GO / INCONCLUSIVE (timing noise alone decides a latency criterion),
   or the trade-off when no criterion is given; the criteria with their 95% intervals, the
   operating point and the speed-up against the full model (measured by ``dyncal verify``
   when a matching result is given, else predicted from the profile).
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
from dyncal.reports.decision import (
    FAIL,
    INCONCLUSIVE,
    PASS,
    Criterion,
    ExitOutcome,
    Requirements,
    SpeedupEstimate,
    decide,
    judge,
    speedup_estimate,
)
from dyncal.reports.evidence import (
    LatencyEvidence,
    batch_size_of,
    full_model_ms,
    measured_latency,
    predicted_latency,
    predicted_unit_ms,
    unit_batches,
    usable_verify,
)
from dyncal.reports.figures import (
    MS_PREFIX,
    OperatingPoint,
    format_ms,
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
    from dyncal.artifacts.verify import VerifyResult
    from dyncal.calibrate.solvers import PreparedRun, ThresholdsResult
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
_AMBER = "#b26a00"
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
        decision: ``"GO"``, ``"NO-GO"``, ``"INCONCLUSIVE"`` (timing noise alone decides a
            latency criterion), or None when no criterion was given.
        criteria: The judged criteria.
        pages: Page titles, in order.
        budget: The budget the thresholds were solved for (``"0.42x"``, ``"35ms"``).
        budget_reason: Why that budget (asked, chosen, or the thresholds file's).
        thresholds: The ``thresholds.json`` document of the operating point.
        speedup: Speed-up against the full model on every sample, per cost (``"macs"``,
            ``"cpu/b1"``, ...): MACs on the judged rows, latency as in ``latency``.
        size_bytes: Size of the PDF.
        decision_provisional: True when a decision was made with nothing held out (point
            estimates on the samples the thresholds were fitted on, no intervals).
        held_out: The operating point on the judged rows: the numbers every page shows.
        latency: Per latency key, the early exit against the full model
            (:meth:`dyncal.reports.evidence.LatencyEvidence.to_dict`).
        notes: One-line notes (e.g. a verify result that was ignored, and why).
        verify: The verify result used (path, samples, keys), or None.

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
    held_out: dict[str, Any] = field(default_factory=dict)
    latency: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    verify: dict[str, Any] | None = None

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
            "held_out": dict(self.held_out),
            "speedup": dict(self.speedup),
            "full_model_ms": {k: v["full_model_ms"] for k, v in self.latency.items()},
            "latency": {k: dict(v) for k, v in self.latency.items()},
            "verify": None if self.verify is None else dict(self.verify),
            "notes": list(self.notes),
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
        decision: ``"GO"``, ``"NO-GO"``, ``"INCONCLUSIVE"`` or None.
        outcome: Per-sample outcome on the judged (held-out) rows.
        speedup: Speed-up per cost name (MACs on the judged rows; latency as in ``latency``).
        speedup_cost: Cost name used for the speed-up criterion.
        exit_accuracy: ``(K,)`` accuracy of each exit on all samples (T = 1).
        exit_confidence: ``(K,)`` mean top probability of each exit (T = 1).
        bins: ``K`` reliability bins at T = 1.
        scaled_bins: ``K`` reliability bins with the fitted temperatures, or None.
        title: Report title.
        date: The report's fixed date (metadata and footer).
        command: The command line that made this report, if known.
        full_model: The full model's cost per cost name: MACs, and ms per batch per latency
            key (:func:`dyncal.reports.evidence.full_model_ms`): the one figure every page shows.
        accuracy: Accuracy of the operating point on the judged rows.
        accuracy_interval: Its 95% interval (None when nothing was held out).
        latency: Per latency key, the early exit against the full model (measured or predicted).
        notes: One-line notes shown on page 1, in the JSON and on the terminal.
        verify: The verify result used as evidence (it matched), or None.
        verify_label: Where it came from (a path), for people.
        thresholds_path: The thresholds file reported (``--thresholds``), or None when solved here.
        fit_costs: Expected cost per cost name on the fitting half (where the curves are drawn).
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
    full_model: dict[str, float] = field(default_factory=dict)
    accuracy: float = float("nan")
    accuracy_interval: tuple[float, float] | None = None
    latency: dict[str, LatencyEvidence] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    verify: VerifyResult | None = None
    verify_label: str = ""
    thresholds_path: str | None = None
    fit_costs: dict[str, float] = field(default_factory=dict)
    methods: tuple[_MethodAtBudget, ...] = ()

    @property
    def k(self) -> int:
        """Number of exits."""
        return self.run.k

    def operating_point(self, label: str | None = None) -> OperatingPoint:
        """The operating point as the figures mark it (fitting-half costs, like the curves)."""
        ms = {k: v for k, v in self.fit_costs.items() if k != "macs"}
        return OperatingPoint(
            expected_macs=self.fit_costs.get("macs"),
            accuracy=self.accuracy,
            interval=self.accuracy_interval,
            expected_ms=ms,
            label=label or f"operating point (budget {_budget_label(self).split(' (')[0]})",
        )

    def held_out_summary(self) -> dict[str, Any]:
        """The operating point on the judged rows: what page 1, 2 and 4, the JSON and the terminal show."""
        o = self.outcome
        return {
            "rows": "held out" if o.held_out else "all samples (nothing held out)",
            "n": o.n,
            "accuracy": self.accuracy,
            "accuracy_ci": None if self.accuracy_interval is None else list(self.accuracy_interval),
            "last_exit_accuracy": float(o.last_correct.mean()) if o.n else None,
            "expected_macs": _held_cost(self, "macs"),
            "exit_shares": [float(s) for s in o.shares(self.k)],
            "exit_counts": [int(c) for c in o.counts(self.k)],
        }


def _float_or_none(v: Any) -> float | None:
    return None if v is None else float(v)


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


def _per_exit_macs(run: Run) -> list[float] | None:
    """Cumulative MACs of a sample leaving at exit k (None without MAC counts)."""
    costs = run.costs
    if costs is None or costs.macs is None or len(costs.macs) != run.k:
        return None
    return [float(v) for v in costs.macs]


def _unit_costs(run: Run, name: str, exits: np.ndarray) -> np.ndarray | None:
    """Cost of each unit the early-exit model runs on rows leaving at ``exits``.

    MACs: a unit is a sample. A latency key: a sample at batch size 1, else a batch of the
    rows (:func:`dyncal.reports.evidence.unit_batches`), each predicted from the profiled
    stages by :func:`dyncal.analysis.costmodel.predict_batch_ms`, where a stage runs on the
    rows still in the batch and stops once none is left. A per-sample expectation would
    assume every batch stops as early as its average sample, which a batch does not.
    """
    if name == "macs":
        macs = _per_exit_macs(run)
        return None if macs is None else np.asarray(macs, dtype=float)[np.asarray(exits)]
    return predicted_unit_ms(run.costs, name, unit_batches(exits, batch_size_of(name)))


def _profile_full_model(run: Run, name: str) -> float:
    """The full model's cost before any verify result is matched (MACs, or the profile's ms)."""
    if name == "macs":
        macs = _per_exit_macs(run)
        return float("nan") if macs is None else macs[-1]
    return full_model_ms(run.costs, None, name)[0]


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


def _outcome(prep: PreparedRun, thresholds: Sequence[float | None]) -> ExitOutcome:
    """Apply the operating point to the held-out rows (all rows when nothing was held out)."""
    from dyncal.calibrate.policy import assign_exits, thresholds_from_json

    held = prep.holdout_idx
    rows = held if len(held) else np.arange(prep.scores.shape[0])
    exits = assign_exits(prep.scores[rows], thresholds_from_json(thresholds))
    right = prep.correct[rows]
    return ExitOutcome(
        exits=exits,
        correct=right[np.arange(len(rows)), exits],
        last_correct=right[:, -1],
        held_out=bool(len(held)),
    )


def _fit_costs(prep: PreparedRun, thresholds: Sequence[float | None]) -> dict[str, float]:
    """Expected cost per cost name on the fitting half, as solve and the frontier count it."""
    from dyncal.calibrate.policy import assign_exits, expected_cost, thresholds_from_json

    exits = assign_exits(prep.scores[prep.fit_idx], thresholds_from_json(thresholds))
    if not len(exits):
        return {}
    return {(u[3:] if u.startswith("ms:") else u): expected_cost(exits, c) for u, c in prep.units.items()}


def _prepared_for(run: Run, th: ThresholdsResult, path: str) -> PreparedRun:
    """The run scored and split as the thresholds document records (its score, temperatures and split)."""
    import dataclasses

    from dyncal.calibrate.scores import exit_scores
    from dyncal.calibrate.solvers import prepare_run

    split = th.split or {}
    holdout = float(split.get("holdout", 0.5))
    seed = int(split.get("seed", 0))
    prep = prepare_run(run, score=th.score, holdout=holdout, seed=seed)
    if any(t != 1.0 for t in th.temperatures):
        scores, preds = exit_scores(run.logits, th.score, np.asarray(th.temperatures, dtype=float))
        prep = dataclasses.replace(
            prep,
            scores=scores,
            correct=preds == np.asarray(run.labels)[:, None],
            temperatures=tuple(th.temperatures),
            temperature_at_bound=th.temperature_at_bound or tuple(False for _ in th.temperatures),
            cache={},
        )
    n_held = split.get("n_holdout")
    if n_held is not None and int(n_held) != len(prep.holdout_idx):
        raise DyncalError(
            f"'{path}' records a held-out part of {n_held} samples but its split (holdout {holdout:g}, "
            f"seed {seed}) gives {len(prep.holdout_idx)} on run '{run.path}'; solve again on this run"
        )
    return prep


def _load_verify(verify: str | os.PathLike[str] | VerifyResult) -> tuple[VerifyResult, str]:
    """A verify result and a label for people (its path)."""
    from dyncal.artifacts.verify import VerifyResult

    if isinstance(verify, VerifyResult):
        return verify, "verify result"
    return VerifyResult.load(verify), str(verify)


def prepare_report(
    run_path: str | os.PathLike[str],
    *,
    budget: str | None = None,
    thresholds: str | os.PathLike[str] | None = None,
    verify: str | os.PathLike[str] | VerifyResult | None = None,
    min_accuracy: float | None = None,
    max_drop: float | None = None,
    min_speedup: float | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    title: str | None = None,
    method: str | None = None,
    temperature: bool = False,
    holdout: float | None = None,
    seed: int | None = None,
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
        >>> data.decision, data.accuracy  # doctest: +SKIP
        ('GO', 0.9875)
    """
    from dyncal.analysis.calibration import reliability_bins
    from dyncal.analysis.frontier import compute_frontier
    from dyncal.calibrate.scores import exit_scores
    from dyncal.calibrate.solvers import METHODS, prepare_run, solve_run
    from dyncal.run import load_run
    from dyncal.stats import mean_bootstrap_ci

    req = Requirements(min_accuracy, max_drop, min_speedup).validate()
    if method is not None and method not in METHODS:
        raise DyncalError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if batch_size is not None and batch_size < 1:
        raise DyncalError(f"--batch-size must be a positive integer, got {batch_size}")
    if budget is not None and thresholds is not None:
        raise DyncalError(
            f"give --budget or --thresholds, not both (got --budget {budget} and --thresholds {thresholds}); "
            "--thresholds reports the thresholds a file already holds"
        )
    if thresholds is not None:
        given = [
            o
            for o, v in (("--method", method), ("--temperature", temperature or None), ("--holdout", holdout))
            if v is not None
        ] + (["--seed"] if seed is not None else [])
        if given:
            raise DyncalError(
                f"--thresholds fixes the method, temperatures and held-out split; leave out {', '.join(given)}"
            )
    run = load_run(run_path)
    if run.costs is None or (run.costs.macs is None and not run.costs.latency):
        raise DyncalError(
            f"run '{run.path}' has no costs, so there is no speed to trade for accuracy; run "
            f"'dyncal profile {run.path}' (or import with --macs) first"
        )
    th_doc = None
    if thresholds is not None:
        from dyncal.artifacts.thresholds import check_thresholds_for_run, read_thresholds

        th_doc = read_thresholds(thresholds)
        check_thresholds_for_run(th_doc, run)
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
                f"--device and --batch-size (e.g. --device {keys[0].split('/b')[0]} --batch-size "
                f"{keys[0].split('/b')[1]})"
            )
        latency = keys[0]
    speedup_cost = latency if latency is not None else "macs"
    verify_result, verify_label = (None, "") if verify is None else _load_verify(verify)

    lat_dev, lat_batch = (None, None)
    if latency is not None:
        dev, _, b = latency.partition("/b")
        lat_dev, lat_batch = dev, int(b)
    # score the logits once: the frontier, the solve and the held-out simulation share it
    if th_doc is not None:
        prep = _prepared_for(run, th_doc, str(thresholds))
    else:
        prep = prepare_run(run, temperature=temperature, holdout=0.5 if holdout is None else holdout, seed=seed or 0)
    frontier = compute_frontier(prep, device=lat_dev, batch_size=lat_batch)
    main_method = method or main_method_of(frontier)
    labels = np.asarray(run.labels)
    notes: list[str] = []
    if th_doc is not None:
        doc = th_doc.to_dict()
        fingerprint = th_doc.decision_fingerprint
        asked = (th_doc.budget or {}).get("asked")
        budget = str(asked) if asked else "as solved"
        reason = f"the thresholds in {thresholds}" + (f" (solved at budget {asked})" if asked else "")
    else:
        if budget is None:
            fit = _FitHalf(prep.scores[prep.fit_idx], prep.correct[prep.fit_idx], len(prep.holdout_idx))
            budget, reason = _choose_budget(
                frontier,
                main_method,
                req,
                fit,
                lambda exits: _unit_costs(run, speedup_cost, exits),
                _profile_full_model(run, speedup_cost),
                batch_size_of(speedup_cost),
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
        fingerprint = result.decision_fingerprint

    outcome = _outcome(prep, doc["thresholds"])
    if outcome.held_out:
        acc = float(outcome.correct.mean())
        interval: tuple[float, float] | None = mean_bootstrap_ci(outcome.correct, seed=prep.seed)
    else:
        acc, interval = float(outcome.correct.mean()), None
    if th_doc is not None and th_doc.holdout_accuracy is not None and abs(th_doc.holdout_accuracy - acc) > 1e-12:
        notes.append(
            f"the held-out accuracy recorded in {thresholds} ({_pct(th_doc.holdout_accuracy)}) differs from "
            f"the {_pct(acc)} these thresholds get on its held-out part (edited thresholds?); "
            "the report shows the latter"
        )
    if verify_result is not None:
        why = usable_verify(verify_result, verify_label, run, fingerprint)
        if why is not None:
            notes.append(why)
            verify_result = None
        elif latency is not None and req.min_speedup is not None and verify_result.timing(latency) is None:
            timed = ", ".join(t.key for t in verify_result.timings) or "none"
            notes.append(
                f"verify result '{verify_label}' has no timing for {latency} (it timed {timed}); the speed-up "
                f"on {latency} is predicted: verify with --batch-size {lat_batch} on {lat_dev}"
            )

    held_rows = f"{outcome.n:,} held-out samples" if outcome.held_out else f"{outcome.n:,} samples (nothing held out)"
    evidence: dict[str, LatencyEvidence] = {}
    for key in sorted(run.costs.latency):
        timing = None if verify_result is None else verify_result.timing(key)
        if timing is not None and verify_result is not None:
            evidence[key] = measured_latency(timing, verify_result.n)
        else:
            evidence[key] = predicted_latency(run.costs, key, outcome.exits, held_out=outcome.held_out, rows=held_rows)
    if verify_result is not None:
        for t in verify_result.timings:
            evidence.setdefault(t.key, measured_latency(t, verify_result.n))
    estimates: dict[str, SpeedupEstimate] = {k: e.speedup for k, e in evidence.items()}
    macs = _per_exit_macs(run)
    if macs is not None:
        estimates["macs"] = speedup_estimate(outcome, macs, macs[-1])
    criteria = judge(
        req,
        accuracy=acc,
        accuracy_interval=interval,
        outcome=outcome,
        speedup=estimates.get(speedup_cost),
    )
    decision = decide(criteria)
    full_model = {name: e.full_model for name, e in estimates.items()}
    speedups = {name: estimates[name].value for name in (["macs"] if "macs" in estimates else []) + sorted(evidence)}

    fit_costs = _fit_costs(prep, doc["thresholds"])
    unit = str((doc.get("budget") or {}).get("unit") or "macs")
    other_kwargs: dict[str, Any] = {"device": None, "batch_size": None}
    if unit.startswith(MS_PREFIX):
        dev_, _, b_ = unit[len(MS_PREFIX) :].partition("/b")
        other_kwargs = {"device": dev_, "batch_size": int(b_)}
    asked_budget = (doc.get("budget") or {}).get("asked")
    methods = _methods_at_budget(
        prep,
        frontier,
        str(doc.get("method")),
        None if asked_budget is None else str(asked_budget),
        other_kwargs,
        _MethodAtBudget(str(doc.get("method")), acc, interval, fit_costs.get("macs")),
    )

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
        full_model=full_model,
        accuracy=acc,
        accuracy_interval=interval,
        latency=evidence,
        notes=tuple(notes),
        verify=verify_result,
        verify_label=verify_label,
        thresholds_path=None if thresholds is None else str(thresholds),
        fit_costs=fit_costs,
        methods=methods,
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


def _status_color(status: str | None) -> str:
    return {PASS: _GO_COLOR, "GO": _GO_COLOR, INCONCLUSIVE: _AMBER, "INCONCLUSIVE": _AMBER}.get(
        str(status), _NOGO_COLOR
    )


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


def _decision_message(data: ReportData) -> str:
    """The sentence under the verdict: why GO, NO-GO or INCONCLUSIVE."""
    if data.decision is None:
        return "No criterion was given, so this report does not decide; it states the trade-off."
    failed = [c for c in data.criteria if c.status == FAIL]
    unsure = [c for c in data.criteria if c.status == INCONCLUSIVE]
    if not data.outcome.held_out and not unsure:
        met = "Every criterion is met" if data.decision == "GO" else "Not every criterion is met"
        return (
            f"{met} by its point estimate, fitted on the same samples it is judged on "
            "(optimistic; no intervals). Hold samples out (--holdout 0.5) for a decision."
        )
    if data.decision == "GO":
        return "Every criterion is met, each with its whole 95% interval on the right side."
    if data.decision == "INCONCLUSIVE":
        return (
            "Timing noise alone decides: "
            + "; ".join(_inconclusive_text(c) for c in unsure)
            + f". The latency measurement is too noisy to call: {REMEDY}."
        )
    return "Not met with 95% confidence: " + "; ".join(_failure_text(c) for c in failed) + "."


def _latency_sentence(data: ReportData, key: str) -> str:
    """One key's early exit against the full model, for people."""
    e = data.latency[key]
    b = batch_size_of(key)
    what = "the early exit takes" if b == 1 else f"a batch of {b} takes"
    how = e.rows if e.source == "measured" else "predicted from the profiled stage times"
    return (
        f"On {key} {what} {_ms(e.early_exit_ms)} and the full model {_ms(e.full_model_ms)}: "
        f"{e.speedup.value:.2f}× faster ({how})."
    )


def _page_decision(data: ReportData) -> Figure:
    p = _Page(data, 1, "Should this early-exit model ship?")
    t = data.thresholds
    acc, interval = data.accuracy, data.accuracy_interval
    p.skip(0.2)
    if data.decision is None:
        p.fig.text(0.06, p.y - 0.45 / p.height_in, "NO DECISION", fontsize=36, weight="bold", color=_GREY)
        p.skip(0.6)
    else:
        size = 48 if data.decision == "INCONCLUSIVE" else 64
        p.fig.text(
            0.06,
            p.y - 0.75 / p.height_in,
            data.decision,
            fontsize=size,
            weight="bold",
            color=_status_color(data.decision),
        )
        p.skip(0.95)
        if not data.outcome.held_out:
            p.fig.text(0.06, p.y + 0.05 / p.height_in, "(provisional: nothing held out)", fontsize=12, color=_GREY)
            p.skip(0.1)
    p.para(_decision_message(data), size=11, width=88)
    for note in data.notes:
        p.para("Note: " + note, size=9, color=_AMBER, width=105)
    # --- the trade-off in a few sentences
    o = data.outcome
    k_last = data.k
    last_acc = float(o.last_correct.mean()) if o.n else float("nan")
    rows_txt = "held-out samples" if o.held_out else "samples (nothing held out)"
    sp_macs = data.speedup.get("macs")
    parts = [
        f"At budget {_budget_label(data)}, early exit is right on {_pct(acc)} of "
        f"{o.n:,} {rows_txt}, "
        f"against {_pct(last_acc)} when exit {k_last} (the last) runs on every sample "
        f"({_change_text(last_acc - acc)})."
    ]
    if sp_macs is not None:
        parts.append(
            f"It spends {_macs(_held_cost(data, 'macs'))} per sample on average instead of "
            f"{_macs(data.full_model.get('macs'))}: {sp_macs:.2f}× fewer MACs."
        )
    for key in sorted(data.latency):
        parts.append(_latency_sentence(data, key))
    if not data.latency:
        parts.append("No latency was profiled, so the speed-up is in MACs only (see page 3).")
    elif any(e.source == "predicted" for e in data.latency.values()):
        parts.append(
            "Predicted latency comes from the profiled stage times (above batch size 1 a batch runs "
            "each stage until its last sample leaves); 'dyncal verify --out verify.json' measures a real "
            "early exit, which the report then judges on (--verify verify.json)."
        )
    p.skip(0.1)
    p.para(" ".join(parts), size=10, width=96)
    # --- criteria table
    p.skip(0.1)
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
                    _need_text(c, d),
                    _status_word(c),
                ]
            )
            colors.append(_status_color(c.status))
        p.table(
            ["criterion", "estimate", "95% interval", "required", "result"],
            rows,
            col_widths=[0.35, 0.1, 0.19, 0.11, 0.14],
            size=9.5,
            row_colors=colors,
        )
        notes = []
        for c in data.criteria:
            if c.name != "speedup" or c.cost == "macs":
                continue
            d = _criterion_digits(c)
            e = data.latency.get(str(c.cost))
            bits = [f"The speed-up on {c.cost} is {c.source}" + (f" ({e.rows})" if e is not None else "")]
            if c.interval_sampling is not None:
                s_iv = c.interval_sampling
                bits.append(
                    f"its interval carries sampling noise ({_criterion_value(c, s_iv[0], d)} to "
                    f"{_criterion_value(c, s_iv[1], d)} alone) and timing noise"
                )
            if c.interval_timing is not None:
                t_iv = c.interval_timing
                bits.append(
                    f"timing noise alone gives {_criterion_value(c, t_iv[0], d)} to {_criterion_value(c, t_iv[1], d)}"
                    + ("" if c.timing_spread is None else f", replicates spread {100 * c.timing_spread:.0f}% of median")
                )
            if batch_size_of(str(c.cost)) > 1 and c.source == "predicted":
                bits.append(
                    f"units are batches of {batch_size_of(str(c.cost))} held-out samples (a fixed random order)"
                )
            notes.append("; ".join(bits) + ".")
        rule = (
            "A criterion passes when its whole 95% interval clears the requirement, fails when it does not "
            "and timing noise cannot change that, and is inconclusive when timing noise alone decides (load "
            "on the machine can make a verdict inconclusive, never the opposite)."
            if o.held_out
            else "Nothing was held out, so the point estimates decide (fitted on the same samples: optimistic)."
        )
        p.para(" ".join([rule, *notes]), size=8, color=_GREY, width=118)
    else:
        p.para(
            "None given. To decide, add --min-accuracy A or --max-drop D (fractions, e.g. 0.95 "
            "or 0.01) "
            "and/or --min-speedup S (e.g. 1.5), optionally with --device/--batch-size to judge "
            "latency.",
            size=9.5,
        )
    # --- operating point
    p.skip(0.05)
    p.heading("Operating point")
    held_word = "held out" if o.held_out else "on all samples (nothing held out)"
    fit_macs = data.fit_costs.get("macs")
    held_macs = _held_cost(data, "macs")
    op_rows = [
        ["budget", f"{_budget_label(data)}; {data.budget_reason}"],
        ["method, score", f"{t.get('method', 'n/a')}, {t.get('score', 'maxprob')}"],
        ["thresholds", ", ".join(_thresholds_text(t, data.run))],
        ["temperatures", ", ".join(f"{float(v):.3g}" for v in (t.get("temperatures") or []))],
        [
            "held-out accuracy" if o.held_out else "accuracy (fitted)",
            f"{_pct(acc)}  (95% interval {_interval_text(interval, _pct)}; {o.n:,} samples)",
        ],
        ["accuracy on fitting half", _pct(_float_or_none(t.get("calibration_accuracy")))],
    ]
    if "macs" in data.full_model:
        op_rows.append(
            [
                "expected MACs",
                f"{_macs(held_macs)} per sample {held_word} "
                f"({_pct((held_macs or float('nan')) / data.full_model['macs'], 1)} of the full model); "
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
    for key in sorted(data.latency):
        e = data.latency[key]
        b = batch_size_of(key)
        per = "" if b == 1 else f" per batch of {b}"
        where = e.rows if e.source == "measured" else f"predicted, {held_word}"
        off = ""
        if e.measured_over_predicted is not None:
            off = f"; predicted {_ms(e.predicted_ms)}, measured / predicted {e.measured_over_predicted:.2f}"
        op_rows.append(
            [f"latency {key}", f"{_ms(e.early_exit_ms)}{per} ({where}{off}); full model {_ms(e.full_model_ms)}"]
        )
    speed = [f"{v:.2f}× ({'MACs' if k == 'macs' else k})" for k, v in data.speedup.items()]
    op_rows.append(["speed-up vs full model", ", ".join(speed) or "n/a"])
    op_rows.append(
        [
            "share leaving at exit 1..K",
            ", ".join(_pct(float(s), 1) for s in o.shares(data.k)) + f" ({held_word})",
        ]
    )
    for label, value in op_rows:
        p.skip(9 / 72 * 1.45)
        p.fig.text(0.06, p.y, label, fontsize=9, color=_GREY, va="baseline")
        wrapped = textwrap.wrap(value, width=84, break_on_hyphens=False) or [""]
        p.fig.text(0.3, p.y, wrapped[0], fontsize=9, va="baseline")
        for extra in wrapped[1:]:
            p.skip(9 / 72 * 1.35)
            p.fig.text(0.3, p.y, extra, fontsize=9, va="baseline")
    p.skip(0.15)
    p.para(
        (
            "Accuracies, costs and exit shares here are on the samples held out of fitting the thresholds "
            "(pages 2 and 4 show the same numbers). "
            if o.held_out
            else "Nothing was held out: accuracies and costs here are on the samples the thresholds were fitted on. "
        )
        + "Speed-up = cost of the full model on every sample / expected early-exit cost "
        "(latency includes one exit decision per exit passed). Pages 2–3 show the whole "
        "trade-off curve; "
        "page 4 where samples leave; page 5 calibration; page 6 thresholds and provenance.",
        size=8,
        color=_GREY,
        width=118,
    )
    return p.fig


def _held_cost(data: ReportData, name: str) -> float | None:
    """Expected cost on the judged rows: MACs per sample, or a latency key's early-exit ms per batch."""
    if name in data.latency:
        return data.latency[name].early_exit_ms
    if not data.outcome.n:
        return None
    units = _unit_costs(data.run, name, data.outcome.exits)
    return None if units is None or not len(units) else float(np.mean(units))


def _op_label(data: ReportData) -> str:
    """The operating point for a legend: which budget, and why when it was not asked."""
    short = _budget_label(data).split(" (")[0]
    if data.thresholds_path is not None:
        return f"operating point ({Path(data.thresholds_path).name}, budget {short})"
    if data.budget_reason.startswith("asked"):
        return f"operating point (budget {short})"
    if data.requirements.any:
        return f"operating point (budget {short}, chosen from the criteria)"
    return (
        f"operating point (budget {short}: the cheapest\nwithin {_pts(_DEFAULT_MAX_DROP)} of the last exit's "
        "accuracy;\nset it with --budget)"
    )


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
    if "macs" not in data.full_model:
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
            ["method", "held-out accuracy", "95% interval", "MACs, fitting half (share)"],
            rows,
            col_widths=[0.26, 0.17, 0.22, 0.23],
            size=9,
        )
    p.para(note, size=9.5)
    return p.fig


def _method_rows(data: ReportData, main: str) -> tuple[list[list[str]], str]:
    """The deployed thresholds and every other method at the operating point's budget, and a summary."""
    table = []
    by_name = {}
    full = data.full_model.get("macs")
    for m in data.methods:
        by_name[m.method] = m
        deployed = m.method == main
        acc = "no solution" if m.accuracy is None else _pct(m.accuracy)
        iv = "n/a" if m.interval is None else f"{_pct(m.interval[0])} to {_pct(m.interval[1])}"
        share = "" if full is None or m.fit_macs is None else f" ({_pct(m.fit_macs / full, 1)})"
        table.append([m.method + (" (deployed)" if deployed else ""), acc, iv, f"{_macs(m.fit_macs)}{share}"])
    if not table:
        return [], "The thresholds file records no budget to compare the other methods at; see the curves."
    note = (
        f"Every method solved at the operating point's budget ({_short_budget(data)}); accuracy on the "
        f"{data.outcome.n:,} held-out samples, MACs on the fitting half (where the budget is met and the "
        "curves are drawn). The deployed row is the operating point of page 1."
    )
    if main in by_name and "geometric" in by_name:
        a, g = by_name[main].accuracy, by_name["geometric"].accuracy
        if a is not None and g is not None:
            gain = a - g
            note += (
                f" {main} is {_pts(abs(gain), 2)} {'above' if gain >= 0 else 'below'} the geometric baseline "
                "at this budget."
            )
    return table, note


@dataclass(frozen=True)
class _MethodAtBudget:
    """One method at the operating point's budget (page 2's table)."""

    method: str
    accuracy: float | None
    interval: tuple[float, float] | None
    fit_macs: float | None


def _methods_at_budget(
    prep: PreparedRun,
    frontier: pd.DataFrame,
    main: str,
    budget: str | None,
    solve_kwargs: Mapping[str, Any],
    deployed: _MethodAtBudget,
) -> tuple[_MethodAtBudget, ...]:
    """The deployed operating point, then every other solver and the oracle solved at the same budget."""
    from dyncal.analysis.frontier import oracle_at_budget
    from dyncal.calibrate.budget import resolve_budget
    from dyncal.calibrate.solvers import METHODS, solve_run
    from dyncal.stats import mean_bootstrap_ci

    out = [deployed]
    if budget is None:
        return tuple(out)
    names = [str(m) for m in dict.fromkeys(frontier["method"].astype(str)) if m not in ("static", "oracle", main)]
    for name in sorted((n for n in names if n in METHODS), key=lambda n: n == "geometric"):
        try:
            doc = solve_run(prep, budget, method=name, **solve_kwargs).to_dict()
        except DyncalError:
            out.append(_MethodAtBudget(name, None, None, None))
            continue
        acc = doc.get("holdout_accuracy")
        ci = doc.get("holdout_ci")
        out.append(
            _MethodAtBudget(
                name,
                _float_or_none(acc),
                None if ci is None else (float(ci[0]), float(ci[1])),
                _float_or_none(doc.get("expected_macs")),
            )
        )
    target = resolve_budget(budget, prep.costs, prep.k, **{k: v for k, v in solve_kwargs.items() if k != "method"})
    costs = np.asarray(prep.units[target.unit])
    fit, held = prep.correct[prep.fit_idx], prep.correct[prep.holdout_idx]
    fit_exits = oracle_at_budget(fit, costs, target.value)
    macs = prep.units.get("macs")
    fit_macs = None if macs is None else float(np.asarray(macs)[fit_exits].mean())
    if len(held):
        ok = held[np.arange(len(held)), oracle_at_budget(held, costs, target.value)]
        out.append(_MethodAtBudget("oracle", float(ok.mean()), mean_bootstrap_ci(ok, seed=prep.seed), fit_macs))
    else:
        ok = fit[np.arange(len(fit)), fit_exits]
        out.append(_MethodAtBudget("oracle", float(ok.mean()), None, fit_macs))
    return tuple(out)


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
        "Expected latency counts the stages a sample runs through plus one exit decision at each "
        "exit it passes (on the fitting half, like the curves of page 2); squares are single exits run "
        "on every sample (their stages summed); the dashed line is the full model, the figure every "
        "speed-up divides.",
        size=9.5,
    )
    cols = 1 if len(keys) <= 2 else 2
    n_rows = math.ceil(len(keys) / cols)
    panel_h = 4.6 if len(keys) == 1 else min(2.7, 6.0 / n_rows - 0.6)
    axes = p.grid(len(keys), cols, panel_h, gap_in=0.35, hgap=0.1)
    plot_latency(
        data.frontier,
        operating_point=data.operating_point(),
        keys=keys,
        axes=axes,
        main_method=str(data.thresholds.get("method") or "") or None,
        full_model_ms={k: e.full_model_ms for k, e in data.latency.items()},
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
        e = data.latency.get(key)
        full = (
            ""
            if e is None
            else f" The full model {_ms(e.full_model_ms)} per {'sample' if batch_size_of(key) == 1 else 'batch'} "
            f"({e.full_model_source})."
        )
        line = (
            f"{key}: {prof.hardware or 'hardware not recorded'}"
            + (f", {prof.threads} thread(s)" if prof.threads else "")
            + f"; exit decision {_ms(prof.decision_median_ms)}; "
            + f"{len(prof.stage_ms[0]) if prof.stage_ms else 0} repeats per stage."
            + full
        )
        if noisy:
            stages = ", ".join(map(str, noisy))
            line += (
                f" Warning: spread (IQR) above 10% of the median for stage(s) {stages}: the machine was busy; "
                "measure with --threads 1 and more --repeats on a quiet machine."
            )
        p.para(line, size=8, width=125, color=_NOGO_COLOR if noisy else "black")
    measured = [e for e in data.latency.values() if e.source == "measured"]
    if data.verify is not None and measured:
        v = data.verify
        p.skip(0.1)
        p.heading(f"Measured by dyncal verify ({data.verify_label})", size=11)
        rows = []
        for e in sorted(measured, key=lambda e: e.key):
            iv = e.speedup.interval
            rows.append(
                [
                    e.key,
                    _ms(e.early_exit_ms),
                    _ms(e.predicted_ms),
                    "n/a" if e.measured_over_predicted is None else f"{e.measured_over_predicted:.2f}",
                    _ms(e.full_model_ms),
                    f"{e.speedup.value:.2f}×" + ("" if iv is None else f" ({iv[0]:.2f} to {iv[1]:.2f})"),
                ]
            )
        p.table(
            ["latency", "early exit", "predicted", "meas. / pred.", "full model", "speed-up (95% interval)"],
            rows,
            col_widths=[0.12, 0.13, 0.13, 0.14, 0.13, 0.25],
            size=8.5,
        )
        p.para(
            f"A real early exit with the operating point's thresholds and the plain model, timed interleaved on "
            f"the same batches ({v.n:,} samples on {v.device}, {v.hardware or 'hardware not recorded'}, "
            f"{v.threads or 'n/a'} thread(s)); ms per batch. Agreement with the simulated exits and "
            f"predictions: {_pct(v.agreement)}. The decision judges these measured figures; the prediction "
            "is shown for how far off it is.",
            size=8,
            color=_GREY,
            width=125,
        )
    return p.fig


def _page_exits(data: ReportData) -> Figure:
    p = _Page(data, 4, "Where samples leave at the operating point")
    o = data.outcome
    k = data.k
    shares, counts, acc = o.shares(k), o.counts(k), o.accuracy_per_exit(k)
    where = "held-out samples" if o.held_out else "samples"
    p.para(
        f"Top: share of the {o.n:,} {where} that leave at each exit under the operating point's thresholds "
        f"(budget {_budget_label(data)}). Bottom: accuracy of those samples (red diamonds) and, for "
        "reference, each exit's accuracy on all samples (grey circles). Samples that leave early are the "
        "confident ones, so they are usually more accurate than the exit is on average. "
        f"Overall: {_pct(data.accuracy)} right on these samples"
        + (f", {_macs(_held_cost(data, 'macs'))} per sample" if "macs" in data.full_model else "")
        + " (as on page 1).",
        size=9.5,
    )
    p.skip(0.25)
    top = p.axes(2.6, gap_in=0.1)
    bottom = p.axes(2.0, gap_in=0.15)
    plot_exits(shares, acc, counts=counts, exit_accuracy=data.exit_accuracy, axes=(top, bottom))
    p.skip(0.75)
    macs = data.run.costs.macs if data.run.costs is not None else None
    keys = sorted(data.run.costs.latency) if data.run.costs is not None else []
    if data.speedup_cost in keys:  # the latency the decision used, first
        keys.remove(data.speedup_cost)
        keys.insert(0, data.speedup_cost)
    th = _thresholds_text(data.thresholds, data.run)
    header = ["exit", "threshold", "leave here", "n", "their accuracy", "exit accuracy", "cum. MACs"]
    widths = [0.06, 0.13, 0.11, 0.07, 0.13, 0.13, 0.12]
    per_exit: list[float] = []
    if keys and data.run.costs is not None:
        header.append(f"ms {keys[0]}")
        widths.append(0.14)
        per_exit = list(data.run.costs.latency[keys[0]].early_exit_ms)
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
        if per_exit:
            row.append(_ms(per_exit[i]))
        rows.append(row)
    p.table(header, rows, col_widths=widths, size=9)
    if per_exit:
        e = data.latency.get(keys[0])
        full = "" if e is None else f" For comparison, the full model {_ms(e.full_model_ms)} on {keys[0]}."
        p.para(
            f"ms: profiled latency on {keys[0]} when leaving at that exit (stage medians so far plus the exit "
            "decisions)" + ("" if keys[0].endswith("/b1") else ", for a whole batch") + "." + full,
            size=8.5,
            color=_GREY,
            width=110,
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
    if data.thresholds_path is not None:
        asked = [f"--thresholds {data.thresholds_path}"]
    elif data.budget_reason.startswith("asked"):
        asked = [f"--budget {data.budget}"]
    else:
        asked = [f"budget {_short_budget(data)} ({data.budget_reason})"]
    if data.verify is not None:
        asked.append(f"--verify {data.verify_label} (used: it matches the run, thresholds and weights)")
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
    thresholds: str | os.PathLike[str] | None = None,
    verify: str | os.PathLike[str] | VerifyResult | None = None,
    min_accuracy: float | None = None,
    max_drop: float | None = None,
    min_speedup: float | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    title: str | None = None,
    method: str | None = None,
    temperature: bool = False,
    holdout: float | None = None,
    seed: int | None = None,
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
        thresholds: A ``thresholds.json`` to report instead of solving (not with ``budget``):
            checked against the run; its score, temperatures and held-out split are used, so
            the held-out numbers are the ones solve printed.
        verify: A ``dyncal verify --out`` result (path or object). Used only when it was
            measured on this run, with these thresholds and the run's weights; then latency
            criteria are judged on the measured early exit. Otherwise it is ignored with a note.
        min_accuracy: Held-out accuracy must be at least this fraction.
        max_drop: Accuracy lost against the last exit must be at most this fraction.
        min_speedup: Speed-up against the last exit on every sample must be at least this
            factor; in latency when ``device``/``batch_size`` is given, else in MACs.
        device: Latency device (``cpu``, ``cuda``) for the speed-up and ms budgets.
        batch_size: Latency batch size (default 1, or the smallest profiled).
        title: Title on every page (default from the model spec).
        method: Threshold solver (default: solve's default).
        temperature: Fit one temperature per exit on the fitting half (default False).
        holdout: Fraction of samples held out of fitting (default 0.5; from the file with ``thresholds``).
        seed: Seed of the held-out split (default 0; from the file with ``thresholds``).
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
        thresholds=thresholds,
        verify=verify,
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
        held_out=data.held_out_summary(),
        latency={k: e.to_dict() for k, e in sorted(data.latency.items())},
        notes=data.notes,
        verify=None
        if data.verify is None
        else {
            "source": data.verify_label,
            "n": data.verify.n,
            "device": data.verify.device,
            "keys": [t.key for t in data.verify.timings],
            "agreement": data.verify.agreement,
        },
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
    holdout: float | None = None,
    seed: int | None = None,
    dpi: int = 150,
) -> Path:
    """Write one report figure alone (what ``dyncal plot`` does).

    Args:
        run_path: A run directory.
        kind: ``frontier``, ``latency``, ``exits`` or ``reliability``.
        out: Output file; the format follows the suffix (``.png``, ``.svg`` or ``.pdf``).
        budget: Operating point's budget. Default: the cheapest budget whose fitted accuracy
            is within 1 percentage point of the last exit's (as :func:`build_report` without
            criteria); the figure's legend says which budget it is and why.
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
            op = data.operating_point(_op_label(data))
            if kind == "frontier":
                fig = plot_frontier(
                    data.frontier,
                    operating_point=op,
                    main_method=main,
                    title=f"{data.title}: accuracy vs MACs",
                )
            elif kind == "latency":
                fig = plot_latency(
                    data.frontier,
                    operating_point=op,
                    main_method=main,
                    full_model_ms={k: e.full_model_ms for k, e in data.latency.items()},
                )
            else:
                o = data.outcome
                fig = plot_exits(
                    o.shares(data.k),
                    o.accuracy_per_exit(data.k),
                    counts=o.counts(data.k),
                    exit_accuracy=data.exit_accuracy,
                    title=_op_label(data).replace("operating point", "exits at the operating point", 1),
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
