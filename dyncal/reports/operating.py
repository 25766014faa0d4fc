"""Choosing the report's operating point: what is asked (:class:`ReportOptions`), the budget, the thresholds.

:func:`choose_operating_point` scores the run once, draws the frontier, chooses a budget when
none was asked (on the fitting half, so the held-out half still judges), solves or reads the
thresholds and applies them to the held-out rows: an
:class:`~dyncal.reports.choice.OperatingChoice`. numpy only; nothing is drawn here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dyncal.artifacts.costs import LatencyKey, device_name
from dyncal.choices import DEFAULT_METHOD, Method
from dyncal.constraints import check
from dyncal.errors import DyncalError, param
from dyncal.reports.choice import DEFAULT_MAX_DROP, BudgetSource, OperatingChoice
from dyncal.reports.decision import ExitOutcome, Requirements
from dyncal.reports.evidence import _full_model_cost, _unit_costs, batch_size_of, latency_keywords
from dyncal.reports.rivals import held_out_rivals, rival_warnings
from dyncal.reports.text import pct, pts

if TYPE_CHECKING:
    import pandas as pd

    from dyncal.artifacts.run import Run
    from dyncal.artifacts.thresholds import ThresholdsDocument
    from dyncal.artifacts.verify import VerifyResult
    from dyncal.calibrate.prepare import PreparedRun
    from dyncal.reports.tail import TailBound

__all__ = ["ReportOptions", "choose_operating_point"]

_Point = tuple[dict[str, Any], str, str, BudgetSource, str]
"""A solved or read operating point: document, decision fingerprint, budget, where the budget came from, why."""


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
        max_p99_ms: GO needs the p99 latency of a request at most this many ms.
        max_latency_ms: The same for any percentile: ``p99=2.5``, ``p90=1`` (:mod:`dyncal.reports.tail`).
        max_p99_ratio: GO needs the p99 latency at most this factor of the plain deployment's.
        max_latency_ratio: The same for any percentile: ``p99=1.2``.
        rate: A request rate (``200/s``): the report says what early exit saves at it
            (:mod:`dyncal.analysis.capacity`; needs verify's timed requests).
        robustness: Runs of the same model on other data (``collect --perturb``) to judge the
            operating point's thresholds on (the robustness page).

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
    max_p99_ms: float | None = None
    max_latency_ms: Sequence[str] = ()
    max_p99_ratio: float | None = None
    max_latency_ratio: Sequence[str] = ()
    rate: str | None = None
    robustness: Sequence[str | os.PathLike[str]] = ()

    def __post_init__(self) -> None:
        """Check every value that needs no run; turn the method's name into a member."""
        _check_tail_and_rate(self)
        if self.method is not None:
            object.__setattr__(self, "method", Method.parse(self.method, "method"))
        Requirements(self.min_accuracy, self.max_drop, self.min_speedup).validate()
        check("temperature", self.temperature)
        for name in ("batch_size", "holdout", "seed"):
            if getattr(self, name) is not None:
                check(name, getattr(self, name))
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
            asked = {
                "method": self.method,
                "temperature": self.temperature or None,
                "holdout": self.holdout,
                "seed": self.seed,
            }
            given = [name for name, value in asked.items() if value is not None]
            if given:
                raise DyncalError(
                    f"`thresholds` fixes the method, temperatures and held-out split; leave out "
                    f"{', '.join(map(param, given))}"
                )

    @property
    def tail_bounds(self) -> tuple[TailBound, ...]:
        """The tail criteria asked (:func:`dyncal.reports.tail.tail_bounds`), one per percentile and form."""
        from dyncal.reports.tail import tail_bounds

        return tail_bounds(
            max_p99_ms=self.max_p99_ms,
            max_latency_ms=self.max_latency_ms,
            max_p99_ratio=self.max_p99_ratio,
            max_latency_ratio=self.max_latency_ratio,
        )


