"""Figures of a report, each usable alone (``dyncal plot``) or on a PDF page.

Every function draws on a :class:`matplotlib.figure.Figure` (never pyplot's global
state), takes ``ax=None`` (single panel) or ``fig=None`` (several panels) and returns the
figure. Numbers come in as a frontier :class:`pandas.DataFrame` (the long format of
:func:`dyncal.calibrate.frontier.compute_frontier`) or as plain arrays; nothing here
computes accuracies or thresholds.

Frontier columns read here: ``method`` (``"optimal"``, ``"geometric"``, ``"oracle"``,
``"static"``, or another solver's name), ``exit`` (static rows), ``holdout_accuracy``,
``holdout_ci_low``, ``holdout_ci_high``, ``fitted_accuracy``, ``expected_macs`` and one
``ms:<device>/b<batch>`` column per profiled latency key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from dyncal.artifacts.costs import LatencyKey
from dyncal.errors import DyncalError

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


__all__ = [
    "OperatingPoint",
    "ComparedModel",
    "latency_keys",
    "main_method_of",
    "format_ms",
    "plot_frontier",
    "plot_latency",
]

MS_PREFIX = LatencyKey.PREFIX
_STYLE: dict[str, dict[str, Any]] = {
    "smoothed": {"color": "#1f77b4", "lw": 2.0, "ls": "-", "zorder": 4},
    "optimal": {"color": "#2ca02c", "lw": 1.4, "ls": "-.", "zorder": 4},
    "geometric": {"color": "#ff7f0e", "lw": 1.6, "ls": "--", "zorder": 3},
    "oracle": {"color": "#7f7f7f", "lw": 1.2, "ls": ":", "zorder": 2},
}
_OTHER_COLORS = ("#9467bd", "#8c564b", "#e377c2")
_LABELS = {
    "smoothed": "smoothed thresholds (calibrated accuracy)",
    "optimal": "optimal thresholds (dyncal default)",
    "geometric": "geometric prior (MSDNet-style baseline)",
    "oracle": "oracle (upper bound: best exit known)",
}
_OP_COLOR = "#d62728"
LABEL: dict[str, Any] = {
    "textcoords": "offset points",
    "fontsize": 8,
    "bbox": {"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.85},
    "zorder": 6,
}
"""Every label drawn among curves: 8 pt, placed in points off its spot, above the curves, on a white box so a
curve passing under it does not strike it through."""
_COMPARE_COLORS = ("#17becf", "#8c564b", "#e377c2", "#bcbd22", "#9467bd", "#1a1a6e")
_COMPARE_MARKERS = ("D", "^", "v", "P", "X", "h")


@dataclass(frozen=True)
class OperatingPoint:
    """The chosen thresholds, as a point to mark on the curves.

    Attributes:
        expected_macs: Expected MACs per sample.
        accuracy: Held-out accuracy (fitted accuracy when nothing was held out).
        interval: 95% interval of ``accuracy`` as ``(low, high)``, or None.
        expected_ms: Expected milliseconds per ``"<device>/b<batch>"`` key.
        label: Legend text.

    Example:
        >>> OperatingPoint(expected_macs=1e6, accuracy=0.95).label
        'operating point'
    """

    expected_macs: float | None
    accuracy: float
    interval: tuple[float, float] | None = None
    expected_ms: Mapping[str, float] = field(default_factory=dict)
    label: str = "operating point"


@dataclass(frozen=True)
class ComparedModel:
    """Another model drawn beside the curves: a point (a static model) or a curve (early exit).

    Attributes:
        name: Legend text.
        static: A static model (drawn as a point with its interval) or an early-exit one (a curve).
        points: ``"accuracy"`` (y values) and, per frontier column it is drawn against
            (``"expected_macs"``, ``"ms:<device>/b<batch>"``), the x values; a column it lacks
            leaves it off that panel.
        interval: 95% interval of a static model's accuracy.

    Example:
        >>> ComparedModel("resnet18", True, {"accuracy": (0.7,), "expected_macs": (1.8e9,)}).static
        True
    """

    name: str
    static: bool
    points: Mapping[str, Sequence[float]]
    interval: tuple[float, float] | None = None


def latency_keys(frontier: pd.DataFrame) -> list[str]:
    """The ``"<device>/b<batch>"`` keys that have an ``ms:`` column in ``frontier``.

    Example:
        >>> import pandas as pd
        >>> latency_keys(pd.DataFrame(columns=["method", "ms:cpu/b32", "ms:cpu/b1"]))
        ['cpu/b1', 'cpu/b32']
    """
    keys = [str(c)[len(MS_PREFIX) :] for c in frontier.columns if str(c).startswith(MS_PREFIX)]
    return sorted(keys, key=LatencyKey.parse)  # device, then batch size


def _new_axes(ax: Axes | None, figsize: tuple[float, float] = (7.0, 4.8)) -> tuple[Figure, Axes]:
    """Return ``(figure, axes)``: ``ax``'s own, or a fresh single-panel figure."""
    if ax is not None:
        fig = ax.get_figure()
        assert fig is not None
        return fig, ax  # type: ignore[return-value]
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def _accuracy_columns(frontier: pd.DataFrame) -> tuple[str, bool]:
    """The accuracy column to draw and whether it is held out."""
    if "holdout_accuracy" in frontier.columns and frontier["holdout_accuracy"].notna().any():
        return "holdout_accuracy", True
    return "fitted_accuracy", False


