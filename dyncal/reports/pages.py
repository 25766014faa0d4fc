"""The six pages of the report, each drawn from :class:`dyncal.reports.operating.ReportData`.

1. Decision: GO / NO-GO / INCONCLUSIVE (timing noise alone decides a latency criterion),
   or the trade-off when no criterion is given; the criteria with their 95% intervals, the
   operating point and the speed-up against the full model.
2. Accuracy against MACs: every method's frontier, the static exits, the oracle bound.
3. Accuracy against latency, one panel per profiled device and batch size (or a page that
   says none was profiled and how to measure it).
4. Exits at the operating point.
5. Calibration: per-exit accuracy, confidence, ECE and reliability diagrams.
6. Thresholds and provenance.

Each page function takes the report's data and returns one A4 figure; nothing here computes
accuracies or thresholds.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from dyncal.artifacts.costs import LatencyKey
from dyncal.reports.compare import Alternative
from dyncal.reports.decision import FAIL, INCONCLUSIVE, decide
from dyncal.reports.evidence import batch_size_of
from dyncal.reports.figures import (
    ComparedModel,
    latency_keys,
    plot_exits,
    plot_frontier,
    plot_latency,
    plot_reliability,
    reliability_columns,
)
from dyncal.reports.layout import _AMBER, _GO_COLOR, _GREY, _NOGO_COLOR, PAGE_TITLES, _Page, _status_color
from dyncal.reports.operating import (
    ReportData,
    _budget_label,
    _float_or_none,
    _held_cost,
    _short_budget,
)
from dyncal.reports.text import (
    REMEDY,
    _change_text,
    _criterion_digits,
    _criterion_label,
    _criterion_value,
    _failure_text,
    _inconclusive_text,
    _interval_text,
    _macs,
    _ms,
    _need_text,
    _pct,
    _pts,
    _status_word,
    _thresholds_text,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _budget_macs(data: ReportData) -> float | None:
    """The budget in MACs, when it binds MACs."""
    b = data.thresholds.get("budget") or {}
    if b.get("unit") == "macs" and b.get("value") is not None:
        return float(b["value"])
    return None


_SETTING_KEYS = ("repeats", "warmup", "timer", "dtype", "input_shape", "decision")


def _latency_settings_text(settings: Mapping[str, Any]) -> str:
    """The measurement settings a reader needs, and which stages were noisy."""
    parts = [f"{k}={settings[k]}" for k in _SETTING_KEYS if k in settings]
    noisy = settings.get("noisy")
    if isinstance(noisy, Mapping) and noisy:
        spread = ", ".join(f"{k} {100 * float(v):.0f}%" for k, v in noisy.items())
        parts.append(f"IQR/median above 10%: {spread}")
    return ", ".join(parts)


def _decision_message(data: ReportData) -> str:
    """The sentence under the verdict: why GO, NO-GO or INCONCLUSIVE (and a static model that dominates)."""
    criteria = _criteria_message(data, decide(data.criteria))
    dominant = data.dominating_static
    if not dominant:
        return criteria
    what = _dominance_text(data, dominant[0])
    if data.decision is None:
        return f"{criteria} A static model is as accurate and faster ({what}): early exit does not pay off against it."
    alone = "Every criterion is met on its own." if decide(data.criteria) == "GO" else criteria
    return f"A static model is as accurate and faster: NO-GO for early exit ({what}). {alone}"


def _dominance_text(data: ReportData, a: Alternative) -> str:
    """A dominating alternative in a few words: its accuracy and cost against the operating point's."""
    iv = "" if a.difference_ci is None else f", 95% interval {_pts_interval(a.difference_ci)}"
    return (
        f"{a.name}: {_pct(a.accuracy)} against {_pct(data.accuracy)} ({100 * a.difference:+.2f} pts{iv}); "
        f"{_cost_text(a.cost, a.cost_value)} against {_cost_text(a.cost, a.operating_cost)}"
    )


def _criteria_message(data: ReportData, decision: str | None) -> str:
    """Why the criteria alone give GO, NO-GO or INCONCLUSIVE."""
    if decision is None:
        return "No criterion was given, so this report does not decide; it states the trade-off."
    failed = [c for c in data.criteria if c.status == FAIL]
    unsure = [c for c in data.criteria if c.status == INCONCLUSIVE]
    if not data.outcome.held_out and not unsure:
        met = "Every criterion is met" if decision == "GO" else "Not every criterion is met"
        return (
            f"{met} by its point estimate, fitted on the same samples it is judged on "
            "(optimistic; no intervals). Hold samples out (--holdout 0.5) for a decision."
        )
    if decision == "GO":
        return "Every criterion is met, each with its whole 95% interval on the right side."
    if decision == "INCONCLUSIVE":
        return (
            "Timing noise alone decides: "
            + "; ".join(_inconclusive_text(c) for c in unsure)
            + f". The latency measurement is too noisy to call: {REMEDY}."
        )
    return "Not met with 95% confidence: " + "; ".join(_failure_text(c) for c in failed) + "."


