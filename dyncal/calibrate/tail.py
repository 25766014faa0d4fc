"""The tail in the solve: thresholds that keep a latency percentile under a bound.

Design. A request that leaves at exit k costs ``L_k`` milliseconds at batch 1 (the
profiled cumulative latency of exits 1..k, heads included). On the fit samples, the
predicted latency distribution is therefore ``L[exit(n)]`` and its p-th percentile
(:func:`predicted_percentile_ms`, numpy's linear rule) depends only on how many samples
leave at the *slow* exits, those with ``L_k > bound``: the percentile is within the bound
exactly when numpy's linear rule reads only fast samples, i.e. when at most
:func:`max_slow_count` samples leave at slow exits (the ideal statement "the share at
slow exits is at most ``1 - p``", made exact for a finite sample: numpy reads the order
statistics around ``(n - 1) p``, and both it reads must be fast).

That is a second linear constraint on the exit assignment beside the mean budget, a cap
on the count at a set of exits (:class:`~dyncal.calibrate.problem.ExitCap`). Moving one
threshold changes the capped count by a prefix sum over the samples reaching that exit,
exactly like the cost, so the solver's exact one-threshold updates keep both constraints
(:meth:`~dyncal.calibrate.problem.ExitProblem.budget_update`) and
:func:`~dyncal.calibrate.search.solve_at` runs unchanged on a capped problem: every
answer it returns meets the budget and the tail bound on the fit data. The slow exits
are a set, not necessarily a suffix: a profile whose latency is not monotone in the exit
still gets the right constraint.

Where it is used: ``solve --max-latency-ms p99=2.5`` (``SolveOptions.max_latency_ms``):
:func:`run_tail_constraint` reads the bound on the run's profiled batch-1 latency column,
:func:`~dyncal.calibrate.solvers.solve_run` solves with :func:`solve_with_tail`, and the
thresholds document records :func:`tail_document` under ``budget.tail``. :class:`TailBound`
and :func:`parse_tail_bound` (the bound as users write it) live here so that both ``solve``
and the report's criteria (:mod:`dyncal.reports.tail`) read it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dyncal.artifacts.fields import JsonFields
from dyncal.calibrate.problem import ExitCap, ExitProblem, Solution
from dyncal.calibrate.search import solve_at
from dyncal.errors import BudgetError, DyncalError, param

__all__ = [
    "FORMS",
    "TailBound",
    "parse_tail_bound",
    "TailConstraint",
    "predicted_percentile_ms",
    "max_slow_count",
    "capped_problem",
    "solve_with_tail",
    "run_tail_constraint",
    "tail_document",
]


FORMS = ("ms", "ratio")
"""``ms``: a bound in milliseconds; ``ratio``: a factor over the plain deployment's percentile."""
_SPEC = re.compile(r"^\s*(?:p(?P<p>\d+(?:\.\d+)?)|(?P<max>max))\s*=\s*(?P<v>[^\s=]+?)\s*(?P<unit>ms|x)?\s*$", re.I)