def _check_frontier(frontier: pd.DataFrame, x_col: str) -> None:
    need = {"method", x_col, "fitted_accuracy"}
    missing = sorted(need - set(map(str, frontier.columns)))
    if missing:
        raise DyncalError(
            f"the frontier table lacks column(s) {missing} (columns: "
            f"{list(map(str, frontier.columns))}); "
            "re-create it with dyncal.calibrate.frontier.compute_frontier"
        )


def _draw_curves(
    ax: Axes,
    frontier: pd.DataFrame,
    x_col: str,
    *,
    operating_x: float | None,
    operating_point: OperatingPoint | None,
    legend: bool,
    main_method: str | None,
    legend_below: bool = True,
    full_model: float | None = None,
    compared: Sequence[ComparedModel] = (),
) -> None:
    """Frontier lines, band, static exits, other models and operating point on one axes.

    The legend goes below the axes (``legend_below``), else in matplotlib's best spot;
    ``full_model`` (an x value) draws the full model as a dashed vertical line.
    """
    acc_col, held_out = _accuracy_columns(frontier)
    _draw_methods(ax, frontier, x_col, acc_col, held_out, main_method or main_method_of(frontier))
    static_labels = _draw_static(ax, frontier[frontier["method"].astype(str) == "static"], x_col, acc_col)
    _draw_compared(ax, compared, x_col)
    star = None
    if operating_point is not None and operating_x is not None and math.isfinite(operating_x):
        _draw_star(ax, operating_point, operating_x)
        star = (operating_x, operating_point.accuracy)
    ax.margins(x=0.08)
    if full_model is not None and math.isfinite(full_model):
        ax.axvline(full_model, color="#444444", ls=(0, (4, 3)), lw=1.1, zorder=2)
        text, at = f"full model {format_ms(full_model)}", (full_model, 0.03)
        ax.annotate(text, at, xycoords=("data", "axes fraction"), xytext=(-4, 0), ha="right", color="#444444", **LABEL)
    for xi, yi, k in static_labels:
        if np.isfinite(xi) and np.isfinite(yi):
            offset, ha = _label_offset(ax, (xi, yi), star)
            ax.annotate(f"exit {int(k)}", (xi, yi), xytext=offset, ha=ha, color="black", **LABEL)
    ax.set_ylabel("top-1 accuracy" + (" (held out)" if held_out else " (fitted; nothing held out)"))
    ax.yaxis.set_major_formatter(_percent_formatter())
    ax.grid(True, color="#dddddd", lw=0.6)
    ax.set_axisbelow(True)
    if legend and not legend_below:
        ax.legend(loc="best", fontsize=8, framealpha=0.9)
    elif legend:
        # below the axes, never over the curves or the operating point (an imported run's
        # curves can fill the lower right, where the legend used to sit)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize=8, frameon=False)


