"""The monitor's judgement: quality bound, cost against the budget, latency, drift, and PROCEED / HOLD / ROLLBACK.

:mod:`dyncal.monitor` states the rule.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as sst

from dyncal.artifacts.fields import JsonFields
from dyncal.constraints import check
from dyncal.errors import DyncalError, param
from dyncal.monitor.bounds import (
    atc_threshold,
    clopper_pearson,
    population_stability_index,
    shadow_requests_needed,
)
from dyncal.monitor.reference import CalibrationReference
from dyncal.telemetry import PackageIdentity, TelemetryData

__all__ = ["PROCEED", "HOLD", "ROLLBACK", "ATC_CAVEAT", "MonitorOptions", "MonitorReport", "decide", "monitor"]

PROCEED, HOLD, ROLLBACK = "PROCEED", "HOLD", "ROLLBACK"
ATC_CAVEAT = (
    "average thresholded confidence (Garg et al. 2022) assumes the shift keeps confidence and correctness "
    "in the same relation as on the calibration data; it is an estimate without a guarantee and can be far "
    "off under shifts that make the model confidently wrong"
)
_N_COST_BOOT = 4000
_COST_SEED = 20240611


@dataclass(frozen=True)
class MonitorOptions:
    """How :func:`monitor` judges production.

    Attributes:
        max_drop: ε, the accuracy drop against the last exit to certify (a fraction).
        delta: δ, the probability that a bound fails (default 0.05).
        cost_tolerance: Relative slack on the budget before cost counts as over (default 0.05).
        cost_unit: Cost column to judge (default: the budget's unit).
        window_seconds: Length of the trend windows (default: the span split in ``n_windows``).
        n_windows: Windows when ``window_seconds`` is not given (default 8).
    """

    max_drop: float
    delta: float = 0.05
    cost_tolerance: float = 0.05
    cost_unit: str | None = None
    window_seconds: float | None = None
    n_windows: int = 8

    def __post_init__(self) -> None:
        """Check every option."""
        check("max_drop", self.max_drop, rule="certified.max_drop")
        check("delta", self.delta)
        if not (0.0 <= self.cost_tolerance < 10.0):
            raise DyncalError(f"{param('cost_tolerance')} must be in [0, 10), got {self.cost_tolerance!r}")
        if self.window_seconds is not None and not self.window_seconds > 0:
            raise DyncalError(f"{param('window_seconds')} must be positive, got {self.window_seconds!r}")
        if isinstance(self.n_windows, bool) or not isinstance(self.n_windows, int) or self.n_windows < 1:
            raise DyncalError(f"{param('n_windows')} must be a positive integer, got {self.n_windows!r}")


@dataclass(frozen=True)
class MonitorReport(JsonFields):
    """What :func:`monitor` found: the decision, its reasons and the evidence.

    Attributes:
        decision: ``PROCEED``, ``HOLD`` or ``ROLLBACK``.
        reasons: Why, one sentence each.
        n: Requests read.
        quality: The drop bound: source, shadow requests, disagreements (or losses), bounds, ε, δ.
        labels: With labels: the early exit's accuracy and the drop on labelled shadow requests; else None.
        cost: Mean cost per request against the budget, per unit.
        latency: Latency percentiles in ms (measured requests only).
        drift: Exit shares (χ²), per-exit scores (KS, PSI), the ATC accuracy estimate (context only).
        calibration: The calibration run's figures under the thresholds.
        windows: The same per time window (``start``/``end`` in µs since the epoch).
        options: The options used.
    """

    decision: str
    reasons: tuple[str, ...]
    n: int
    quality: dict[str, Any]
    labels: dict[str, Any] | None
    cost: dict[str, Any]
    latency: dict[str, Any]
    drift: dict[str, Any]
    calibration: dict[str, Any]
    windows: tuple[dict[str, Any], ...]
    options: MonitorOptions

    def to_dict(self) -> dict[str, Any]:
        """The ``dyncal monitor --json`` document (NaN and infinities as null)."""
        from dyncal.artifacts.thresholds import json_ready

        options = {k: v for k, v in asdict(self.options).items() if k != "n_windows"}
        fields = {"schema": "dyncal.monitor", "schema_version": 1, **JsonFields.to_dict(self), "options": options}
        return dict(json_ready(fields))


def _quality(
    data: TelemetryData, labels: np.ndarray | None, opts: MonitorOptions
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The drop bound from shadow requests (losses where labelled) and the labelled figures."""
    eps, delta = opts.max_drop, opts.delta
    shadow = data.shadow
    n_shadow = int(shadow.sum())
    disagree = int((shadow & (data.predictions != data.last_predictions)).sum())
    d_lo, d_hi = clopper_pearson(disagree, n_shadow, delta)
    quality: dict[str, Any] = {
        "source": "shadow",
        "n_shadow": n_shadow,
        "disagreements": disagree,
        "disagreement_rate": disagree / n_shadow if n_shadow else float("nan"),
        "disagreement_lower": d_lo,
        "disagreement_upper": d_hi,
        "count": disagree,
        "n": n_shadow,
        "lower": d_lo,
        "upper": d_hi if n_shadow else None,
        "harm_lower": None,
        "max_drop": eps,
        "delta": delta,
        "passed": bool(n_shadow and d_hi <= eps),
        "needed": shadow_requests_needed(eps, delta),
    }
    if labels is None:
        return quality, None
    known = labels >= 0
    n_lab = int(known.sum())
    ok = data.predictions == labels
    acc = float(ok[known].mean()) if n_lab else float("nan")
    ci = list(clopper_pearson(int(ok[known].sum()), n_lab, delta / 2)) if n_lab else None
    both = known & shadow
    n_both = int(both.sum())
    lab: dict[str, Any] = {"n_labeled": n_lab, "accuracy": acc, "accuracy_ci": ci, "n_labeled_shadow": n_both}
    if n_both:
        last_ok = data.last_predictions[both] == labels[both]
        early_ok = ok[both]
        losses = int((last_ok & ~early_ok).sum())
        gains = int((~last_ok & early_ok).sum())
        l_lo, l_hi = clopper_pearson(losses, n_both, delta)
        l_lo2, _ = clopper_pearson(losses, n_both, delta / 2)
        _, g_hi2 = clopper_pearson(gains, n_both, delta / 2)
        harm = l_lo2 - g_hi2  # the drop's lower bound: losses' lower minus gains' upper, delta/2 each
        lab.update(
            last_exit_accuracy=float(last_ok.mean()),
            drop=float(last_ok.mean() - early_ok.mean()),
            losses=losses,
            gains=gains,
            loss_upper=l_hi,
            drop_lower=harm,
        )
        quality.update(
            source="labels", count=losses, n=n_both, lower=l_lo, upper=l_hi, harm_lower=harm, passed=bool(l_hi <= eps)
        )
    return quality, lab


def _cost(data: TelemetryData, ref: CalibrationReference, opts: MonitorOptions) -> dict[str, Any]:
    """Mean cost per request in every unit, and the judged unit against the budget."""
    n = data.n
    counts = np.bincount(data.exits, minlength=ref.k)[: ref.k]
    cal_shares = np.bincount(ref.exits, minlength=ref.k) / max(ref.exits.size, 1)
    unit = opts.cost_unit or ref.budget.get("unit")
    per_unit: dict[str, Any] = {}
    rng = np.random.default_rng(_COST_SEED)
    draws = rng.multinomial(n, counts / n, size=_N_COST_BOOT) / n if n else None
    for key, costs in ref.costs.items():
        c = np.asarray(costs, dtype=np.float64)
        mean = float(counts @ c / n) if n else float("nan")
        lower = upper = float("nan")
        if draws is not None:
            lower, upper = (float(v) for v in np.quantile(draws @ c, [opts.delta, 1.0 - opts.delta]))
        per_unit[key] = {
            "mean": mean,
            "lower": lower,
            "upper": upper,
            "calibration": float(cal_shares @ c),
            "last_exit": float(c[-1]),
            "fraction_of_last": mean / float(c[-1]) if n else float("nan"),
        }
    out: dict[str, Any] = {"unit": unit, "per_unit": per_unit, "budget": None, "limit": None, "status": "no budget"}
    if unit is None:
        return out
    if unit not in per_unit:
        return {**out, "status": "unknown", "note": f"the calibration run has no {unit} costs"}
    basis = ref.budget.get("value")
    if basis is None:
        basis = ref.budget.get("met")
    if basis is None or (opts.cost_unit is not None and opts.cost_unit != ref.budget.get("unit")):
        basis = per_unit[unit]["calibration"]  # another unit than the budget's: judged against the plan's cost
    limit = float(basis) * (1.0 + opts.cost_tolerance)
    judged = per_unit[unit]
    out.update({"budget": float(basis), "limit": limit, **{k: judged[k] for k in ("mean", "lower", "upper")}})
    out["ratio_to_budget"] = judged["mean"] / float(basis) if n and basis else float("nan")
    if not n:
        out["status"] = "no requests"
    elif judged["lower"] > limit:
        out["status"] = "over"
    elif judged["mean"] > limit:
        out["status"] = "uncertain"
    else:
        out["status"] = "ok"
    return out


def _latency(data: TelemetryData) -> dict[str, Any]:
    ms = data.latency_ms[np.isfinite(data.latency_ms)]
    if ms.size == 0:
        return {"n": 0}
    percentiles = dict(zip(("p50", "p90", "p95", "p99"), np.percentile(ms, [50, 90, 95, 99]).tolist(), strict=True))
    return {"n": int(ms.size), "mean": float(ms.mean()), **percentiles, "max": float(ms.max())}


def _drift(data: TelemetryData, ref: CalibrationReference) -> dict[str, Any]:
    k = ref.k
    cal_exits = ref.exits
    cal_counts = np.bincount(cal_exits, minlength=k)
    prod_counts = np.bincount(data.exits, minlength=k)[:k]
    table = np.vstack([cal_counts, prod_counts])
    keep = table.sum(axis=0) > 0
    chi2 = p_value = float("nan")
    dof = 0
    if data.n and keep.sum() >= 2:
        res = sst.chi2_contingency(table[:, keep], correction=False)
        chi2, p_value, dof = float(res[0]), float(res[1]), int(res[2])
    per_exit = []
    for j in range(k):
        cal = ref.scores[cal_exits >= j, j]
        prod = data.scores[data.exits >= j, j]
        prod = prod[np.isfinite(prod)]
        entry: dict[str, Any] = {"exit": j + 1, "n_calibration": int(cal.size), "n_production": int(prod.size)}
        if cal.size and prod.size:
            with warnings.catch_warnings():  # ties make scipy fall back to the asymptotic p-value, and say so
                warnings.simplefilter("ignore", RuntimeWarning)
                ks = sst.ks_2samp(cal, prod)
            entry.update(
                ks=float(ks.statistic),
                ks_p_value=float(ks.pvalue),
                psi=population_stability_index(cal, prod),
                mean_calibration=float(cal.mean()),
                mean_production=float(prod.mean()),
            )
        per_exit.append(entry)
    rows = np.arange(cal_exits.size)
    conf_cal = ref.scores[rows, cal_exits]
    ok_cal = ref.predictions[rows, cal_exits] == ref.labels
    t = atc_threshold(conf_cal, ok_cal)
    conf = data.scores[np.arange(data.n), data.exits] if data.n else np.zeros(0)
    return {
        "exit_shares": {
            "calibration": (cal_counts / max(cal_exits.size, 1)).tolist(),
            "production": (prod_counts / max(data.n, 1)).tolist(),
            "chi2": chi2,
            "p_value": p_value,
            "dof": dof,
        },
        "scores": per_exit,
        "atc": {
            "estimate": float(np.mean(conf > t)) if data.n else float("nan"),
            "threshold": t,
            "calibration_accuracy": float(ok_cal.mean()) if ok_cal.size else float("nan"),
            "caveat": ATC_CAVEAT,
        },
        "note": "drift is context: it never decides PROCEED, HOLD or ROLLBACK on its own",
    }


def decide(quality: Mapping[str, Any], cost: Mapping[str, Any], opts: MonitorOptions) -> tuple[str, list[str]]:
    """PROCEED / HOLD / ROLLBACK from the quality bound and the cost (module docstring), with the reasons.

    Example:
        >>> opts = MonitorOptions(max_drop=0.02)
        >>> decide({"n": 0, "n_shadow": 0, "source": "shadow"}, {"status": "ok"}, opts)[0]
        'HOLD'
    """
    eps = opts.max_drop
    pct = f"{100 * eps:g}%"
    reasons: list[str] = []  # first those that roll back
    n = int(quality.get("n") or 0)
    labelled = quality.get("source") == "labels"
    what = "losses (last exit right, early exit wrong)" if labelled else "disagreements with the last exit"
    if labelled and quality.get("harm_lower") is not None and quality["harm_lower"] > eps:
        reasons.append(
            f"the labelled drop is above {pct} with confidence {1 - opts.delta:g} "
            f"(lower bound {quality['harm_lower']:.4f})"
        )
    if cost.get("status") == "over":
        reasons.append(
            f"cost per request {cost['mean']:.4g} {cost['unit']} is above the limit {cost['limit']:.4g} "
            f"(budget {cost['budget']:.4g} + {100 * opts.cost_tolerance:g}%), lower bound {cost['lower']:.4g}"
        )
    if reasons:
        return ROLLBACK, reasons
    if n == 0:
        reasons.append(
            "no shadow requests: without them the drop cannot be bounded (start the runner with a shadow share > 0)"
            if not labelled
            else "no labelled shadow requests"
        )
    elif not labelled and quality.get("upper") is not None and quality["upper"] > eps:
        # disagreement only bounds the drop from above: a disagreement above ε is no shown drop, so never ROLLBACK
        reasons.append(
            f"cannot certify the drop without labels: disagreement [{quality['lower']:.4f}, {quality['upper']:.4f}] "
            f"vs ε {eps:g} ({quality['count']} {what} in {n} shadow requests); add labels (--labels) or collect "
            "more shadow requests"
        )
    elif quality.get("upper") is not None and quality["upper"] > eps:
        reasons.append(
            f"{quality['count']} {what} in {n} shadow requests: the upper bound {quality['upper']:.4f} is above "
            f"{pct}; wait for more requests"
        )
    if cost.get("status") == "uncertain":
        reasons.append(
            f"cost per request {cost['mean']:.4g} is above the limit {cost['limit']:.4g}, not yet significantly"
        )
    elif cost.get("status") in ("no requests", "unknown"):
        reasons.append(f"cost not judged ({cost.get('note') or cost.get('status')})")
    if reasons:
        return HOLD, reasons
    ok = f"{quality['count']} {what} in {n} shadow requests: drop <= {quality['upper']:.4f} <= {pct}"
    cost_ok = (
        "no budget to hold"
        if cost.get("status") == "no budget"
        else f"cost {cost['mean']:.4g} within the limit {cost['limit']:.4g}"
    )
    return PROCEED, [ok, cost_ok]


def _window_bounds(data: TelemetryData, opts: MonitorOptions) -> list[tuple[int, int]]:
    if data.n == 0:
        return []
    t0, t1 = int(data.time_us.min()), int(data.time_us.max())
    if opts.window_seconds is not None:
        span = int(opts.window_seconds * 1e6)
    else:
        span = max(1, -(-(t1 - t0 + 1) // opts.n_windows))
    return [(start, start + span) for start in range(t0, t1 + 1, span)]


def _label_array(data: TelemetryData, labels: Mapping[str, int] | None) -> np.ndarray | None:
    if labels is None:
        return None
    known = [int(labels[rid]) if rid is not None and rid in labels else -1 for rid in data.request_ids]
    return np.array(known, dtype=np.int64)


def monitor(
    reference: CalibrationReference,
    data: TelemetryData,
    options: MonitorOptions,
    *,
    labels: Mapping[str, int] | None = None,
    identity: PackageIdentity | None = None,
) -> MonitorReport:
    """Compare production telemetry with the calibration run and decide the next rollout step.

    Args:
        reference: The calibration run under the shipped thresholds.
        data: Production rows (:func:`dyncal.telemetry.read_telemetry` ``.data``, or simulated).
        options: ε, δ, cost tolerance, windows.
        labels: Labels that arrived later, by request id (requests without one stay unlabelled).
        identity: The package identity the telemetry was read with; refused when it is not the
            reference's (other thresholds or run).

    Returns:
        The report (``decision`` and the evidence).

    Raises:
        DyncalError: Telemetry of another package or K.

    Example:
        >>> ref = CalibrationReference(np.array([[0.9, 0.9], [0.2, 0.8]]), np.array([[1, 1], [0, 2]]),
        ...                            np.array([1, 2]), np.array([0.5]))
        >>> prod = TelemetryData.from_arrays(exits=[0, 1], predictions=[1, 2], scores=[[0.9, 0.9], [0.1, 0.7]],
        ...                                  last_predictions=[-1, -1])
        >>> monitor(ref, prod, MonitorOptions(max_drop=0.05)).decision
        'HOLD'
    """
    if data.n and data.k != reference.k:
        raise DyncalError(f"the telemetry has K={data.k} exits but the calibration run has K={reference.k}")
    if identity is not None and reference.identity is not None:
        problem = reference.identity.conflict(identity)
        if problem is not None:
            raise DyncalError(f"the telemetry was written by another package: {problem}; give this package's telemetry")
    lab = _label_array(data, labels)
    quality, labelled = _quality(data, lab, options)
    calibration = reference.summary()
    quality["calibration_disagreement_rate"] = calibration["disagreement_rate"]
    cost = _cost(data, reference, options)
    decision, reasons = decide(quality, cost, options)
    if calibration["disagreement_rate"] >= options.max_drop:
        reasons.append(
            f"the thresholds disagree with the last exit on {calibration['disagreement_rate']:.4f} of the calibration "
            f"run, not below `max_drop` {options.max_drop}: label-free evidence cannot certify this drop; raise "
            "`max_drop`, re-solve at a larger budget, or bring labels"
        )
    windows = []
    for start, end in _window_bounds(data, options):
        rows = (data.time_us >= start) & (data.time_us < end)
        part = data.select(rows)
        wq, _ = _quality(part, None if lab is None else lab[rows], options)
        wc = _cost(part, reference, options)
        wd, _ = decide(wq, wc, options)
        shares = np.bincount(part.exits, minlength=reference.k)[: reference.k] / max(part.n, 1)
        windows.append(
            {
                "start": start,
                "end": end,
                "n": part.n,
                "n_shadow": wq["n_shadow"],
                "disagreements": wq["disagreements"],
                "upper": wq["upper"],
                "exit_shares": shares.tolist(),
                "cost_mean": wc.get("mean"),
                "latency_p99": _latency(part).get("p99"),
                "decision": wd,
            }
        )
    return MonitorReport(
        decision=decision,
        reasons=tuple(reasons),
        n=data.n,
        quality=quality,
        labels=labelled,
        cost=cost,
        latency=_latency(data),
        drift=_drift(data, reference),
        calibration=calibration,
        windows=tuple(windows),
        options=options,
    )