@dataclass(frozen=True)
class TailBound(JsonFields):
    """A bound on one percentile of request latency.

    Attributes:
        percentile: In ``(0, 100]`` (100 is the maximum).
        bound: Milliseconds (``form="ms"``) or a factor over the plain deployment (``"ratio"``).
        form: ``"ms"`` or ``"ratio"``.

    Example:
        >>> b = TailBound(99.0, 2.5)
        >>> b.name, b.label, b.text
        ('latency_p99_ms', 'p99', 'p99=2.5ms')
    """

    percentile: float
    bound: float
    form: str = "ms"

    def __post_init__(self) -> None:
        if self.form not in FORMS:
            raise DyncalError(f"a tail bound's form must be one of {', '.join(FORMS)}, got {self.form!r}")
        if not (0.0 < self.percentile <= 100.0):
            raise DyncalError(f"a tail percentile must lie in (0, 100], got {self.percentile:g}")
        if not (math.isfinite(self.bound) and self.bound > 0):
            raise DyncalError(f"a tail bound must be a positive number, got {self.bound:g}")

    @property
    def label(self) -> str:
        """``"p99"``, ``"p99.9"`` or ``"max"``."""
        return "max" if self.percentile == 100.0 else f"p{self.percentile:g}"

    @property
    def name(self) -> str:
        """The criterion's name: ``latency_p99_ms``, ``latency_p99_ratio``."""
        return f"latency_{self.label}_{self.form}"

    @property
    def text(self) -> str:
        """As a user writes it: ``p99=2.5ms`` or ``p99=1.2x``."""
        return f"{self.label}={self.bound:g}{'ms' if self.form == 'ms' else 'x'}"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TailBound:
        """Build from :meth:`to_dict` output.

        Raises:
            DyncalError: A missing or malformed field.
        """
        try:
            return cls(float(d["percentile"]), float(d["bound"]), str(d.get("form", "ms")))
        except (KeyError, TypeError, ValueError) as e:
            raise DyncalError(f"a tail bound needs 'percentile', 'bound' and 'form', got {dict(d)!r:.80}") from e


def parse_tail_bound(text: str, form: str = "ms", name: str = "max_latency_ms") -> TailBound:
    """Read ``p99=2.5`` (any percentile ``p<q>`` with ``0 < q <= 100``, or ``max``).

    Args:
        text: What the user wrote; ``ms`` may follow a bound in milliseconds, ``x`` a factor.
        form: ``"ms"`` or ``"ratio"`` (the option it came with says which).
        name: The parameter, for the message.

    Raises:
        DyncalError: Not of that form, a percentile out of range, a bound that is not a
            positive number, or a unit that does not fit the form.

    Example:
        >>> parse_tail_bound("p99=2.5")
        TailBound(percentile=99.0, bound=2.5, form='ms')
        >>> parse_tail_bound("p99.9 = 1.2x", "ratio").text
        'p99.9=1.2x'
    """
    what = "a bound in ms" if form == "ms" else "a factor over the plain deployment's"
    example = "p99=2.5" if form == "ms" else "p99=1.2"
    m = _SPEC.match(str(text))
    unit_ok = m is not None and (m["unit"] is None or m["unit"].lower() == ("ms" if form == "ms" else "x"))
    value = _number(m["v"]) if m is not None else None
    if m is None or not unit_ok or value is None:
        raise DyncalError(
            f"{param(name)} must look like {example} (a percentile p1..p100 or max, '=', {what}), got {text!r:.60}"
        )
    pct = 100.0 if m["max"] else float(m["p"])
    if not 0.0 < pct <= 100.0:
        raise DyncalError(f"{param(name)}: the percentile must lie in (0, 100], got p{m['p']} in {text!r:.60}")
    if not (math.isfinite(value) and value > 0):
        raise DyncalError(f"{param(name)}: the bound must be a positive number, got {m['v']!r:.30} in {text!r:.60}")
    return TailBound(pct, value, form)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class TailConstraint:
    """The predicted ``percentile``-th latency of a request must stay within ``bound_ms``.

    Attributes:
        percentile: In ``(0, 100]`` (100: the slowest request).
        bound_ms: The bound in milliseconds.
        per_exit_ms: ``K`` latencies of a request leaving at each exit (cumulative, batch 1).

    Example:
        >>> c = TailConstraint(99.0, 2.0, (1.0, 1.5, 3.0))
        >>> c.slow_exits.tolist(), c.max_slow(1000)
        ([False, False, True], 9)
    """

    percentile: float
    bound_ms: float
    per_exit_ms: tuple[float, ...]

    def __post_init__(self) -> None:
        TailBound(self.percentile, self.bound_ms)  # a percentile and a bound in ms, by the same rules
        ms = np.asarray(self.per_exit_ms, dtype=np.float64)
        if ms.ndim != 1 or ms.shape[0] < 2 or not np.all(np.isfinite(ms)) or np.any(ms <= 0):
            raise DyncalError(f"per-exit latency must be K >= 2 positive ms, got {list(self.per_exit_ms)}")

    @property
    def slow_exits(self) -> np.ndarray:
        """``(K,)`` whether a request leaving at each exit takes longer than the bound."""
        return np.asarray(self.per_exit_ms, dtype=np.float64) > self.bound_ms

    def max_slow(self, n: int) -> int:
        """Most of ``n`` fit samples that may leave at slow exits (:func:`max_slow_count`)."""
        return max_slow_count(n, self.percentile)

    def cap(self, n: int) -> ExitCap:
        """The constraint on ``n`` fit samples as a cap on the slow exits."""
        return ExitCap(tuple(bool(v) for v in self.slow_exits), self.max_slow(n))