def _draw_methods(ax: Axes, frontier: pd.DataFrame, x_col: str, acc_col: str, held_out: bool, main: str) -> None:
    """Every method's curve, the main one first with its held-out interval band, the baseline and bound last."""
    curve_methods = [m for m in (str(m) for m in dict.fromkeys(frontier["method"].astype(str))) if m != "static"]
    order = {main: 0, "geometric": 2, "oracle": 3}
    curve_methods.sort(key=lambda m: order.get(m, 1))
    other = iter(_OTHER_COLORS)
    for method in curve_methods:
        rows = frontier[frontier["method"].astype(str) == method].sort_values(x_col)
        x = rows[x_col].to_numpy(dtype=float)
        y = rows[acc_col].to_numpy(dtype=float)
        ok = np.isfinite(x) & np.isfinite(y)
        if not ok.any():
            continue
        style = dict(_STYLE.get(method) or {"color": next(other, "#17becf"), "lw": 1.6, "ls": "-."})
        ax.plot(x[ok], y[ok], label=_LABELS.get(method, method), marker=None, **style)
        has_band = held_out and {"holdout_ci_low", "holdout_ci_high"} <= set(rows.columns)
        if method == main and has_band:
            lo = rows["holdout_ci_low"].to_numpy(dtype=float)
            hi = rows["holdout_ci_high"].to_numpy(dtype=float)
            band = ok & np.isfinite(lo) & np.isfinite(hi)
            if band.any():
                ax.fill_between(
                    x[band],
                    lo[band],
                    hi[band],
                    color=style["color"],
                    alpha=0.18,
                    lw=0,
                    label=f"{method}: 95% interval (held out)",
                    zorder=1,
                )


def _draw_static(ax: Axes, static: pd.DataFrame, x_col: str, acc_col: str) -> list[tuple[float, float, Any]]:
    """The single exits as squares; returns where each exit's label goes: ``(x, y, exit)``."""
    if not len(static):
        return []
    static = static.sort_values(x_col)
    sx = static[x_col].to_numpy(dtype=float)
    sy = static[acc_col].to_numpy(dtype=float)
    ax.plot(sx, sy, ls="none", marker="s", ms=6, color="black", label="single exit (static)", zorder=5)
    exits = static["exit"].tolist() if "exit" in static.columns else [None] * len(static)
    return [(xi, yi, k) for xi, yi, k in zip(sx, sy, exits, strict=True) if k is not None]


def _draw_point(
    ax: Axes,
    x: float,
    y: float,
    interval: tuple[float, float] | None,
    color: str,
    bar: tuple[float, float, float],
    **marker: Any,
) -> None:
    """An accuracy at ``x``: its 95% interval as an error bar (``bar``: line width, cap size, zorder), then a marker."""
    if interval is not None:
        width, cap, zorder = bar
        yerr = [[y - interval[0]], [interval[1] - y]]
        ax.errorbar([x], [y], yerr=yerr, fmt="none", ecolor=color, elinewidth=width, capsize=cap, zorder=zorder)
    ax.plot([x], [y], ls="none", color=color, **marker)


def _draw_star(ax: Axes, op: OperatingPoint, x: float) -> None:
    """The operating point: a star at ``x``, with its interval."""
    star = {"marker": "*", "ms": 15, "markeredgecolor": "white", "markeredgewidth": 0.8, "label": op.label, "zorder": 7}
    _draw_point(ax, x, op.accuracy, op.interval, _OP_COLOR, (1.4, 4, 6), **star)


def _draw_compared(ax: Axes, compared: Sequence[ComparedModel], x_col: str) -> None:
    """Other models: static ones as points with their interval, early-exit ones as curves."""
    for i, m in enumerate(compared):
        if x_col not in m.points:
            continue
        color = _COMPARE_COLORS[i % len(_COMPARE_COLORS)]
        x = np.asarray(m.points[x_col], dtype=float)
        y = np.asarray(m.points["accuracy"], dtype=float)
        ok = np.isfinite(x) & np.isfinite(y)
        if not ok.any():
            continue
        if not m.static:
            ax.plot(
                x[ok], y[ok], color=color, lw=1.5, ls="-", marker=".", ms=4, label=f"{m.name} (early exit)", zorder=4
            )
            continue
        marker = _COMPARE_MARKERS[i % len(_COMPARE_MARKERS)]
        # under the single exits' squares, which it may sit on (the last exit alone)
        point = {"marker": marker, "ms": 8, "markeredgecolor": "black", "markeredgewidth": 0.6, "zorder": 4.5}
        _draw_point(ax, x[ok][0], y[ok][0], m.interval, color, (1.2, 3, 4.5), label=f"{m.name} (static)", **point)


