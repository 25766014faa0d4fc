"""Pages 2 and 3, the trade-off curves: accuracy against MACs, with every method at the budget, and against latency."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from dyncal.measurement import Measurement
from dyncal.reports.data import ReportData
from dyncal.reports.evidence import LatencyEvidence, batch_size_of
from dyncal.reports.figures import ComparedModel, format_ms, latency_keys, plot_frontier, plot_latency
from dyncal.reports.layout import _MONO, _NOGO_COLOR, _Page
from dyncal.reports.text import format_macs, pct, pts

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _page_frontier(data: ReportData) -> Figure:
    p = _Page(data, 2, "Accuracy vs compute (MACs)")
    main = str(data.thresholds.get("method") or "smoothed")
    if "macs" not in data.full_model:
        _nothing_measured(
            p,
            "This run has no MAC counts.",
            "The run's costs are latency only, so the trade-off curves are on page 3 (accuracy vs latency). To count "
            "compute per exit with fvcore, profile the run (it needs the model), or give the counts when importing:",
            [
                f"dyncal profile {data.run.path} --device cpu",
                "dyncal import logits.npz --macs 1.2e8,3.1e8,... --out run",
            ],
        )
        return p.fig
    p.para(
        "Each curve is the accuracy on held-out samples against the mean MACs spent per sample, as the budget sweeps "
        f"from exit 1 alone to the whole model. The band is the 95% interval of the {main} thresholds (the ones "
        "deployed); squares are single exits used for every sample (a static model); the geometric curve is the "
        "MSDNet-style baseline; the oracle is an upper bound that knows the cheapest exit that gets each sample "
        "right. The star is the operating point, with its interval."
        + (
            " In colour, the other models (page 7): static ones as points with their 95% interval, early-exit "
            "ones as their curve."
            if data.alternatives
            else ""
        ),
        size=9.5,
    )
    ax = p.axes(4.7, gap_in=0.25)
    compared = _compared_models(data)
    plot_frontier(data.frontier, operating_point=data.operating_point(), ax=ax, main_method=main, compared=compared)
    legend = ax.get_legend()
    legend_rows = math.ceil(len(legend.get_texts()) / 2) if legend is not None else 0
    p.skip(0.9 + 0.19 * max(0, legend_rows - 4))  # the legend sits below the axes
    p.skip(0.6)
    p.heading("At the operating point's budget", size=11)
    rows, note = _method_rows(data, main)
    if rows:
        p.table(
            ["method", "held-out accuracy", "95% interval", "MACs, fitting half (share)"],
            rows,
            col_widths=[0.26, 0.17, 0.22, 0.23],
            size=9,
        )
    p.para(note, size=9.5)
    return p.fig


def _compared_models(data: ReportData) -> list[ComparedModel]:
    """The alternatives (--compare) as the figures draw them."""
    return [ComparedModel(a.name, a.static, a.curve, a.ci if a.static else None) for a in data.alternatives]


def _method_rows(data: ReportData, main: str) -> tuple[list[list[str]], str]:
    """The deployed thresholds and every other method at the operating point's budget, and a summary."""
    table = []
    by_name = {}
    full = data.full_model.get("macs")
    for m in data.methods:
        by_name[m.method] = m
        deployed = m.method == main
        acc = "no solution" if m.accuracy is None else pct(m.accuracy)
        iv = "n/a" if m.interval is None else f"{pct(m.interval[0])} to {pct(m.interval[1])}"
        share = "" if full is None or m.fit_macs is None else f" ({pct(m.fit_macs / full, 1)})"
        table.append([m.method + (" (deployed)" if deployed else ""), acc, iv, f"{format_macs(m.fit_macs)}{share}"])
    if not table:
        return [], "The thresholds file records no budget to compare the other methods at; see the curves."
    note = (
        f"Every method solved at the operating point's budget ({data.short_budget}); accuracy on the "
        f"{data.outcome.n:,} held-out samples, MACs on the fitting half (where the budget is met and the "
        "curves are drawn). The deployed row is the operating point of page 1."
    )
    if main in by_name and "geometric" in by_name:
        a, g = by_name[main].accuracy, by_name["geometric"].accuracy
        if a is not None and g is not None:
            gain = a - g
            note += (
                f" {main} is {pts(abs(gain), 2)} {'above' if gain >= 0 else 'below'} the geometric baseline "
                "at this budget."
            )
    return table, note


