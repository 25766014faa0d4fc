"""The report's page frame: A4 pages with a header, a footer and a cursor, its colours and style.

:class:`_Page` lays out text, tables and axes top to bottom on one figure; the pages in
:mod:`dyncal.reports.pages` are written with it. matplotlib is imported only when drawing.

Text is wrapped by its measured width in its font (:func:`wrap_text`), never by a count of
characters: a paragraph stays between the margins, a table cell within its column (a cell
too long wraps onto more lines and its row grows), and a long number or hash is moved to
the next line whole rather than cut.
"""

from __future__ import annotations

import functools
import math
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
REQUESTS_TITLE = "Latency as requests feel it"
SAVINGS_TITLE = "What it saves"
ROBUSTNESS_TITLE = "Robustness under perturbed data"
_GO_COLOR = "#1a7f37"
_NOGO_COLOR = "#c62828"
_AMBER = "#b26a00"
_GREY = "#555555"
LEFT, RIGHT = 0.06, 0.94
"""The page's text margins, as figure fractions."""
_MONO = "DejaVu Sans Mono"
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


@functools.lru_cache(maxsize=65536)
def _width_pt(text: str, size: float, weight: str, family: str | None) -> float:
    """Width of ``text`` in points in the report's font (``family`` None: DejaVu Sans)."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextToPath

    props = FontProperties(family=family or "DejaVu Sans", size=size, weight=weight)
    return float(TextToPath().get_text_width_height_descent(text, props, ismath=False)[0])


def wrap_text(
    text: str, width_in: float, size: float, *, weight: str = "normal", family: str | None = None
) -> list[str]:
    """``text`` in lines no wider than ``width_in`` inches in its font; explicit newlines kept.

    Words are never cut: a word wider than the line (a hash, a long path) takes a line of
    its own, cut at the line's width only when it alone is wider than a line.

    Example:
        >>> wrap_text("a b c", 10.0, 9)
        ['a b c']
        >>> len(wrap_text("word " * 40, 2.0, 9)) > 5
        True
    """
    limit = 72.0 * width_in
    lines: list[str] = []
    for part in text.split("\n"):
        line = ""
        for word in part.split():
            candidate = f"{line} {word}" if line else word
            if not line or _width_pt(candidate, size, weight, family) <= limit:
                line = candidate
                continue
            lines.append(line)
            line = word
        while _width_pt(line, size, weight, family) > limit and len(line) > 1:  # one word wider than a line
            cut = max(1, int(len(line) * limit / _width_pt(line, size, weight, family)))
            lines.append(line[:cut])
            line = line[cut:]
        lines.append(line)
    return lines


def page_titles(data: ReportData) -> tuple[str, ...]:
    """The report's page titles: six, then --compare, verify's requests, --rate's savings, --robustness."""
    return (
        PAGE_TITLES
        + ((COMPARE_TITLE,) if data.alternatives else ())
        + ((REQUESTS_TITLE,) if data.requests else ())
        + ((SAVINGS_TITLE,) if data.savings is not None else ())
        + ((ROBUSTNESS_TITLE,) if data.robustness else ())
    )


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
        header_y = 1 - 0.35 / self.height_in
        pages = len(page_titles(data))
        self.fig.text(LEFT, header_y, data.title, fontsize=8, color=_GREY, va="top")
        self.fig.text(RIGHT, header_y, f"page {number} of {pages}", fontsize=8, color=_GREY, va="top", ha="right")
        run = data.run
        foot = (
            f"run '{run.path.name}' (N={run.n:,}, K={run.k}, C={run.c:,}) · "
            f"created {data.date.strftime('%Y-%m-%d %H:%M UTC')} · dyncal {_version()}"
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
        """Text at the cursor, wrapped between ``indent`` and the right margin (``width`` is ignored)."""
        del width  # kept for callers: lines are measured in the font, not counted in characters
        lines = wrap_text(text, (RIGHT - indent) * self.width_in, size, weight=weight, family=family)
        for line in lines:
            self.skip(size / 72 * 1.35)
            self.fig.text(indent, self.y, line, fontsize=size, color=color, va="baseline", weight=weight, family=family)

    def rows(
        self, items: Sequence[tuple[str, str]], *, value_x: float = 0.3, size: float = 9, mono: Sequence[str] = ()
    ) -> None:
        """Label and value pairs at the cursor, each value wrapped whole between ``value_x`` and the margin.

        Labels named in ``mono`` have their value in a monospaced font (hashes, commands).
        """
        for label, value in items:
            self.skip(size / 72 * 1.45)
            self.fig.text(LEFT, self.y, label, fontsize=size, color=_GREY, va="baseline")
            family = _MONO if label in mono else None
            v_size = size - 0.5 if family else size
            for j, line in enumerate(wrap_text(value, (RIGHT - value_x) * self.width_in, v_size, family=family)):
                if j:
                    self.skip(size / 72 * 1.35)
                self.fig.text(value_x, self.y, line, fontsize=v_size, va="baseline", family=family)

    def note(self, text: str, size: float = 8, width: int = 100) -> None:
        """A grey footnote: what the numbers above are and how they were made."""
        self.para(text, size=size, width=width, color=_GREY)

    def axes(self, height_in: float, left: float = 0.12, right: float = 0.94, gap_in: float = 0.15) -> Any:
        """New axes below the cursor, ``height_in`` tall (room left for tick labels): a grid of one."""
        return self.grid(1, 1, height_in, gap_in=gap_in, left=left, right=right)[0]

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
            for c in range(min(cols, n - len(out))):
                out.append(self.fig.add_axes((left + c * (width + hgap), bottom, width, panel_h_in / self.height_in)))
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
        """A simple ruled table at the cursor; ``col_widths`` are figure fractions.

        Columns wider in all than the page's margins allow are narrowed in proportion; a cell
        wider than its column wraps within it and its row grows.
        """
        line_h = size / 72 * 1.6
        wrap_h = size / 72 * 1.25
        scale = min(1.0, (RIGHT - left) / sum(col_widths))
        widths = [w * scale for w in col_widths]
        xs = [left + sum(widths[:i]) for i in range(len(widths))]
        right = left + sum(widths)

        def cells(row: Sequence[str], weights: Sequence[str]) -> list[list[str]]:
            return [
                wrap_text(str(c), (w - 0.012) * self.width_in, size, weight=wt)
                for c, w, wt in zip(row, widths, weights, strict=True)
            ]

        def draw(lines: list[list[str]], styles: Sequence[dict[str, Any]]) -> None:
            self.skip(line_h)
            for depth in range(max(map(len, lines))):
                if depth:
                    self.skip(wrap_h)
                for x, cell, style in zip(xs, lines, styles, strict=True):
                    if depth < len(cell):
                        self.fig.text(x + 0.005, self.y, cell[depth], fontsize=size, va="baseline", **style)

        bold = {"weight": "bold"}
        draw(cells(header, ["bold"] * len(header)), [bold] * len(header))
        self.fig.add_artist(_rule(self.fig, self.y - 0.3 * line_h / self.height_in, left, right, lw=0.8))
        for i, row in enumerate(rows):
            color = row_colors[i] if row_colors is not None else None
            styles: list[dict[str, Any]] = [{} for _ in row]
            if color is not None:
                styles[-1] = {"color": color, "weight": "bold"}
            draw(cells(row, [st.get("weight", "normal") for st in styles]), styles)
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
