"""The last pages: latency as requests feel it (verify's timed requests), and what early exit saves (``rate``)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from dyncal.analysis.capacity import SCENARIOS, DeploymentPlan, Savings
from dyncal.artifacts.requests import LatencySummary, RequestTimings
from dyncal.reports.data import ReportData
from dyncal.reports.figures_requests import plot_request_cdf
from dyncal.reports.layout import REQUESTS_TITLE, SAVINGS_TITLE, _Page, page_titles
from dyncal.reports.tail_evidence import batch_one
from dyncal.reports.text import criterion_label, criterion_value, need_text, status_word

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["savings_sentence"]


def _number(data: ReportData, title: str) -> int:
    return page_titles(data).index(title) + 1


def _ms(v: float) -> str:
    return "n/a" if not math.isfinite(v) else f"{v:.3g}"


def _summary_row(name: str, s: LatencySummary) -> list[str]:
    lo, hi = s.intervals["p99"]
    spread = [_ms(s.values[stat]) for stat in ("mean", "std", "p50", "p90")]
    return [name, f"{s.units:,}", *spread, f"{_ms(s.values['p99'])} ({_ms(lo)}–{_ms(hi)})", _ms(s.values["max"])]


def _distribution_rows(t: RequestTimings) -> list[list[str]]:
    """Early exit and plain deployment overall, then the early exit at each exit a timed request took."""
    exits = sorted(set(t.unit_exits.tolist())) if t.n_exits > 1 else []
    return [
        _summary_row("early exit", t.summary("early_exit")),
        _summary_row("plain deployment", t.summary("plain")),
        *(_summary_row(f"  leaving at exit {k + 1}", t.summary("early_exit", exit=k)) for k in exits),
    ]


def _page_requests(data: ReportData) -> Figure:
    p = _Page(data, _number(data, REQUESTS_TITLE), REQUESTS_TITLE)
    t = batch_one(data.requests) or data.requests[0]
    unit = "request" if t.batch_size == 1 else f"batch of {t.batch_size}"
    p.para(
        f"dyncal verify timed the early exit and the plain deployment back to back on the same {unit}s "
        f"({t.coverage()}; {t.repeats} pairs each, on {t.key}). Each {unit} counts with its fastest pair: what the "
        "model costs, not what the machine's load added. The mean hides the tail: a request that reaches a late "
        "exit pays for every head before it."
        + (
            " This verify result did not record the exit each request took (it predates per-request timings): "
            "verify again for the figures per exit."
            if t.n_exits == 1 and data.k > 1
            else ""
        ),
        size=9.5,
    )
    axes = p.grid(2, 2, 2.7, gap_in=0.45, left=0.09, right=0.96, hgap=0.09)
    plot_request_cdf(t, axes)
    p.skip(0.7)
    p.table(
        ["", "n", "mean", "std", "p50", "p90", "p99 (95% interval)", "max"],
        _distribution_rows(t),
        col_widths=[0.2, 0.07, 0.08, 0.08, 0.08, 0.08, 0.2, 0.08],
        size=8.5,
    )
    p.note(
        f"Milliseconds per {unit}; intervals from a bootstrap over the timed {unit}s (within their exit) and their "
        "pairs. MLPerf's SingleStream scenario reports the p90 of this distribution at batch 1.",
        size=8,
    )
    tail = [c for c in data.criteria if c.name.startswith("latency_")]
    if tail:
        p.heading("Tail criteria", size=11)
        for c in tail:
            p.para(
                f"{criterion_label(c)}: {criterion_value(c, c.value)}, needs {need_text(c, 2)}: {status_word(c)}. "
                f"{c.description}.",
                size=9,
            )
    return p.fig


def _plan_cells(plain: DeploymentPlan, early: DeploymentPlan) -> list[str]:
    """Cores (or devices) and provisioned core-hours per million requests: plain deployment / early exit."""
    return [
        f"{plain.cores:,} / {early.cores:,}",
        f"{plain.core_hours_per_million:.3g} / {early.core_hours_per_million:.3g}",
    ]


def _saving(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.0f}%"


def savings_sentence(s: Savings) -> str:
    """The saving in one sentence for people (the Offline scenario, and the Server one when modelled).

    Example:
        >>> from dyncal.analysis.capacity import what_it_saves
        >>> import numpy as np
        >>> t = RequestTimings("cpu/b1", 1, np.arange(4), np.zeros(4, int), np.full((4, 1), 2.0), np.full((4, 1), 5.0),
        ...                    n_exits=1)
        >>> offline, server = savings_sentence(what_it_saves([t], 1000.0, cores_per_server=2)).split(". ")
        >>> offline
        'At 1000 requests/s early exit needs 6 cores where the plain deployment needs 14: 57% fewer (Offline, batch 1)'
        >>> server
        'Served one request at a time (Server): 6 against 14, 57% fewer.'
    """
    off = s.offline
    unit = s.unit if off["early_exit"].cores != 1 else s.unit.removesuffix("s")
    text = (
        f"At {s.rate_per_s:g} requests/s early exit needs {off['early_exit'].cores:,} {unit} where the plain "
        f"deployment needs {off['plain'].cores:,}: {_saving(s.offline_saving)} fewer "
        f"(Offline, batch {off['early_exit'].batch_size})."
    )
    if s.server:
        text += (
            f" Served one request at a time (Server): {s.server['early_exit'].cores:,} against "
            f"{s.server['plain'].cores:,}, {_saving(s.server_saving)} fewer."
        )
    return text


def _page_savings(data: ReportData) -> Figure:
    s = data.savings
    assert s is not None
    p = _Page(data, _number(data, SAVINGS_TITLE), SAVINGS_TITLE)
    p.para(savings_sentence(s), size=11, weight="bold")
    p.skip(0.1)
    unit = s.unit
    rows: list[list[str]] = []
    single = s.single_stream
    if single:
        plain_ms, early_ms = (
            f"p90 {_ms(single[side]['p90_ms'])} / p99 {_ms(single[side]['p99_ms'])} ms"
            for side in ("plain", "early_exit")
        )
        rows.append(["SingleStream (batch 1)", plain_ms, early_ms, "—", "—", "—"])
    plain, early = s.offline["plain"], s.offline["early_exit"]
    rows.append(
        [
            f"Offline (batch {early.batch_size})",
            f"{plain.figure:,.0f} samples/s",
            f"{early.figure:,.0f} samples/s",
            *_plan_cells(plain, early),
            _saving(s.offline_saving),
        ]
    )
    if s.server:
        sp, se = s.server["plain"], s.server["early_exit"]
        rows.append(
            [
                f"Server ({s.rate_per_s:g}/s)",
                f"p99 {_ms(sp.figure)} ms",
                f"p99 {_ms(se.figure)} ms",
                *_plan_cells(sp, se),
                _saving(s.server_saving),
            ]
        )
    p.table(
        ["scenario", "plain deployment", "early exit", unit, "core-h per 1M", "saving"],
        rows,
        col_widths=[0.18, 0.2, 0.2, 0.1, 0.13, 0.07],
        size=8.5,
    )
    p.skip(0.1)
    p.note(
        f"{unit.capitalize()} and core-hours: plain deployment / early exit. Core-hours per million requests are those "
        "provisioned at the rate; the work alone "
        f"takes {plain.busy_core_hours_per_million:.3g} / {early.busy_core_hours_per_million:.3g} (Offline).",
    )
    p.heading("Assumptions", size=11)
    p.para(s.assumption, size=9)
    p.skip(0.05)
    p.note(
        "Scenarios as MLPerf Inference names them: "
        + "; ".join(f"{name}: {what}" for name, what in SCENARIOS.items())
        + ". Measured service times come from dyncal verify on this machine; another machine, another runtime or "
        "another batch size needs its own measurement.",
    )
    return p.fig
