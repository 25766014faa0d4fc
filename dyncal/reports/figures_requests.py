"""The latency distribution as requests feel it: CDFs of early exit vs the plain deployment, and by exit.

Drawn from verify's per-request timings (:class:`~dyncal.artifacts.requests.RequestTimings`),
each request's fastest pair (the noise-reduced view the tail criteria judge). The overall
curves weight each request as the overall figures do (a stratified sample is weighted back
to the exit shares of every replayed row), so the curve's p99 is the table's p99.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from dyncal.artifacts.requests import RequestTimings

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["weighted_cdf", "plot_request_cdf"]

_EE_COLOR = "#d62728"
_PLAIN_COLOR = "#1f1f1f"
_EXIT_COLORS = ("#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def weighted_cdf(values: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sorted values and the share of weight at or below each (a step CDF).

    Example:
        >>> x, y = weighted_cdf(np.array([3.0, 1.0, 2.0]))
        >>> x.tolist(), y.round(3).tolist()
        ([1.0, 2.0, 3.0], [0.333, 0.667, 1.0])
    """
    v = np.asarray(values, dtype=np.float64)
    w = np.ones_like(v) if weights is None else np.asarray(weights, dtype=np.float64)
    order = np.argsort(v, kind="stable")
    cum = np.cumsum(w[order])
    return v[order], cum / cum[-1]


def plot_request_cdf(timings: RequestTimings, axes: Sequence[Axes] | None = None) -> Figure:
    """Two panels: early exit vs plain deployment (all requests), and the early exit by exit taken.

    Args:
        timings: Verify's batch-1 timings (at batch B a unit is a batch, and the panels say so).
        axes: Two axes to draw on, or None for a new figure.

    Returns:
        The figure.
    """
    from matplotlib.figure import Figure

    if axes is None:
        fig = Figure(figsize=(9.0, 3.6))
        axes = fig.subplots(1, 2)
    left, right = axes[0], axes[1]
    unit = "request" if timings.batch_size == 1 else f"batch of {timings.batch_size}"
    w = timings.weights
    for side, color, label in (
        ("plain", _PLAIN_COLOR, "plain deployment"),
        ("early_exit", _EE_COLOR, "early exit"),
    ):
        x, y = weighted_cdf(timings.service_ms(side), w)
        p99 = float(timings.percentiles_ms(side, [99])[0])
        left.step(x, y, where="post", color=color, lw=1.6, label=f"{label} (p99 {p99:.3g} ms)")
    left.axhline(0.99, color="#999999", lw=0.6, ls=":")
    left.set_title(f"all {unit}s: early exit vs plain")
    _by_exit(right, timings, w)
    for ax in (left, right) if timings.n_exits > 1 else (left,):
        ax.set_xlabel(f"ms per {unit} (fastest pair)")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7.5, loc="lower right")
    left.set_ylabel("share at or below")
    fig_out = left.get_figure()
    assert fig_out is not None
    return fig_out  # type: ignore[return-value]


def _by_exit(ax: Axes, timings: RequestTimings, w: np.ndarray | None) -> None:
    """The early exit's CDF at each exit a timed unit took, the plain deployment's for reference."""
    if timings.n_exits == 1:  # a verify result that did not record the exit of each request
        ax.set_axis_off()
        ax.text(0.5, 0.5, "the exit of each request\nwas not recorded by this\nverify result", ha="center",
                va="center", transform=ax.transAxes, fontsize=9, color="#555555")  # fmt: skip
        return
    strata = timings.unit_exits
    ee = timings.service_ms("early_exit")
    for j, k in enumerate(np.unique(strata).tolist()):
        x, y = weighted_cdf(ee[strata == k])
        ax.step(x, y, where="post", color=_EXIT_COLORS[j % len(_EXIT_COLORS)], lw=1.3, label=f"exit {k + 1}")
    x, y = weighted_cdf(timings.service_ms("plain"), w)
    ax.step(x, y, where="post", color=_PLAIN_COLOR, lw=1.0, ls="--", label="plain deployment")
    batch = timings.batch_size
    ax.set_title("early exit by the exit taken" if batch == 1 else "by the deepest exit in the batch")
