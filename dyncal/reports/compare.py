"""Other models judged against the operating point (``dyncal report --compare``).

An alternative is another run measured on the same data: a static model (K = 1, one point)
or another early-exit model (K >= 2, a curve). Each is judged against the operating point
on the rows the operating point is judged on:

* **Paired** when the alternative holds every one of those samples (same dataset indices,
  same labels): its correctness on exactly those samples, and a paired bootstrap of the
  per-sample difference in correctness. An early-exit alternative is fitted on the rows
  that are not among them, so none of its thresholds saw them.
* **Unpaired** otherwise (its rows do not cover them, but no shared sample has another
  label): its accuracy on its own samples (an early-exit alternative on its own held-out
  split) and independent bootstraps of both accuracies.
* **Refused** when the data clearly differ: another number of classes, or a dataset index
  both runs hold with two different labels.

Every alternative is compared on one cost: the latency key the report's speed-up is judged
on (its device and batch size) when all of them were profiled there, else MACs when all
have them, else a latency key they all share (latency counts only when profiled on the same
hardware). An alternative is *cheaper* when it costs less on that cost, the one the
criteria are judged on; the other costs it shares with the report's run (MACs, other batch
sizes) are stated as context (``cheaper_on``) and decide nothing: a model that is cheaper
per batch of 8 on the judged CPU is cheaper for that deployment, whatever its MACs or its
batch-1 time. It *dominates* when it is cheaper and at least as accurate, judged like a
criterion: the whole 95% interval of the accuracy difference is at or above zero (the point
estimate when nothing was held out). A static model that dominates makes the report NO-GO
for early exit.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dyncal.artifacts.costs import LatencyKey
from dyncal.choices import DEFAULT_METHOD
from dyncal.errors import DyncalError
from dyncal.reports.evidence import _per_exit_macs, full_model_ms, latency_keywords, mean_unit_cost
from dyncal.stats import bootstrap_interval, mean_bootstrap_ci

if TYPE_CHECKING:
    from dyncal.artifacts.run import Run
    from dyncal.calibrate.prepare import PreparedRun
    from dyncal.reports.choice import OperatingChoice
    from dyncal.reports.evidence import LatencyEvidence

__all__ = ["Alternative", "compare_alternatives", "MAX_ALTERNATIVES"]

MAX_ALTERNATIVES = 6
"""Most runs one report compares with (the decision page has room for this many rows)."""
_UNPAIRED_SEED = 20261130
_N_UNPAIRED = 2000

Interval = tuple[float, float]


@dataclass(frozen=True)
class Alternative:
    """Another model, judged against the operating point.

    Attributes:
        name: Short name for people (the run's folder name).
        path: The run directory.
        k: Its number of exits (1: a static model).
        paired: Whether it was judged on the very samples the operating point was.
        n: Samples its accuracy is measured on.
        accuracy: Its accuracy: a static model's, or an early-exit model's with thresholds
            solved at the operating point's cost.
        ci: 95% interval of ``accuracy``.
        macs: MACs per sample (expected, for an early-exit model), or None.
        latency_ms: Milliseconds per batch per latency key profiled on the report's hardware
            (a static model's full forward; an early exit's predicted mean).
        difference: ``accuracy`` minus the operating point's accuracy (same rows when paired).
        difference_ci: Its 95% interval (paired or unpaired bootstrap), None when nothing
            was held out.
        cost: The cost compared (``"macs"`` or a latency key).
        cost_value: Its cost in that unit.
        operating_cost: The operating point's cost in that unit.
        cheaper: Whether it costs less than the operating point on ``cost`` (the judged one).
        cost_to_reach: Its cost at the operating point's accuracy (a static model's own
            cost when it is at least as accurate; the cheapest point of an early-exit
            model's curve that is), or None when it does not reach it.
        at_operating_cost: Whether it runs at the operating point's cost (False: an
            early-exit model whose cheapest exit already costs more).
        note: Why the comparison is unpaired or what was left out, for people ("" if nothing).
        curve: For drawing: per frontier column (``"expected_macs"``, ``"ms:<key>"``) the
            x values, and ``"accuracy"`` the y values (one point for a static model).
        cheaper_on: Context: per cost it shares with the report's run (MACs, latency keys
            on the same hardware), whether it costs less there; only ``cost`` decides.

    Example:
        >>> a = Alternative("small", "runs/small", 1, True, 100, 0.9, (0.85, 0.95), 1e6, {}, 0.01,
        ...                 (0.0, 0.02), "macs", 1e6, 2e6, True, 1e6)
        >>> a.dominates, a.to_dict()["name"]
        (True, 'small')
    """

    name: str
    path: str
    k: int
    paired: bool
    n: int
    accuracy: float
    ci: Interval | None
    macs: float | None
    latency_ms: dict[str, float]
    difference: float
    difference_ci: Interval | None
    cost: str
    cost_value: float
    operating_cost: float
    cheaper: bool
    cost_to_reach: float | None
    at_operating_cost: bool = True
    note: str = ""
    curve: dict[str, tuple[float, ...]] = field(default_factory=dict)
    cheaper_on: dict[str, bool] = field(default_factory=dict)

    @property
    def static(self) -> bool:
        """A static model (one exit)."""
        return self.k == 1

    @property
    def as_accurate(self) -> bool:
        """At least as accurate as the operating point, its whole 95% interval at or above zero."""
        low = self.difference if self.difference_ci is None else self.difference_ci[0]
        return low >= -1e-12

    @property
    def less_accurate(self) -> bool:
        """Less accurate than the operating point, its whole 95% interval below zero."""
        high = self.difference if self.difference_ci is None else self.difference_ci[1]
        return high < -1e-12

    @property
    def dominates(self) -> bool:
        """Cheaper and at least as accurate as the operating point."""
        return self.cheaper and self.as_accurate and self.at_operating_cost

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (an entry of the report's ``alternatives``)."""
        return {
            "name": self.name,
            "path": self.path,
            "kind": "static" if self.static else "early exit",
            "k": self.k,
            "paired": self.paired,
            "n": self.n,
            "accuracy": self.accuracy,
            "ci": None if self.ci is None else list(self.ci),
            "macs": self.macs,
            "latency_ms": dict(self.latency_ms),
            "accuracy_difference": self.difference,
            "accuracy_difference_ci": None if self.difference_ci is None else list(self.difference_ci),
            "cost": self.cost,
            "cost_value": self.cost_value,
            "operating_point_cost": self.operating_cost,
            "cheaper": self.cheaper,
            "cheaper_on": dict(self.cheaper_on),
            "cost_to_reach_accuracy": self.cost_to_reach,
            "at_operating_point_cost": self.at_operating_cost,
            "dominates": self.dominates,
            "note": self.note,
        }