def predicted_percentile_ms(exits: np.ndarray, per_exit_ms: Sequence[float], percentile: float) -> float:
    """The ``percentile``-th latency of requests leaving at ``exits`` (numpy's linear rule).

    Example:
        >>> predicted_percentile_ms(np.array([0] * 99 + [1]), [1.0, 3.0], 90.0)
        1.0
        >>> round(predicted_percentile_ms(np.array([0] * 99 + [1]), [1.0, 3.0], 99.0), 4)  # reads the slow one
        1.02
    """
    if np.asarray(exits).size == 0:
        raise DyncalError("a predicted percentile needs at least one sample")
    return float(np.percentile(np.asarray(per_exit_ms, dtype=np.float64)[np.asarray(exits)], percentile))


def max_slow_count(n: int, percentile: float) -> int:
    """Most of ``n`` samples that may be slow with their ``percentile``-th value still fast.

    ``np.percentile`` (linear rule) reads the sorted values at ``floor(h)`` and, when
    ``h`` has a fractional part, at ``floor(h) + 1``, with ``h = (n - 1) p`` computed as
    numpy computes it; the count is chosen so that both are fast samples.

    Example:
        >>> max_slow_count(100, 99.0), max_slow_count(101, 99.0), max_slow_count(100, 100.0)
        (0, 1, 0)
        >>> max_slow_count(1000, 90.0)
        99
    """
    if n < 1:
        raise DyncalError(f"a tail constraint needs fit samples, got {n}")
    h = float((n - 1) * np.true_divide(percentile, 100))  # numpy's virtual index for the linear rule
    low = math.floor(h)
    read = min(n - 1, low + 1 if h > low else low)  # the last sorted position numpy reads
    return n - (read + 1)


def capped_problem(problem: ExitProblem, constraint: TailConstraint) -> ExitProblem:
    """The same fit samples with the tail constraint as a cap on the slow exits.

    Raises:
        BudgetError: The bound is below exit 1's latency (no thresholds can meet it), or
            the constraint has another number of exits.
    """
    ms = np.asarray(constraint.per_exit_ms, dtype=np.float64)
    if ms.shape[0] != problem.k:
        raise DyncalError(f"the tail constraint has {ms.shape[0]} per-exit latencies for {problem.k} exits")
    if constraint.slow_exits[0]:
        raise BudgetError(
            f"a p{constraint.percentile:g} bound of {constraint.bound_ms:g} ms is below exit 1's latency "
            f"{ms[0]:.4g} ms: no thresholds can meet it; raise the bound to at least {ms[0]:.4g} ms"
        )
    return problem.with_cap(constraint.cap(problem.n))