def _cost_text(cost: str, v: float | None) -> str:
    """A cost in its unit: MACs per sample, or ms (per batch above batch size 1)."""
    if cost == "macs":
        return _macs(v)
    b = batch_size_of(cost)
    return f"{_ms(v)} on {cost}" + ("" if b == 1 else " per batch")


def _pts_interval(iv: tuple[float, float]) -> str:
    return f"{100 * iv[0]:+.2f} to {100 * iv[1]:+.2f} pts"


def _alternative_result(a: Alternative) -> tuple[str, str]:
    """The verdict on one alternative, and its colour: red when it dominates, green when early exit does."""
    if a.dominates:
        return "as accurate, cheaper", _NOGO_COLOR
    if not a.at_operating_cost:
        return "cannot run this cheaply", _GO_COLOR
    low = a.difference if a.difference_ci is None else a.difference_ci[0]
    if low > 1e-12:
        word = "more accurate"
    elif a.as_accurate:
        word = "as accurate"
    elif a.less_accurate:
        word = "less accurate"
    else:
        word = "within noise"
    cost = "cheaper" if a.cheaper else "costlier"
    better = not a.cheaper and word != "more accurate"
    return f"{cost}, {word}", _GO_COLOR if better else "black"


def _alternatives_summary(data: ReportData) -> str:
    """Page 1's two sentences: the best alternative at the operating point's cost, the cheapest at its accuracy."""
    alts = data.alternatives
    cost, op_value = alts[0].cost, alts[0].operating_cost  # one cost for all (see dyncal.reports.compare)
    op_cost = _cost_text(cost, op_value)
    at_cost = [a for a in alts if a.at_operating_cost and (not a.static or a.cost_value <= a.operating_cost)]
    out = []
    if at_cost:
        best = max(at_cost, key=lambda a: a.accuracy)
        iv = "" if best.difference_ci is None else f", 95% interval {_pts_interval(best.difference_ci)}"
        how = "paired" if best.paired else "unpaired"
        solved = "" if best.static else " (its thresholds solved at that cost)"
        out.append(
            f"At the operating point's cost ({op_cost}), the most accurate alternative is {best.name}{solved}: "
            f"{_pct(best.accuracy)} against {_pct(data.accuracy)}, {100 * best.difference:+.2f} pts ({how}{iv})."
        )
    else:
        out.append(f"No alternative runs at the operating point's cost ({op_cost}).")
    reach = [a for a in alts if a.cost_to_reach is not None]
    if reach:
        cheapest = min(reach, key=lambda a: float(a.cost_to_reach or 0.0))
        reached = float(cheapest.cost_to_reach or 0.0)
        ratio = reached / op_value if op_value else float("nan")
        out.append(
            f"At the operating point's accuracy ({_pct(data.accuracy)}), the cheapest alternative is "
            f"{cheapest.name}: {_cost_text(cost, reached)}, {ratio:.2f}× the operating point's cost."
        )
    else:
        out.append(f"No alternative reaches the operating point's accuracy ({_pct(data.accuracy)}).")
    return " ".join(out)


def _latency_sentence(data: ReportData, key: str) -> str:
    """One key's early exit against the full model, for people."""
    e = data.latency[key]
    b = batch_size_of(key)
    what = "the early exit takes" if b == 1 else f"a batch of {b} takes"
    how = e.rows if e.source == "measured" else "predicted from the profiled stage times"
    return (
        f"On {key} {what} {_ms(e.early_exit_ms)} and the full model {_ms(e.full_model_ms)}: "
        f"{e.speedup.value:.2f}× faster ({how})."
    )