def _page_latency(data: ReportData) -> Figure:
    p = _Page(data, 3, "Accuracy vs latency")
    keys = latency_keys(data.frontier)
    if not keys:  # why MACs are not time, and how to measure it
        _nothing_measured(
            p,
            "No latency was profiled for this run.",
            "MACs (page 2) are not time: early exit pays for the exit heads and a decision at each exit, and batches "
            "shrink as samples leave. To see accuracy against measured milliseconds here, measure the run's stages on "
            "the device you will deploy to, then build the report again:",
            [
                f"dyncal profile {data.run.path} --device cpu --batch-size 1,32",
                f"dyncal report {data.run.path} --out report.pdf",
            ],
            "Latency criteria (--min-speedup with --device, budgets in ms) need this too.",
        )
        return p.fig
    p.para(
        "Held-out accuracy against expected latency, one panel per device and batch size. "
        "Expected latency counts the stages a sample runs through plus one exit decision at each "
        "exit it passes (on the fitting half, like the curves of page 2); squares are single exits run "
        "on every sample (their stages summed); the dashed line is the full model, the figure every "
        "speed-up divides."
        + (
            " In colour, the other models (page 7) profiled on the same device, batch size and hardware: static "
            "ones at their whole forward's latency, early-exit ones as their curve."
            if data.alternatives
            else ""
        ),
        size=9.5,
    )
    cols = 1 if len(keys) <= 2 else 2
    n_rows = math.ceil(len(keys) / cols)
    panel_h = 4.6 if len(keys) == 1 else min(2.7, 6.0 / n_rows - 0.6)
    axes = p.grid(len(keys), cols, panel_h, gap_in=0.35, hgap=0.1)
    plot_latency(
        data.frontier,
        compared=_compared_models(data),
        operating_point=data.operating_point(),
        keys=keys,
        axes=axes,
        main_method=str(data.thresholds.get("method") or "") or None,
        full_model_ms={k: e.full_model_ms for k, e in data.latency.items()},
    )
    p.skip(0.45)
    p.heading("How it was measured", size=11)
    for key in keys:
        _how_measured(p, data, key)
    measured = [e for e in data.latency.values() if e.source == "measured"]
    if data.verify is not None and measured:
        _verified(p, data, measured)
    return p.fig


def _nothing_measured(p: _Page, headline: str, why: str, commands: list[str], then: str | None = None) -> None:
    """A page whose figure has nothing to draw: what is missing, why, the commands that measure it (and ``then``)."""
    p.skip(0.3)
    p.para(headline, size=14, weight="bold")
    p.skip(0.1)
    p.para(why, size=10.5)
    p.skip(0.1)
    for command in commands:
        p.para(command, size=10.5, family=_MONO, indent=0.1)
    if then is not None:
        p.skip(0.1)
        p.para(then, size=10.5)


def _how_measured(p: _Page, data: ReportData, key: str) -> None:
    """One profiled key: hardware, threads, decision time, repeats, the full model, and a warning when noisy."""
    assert data.run.costs is not None
    prof = data.run.costs.latency.get(key)
    if prof is None:
        return
    noisy = [i + 1 for i, r in enumerate(prof.stage_ms) if Measurement(r).noisy]
    e = data.latency.get(key)
    full = (
        ""
        if e is None
        else f" The full model {format_ms(e.full_model_ms)} per {'sample' if batch_size_of(key) == 1 else 'batch'} "
        f"({e.full_model_source})."
    )
    line = (
        f"{key}: {prof.hardware or 'hardware not recorded'}"
        + (f", {prof.threads} thread(s)" if prof.threads else "")
        + f"; exit decision {format_ms(prof.decision_median_ms)}; "
        + f"{len(prof.stage_ms[0]) if prof.stage_ms else 0} repeats per stage."
        + full
    )
    if noisy:
        stages = ", ".join(map(str, noisy))
        line += (
            f" Warning: spread (IQR) above 10% of the median for stage(s) {stages}: the machine was busy; "
            "measure on a quiet machine with more --repeats"
            + ("." if prof.threads == 1 else " and one thread (--threads 1).")
        )
    p.para(line, size=8, color=_NOGO_COLOR if noisy else "black")


def _verified(p: _Page, data: ReportData, measured: list[LatencyEvidence]) -> None:
    """The keys ``dyncal verify`` timed: measured against predicted, and the speed-up with its interval."""
    v = data.verify
    assert v is not None
    p.skip(0.1)
    p.heading(f"Measured by dyncal verify ({data.verify_label})", size=11)
    rows = [
        [
            e.key,
            format_ms(e.early_exit_ms),
            format_ms(e.predicted_ms),
            "n/a" if e.measured_over_predicted is None else f"{e.measured_over_predicted:.2f}",
            format_ms(e.full_model_ms),
            f"{e.speedup.value:.2f}×"
            + ("" if e.speedup.interval is None else " ({:.2f} to {:.2f})".format(*e.speedup.interval)),
        ]
        for e in sorted(measured, key=lambda e: e.key)
    ]
    p.table(
        ["latency", "early exit", "predicted", "meas. / pred.", "full model", "speed-up (95% interval)"],
        rows,
        col_widths=[0.12, 0.13, 0.13, 0.14, 0.13, 0.25],
        size=8.5,
    )
    p.note(
        f"A real early exit with the operating point's thresholds and the plain model, timed interleaved on "
        f"the same batches ({v.n:,} samples on {v.device}, {v.hardware or 'hardware not recorded'}, "
        f"{v.threads or 'n/a'} thread(s)); ms per batch. Agreement with the simulated exits and "
        f"predictions: {pct(v.agreement)}. The decision judges these measured figures; the prediction "
        "is shown for how far off it is.",
    )
