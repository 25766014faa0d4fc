"""``dyncal monitor --out monitor.pdf``: the rollout decision on one A4 page.

The decision and its reasons; the drop bound from shadow requests (or labels) against
``max_drop``; the mean cost per request against the plan's budget; the latency percentiles;
drift as context; and, per time window, the bound, the cost and the decision, so a trend shows.
Drawn from the ``dyncal monitor --json`` document (:meth:`dyncal.monitor.MonitorReport.to_dict`).
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Mapping
from typing import Any

__all__ = ["monitor_pdf"]

_COLORS = {"PROCEED": "#1a7f37", "HOLD": "#b26a00", "ROLLBACK": "#c62828"}
_A4 = (8.27, 11.69)


def _fmt(x: Any, spec: str = ".4f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def monitor_pdf(doc: Mapping[str, Any], title: str = "Rollout monitor") -> bytes:
    """The monitor's document as a one-page PDF (bytes; deterministic for the same document).

    Example:
        >>> doc = {"decision": "HOLD", "reasons": ["no shadow requests"], "n": 0, "quality": {"source": "shadow",
        ...        "count": 0, "n": 0, "upper": None, "max_drop": 0.01, "delta": 0.05}, "cost": {"status": "no budget"},
        ...        "latency": {"n": 0}, "drift": {}, "windows": []}
        >>> monitor_pdf(doc)[:5]
        b'%PDF-'
    """
    from matplotlib.backends.backend_pdf import PdfPages
    from matplotlib.figure import Figure

    fig = Figure(figsize=_A4)
    decision = str(doc["decision"])
    fig.text(0.06, 0.95, title, fontsize=16, weight="bold")
    fig.text(0.06, 0.91, decision, fontsize=22, weight="bold", color=_COLORS.get(decision, "black"))
    y = 0.885
    q, cost, lat = doc["quality"], doc.get("cost", {}), doc.get("latency", {})
    paragraphs = [f"- {reason}" for reason in doc.get("reasons", [])]
    paragraphs += [
        "",
        f"Quality ({q['source']}): {q['count']} of {q['n']} "
        f"{'losses' if q['source'] == 'labels' else 'disagreements with the last exit'}; upper bound of the drop "
        f"{_fmt(q.get('upper'))} against max-drop {q['max_drop']:g} at confidence {1 - q['delta']:g}.",
    ]
    if cost.get("budget") is not None:
        paragraphs.append(
            f"Cost ({cost['unit']}): mean {_fmt(cost.get('mean'), '.4g')} per request "
            f"[{_fmt(cost.get('lower'), '.4g')}, {_fmt(cost.get('upper'), '.4g')}] against the plan's "
            f"{_fmt(cost['budget'], '.4g')} (limit {_fmt(cost.get('limit'), '.4g')}): {cost['status']}."
        )
    if lat.get("n"):
        paragraphs.append(
            f"Latency ms: p50 {_fmt(lat.get('p50'), '.3f')}, p95 {_fmt(lat.get('p95'), '.3f')}, "
            f"p99 {_fmt(lat.get('p99'), '.3f')} ({lat['n']} requests)."
        )
    shares = (doc.get("drift") or {}).get("exit_shares")
    if shares:
        paragraphs.append(
            "Drift (context, never decides): exit shares "
            + " ".join(f"{100 * s:.1f}%" for s in shares["production"])
            + " against calibration "
            + " ".join(f"{100 * s:.1f}%" for s in shares["calibration"])
            + f" (chi-squared p {_fmt(shares.get('p_value'), '.3g')})."
        )
    lines = [line for text in paragraphs for line in (textwrap.wrap(text, 105) if text else [""])]
    for line in lines:
        y -= 0.017
        fig.text(0.06, y, line, fontsize=8.5)
    windows = doc.get("windows") or []
    if windows:
        ax = fig.add_axes((0.1, 0.1, 0.82, min(0.35, y - 0.18)))
        idx = list(range(1, len(windows) + 1))
        upper = [math.nan if w.get("upper") is None else float(w["upper"]) for w in windows]
        ax.bar(idx, upper, color=[_COLORS.get(w["decision"], "grey") for w in windows], alpha=0.8)
        ax.axhline(float(q["max_drop"]), color="black", lw=1, ls="--", label=f"max-drop {q['max_drop']:g}")
        ax.set_xlabel("time window")
        ax.set_ylabel("upper bound of the drop")
        ax.set_xticks(idx)
        ax.set_title("Per time window (bar colour: that window's decision)", fontsize=10)
        ax.legend(fontsize=8)
    buf = io.BytesIO()
    with PdfPages(buf, metadata={"Title": title, "Creator": "dyncal monitor", "CreationDate": None}) as pdf:
        pdf.savefig(fig)
    return buf.getvalue()
