"""Figures and the PDF go/no-go report.

* :func:`dyncal.reports.pdf.build_report` — the whole report, with its decision (``pdf``
  assembles it; ``operating`` chooses the operating point (``choice``), ``data`` computes
  what the pages show, ``decision`` judges, ``compare`` weighs other runs against it,
  ``evidence`` holds the cost model, ``text``, ``layout`` and ``pages`` draw it);
* :mod:`dyncal.reports.figures` and :mod:`dyncal.reports.figures_exits` — each figure alone
  (what ``dyncal plot`` exports).

Imports are lazy so that ``import dyncal.reports`` does not pull in matplotlib.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_report", "ReportResult", "Criterion"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from dyncal.reports import pdf

        return getattr(pdf, name)
    raise AttributeError(f"module 'dyncal.reports' has no attribute {name!r}")
