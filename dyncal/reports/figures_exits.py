"""The exits and calibration figures: where samples leave at the operating point, and reliability diagrams.

Like :mod:`dyncal.reports.figures`, every function draws on a
:class:`matplotlib.figure.Figure` (never pyplot's global state), takes ``axes=None`` and
returns the figure; numbers come in as plain arrays.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from dyncal.errors import DyncalError
from dyncal.reports.figures import _OP_COLOR, LABEL, _figure_of, _panels, _percent_formatter

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from dyncal.analysis.calibration import ReliabilityBins

__all__ = ["plot_exits", "plot_reliability", "reliability_columns", "bin_counts_shown"]


COMPACT_EXITS = 6
"""Above this many exits the share bars carry only their share and count (longer labels collide)."""


def plot_exits(
    shares: Sequence[float] | np.ndarray,
    accuracy: Sequence[float] | np.ndarray,
    *,
    counts: Sequence[int] | np.ndarray | None = None,
    exit_accuracy: Sequence[float] | np.ndarray | None = None,
    axes: Sequence[Axes] | None = None,
    title: str | None = None,
) -> Figure:
    """Where samples leave at the operating point (top panel), and how accurate they are (bottom panel).

    Shares and accuracies are on separate panels, each with its own 0–100% scale, so no
    marker is read against the other's axis.

    Args:
        shares: ``(K,)`` fraction of samples leaving at each exit (sums to 1).
        accuracy: ``(K,)`` accuracy of the samples that leave at each exit (NaN where none).
        counts: ``(K,)`` number of samples behind each share, printed on the bars.
        exit_accuracy: ``(K,)`` accuracy of each exit on *all* samples, drawn as a reference.
        axes: Two axes to draw on (shares, accuracy); default a new figure.
        title: Title of the top panel; default none.

    Returns:
        The figure drawn on.

    Raises:
        DyncalError: ``shares`` and ``accuracy`` differ in length, or fewer than two ``axes``.

    Example:
        >>> fig = plot_exits([0.5, 0.3, 0.2], [0.99, 0.95, 0.8])
        >>> len(fig.axes[0].patches), fig.axes[1].get_ylabel()
        (3, 'accuracy')
    """
    share = np.asarray(shares, dtype=float)
    acc = np.asarray(accuracy, dtype=float)
    if share.shape != acc.shape or share.ndim != 1:
        raise DyncalError(f"shares and accuracy need one value per exit each, got shapes {share.shape} and {acc.shape}")
    if axes is None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(7.0, 6.0), layout="constrained")
        top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[1.3, 1.0])
    else:
        given = list(axes)
        if len(given) < 2:
            raise DyncalError(f"plot_exits needs two axes (shares, accuracy), got {len(given)}")
        top, bottom = given[0], given[1]
    _draw_shares(top, share, acc, counts, title)
    _draw_exit_accuracy(bottom, acc, exit_accuracy)
    return _figure_of(top)


def _draw_shares(
    top: Axes, share: np.ndarray, acc: np.ndarray, counts: Sequence[int] | np.ndarray | None, title: str | None
) -> None:
    """The top panel: bars of the share leaving at each exit, labelled with the count."""
    k = share.shape[0]
    x = np.arange(1, k + 1)
    top.bar(x, share, width=0.6, color="#1f77b4", alpha=0.85)
    peak = max(float(np.nanmax(share)) if k else 0.0, 0.05)
    top.set_ylim(0, peak * 1.32)
    top.set_yticks([t for t in top.get_yticks() if 0 <= t <= min(1.0, peak * 1.32) + 1e-9])
    _exit_axis(top, k, "share of samples leaving")
    compact = k > COMPACT_EXITS  # many bars: share and count only, the table below says the rest
    for i in range(k):
        n = None if counts is None else int(counts[i])
        if compact:
            text = f"{100 * share[i]:.1f}%" + ("" if n is None else f"\n{n:,}")
        else:
            n_txt = "" if n is None else f" (n = {n:,})"
            text = f"{100 * share[i]:.1f}% leave{n_txt}" + ("\nno samples" if not np.isfinite(acc[i]) else "")
        top.annotate(
            text,
            (x[i], share[i]),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=7 if compact else 8,
        )
    top.tick_params(axis="x", labelbottom=False)  # the accuracy panel below names the exits
    if title:
        top.set_title(title)


def _draw_exit_accuracy(bottom: Axes, acc: np.ndarray, exit_accuracy: Sequence[float] | np.ndarray | None) -> None:
    """The bottom panel: accuracy of the samples leaving at each exit, and each exit's on all samples."""
    k = acc.shape[0]
    x = np.arange(1, k + 1)
    values = [acc]
    if exit_accuracy is not None:
        ref = np.asarray(exit_accuracy, dtype=float)
        values.append(ref)
        bottom.plot(x, ref, marker="o", color="#444444", lw=1, ls="--", label="exit accuracy on all samples")
    bottom.plot(x, acc, marker="D", color=_OP_COLOR, lw=0, ms=7, label="accuracy of the samples leaving here")
    for i in range(k):
        if np.isfinite(acc[i]):
            bottom.annotate(f"{100 * acc[i]:.1f}%", (x[i], acc[i]), xytext=(8, -3), color=_OP_COLOR, **LABEL)
    both = np.concatenate(values)
    lo = float(np.nanmin(both)) if np.isfinite(both).any() else 0.0
    span = max(1.0 - lo, 0.02)
    bottom.set_ylim(max(0.0, lo - 0.15 * span), 1.0 + 0.12 * span)  # room above 100%: markers there stay whole
    bottom.set_yticks([t for t in bottom.get_yticks() if lo - 0.15 * span <= t <= 1.0 + 1e-9])
    _exit_axis(bottom, k, "accuracy")
    bottom.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=8, frameon=False)