def _page_decision(data: ReportData) -> Figure:
    p = _Page(data, 1, "Should this early-exit model ship?")
    t = data.thresholds
    acc, interval = data.accuracy, data.accuracy_interval
    p.skip(0.2)
    if data.decision is None:
        p.fig.text(0.06, p.y - 0.45 / p.height_in, "NO DECISION", fontsize=36, weight="bold", color=_GREY)
        p.skip(0.6)
    else:
        size = 48 if data.decision == "INCONCLUSIVE" else 64
        p.fig.text(
            0.06,
            p.y - 0.75 / p.height_in,
            data.decision,
            fontsize=size,
            weight="bold",
            color=_status_color(data.decision),
        )
        p.skip(0.95)
        if not data.outcome.held_out:
            p.fig.text(0.06, p.y + 0.05 / p.height_in, "(provisional: nothing held out)", fontsize=12, color=_GREY)
            p.skip(0.1)
    p.para(_decision_message(data), size=11, width=88)
    for note in data.notes:
        p.para("Note: " + note, size=9, color=_AMBER, width=105)
    # --- the trade-off in a few sentences
    o = data.outcome
    k_last = data.k
    last_acc = float(o.last_correct.mean()) if o.n else float("nan")
    rows_txt = "held-out samples" if o.held_out else "samples (nothing held out)"
    sp_macs = data.speedup.get("macs")
    parts = [
        f"At budget {_budget_label(data)}, early exit is right on {_pct(acc)} of "
        f"{o.n:,} {rows_txt}, "
        f"against {_pct(last_acc)} when exit {k_last} (the last) runs on every sample "
        f"({_change_text(last_acc - acc)})."
    ]
    if sp_macs is not None:
        parts.append(
            f"It spends {_macs(_held_cost(data, 'macs'))} per sample on average instead of "
            f"{_macs(data.full_model.get('macs'))}: {sp_macs:.2f}× fewer MACs."
        )
    for key in sorted(data.latency):
        parts.append(_latency_sentence(data, key))
    if not data.latency:
        parts.append("No latency was profiled, so the speed-up is in MACs only (see page 3).")
    elif any(e.source == "predicted" for e in data.latency.values()):
        parts.append(
            "Predicted latency comes from the profiled stage times (above batch size 1 a batch runs "
            "each stage until its last sample leaves); 'dyncal verify --out verify.json' measures a real "
            "early exit, which the report then judges on (--verify verify.json)."
        )
    p.skip(0.1)
    p.para(" ".join(parts), size=10, width=96)
    if data.alternatives:
        p.skip(0.05)
        p.para(f"Against other models (page {len(PAGE_TITLES) + 1}): " + _alternatives_summary(data), size=10, width=96)
    # --- criteria table
    p.skip(0.1)
    p.heading("Criteria")
    if data.criteria:
        rows, colors = [], []
        for c in data.criteria:
            d = _criterion_digits(c)
            rows.append(
                [
                    _criterion_label(c),
                    _criterion_value(c, c.value, d),
                    "n/a"
                    if c.interval is None
                    else _criterion_value(c, c.interval[0], d) + " to " + _criterion_value(c, c.interval[1], d),
                    _need_text(c, d),
                    _status_word(c),
                ]
            )
            colors.append(_status_color(c.status))
        p.table(
            ["criterion", "estimate", "95% interval", "required", "result"],
            rows,
            col_widths=[0.35, 0.1, 0.19, 0.11, 0.14],
            size=9.5,
            row_colors=colors,
        )
        notes = []
        for c in data.criteria:
            if c.name != "speedup" or c.cost == "macs":
                continue
            d = _criterion_digits(c)
            e = data.latency.get(str(c.cost))
            bits = [f"The speed-up on {c.cost} is {c.source}" + (f" ({e.rows})" if e is not None else "")]
            if c.interval_sampling is not None:
                s_iv = c.interval_sampling
                bits.append(
                    f"its interval carries sampling noise ({_criterion_value(c, s_iv[0], d)} to "
                    f"{_criterion_value(c, s_iv[1], d)} alone) and timing noise"
                )
            if c.interval_timing is not None:
                t_iv = c.interval_timing
                bits.append(
                    f"timing noise alone gives {_criterion_value(c, t_iv[0], d)} to {_criterion_value(c, t_iv[1], d)}"
                    + ("" if c.timing_spread is None else f", replicates spread {100 * c.timing_spread:.0f}% of median")
                )
            if batch_size_of(str(c.cost)) > 1 and c.source == "predicted":
                bits.append(
                    f"units are batches of {batch_size_of(str(c.cost))} held-out samples (a fixed random order)"
                )
            notes.append("; ".join(bits) + ".")
        rule = (
            "A criterion passes when its whole 95% interval clears the requirement, fails when it does not "
            "and timing noise cannot change that, and is inconclusive when timing noise alone decides (load "
            "on the machine can make a verdict inconclusive, never the opposite)."
            if o.held_out
            else "Nothing was held out, so the point estimates decide (fitted on the same samples: optimistic)."
        )
        p.note(" ".join([rule, *notes]), width=118)
    else:
        p.para(
            "None given. To decide, add --min-accuracy A or --max-drop D (fractions, e.g. 0.95 "
            "or 0.01) "
            "and/or --min-speedup S (e.g. 1.5), optionally with --device/--batch-size to judge "
            "latency.",
            size=9.5,
        )
    # --- operating point
    p.skip(0.05)
    p.heading("Operating point")
    held_word = "held out" if o.held_out else "on all samples (nothing held out)"
    fit_macs = data.fit_costs.get("macs")
    held_macs = _held_cost(data, "macs")
    op_rows = [
        ["budget", f"{_budget_label(data)}; {data.budget_reason}"],
        ["method, score", f"{t.get('method', 'n/a')}, {t.get('score', 'maxprob')}"],
        ["thresholds", ", ".join(_thresholds_text(t, data.run))],
        ["temperatures", ", ".join(f"{float(v):.3g}" for v in (t.get("temperatures") or []))],
        [
            "held-out accuracy" if o.held_out else "accuracy (fitted)",
            f"{_pct(acc)}  (95% interval {_interval_text(interval, _pct)}; {o.n:,} samples)",
        ],
        ["accuracy on fitting half", _pct(_float_or_none(t.get("calibration_accuracy")))],
    ]
    if "macs" in data.full_model:
        op_rows.append(
            [
                "expected MACs",
                f"{_macs(held_macs)} per sample {held_word} "
                f"({_pct((held_macs or float('nan')) / data.full_model['macs'], 1)} of the full model); "
                + (
                    f"{_macs(fit_macs)} on the fitting half, where the budget "
                    f"(at most {_macs(_budget_macs(data))}) is met; more would not buy accuracy"
                    if _budget_macs(data) is not None
                    and fit_macs is not None
                    and fit_macs < 0.8 * (_budget_macs(data) or 0.0)
                    else f"{_macs(fit_macs)} on the fitting half, where the budget is met"
                ),
            ]
        )
    for key in sorted(data.latency):
        e = data.latency[key]
        b = batch_size_of(key)
        per = "" if b == 1 else f" per batch of {b}"
        where = e.rows if e.source == "measured" else f"predicted, {held_word}"
        off = ""
        if e.measured_over_predicted is not None:
            off = f"; predicted {_ms(e.predicted_ms)}, measured / predicted {e.measured_over_predicted:.2f}"
        op_rows.append(
            [f"latency {key}", f"{_ms(e.early_exit_ms)}{per} ({where}{off}); full model {_ms(e.full_model_ms)}"]
        )
    speed = [f"{v:.2f}× ({'MACs' if k == 'macs' else k})" for k, v in data.speedup.items()]
    op_rows.append(["speed-up vs full model", ", ".join(speed) or "n/a"])
    op_rows.append(
        [
            "share leaving at exit 1..K",
            ", ".join(_pct(float(s), 1) for s in o.shares(data.k)) + f" ({held_word})",
        ]
    )
    for label, value in op_rows:
        p.skip(9 / 72 * 1.45)
        p.fig.text(0.06, p.y, label, fontsize=9, color=_GREY, va="baseline")
        wrapped = textwrap.wrap(value, width=84, break_on_hyphens=False) or [""]
        p.fig.text(0.3, p.y, wrapped[0], fontsize=9, va="baseline")
        for extra in wrapped[1:]:
            p.skip(9 / 72 * 1.35)
            p.fig.text(0.3, p.y, extra, fontsize=9, va="baseline")
    p.skip(0.15)
    p.note(
        (
            "Accuracies, costs and exit shares here are on the samples held out of fitting the thresholds "
            "(pages 2 and 4 show the same numbers). "
            if o.held_out
            else "Nothing was held out: accuracies and costs here are on the samples the thresholds were fitted on. "
        )
        + "Speed-up = cost of the full model on every sample / expected early-exit cost "
        "(latency includes one exit decision per exit passed). Pages 2–3 show the whole "
        "trade-off curve; "
        "page 4 where samples leave; page 5 calibration; page 6 thresholds and provenance"
        + ("; page 7 the other models." if data.alternatives else "."),
        width=118,
    )
    return p.fig


