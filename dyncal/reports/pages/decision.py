"""Page 1, the decision: the verdict and why, the trade-off in a few sentences, the criteria, the operating point.

Its sentences on other models (``compare``) are shared with page 7 (:mod:`dyncal.reports.pages.details`).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from dyncal.reports.compare import Alternative
from dyncal.reports.data import ReportData, _float_or_none
from dyncal.reports.decision import FAIL, INCONCLUSIVE, Criterion, decide
from dyncal.reports.evidence import batch_size_of
from dyncal.reports.figures import format_ms
from dyncal.reports.layout import _AMBER, _GO_COLOR, _GREY, _NOGO_COLOR, PAGE_TITLES, _Page, _status_color
from dyncal.reports.text import (
    REMEDY,
    change_text,
    criterion_digits,
    criterion_label,
    criterion_value,
    failure_text,
    format_macs,
    inconclusive_text,
    interval_text,
    need_text,
    pct,
    status_word,
    thresholds_text,
)
from dyncal.reports.throughput import runtime_sentences

if TYPE_CHECKING:
    from matplotlib.figure import Figure


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
        f"{a.name}: {pct(a.accuracy)} against {pct(data.accuracy)} ({100 * a.difference:+.2f} pts{iv}); "
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
    limited = [c for c in unsure if c.remedy]
    if decision == "INCONCLUSIVE" and limited:
        return (
            "Too few samples were timed to decide: "
            + "; ".join(f"{inconclusive_text(c)}; {c.remedy}" for c in limited)
            + " (verify stopped at its time bound)."
        )
    if decision == "INCONCLUSIVE":
        return (
            "Timing noise alone decides: "
            + "; ".join(inconclusive_text(c) for c in unsure)
            + f". The latency measurement is too noisy to call: {REMEDY}."
        )
    return "Not met with 95% confidence: " + "; ".join(failure_text(c) for c in failed) + "."


def _cost_text(cost: str, v: float | None) -> str:
    """A cost in its unit: MACs per sample, or ms (per batch above batch size 1)."""
    if cost == "macs":
        return format_macs(v)
    b = batch_size_of(cost)
    return f"{format_ms(v)} on {cost}" + ("" if b == 1 else " per batch")


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
            f"{pct(best.accuracy)} against {pct(data.accuracy)}, {100 * best.difference:+.2f} pts ({how}{iv})."
        )
    else:
        out.append(f"No alternative runs at the operating point's cost ({op_cost}).")
    reach = [a for a in alts if a.cost_to_reach is not None]
    if reach:
        cheapest = min(reach, key=lambda a: float(a.cost_to_reach or 0.0))
        reached = float(cheapest.cost_to_reach or 0.0)
        ratio = reached / op_value if op_value else float("nan")
        out.append(
            f"At the operating point's accuracy ({pct(data.accuracy)}), the cheapest alternative is "
            f"{cheapest.name}: {_cost_text(cost, reached)}, {ratio:.2f}× the operating point's cost."
        )
    else:
        out.append(f"No alternative reaches the operating point's accuracy ({pct(data.accuracy)}).")
    return " ".join(out)


def _latency_sentence(data: ReportData, key: str) -> str:
    """One key's early exit against the full model, for people."""
    e = data.latency[key]
    b = batch_size_of(key)
    what = "the early exit takes" if b == 1 else f"a batch of {b} takes"
    how = e.rows if e.source == "measured" else "predicted from the profiled stage times"
    return (
        f"On {key} {what} {format_ms(e.early_exit_ms)} and the full model {format_ms(e.full_model_ms)}: "
        f"{e.speedup.value:.2f}× faster ({how})."
    )


def _page_decision(data: ReportData) -> Figure:
    p = _Page(data, 1, "Should this early-exit model ship?")
    _verdict(p, data)
    p.skip(0.1)
    p.para(_trade_off(data), size=10)
    if data.alternatives:
        p.skip(0.05)
        p.para(f"Against other models (page {len(PAGE_TITLES) + 1}): " + _alternatives_summary(data), size=10)
    p.skip(0.1)
    p.heading("Criteria")
    _criteria_table(p, data)
    p.skip(0.05)
    p.heading("Operating point")
    p.rows([(label, value) for label, value in _operating_rows(data)])
    p.skip(0.15)
    p.note(
        (
            "Accuracies, costs and exit shares here are on the samples held out of fitting the thresholds "
            "(pages 2 and 4 show the same numbers). "
            if data.outcome.held_out
            else "Nothing was held out: accuracies and costs here are on the samples the thresholds were fitted on. "
        )
        + "Speed-up = cost of the full model on every sample / expected early-exit cost (latency includes one exit "
        "decision per exit passed). Pages 2–3 show the whole trade-off curve; page 4 where samples leave; page 5 "
        "calibration; page 6 thresholds and provenance" + ("; page 7 the other models." if data.alternatives else "."),
    )
    return p.fig


