"""Pages 4 to 7: where samples leave, calibration, thresholds and provenance, and the other models (``compare``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from dyncal.artifacts.costs import LatencyKey
from dyncal.reports.choice import BudgetSource
from dyncal.reports.data import ReportData
from dyncal.reports.figures import format_ms
from dyncal.reports.figures_exits import bin_counts_shown, plot_exits, plot_reliability, reliability_columns
from dyncal.reports.layout import _NOGO_COLOR, PAGE_TITLES, _Page
from dyncal.reports.pages.decision import _alternative_result, _alternatives_summary, _cost_text, _dominance_text
from dyncal.reports.text import format_macs, interval_text, pct, thresholds_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from dyncal.artifacts.run import Run

_SETTING_KEYS = ("repeats", "warmup", "timer", "dtype", "input_shape", "decision")


def _page_exits(data: ReportData) -> Figure:
    p = _Page(data, 4, "Where samples leave at the operating point")
    o = data.outcome
    k = data.k
    shares, counts, acc = o.shares(k), o.counts(k), o.accuracy_per_exit(k)
    where = "held-out samples" if o.held_out else "samples"
    p.para(
        f"Top: share of the {o.n:,} {where} that leave at each exit under the operating point's thresholds "
        f"(budget {data.budget_label}). Bottom: accuracy of those samples (red diamonds) and, for "
        "reference, each exit's accuracy on all samples (grey circles). Samples that leave early are the "
        "confident ones, so they are usually more accurate than the exit is on average. "
        f"Overall: {pct(data.accuracy)} right on these samples"
        + (f", {format_macs(data.held_cost('macs'))} per sample" if "macs" in data.full_model else "")
        + " (as on page 1).",
        size=9.5,
    )
    p.skip(0.25)
    top = p.axes(2.6, gap_in=0.1)
    bottom = p.axes(2.0, gap_in=0.15)
    plot_exits(shares, acc, counts=counts, exit_accuracy=data.exit_accuracy, axes=(top, bottom))
    p.skip(0.75)
    macs = data.run.costs.macs if data.run.costs is not None else None
    latency = data.run.costs.latency if data.run.costs is not None else {}
    # the latency the decision used, else the first profiled
    key = data.speedup_cost if data.speedup_cost in latency else min(latency, default=None)
    th = thresholds_text(data.thresholds, data.run)
    header = ["exit", "threshold", "leave here", "n", "their accuracy", "exit accuracy", "cum. MACs"]
    widths = [0.06, 0.13, 0.11, 0.07, 0.13, 0.13, 0.12]
    per_exit: list[float] = []
    if key is not None:
        header.append(f"ms {key}")
        widths.append(0.14)
        per_exit = list(latency[key].early_exit_ms)
    rows = [
        [
            str(i + 1),
            th[i],
            pct(float(shares[i]), 1),
            f"{int(counts[i]):,}",
            pct(float(acc[i]), 1) if np.isfinite(acc[i]) else "—",
            pct(float(data.exit_accuracy[i]), 1),
            format_macs(macs[i]) if macs is not None else "n/a",
            *([format_ms(per_exit[i])] if per_exit else []),
        ]
        for i in range(k)
    ]
    p.table(header, rows, col_widths=widths, size=9)
    if key is not None:
        e = data.latency.get(key)
        full = "" if e is None else f" For comparison, the full model {format_ms(e.full_model_ms)} on {key}."
        p.note(
            f"ms: profiled latency on {key} when leaving at that exit (the real early exit timed with every "
            "row leaving there)" + ("" if key.endswith("/b1") else ", for a whole batch") + "." + full,
            size=8.5,
        )
    return p.fig


def _page_calibration(data: ReportData) -> Figure:
    p = _Page(data, 5, "Calibration of each exit")
    temps = [float(v) for v in (data.thresholds.get("temperatures") or [1.0] * data.k)]
    stuck = {i for i, v in enumerate(data.thresholds.get("temperature_at_bound") or []) if v}
    p.para(
        "Early exit trusts each exit's confidence. A calibrated exit is right on about 90% of the samples it gives "
        "90% confidence; ECE (expected calibration error) is the sample-weighted mean gap between confidence and "
        "accuracy over 15 bins, on all samples."
        + (" Bars use the fitted temperatures; black ticks show temperature 1." if data.scaled_bins else ""),
        size=9.5,
    )
    p.skip(0.05)
    p.para(
        "In each diagram: blue bars, the accuracy of the samples in a confidence bin; red ticks, their mean "
        "confidence; dashed line, perfect calibration. Bars above the line: the exit is under-confident (it could "
        "exit more); below: over-confident. "
        + (
            "The number at the foot of each bar counts its samples: bins holding few are noisy."
            if bin_counts_shown(data.k)
            else f"With {data.k} exits the panels are too small to print each bin's sample count."
        ),
        size=9.5,
    )
    header = ["exit", "accuracy", "mean confidence", "ECE (T = 1)"]
    widths = [0.07, 0.13, 0.17, 0.14]
    if data.scaled_bins:
        header += ["temperature", "ECE (fitted T)"]
        widths += [0.21, 0.16]  # "20.000 (at bound)" on one line
    rows = []
    for i in range(data.k):
        row = [
            str(i + 1),
            pct(float(data.exit_accuracy[i])),
            f"{float(data.exit_confidence[i]):.3f}",
            f"{data.bins[i].ece:.3f}",
        ]
        if data.scaled_bins:
            mark = " (at bound)" if i in stuck else ""
            row += [f"{temps[i]:.3f}{mark}", f"{data.scaled_bins[i].ece:.3f}"]
        rows.append(row)
    p.table(header, rows, col_widths=widths, size=9.5)
    if stuck:
        p.skip(0.05)
        p.para(
            "Warning: the fitted temperature of exit "
            + ", ".join(str(i + 1) for i in sorted(stuck))
            + " stopped at the search bound (0.05 or 20): its likelihood wants a more extreme "
            "temperature (near-constant logits, or an exit almost always right or wrong), so "
            "its confidence may be poorly calibrated.",
            size=9.5,
        )
    p.skip(0.2)
    cols = reliability_columns(data.k)
    n_rows = math.ceil(data.k / cols)
    room = p.y * p.height_in - 1.1 - 0.8 * n_rows
    panel_h = min(3.0 if cols == 2 else 2.2, room / n_rows)
    axes = p.grid(data.k, cols, panel_h, gap_in=0.35, square=True)
    plot_reliability(
        data.bins, scaled=data.scaled_bins, temperatures=temps if data.scaled_bins else None, legend=False, axes=axes
    )
    return p.fig


def _short_name(name: str, most: int = 16) -> str:
    return name if len(name) <= most else name[: most - 1] + "…"


def _page_provenance(data: ReportData) -> Figure:
    p = _Page(data, 6, "Thresholds and provenance")
    t = data.thresholds
    p.heading("Thresholds (deploy these with the model)", size=11)
    _thresholds_table(p, data)
    p.note(
        f"score: {t.get('score', 'maxprob')}; method: {t.get('method', 'n/a')}; a sample leaves at the first exit "
        "whose score (from logits / temperature) is at least that exit's threshold; the last exit takes the rest.",
        size=8.5,
    )
    p.skip(0.1)
    p.heading("Run", size=11)
    p.rows(_run_items(data.run), mono=("weights SHA-256", "command"))  # whole, wrapped between words
    p.skip(0.15)
    p.heading("This report", size=11)
    p.para("; ".join(_asked(data)), size=9)
    if data.command:
        p.para(data.command, size=8, family="DejaVu Sans Mono")
    return p.fig


def _thresholds_table(p: _Page, data: ReportData) -> None:
    """Every exit's threshold for people, as thresholds.json holds it, and its temperature."""
    run, t = data.run, data.thresholds
    th = thresholds_text(t, run)
    temps = [float(v) for v in (t.get("temperatures") or [1.0] * run.k)]
    raw = t.get("thresholds") or []
    rows = [
        [str(i + 1), th[i], "null" if i >= len(raw) or raw[i] is None else f"{float(raw[i]):.6g}", f"{temps[i]:.4g}"]
        for i in range(run.k)
    ]
    p.table(["exit", "threshold", "thresholds.json", "temperature"], rows, col_widths=[0.08, 0.2, 0.2, 0.16], size=9)


