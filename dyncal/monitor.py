"""Production against calibration: the statistics of ``dyncal monitor`` and its rollout decision.

Inputs are arrays, not files: the calibration run's scores and labels under the shipped
thresholds (:class:`CalibrationReference`, built from a run and its thresholds document or from
arrays) and the production rows (:class:`dyncal.telemetry.TelemetryData`). Nothing here reads
files, prints or imports pyarrow; the CLI, the report page and the benchmarks call
:func:`monitor` and :func:`rollout_plan`.

**Quality without labels.** On a shadow request the runner also completes the plain model, so
its last exit's class is known. The accuracy drop of the early exit against the last exit is
``P(last right) - P(early right) <= P(last right, early wrong) <= P(early != last)``: the
*disagreement rate* bounds the drop from above, whatever the labels. Its exact one-sided
Clopper-Pearson upper bound at level ``1 - delta`` over ``n`` shadow requests therefore bounds
the drop with probability at least ``1 - delta`` (shadow requests being a random share of
traffic), and re-certifies ``--max-drop ε --delta δ`` on production traffic. With labels
(``labels``, by request id) the bound uses the *loss* count on labelled shadow requests
(last right and early wrong), which is tighter and bounds the drop the same way.

**Cost.** Each request costs its exit's cumulative cost in the budget's unit (MACs, or the
profiled ms of one ``"<device>/b<batch>"``); the mean per request, with one-sided ``1 - delta``
bounds from the multinomial bootstrap of the exit counts, is compared with the budget the
solve met (``budget.value``; the cost met when no budget was asked) widened by
``cost_tolerance``.

**The decision** (:func:`decide`), in this order:

1. ``ROLLBACK`` when the quality certificate is broken: the disagreement's lower bound exceeds
   ε (the upper bound can then never come below ε, however long one waits); with labels, when
   the drop's own lower bound (losses' lower bound minus gains' upper bound, δ/2 each)
   exceeds ε, i.e. harm is shown. Or when the cost's lower bound exceeds the budget limit.
2. ``PROCEED`` when there is shadow evidence, the upper bound is at most ε, and the cost's mean
   is within the limit (or there is no budget to hold).
3. ``HOLD`` otherwise: no shadow requests (no evidence is never PROCEED), too few to bound
   the drop, or a cost above the limit that is not yet significant.

Drift statistics (exit shares by χ², per-exit scores by Kolmogorov-Smirnov and PSI, the
average-thresholded-confidence accuracy estimate of Garg et al. 2022) are context: they never
decide, so a harmless shift that moves the exit shares does not roll back a model whose quality
held. The decision is made on all rows; :attr:`MonitorReport.windows` repeats it per time
window so that a trend shows (a window's decision is on that window's rows alone).

Caveat of repeated looks: the ``1 - delta`` guarantee is for one decision on a fixed sample.
Monitoring the same growing sample again and again inflates the chance of a false PROCEED;
:func:`rollout_plan` sizes each rollout step so that it is decided once, on its own requests.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import stats as sst

from dyncal.errors import DyncalError, param
from dyncal.telemetry import PackageIdentity, TelemetryData

if TYPE_CHECKING:
    from dyncal.artifacts.run import Run
    from dyncal.artifacts.thresholds import ThresholdsDocument

__all__ = [
    "PROCEED",
    "HOLD",
    "ROLLBACK",
    "ATC_CAVEAT",
    "DEFAULT_STEPS",
    "clopper_pearson",
    "shadow_requests_needed",
    "population_stability_index",
    "atc_threshold",
    "CalibrationReference",
    "MonitorOptions",
    "MonitorReport",
    "monitor",
    "decide",
    "RolloutStep",
    "RolloutPlan",
    "rollout_plan",
    "simulated_telemetry",
]

PROCEED, HOLD, ROLLBACK = "PROCEED", "HOLD", "ROLLBACK"
DEFAULT_STEPS: tuple[float, ...] = (0.01, 0.05, 0.25, 1.0)
"""Shares of traffic on the early exit, one rollout step each."""
ATC_CAVEAT = (
    "average thresholded confidence (Garg et al. 2022) assumes the shift keeps confidence and correctness "
    "in the same relation as on the calibration data; it is an estimate without a guarantee and can be far "
    "off under shifts that make the model confidently wrong"
)
_N_COST_BOOT = 4000
_COST_SEED = 20240611


def _fraction(value: float, name: str, *, open_low: bool = True) -> float:
    v = float(value)
    if not (0.0 < v < 1.0 if open_low else 0.0 <= v < 1.0):
        raise DyncalError(f"{param(name)} must be a fraction in {'(0' if open_low else '[0'}, 1), got {value!r}")
    return v


def clopper_pearson(count: int, n: int, delta: float) -> tuple[float, float]:
    """One-sided exact (Clopper-Pearson) bounds of a binomial rate, each holding with probability ``1 - delta``.

    Args:
        count: Successes observed (disagreements, losses).
        n: Trials.
        delta: Error probability of each bound.

    Returns:
        ``(lower, upper)``: ``P(rate >= lower) >= 1 - delta`` and ``P(rate <= upper) >= 1 - delta``;
        ``(0, 1)`` for ``n = 0``. ``upper <= ε`` exactly when ``P(Binomial(n, ε) <= count) <= delta``.

    Example:
        >>> lo, hi = clopper_pearson(0, 300, 0.05)
        >>> lo, round(hi, 5)            # 1 - 0.05 ** (1 / 300)
        (0.0, 0.00994)
    """
    if n < 0 or not 0 <= count <= n:
        raise DyncalError(f"need 0 <= count <= n, got count {count} of n {n}")
    _fraction(delta, "delta")
    if n == 0:
        return 0.0, 1.0
    lower = 0.0 if count == 0 else float(sst.beta.ppf(delta, count, n - count + 1))
    upper = 1.0 if count == n else float(sst.beta.ppf(1.0 - delta, count + 1, n - count))
    return lower, upper


def shadow_requests_needed(max_drop: float, delta: float, rate: float = 0.0, *, limit: int = 10**9) -> int | None:
    """Fewest shadow requests with which the Clopper-Pearson upper bound can come to ``max_drop`` or below.

    With ``rate`` 0 this is the bound at zero disagreements, ``ceil(log δ / log(1 - ε))``
    (``1 - δ^(1/n) <= ε``). With a ``rate`` the traffic is assumed to disagree at, it is the
    smallest ``n`` at which ``ceil(rate * n)`` disagreements pass: ``P(Binomial(n, ε) <=
    ceil(rate n)) <= δ``. None when ``rate >= max_drop`` (never) or past ``limit``.

    Example:
        >>> shadow_requests_needed(0.01, 0.05), shadow_requests_needed(0.01, 0.05, rate=0.005)
        (299, 1182)
    """
    eps = _fraction(max_drop, "max_drop")
    dlt = _fraction(delta, "delta")
    r = _fraction(rate, "rate", open_low=False)
    if r >= eps:
        return None
    n0 = max(1, math.ceil(math.log(dlt) / math.log1p(-eps) - 1e-12))
    while sst.binom.cdf(0, n0, eps) > dlt:  # the closed form's rounding, made exact
        n0 += 1
    if r == 0.0:
        return n0
    # the count's rounding makes passing non-monotone in n: scan every n from n0, in vectorised blocks
    start, block = n0, 1 << 14
    while start <= limit:
        ns = np.arange(start, min(limit, start + block - 1) + 1)
        ok = sst.binom.cdf(np.ceil(r * ns), ns, eps) <= dlt
        if ok.any():
            return int(ns[np.argmax(ok)])
        start, block = start + block, min(block * 2, 1 << 20)
    return None


def population_stability_index(reference: np.ndarray, current: np.ndarray, n_bins: int = 10) -> float:
    """PSI of ``current`` against ``reference`` over ``n_bins`` quantile bins of the reference.

    ``sum (c_i - r_i) log(c_i / r_i)`` over bin shares (each floored at 1e-4). Common reading:
    below 0.1 stable, 0.1-0.25 moderate, above 0.25 a large shift. NaN when either is empty.

    Example:
        >>> x = np.random.default_rng(0).normal(size=5000)
        >>> population_stability_index(x, x) == 0.0, population_stability_index(x, x + 1) > 0.25
        (True, True)
    """
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    if ref.size == 0 or cur.size == 0:
        return float("nan")
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, n_bins + 1)[1:-1]))
    r = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=edges.size + 1) / ref.size
    c = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=edges.size + 1) / cur.size
    r, c = np.maximum(r, 1e-4), np.maximum(c, 1e-4)
    return float(np.sum((c - r) * np.log(c / r)))


def atc_threshold(confidence: np.ndarray, correct: np.ndarray) -> float:
    """Average thresholded confidence (Garg et al. 2022): the threshold whose share above is the accuracy.

    On labelled source data, ``t`` is chosen so that ``mean(confidence > t) == mean(correct)``;
    on unlabelled target data ``mean(confidence > t)`` estimates the accuracy.

    Example:
        >>> conf = np.array([0.9, 0.8, 0.7, 0.6]); ok = np.array([1, 1, 1, 0], bool)
        >>> t = atc_threshold(conf, ok); float(np.mean(conf > t))
        0.75
    """
    conf = np.sort(np.asarray(confidence, dtype=np.float64))
    if conf.size == 0:
        return float("nan")
    acc = float(np.mean(correct))
    below = int(round((1.0 - acc) * conf.size))  # this many samples at or below t
    if below <= 0:
        return float(np.nextafter(conf[0], -np.inf))
    return float(conf[below - 1])


@dataclass(frozen=True)
class CalibrationReference:
    """The calibration run under the shipped thresholds: what production is compared with.

    Attributes:
        scores: ``(N, K)`` scores (the thresholds' score and temperatures).
        predictions: ``(N, K)`` each exit's class.
        labels: ``(N,)`` true classes.
        thresholds: ``K - 1`` thresholds.
        costs: Cost unit (``"macs"``, ``"ms:<device>/b<batch>"``) to ``K`` cumulative costs.
        budget: The thresholds document's ``budget`` (``unit``, ``value``, ``met``, ...).
        identity: The package identity telemetry must carry.
    """

    scores: np.ndarray
    predictions: np.ndarray
    labels: np.ndarray
    thresholds: np.ndarray
    costs: dict[str, tuple[float, ...]] = field(default_factory=dict)
    budget: dict[str, Any] = field(default_factory=dict)
    identity: PackageIdentity | None = None

    @classmethod
    def from_arrays(
        cls,
        logits: np.ndarray,
        labels: np.ndarray,
        thresholds: ThresholdsDocument,
        *,
        costs: Mapping[str, Sequence[float]] | None = None,
    ) -> CalibrationReference:
        """Score ``(N, K, C)`` logits with the document's score and temperatures.

        Raises:
            DyncalError: Logits that do not fit the document's K.
        """
        from dyncal.calibrate.policy import assign_exits
        from dyncal.calibrate.scores import exit_scores

        k = len(thresholds.thresholds)
        if logits.ndim != 3 or logits.shape[1] != k:
            raise DyncalError(f"the calibration logits {tuple(logits.shape)} do not have the thresholds' K={k} exits")
        scores, preds = exit_scores(logits, thresholds.score, thresholds.temperatures)
        t = thresholds.threshold_array
        assign_exits(scores[:1], t)  # checks the count
        return cls(
            scores=scores,
            predictions=preds,
            labels=np.asarray(labels, dtype=np.int64),
            thresholds=t,
            costs={key: tuple(float(v) for v in c) for key, c in (costs or {}).items()},
            budget=dict(thresholds.budget),
            identity=PackageIdentity.from_thresholds(thresholds),
        )

    @classmethod
    def from_run(cls, run: Run, thresholds: ThresholdsDocument) -> CalibrationReference:
        """The reference of a run and the thresholds solved on it (refused for another run).

        Raises:
            DyncalError: Thresholds solved on another run (:func:`check_thresholds_for_run`).
        """
        from dyncal.artifacts.thresholds import check_thresholds_for_run
        from dyncal.calibrate.budget import cost_units

        check_thresholds_for_run(thresholds, run)
        return cls.from_arrays(run.logits, run.labels, thresholds, costs=cost_units(run.costs, run.k))

    @property
    def k(self) -> int:
        """Exits."""
        return int(self.scores.shape[1])

    @property
    def exits(self) -> np.ndarray:
        """``(N,)`` exit of each calibration sample under the thresholds."""
        from dyncal.calibrate.policy import assign_exits

        return assign_exits(self.scores, self.thresholds)

    def summary(self) -> dict[str, Any]:
        """Accuracy, the last exit's, the disagreement rate and exit shares on the calibration run."""
        exits = self.exits
        n = exits.size
        rows = np.arange(n)
        early = self.predictions[rows, exits]
        last = self.predictions[:, -1]
        return {
            "n": int(n),
            "accuracy": float(np.mean(early == self.labels)),
            "last_exit_accuracy": float(np.mean(last == self.labels)),
            "disagreement_rate": float(np.mean(early != last)),
            "exit_shares": (np.bincount(exits, minlength=self.k) / max(n, 1)).tolist(),
        }


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
        _fraction(self.max_drop, "max_drop")
        _fraction(self.delta, "delta")
        if not (0.0 <= self.cost_tolerance < 10.0):
            raise DyncalError(f"{param('cost_tolerance')} must be in [0, 10), got {self.cost_tolerance!r}")
        if self.window_seconds is not None and not self.window_seconds > 0:
            raise DyncalError(f"{param('window_seconds')} must be positive, got {self.window_seconds!r}")
        if isinstance(self.n_windows, bool) or not isinstance(self.n_windows, int) or self.n_windows < 1:
            raise DyncalError(f"{param('n_windows')} must be a positive integer, got {self.n_windows!r}")


@dataclass(frozen=True)
class MonitorReport:
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

        return dict(
            json_ready(
                {
                    "schema": "dyncal.monitor",
                    "schema_version": 1,
                    "decision": self.decision,
                    "reasons": list(self.reasons),
                    "n": self.n,
                    "quality": self.quality,
                    "labels": self.labels,
                    "cost": self.cost,
                    "latency": self.latency,
                    "drift": self.drift,
                    "calibration": self.calibration,
                    "windows": list(self.windows),
                    "options": {
                        "max_drop": self.options.max_drop,
                        "delta": self.options.delta,
                        "cost_tolerance": self.options.cost_tolerance,
                        "cost_unit": self.options.cost_unit,
                        "window_seconds": self.options.window_seconds,
                    },
                }
            )
        )


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
    lab: dict[str, Any] = {"n_labeled": n_lab, "accuracy": acc, "accuracy_ci": None}
    if n_lab:
        k_ok = int(ok[known].sum())
        lo, hi = clopper_pearson(k_ok, n_lab, delta / 2)
        lab["accuracy_ci"] = [lo, hi]
    both = known & shadow
    n_both = int(both.sum())
    lab["n_labeled_shadow"] = n_both
    if n_both:
        last_ok = data.last_predictions[both] == labels[both]
        early_ok = ok[both]
        losses = int((last_ok & ~early_ok).sum())
        gains = int((~last_ok & early_ok).sum())
        l_lo, l_hi = clopper_pearson(losses, n_both, delta)
        l_lo2, _ = clopper_pearson(losses, n_both, delta / 2)
        _, g_hi2 = clopper_pearson(gains, n_both, delta / 2)
        lab.update(
            {
                "last_exit_accuracy": float(last_ok.mean()),
                "drop": float(last_ok.mean() - early_ok.mean()),
                "losses": losses,
                "gains": gains,
                "loss_upper": l_hi,
                "drop_lower": l_lo2 - g_hi2,
            }
        )
        quality.update(
            {
                "source": "labels",
                "count": losses,
                "n": n_both,
                "lower": l_lo,
                "upper": l_hi,
                "harm_lower": l_lo2 - g_hi2,
                "passed": bool(l_hi <= eps),
            }
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
    if unit is None or unit not in per_unit:
        out["status"] = "no budget" if unit is None else "unknown"
        if unit is not None:
            out["note"] = f"the calibration run has no {unit} costs"
        return out
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
    p = np.percentile(ms, [50, 90, 95, 99])
    return {
        "n": int(ms.size),
        "mean": float(ms.mean()),
        "p50": float(p[0]),
        "p90": float(p[1]),
        "p95": float(p[2]),
        "p99": float(p[3]),
        "max": float(ms.max()),
    }


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
            ks = sst.ks_2samp(cal, prod)
            entry.update(
                {
                    "ks": float(ks.statistic),
                    "ks_p_value": float(ks.pvalue),
                    "psi": population_stability_index(cal, prod),
                    "mean_calibration": float(cal.mean()),
                    "mean_production": float(prod.mean()),
                }
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
    reasons: list[str] = []
    rollback = False
    n = int(quality.get("n") or 0)
    labelled = quality.get("source") == "labels"
    what = "losses (last exit right, early exit wrong)" if labelled else "disagreements with the last exit"
    if labelled and quality.get("harm_lower") is not None and quality["harm_lower"] > eps:
        rollback = True
        reasons.append(
            f"the labelled drop is above {pct} with confidence {1 - opts.delta:g} "
            f"(lower bound {quality['harm_lower']:.4f})"
        )
    elif not labelled and n and quality.get("lower", 0.0) > eps:
        rollback = True
        reasons.append(
            f"the early exit disagrees with the last exit on more than {pct} of shadow requests with confidence "
            f"{1 - opts.delta:g} (lower bound {quality['lower']:.4f}): the drop bound cannot pass"
        )
    if cost.get("status") == "over":
        rollback = True
        reasons.append(
            f"cost per request {cost['mean']:.4g} {cost['unit']} is above the limit {cost['limit']:.4g} "
            f"(budget {cost['budget']:.4g} + {100 * opts.cost_tolerance:g}%), lower bound {cost['lower']:.4g}"
        )
    if rollback:
        return ROLLBACK, reasons
    if n == 0:
        reasons.append(
            "no shadow requests: without them the drop cannot be bounded (start the runner with a shadow share > 0)"
            if not labelled
            else "no labelled shadow requests"
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
    out = np.full(data.n, -1, dtype=np.int64)
    for i, rid in enumerate(data.request_ids):
        if rid is not None and rid in labels:
            out[i] = int(labels[rid])
    return out


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


def simulated_telemetry(
    logits: np.ndarray,
    thresholds: ThresholdsDocument,
    *,
    shadow: float,
    seed: int = 0,
    latency_ms: Sequence[float] | None = None,
    start_us: int = 0,
    spacing_us: int = 1000,
) -> TelemetryData:
    """The telemetry the shipped runner would write for samples with these per-exit logits.

    Each sample is one request, ``spacing_us`` apart from ``start_us``; its exit, prediction and
    scores follow the exit rule, a ``shadow`` share (drawn with ``seed``) records the last exit's
    class. For benchmarks and tests of the monitor on collected runs (clean or perturbed).

    Args:
        logits: ``(N, K, C)``.
        thresholds: The thresholds document (score, temperatures, thresholds).
        shadow: Shadow share in [0, 1].
        seed: Seed of the shadow draws.
        latency_ms: ``K`` latencies of a request leaving at each exit (default: not measured, NaN).
        start_us: Time of the first request, µs since the epoch.
        spacing_us: Time between requests, µs.

    Example:
        >>> from dyncal.artifacts.thresholds import ThresholdsDocument
        >>> doc = ThresholdsDocument("maxprob", (1.0, 1.0), (0.9, None), "optimal", {}, None, {}, 0.9,
        ...                          None, None, (0.5, 0.5), n_classes=2)
        >>> z = np.array([[[4.0, 0.0], [0.0, 1.0]], [[0.1, 0.0], [0.0, 3.0]]])
        >>> d = simulated_telemetry(z, doc, shadow=1.0)
        >>> d.exits.tolist(), d.predictions.tolist(), d.last_predictions.tolist()
        ([0, 1], [0, 1], [1, 1])
    """
    from dyncal.calibrate.policy import assign_exits
    from dyncal.calibrate.scores import exit_scores

    if not 0.0 <= shadow <= 1.0:
        raise DyncalError(f"{param('shadow')} must be a share in [0, 1], got {shadow!r}")
    scores, preds = exit_scores(logits, thresholds.score, thresholds.temperatures)
    exits = assign_exits(scores, thresholds.threshold_array)
    n = exits.size
    chosen = np.random.default_rng(seed).random(n) < shadow
    lat = None if latency_ms is None else np.asarray(latency_ms, dtype=np.float64)[exits]
    return TelemetryData.from_arrays(
        exits=exits,
        predictions=preds[np.arange(n), exits],
        scores=scores,
        last_predictions=np.where(chosen, preds[:, -1], -1),
        latency_ms=lat,
        time_us=start_us + spacing_us * np.arange(n, dtype=np.int64),
    )


@dataclass(frozen=True)
class RolloutStep:
    """One rollout step.

    Attributes:
        share: Share of traffic on the early exit.
        shadow_requests: Shadow requests the step needs before its bound can pass.
        early_exit_requests: Early-exit requests that gives at the shadow share.
        total_requests: Requests to the service during the step at that share.
        hours: At ``requests_per_hour``, how long that takes (None when no rate was given).
    """

    share: float
    shadow_requests: int
    early_exit_requests: int
    total_requests: int
    hours: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "share": self.share,
            "shadow_requests": self.shadow_requests,
            "early_exit_requests": self.early_exit_requests,
            "total_requests": self.total_requests,
            "hours": self.hours,
        }


@dataclass(frozen=True)
class RolloutPlan:
    """``dyncal monitor --plan``: the steps and the evidence each needs.

    Attributes:
        max_drop: ε.
        delta: δ.
        shadow: Shadow share of early-exit requests.
        assumed_rate: Disagreement rate the sizes assume (the calibration run's, or 0).
        n_at_zero: Shadow requests at which zero disagreements pass (``ceil(log δ / log(1 - ε))``).
        n_at_rate: Shadow requests at which ``assumed_rate`` passes (None: never, the rate is at or above ε).
        steps: The steps.
        note: How to read the plan.
    """

    max_drop: float
    delta: float
    shadow: float
    assumed_rate: float
    n_at_zero: int
    n_at_rate: int | None
    steps: tuple[RolloutStep, ...]
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The ``dyncal monitor --plan --json`` document."""
        return {
            "schema": "dyncal.rollout_plan",
            "schema_version": 1,
            "max_drop": self.max_drop,
            "delta": self.delta,
            "shadow": self.shadow,
            "assumed_rate": self.assumed_rate,
            "n_at_zero": self.n_at_zero,
            "n_at_rate": self.n_at_rate,
            "steps": [s.to_dict() for s in self.steps],
            "note": self.note,
        }


def rollout_plan(
    max_drop: float,
    delta: float = 0.05,
    *,
    shadow: float,
    steps: Sequence[float] = DEFAULT_STEPS,
    assumed_rate: float = 0.0,
    requests_per_hour: float | None = None,
) -> RolloutPlan:
    """Rollout steps and the shadow requests each needs before its drop bound can pass.

    Each step is decided once, on its own requests (a fresh sample per step keeps every
    decision's error at δ). A step needs ``n`` shadow requests: the fewest at which the
    Clopper-Pearson bound passes when the traffic disagrees at ``assumed_rate``
    (:func:`shadow_requests_needed`; with 0, at zero disagreements). At shadow share ``p`` and
    traffic share ``s`` that is ``n / p`` early-exit requests and ``n / (p s)`` requests in all.

    Raises:
        DyncalError: A shadow share of 0 (no evidence can ever pass), steps not increasing shares
            in (0, 1], or an assumed rate at or above ``max_drop``.

    Example:
        >>> plan = rollout_plan(0.01, 0.05, shadow=0.1, steps=(0.05, 1.0))
        >>> [(s.shadow_requests, s.early_exit_requests, s.total_requests) for s in plan.steps]
        [(299, 2990, 59800), (299, 2990, 2990)]
    """
    eps = _fraction(max_drop, "max_drop")
    dlt = _fraction(delta, "delta")
    if isinstance(shadow, bool) or not 0.0 < float(shadow) <= 1.0:
        raise DyncalError(
            f"{param('shadow')} {shadow!r} gives no quality evidence: the plan needs a shadow share in (0, 1]"
        )
    shares = [float(s) for s in steps]
    if (
        not shares
        or any(not 0.0 < s <= 1.0 for s in shares)
        or any(b <= a for a, b in zip(shares, shares[1:], strict=False))
    ):
        raise DyncalError(f"{param('steps')} must be increasing shares in (0, 1], got {list(steps)}")
    if requests_per_hour is not None and not requests_per_hour > 0:
        raise DyncalError(f"{param('requests_per_hour')} must be positive, got {requests_per_hour!r}")
    n_zero = shadow_requests_needed(eps, dlt)
    assert n_zero is not None
    n_rate = shadow_requests_needed(eps, dlt, assumed_rate)
    if n_rate is None:
        raise DyncalError(
            f"at a disagreement rate of {assumed_rate:.4f} the drop bound never comes below `max_drop` {eps}; "
            "raise `max_drop` or lower the disagreement (re-solve at a larger budget)"
        )
    out = []
    for s in shares:
        ee = math.ceil(n_rate / float(shadow) - 1e-9)
        total = math.ceil(ee / s - 1e-9)
        hours = None if requests_per_hour is None else total / float(requests_per_hour)
        out.append(RolloutStep(s, n_rate, ee, total, hours))
    note = (
        f"each step needs {n_rate} shadow requests of its own before the bound can pass at {assumed_rate:.4f} "
        f"disagreements ({n_zero} if none disagree); run dyncal monitor once per step"
    )
    return RolloutPlan(eps, dlt, float(shadow), float(assumed_rate), n_zero, n_rate, tuple(out), note)