def _verdict(p: _Page, data: ReportData) -> None:
    """The verdict in large letters, the sentence that explains it, and the notes."""
    p.skip(0.2)
    if data.decision is None:
        p.fig.text(0.06, p.y - 0.45 / p.height_in, "NO DECISION", fontsize=36, weight="bold", color=_GREY)
        p.skip(0.6)
    else:
        size = 48 if data.decision == "INCONCLUSIVE" else 64
        color = _status_color(data.decision)
        p.fig.text(0.06, p.y - 0.75 / p.height_in, data.decision, fontsize=size, weight="bold", color=color)
        p.skip(0.95)
        if not data.outcome.held_out:
            p.fig.text(0.06, p.y + 0.05 / p.height_in, "(provisional: nothing held out)", fontsize=12, color=_GREY)
            p.skip(0.1)
    p.para(_decision_message(data), size=11)
    for note in data.notes:
        p.para("Note: " + note, size=9, color=_AMBER)


def _trade_off(data: ReportData) -> str:
    """The trade-off in a few sentences: accuracy against the last exit, MACs and every latency key."""
    o = data.outcome
    last_acc = float(o.last_correct.mean()) if o.n else float("nan")
    rows_txt = "held-out samples" if o.held_out else "samples (nothing held out)"
    sp_macs = data.speedup.get("macs")
    parts = [
        f"At budget {data.budget_label}, early exit is right on {pct(data.accuracy)} of {o.n:,} {rows_txt}, "
        f"against {pct(last_acc)} when exit {data.k} (the last) runs on every sample "
        f"({change_text(last_acc - data.accuracy)})."
    ]
    if sp_macs is not None:
        parts.append(
            f"It spends {format_macs(data.held_cost('macs'))} per sample on average instead of "
            f"{format_macs(data.full_model.get('macs'))}: {sp_macs:.2f}× fewer MACs."
        )
    for key in sorted(data.latency):
        parts.append(_latency_sentence(data, key))
    parts += runtime_sentences(data.verify, data.latency_key)
    if not data.latency:
        parts.append("No latency was profiled, so the speed-up is in MACs only (see page 3).")
    elif any(e.source == "predicted" for e in data.latency.values()):
        parts.append(
            "Predicted latency comes from the profiled stage times (above batch size 1 a batch runs "
            "each stage until its last sample leaves); 'dyncal verify --out verify.json' measures a real "
            "early exit, which the report then judges on (--verify verify.json)."
        )
    return " ".join(parts)


def _criteria_table(p: _Page, data: ReportData) -> None:
    """The criteria with their estimates, intervals and results, and how to read them (or how to give some)."""
    if not data.criteria:
        p.para(
            "None given. To decide, add --min-accuracy A or --max-drop D (fractions, e.g. 0.95 or 0.01) and/or "
            "--min-speedup S (e.g. 1.5), optionally with --device/--batch-size to judge latency.",
            size=9.5,
        )
        return
    p.table(
        ["criterion", "estimate", "95% interval", "required", "result"],
        [_criterion_row(c) for c in data.criteria],
        col_widths=[0.33, 0.12, 0.2, 0.12, 0.11],
        size=9.5,
        row_colors=[_status_color(c.status) for c in data.criteria],
    )
    rule = (
        "A criterion passes when its whole 95% interval clears the requirement, fails when it does not "
        "and timing noise cannot change that, and is inconclusive when timing noise alone decides (load "
        "on the machine can make a verdict inconclusive, never the opposite)."
        if data.outcome.held_out
        else "Nothing was held out, so the point estimates decide (fitted on the same samples: optimistic)."
    )
    p.note(" ".join([rule, *_latency_criteria_notes(data)]))