def _run_items(run: Run) -> list[tuple[str, str]]:
    """The run's provenance and costs, as label and value."""
    prov = run.provenance
    costs = run.costs
    items: list[tuple[str, str]] = [
        ("run directory", str(run.path)),
        ("model", prov.model or "n/a"),
        ("weights SHA-256", prov.weights_sha256 or "n/a"),
        ("data", prov.data or "n/a"),
        ("N / K / C", f"{run.n:,} samples / {run.k} exits / {run.c:,} classes"),
        ("logits computed on", prov.device or "n/a"),
        ("created", prov.created or "n/a"),
        ("command", prov.command or "n/a"),
        ("libraries", ", ".join(f"{k} {v}" for k, v in sorted(prov.versions.items())) or "n/a"),
    ]
    if prov.extra:
        items.append(("details", ", ".join(f"{k}={v}" for k, v in sorted(prov.extra.items()))))
    if costs is None:
        return [*items, ("costs", "none")]
    items.append(
        (
            "costs",
            f"source: {costs.source}; cumulative MACs: "
            + (", ".join(format_macs(m) for m in costs.macs) if costs.macs else "none"),
        )
    )
    basis = (costs.model or {}).get("macs_basis")
    if basis:  # a model of several inputs: MACs averaged over the data's sequence lengths
        items.append(("MACs basis", str(basis)))
    if costs.unsupported_ops:
        items.append(
            ("not counted by fvcore", ", ".join(f"{u.op}×{u.count} (stage {u.stage})" for u in costs.unsupported_ops))
        )
    for key, prof in sorted(costs.latency.items()):
        setting = _latency_settings_text(prof.settings)
        items.append((f"latency {key}", f"{prof.hardware or 'n/a'}; threads {prof.threads}; {setting}"))
    return items