def _check_tail_and_rate(options: ReportOptions) -> None:
    """The list options as tuples (one path or text: a 1-tuple); the tail bounds and the rate read once.

    A bad bound or rate is refused here, before any work.
    """
    from dyncal.analysis.capacity import parse_rate

    for name in ("compare", "robustness", "max_latency_ms", "max_latency_ratio"):
        value = getattr(options, name)
        object.__setattr__(options, name, (value,) if isinstance(value, (str, os.PathLike)) else tuple(value or ()))
    _ = options.tail_bounds
    if options.rate is not None:
        parse_rate(options.rate)


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
    one is only slower), or when none does the cheapest of those that miss them by least;
    else the one with the smallest shortfall. Without criteria: the
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
                    f"chosen as the {which} budget whose thresholds meet every criterion on the fitting half "
                    "with a margin for sampling noise; "
                    + ("judged on the held-out half" if fit.n_held else "nothing held out: judged on the same samples")
                )
            misses.append((float(frac), short))
        if not misses:
            return "1x", "no budget on the frontier to choose from; the full budget is shown"
        frac, short = _closest_budget(misses, req)
        how = "; ".join(_shortfall_text(name, v) for name, v in short.items() if v > 0)
        return f"{frac!r}x", (
            "no budget meets every criterion on the fitting half (with the margin for sampling "
            f"noise); shown: the budget that comes closest, short by {how}"
        )
    last_fit = float(fit.correct[:, -1].mean())
    ok = rows[rows["fitted_accuracy"] >= last_fit - DEFAULT_MAX_DROP - 1e-12]
    frac = float(ok["budget_fraction"].iloc[0]) if len(ok) else 1.0
    return f"{frac!r}x", (
        f"no --budget given: the cheapest budget whose fitted accuracy is within {pts(DEFAULT_MAX_DROP)} "
        "of the last exit's"
    )


def _closest_budget(misses: list[tuple[float, dict[str, float]]], req: Requirements) -> tuple[float, dict[str, float]]:
    """The budget whose shortfalls are smallest (see :func:`_choose_budget`)."""
    if req.min_speedup is not None:
        # the accuracy criteria first (a budget that misses them by less), then the cheapest
        acc_names = ("accuracy", "accuracy_drop")
        return min(misses, key=lambda m: (round(sum(m[1].get(n, 0.0) for n in acc_names), 9), m[0]))
    # only accuracy criteria: the fewest missed, then the smallest shortfall in points, then the cheapest
    return min(misses, key=lambda m: (sum(v > 0 for v in m[1].values()), sum(m[1].values()), m[0]))


def _shortfall_text(name: str, v: float) -> str:
    if name == "speedup":
        return f"{v:.2f}× of speed-up"
    return f"{pts(v)} of {'accuracy' if name == 'accuracy' else 'accuracy drop'}"


def _outcome(prep: PreparedRun, thresholds: Sequence[float | None]) -> ExitOutcome:
    """Apply the operating point to the held-out rows (all rows when nothing was held out)."""
    from dyncal.artifacts.thresholds import thresholds_from_json
    from dyncal.calibrate.policy import assign_exits

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
    from dyncal.artifacts.thresholds import thresholds_from_json
    from dyncal.calibrate.policy import assign_exits, expected_cost

    exits = assign_exits(prep.scores[prep.fit_idx], thresholds_from_json(thresholds))
    if not len(exits):
        return {}
    return {(u[3:] if u.startswith("ms:") else u): expected_cost(exits, c) for u, c in prep.units.items()}


def _prepared_for(run: Run, th: ThresholdsDocument, path: str) -> PreparedRun:
    """The run scored and split as the thresholds document records (its score, temperatures and split)."""
    from dyncal.calibrate.prepare import SolveCache, prepare_run
    from dyncal.calibrate.scores import exit_scores

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


