"""The report's operating point, computed once: the budget, the thresholds, and how they do held out.

:func:`prepare_report` scores the run, draws the frontier, chooses a budget when none was
asked (on the fitting half, so the held-out half still judges), solves or reads the
thresholds, applies them to the held-out rows, judges the criteria and gathers everything
the pages draw into a :class:`ReportData`. numpy only; nothing is drawn here.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dyncal.artifacts.costs import LatencyKey
from dyncal.choices import Method
from dyncal.errors import DyncalError, param
from dyncal.options import check_at_least, check_flag, check_fraction, check_seed, options_from
from dyncal.reports.compare import Alternative, compare_alternatives
from dyncal.reports.decision import (
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
    _full_model_cost,
    _per_exit_macs,
    _unit_costs,
    batch_size_of,
    measured_latency,
    predicted_latency,
    usable_verify,
)
from dyncal.reports.figures import MS_PREFIX, OperatingPoint
from dyncal.reports.text import _pct, _pts

if TYPE_CHECKING:
    import pandas as pd

    from dyncal.analysis.calibration import ReliabilityBins
    from dyncal.artifacts.run import Run
    from dyncal.artifacts.thresholds import ThresholdsDocument
    from dyncal.artifacts.verify import VerifyResult
    from dyncal.calibrate.solvers import PreparedRun

__all__ = ["ReportData", "ReportOptions", "prepare_report", "report_date", "report_options"]

_DEFAULT_MAX_DROP = 0.01


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
        methods: Every solver (and the oracle) at the operating point's budget (page 2's table).
        alternatives: Other runs judged against the operating point (``--compare``).
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
    alternatives: tuple[Alternative, ...] = ()

    @property
    def k(self) -> int:
        """Number of exits."""
        return self.run.k

    def operating_point(self, label: str | None = None) -> OperatingPoint:
        """The operating point as the figures mark it (fitting-half costs, like the curves)."""
        return _figure_point(self, label)

    @property
    def dominating_static(self) -> tuple[Alternative, ...]:
        """The static alternatives that are as accurate and cheaper: early exit does not pay against them."""
        return tuple(a for a in self.alternatives if a.static and a.dominates)

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
    from dyncal.artifacts.costs import device_name

    have = sorted((run.costs.latency if run.costs is not None else {}).keys())
    dev = device_name(device or "cpu")
    if batch_size is None:
        batches = sorted(k.batch_size for k in map(LatencyKey.parse, have) if k.device == dev)
        batch_size = 1 if not batches or 1 in batches else batches[0]
    key = str(LatencyKey(dev, batch_size))
    if key not in have:
        raise DyncalError(
            f"no latency profiled for {key} (profiled: {', '.join(have) or 'none'}); run "
            f"'dyncal profile {run.path} --device {dev} --batch-size {batch_size}' first, or leave "
            "out `device`/`batch_size` to judge the speed-up in MACs"
        )
    return key


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


def _prepared_for(run: Run, th: ThresholdsDocument, path: str) -> PreparedRun:
    """The run scored and split as the thresholds document records (its score, temperatures and split)."""
    from dyncal.calibrate.scores import exit_scores
    from dyncal.calibrate.solvers import SolveCache, prepare_run

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
            cache=SolveCache(),
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


@dataclass(frozen=True)
class _OperatingChoice:
    """The operating point and how it was reached: what every page and every figure shares.

    :func:`prepare_report` adds the evidence, the verdict and the calibration to it;
    ``dyncal plot`` draws from it alone.
    """

    run: Run
    prep: PreparedRun
    frontier: pd.DataFrame | None
    thresholds: dict[str, Any]
    fingerprint: str
    budget: str
    budget_reason: str
    requirements: Requirements
    outcome: ExitOutcome
    accuracy: float
    accuracy_interval: tuple[float, float] | None
    fit_costs: dict[str, float]
    speedup_cost: str
    latency_key: str | None
    thresholds_path: str | None
    title: str
    notes: tuple[str, ...]
    verify: VerifyResult | None
    verify_label: str

    def operating_point(self, label: str | None = None) -> OperatingPoint:
        """The operating point as the figures mark it (see :meth:`ReportData.operating_point`)."""
        return _figure_point(self, label)

    def confidence(self, *, fitted_temperatures: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``(N, K)`` top probability and correctness of every exit, at T = 1 or the fitted temperatures.

        The prepared scores are reused when they are exactly that (``maxprob`` at those
        temperatures); a ``margin`` or ``entropy`` score is not a confidence.
        """
        from dyncal.calibrate.scores import exit_scores

        temps = [float(t) for t in (self.thresholds.get("temperatures") or [1.0] * self.run.k)]
        scaled = any(abs(t - 1.0) > 1e-9 for t in temps)
        if self.prep.score == "maxprob" and scaled == fitted_temperatures:
            return self.prep.scores, self.prep.correct
        conf, pred = exit_scores(self.run.logits, "maxprob", temps if fitted_temperatures else None)
        return conf, pred == np.asarray(self.run.labels)[:, None]


