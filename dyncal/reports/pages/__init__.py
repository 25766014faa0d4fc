"""The pages of the report, each drawn from a :class:`dyncal.reports.data.ReportData`.

1. Decision: GO / NO-GO / INCONCLUSIVE (timing noise alone decides a latency criterion),
   or the trade-off when no criterion is given; the criteria with their 95% intervals, the
   operating point and the speed-up against the full model (:mod:`.decision`).
2. Accuracy against MACs: every method's frontier, the static exits, the oracle bound.
3. Accuracy against latency, one panel per profiled device and batch size (or a page that
   says none was profiled and how to measure it) (:mod:`.curves`).
4. Exits at the operating point.
5. Calibration: per-exit accuracy, confidence, ECE and reliability diagrams.
6. Thresholds and provenance.
7. With ``compare``: the other models against the operating point (:mod:`.details`).
8. With a verify result that stores its timed requests: latency as requests feel it, the
   distribution (CDF) of early exit vs the plain deployment and by exit (:mod:`.requests`).
9. With ``rate``: what early exit saves, MLPerf's scenarios, cores and core-hours (:mod:`.requests`).
10. With ``robustness``: the thresholds on perturbed runs of the same model (:mod:`.robustness`).

Each page function takes the report's data and returns one A4 figure; nothing here computes
accuracies or thresholds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from dyncal.reports.pages.curves import _page_frontier, _page_latency
from dyncal.reports.pages.decision import _page_decision
from dyncal.reports.pages.details import _page_calibration, _page_compare, _page_exits, _page_provenance
from dyncal.reports.pages.requests import _page_requests, _page_savings
from dyncal.reports.pages.robustness import _page_robustness

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from dyncal.reports.data import ReportData

__all__ = ["report_pages"]


def report_pages(data: ReportData) -> tuple[Callable[[ReportData], Figure], ...]:
    """The functions that draw the report's pages, in order: six, and a seventh with other models.

    Example:
        >>> [draw.__name__ for draw in report_pages(prepare_report("run"))][:2]  # doctest: +SKIP
        ['_page_decision', '_page_frontier']
    """
    pages: tuple[Callable[[ReportData], Figure], ...] = (
        _page_decision,
        _page_frontier,
        _page_latency,
        _page_exits,
        _page_calibration,
        _page_provenance,
    )
    pages += (_page_compare,) if data.alternatives else ()
    pages += (_page_requests,) if data.requests else ()
    pages += (_page_savings,) if data.savings is not None else ()
    return pages + ((_page_robustness,) if data.robustness else ())
