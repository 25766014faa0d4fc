"""The report's latency evidence: one full-model figure per key, and every speed-up with its noise.

* :func:`full_model_ms` is the one definition of "the full model's latency" for a device
  and batch size; every page, table, JSON key and terminal line of a report shows it.
* :func:`measured_latency` turns a ``dyncal verify`` timing (the early exit and the plain
  model interleaved on the same batches) into evidence; :func:`predicted_latency` predicts
  the early exit from the profiled stage times when no verify timing is there, and carries
  both the timing noise of the profile's raw replicates and the sampling noise of the rows.
* :func:`usable_verify` says whether a verify result is evidence for a report at all.

numpy only (no torch), like the rest of the report.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dyncal.analysis.costmodel import predict_batch_ms
from dyncal.artifacts.costs import LatencyKey
from dyncal.measurement import Measurement
from dyncal.reports.decision import SpeedupEstimate
from dyncal.stats import N_BOOTSTRAP, bootstrap_interval, centred_interval, enclosing_interval

if TYPE_CHECKING:
    from dyncal.artifacts.costs import CostTable, LatencyProfile
    from dyncal.artifacts.run import Run
    from dyncal.artifacts.verify import PairedTiming, VerifyResult
    from dyncal.reports.timed import TimedCoverage

__all__ = [
    "LatencyEvidence",
    "full_model_ms",
    "batch_size_of",
    "unit_batches",
    "predicted_unit_ms",
    "mean_unit_cost",
    "latency_keywords",
    "predicted_latency",
    "measured_latency",
    "usable_verify",
]

_BATCH_ORDER_SEED = 20261128
_TIMING_SEED = 20261129
_TIMING_RESAMPLES = 200
_PROBES = 16


@dataclass(frozen=True)
class LatencyEvidence:
    """The early exit against the full model at one device and batch size.

    Attributes:
        key: ``"<device>/b<batch>"``.
        source: ``"measured"`` (``dyncal verify``) or ``"predicted"`` (profiled stages).
        early_exit_ms: Mean milliseconds per batch of the early exit (per sample at batch 1).
        full_model_ms: The full model's milliseconds per batch (:func:`full_model_ms`).
        full_model_source: Where that figure comes from, for people.
        speedup: ``full_model_ms / early_exit_ms`` with its intervals.
        predicted_ms: The cost model's prediction of ``early_exit_ms`` on the same samples.
        rows: Which samples the figures are on, for people.

    Example:
        >>> e = LatencyEvidence("cpu/b1", "predicted", 1.0, 2.0, "profile", SpeedupEstimate("cpu/b1", 2.0, None))
        >>> e.to_dict()["speedup"]
        2.0
    """

    key: str
    source: str
    early_exit_ms: float
    full_model_ms: float
    full_model_source: str
    speedup: SpeedupEstimate
    predicted_ms: float | None = None
    rows: str = ""

    @property
    def measured_over_predicted(self) -> float | None:
        """How far the prediction is off a measured early exit (None when predicted)."""
        if self.source != "measured" or not self.predicted_ms:
            return None
        return self.early_exit_ms / self.predicted_ms

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the report's ``latency`` entry for this key)."""
        s = self.speedup
        return {
            "source": self.source,
            "early_exit_ms": self.early_exit_ms,
            "full_model_ms": self.full_model_ms,
            "full_model_source": self.full_model_source,
            "speedup": s.value,
            "speedup_ci": None if s.interval is None else list(s.interval),
            "speedup_ci_sampling": None if s.interval_sampling is None else list(s.interval_sampling),
            "speedup_ci_timing": None if s.interval_timing is None else list(s.interval_timing),
            "timing_spread": s.timing_spread,
            "predicted_ms": self.predicted_ms,
            "measured_over_predicted": self.measured_over_predicted,
            "rows": self.rows,
        }


def batch_size_of(name: str) -> int:
    """Batch size of a latency key (``"cpu/b32"`` -> 32); 1 for ``"macs"``.

    Example:
        >>> batch_size_of("cpu/b32"), batch_size_of("macs")
        (32, 1)
    """
    try:
        return LatencyKey.parse(name).batch_size
    except ValueError:  # "macs"
        return 1


def _profile_full_model(prof: LatencyProfile) -> tuple[float, str]:
    """The profile's full-model figure: the median of its full-model replicates."""
    return (
        prof.full_model_median_ms,
        f"profiled: the unpartitioned model, median of {len(prof.full_model_ms)} replicates",
    )


def _verify_full_model(timing: PairedTiming) -> tuple[float, str]:
    """Verify's full-model figure: the plain model timed interleaved with the early exit."""
    return (
        timing.full_model_ms_median,
        f"measured by dyncal verify, interleaved with the early exit on the same batches "
        f"({timing.batches} batches x {timing.repeats} repeats)",
    )


