"""Latency as requests feel it: every timed request's times, and their distribution (numpy only).

Design. ``dyncal verify`` already times the early exit and the plain deployment back to
back on the same batch, ``repeats`` times (a pair per repeat). At batch 1 a batch is one
request, so those pairs are per-request latencies: :class:`RequestTimings` keeps, for each
timed *unit* (a request at batch 1, a batch at batch B), its run rows, the exit each row
took, and the raw replicate milliseconds of both deployments. Everything else is derived
on read, the way :class:`~dyncal.artifacts.verify.PairedTiming` derives its speed-up, so a
script reading verify.json can recompute every figure:

* two **views** of a unit's latency: ``raw`` (every replicate, noise included) and
  ``fastest`` (the fastest replicate, the noise-reduced figure ``timeit`` recommends);
* the **statistics** mean, std (``ddof=0``, as ``np.std``), p50, p90, p95, p99 and max
  (numpy's linear percentile rule), overall and per exit (at batch B: per deepest exit in
  the batch, the exit that decides how long the batch runs);
* 95% percentile-bootstrap **intervals**, seeded: a resample redraws the units within
  their exit (the exit mix is known from every replayed row, not only the timed ones) and,
  for timing noise, the pairs within each unit (the two deployments keep their pairing).
  :attr:`RequestTimings.bootstrap_draws` resamples: 2000, fewer (at least 500) past 30M
  replicate draws, so a large validation set is summarised in seconds
  (:mod:`dyncal.artifacts.request_draws`; ``benchmarks/request_summary_speed.md``).
  The draws are re-centred on the estimate (:func:`dyncal.stats.centred_interval`): the bootstrap of a
  fastest replicate or of a tail is biased, and an interval should hold its estimate.
  :meth:`RequestTimings.percentile` gives one percentile with the three intervals the
  report's rule (:func:`dyncal.reports.decision.criterion_status`) needs: sampling noise,
  timing noise and both.

**Which requests.** When the time bound cannot time every row,
:func:`dyncal.analysis.requests.stratified_order` orders the rows so that every exit
appears early and every prefix holds each exit near its share; verify times a prefix of
that order. The overall figures then weight each unit by its exit's share of everything
replayed over its share of what was timed (``population``), so oversampling a rare slow
exit does not bias the tail.
:meth:`RequestTimings.coverage` states the count ("232 of 797 requests timed (time bound
10 s)").

Wiring (not done here): verify builds one :meth:`RequestTimings.from_batches` per batch
size from its timed batches and stores ``to_dict()`` beside the paired timings; the report
and the tail criteria (:mod:`dyncal.reports.tail`) read ``summaries()`` and
``percentile()``; capacity (:mod:`dyncal.analysis.capacity`) reads ``throughput_per_s``
and the service-time samples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dyncal.artifacts import validate as V
from dyncal.artifacts.costs import LatencyKey
from dyncal.artifacts.fields import JsonFields
from dyncal.artifacts.request_draws import (
    STATISTICS,
    group_statistics,
    latency_statistics,
    resample_parts,
    view_values,
)
from dyncal.errors import DyncalError
from dyncal.stats import N_BOOTSTRAP, centred_interval, weighted_percentiles

__all__ = [
    "STATISTICS",
    "SIDES",
    "VIEWS",
    "IntervalEstimate",
    "LatencySummary",
    "RequestTimings",
    "latency_statistics",
]

SIDES = ("early_exit", "plain")
"""The two deployments timed: the real early exit and the plain deployment (DESIGN.md)."""
VIEWS = ("fastest", "raw")
"""``fastest``: each unit's fastest replicate (noise-reduced); ``raw``: every replicate."""
_PERCENTILE_SIDES = (*SIDES, "ratio")  # percentile(): one side, or early exit over plain
_SEED = 20240621
MIN_MS, MAX_MS = 1e-6, 1e9  # a nanosecond to 11 days: anything else is not a timing
_DRAW_BUDGET = 30_000_000  # replicate draws per bootstrap: N_BOOTSTRAP resamples up to 3000 requests x 5 pairs
_MIN_DRAWS = 500  # fewer resamples above the budget, never fewer than this

Interval = tuple[float, float]


