"""The robustness page (``report --robustness RUN...``): the operating point under perturbed data.

One row per run (:mod:`dyncal.reports.robustness` computes them): early-exit accuracy with its
95% interval, the drop against that run's last exit, the cost against the report's run, and
whether the budget and the drop bound still hold; a row where either breaks is flagged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dyncal.reports.data import ReportData
from dyncal.reports.layout import _AMBER, _GO_COLOR, _NOGO_COLOR, ROBUSTNESS_TITLE, _Page, page_titles
from dyncal.reports.text import pct

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["robustness_verdict"]


def robustness_verdict(row: dict[str, Any]) -> tuple[str, str]:
    """``(word, colour)`` of a row: ``breaks`` (the budget or the drop bound breaks), ``uncertain`` or ``holds``.

    Example:
        >>> robustness_verdict({"budget": "holds", "drop_bound": "breaks"})[0]
        'breaks'
    """
    if any(row.get(what) == "breaks" for what in ("budget", "drop_bound")):
        return "breaks", _NOGO_COLOR
    if any(row.get(what) == "uncertain" for what in ("budget", "drop_bound")):
        return "uncertain", _AMBER
    if row.get("budget") is None and row.get("drop_bound") is None:
        return "not judged", _AMBER
    return "holds", _GO_COLOR


def _interval(iv: Any) -> str:
    if not iv or any(v is None for v in iv):
        return ""
    return f" ({100 * iv[0]:.1f} to {100 * iv[1]:.1f})"


def _page_robustness(data: ReportData) -> Figure:
    """The robustness page: each perturbed run against the operating point."""
    p = _Page(data, len(page_titles(data)), ROBUSTNESS_TITLE)
    rows_in = data.robustness
    p.para(
        f"The operating point's thresholds (budget {data.short_budget}), solved on this run, applied unchanged to "
        "runs of the same model on other data (collect --perturb writes one per corruption and severity). "
        f"Here: {pct(data.accuracy)} early-exit accuracy on {data.outcome.n:,} "
        f"{'held-out ' if data.outcome.held_out else ''}samples.",
        size=9.5,
    )
    unit = rows_in[0].get("cost_unit", "macs") if rows_in else "macs"
    verdicts = [robustness_verdict(r) for r in rows_in]
    rows = [
        [
            str(r["perturbation"] or r["path"])[:22],
            pct(r["accuracy"]) + _interval(r.get("accuracy_ci")),
            f"{100 * (r['accuracy'] - data.accuracy):+.1f}",
            f"{100 * r['drop']:+.2f}{_interval(r.get('drop_ci'))}",
            "n/a" if r.get("cost_ratio") is None else f"{r['cost_ratio']:.2f}×",
            r.get("budget") or "n/a",
            r.get("drop_bound") or "n/a",
            word,
        ]
        for r, (word, _) in zip(rows_in, verdicts, strict=True)
    ]
    p.skip(0.05)
    p.table(
        ["data", "accuracy (95%)", "vs here", "drop vs last exit", f"{unit} ×", "budget", "drop bound", "flag"],
        rows,
        col_widths=[0.15, 0.16, 0.07, 0.17, 0.07, 0.08, 0.09, 0.11],
        size=7.5,
        row_colors=[color for _, color in verdicts],
    )
    broken = [r for r, (word, _) in zip(rows_in, verdicts, strict=True) if word == "breaks"]
    p.skip(0.1)
    if broken:
        names = ", ".join(str(r["perturbation"] or r["path"]) for r in broken)
        p.para(f"Breaks under: {names}.", size=10, color=_NOGO_COLOR, weight="bold")
    for r in rows_in:
        for note in r.get("notes", []):
            p.note(f"{r['perturbation'] or r['path']}: {note}")
    p.skip(0.05)
    p.note(
        "Drop: the run's last exit minus the early exit on the same samples (paired 95% bootstrap interval). "
        "The budget breaks when even the lower bound of the mean cost exceeds the budget (plus 5%); the drop bound "
        "breaks when the drop itself exceeds max-drop, and holds when the Clopper-Pearson bound of the losses is "
        "within it. Costs are this run's profile unless a perturbed run was profiled itself. "
        "Check each with: dyncal evaluate RUN --thresholds thresholds.json",
    )
    for r in rows_in:
        p.note(f"{r['perturbation'] or 'clean'}: {r['path']}")
    return p.fig