def _label_offset(ax: Axes, xy: tuple[float, float], avoid: tuple[float, float] | None) -> tuple[tuple[int, int], str]:
    """Offset (points) and alignment of a static exit's label that keep the operating point's star off it."""
    candidates: list[tuple[tuple[int, int], str]] = [
        ((4, -11), "left"),
        ((4, 5), "left"),
        ((-4, 5), "right"),
        ((-4, -11), "right"),
    ]
    if avoid is None:
        return candidates[0]
    ax.get_xlim(), ax.get_ylim()  # settle the autoscaled limits before transforming
    to_points = 72.0 / ax.figure.dpi
    here = ax.transData.transform(xy)
    there = ax.transData.transform(avoid)
    dx, dy = (there - here) * to_points
    if not (np.isfinite(dx) and np.isfinite(dy)):
        return candidates[0]
    width, height, star = 30.0, 9.0, 8.0
    for (ox, oy), ha in candidates:
        x0, x1 = (ox, ox + width) if ha == "left" else (ox - width, ox)
        if not (x0 - star <= dx <= x1 + star and oy - star <= dy <= oy + height + star):
            return (ox, oy), ha
    return candidates[0]


def format_ms(v: float | None) -> str:
    """Milliseconds for people, the same way on every page and figure.

    Example:
        >>> format_ms(0.47812), format_ms(123.4)
        ('0.478 ms', '123 ms')
    """
    if v is None or not math.isfinite(v):
        return "n/a"
    return f"{v:.3g} ms" if v < 100 else f"{v:.0f} ms"


def main_method_of(frontier: pd.DataFrame) -> str:
    """The method whose band is drawn: ``smoothed``, else ``optimal``, else the first solver.

    Example:
        >>> import pandas as pd
        >>> main_method_of(pd.DataFrame({"method": ["static", "geometric", "optimal"]}))
        'optimal'
    """
    methods = list(dict.fromkeys(frontier["method"].astype(str)))
    for m in ("smoothed", "optimal"):
        if m in methods:
            return m
    rest = [m for m in methods if m not in ("static", "oracle", "geometric")]
    return rest[0] if rest else (methods[0] if methods else "optimal")


def _percent_formatter() -> Any:
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _pos: f"{100 * v:.4g}%")


def plot_frontier(
    frontier: pd.DataFrame,
    *,
    operating_point: OperatingPoint | None = None,
    main_method: str | None = None,
    ax: Axes | None = None,
    title: str | None = None,
    compared: Sequence[ComparedModel] = (),
) -> Figure:
    """Accuracy against expected MACs: every method's frontier, exits and operating point.

    Args:
        frontier: Long-format frontier (see the module docstring); needs ``method``,
            ``expected_macs`` and ``fitted_accuracy``; draws ``holdout_accuracy`` with
            its ``holdout_ci_low``/``holdout_ci_high`` band when present.
        operating_point: The chosen thresholds, marked with a star and its interval.
        main_method: Method drawn first with its interval band (default
            :func:`main_method_of`).
        ax: Axes to draw on; default a new figure.
        title: Axes title; default none.
        compared: Other models to draw beside the curves (``dyncal report --compare``).

    Returns:
        The figure drawn on.

    Raises:
        DyncalError: A needed column is missing, or there are no MAC counts.

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"method": ["optimal", "optimal", "static"], "exit": [None, None, 2],
        ...     "expected_macs": [1e6, 2e6, 2e6], "fitted_accuracy": [0.9, 0.95, 0.95]})
        >>> fig = plot_frontier(df)
        >>> fig.axes[0].get_xlabel()
        'expected MACs per sample'
    """
    _check_frontier(frontier, "expected_macs")
    if not frontier["expected_macs"].notna().any():
        raise DyncalError(
            "the run has no MAC counts, so there is no accuracy-vs-MACs figure; profile the run "
            "('dyncal profile RUN') or re-import it with 'dyncal import FILE --macs ...', or plot "
            "'dyncal plot RUN --kind latency'"
        )
    from matplotlib.ticker import EngFormatter

    fig, ax = _new_axes(ax)
    macs = frontier["expected_macs"].to_numpy(dtype=float)
    others = [np.asarray(m.points["expected_macs"], dtype=float) for m in compared if "expected_macs" in m.points]
    macs = np.concatenate([macs, *others])
    macs = macs[np.isfinite(macs) & (macs > 0)]
    if macs.size and macs.max() / macs.min() > 30:
        ax.set_xscale("log")
    _draw_curves(
        ax,
        frontier,
        "expected_macs",
        operating_x=None if operating_point is None else operating_point.expected_macs,
        operating_point=operating_point,
        legend=True,
        main_method=main_method,
        compared=compared,
    )
    ax.set_xlabel("expected MACs per sample" + (" (log scale)" if ax.get_xscale() == "log" else ""))
    ax.xaxis.set_major_formatter(EngFormatter(sep=" "))
    if title:
        ax.set_title(title)
    return fig