def _figure_point(data: ReportData | _OperatingChoice, label: str | None) -> OperatingPoint:
    """The operating point as the figures mark it (fitting-half costs, like the curves)."""
    ms = {k: v for k, v in data.fit_costs.items() if k != "macs"}
    return OperatingPoint(
        expected_macs=data.fit_costs.get("macs"),
        accuracy=data.accuracy,
        interval=data.accuracy_interval,
        expected_ms=ms,
        label=label or f"operating point (budget {_budget_label(data).split(' (')[0]})",
    )


@dataclass(frozen=True)
class ReportOptions:
    """What a report is asked: the operating point, the criteria, the evidence, and how to label it.

    One object carries them from the CLI (or Python) through every layer of the report.

    Attributes:
        budget: Operating point's budget (``0.6x``, ``1.2GMAC``, ``35ms``); None: chosen
            from the criteria.
        thresholds: A thresholds.json to report instead of solving at a budget.
        verify: A verify.json (or :class:`~dyncal.artifacts.verify.VerifyResult`): measured
            early exit, used only when it matches the run, thresholds and model.
        min_accuracy: GO needs held-out accuracy at least this fraction.
        max_drop: GO needs the accuracy drop vs the last exit at most this fraction.
        min_speedup: GO needs a speed-up vs the last exit of at least this factor.
        device: Latency device for the speed-up and ``ms`` budgets.
        batch_size: Latency batch size.
        title: Title on every page.
        method: Threshold solver (default ``smoothed``).
        temperature: Fit per-exit temperatures on the fitting half.
        holdout: Held-out fraction (default 0.5).
        seed: Seed of the held-out split (default 0).
        command: The command line, shown on the provenance page.
        compare: Other runs to judge the operating point against (one path: one run).

    Every value is checked when the object is built, so a caller that builds it first (the
    demo) refuses a bad value before any work.

    Example:
        >>> ReportOptions(method="geometric").method is Method.GEOMETRIC
        True
        >>> ReportOptions(min_speedup=-1)
        Traceback (most recent call last):
        ...
        dyncal.errors.DyncalError: `min_speedup` must be a positive factor (e.g. 1.5 for 1.5x), got -1
    """

    budget: str | None = None
    thresholds: str | os.PathLike[str] | None = None
    verify: str | os.PathLike[str] | VerifyResult | None = None
    min_accuracy: float | None = None
    max_drop: float | None = None
    min_speedup: float | None = None
    device: str | None = None
    batch_size: int | None = None
    title: str | None = None
    method: Method | None = None
    temperature: bool = False
    holdout: float | None = None
    seed: int | None = None
    command: str = ""
    compare: Sequence[str | os.PathLike[str]] = ()

    def __post_init__(self) -> None:
        """Check every value that needs no run; turn the method's name into a member."""
        if self.method is not None:
            object.__setattr__(self, "method", Method.parse(self.method, "method"))
        if isinstance(self.compare, (str, os.PathLike)):
            object.__setattr__(self, "compare", (self.compare,))
        Requirements(self.min_accuracy, self.max_drop, self.min_speedup).validate()
        if self.batch_size is not None:
            check_at_least("batch_size", self.batch_size, 1)
        check_flag("temperature", self.temperature)
        if self.holdout is not None:
            check_fraction("holdout", self.holdout)
        if self.seed is not None:
            check_seed("seed", self.seed)
        for name in ("device", "title"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise DyncalError(f"{param(name)} must be a string, got {value!r}")
        if self.budget is not None and self.thresholds is not None:
            raise DyncalError(
                f"give `budget` or `thresholds`, not both (got `budget` {self.budget} and `thresholds` "
                f"{self.thresholds}); `thresholds` reports the thresholds a file already holds"
            )
        if self.budget is not None:
            from dyncal.calibrate.budget import parse_budget

            parse_budget(self.budget)
        if self.thresholds is not None:
            given = [
                o
                for o, v in (
                    ("method", self.method),
                    ("temperature", self.temperature or None),
                    ("holdout", self.holdout),
                )
                if v is not None
            ] + (["seed"] if self.seed is not None else [])
            if given:
                raise DyncalError(
                    f"`thresholds` fixes the method, temperatures and held-out split; leave out "
                    f"{', '.join(map(param, given))}"
                )


def report_options(options: ReportOptions | None, fields: Mapping[str, Any]) -> ReportOptions:
    """``options``, or a :class:`ReportOptions` built from keyword ``fields`` (not both).

    Raises:
        DyncalError: Both given, or a keyword that is no report option.
    """
    return options_from(ReportOptions, options, fields, "report")


def _choose_operating_point(
    run_path: str | os.PathLike[str],
    options: ReportOptions,
    *,
    frontier: bool = True,
) -> _OperatingChoice:
    """Check the arguments, score the run, choose and apply the operating point.

    The frontier is computed when ``frontier`` is True or a budget must be chosen from it.
    """
    budget, thresholds, verify, title = options.budget, options.thresholds, options.verify, options.title
    device, batch_size, method, temperature = options.device, options.batch_size, options.method, options.temperature
    holdout, seed = options.holdout, options.seed
    min_accuracy, max_drop, min_speedup = options.min_accuracy, options.max_drop, options.min_speedup
    from dyncal.artifacts.run import load_run
    from dyncal.calibrate.solvers import DEFAULT_METHOD, prepare_run, solve_run
    from dyncal.stats import mean_bootstrap_ci

    # the options checked their values when built (ReportOptions.__post_init__)
    req = Requirements(min_accuracy, max_drop, min_speedup)
    run = load_run(run_path)
    if run.costs is None or (run.costs.macs is None and not run.costs.latency):
        raise DyncalError(
            f"run '{run.path}' has no costs, so there is no speed to trade for accuracy; run "
            f"'dyncal profile {run.path}' (or re-import it with 'dyncal import FILE --macs ...') first"
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
                f"sizes ({', '.join(keys)}); choose one with `device` and `batch_size`"
            )
        latency = keys[0]
    if latency is None and req.min_speedup is not None and run.costs.latency:
        # latency was profiled: a speed-up is judged in time, not in MACs
        keys = sorted(run.costs.latency)
        if len(keys) > 1:
            raise DyncalError(
                f"`min_speedup`: run '{run.path}' has latency for {', '.join(keys)}; choose one with "
                f"`device` and `batch_size` (e.g. `device` {keys[0].split('/b')[0]} `batch_size` "
                f"{keys[0].split('/b')[1]})"
            )
        latency = keys[0]
    speedup_cost = latency if latency is not None else "macs"
    verify_result, verify_label = (None, "") if verify is None else _load_verify(verify)

    lat_dev, lat_batch = (None, None)
    if latency is not None:
        parsed = LatencyKey.parse(latency)
        lat_dev, lat_batch = parsed.device, parsed.batch_size
    # score the logits once: the frontier, the solve and the held-out simulation share it
    if th_doc is not None:
        prep = _prepared_for(run, th_doc, str(thresholds))
    else:
        prep = prepare_run(run, temperature=temperature, holdout=0.5 if holdout is None else holdout, seed=seed or 0)
    table = None
    if frontier or (th_doc is None and budget is None):
        from dyncal.analysis.frontier import compute_frontier

        table = compute_frontier(prep, device=lat_dev, batch_size=lat_batch)
    main_method = str(method or DEFAULT_METHOD)  # the plain name, as the frontier's column and the documents hold it
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
            assert table is not None
            budget, reason = _choose_budget(
                table,
                main_method,
                req,
                fit,
                lambda exits: _unit_costs(run, speedup_cost, exits),
                _full_model_cost(run, speedup_cost),
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
        result = solve_run(prep, budget, method=main_method, **solve_kwargs)
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
    return _OperatingChoice(
        run=run,
        prep=prep,
        frontier=table,
        thresholds=doc,
        fingerprint=fingerprint,
        budget=budget,
        budget_reason=reason,
        requirements=req,
        outcome=outcome,
        accuracy=acc,
        accuracy_interval=interval,
        fit_costs=_fit_costs(prep, doc["thresholds"]),
        speedup_cost=speedup_cost,
        latency_key=latency,
        thresholds_path=None if thresholds is None else str(thresholds),
        title=title or f"Early-exit report: {_short_model(run)}",
        notes=tuple(notes),
        verify=verify_result,
        verify_label=verify_label,
    )


def latency_evidence(choice: _OperatingChoice, verify_result: VerifyResult | None = None) -> dict[str, LatencyEvidence]:
    """The operating point's latency per key: measured by ``verify_result`` where it timed it, else predicted.

    Predictions come from the profile on the judged rows; a key verify timed that was not
    profiled is measured only.
    """
    run, outcome = choice.run, choice.outcome
    held_rows = f"{outcome.n:,} held-out samples" if outcome.held_out else f"{outcome.n:,} samples (nothing held out)"
    evidence: dict[str, LatencyEvidence] = {}
    for key in sorted(run.costs.latency if run.costs is not None else ()):
        timing = None if verify_result is None else verify_result.timing(key)
        if timing is not None and verify_result is not None:
            evidence[key] = measured_latency(timing, verify_result.n)
        else:
            assert run.costs is not None
            evidence[key] = predicted_latency(run.costs, key, outcome.exits, held_out=outcome.held_out, rows=held_rows)
    if verify_result is not None:
        for t in verify_result.timings:
            evidence.setdefault(t.key, measured_latency(t, verify_result.n))
    return evidence


def prepare_report(run_path: str | os.PathLike[str], options: ReportOptions | None = None, **fields: Any) -> ReportData:
    """Compute everything a report shows, without drawing.

    Args:
        run_path: The run.
        options: What is asked (:class:`ReportOptions`); or give its fields as keywords.
        **fields: :class:`ReportOptions` fields, when ``options`` is None.

    :func:`render_pdf` draws the result.

    Returns:
        The report's data: frontier, operating point, criteria, decision, calibration.

    Raises:
        DyncalError: As :func:`build_report`.

    Example:
        >>> data = prepare_report("run", ReportOptions(min_accuracy=0.95))  # doctest: +SKIP
        >>> data.decision, data.accuracy  # doctest: +SKIP
        ('GO', 0.9875)
    """
    from dyncal.analysis.calibration import reliability_bins

    options = report_options(options, fields)
    command, compare = options.command, options.compare
    choice = _choose_operating_point(run_path, options)
    run, prep, frontier, doc = choice.run, choice.prep, choice.frontier, choice.thresholds
    assert frontier is not None and run.costs is not None
    req, outcome, acc, interval = choice.requirements, choice.outcome, choice.accuracy, choice.accuracy_interval
    latency, speedup_cost, fit_costs = choice.latency_key, choice.speedup_cost, choice.fit_costs
    verify_result, verify_label = choice.verify, choice.verify_label
    notes = list(choice.notes)
    if verify_result is not None:
        why = usable_verify(verify_result, verify_label, run, choice.fingerprint)
        if why is not None:
            notes.append(why)
            verify_result = None
        elif latency is not None and req.min_speedup is not None and verify_result.timing(latency) is None:
            timed = ", ".join(t.key for t in verify_result.timings) or "none"
            asked = LatencyKey.parse(latency)
            notes.append(
                f"verify result '{verify_label}' has no timing for {latency} (it timed {timed}); the speed-up "
                f"on {latency} is predicted: verify with --batch-size {asked.batch_size} on {asked.device}"
            )

    evidence = latency_evidence(choice, verify_result)
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
    alternatives = compare_alternatives(choice, evidence, compare) if compare else ()
    if decision is not None and any(a.static and a.dominates for a in alternatives):
        decision = "NO-GO"  # a static model is as accurate and cheaper: early exit does not pay
    full_model = {name: e.full_model for name, e in estimates.items()}
    speedups = {name: estimates[name].value for name in (["macs"] if "macs" in estimates else []) + sorted(evidence)}

    unit = str((doc.get("budget") or {}).get("unit") or "macs")
    other_kwargs: dict[str, Any] = {"device": None, "batch_size": None}
    if unit.startswith(MS_PREFIX):
        unit_key = LatencyKey.from_column(unit)
        other_kwargs = {"device": unit_key.device, "batch_size": unit_key.batch_size}
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
        s_conf, s_correct = choice.confidence(fitted_temperatures=True)
        scaled = tuple(reliability_bins(s_conf[:, k], s_correct[:, k]) for k in range(run.k))
    conf, correct = choice.confidence()
    bins = tuple(reliability_bins(conf[:, k], correct[:, k]) for k in range(run.k))
    return ReportData(
        run=run,
        frontier=frontier,
        thresholds=doc,
        budget=choice.budget,
        budget_reason=choice.budget_reason,
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
        title=choice.title,
        date=report_date(run),
        command=command,
        full_model=full_model,
        accuracy=acc,
        accuracy_interval=interval,
        latency=evidence,
        notes=tuple(notes),
        verify=verify_result,
        verify_label=verify_label,
        thresholds_path=choice.thresholds_path,
        fit_costs=fit_costs,
        methods=methods,
        alternatives=alternatives,
    )


def _short_model(run: Run) -> str:
    model = run.provenance.model or "(unnamed model)"
    return model if len(model) <= 60 else "…" + model[-59:]


def _held_cost(data: ReportData, name: str) -> float | None:
    """Expected cost on the judged rows: MACs per sample, or a latency key's early-exit ms per batch."""
    if name in data.latency:
        return data.latency[name].early_exit_ms
    if not data.outcome.n:
        return None
    units = _unit_costs(data.run, name, data.outcome.exits)
    return None if units is None or not len(units) else float(np.mean(units))


def _op_label(data: ReportData | _OperatingChoice) -> str:
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


def _short_budget(data: ReportData | _OperatingChoice) -> str:
    """The budget as asked, or a chosen one rounded for people."""
    from dyncal.calibrate.budget import format_budget

    frac = (data.thresholds.get("budget") or {}).get("fraction")
    if frac is None or data.budget_reason.startswith("asked"):
        return data.budget
    return format_budget(float(frac), "fraction")


def _budget_label(data: ReportData | _OperatingChoice) -> str:
    """The budget for people: short form and share of the last exit's cost."""
    b = data.thresholds.get("budget") or {}
    frac = b.get("fraction")
    unit = str(b.get("unit") or "macs")
    what = "MACs" if unit == "macs" else f"latency on {unit.removeprefix(MS_PREFIX)}"
    if frac is None:
        return data.budget
    return f"{_short_budget(data)} ({_pct(float(frac), 1)} of the last exit's {what})"


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