@dataclass(frozen=True)
class IntervalEstimate(JsonFields):
    """A value with its 95% intervals from sampling noise, timing noise and both.

    Attributes:
        value: The estimate on the timed data.
        interval: With both kinds of noise (units and their pairs resampled).
        interval_sampling: From which requests were timed alone (units resampled, pairs kept).
        interval_timing: From timing noise alone (pairs resampled, units kept).

    Example:
        >>> IntervalEstimate(2.0, (1.5, 2.5), (1.8, 2.2), (1.7, 2.3)).to_dict()["interval"]
        [1.5, 2.5]
    """

    value: float
    interval: Interval
    interval_sampling: Interval
    interval_timing: Interval


@dataclass(frozen=True)
class LatencySummary:
    """The distribution of one deployment's latency in one view, overall or at one exit.

    Attributes:
        side: ``"early_exit"`` or ``"plain"``.
        view: ``"fastest"`` or ``"raw"``.
        exit: None overall, else the exit index (0 is exit 1; at batch B the deepest in the batch).
        units: Requests (batch 1) or batches summarised.
        values: Milliseconds of each of :data:`STATISTICS`.
        intervals: 95% bootstrap interval of each, timing and sampling noise together.
    """

    side: str
    view: str
    exit: int | None
    units: int
    values: Mapping[str, float]
    intervals: Mapping[str, Interval]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: ``<stat>_ms`` and ``<stat>_ms_ci`` for every statistic."""
        out: dict[str, Any] = {"side": self.side, "view": self.view, "exit": self.exit, "units": self.units}
        for name in STATISTICS:
            out[f"{name}_ms"] = self.values[name]
            out[f"{name}_ms_ci"] = list(self.intervals[name])
        return out


@dataclass(frozen=True, eq=False)
class RequestTimings:
    """Every timed unit (request at batch 1, batch at batch B) of one device and batch size.

    Unit ``u`` is the rows ``rows[u * batch_size:(u + 1) * batch_size]`` (the last may be
    shorter); ``early_exit_ms[u][r]`` and ``plain_ms[u][r]`` are its pair ``r``, timed back
    to back.

    Attributes:
        key: ``"<device>/b<batch>"``.
        batch_size: Rows per unit.
        rows: ``(n,)`` run rows (positions in the run's arrays) in the order timed.
        exits: ``(n,)`` exit each row took at runtime (0 is exit 1).
        early_exit_ms: ``(U, R)`` milliseconds of the real early exit.
        plain_ms: ``(U, R)`` milliseconds of the plain deployment, same units and pairs.
        n_exits: ``K``.
        population: ``(K,)`` units per stratum (deepest exit) among everything replayed, or
            None when the timed units are all there were or a fair sample of them.
        n_available: Rows that could have been timed (replayed).
        time_bound_s: The time bound that stopped the timing, if one did.

    Example:
        >>> t = RequestTimings("cpu/b1", 1, np.arange(4), np.array([0, 0, 1, 1]),
        ...                    np.array([[1.0, 1.2], [1.1, 1.0], [3.0, 3.3], [3.1, 3.0]]),
        ...                    np.full((4, 2), 3.0), n_exits=2)
        >>> t.summary("early_exit", "fastest").values["p50"], t.coverage()
        (2.0, '4 of 4 requests timed')
    """

    key: str
    batch_size: int
    rows: np.ndarray
    exits: np.ndarray
    early_exit_ms: np.ndarray
    plain_ms: np.ndarray
    n_exits: int
    population: np.ndarray | None = None
    n_available: int = 0
    time_bound_s: float | None = None
    _cache: dict[Any, Any] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        rows, exits = (np.asarray(a, dtype=np.int64).reshape(-1) for a in (self.rows, self.exits))
        ee, pl = (np.asarray(a, dtype=np.float64) for a in (self.early_exit_ms, self.plain_ms))
        pop = None if self.population is None else np.asarray(self.population, dtype=np.int64).reshape(-1)
        for name, value in (("rows", rows), ("exits", exits), ("early_exit_ms", ee), ("plain_ms", pl)):
            object.__setattr__(self, name, value)
            value.setflags(write=False)
        object.__setattr__(self, "population", pop)
        object.__setattr__(self, "n_available", max(int(self.n_available), rows.shape[0]))
        problem = _problem(self)
        if problem:
            raise DyncalError(f"request timings {self.key}: {problem}")

    # -- shape
    @property
    def units(self) -> int:
        """Units timed (requests at batch 1, batches at batch B)."""
        return int(self.early_exit_ms.shape[0])

    @property
    def repeats(self) -> int:
        """Pairs per unit."""
        return int(self.early_exit_ms.shape[1])

    @property
    def bootstrap_draws(self) -> int:
        """Resamples behind every interval: :data:`~dyncal.stats.N_BOOTSTRAP`, fewer (at least 500) past 30M replicates.

        The bound keeps verify's summaries of a large validation set to seconds; with
        thousands of requests the intervals are narrow and 500 resamples place them well.
        """
        return max(_MIN_DRAWS, min(N_BOOTSTRAP, _DRAW_BUDGET // max(1, self.early_exit_ms.size)))

    @property
    def unit_exits(self) -> np.ndarray:
        """``(U,)`` the deepest exit of each unit (a request's own exit at batch 1)."""
        starts = np.arange(0, self.rows.shape[0], self.batch_size)
        return np.asarray(np.maximum.reduceat(self.exits, starts), dtype=np.int64)

    @property
    def unrepresented_exits(self) -> list[int]:
        """Exits that some replayed unit took but no timed one did (their latency is not in the figures)."""
        if self.population is None:
            return []
        timed = np.bincount(self.unit_exits, minlength=self.n_exits)
        return [int(k) for k in np.flatnonzero((self.population > 0) & (timed == 0))]

    @property
    def weights(self) -> np.ndarray | None:
        """``(U,)`` weight of each unit: its exit's share of the population over its share of the timed units."""
        if self.population is None:
            return None
        strata = self.unit_exits
        timed = np.bincount(strata, minlength=self.n_exits).astype(np.float64)
        pop = np.where(timed > 0, self.population, 0).astype(np.float64)
        w = np.divide(pop / pop.sum(), timed / timed.sum(), out=np.zeros_like(pop), where=timed > 0)
        out = np.asarray(w[strata])
        return None if np.allclose(out, out[0], rtol=1e-12) else out

    def coverage(self) -> str:
        """How many were timed, for people: ``"232 of 797 requests timed (time bound 10 s)"``."""
        n = self.rows.shape[0]
        if self.batch_size == 1:
            text = f"{n} of {self.n_available} requests timed"
        else:
            text = f"{self.units} batches of {self.batch_size} ({n} of {self.n_available} requests) timed"
        if self.time_bound_s is not None and n < self.n_available:
            text += f" (time bound {self.time_bound_s:g} s)"
        if self.weights is not None:
            text += f", stratified by exit and weighted to the exit shares of all {self.n_available}"
        missing = self.unrepresented_exits
        if missing:
            text += "; not timed at exit " + ", ".join(str(k + 1) for k in missing)
        return text

    # -- figures
    def service_ms(self, side: str, view: str = "fastest") -> np.ndarray:
        """``(U,)`` one latency per unit: its fastest replicate, or its mean replicate for ``raw``."""
        a = self._side(side)
        return np.asarray(a.min(axis=1) if _view(view) == "fastest" else a.mean(axis=1))

    def percentiles_ms(self, side: str, percentiles: Sequence[float], view: str = "fastest") -> np.ndarray:
        """Percentiles of one side's latency, without intervals (weighted like every overall figure)."""
        a = self._side(side)
        w = self.weights
        if _view(view) == "fastest":
            return weighted_percentiles(a.min(axis=1), percentiles, w)
        return weighted_percentiles(a.reshape(-1), percentiles, None if w is None else np.repeat(w, self.repeats))

    def throughput_per_s(self, side: str, view: str = "fastest") -> float:
        """Rows per second: rows timed over the (weighted) time their units took (Offline's figure)."""
        ms = self.service_ms(side, view)
        w = self.weights
        sizes = np.diff(np.append(np.arange(0, self.rows.shape[0], self.batch_size), self.rows.shape[0]))
        if w is None:
            return float(1000.0 * sizes.sum() / ms.sum())
        return float(1000.0 * np.dot(w, sizes) / np.dot(w, ms))

    def summary(self, side: str, view: str = "fastest", exit: int | None = None) -> LatencySummary:
        """:data:`STATISTICS` of one deployment, overall or at one exit, with 95% intervals.

        Raises:
            DyncalError: Unknown side or view, or an exit no timed unit took.
        """
        i = 2 * VIEWS.index(_view(view)) + SIDES.index(_one_of(side, SIDES, "side"))
        values, draws = self._summary_draws(exit)
        lo, hi = centred_interval(draws[:, i, :], values[i])
        units = self.units if exit is None else int(np.sum(self.unit_exits == exit))
        return LatencySummary(
            side,
            view,
            exit,
            units,
            dict(zip(STATISTICS, values[i].tolist(), strict=True)),
            {s: (float(a), float(b)) for s, a, b in zip(STATISTICS, lo, hi, strict=True)},
        )

    def summaries(self) -> list[LatencySummary]:
        """Every summary: both sides, both views, overall and at each exit a timed unit took."""
        groups: list[int | None] = [None, *np.unique(self.unit_exits).tolist()]
        return [self.summary(s, v, g) for v in VIEWS for g in groups for s in SIDES]

    def percentile(self, q: float, side: str = "early_exit", view: str = "fastest") -> IntervalEstimate:
        """The ``q``-th percentile (0-100) of one side's latency, or with ``side="ratio"`` early exit over plain.

        Its three intervals are those of :func:`dyncal.reports.decision.criterion_status`.

        Raises:
            DyncalError: ``q`` outside ``[0, 100]``, or an unknown side or view.
        """
        if not 0.0 <= q <= 100.0:
            raise DyncalError(f"a percentile must lie in [0, 100], got {q:g}")
        j = _PERCENTILE_SIDES.index(_one_of(side, _PERCENTILE_SIDES, "side"))
        view = _view(view)
        key = ("pct", q, view)
        if key not in self._cache:
            point = self._percentiles_of(q, view, self.early_exit_ms, self.plain_ms)
            out = {}
            for name, sampling, timing in (("both", True, True), ("sampling", True, False), ("timing", False, True)):
                draw = self._draw_parts(lambda a, b, v=view: [self._percentiles_of(q, v, a, b)], sampling, timing)
                out[name] = np.concatenate(draw[0])
            self._cache[key] = (point, out)
        point, draws = self._cache[key]
        v = float(point[0, j])

        def iv(a: np.ndarray) -> Interval:
            lo, hi = centred_interval(a[:, j], np.asarray(v))
            return (float(lo), float(hi))

        return IntervalEstimate(v, iv(draws["both"]), iv(draws["sampling"]), iv(draws["timing"]))

    # -- documents
    def to_dict(self, *, summaries: bool = True) -> dict[str, Any]:
        """JSON-ready dict: the raw per-request timings, and (by default) the derived summaries."""
        out: dict[str, Any] = {
            "key": self.key,
            "batch_size": self.batch_size,
            "n_exits": self.n_exits,
            "n_available": self.n_available,
            "time_bound_s": self.time_bound_s,
            "coverage": self.coverage(),
            "bootstrap_draws": self.bootstrap_draws,
            "rows": self.rows.tolist(),
            "exits": self.exits.tolist(),
            "population": None if self.population is None else self.population.tolist(),
            "early_exit_ms": self.early_exit_ms.tolist(),
            "plain_ms": self.plain_ms.tolist(),
        }
        if summaries:
            out["summaries"] = [s.to_dict() for s in self.summaries()]
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], prefix: str = "") -> RequestTimings:
        """Build from :meth:`to_dict` output; derived fields are recomputed, not read.

        Raises:
            dyncal.artifacts.validate.FieldError: A field is missing or malformed (named with ``prefix``).
        """
        key, batch_size = timing_key(d, prefix)
        k = V.required(d, "n_exits", V.integer, prefix, minimum=1)
        rows = V.required(d, "rows", V.integer_list, prefix, minimum=0)
        exits = V.required(d, "exits", V.integer_list, prefix, length=len(rows), minimum=0, maximum=k - 1)
        pop = d.get("population")
        if pop is not None:
            pop = np.asarray(V.integer_list(pop, prefix + "population", length=k, minimum=0))
        try:
            return cls(
                key,
                batch_size,
                np.asarray(rows, dtype=np.int64),
                np.asarray(exits, dtype=np.int64),
                np.asarray(V.required(d, "early_exit_ms", ms_matrix, prefix)),
                np.asarray(V.required(d, "plain_ms", ms_matrix, prefix)),
                n_exits=k,
                population=pop,
                n_available=V.integer(d.get("n_available", len(rows)), prefix + "n_available", minimum=0),
                time_bound_s=V.optional(d.get("time_bound_s"), V.number, prefix + "time_bound_s", positive=True),
            )
        except V.FieldError:
            raise
        except DyncalError as e:
            raise V.FieldError(prefix.rstrip(".") or "timings", str(e).partition(": ")[2] or str(e)) from None

    @classmethod
    def from_batches(
        cls,
        key: str,
        batches: Sequence[Sequence[int] | np.ndarray],
        exits: np.ndarray,
        early_exit_ms: Sequence[Sequence[float]] | np.ndarray,
        plain_ms: Sequence[Sequence[float]] | np.ndarray,
        *,
        n_exits: int,
        all_batches: Sequence[Sequence[int] | np.ndarray] | None = None,
        time_bound_s: float | None = None,
    ) -> RequestTimings:
        """What verify has after timing one batch size: the timed batches and their pairs.

        Args:
            key: ``"<device>/b<batch>"``.
            batches: Run rows of each timed batch, in the order timed (all full but the last).
            exits: ``(n,)`` runtime exit of every replayed row, indexed by run row.
            early_exit_ms: ``(U, R)`` milliseconds, one row per timed batch.
            plain_ms: ``(U, R)`` milliseconds of the plain deployment.
            n_exits: ``K``.
            all_batches: Every batch that could have been timed (default: the timed ones, no
                weighting); their deepest exits are the population of the weights.
            time_bound_s: The time bound in force.

        Example:
            >>> t = RequestTimings.from_batches("cpu/b1", [[2], [0]], np.array([0, 1, 1]), [[1.0]], [[2.0]],
            ...     n_exits=2, all_batches=[[0], [1], [2]])
            Traceback (most recent call last):
            ...
            dyncal.errors.DyncalError: request timings cpu/b1: the rows make 2 units but milliseconds are given for 1
        """
        b = LatencyKey.parse(key).batch_size
        e = np.asarray(exits, dtype=np.int64)
        rows = np.concatenate([np.zeros(0, np.int64), *[np.asarray(x, dtype=np.int64) for x in batches]])
        population = None
        if all_batches is not None:
            deepest = [int(e[np.asarray(x, dtype=np.int64)].max()) for x in all_batches if len(x)]
            population = np.bincount(np.asarray(deepest, dtype=np.int64), minlength=n_exits)
        available = sum(len(x) for x in all_batches) if all_batches is not None else rows.shape[0]
        return cls(
            key,
            b,
            rows,
            e[rows] if rows.size else rows,
            np.asarray(early_exit_ms, dtype=np.float64),
            np.asarray(plain_ms, dtype=np.float64),
            n_exits=n_exits,
            population=population,
            n_available=available,
            time_bound_s=time_bound_s,
        )

    # -- internals
    def _side(self, side: str) -> np.ndarray:
        return self.early_exit_ms if _one_of(side, SIDES, "side") == "early_exit" else self.plain_ms

    def _summary_draws(self, exit: int | None) -> tuple[np.ndarray, np.ndarray]:
        """Point statistics ``(4, 7)`` and draws ``(B, 4, 7)``: (view, side) in :data:`VIEWS` x :data:`SIDES` order.

        One stratified resample serves every group: its columns of exit ``k`` redraw only
        units of exit ``k``, so they are a bootstrap of that exit's group. Every group is
        drawn (and cached) at the first call.
        """
        key = ("summary", exit)
        if key not in self._cache:
            if exit is not None and not np.any(self.unit_exits == exit):
                raise DyncalError(f"no timed unit left at exit {exit + 1} ({self.key}); time more requests")
            self._all_summary_draws()
        return self._cache[key]  # type: ignore[no-any-return]

    def _all_summary_draws(self) -> None:
        """Cache :meth:`_summary_draws` of the overall group and of every exit a timed unit took."""
        order = np.argsort(self.unit_exits, kind="stable")  # each exit's units contiguous: a group is a slice
        strata, w = self.unit_exits[order], self.weights
        w = None if w is None else w[order]
        bounds = np.searchsorted(strata, np.unique(strata), side="left").tolist() + [self.units]
        groups: list[tuple[int | None, slice, np.ndarray | None]] = [(None, slice(0, self.units), w)]
        groups += [(int(strata[lo]), slice(lo, hi), None) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
        stats = group_statistics([(cols, gw) for _, cols, gw in groups])
        points = stats(self.early_exit_ms[order].T[None], self.plain_ms[order].T[None])
        parts = self._draw_parts(stats, True, True, order)
        for (g, _, _), point, draws in zip(groups, points, parts, strict=True):
            self._cache[("summary", g)] = (point[0], np.concatenate(draws))

    def _percentiles_of(self, q: float, view: str, ee: np.ndarray, pl: np.ndarray) -> np.ndarray:
        """``(b, 3)``: the ``q``-th percentile of early exit and plain, and their ratio, per draw."""
        w = self.weights
        a = view_values(ee if ee.ndim == 3 else ee.T[None], view)
        b = view_values(pl if pl.ndim == 3 else pl.T[None], view)
        wv = None if w is None else (w if view == "fastest" else np.tile(w, self.repeats))
        pa = weighted_percentiles(a, [q], wv)[:, 0]
        pb = weighted_percentiles(b, [q], wv)[:, 0]
        return np.column_stack([pa, pb, pa / pb])

    def _draw_parts(
        self, fn: Any, sampling: bool, timing: bool, order: np.ndarray | None = None
    ) -> list[list[np.ndarray]]:
        """``fn(early_exit, plain)`` (a list of results) per chunk of resamples: ``[result][chunk]``.

        A resample redraws the units within their stratum (``sampling``) and each unit's
        pairs (``timing``); chunks bound the replicates held at once. ``fn`` gets ``(b, R,
        U)`` arrays (pairs before units: a unit's fastest is a reduction over a middle axis,
        and the raw view a reshape), units in ``order`` when given. Seeded: the same
        timings give the same draws.
        """
        ee, pl, strata = self.early_exit_ms, self.plain_ms, self.unit_exits
        return resample_parts(ee, pl, strata, self.bootstrap_draws, fn, sampling, timing, order, _SEED)


def _one_of(value: str, choices: Sequence[str], what: str) -> str:
    if value not in choices:
        raise DyncalError(f"{what} must be one of {', '.join(choices)}; got {value!r}")
    return value


def _view(view: str) -> str:
    return _one_of(view, VIEWS, "view")


def _problem(t: RequestTimings) -> str | None:
    """What is inconsistent in a :class:`RequestTimings`, or None."""
    n, ee, pl = t.rows.shape[0], t.early_exit_ms, t.plain_ms
    if t.batch_size < 1 or t.n_exits < 1:
        return f"batch size and exits must be at least 1, got {t.batch_size} and {t.n_exits}"
    if ee.ndim != 2 or ee.shape[0] < 1 or ee.shape[1] < 1:
        return f"early_exit_ms must be (units, repeats) with at least one of each, got shape {ee.shape}"
    if pl.shape != ee.shape:
        return f"plain_ms {pl.shape} and early_exit_ms {ee.shape} are not paired"
    if t.exits.shape[0] != n:
        return f"{n} rows but {t.exits.shape[0]} exits"
    if math.ceil(n / t.batch_size) != ee.shape[0]:
        return f"the rows make {math.ceil(n / t.batch_size)} units but milliseconds are given for {ee.shape[0]}"
    if np.any(t.exits < 0) or np.any(t.exits >= t.n_exits):
        return f"exits must lie in [0, {t.n_exits}), got {t.exits.min()}..{t.exits.max()}"
    for name, a in (("early_exit_ms", ee), ("plain_ms", pl)):
        if not np.all((a >= MIN_MS) & (a <= MAX_MS)):
            return f"{name} must hold milliseconds between {MIN_MS:g} and {MAX_MS:g}"
    if t.population is not None:
        if t.population.shape != (t.n_exits,) or np.any(t.population < 0):
            return f"population must be {t.n_exits} non-negative counts, got {t.population.tolist()}"
        timed = np.bincount(t.unit_exits, minlength=t.n_exits)
        if np.any((timed > 0) & (t.population == 0)):
            return "a timed unit's exit has no unit in the population"
    return None


def timing_key(d: Mapping[str, Any], prefix: str = "") -> tuple[str, int]:
    """A timing's ``key`` (``"<device>/b<batch>"``) and ``batch_size``, which must agree."""
    key = V.required(d, "key", V.string, prefix)
    try:
        parsed = LatencyKey.parse(key)
    except ValueError as e:
        raise V.FieldError(prefix + "key", str(e)) from None
    batch_size = V.required(d, "batch_size", V.integer, prefix, minimum=1)
    if parsed.batch_size != batch_size:
        raise V.FieldError(prefix + "batch_size", f"is {batch_size}, the key says {parsed.batch_size}")
    return key, batch_size


def ms_matrix(value: Any, field: str) -> tuple[tuple[float, ...], ...]:
    """A non-empty list of equally long, non-empty lists of milliseconds (one per unit, or batch, timed)."""
    rows = V.sequence(value, field, min_length=1)
    out = tuple(
        V.number_list(r, f"{field}[{i}]", min_length=1, minimum=MIN_MS, maximum=MAX_MS) for i, r in enumerate(rows)
    )
    if len({len(r) for r in out}) != 1:
        raise V.FieldError(field, "must have the same number of replicates for every unit")
    return out