def _page_frontier(data: ReportData) -> Figure:
    p = _Page(data, 2, "Accuracy vs compute (MACs)")
    main = str(data.thresholds.get("method") or "smoothed")
    if "macs" not in data.full_model:
        p.skip(0.3)
        p.para("This run has no MAC counts.", size=14, weight="bold")
        p.skip(0.1)
        p.para(
            "The run's costs are latency only, so the trade-off curves are on page 3 (accuracy vs "
            "latency). To count compute per exit with fvcore, profile the run (it needs the "
            "model), "
            "or give the counts when importing:",
            size=10.5,
            width=90,
        )
        p.skip(0.1)
        mono = "DejaVu Sans Mono"
        p.para(f"dyncal profile {data.run.path} --device cpu", size=10.5, family=mono, indent=0.1)
        p.para(
            "dyncal import logits.npz --macs 1.2e8,3.1e8,... --out run",
            size=10.5,
            family=mono,
            indent=0.1,
        )
        return p.fig
    p.para(
        "Each curve is the accuracy on held-out samples against the mean MACs spent per sample, "
        "as the "
        "budget sweeps from exit 1 alone to the whole model. The band is the 95% interval of "
        f"the {main} "
        "thresholds (the ones deployed); squares are single exits used for every sample (a "
        "static model); "
        "the geometric curve is the MSDNet-style baseline; the oracle is an upper bound that "
        "knows the "
        "cheapest exit that gets each sample right. The star is the operating point, with its "
        "interval."
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
        acc = "no solution" if m.accuracy is None else _pct(m.accuracy)
        iv = "n/a" if m.interval is None else f"{_pct(m.interval[0])} to {_pct(m.interval[1])}"
        share = "" if full is None or m.fit_macs is None else f" ({_pct(m.fit_macs / full, 1)})"
        table.append([m.method + (" (deployed)" if deployed else ""), acc, iv, f"{_macs(m.fit_macs)}{share}"])
    if not table:
        return [], "The thresholds file records no budget to compare the other methods at; see the curves."
    note = (
        f"Every method solved at the operating point's budget ({_short_budget(data)}); accuracy on the "
        f"{data.outcome.n:,} held-out samples, MACs on the fitting half (where the budget is met and the "
        "curves are drawn). The deployed row is the operating point of page 1."
    )
    if main in by_name and "geometric" in by_name:
        a, g = by_name[main].accuracy, by_name["geometric"].accuracy
        if a is not None and g is not None:
            gain = a - g
            note += (
                f" {main} is {_pts(abs(gain), 2)} {'above' if gain >= 0 else 'below'} the geometric baseline "
                "at this budget."
            )
    return table, note


def _page_latency(data: ReportData) -> Figure:
    p = _Page(data, 3, "Accuracy vs latency")
    keys = latency_keys(data.frontier)
    if not keys:
        p.skip(0.3)
        p.para("No latency was profiled for this run.", size=14, weight="bold")
        p.skip(0.1)
        p.para(
            "MACs (page 2) are not time: early exit pays for the exit heads and a decision at "
            "each exit, "
            "and batches shrink as samples leave. To see accuracy against measured milliseconds "
            "here, "
            "measure the run's stages on the device you will deploy to, then build the report "
            "again:",
            size=10.5,
            width=90,
        )
        p.skip(0.1)
        p.para(
            f"dyncal profile {data.run.path} --device cpu --batch-size 1,32",
            size=10.5,
            family="DejaVu Sans Mono",
            indent=0.1,
        )
        p.para(
            f"dyncal report {data.run.path} --out report.pdf",
            size=10.5,
            family="DejaVu Sans Mono",
            indent=0.1,
        )
        p.skip(0.1)
        p.para(
            "Latency criteria (--min-speedup with --device, budgets in ms) need this too.",
            size=10.5,
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
    costs = data.run.costs
    assert costs is not None
    for key in keys:
        prof = costs.latency.get(key)
        if prof is None:
            continue
        iqr = prof.stage_iqr_ms
        med = prof.stage_median_ms
        noisy = [i + 1 for i, (q, m) in enumerate(zip(iqr, med, strict=True)) if m > 0 and q > 0.1 * m]
        e = data.latency.get(key)
        full = (
            ""
            if e is None
            else f" The full model {_ms(e.full_model_ms)} per {'sample' if batch_size_of(key) == 1 else 'batch'} "
            f"({e.full_model_source})."
        )
        line = (
            f"{key}: {prof.hardware or 'hardware not recorded'}"
            + (f", {prof.threads} thread(s)" if prof.threads else "")
            + f"; exit decision {_ms(prof.decision_median_ms)}; "
            + f"{len(prof.stage_ms[0]) if prof.stage_ms else 0} repeats per stage."
            + full
        )
        if noisy:
            stages = ", ".join(map(str, noisy))
            line += (
                f" Warning: spread (IQR) above 10% of the median for stage(s) {stages}: the machine was busy; "
                "measure with --threads 1 and more --repeats on a quiet machine."
            )
        p.para(line, size=8, width=125, color=_NOGO_COLOR if noisy else "black")
    measured = [e for e in data.latency.values() if e.source == "measured"]
    if data.verify is not None and measured:
        v = data.verify
        p.skip(0.1)
        p.heading(f"Measured by dyncal verify ({data.verify_label})", size=11)
        rows = []
        for e in sorted(measured, key=lambda e: e.key):
            iv = e.speedup.interval
            rows.append(
                [
                    e.key,
                    _ms(e.early_exit_ms),
                    _ms(e.predicted_ms),
                    "n/a" if e.measured_over_predicted is None else f"{e.measured_over_predicted:.2f}",
                    _ms(e.full_model_ms),
                    f"{e.speedup.value:.2f}×" + ("" if iv is None else f" ({iv[0]:.2f} to {iv[1]:.2f})"),
                ]
            )
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
            f"predictions: {_pct(v.agreement)}. The decision judges these measured figures; the prediction "
            "is shown for how far off it is.",
            width=125,
        )
    return p.fig


def _page_exits(data: ReportData) -> Figure:
    p = _Page(data, 4, "Where samples leave at the operating point")
    o = data.outcome
    k = data.k
    shares, counts, acc = o.shares(k), o.counts(k), o.accuracy_per_exit(k)
    where = "held-out samples" if o.held_out else "samples"
    p.para(
        f"Top: share of the {o.n:,} {where} that leave at each exit under the operating point's thresholds "
        f"(budget {_budget_label(data)}). Bottom: accuracy of those samples (red diamonds) and, for "
        "reference, each exit's accuracy on all samples (grey circles). Samples that leave early are the "
        "confident ones, so they are usually more accurate than the exit is on average. "
        f"Overall: {_pct(data.accuracy)} right on these samples"
        + (f", {_macs(_held_cost(data, 'macs'))} per sample" if "macs" in data.full_model else "")
        + " (as on page 1).",
        size=9.5,
    )
    p.skip(0.25)
    top = p.axes(2.6, gap_in=0.1)
    bottom = p.axes(2.0, gap_in=0.15)
    plot_exits(shares, acc, counts=counts, exit_accuracy=data.exit_accuracy, axes=(top, bottom))
    p.skip(0.75)
    macs = data.run.costs.macs if data.run.costs is not None else None
    keys = sorted(data.run.costs.latency) if data.run.costs is not None else []
    if data.speedup_cost in keys:  # the latency the decision used, first
        keys.remove(data.speedup_cost)
        keys.insert(0, data.speedup_cost)
    th = _thresholds_text(data.thresholds, data.run)
    header = ["exit", "threshold", "leave here", "n", "their accuracy", "exit accuracy", "cum. MACs"]
    widths = [0.06, 0.13, 0.11, 0.07, 0.13, 0.13, 0.12]
    per_exit: list[float] = []
    if keys and data.run.costs is not None:
        header.append(f"ms {keys[0]}")
        widths.append(0.14)
        per_exit = list(data.run.costs.latency[keys[0]].early_exit_ms)
    rows = []
    for i in range(k):
        row = [
            str(i + 1),
            th[i],
            _pct(float(shares[i]), 1),
            f"{int(counts[i]):,}",
            _pct(float(acc[i]), 1) if np.isfinite(acc[i]) else "—",
            _pct(float(data.exit_accuracy[i]), 1),
            _macs(macs[i]) if macs is not None else "n/a",
        ]
        if per_exit:
            row.append(_ms(per_exit[i]))
        rows.append(row)
    p.table(header, rows, col_widths=widths, size=9)
    if per_exit:
        e = data.latency.get(keys[0])
        full = "" if e is None else f" For comparison, the full model {_ms(e.full_model_ms)} on {keys[0]}."
        p.note(
            f"ms: profiled latency on {keys[0]} when leaving at that exit (stage medians so far plus the exit "
            "decisions)" + ("" if keys[0].endswith("/b1") else ", for a whole batch") + "." + full,
            size=8.5,
            width=110,
        )
    return p.fig


def _page_calibration(data: ReportData) -> Figure:
    p = _Page(data, 5, "Calibration of each exit")
    temps = [float(v) for v in (data.thresholds.get("temperatures") or [1.0] * data.k)]
    stuck = {i for i, v in enumerate(data.thresholds.get("temperature_at_bound") or []) if v}
    p.para(
        "Early exit trusts each exit's confidence. A calibrated exit is right on about 90% of "
        "the samples "
        "it gives 90% confidence; ECE (expected calibration error) is the sample-weighted mean "
        "gap between "
        "confidence and accuracy over 15 bins, on all samples."
        + (" Bars use the fitted temperatures; black ticks show temperature 1." if data.scaled_bins else ""),
        size=9.5,
    )
    p.skip(0.05)
    p.para(
        "In each diagram: blue bars, the accuracy of the samples in a confidence bin; red "
        "ticks, their mean "
        "confidence; dashed line, perfect calibration. Bars above the line: the exit is "
        "under-confident "
        "(it could exit more); below: over-confident. Bins holding few samples are noisy.",
        size=9.5,
    )
    header = ["exit", "accuracy", "mean confidence", "ECE (T = 1)"]
    widths = [0.08, 0.14, 0.18, 0.16]
    if data.scaled_bins:
        header += ["temperature", "ECE (fitted T)"]
        widths += [0.15, 0.17]
    rows = []
    for i in range(data.k):
        row = [
            str(i + 1),
            _pct(float(data.exit_accuracy[i])),
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
        data.bins,
        scaled=data.scaled_bins,
        temperatures=temps if data.scaled_bins else None,
        legend=False,
        axes=axes,
    )
    return p.fig


def _page_provenance(data: ReportData) -> Figure:
    p = _Page(data, 6, "Thresholds and provenance")
    run = data.run
    t = data.thresholds
    p.heading("Thresholds (deploy these with the model)", size=11)
    th = _thresholds_text(t, run)
    temps = [float(v) for v in (t.get("temperatures") or [1.0] * run.k)]
    raw = t.get("thresholds") or []
    rows = [
        [
            str(i + 1),
            th[i],
            "null" if i >= len(raw) or raw[i] is None else f"{float(raw[i]):.6g}",
            f"{temps[i]:.4g}",
        ]
        for i in range(run.k)
    ]
    p.table(
        ["exit", "threshold", "thresholds.json", "temperature"],
        rows,
        col_widths=[0.08, 0.2, 0.2, 0.16],
        size=9,
    )
    p.note(
        f"score: {t.get('score', 'maxprob')}; method: {t.get('method', 'n/a')}; a sample leaves "
        "at the first exit "
        "whose score (from logits / temperature) is at least that exit's threshold; the last "
        "exit takes the rest.",
        size=8.5,
    )
    p.skip(0.1)
    p.heading("Run", size=11)
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
    if costs is not None:
        items.append(
            (
                "costs",
                f"source: {costs.source}; cumulative MACs: "
                + (", ".join(_macs(m) for m in costs.macs) if costs.macs else "none"),
            )
        )
        if costs.unsupported_ops:
            items.append(
                (
                    "not counted by fvcore",
                    ", ".join(f"{u.op}×{u.count} (stage {u.stage})" for u in costs.unsupported_ops),
                )
            )
        for key, prof in sorted(costs.latency.items()):
            setting = _latency_settings_text(prof.settings)
            items.append((f"latency {key}", f"{prof.hardware or 'n/a'}; threads {prof.threads}; {setting}"))
    else:
        items.append(("costs", "none"))
    for label, value in items:
        p.skip(9 / 72 * 1.4)
        p.fig.text(0.06, p.y, label, fontsize=9, color=_GREY, va="baseline")
        mono = label in ("weights SHA-256", "command")
        wrapped = textwrap.wrap(value, width=70 if mono else 80, break_long_words=True) or [""]
        if len(wrapped) > 4:
            wrapped = [*wrapped[:3], wrapped[3][:-2] + " …"]
        for j, line in enumerate(wrapped):
            if j:
                p.skip(9 / 72 * 1.3)
            p.fig.text(
                0.3,
                p.y,
                line,
                fontsize=8.5 if mono else 9,
                va="baseline",
                family="DejaVu Sans Mono" if mono else None,
            )
    p.skip(0.15)
    p.heading("This report", size=11)
    req = data.requirements
    if data.thresholds_path is not None:
        asked = [f"--thresholds {data.thresholds_path}"]
    elif data.budget_reason.startswith("asked"):
        asked = [f"--budget {data.budget}"]
    else:
        asked = [f"budget {_short_budget(data)} ({data.budget_reason})"]
    if data.verify is not None:
        asked.append(f"--verify {data.verify_label} (used: it matches the run, thresholds and weights)")
    if req.min_accuracy is not None:
        asked.append(f"--min-accuracy {req.min_accuracy:g}")
    if req.max_drop is not None:
        asked.append(f"--max-drop {req.max_drop:g}")
    if req.min_speedup is not None:
        asked.append(f"--min-speedup {req.min_speedup:g} (judged on {data.speedup_cost})")
    p.para("; ".join(asked), size=9)
    if data.command:
        p.para(data.command, size=8.5, family="DejaVu Sans Mono", width=100)
    return p.fig


def _short_name(name: str, most: int = 16) -> str:
    return name if len(name) <= most else name[: most - 1] + "…"


def _page_compare(data: ReportData) -> Figure:
    """Page 7 (with --compare): every other model against the operating point."""
    p = _Page(data, len(PAGE_TITLES) + 1, "Against other models")
    alts = data.alternatives
    op_costs = {a.cost: a.operating_cost for a in alts}
    op_cost = "; ".join(_cost_text(c, v) for c, v in op_costs.items())
    iv = "" if data.accuracy_interval is None else f" (95% interval {_interval_text(data.accuracy_interval, _pct)})"
    p.para(
        f"Other runs on the same data (--compare), each judged against the operating point (budget "
        f"{_short_budget(data)}: {_pct(data.accuracy)}{iv} on {data.outcome.n:,} "
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
    rows, colors = [], []
    for a in alts:
        kind = "static" if a.static else "early exit"
        acc = _pct(a.accuracy) + ("" if a.ci is None else f" ({100 * a.ci[0]:.1f}–{100 * a.ci[1]:.1f})")
        diff = f"{100 * a.difference:+.2f}" + (
            "" if a.difference_ci is None else f" ({100 * a.difference_ci[0]:+.2f} to {100 * a.difference_ci[1]:+.2f})"
        )
        ratio = a.cost_value / a.operating_cost if a.operating_cost else float("nan")
        cost = _macs(a.cost_value) if a.cost == "macs" else _ms(a.cost_value)
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
        left=0.04,
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
        width=125,
    )
    p.skip(0.1)
    p.para(_alternatives_summary(data), size=9.5)
    keys = sorted({k for a in alts for k in a.latency_ms if k in data.latency})[:4]
    has_macs = "macs" in data.full_model
    if keys or has_macs:
        p.skip(0.1)
        p.heading("Costs", size=11)
        header = ["model"] + (["MACs per sample"] if has_macs else []) + [f"ms {k}" for k in keys]
        op_macs = [_macs(_held_cost(data, "macs"))] if has_macs else []
        cost_rows = [["operating point (early exit)", *op_macs, *(_ms(data.latency[k].early_exit_ms) for k in keys)]]
        for a in alts:
            macs = [_macs(a.macs)] if has_macs else []
            cost_rows.append([_short_name(a.name), *macs, *(_ms(a.latency_ms.get(k)) for k in keys)])
        p.table(header, cost_rows, col_widths=[0.3] + [0.15] * (len(header) - 1), size=8.5)
        p.note(
            "MACs as fvcore counts them (expected per sample for an early exit); milliseconds per batch (per sample "
            "at batch size 1): a static model's whole forward as profiled, an early exit's predicted from its "
            "profiled stages on the judged samples. " + " ".join(_latency_left_out(data)),
            width=125,
        )
    p.skip(0.1)
    p.heading("How they were compared", size=11)
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
        "A model dominates when it is cheaper and as accurate; a static model that dominates makes the report "
        "NO-GO for early exit (when criteria were given)."
    )
    for a in alts:
        p.note(f"{a.name} (K={a.k}): {a.path}", width=125)
    p.skip(0.05)
    p.para(" ".join(notes), size=8.5, width=118)
    return p.fig


def _latency_left_out(data: ReportData) -> list[str]:
    """Why an alternative's latency is not drawn on page 3 for a key the report has."""
    out = []
    for a in data.alternatives:
        for k in sorted(data.latency):
            if k in a.latency_ms and LatencyKey.parse(k).column not in a.curve:
                out.append(f"{a.name} was profiled on {k} on other hardware, so it is not drawn on page 3.")
    return out