def _exit_axis(ax: Axes, k: int, ylabel: str) -> None:
    """A panel of the exits figure: exits 1 to ``k`` along x, a percentage on y, horizontal grid lines."""
    x = np.arange(1, k + 1)
    ax.set_ylabel(ylabel)
    ax.yaxis.set_major_formatter(_percent_formatter())
    ax.grid(True, axis="y", color="#dddddd", lw=0.6)
    ax.set_axisbelow(True)
    ax.set_xticks(x, [f"exit {i}" for i in x])
    ax.set_xlim(0.4, k + 0.6)


def plot_reliability(
    bins: Sequence[ReliabilityBins],
    *,
    scaled: Sequence[ReliabilityBins] | None = None,
    temperatures: Sequence[float] | None = None,
    legend: bool = True,
    axes: Sequence[Axes] | None = None,
) -> Figure:
    """Reliability diagrams, one panel per exit: accuracy against confidence per bin.

    Args:
        bins: ``K`` bin summaries at temperature 1 (from
            :func:`dyncal.analysis.calibration.reliability_bins`), exit 1 first.
        scaled: Optional ``K`` bin summaries after temperature scaling, drawn as bars with
            the unscaled ones as an outline.
        temperatures: ``K`` temperatures behind ``scaled``, shown in the titles.
        legend: Draw a legend in the first panel (default True).
        axes: One axes per exit to draw on; default a new figure with a grid of panels.

    Returns:
        The figure drawn on.

    Raises:
        DyncalError: No exits, ``scaled`` of another length, or fewer ``axes`` than exits.

    Example:
        >>> from dyncal.analysis.calibration import reliability_bins
        >>> b = reliability_bins(np.array([0.9, 0.6]), np.array([True, False]), n_bins=10)
        >>> len(plot_reliability([b, b]).axes)
        2
    """
    k = len(bins)
    if k == 0:
        raise DyncalError("plot_reliability needs the bins of at least one exit, got none")
    if scaled is not None and len(scaled) != k:
        raise DyncalError(f"scaled needs {k} bin summaries (one per exit), got {len(scaled)}")
    cols = reliability_columns(k)
    rows = math.ceil(k / cols)
    panels = _panels(axes, k, size=(3.4, 3.4), cols=cols)
    for i in range(k):
        ax = panels[i]
        raw = bins[i]
        shown = raw if scaled is None else scaled[i]
        centers = 0.5 * (shown.edges[:-1] + shown.edges[1:])
        width = np.diff(shown.edges)
        acc = np.nan_to_num(shown.accuracy)
        conf = np.where(np.isfinite(shown.confidence), shown.confidence, centers)
        filled = shown.count > 0
        ax.plot([0, 1], [0, 1], color="#888888", lw=1, ls="--", label="perfect calibration")
        ax.bar(
            centers[filled],
            acc[filled],
            width=width[filled] * 0.95,
            color="#1f77b4",
            alpha=0.8,
            label="accuracy in bin" + ("" if scaled is None else " (scaled)"),
        )
        ax.hlines(
            conf[filled],
            (centers - width / 2)[filled],
            (centers + width / 2)[filled],
            color=_OP_COLOR,
            lw=1.6,
            label="mean confidence in bin",
        )
        for c, n in zip(centers[filled], shown.count[filled] if bin_counts_shown(k) else (), strict=False):
            ax.text(c, 0.015, f"{int(n):,}", rotation=90, ha="center", va="bottom", fontsize=6, color="#111111")
        if scaled is not None:
            rf = raw.count > 0
            rc = 0.5 * (raw.edges[:-1] + raw.edges[1:])
            ax.plot(
                rc[rf],
                raw.accuracy[rf],
                ls="none",
                marker="_",
                ms=10,
                color="black",
                label="accuracy in bin (T = 1)",
            )
        t_txt = "" if temperatures is None or scaled is None else f", T = {temperatures[i]:.2f}"
        if cols <= 2:
            ax.set_title(f"exit {i + 1}{t_txt}: ECE {shown.ece:.3f}", fontsize=10)
        else:  # narrow panels: two short lines
            ax.set_title(f"exit {i + 1}{t_txt}\nECE {shown.ece:.3f}", fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        if i % cols == 0:
            ax.set_ylabel("accuracy")
        if i // cols == rows - 1 or i + cols >= k:
            ax.set_xlabel("confidence (top softmax probability)" if cols <= 2 else "confidence", fontsize=9)
            ax.xaxis.set_tick_params(labelbottom=True)
        if i == 0 and legend:
            ax.legend(loc="upper left", fontsize=7, framealpha=0.9)
    return _figure_of(panels[0])


def bin_counts_shown(k: int) -> bool:
    """Whether a reliability grid of ``k`` exits prints each bin's sample count (its panels are wide enough).

    Three rows of panels and more leave a bin ~2 pt wide on an A4 page: no count fits.

    Example:
        >>> bin_counts_shown(6), bin_counts_shown(7)
        (True, False)
    """
    return math.ceil(k / reliability_columns(k)) < 3


def reliability_columns(k: int) -> int:
    """Panels per row of a reliability grid of ``k`` exits.

    Example:
        >>> [reliability_columns(k) for k in (2, 3, 4, 5)]
        [2, 2, 2, 3]
    """
    return 2 if k in (2, 3, 4) else min(k, 3)  # three in a row leave half the page empty
