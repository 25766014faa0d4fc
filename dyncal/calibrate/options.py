"""Options of the threshold solver and the frontier: how a run is split and scored, and what to solve.

:class:`PrepareOptions` are those of :func:`~dyncal.calibrate.prepare.prepare_run`;
:class:`SolveOptions` (``dyncal solve``, :func:`~dyncal.calibrate.solvers.solve_run`) and
:class:`FrontierOptions` (``dyncal frontier``, :func:`~dyncal.calibrate.frontier.compute_frontier`)
extend them. Each is frozen and checks its values when built.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from dyncal.choices import DEFAULT_METHOD, DEFAULT_RISK_METHOD, Method, PValue, Score
from dyncal.constraints import check, is_integer
from dyncal.errors import DyncalError, param

if TYPE_CHECKING:
    from dyncal.calibrate.budget import BudgetSpec

__all__ = ["PrepareOptions", "SolveOptions", "FrontierOptions", "MAX_BUDGETS"]

MAX_BUDGETS = 10_000
"""Most budgets one frontier solves (each is a full solve; more is a typo, not a finer curve)."""


def _check_latency_column(device: object, batch_size: int | None) -> None:
    """The options that choose a latency column, each optional: a device name and a batch size."""
    if batch_size is not None:
        check("batch_size", batch_size)
    if device is not None and not isinstance(device, str):
        raise DyncalError(f"{param('device')} must be a string, got {device!r}")


@dataclass(frozen=True, kw_only=True)
class PrepareOptions:
    """How a run is split and scored before solving.

    Attributes:
        score: Confidence score (:class:`~dyncal.choices.Score`; default ``maxprob``).
        temperature: Fit one temperature per exit by NLL on the fit part.
        holdout: Held-out fraction, stratified (0: fit on everything).
        seed: Seed of the split.
    """

    score: Score = Score.MAXPROB
    temperature: bool = False
    holdout: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        """Turn names into members; refuse an unknown score, a holdout, seed or temperature the split refuses."""
        object.__setattr__(self, "score", Score.parse(self.score, "score"))
        check("temperature", self.temperature)
        check("holdout", self.holdout)
        check("seed", self.seed)


@dataclass(frozen=True, kw_only=True)
class SolveOptions(PrepareOptions):
    """What ``dyncal solve`` is asked (see :func:`~dyncal.calibrate.solvers.solve_run`).

    Attributes:
        budget: ``0.6x``, ``1.2GMAC``/``850MMAC`` or ``35ms``; None only with ``max_drop``.
        method: Solver (:class:`~dyncal.choices.Method`). Left out (None), the mode's
            default: :data:`~dyncal.choices.DEFAULT_METHOD` (``optimal``) for a budget,
            :data:`~dyncal.choices.DEFAULT_RISK_METHOD` (``smoothed``) with ``max_drop``;
            :attr:`solver` is the one used.
        device: Latency device for ``ms`` budgets and latency columns.
        batch_size: Latency batch size: which profiled latency column (with ``device``).
        max_drop: Risk control: tolerated drop versus the last exit's accuracy.
        delta: Risk control: allowed probability of a drop above ``max_drop``.
        pvalue: Risk control p-values (:class:`~dyncal.choices.PValue`).
        max_latency_ms: A tail bound, ``p99=2.5``: the predicted percentile of a request's
            latency (profiled batch-1 latency of the exits taken) stays within it on the fit
            samples (:mod:`dyncal.calibrate.tail`); with a budget, not with ``max_drop``.

    Example:
        >>> SolveOptions(budget="0.5x", method="geometric").solver is Method.GEOMETRIC
        True
        >>> SolveOptions(budget="0.5x").solver, SolveOptions(max_drop=0.01).solver
        ('optimal', 'smoothed')
        >>> SolveOptions(budget="0.5x", method="magic")
        Traceback (most recent call last):
        ...
        dyncal.errors.DyncalError: `method` must be one of optimal, smoothed, geometric; got 'magic'
    """

    budget: str | None = None
    method: Method | None = None
    device: str | None = None
    batch_size: int | None = None
    max_drop: float | None = None
    delta: float = 0.05
    pvalue: PValue = PValue.BINOMIAL
    max_latency_ms: str | None = None

    def __post_init__(self) -> None:
        """Check the values; a budget or a risk target is needed."""
        super().__post_init__()
        if self.max_latency_ms is not None:
            from dyncal.calibrate.tail import parse_tail_bound

            parse_tail_bound(self.max_latency_ms, "ms", "max_latency_ms")
            if self.max_drop is not None:
                raise DyncalError(
                    f"{param('max_latency_ms')} constrains a solve at a {param('budget')}, not risk control "
                    f"({param('max_drop')}); leave one out"
                )
        if self.method is not None:
            object.__setattr__(self, "method", Method.parse(self.method, "method"))
        object.__setattr__(self, "pvalue", PValue.parse(self.pvalue, "pvalue"))
        _check_latency_column(self.device, self.batch_size)
        if self.max_drop is not None:
            check("max_drop", self.max_drop)
        check("delta", self.delta)
        if self.budget is None and self.max_drop is None:
            raise DyncalError(f"give a {param('budget')} (e.g. 0.6x) or a risk target {param('max_drop')} (e.g. 0.005)")
        _ = self.budget_spec  # an unreadable budget is refused here, and parsed once

    @property
    def solver(self) -> Method:
        """The method used: ``method``, or the default of the mode (a budget, or risk control)."""
        if self.method is not None:
            return self.method
        return DEFAULT_RISK_METHOD if self.max_drop is not None else DEFAULT_METHOD

    @cached_property
    def budget_spec(self) -> BudgetSpec | None:
        """``budget`` parsed (None without one)."""
        from dyncal.calibrate.budget import parse_budget

        return None if self.budget is None else parse_budget(self.budget)


@dataclass(frozen=True, kw_only=True)
class FrontierOptions(PrepareOptions):
    """What ``dyncal frontier`` is asked (see :func:`~dyncal.calibrate.frontier.compute_frontier`).

    Attributes:
        n_budgets: Budgets from the first exit's cost to the last's (2 to :data:`MAX_BUDGETS`).
        methods: Solvers to run; the default method is added when missing.
        device: Latency device choosing the budget column when the run has no MACs.
        batch_size: Latency batch size: which profiled latency column (with ``device``).

    Example:
        >>> FrontierOptions(methods=("geometric",), n_budgets=5).methods
        ('geometric',)
        >>> FrontierOptions(methods="geometric").methods  # one name is one method
        ('geometric',)
    """

    n_budgets: int = 41
    methods: tuple[Method, ...] = (Method.OPTIMAL, Method.GEOMETRIC)
    device: str | None = None
    batch_size: int | None = None

    def __post_init__(self) -> None:
        """Check the values."""
        super().__post_init__()
        if not is_integer(self.n_budgets) or not 2 <= self.n_budgets <= MAX_BUDGETS:
            raise DyncalError(f"{param('n_budgets')} must be from 2 to {MAX_BUDGETS}, got {self.n_budgets!r}")
        methods = (self.methods,) if isinstance(self.methods, str) else self.methods
        object.__setattr__(self, "methods", tuple(Method.parse(m, "methods") for m in methods))
        _check_latency_column(self.device, self.batch_size)