def solve_with_tail(
    problem: ExitProblem, budget: float, method: str, constraint: TailConstraint, n_budgets: int = 41
) -> Solution | None:
    """The most accurate thresholds within ``budget`` whose predicted tail meets ``constraint``.

    Args:
        problem: The fit samples (uncapped, as :func:`~dyncal.calibrate.search.problem_for` makes them).
        budget: Mean-cost budget in the unit of ``problem.costs``.
        method: ``optimal``, ``smoothed`` or ``geometric``.
        constraint: The tail bound and the per-exit latency it is predicted from.
        n_budgets: The frontier grid :func:`~dyncal.calibrate.search.solve_at` walks.

    Returns:
        The solution (its ``capped`` samples at slow exits within the cap), or None when
        the method has none (``geometric`` near exit 1's cost).

    Raises:
        BudgetError: The bound is below exit 1's latency.

    Example:
        >>> s = np.array([[0.9, 0.5], [0.8, 0.5], [0.3, 0.5], [0.2, 0.5]])
        >>> ok = np.array([[1, 1], [1, 1], [0, 1], [0, 1]], bool)
        >>> p = ExitProblem(s, ok.astype(float), [1.0, 3.0])
        >>> sol = solve_with_tail(p, 3.0, "optimal", TailConstraint(50.0, 2.0, (1.0, 3.0)))
        >>> sol.gain, sol.capped  # at most one of four may take 3 ms for the median to stay within 2 ms
        (0.75, 1)
    """
    return solve_at(capped_problem(problem, constraint), budget, method, n_budgets)


def run_tail_constraint(
    units: Mapping[str, Sequence[float]], text: str, device: str | None = None
) -> tuple[TailConstraint, str]:
    """The constraint ``max_latency_ms`` (``p99=2.5``) asks of a run: its bound on the profiled batch-1 latency.

    Args:
        units: The run's cost columns (:func:`dyncal.calibrate.budget.cost_units`).
        text: What the user wrote.
        device: The latency device asked (default: the one profiled at batch 1).

    Returns:
        The constraint and the latency column it reads (``ms:cpu/b1``).

    Raises:
        DyncalError: A malformed bound, or no latency profiled at batch 1 (the latency of one request).

    Example:
        >>> c, column = run_tail_constraint({"macs": (1.0, 2.0), "ms:cpu/b1": (0.5, 1.5)}, "p99=1")
        >>> column, c.slow_exits.tolist()
        ('ms:cpu/b1', [False, True])
    """
    from dyncal.calibrate.budget import pick_latency

    bound = parse_tail_bound(text, "ms", "max_latency_ms")
    try:
        column = pick_latency({k: tuple(v) for k, v in units.items()}, device, 1)
    except BudgetError as e:
        raise BudgetError(
            f"{param('max_latency_ms')} bounds the latency of one request, so it needs batch 1: {e}"
        ) from None
    return TailConstraint(bound.percentile, bound.bound, tuple(float(v) for v in units[column])), column


def tail_document(
    fit_scores: np.ndarray,
    held_scores: np.ndarray,
    thresholds: Sequence[float | None],
    constraint: TailConstraint,
    column: str,
) -> dict[str, Any]:
    """The tail bound a solve kept, for the thresholds document: what was asked and the percentile predicted.

    ``fit_ms`` is within ``bound_ms`` by construction; ``holdout_ms`` (None without a
    held-out part) is the honest figure, which may exceed it.
    """
    from dyncal.artifacts.thresholds import thresholds_from_json
    from dyncal.calibrate.policy import assign_exits

    t = thresholds_from_json(list(thresholds))

    def predicted(scores: np.ndarray) -> float | None:
        if not scores.shape[0]:
            return None
        return predicted_percentile_ms(assign_exits(scores, t), constraint.per_exit_ms, constraint.percentile)

    return {
        "asked": f"{TailBound(constraint.percentile, constraint.bound_ms).label}={constraint.bound_ms:g}",
        "percentile": constraint.percentile,
        "bound_ms": constraint.bound_ms,
        "latency": column.split(":", 1)[1],
        "slow_exits": [k + 1 for k in np.flatnonzero(constraint.slow_exits).tolist()],
        "fit_ms": predicted(fit_scores),
        "holdout_ms": predicted(held_scores),
    }
