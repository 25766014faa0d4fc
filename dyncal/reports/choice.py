"""The operating point a report stands on, and how it was reached: what every page, figure and comparison shares.

:func:`dyncal.reports.operating.choose_operating_point` makes an :class:`OperatingChoice`;
:class:`dyncal.reports.data.ReportData` adds the evidence, the verdict and the calibration to
it; :mod:`dyncal.reports.compare` judges other runs against it. numpy only.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dyncal.reports.figures import MS_PREFIX, OperatingPoint
from dyncal.reports.text import pct, pts

if TYPE_CHECKING:
    import pandas as pd

    from dyncal.artifacts.run import Run
    from dyncal.artifacts.verify import VerifyResult
    from dyncal.calibrate.prepare import PreparedRun
    from dyncal.reports.decision import ExitOutcome, Requirements

__all__ = ["BudgetSource", "OperatingChoice", "DEFAULT_MAX_DROP"]

DEFAULT_MAX_DROP = 0.01
"""Without a budget or criteria: the cheapest budget whose fitted accuracy is this close to the last exit's."""


class BudgetSource(enum.Enum):
    """Where the operating point's budget came from (``budget_reason`` says it for people).

    Example:
        >>> BudgetSource("asked") is BudgetSource.ASKED
        True
    """

    ASKED = "asked"
    """Given as ``budget``."""
    CHOSEN = "chosen"
    """Chosen on the fitting half: from the criteria, or the default rule without any."""
    THRESHOLDS = "thresholds"
    """Read with the thresholds of a ``thresholds.json`` (``thresholds``)."""


@dataclass(frozen=True, kw_only=True)
class OperatingChoice:
    """The operating point and how it was reached: what every page and every figure shares.

    :func:`dyncal.reports.data.prepare_report` adds the evidence, the verdict and the
    calibration to it; ``dyncal plot`` draws from it alone.

    Attributes:
        run: The run.
        prep: The run scored and split once (the frontier, the solve and the held-out rows share it).
        frontier: The long-format frontier table, or None when not computed.
        thresholds: The operating point's ``thresholds.json`` document.
        fingerprint: The thresholds' decision fingerprint (what a verify result must match).
        budget: The budget solved for.
        budget_source: Where the budget came from.
        budget_reason: Why that budget, for people (the report JSON's ``budget_reason``).
        requirements: The criteria asked.
        outcome: Per-sample outcome on the judged (held-out) rows.
        accuracy: Accuracy of the operating point on the judged rows.
        accuracy_interval: Its 95% interval (None when nothing was held out).
        fit_costs: Expected cost per cost name on the fitting half (where the curves are drawn).
        speedup_cost: Cost name the speed-up criterion is judged on (``"macs"`` or a latency key).
        latency_key: The latency key asked or implied, or None (MACs).
        thresholds_path: The thresholds file reported (``thresholds``), or None when solved here.
        title: Report title.
        notes: One-line notes shown on page 1, in the JSON and on the terminal.
        verify: The verify result given as evidence, or None.
        verify_label: Where it came from (a path), for people.

    Example:
        >>> choice = choose_operating_point("run", ReportOptions(budget="0.5x"))  # doctest: +SKIP
        >>> choice.budget_source, choice.legend_label()  # doctest: +SKIP
        (<BudgetSource.ASKED: 'asked'>, 'operating point (budget 0.5x)')
    """

    run: Run
    prep: PreparedRun
    frontier: pd.DataFrame | None
    thresholds: dict[str, Any]
    fingerprint: str
    budget: str
    budget_source: BudgetSource
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

    @property
    def k(self) -> int:
        """Number of exits."""
        return self.run.k

    @property
    def short_budget(self) -> str:
        """The budget as asked, or a chosen one rounded for people."""
        from dyncal.calibrate.budget import format_budget

        frac = (self.thresholds.get("budget") or {}).get("fraction")
        if frac is None or self.budget_source is BudgetSource.ASKED:
            return self.budget
        return format_budget(float(frac), "fraction")

    @property
    def budget_label(self) -> str:
        """The budget for people: short form and share of the last exit's cost."""
        b = self.thresholds.get("budget") or {}
        frac = b.get("fraction")
        unit = str(b.get("unit") or "macs")
        what = "MACs" if unit == "macs" else f"latency on {unit.removeprefix(MS_PREFIX)}"
        if frac is None:
            return self.budget
        return f"{self.short_budget} ({pct(float(frac), 1)} of the last exit's {what})"

    def legend_label(self) -> str:
        """The operating point for a legend: which budget, and why when it was not asked."""
        short = self.budget_label.split(" (")[0]
        if self.budget_source is BudgetSource.THRESHOLDS:
            assert self.thresholds_path is not None
            return f"operating point ({Path(self.thresholds_path).name}, budget {short})"
        if self.budget_source is BudgetSource.ASKED:
            return f"operating point (budget {short})"
        if self.requirements.any:
            return f"operating point (budget {short}, chosen from the criteria)"
        return (
            f"operating point (budget {short}: the cheapest\nwithin {pts(DEFAULT_MAX_DROP)} of the last exit's "
            "accuracy;\nset it with --budget)"
        )

    def operating_point(self, label: str | None = None) -> OperatingPoint:
        """The operating point as the figures mark it (fitting-half costs, like the curves)."""
        return OperatingPoint(
            expected_macs=self.fit_costs.get("macs"),
            accuracy=self.accuracy,
            interval=self.accuracy_interval,
            expected_ms={k: v for k, v in self.fit_costs.items() if k != "macs"},
            label=label or f"operating point (budget {self.budget_label.split(' (')[0]})",
        )

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