@dataclass(frozen=True)
class _Rows:
    """Which of an alternative's rows stand for the operating point's judged rows."""

    paired: bool
    held: np.ndarray  # the alternative's rows to judge on
    fit: np.ndarray  # the alternative's rows an early-exit alternative may be fitted on
    note: str


def _names(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Folder names, made unique with their parent where two coincide."""
    names = [Path(p).name or str(p) for p in paths]
    return [n if names.count(n) == 1 else f"{Path(p).parent.name}/{n}" for n, p in zip(names, paths, strict=True)]


def _match_rows(run: Run, alt: Run, judged: np.ndarray) -> _Rows:
    """Map the operating point's judged rows onto ``alt``'s rows (see the module docstring)."""
    if alt.c != run.c:
        raise DyncalError(
            f"`compare`: run '{alt.path}' has C={alt.c} classes and run '{run.path}' C={run.c}: they were not "
            "measured on the same data; compare runs of the same data set"
        )
    idx_a = np.asarray(alt.indices, dtype=np.int64)
    lab_a = np.asarray(alt.labels, dtype=np.int64)
    order = np.argsort(idx_a, kind="stable")
    sorted_idx = idx_a[order]
    idx_r = np.asarray(run.indices, dtype=np.int64)
    lab_r = np.asarray(run.labels, dtype=np.int64)
    pos = np.searchsorted(sorted_idx, idx_r)
    found = pos < len(sorted_idx)
    found[found] = sorted_idx[pos[found]] == idx_r[found]
    rows_a = np.where(found, order[np.minimum(pos, len(order) - 1)], -1)
    clash = found & (lab_a[np.maximum(rows_a, 0)] != lab_r)
    if clash.any():
        i = int(np.flatnonzero(clash)[0])
        raise DyncalError(
            f"`compare`: run '{alt.path}' labels {int(clash.sum())} of the {int(found.sum())} samples both runs hold "
            f"differently from run '{run.path}' (dataset index {int(idx_r[i])}: label {int(lab_r[i])} there, "
            f"{int(lab_a[rows_a[i]])} here): they were not measured on the same data; compare runs of the same data set"
        )
    if found[judged].all():
        held = rows_a[judged]
        fit = np.setdiff1d(np.arange(alt.n), held)
        return _Rows(True, held, fit, "")
    covered = int(found[judged].sum())
    note = (
        f"its {alt.n:,} samples hold {covered:,} of the {len(judged):,} judged here, so the comparison is "
        "unpaired: its accuracy is on its own samples"
    )
    return _Rows(False, np.arange(alt.n), np.arange(alt.n), note)


def _difference(alt_ok: np.ndarray, op_ok: np.ndarray, paired: bool, held_out: bool) -> tuple[float, Interval | None]:
    """Accuracy of the alternative minus the operating point's, with its 95% interval (None: nothing held out).

    Paired: the mean per-sample difference in correctness, with a paired bootstrap. Unpaired:
    two accuracies on different samples, with independent bootstraps of each.
    """
    if paired:
        diff = alt_ok.astype(float) - op_ok.astype(float)
        value = float(diff.mean())
        ci = bootstrap_interval(len(diff), lambda idx: diff[idx].mean(axis=1))
    else:
        rng = np.random.default_rng(_UNPAIRED_SEED)
        a, b = float(np.mean(alt_ok)), float(np.mean(op_ok))
        alt_draws = rng.binomial(len(alt_ok), a, _N_UNPAIRED) / len(alt_ok)
        op_draws = rng.binomial(len(op_ok), b, _N_UNPAIRED) / len(op_ok)
        lo, hi = np.quantile(alt_draws - op_draws, [0.025, 0.975])
        value, ci = a - b, (float(lo), float(hi))
    return value, ci if held_out else None


def _same_hardware(run: Run, alt: Run, key: str) -> bool:
    """Whether ``key`` was profiled for both runs on the same hardware and threads (else its ms do not compare)."""
    mine = None if run.costs is None else run.costs.latency.get(key)
    theirs = None if alt.costs is None else alt.costs.latency.get(key)
    # the same hardware and thread count: milliseconds on 1 thread and on 16 do not compare
    return (
        mine is not None and theirs is not None and (mine.hardware, mine.threads) == (theirs.hardware, theirs.threads)
    )


def _shared_costs(run: Run, alt: Run) -> list[str]:
    """Every cost two runs can be compared on: MACs, and latency keys profiled on the same hardware."""
    out = ["macs"] if _per_exit_macs(run) is not None and _per_exit_macs(alt) is not None else []
    keys = run.costs.latency if run.costs is not None else {}
    return out + sorted(k for k in keys if _same_hardware(run, alt, k))


def _comparison_cost(choice: OperatingChoice, alts: Sequence[Run]) -> str:
    """The one cost every alternative is compared on: the report's own, else MACs, else a shared latency key."""
    run = choice.run
    shared = [set(_shared_costs(run, a)) for a in alts]
    common = set.intersection(*shared) if shared else set()
    for cost in (choice.speedup_cost, "macs", *sorted(common)):
        if cost in common:
            return cost
    lacking = [str(a.path) for a, s in zip(alts, shared, strict=True) if not s] or [str(a.path) for a in alts]
    have = "MACs" if _per_exit_macs(run) is not None else "latency"
    raise DyncalError(
        f"`compare`: run(s) {', '.join(lacking)} share no cost with run '{run.path}' and the other runs ({have}, "
        f"or latency profiled on the same hardware and batch size); profile them: dyncal profile {lacking[0]}"
    )


def _operating_costs(choice: OperatingChoice, latency: Mapping[str, LatencyEvidence]) -> dict[str, float]:
    """The operating point's cost on its judged rows: MACs per sample, ms per batch per key."""
    out = {k: e.early_exit_ms for k, e in latency.items()}
    macs = mean_unit_cost(choice.run, "macs", choice.outcome.exits)
    return out if macs is None else out | {"macs": macs}


@dataclass(frozen=True)
class _Judging:
    """One alternative to judge against the operating point: its run, its matched rows and the cost compared."""

    choice: OperatingChoice
    alt: Run
    name: str
    rows: _Rows
    op_costs: Mapping[str, float]
    main: str

    def columns(self, costs: Mapping[str, float]) -> dict[str, str]:
        """The frontier column each of ``costs`` is drawn against: MACs, and latency timed on the report's hardware."""
        drawn = [c for c in costs if c == "macs" or _same_hardware(self.choice.run, self.alt, c)]
        return {c: "expected_macs" if c == "macs" else LatencyKey.parse(c).column for c in drawn}

    def judged(
        self,
        ok: np.ndarray,
        ci: Interval | None,
        costs: Mapping[str, float],
        latency: dict[str, float],
        curve: dict[str, tuple[float, ...]],
        reach: float | None,
        at_cost: bool = True,
    ) -> Alternative:
        """The alternative, from ``ok`` (its correctness on the judged rows) and its costs there."""
        choice, alt, main = self.choice, self.alt, self.main
        diff, diff_ci = _difference(ok, choice.outcome.correct, self.rows.paired, choice.outcome.held_out)
        return Alternative(
            name=self.name,
            path=str(alt.path),
            k=alt.k,
            paired=self.rows.paired,
            n=len(ok),
            accuracy=float(ok.mean()),
            ci=ci,
            macs=costs.get("macs"),
            latency_ms=latency,
            difference=diff,
            difference_ci=diff_ci,
            cost=main,
            cost_value=costs.get(main, math.nan),
            operating_cost=self.op_costs[main],
            cheaper=costs.get(main, math.inf) < self.op_costs[main],
            cost_to_reach=reach,
            at_operating_cost=at_cost,
            note=self.rows.note,
            curve=curve,
            cheaper_on={
                c: costs.get(c, math.inf) < self.op_costs[c]
                for c in _shared_costs(choice.run, alt)
                if c in self.op_costs
            },
        )


def _static(j: _Judging) -> Alternative:
    """A static model: its one exit on the matched rows."""
    choice, alt, rows, main = j.choice, j.alt, j.rows, j.main
    logits = np.asarray(alt.logits[rows.held, 0])
    ok = logits.argmax(axis=1) == np.asarray(alt.labels)[rows.held]
    macs = _per_exit_macs(alt)
    assert alt.costs is not None  # it shares a cost with the report's run (_comparison_cost)
    latency = {k: full_model_ms(alt.costs, None, k)[0] for k in sorted(alt.costs.latency)}
    costs = ({"macs": macs[0]} if macs is not None else {}) | latency
    acc = float(ok.mean())
    point = {"accuracy": acc} | {col: costs[c] for c, col in j.columns(costs).items()}
    reach = costs[main] if acc >= choice.accuracy - 1e-12 else None
    ci = mean_bootstrap_ci(ok, seed=choice.prep.seed) if len(ok) else None
    return j.judged(ok, ci, costs, latency, {col: (v,) for col, v in point.items()}, reach)


def _prepared(choice: OperatingChoice, alt: Run, rows: _Rows) -> PreparedRun:
    """The early-exit alternative scored like the operating point; fitted on rows it is not judged on."""
    from dyncal.calibrate.prepare import SolveCache, prepare_run

    prep = choice.prep
    temperature = any(abs(float(t) - 1.0) > 1e-9 for t in prep.temperatures)
    if not rows.paired:
        return prepare_run(alt, score=prep.score, temperature=temperature, holdout=prep.holdout, seed=prep.seed)
    if not len(rows.fit):
        raise DyncalError(
            f"`compare`: early-exit run '{alt.path}' holds only the {len(rows.held):,} samples the operating point is "
            "judged on, none to fit its thresholds on; collect it on the whole data set"
        )
    base = prepare_run(alt, score=prep.score, temperature=temperature, holdout=0.0, temperature_idx=rows.fit)
    return dataclasses.replace(base, fit_idx=rows.fit, holdout_idx=rows.held, holdout=prep.holdout, cache=SolveCache())


def _early_exit(j: _Judging) -> Alternative:
    """An early-exit model: thresholds solved at the operating point's cost, and its whole curve."""
    from dyncal.artifacts.thresholds import thresholds_from_json
    from dyncal.calibrate.frontier import compute_frontier
    from dyncal.calibrate.policy import assign_exits
    from dyncal.calibrate.solvers import solve_run
    from dyncal.errors import BudgetError

    choice, alt, main, method = j.choice, j.alt, j.main, str(DEFAULT_METHOD)
    prep = _prepared(choice, alt, j.rows)
    held = prep.holdout_idx if len(prep.holdout_idx) else prep.fit_idx
    # the budget as the operating point's is met: its expected cost on the fitting half
    fit_cost = choice.fit_costs.get(main)
    budget = f"{fit_cost!r}MAC" if main == "macs" else f"{fit_cost!r}ms"
    at = latency_keywords(None if main == "macs" else LatencyKey.parse(main))
    at_cost = True
    try:
        doc = solve_run(prep, budget, method=method, **at).to_dict()
        exits = assign_exits(prep.scores[held], thresholds_from_json(doc["thresholds"]))
    except BudgetError:
        at_cost = False  # even its first exit costs more: judged there, all samples at exit 1
        exits = np.zeros(len(held), dtype=np.int64)
    ok = prep.correct[held][np.arange(len(held)), exits]
    macs = mean_unit_cost(alt, "macs", exits)
    keys = sorted(alt.costs.latency if alt.costs is not None else {})
    latency = {key: ms for key in keys if (ms := mean_unit_cost(alt, key, exits)) is not None}
    costs = ({"macs": macs} if macs is not None else {}) | latency
    frontier = compute_frontier(prep)
    curve_rows = frontier[frontier["method"].astype(str) == method].sort_values("budget_fraction")
    acc_col = "holdout_accuracy" if curve_rows["holdout_accuracy"].notna().any() else "fitted_accuracy"
    drawn = ["accuracy"] + [col for col in j.columns(costs).values() if col in curve_rows.columns]
    curve = {col: tuple(float(v) for v in curve_rows[acc_col if col == "accuracy" else col]) for col in drawn}
    reach = None  # in ms none: the curve's ms are per sample on the fitting half, not per batch
    if main == "macs" and "expected_macs" in curve_rows.columns:
        good = curve_rows[curve_rows[acc_col] >= choice.accuracy - 1e-12]
        reach = float(good["expected_macs"].min()) if len(good) else None
    ci = mean_bootstrap_ci(ok, seed=prep.seed) if len(prep.holdout_idx) else None
    return j.judged(ok, ci, costs, latency, curve, reach, at_cost)


def compare_alternatives(
    choice: OperatingChoice,
    latency: Mapping[str, LatencyEvidence],
    paths: Sequence[str | os.PathLike[str]],
) -> tuple[Alternative, ...]:
    """Judge other runs against the operating point (see the module docstring).

    Args:
        choice: The operating point and the run it was chosen on.
        latency: The operating point's latency evidence per key (its ms per batch).
        paths: Run directories of the alternatives.

    Returns:
        One :class:`Alternative` per path, in order.

    Raises:
        DyncalError: Too many alternatives, a missing or unreadable run, a run of other
            data (another number of classes, or other labels for the same samples), or
            one with no cost comparable with the report's.

    Example:
        >>> data = prepare_report("run", compare=["static_run"])  # doctest: +SKIP
        >>> [(a.name, a.paired, a.dominates) for a in data.alternatives]  # doctest: +SKIP
        [('static_run', True, False)]
    """
    from dyncal.artifacts.run import load_run
    from dyncal.evaluate import refuse_other_data

    if len(paths) > MAX_ALTERNATIVES:
        raise DyncalError(
            f"`compare` takes at most {MAX_ALTERNATIVES} runs (the decision page has room for that many), "
            f"got {len(paths)}; make separate reports"
        )
    run = choice.run
    o = choice.outcome
    judged = choice.prep.holdout_idx if o.held_out else np.arange(run.n)
    op_costs = _operating_costs(choice, latency)
    alts = [load_run(p) for p in paths]
    seen: dict[str, str] = {run.fingerprint: str(run.path)}
    for p, alt in zip(paths, alts, strict=True):
        if alt.fingerprint in seen:
            raise DyncalError(
                f"`compare` '{p}' holds the same rows as '{seen[alt.fingerprint]}' (the same run, or a copy); "
                "compare against other models"
            )
        seen[alt.fingerprint] = str(p)
        refuse_other_data(run, alt)  # the same model on other data is `dyncal evaluate`'s question
    matched = [_match_rows(run, alt, np.asarray(judged)) for alt in alts]
    cost = _comparison_cost(choice, alts)
    out = []
    for name, alt, rows in zip(_names(paths), alts, matched, strict=True):
        judge = _static if alt.k == 1 else _early_exit
        out.append(judge(_Judging(choice, alt, name, rows, op_costs, cost)))
    return tuple(out)
