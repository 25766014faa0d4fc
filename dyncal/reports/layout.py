"""The report's page frame: A4 pages with a header, a footer and a cursor, its colours and style.

:class:`_Page` lays out text, tables and axes top to bottom on one figure; the pages in
:mod:`dyncal.reports.pages` are written with it. matplotlib is imported only when drawing.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dyncal.reports.decision import INCONCLUSIVE, PASS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from dyncal.reports.data import ReportData

A4_INCHES = (8.27, 11.69)
PAGE_TITLES = (
    "Decision",
    "Accuracy vs MACs",
    "Accuracy vs latency",
    "Exits at the operating point",
    "Calibration",
    "Thresholds and provenance",
)
COMPARE_TITLE = "Against other models"
ROBUSTNESS_TITLE = "Robustness under perturbed data"
_GO_COLOR = "#1a7f37"
_NOGO_COLOR = "#c62828"
_AMBER = "#b26a00"
_GREY = "#555555"
_RC: dict[str, Any] = {
    "pdf.fonttype": 42,
    "pdf.compression": 9,
    "font.family": "DejaVu Sans",
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "svg.hashsalt": "dyncal",
}


def page_titles(data: ReportData) -> tuple[str, ...]:
    """The report's page titles: six, and a seventh with the other models (--compare)."""
    robustness = (ROBUSTNESS_TITLE,) if data.robustness else ()
    return PAGE_TITLES + ((COMPARE_TITLE,) if data.alternatives else ()) + robustness


def _status_color(status: str | None) -> str:
    return {PASS: _GO_COLOR, "GO": _GO_COLOR, INCONCLUSIVE: _AMBER, "INCONCLUSIVE": _AMBER}.get(
        str(status), _NOGO_COLOR
    )


class _Page:
    """One A4 page: header, footer and a cursor for flowing text (figure coordinates)."""

    def __init__(self, data: ReportData, number: int, heading: str) -> None:
        from matplotlib.figure import Figure

        self.fig: Figure = Figure(figsize=A4_INCHES)
        self.fig.patch.set_facecolor("white")
        self.width_in, self.height_in = A4_INCHES
        self.y = 1.0 - 0.55 / self.height_in
        self.fig.text(0.06, 1 - 0.35 / self.height_in, data.title, fontsize=8, color=_GREY, va="top")
        self.fig.text(
            0.94,
            1 - 0.35 / self.height_in,
            f"page {number} of {len(page_titles(data))}",
            fontsize=8,
            color=_GREY,
            va="top",
            ha="right",
        )
        run = data.run
        foot = (
            f"run {run.path.name}: N={run.n:,}, K={run.k}, C={run.c:,} · "
            f"run created {data.date.strftime('%Y-%m-%d %H:%M UTC')} · dyncal {_version()}"
        )
        self.fig.text(0.06, 0.3 / self.height_in, foot, fontsize=7, color=_GREY)
        self.fig.add_artist(_rule(self.fig, 1 - 0.45 / self.height_in))
        self.heading(heading, size=16)

    def skip(self, inches: float) -> None:
        """Move the cursor down."""
        self.y -= inches / self.height_in

    def heading(self, text: str, size: float = 12) -> None:
        """A bold heading at the cursor."""
        self.skip(size / 72 * 1.5)
        self.fig.text(0.06, self.y, text, fontsize=size, weight="bold", va="baseline")
        self.skip(size / 72 * 0.6)

    def para(
        self,
        text: str,
        size: float = 9.5,
        width: int = 100,
        color: str = "black",
        family: str | None = None,
        indent: float = 0.06,
        weight: str = "normal",
    ) -> None:
        """Wrapped text at the cursor."""
        lines = []
        for part in text.split("\n"):
            lines.extend(textwrap.wrap(part, width=width, break_on_hyphens=False) or [""])
        for line in lines:
            self.skip(size / 72 * 1.35)
            kw: dict[str, Any] = {
                "fontsize": size,
                "color": color,
                "va": "baseline",
                "weight": weight,
            }
            if family:
                kw["family"] = family
            self.fig.text(indent, self.y, line, **kw)

    def note(self, text: str, size: float = 8, width: int = 100) -> None:
        """A grey footnote: what the numbers above are and how they were made."""
        self.para(text, size=size, width=width, color=_GREY)

    def axes(self, height_in: float, left: float = 0.12, right: float = 0.94, gap_in: float = 0.15) -> Any:
        """New axes below the cursor, ``height_in`` tall (room left for tick labels)."""
        self.skip(gap_in)
        bottom = self.y - height_in / self.height_in
        ax = self.fig.add_axes((left, bottom, right - left, height_in / self.height_in))
        self.y = bottom
        return ax

    def grid(
        self,
        n: int,
        cols: int,
        panel_h_in: float,
        *,
        gap_in: float = 0.2,
        square: bool = False,
        left: float = 0.12,
        right: float = 0.94,
        hgap: float = 0.07,
    ) -> list[Any]:
        """``n`` axes in rows of ``cols`` below the cursor, each ``panel_h_in`` tall."""
        rows = math.ceil(n / cols)
        width = (right - left - hgap * (cols - 1)) / cols
        if square:
            width = min(width, panel_h_in / self.width_in)
            left = 0.5 - (cols * width + hgap * (cols - 1)) / 2 + 0.02
        out: list[Any] = []
        self.skip(gap_in)
        for r in range(rows):
            bottom = self.y - panel_h_in / self.height_in
            for c in range(cols):
                if len(out) < n:
                    out.append(
                        self.fig.add_axes((left + c * (width + hgap), bottom, width, panel_h_in / self.height_in))
                    )
            self.y = bottom
            if r < rows - 1:
                self.skip(0.8)
        return out

    def table(
        self,
        header: Sequence[str],
        rows: Sequence[Sequence[str]],
        *,
        col_widths: Sequence[float],
        size: float = 9,
        row_colors: Sequence[str | None] | None = None,
        left: float = 0.06,
    ) -> None:
        """A simple ruled table at the cursor; ``col_widths`` are figure fractions."""
        line_h = size / 72 * 1.6
        xs = [left + sum(col_widths[:i]) for i in range(len(col_widths))]
        right = left + sum(col_widths)
        self.skip(line_h)
        for x, h in zip(xs, header, strict=True):
            self.fig.text(x + 0.005, self.y, h, fontsize=size, weight="bold", va="baseline")
        self.fig.add_artist(_rule(self.fig, self.y - 0.3 * line_h / self.height_in, left, right, lw=0.8))
        for i, row in enumerate(rows):
            self.skip(line_h)
            color = row_colors[i] if row_colors is not None else None
            for j, (x, cell) in enumerate(zip(xs, row, strict=True)):
                kw: dict[str, Any] = {"fontsize": size, "va": "baseline"}
                if color is not None and j == len(row) - 1:
                    kw.update(color=color, weight="bold")
                self.fig.text(x + 0.005, self.y, cell, **kw)
        self.fig.add_artist(_rule(self.fig, self.y - 0.45 * line_h / self.height_in, left, right, lw=0.8))
        self.skip(0.45 * line_h)


def _style() -> Any:
    """The report's matplotlib settings, as a context manager."""
    import matplotlib

    return matplotlib.rc_context(_RC)  # type: ignore[arg-type]


def _rule(fig: Figure, y: float, x0: float = 0.06, x1: float = 0.94, lw: float = 0.5) -> Any:
    from matplotlib.lines import Line2D

    return Line2D([x0, x1], [y, y], transform=fig.transFigure, color="#999999", lw=lw)


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("dyncal")
    except metadata.PackageNotFoundError:
        return "(dev)"