def full_model_ms(costs: CostTable | None, verify: VerifyResult | None, key: str) -> tuple[float, str]:
    """The full model's milliseconds per batch at ``key``, and where the figure comes from.

    The figure is, in order: the plain model as ``dyncal verify`` timed it interleaved with
    the early exit (a matching verify result with a timing for ``key``); else the
    profile's median of the full model. It is the one figure every page shows.

    Args:
        costs: The run's cost table.
        verify: A verify result already checked to match the report (or None).
        key: ``"<device>/b<batch>"``.

    Returns:
        ``(ms, source)``; ``(nan, "not profiled")`` when neither knows ``key``.

    Example:
        >>> from dyncal import CostTable, LatencyProfile
        >>> paths = ((1.5,), (3.5,))
        >>> prof = LatencyProfile("cpu", 1, ((1.0,), (2.0,)), (0.5,), (2.5, 2.7, 2.6), 1, "x", exit_path_ms=paths)
        >>> full_model_ms(CostTable(latency={"cpu/b1": prof}), None, "cpu/b1")[0]
        2.6
    """
    timing = None if verify is None else verify.timing(key)
    if timing is not None:
        return _verify_full_model(timing)
    prof = None if costs is None else costs.latency.get(key)
    if prof is None:
        return float("nan"), "not profiled"
    return _profile_full_model(prof)