def _latency_settings_text(settings: Mapping[str, Any]) -> str:
    """The measurement settings a reader needs, and which stages were noisy."""
    parts = [f"{k}={settings[k]}" for k in _SETTING_KEYS if k in settings]
    noisy = settings.get("noisy")
    if isinstance(noisy, Mapping) and noisy:
        spread = ", ".join(f"{k} {100 * float(v):.0f}%" for k, v in noisy.items())
        parts.append(f"IQR/median above 10%: {spread}")
    return ", ".join(parts)


def _asked(data: ReportData) -> list[str]:
    """What this report was asked, as the flags that ask it."""
    req = data.requirements
    if data.budget_source is BudgetSource.THRESHOLDS:
        asked = [f"--thresholds {data.thresholds_path}"]
    elif data.budget_source is BudgetSource.ASKED:
        asked = [f"--budget {data.budget}"]
    else:
        asked = [f"budget {data.short_budget} ({data.budget_reason})"]
    if data.verify is not None:
        asked.append(f"--verify {data.verify_label} (used: it matches the run, thresholds and weights)")
    if req.min_accuracy is not None:
        asked.append(f"--min-accuracy {req.min_accuracy:g}")
    if req.max_drop is not None:
        asked.append(f"--max-drop {req.max_drop:g}")
    if req.min_speedup is not None:
        asked.append(f"--min-speedup {req.min_speedup:g} (judged on {data.speedup_cost})")
    return asked


def _page_compare(data: ReportData) -> Figure:
    """Page 7 (with --compare): every other model against the operating point."""
    p = _Page(data, len(PAGE_TITLES) + 1, "Against other models")
    alts = data.alternatives
    op_costs = {a.cost: a.operating_cost for a in alts}
    op_cost = "; ".join(_cost_text(c, v) for c, v in op_costs.items())
    iv = "" if data.accuracy_interval is None else f" (95% interval {interval_text(data.accuracy_interval, pct)})"
    p.para(
        f"Other runs on the same data (--compare), each judged against the operating point (budget "
        f"{data.short_budget}: {pct(data.accuracy)}{iv} on {data.outcome.n:,} "
        f"{'held-out ' if data.outcome.held_out else ''}samples, {op_cost}). A static model is one point on "
        "pages 2–3; an early-exit model is judged with its thresholds solved at the operating point's cost and "
        "drawn as its curve.",
        size=9.5,
    )
    dominant = data.dominating_static
    if dominant:
        verdict = "NO-GO for early exit" if data.decision is not None else "early exit does not pay off against it"
        p.skip(0.05)
        p.para(f"A static model is as accurate and faster: {verdict}.", size=11, color=_NOGO_COLOR, weight="bold")
        p.para(_dominance_text(data, dominant[0]) + ".", size=9.5)
    p.skip(0.05)
    p.heading("At the operating point", size=11)
    _alternatives_table(p, data)
    p.skip(0.1)
    p.para(_alternatives_summary(data), size=9.5)
    keys = sorted({k for a in alts for k in a.latency_ms if k in data.latency})[:4]
    if keys or "macs" in data.full_model:
        _costs_table(p, data, keys)
    p.skip(0.1)
    p.heading("How they were compared", size=11)
    for a in alts:
        p.note(f"{a.name} (K={a.k}): {a.path}")
    p.skip(0.05)
    p.para(" ".join(_how_compared(data)), size=8.5)
    return p.fig