def _latency_key(run: Run, device: str | None, batch_size: int | None, req: Requirements) -> str | None:
    """The latency key the speed-up is judged on: asked by ``device``/``batch_size``, else implied; None: MACs."""
    assert run.costs is not None
    have = sorted(run.costs.latency)
    if device is not None or batch_size is not None:
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
    if run.costs.macs is None:
        # no MACs: latency it is; the one profiled key, never a guess among several
        if len(have) > 1:
            raise DyncalError(
                f"run '{run.path}' has no MAC counts and latency for several devices or batch "
                f"sizes ({', '.join(have)}); choose one with `device` and `batch_size`"
            )
        return have[0]
    if req.min_speedup is not None and have:
        # latency was profiled: a speed-up is judged in time, not in MACs
        if len(have) > 1:
            raise DyncalError(
                f"`min_speedup`: run '{run.path}' has latency for {', '.join(have)}; choose one with "
                f"`device` and `batch_size` (e.g. `device` {have[0].split('/b')[0]} `batch_size` "
                f"{have[0].split('/b')[1]})"
            )
        return have[0]
    return None


def _scored(
    run: Run, th: ThresholdsDocument | None, options: ReportOptions, key: LatencyKey | None, *, frontier: bool
) -> tuple[PreparedRun, pd.DataFrame | None]:
    """The run scored once (as a thresholds file records, or as asked), and its frontier when ``frontier``.

    The frontier, the solve and the held-out simulation share the scores.
    """
    from dyncal.calibrate.prepare import prepare_run

    if th is not None:
        prep = _prepared_for(run, th, str(options.thresholds))
    else:
        holdout = 0.5 if options.holdout is None else options.holdout
        prep = prepare_run(run, temperature=options.temperature, holdout=holdout, seed=options.seed or 0)
    if not frontier:
        return prep, None
    from dyncal.calibrate.frontier import compute_frontier

    return prep, compute_frontier(prep, **latency_keywords(key))


def _read_point(th: ThresholdsDocument, path: str) -> _Point:
    """The operating point a thresholds file holds."""
    asked = (th.budget or {}).get("asked")
    reason = f"the thresholds in {path}" + (f" (solved at budget {asked})" if asked else "")
    return th.to_dict(), th.decision_fingerprint, str(asked) if asked else "as solved", BudgetSource.THRESHOLDS, reason


def _solved_point(
    run: Run,
    prep: PreparedRun,
    table: pd.DataFrame | None,
    options: ReportOptions,
    req: Requirements,
    speedup_cost: str,
    latency: LatencyKey | None,
) -> _Point:
    """The thresholds solved at the asked budget, or at one chosen on the fitting half (from ``table``)."""
    from dyncal.calibrate.budget import parse_budget
    from dyncal.calibrate.solvers import solve_run

    method = str(options.method or DEFAULT_METHOD)  # the plain name, as the frontier's column and the documents hold it
    budget, source, reason = options.budget, BudgetSource.ASKED, "asked with --budget"
    if budget is None:
        assert table is not None
        fit = _FitHalf(prep.scores[prep.fit_idx], prep.correct[prep.fit_idx], len(prep.holdout_idx))
        budget, reason = _choose_budget(
            table,
            method,
            req,
            fit,
            lambda exits: _unit_costs(run, speedup_cost, exits),
            _full_model_cost(run, speedup_cost),
            batch_size_of(speedup_cost),
        )
        source = BudgetSource.CHOSEN
    # The latency column matters to solve only for an ms budget; for the speed-up
    # criterion the report uses it itself.
    at = latency if parse_budget(budget).kind == "ms" else None
    result = solve_run(prep, budget, method=method, **latency_keywords(at))
    return result.to_dict(), result.decision_fingerprint, budget, source, reason