def _criterion_row(c: Criterion) -> list[str]:
    """A criterion's label, estimate, 95% interval, requirement and result, in its unit."""
    d = criterion_digits(c)
    value = functools.partial(criterion_value, c, digits=d)
    iv = "n/a" if c.interval is None else interval_text(c.interval, value)
    return [criterion_label(c), value(c.value), iv, need_text(c, d), status_word(c)]


def _latency_criteria_notes(data: ReportData) -> list[str]:
    """Per latency speed-up criterion: its evidence, and the noise its interval carries."""
    notes = []
    for c in data.criteria:
        if c.name != "speedup" or c.cost == "macs":
            continue
        value = functools.partial(criterion_value, c, digits=criterion_digits(c))
        e = data.latency.get(str(c.cost))
        bits = [f"The speed-up on {c.cost} is {c.source}" + (f" ({e.rows})" if e is not None else "")]
        if c.interval_sampling is not None:
            sampling = interval_text(c.interval_sampling, value)
            bits.append(f"its interval carries sampling noise ({sampling} alone) and timing noise")
        if c.interval_timing is not None:
            bits.append(
                f"timing noise alone gives {interval_text(c.interval_timing, value)}"
                + ("" if c.timing_spread is None else f", replicates spread {100 * c.timing_spread:.0f}% of median")
            )
        if batch_size_of(str(c.cost)) > 1 and c.source == "predicted":
            bits.append(f"units are batches of {batch_size_of(str(c.cost))} held-out samples (a fixed random order)")
        notes.append("; ".join(bits) + ".")
    return notes


def _operating_rows(data: ReportData) -> list[list[str]]:
    """The operating point's table: budget, thresholds, accuracy, costs, speed-ups and exit shares."""
    t, o = data.thresholds, data.outcome
    held_word = "held out" if o.held_out else "on all samples (nothing held out)"
    fit_macs = data.fit_costs.get("macs")
    held_macs = data.held_cost("macs")
    op_rows = [
        ["budget", f"{data.budget_label}; {data.budget_reason}"],
        ["method, score", f"{t.get('method', 'n/a')}, {t.get('score', 'maxprob')}"],
        ["thresholds", ", ".join(thresholds_text(t, data.run))],
        ["temperatures", ", ".join(f"{float(v):.3g}" for v in (t.get("temperatures") or []))],
        [
            "held-out accuracy" if o.held_out else "accuracy (fitted)",
            f"{pct(data.accuracy)}  (95% interval {interval_text(data.accuracy_interval, pct)}; {o.n:,} samples)",
        ],
        ["accuracy on fitting half", pct(_float_or_none(t.get("calibration_accuracy")))],
    ]
    if "macs" in data.full_model:
        b = t.get("budget") or {}
        budget_macs = float(b["value"]) if b.get("unit") == "macs" and b.get("value") is not None else None
        slack = budget_macs is not None and fit_macs is not None and fit_macs < 0.8 * budget_macs
        op_rows.append(
            [
                "expected MACs",
                f"{format_macs(held_macs)} per sample {held_word} "
                f"({pct((held_macs or float('nan')) / data.full_model['macs'], 1)} of the full model); "
                f"{format_macs(fit_macs)} on the fitting half, where the budget "
                + (f"(at most {format_macs(budget_macs)}) is met; more would not buy accuracy" if slack else "is met"),
            ]
        )
    for key in sorted(data.latency):
        e = data.latency[key]
        b = batch_size_of(key)
        per = "" if b == 1 else f" per batch of {b}"
        where = e.rows if e.source == "measured" else f"predicted, {held_word}"
        ratio = e.measured_over_predicted
        off = "" if ratio is None else f"; predicted {format_ms(e.predicted_ms)}, measured / predicted {ratio:.2f}"
        op_rows.append(
            [
                f"latency {key}",
                f"{format_ms(e.early_exit_ms)}{per} ({where}{off}); full model {format_ms(e.full_model_ms)}",
            ]
        )
    speed = [f"{v:.2f}× ({'MACs' if k == 'macs' else k})" for k, v in data.speedup.items()]
    op_rows.append(["speed-up vs full model", ", ".join(speed) or "n/a"])
    op_rows.append(
        ["share leaving at exit 1..K", ", ".join(pct(float(s), 1) for s in o.shares(data.k)) + f" ({held_word})"]
    )
    return op_rows