def _alternatives_table(p: _Page, data: ReportData) -> None:
    """Each alternative at the operating point: accuracy, difference, cost ratio and result, and how to read it."""
    alts = data.alternatives
    rows, colors = [], []
    for a in alts:
        kind = "static" if a.static else "early exit"
        acc = pct(a.accuracy) + ("" if a.ci is None else f" ({100 * a.ci[0]:.1f}–{100 * a.ci[1]:.1f})")
        diff = f"{100 * a.difference:+.2f}" + (
            "" if a.difference_ci is None else f" ({100 * a.difference_ci[0]:+.2f} to {100 * a.difference_ci[1]:+.2f})"
        )
        ratio = a.cost_value / a.operating_cost if a.operating_cost else float("nan")
        cost = format_macs(a.cost_value) if a.cost == "macs" else format_ms(a.cost_value)
        word, color = _alternative_result(a)
        rows.append(
            [f"{_short_name(a.name)} ({kind}){'' if a.paired else '*'}", acc, diff, f"{cost} ({ratio:.2g}×)", word]
        )
        colors.append(color)
    p.table(
        ["model", "accuracy (95% int.)", "vs op. point, pts", "cost (× op.)", "result"],
        rows,
        col_widths=[0.19, 0.17, 0.175, 0.17, 0.2],
        size=8,
        row_colors=colors,
    )
    costs = sorted({a.cost for a in alts})
    p.note(
        ("* unpaired (on other samples, see below). " if any(not a.paired for a in alts) else "")
        + "Cost: "
        + "; ".join("MACs per sample" if c == "macs" else f"ms on {c}" for c in costs)
        + ". vs op. point: accuracy minus the operating point's, in percentage points, with its 95% interval. "
        "Result: cheaper or costlier, "
        "and more accurate (whole interval above zero), as accurate (at or above zero), less accurate (below "
        "zero) or within noise (the interval straddles zero).",
    )


def _costs_table(p: _Page, data: ReportData, keys: list[str]) -> None:
    """MACs and the shared latency keys of the operating point and every alternative."""
    has_macs = "macs" in data.full_model
    p.skip(0.1)
    p.heading("Costs", size=11)
    header = ["model"] + (["MACs per sample"] if has_macs else []) + [f"ms {k}" for k in keys]
    op_macs = [format_macs(data.held_cost("macs"))] if has_macs else []
    cost_rows = [["operating point (early exit)", *op_macs, *(format_ms(data.latency[k].early_exit_ms) for k in keys)]]
    for a in data.alternatives:
        macs = [format_macs(a.macs)] if has_macs else []
        cost_rows.append([_short_name(a.name), *macs, *(format_ms(a.latency_ms.get(k)) for k in keys)])
    p.table(header, cost_rows, col_widths=[0.3] + [0.15] * (len(header) - 1), size=8.5)
    p.note(
        "MACs as fvcore counts them (expected per sample for an early exit); milliseconds per batch (per sample "
        "at batch size 1): a static model's whole forward as profiled, an early exit's predicted from its "
        "profiled stages on the judged samples. " + " ".join(_latency_left_out(data)),
    )


def _how_compared(data: ReportData) -> list[str]:
    """How the alternatives were judged: paired or not, solved how, and what dominating means."""
    alts = data.alternatives
    notes = []
    paired = [a.name for a in alts if a.paired]
    if paired:
        notes.append(
            f"Paired ({', '.join(paired)}): on the same {data.outcome.n:,} samples as the operating point (same "
            "dataset indices and labels); the interval is a bootstrap of the per-sample difference in correctness."
        )
    for a in alts:
        if not a.paired:
            notes.append(f"Unpaired ({a.name}): {a.note}; the interval bootstraps both accuracies independently.")
    if any(not a.static for a in alts):
        notes.append(
            "An early-exit model is scored like the operating point and its thresholds solved at the operating "
            "point's cost, fitted on samples it is not judged on; where even its first exit costs more, it is "
            "judged with every sample at exit 1."
        )
    if not data.outcome.held_out:
        notes.append("Nothing was held out, so there are no intervals and point estimates decide.")
    notes.append(
        "A model dominates when it is cheaper on the cost compared (the device and batch size the criteria are "
        "judged on; MACs and other batch sizes are context) and as accurate; a static model that dominates makes "
        "the report NO-GO for early exit (when criteria were given)."
    )
    return notes


def _latency_left_out(data: ReportData) -> list[str]:
    """Why an alternative's latency is not drawn on page 3 for a key the report has."""
    out = []
    for a in data.alternatives:
        for k in sorted(data.latency):
            if k in a.latency_ms and LatencyKey.parse(k).column not in a.curve:
                out.append(f"{a.name} was profiled on {k} on other hardware, so it is not drawn on page 3.")
    return out