def choose_operating_point(
    run_path: str | os.PathLike[str],
    options: ReportOptions,
    *,
    frontier: bool = True,
) -> OperatingChoice:
    """Score the run, choose the operating point and apply it to the held-out rows.

    Args:
        run_path: The run.
        options: What is asked (its values were checked when it was built).
        frontier: Compute the frontier table (it is computed anyway when a budget must be
            chosen from it).

    Returns:
        The operating point, how it was reached and how it does on the judged rows.

    Raises:
        DyncalError: A run without costs, thresholds of another run, a latency key that was
            not profiled or is ambiguous, or an unreadable thresholds or verify file.

    Example:
        >>> choice = choose_operating_point("run", ReportOptions(budget="0.5x"))  # doctest: +SKIP
        >>> choice.budget_source  # doctest: +SKIP
        <BudgetSource.ASKED: 'asked'>
    """
    from dyncal.artifacts.run import load_run
    from dyncal.stats import mean_bootstrap_ci

    req = Requirements(options.min_accuracy, options.max_drop, options.min_speedup)
    run = load_run(run_path)
    if run.costs is None or (run.costs.macs is None and not run.costs.latency):
        raise DyncalError(
            f"run '{run.path}' has no costs, so there is no speed to trade for accuracy; run "
            f"'dyncal profile {run.path}' (or re-import it with 'dyncal import FILE --macs ...') first"
        )
    th_doc = None
    if options.thresholds is not None:
        from dyncal.artifacts.thresholds import check_thresholds_for_run, read_thresholds

        th_doc = read_thresholds(options.thresholds)
        check_thresholds_for_run(th_doc, run)
    latency = _latency_key(run, options.device, options.batch_size, req)
    speedup_cost = latency if latency is not None else "macs"
    verify_result, verify_label = (None, "") if options.verify is None else _load_verify(options.verify)
    key = None if latency is None else LatencyKey.parse(latency)
    prep, table = _scored(run, th_doc, options, key, frontier=frontier or (th_doc is None and options.budget is None))
    if th_doc is not None:
        doc, fingerprint, budget, source, reason = _read_point(th_doc, str(options.thresholds))
    else:
        doc, fingerprint, budget, source, reason = _solved_point(run, prep, table, options, req, speedup_cost, key)
    outcome = _outcome(prep, doc["thresholds"])
    acc = float(outcome.correct.mean())
    interval = mean_bootstrap_ci(outcome.correct, seed=prep.seed) if outcome.held_out else None
    notes: list[str] = []
    if th_doc is not None and th_doc.holdout_accuracy is not None and abs(th_doc.holdout_accuracy - acc) > 1e-12:
        notes.append(
            f"the held-out accuracy recorded in {options.thresholds} ({pct(th_doc.holdout_accuracy)}) differs from "
            f"the {pct(acc)} these thresholds get on its held-out part (edited thresholds?); "
            "the report shows the latter"
        )
    guard = doc.get("guard") or {}
    if guard.get("by"):
        notes.append(f"the thresholds are {guard['by']}, not {guard['replaced']}'s own answer: {guard['reason']}")
    notes += rival_warnings(held_out_rivals(prep, doc, outcome), acc)
    return OperatingChoice(
        run=run,
        prep=prep,
        frontier=table,
        thresholds=doc,
        fingerprint=fingerprint,
        budget=budget,
        budget_source=source,
        budget_reason=reason,
        requirements=req,
        outcome=outcome,
        accuracy=acc,
        accuracy_interval=interval,
        fit_costs=_fit_costs(prep, doc["thresholds"]),
        speedup_cost=speedup_cost,
        latency_key=latency,
        thresholds_path=None if options.thresholds is None else str(options.thresholds),
        title=options.title or f"Early-exit report: {_short_model(run)}",
        notes=tuple(notes),
        verify=verify_result,
        verify_label=verify_label,
    )


def _short_model(run: Run) -> str:
    model = run.provenance.model or "(unnamed model)"
    return model if len(model) <= 60 else "…" + model[-59:]