def plot_latency(
    frontier: pd.DataFrame,
    *,
    operating_point: OperatingPoint | None = None,
    keys: Sequence[str] | None = None,
    main_method: str | None = None,
    axes: Sequence[Axes] | None = None,
    full_model_ms: Mapping[str, float] | None = None,
    compared: Sequence[ComparedModel] = (),
) -> Figure:
    """Accuracy against expected latency, one panel per profiled device and batch size.

    Args:
        frontier: Long-format frontier with ``ms:<device>/b<batch>`` columns.
        operating_point: The chosen thresholds; its ``expected_ms[key]`` places the star.
        keys: Latency keys to draw (default: every ``ms:`` column, device then batch).
        main_method: Method drawn with its interval band (default :func:`main_method_of`).
        axes: One axes per key to draw on; default a new figure with a grid of panels.
        full_model_ms: Per key, the full model's ms, drawn as a dashed vertical line.
        compared: Other models, drawn on the panels of the keys they were profiled for.

    Returns:
        The figure drawn on.

    Raises:
        DyncalError: No latency was profiled, a requested key has no column, or fewer
            ``axes`` than keys.

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"method": ["optimal"] * 2, "expected_macs": [1.0, 2.0],
        ...     "fitted_accuracy": [0.9, 0.95], "ms:cpu/b1": [1.0, 2.0]})
        >>> [ax.get_title() for ax in plot_latency(df).axes]
        ['cpu, batch size 1']
    """
    have = latency_keys(frontier)
    wanted = list(keys) if keys is not None else have
    if not have:
        raise DyncalError(
            "no latency was profiled for this run, so there is no accuracy-vs-latency curve; "
            "measure it with 'dyncal profile RUN --device cpu --batch-size 1,32'"
        )
    missing = [k for k in wanted if k not in have]
    if missing:
        raise DyncalError(
            f"no latency profiled for {', '.join(missing)} (profiled: {', '.join(have)}); "
            "measure it with 'dyncal profile RUN --device ... --batch-size ...' or pick a "
            "profiled one"
        )
    n = len(wanted)
    panels = _panels(axes, n, size=(7.0, 4.4), cols=1 if n <= 2 else 2)
    for i, (ax, key) in enumerate(zip(panels, wanted, strict=True)):
        op_x = None if operating_point is None else operating_point.expected_ms.get(key)
        _draw_curves(
            ax,
            frontier,
            MS_PREFIX + key,
            operating_x=op_x,
            operating_point=operating_point,
            legend=(i == 0),
            legend_below=False,
            main_method=main_method,
            full_model=None if full_model_ms is None else full_model_ms.get(key),
            compared=compared,
        )
        parsed = LatencyKey.parse(key)
        ax.set_title(f"{parsed.device}, batch size {parsed.batch_size}")
        ax.set_xlabel("expected latency per batch (ms)" if parsed.batch_size > 1 else "expected latency (ms)")
    return _figure_of(panels[0])


def _panels(axes: Sequence[Axes] | None, n: int, *, size: tuple[float, float], cols: int) -> list[Axes]:
    """``n`` axes: the ones given (checked), or a new constrained grid of ``cols`` columns."""
    if axes is not None:
        given = list(axes)
        if len(given) < n:
            raise DyncalError(f"need {n} axes (one per panel), got {len(given)}")
        return given[:n]
    from matplotlib.figure import Figure

    rows = math.ceil(n / cols)
    fig = Figure(figsize=(size[0] * cols + 0.4, size[1] * rows + 0.3), layout="constrained")
    grid = fig.subplots(rows, cols, squeeze=False)
    flat = [grid[i // cols][i % cols] for i in range(rows * cols)]
    for extra in flat[n:]:
        extra.set_visible(False)
    return flat[:n]


def _figure_of(ax: Axes) -> Figure:
    fig = ax.get_figure(root=True)
    assert fig is not None
    return fig