def unit_batches(exits: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """The units an early exit runs on the judged rows: samples at batch 1, else batches.

    For ``batch_size > 1`` the rows are shuffled in a fixed seeded order (data order can be
    sorted by class) and cut into full batches (the remainder, fewer than ``batch_size``
    rows, is left out unless it is all there is).

    Example:
        >>> [len(b) for b in unit_batches(np.zeros(70, int), 32)]
        [32, 32]
    """
    exits = np.asarray(exits)
    if batch_size <= 1:
        return [exits[i : i + 1] for i in range(len(exits))]
    order = np.random.default_rng(_BATCH_ORDER_SEED).permutation(len(exits))
    shuffled = exits[order]
    n_full = (len(shuffled) // batch_size) * batch_size
    if not n_full:
        return [shuffled] if len(shuffled) else []
    return [shuffled[s : s + batch_size] for s in range(0, n_full, batch_size)]


def predicted_unit_ms(costs: CostTable | None, key: str, batches: Sequence[np.ndarray]) -> np.ndarray | None:
    """Predicted ms of each unit (sample or batch), from the profiled stages (None: not profiled).

    Each is :func:`dyncal.analysis.costmodel.predict_batch_ms` of the batch, computed once
    per distinct batch.
    """
    if costs is None or key not in costs.latency:
        return None
    parsed = LatencyKey.parse(key)
    device, b = parsed.device, parsed.batch_size
    cache: dict[tuple[int, ...], float] = {}
    out = np.empty(len(batches))
    for i, batch in enumerate(batches):
        pattern = tuple(int(e) for e in batch)
        if pattern not in cache:
            ms = predict_batch_ms(costs, device, np.asarray(batch), b)
            cache[pattern] = float("nan") if ms is None else ms
        out[i] = cache[pattern]
    return out


def _per_exit_macs(run: Run) -> list[float] | None:
    """Cumulative MACs of a sample leaving at exit k (None without MAC counts)."""
    costs = run.costs
    if costs is None or costs.macs is None or len(costs.macs) != run.k:
        return None
    return [float(v) for v in costs.macs]


def _unit_costs(run: Run, name: str, exits: np.ndarray) -> np.ndarray | None:
    """Cost of each unit the early-exit model runs on rows leaving at ``exits``.

    MACs: a unit is a sample. A latency key: a sample at batch size 1, else a batch of the
    rows (:func:`unit_batches`), each predicted from the profiled
    stages by :func:`dyncal.analysis.costmodel.predict_batch_ms`, where a stage runs on the
    rows still in the batch and stops once none is left. A per-sample expectation would
    assume every batch stops as early as its average sample, which a batch does not.
    """
    if name == "macs":
        macs = _per_exit_macs(run)
        return None if macs is None else np.asarray(macs, dtype=float)[np.asarray(exits)]
    return predicted_unit_ms(run.costs, name, unit_batches(exits, batch_size_of(name)))


def mean_unit_cost(run: Run, name: str, exits: np.ndarray) -> float | None:
    """Mean cost of the units (:func:`_unit_costs`) on rows leaving at ``exits`` (None: not known, or no rows)."""
    units = _unit_costs(run, name, exits)
    return None if units is None or not len(units) else float(np.mean(units))


def latency_keywords(key: LatencyKey | None) -> dict[str, Any]:
    """The ``device`` and ``batch_size`` keywords that pick latency key ``key`` for solve and the frontier.

    None (MACs) gives both as None, as if not given.
    """
    return {"device": None if key is None else key.device, "batch_size": None if key is None else key.batch_size}


def _full_model_cost(run: Run, name: str) -> float:
    """The full model's cost before any verify result is matched (MACs, or the profile's ms)."""
    if name == "macs":
        macs = _per_exit_macs(run)
        return float("nan") if macs is None else macs[-1]
    return full_model_ms(run.costs, None, name)[0]


def _is_series(v: Any) -> bool:
    return (
        isinstance(v, tuple) and len(v) > 0 and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
    )


def _series(prof: LatencyProfile) -> list[tuple[float, ...]]:
    """Every series of raw replicates a profile holds (stages, decision, full model, ...)."""
    return [
        series
        for name, rows in _replicate_fields(prof)
        for series in (getattr(prof, name) if rows else (getattr(prof, name),))
    ]


def _is_rows(v: Any) -> bool:
    return isinstance(v, tuple) and len(v) > 0 and all(_is_series(r) for r in v)


def _replicate_fields(prof: LatencyProfile) -> list[tuple[str, bool]]:
    """The profile's fields that hold raw replicates: ``(name, whether it holds rows of them)``."""
    values = [(f.name, getattr(prof, f.name)) for f in dataclasses.fields(prof)]
    return [(name, _is_rows(v)) for name, v in values if _is_series(v) or _is_rows(v)]


def _resampled(prof: LatencyProfile, fields: list[tuple[str, bool]], rng: np.random.Generator) -> LatencyProfile:
    """The profile with every series of raw replicates (``fields``) resampled with replacement."""

    def draw(series: tuple[float, ...]) -> tuple[float, ...]:
        a = np.asarray(series, dtype=float)
        return tuple(a[rng.integers(0, len(a), len(a))].tolist())

    changes: dict[str, Any] = {
        name: tuple(map(draw, getattr(prof, name))) if rows else draw(getattr(prof, name)) for name, rows in fields
    }
    return dataclasses.replace(prof, **changes)


def _spread(prof: LatencyProfile) -> float:
    """The largest IQR / median among a profile's series: the timing noise in force."""
    return max((Measurement(tuple(s)).spread for s in _series(prof)), default=0.0)


def predicted_latency(
    costs: CostTable, key: str, exits: np.ndarray, *, held_out: bool, rows: str = ""
) -> LatencyEvidence:
    """The early exit on the judged rows as the profiled stages predict it, with both kinds of noise.

    Units are samples at batch 1, else batches of the rows (:func:`unit_batches`). The
    speed-up is the profile's full-model figure over the mean predicted unit time. Its
    intervals: sampling noise (the units resampled, medians kept; only when the rows were
    held out), timing noise (every series of the profile's raw replicates resampled and the
    prediction made again, units kept; see :func:`_timing_resamples`) and both at once.

    Args:
        costs: The run's cost table, with ``key`` profiled.
        key: ``"<device>/b<batch>"``.
        exits: ``(n,)`` exits of the judged rows.
        held_out: Whether the rows were held out (else no sampling interval).
        rows: Which rows, for people.

    Returns:
        The evidence, ``source="predicted"``.
    """
    batches = unit_batches(exits, batch_size_of(key))
    units = predicted_unit_ms(costs, key, batches)
    assert units is not None
    prof = costs.latency[key]
    full, full_source = _profile_full_model(prof)
    early = float(units.mean()) if len(units) else float("nan")
    value = full / early if len(units) else float("nan")
    scale, t_full = _timing_resamples(costs, key, batches)
    timing_values = t_full / (scale * early) if len(units) else np.full(1, np.nan)
    lo, hi = centred_interval(timing_values, np.asarray(value))  # resampled medians are biased
    timing: tuple[float, float] = (float(lo), float(hi))
    sampling: tuple[float, float] | None = None
    combined: tuple[float, float] = timing
    if held_out and len(units):
        sampling = bootstrap_interval(len(units), lambda idx: full / units[idx].mean(axis=1))
        combined = enclosing_interval(_joint_interval(units, scale, t_full, value), sampling, timing)
    estimate = SpeedupEstimate(
        key,
        value,
        combined,
        interval_sampling=sampling,
        interval_timing=timing,
        timing_spread=_spread(prof),
        source="predicted",
        full_model=full,
    )
    return LatencyEvidence(key, "predicted", early, full, full_source, estimate, predicted_ms=early, rows=rows)


def _timing_resamples(costs: CostTable, key: str, batches: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(R,)`` factors on the unit times and ``(R,)`` full-model times, the profile's replicates resampled.

    Each resample draws every series of raw replicates of the device's profiles with
    replacement and predicts a fixed seeded sample of the units again (all of them when
    there are few); every unit is scaled by how much that sample's mean moved. Timing noise
    is shared by the units (the same stage medians price every sample and batch), so the
    mean over units, which the speed-up divides, moves by that factor.
    """
    parsed = LatencyKey.parse(key)
    device, b = parsed.device, parsed.batch_size
    pick = np.arange(len(batches))
    if len(batches) > _PROBES:
        pick = np.sort(np.random.default_rng(_TIMING_SEED).choice(len(batches), _PROBES, replace=False))
    chosen = [np.asarray(batches[int(i)]) for i in pick]
    probe = np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)
    if len({len(c) for c in chosen}) > 1:  # a short remainder batch would be cut differently: predict it alone
        probe = chosen[0]
    base = predict_batch_ms(costs, device, probe, b)
    rng = np.random.default_rng(_TIMING_SEED)
    layout = {k: _replicate_fields(p) for k, p in costs.latency.items() if p.device == device}
    scale = np.ones(_TIMING_RESAMPLES)
    t_full = np.empty(_TIMING_RESAMPLES)
    for r in range(_TIMING_RESAMPLES):
        latency = {k: (_resampled(p, layout[k], rng) if k in layout else p) for k, p in costs.latency.items()}
        ms = predict_batch_ms(dataclasses.replace(costs, latency=latency), device, probe, b)
        if base and ms is not None:
            scale[r] = ms / base
        t_full[r] = _profile_full_model(latency[key])[0]
    return scale, t_full


def _joint_interval(units: np.ndarray, scale: np.ndarray, t_full: np.ndarray, value: float) -> tuple[float, float]:
    """95% interval with both noises: each resample draws the units and one timing resample, centred on ``value``."""
    n_t, n_u = len(scale), len(units)
    rng = np.random.default_rng(_TIMING_SEED + 1)
    values = np.empty(N_BOOTSTRAP)
    chunk = max(1, min(N_BOOTSTRAP, 4_000_000 // max(n_u, 1)))
    for start in range(0, N_BOOTSTRAP, chunk):
        m = min(chunk, N_BOOTSTRAP - start)
        idx = rng.integers(0, n_u, (m, n_u))
        t = rng.integers(0, n_t, m)
        values[start : start + m] = t_full[t] / (scale[t] * units[idx].mean(axis=1))
    lo, hi = centred_interval(values, np.asarray(value))
    return float(lo), float(hi)


def measured_latency(timing: PairedTiming, n: int, timed: TimedCoverage | None = None) -> LatencyEvidence:
    """A ``dyncal verify`` timing as evidence: the real early exit and the plain model, paired.

    Args:
        timing: The paired timing at one device and batch size.
        n: Samples verify replayed.
        timed: How many of them it timed (:meth:`TimedCoverage.of`); a speed-up timed on
            part of them is measurement-limited (:mod:`dyncal.reports.decision`).

    Returns:
        The evidence, ``source="measured"``, its intervals the timing's.
    """
    full, full_source = _verify_full_model(timing)
    estimate = SpeedupEstimate(
        timing.key,
        timing.speedup,
        timing.speedup_ci,
        interval_sampling=timing.speedup_ci_sampling,
        interval_timing=timing.speedup_ci_timing,
        timing_spread=timing.timing_spread,
        source="measured",
        full_model=full,
        timed=timed,
    )
    return LatencyEvidence(
        timing.key,
        "measured",
        timing.measured_ms,
        full,
        full_source,
        estimate,
        predicted_ms=timing.predicted_ms,
        rows=f"{n:,} samples replayed by dyncal verify" if timed is None else f"dyncal verify: {timed.text()}",
    )


def usable_verify(verify: VerifyResult, label: str, run: Run, decision_fingerprint: str) -> str | None:
    """Why a verify result is not evidence for this report (one line), or None when it is.

    It must have been measured on this run, with the report's thresholds (same exit
    decisions) and with the run's model weights.
    """
    why = verify.mismatch(
        run_fingerprint=run.fingerprint,
        decision_fingerprint=decision_fingerprint,
        weights_sha256=run.provenance.weights_sha256,
    )
    if why is None:
        return None
    fix = (
        "report the thresholds verify ran with --thresholds"
        if why.endswith("other thresholds")
        else f"run 'dyncal verify {run.path} --thresholds ... --out {label}' again"
    )
    return f"verify result '{label}' ignored: {why}; latency is predicted from the profile ({fix})"
