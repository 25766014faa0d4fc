"""The PDF go/no-go report: build it, render it, or export one of its figures.

The report is six pages a team lead can decide from (decision, accuracy vs MACs, accuracy
vs latency, exits, calibration, thresholds and provenance). Its parts, one job each:

* :mod:`dyncal.reports.operating` — what is asked (:class:`ReportOptions`) and the operating
  point chosen from it (:class:`~dyncal.reports.choice.OperatingChoice`);
* :mod:`dyncal.reports.data` — everything the pages show, computed once
  (:func:`~dyncal.reports.data.prepare_report`, :class:`~dyncal.reports.data.ReportData`; numpy only);
* :mod:`dyncal.reports.decision` — the criteria and the verdict;
* :mod:`dyncal.reports.compare` — other runs judged against the operating point (``compare``);
* :mod:`dyncal.reports.evidence` — the cost model: per-exit costs, latency units, the
  full-model figure, measured or predicted speed-ups;
* :mod:`dyncal.reports.text` — numbers and verdicts in words;
* :mod:`dyncal.reports.layout` — the A4 page frame and style;
* :mod:`dyncal.reports.pages` — the pages;
* :mod:`dyncal.reports.figures` and :mod:`dyncal.reports.figures_exits` — each figure, usable alone.

Here: :func:`build_report` (prepare, render, write), :func:`render_pdf` and
:func:`export_figure` (what ``dyncal plot`` writes).

The PDF is vector (matplotlib's PDF backend, TrueType text that extracts as text) and
deterministic: its metadata date is ``SOURCE_DATE_EPOCH`` when set, else the run's
creation time, and nothing on the pages depends on the clock.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dyncal.choices import FigureKind
from dyncal.errors import DyncalError
from dyncal.options import options_from
from dyncal.reports.compare import compare_alternatives
from dyncal.reports.data import ReportData, held_out_point, latency_evidence, prepare_report, reliability_per_exit
from dyncal.reports.decision import Criterion
from dyncal.reports.figures import ComparedModel, plot_frontier, plot_latency
from dyncal.reports.figures_exits import plot_exits, plot_reliability
from dyncal.reports.layout import _style, _version, page_titles
from dyncal.reports.operating import ReportOptions, choose_operating_point
from dyncal.reports.pages import report_pages
from dyncal.reports.tail_evidence import requests_document

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from dyncal.artifacts.run import Run
    from dyncal.reports.choice import OperatingChoice

__all__ = ["ReportResult", "build_report", "render_pdf", "export_figure", "FIGURE_KINDS"]

MAX_REPORT_EXITS = 12
"""Most exits the report's pages have room for (tables and reliability diagrams, one per exit)."""


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ReportResult:
    """What :func:`build_report` wrote and decided.

    Attributes:
        path: The PDF written.
        decision: ``"GO"``, ``"NO-GO"``, ``"INCONCLUSIVE"`` (timing noise alone decides a
            latency criterion), or None when no criterion was given.
        criteria: The judged criteria.
        pages: Page titles, in order.
        budget: The budget the thresholds were solved for (``"0.42x"``, ``"35ms"``).
        budget_reason: Why that budget (asked, chosen, or the thresholds file's).
        thresholds: The ``thresholds.json`` document of the operating point.
        speedup: Speed-up against the full model on every sample, per cost (``"macs"``,
            ``"cpu/b1"``, ...): MACs on the judged rows, latency as in ``latency``.
        size_bytes: Size of the PDF.
        decision_provisional: True when a decision was made with nothing held out (point
            estimates on the samples the thresholds were fitted on, no intervals).
        held_out: The operating point on the judged rows: the numbers every page shows.
        latency: Per latency key, the early exit against the full model
            (:meth:`dyncal.reports.evidence.LatencyEvidence.to_dict`).
        notes: One-line notes (e.g. a verify result that was ignored, and why).
        verify: The verify result used (path, samples, keys), or None.
        alternatives: The other runs judged against the operating point
            (:meth:`dyncal.reports.compare.Alternative.to_dict`), or None without ``compare``.
        requests: Latency as requests feel it, per batch size verify timed: coverage and the
            summaries (:meth:`dyncal.artifacts.requests.LatencySummary.to_dict`); None when verify stored none.
        savings: What early exit saves at the asked rate (:meth:`dyncal.analysis.capacity.Savings.to_dict`).
        robustness: The thresholds on each ``robustness`` run (:mod:`dyncal.reports.robustness`), or None.

    Example:
        >>> r = ReportResult(Path("r.pdf"), None, (), ("Decision",), "0.5x", "asked", {}, {}, 1)
        >>> r.to_dict()["decision"] is None
        True
    """

    path: Path
    decision: str | None
    criteria: tuple[Criterion, ...]
    pages: tuple[str, ...]
    budget: str
    budget_reason: str
    thresholds: dict[str, Any]
    speedup: dict[str, float]
    size_bytes: int
    decision_provisional: bool = False
    held_out: dict[str, Any] = field(default_factory=dict)
    latency: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    verify: dict[str, Any] | None = None
    alternatives: tuple[dict[str, Any], ...] | None = None
    requests: dict[str, dict[str, Any]] | None = None
    savings: dict[str, Any] | None = None
    robustness: tuple[dict[str, Any], ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The ``dyncal report --json`` document (``alternatives`` only with ``compare``)."""
        doc = {
            "path": str(self.path),
            "decision": self.decision,
            "decision_provisional": self.decision_provisional,
            "criteria": [c.to_dict() for c in self.criteria],
            "pages": [{"number": i + 1, "title": t} for i, t in enumerate(self.pages)],
            "budget": self.budget,
            "budget_reason": self.budget_reason,
            "operating_point": self.thresholds,
            "held_out": dict(self.held_out),
            "speedup": dict(self.speedup),
            "full_model_ms": {k: v["full_model_ms"] for k, v in self.latency.items()},
            "latency": {k: dict(v) for k, v in self.latency.items()},
            "verify": None if self.verify is None else dict(self.verify),
            "notes": list(self.notes),
            "size_bytes": self.size_bytes,
        }
        if self.alternatives is not None:
            doc["alternatives"] = [dict(a) for a in self.alternatives]
        if self.requests is not None:
            doc["requests"] = {k: dict(v) for k, v in self.requests.items()}
        if self.savings is not None:
            doc["savings"] = dict(self.savings)
        if self.robustness is not None:
            doc["robustness"] = [dict(r) for r in self.robustness]
        return doc


# --------------------------------------------------------------------------- assembly


def render_pdf(data: ReportData) -> bytes:
    """Draw the pages (six, seven with alternatives) and return the PDF's bytes (deterministic for the same data).

    Args:
        data: What :func:`prepare_report` computed.

    Returns:
        The PDF file's content.

    Example:
        >>> render_pdf(prepare_report("run"))[:5]  # doctest: +SKIP
        b'%PDF-'
    """
    from matplotlib.backends.backend_pdf import PdfPages

    _check_report_exits(data.run)
    metadata = {
        "Title": data.title,
        "Subject": "early-exit go/no-go report",
        "Creator": f"dyncal {_version()}",
        "CreationDate": data.date,
        "ModDate": data.date,
    }
    buf = io.BytesIO()
    with _style(), PdfPages(buf, metadata=metadata) as pdf:
        for draw in report_pages(data):
            pdf.savefig(draw(data))
    return buf.getvalue()


def _check_report_exits(run: Run) -> None:
    """Refuse a run with more exits than the report's pages have room for."""
    if run.k > MAX_REPORT_EXITS:
        raise DyncalError(
            f"the PDF report lays out at most {MAX_REPORT_EXITS} exits and run '{run.path}' has K={run.k}; "
            "use 'dyncal solve', 'dyncal frontier' and 'dyncal plot' for this run"
        )


def build_report(
    run_path: str | os.PathLike[str],
    out_pdf: str | os.PathLike[str],
    options: ReportOptions | None = None,
    *,
    overwrite: bool = True,
    **fields: Any,
) -> ReportResult:
    """Solve a run's thresholds, judge the criteria and write the six-page PDF report.

    Args:
        run_path: A run directory with costs (MACs and/or profiled latency).
        out_pdf: The PDF to write (atomically; an existing one is replaced only with
            ``overwrite``).
        options: What is asked, as one :class:`~dyncal.reports.operating.ReportOptions`; or
            give its fields as keywords (below).
        overwrite: Replace an existing ``out_pdf`` (default True here; ``dyncal report``
            refuses one unless ``--overwrite`` is given, as collect does).
        **fields: The :class:`~dyncal.reports.operating.ReportOptions` fields:
        budget: Budget for the operating point (``0.6x``, ``1.2GMAC``, ``35ms``). Default:
            the cheapest frontier budget meeting the accuracy criterion on the fitting half;
            with only ``min_speedup``, the budget giving that speed-up; with no criterion,
            the cheapest within 1 percentage point of the last exit's fitted accuracy.
        thresholds: A ``thresholds.json`` to report instead of solving (not with ``budget``):
            checked against the run; its score, temperatures and held-out split are used, so
            the held-out numbers are the ones solve printed.
        verify: A ``dyncal verify --out`` result (path or object). Used only when it was
            measured on this run, with these thresholds and the run's weights; then latency
            criteria are judged on the measured early exit. Otherwise it is ignored with a note.
        min_accuracy: Held-out accuracy must be at least this fraction.
        max_drop: Accuracy lost against the last exit must be at most this fraction.
        min_speedup: Speed-up against the last exit on every sample must be at least this
            factor; in latency when ``device``/``batch_size`` is given, else in MACs.
        device: Latency device (``cpu``, ``cuda``) for the speed-up and ms budgets.
        batch_size: Latency batch size (default 1, or the smallest profiled).
        title: Title on every page (default from the model spec).
        method: Threshold solver (default: solve's default).
        temperature: Fit one temperature per exit on the fitting half (default False).
        holdout: Fraction of samples held out of fitting (default 0.5; from the file with ``thresholds``).
        seed: Seed of the held-out split (default 0; from the file with ``thresholds``).
        command: The command line, printed on the provenance page.
        compare: Other runs measured on the same data (static models, K = 1, or other
            early-exit models) to judge the operating point against
            (:mod:`dyncal.reports.compare`): drawn on pages 2 and 3, judged on page 1. A
            static model that is as accurate and cheaper makes the decision NO-GO.

    Returns:
        What was written and decided; ``to_dict()`` is the ``--json`` document.

    Raises:
        DyncalError: Missing run or costs, a criterion that cannot be judged (e.g. a
            latency criterion without profiled latency), bad values, an unwritable path.

    Example:
        >>> import tempfile, pathlib  # doctest: +SKIP
        >>> r = build_report("run", "report.pdf", min_accuracy=0.95)  # doctest: +SKIP
        >>> r.decision  # doctest: +SKIP
        'GO'
    """
    from dyncal.artifacts.outputs import claim_output_file, write_output
    from dyncal.artifacts.run import load_run

    options = options_from(ReportOptions, options, fields, "report")
    out = Path(out_pdf)
    if out.suffix.lower() != ".pdf":
        raise DyncalError(f"`out_pdf` must name a .pdf file, got '{out}'")
    with claim_output_file(out, overwrite=overwrite, kind="report", protect=(run_path, *options.compare)):
        _check_report_exits(load_run(run_path))  # before the solving (the run's scan is remembered)
        data = prepare_report(run_path, options)
        pdf = render_pdf(data)
        write_output(out, pdf)
    return ReportResult(
        path=out,
        decision=data.decision,
        criteria=data.criteria,
        pages=page_titles(data),
        budget=data.budget,
        budget_reason=data.budget_reason,
        thresholds=data.thresholds,
        speedup=dict(data.speedup),
        size_bytes=len(pdf),
        decision_provisional=data.decision is not None and not data.outcome.held_out,
        held_out=data.held_out_summary(),
        latency={k: e.to_dict() for k, e in sorted(data.latency.items())},
        notes=data.notes,
        verify=None
        if data.verify is None
        else {
            "source": data.verify_label,
            "n": data.verify.n,
            "device": data.verify.device,
            "keys": [t.key for t in data.verify.timings],
            "agreement": data.verify.agreement,
        },
        alternatives=tuple(a.to_dict() for a in data.alternatives) if options.compare else None,
        requests=requests_document(data.requests) if data.requests else None,
        savings=None if data.savings is None else data.savings.to_dict(),
        robustness=data.robustness if options.robustness else None,
    )


# --------------------------------------------------------------------------- single figures

FIGURE_KINDS: tuple[str, ...] = tuple(k.value for k in FigureKind)
MIN_DPI = 30
"""Lowest resolution ``plot`` draws at (below it labels are unreadable)."""
MAX_FIGURE_PIXELS = 50_000_000
"""Largest image ``plot`` draws (about 200 MB of memory while drawing)."""
_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}


def export_figure(
    run_path: str | os.PathLike[str],
    kind: str,
    out: str | os.PathLike[str],
    options: ReportOptions | None = None,
    *,
    dpi: int = 150,
    **fields: Any,
) -> Path:
    """Write one report figure alone (what ``dyncal plot`` does).

    Args:
        run_path: A run directory.
        kind: ``frontier``, ``latency``, ``exits`` or ``reliability``.
        out: Output file; the format follows the suffix (``.png``, ``.svg`` or ``.pdf``).
        options: The operating point to mark (:class:`ReportOptions`: ``thresholds`` or
            ``budget``, ``device``, ``batch_size``, ``method``, ``holdout``, ``seed``; criteria,
            evidence and labels are not drawn). The star is at the held-out figures the
            report's page 1 shows (:func:`~dyncal.reports.data.held_out_point`). Without a
            budget: the cheapest budget whose fitted accuracy is within
            1 percentage point of the last exit's (as :func:`build_report` without criteria);
            the figure's legend says which budget it is and why.
        dpi: Resolution of ``.png`` output (default 150).
        **fields: The fields of :class:`ReportOptions` as keywords instead of ``options``.

    Returns:
        The path written.

    Raises:
        DyncalError: Unknown kind or suffix, a run without what the figure needs (latency
            for ``latency``, costs for the others), or an unwritable path.

    Example:
        >>> export_figure("run", "frontier", "frontier.svg", budget="0.5x")  # doctest: +SKIP
        PosixPath('frontier.svg')
    """
    from dyncal.artifacts.outputs import dyncal_creator, write_output

    kind = FigureKind.parse(kind, "kind")
    if dpi < MIN_DPI:
        raise DyncalError(f"`dpi` must be at least {MIN_DPI}, got {dpi}")
    asked = options_from(ReportOptions, options, fields, "report")
    path = Path(out)
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DyncalError(f"`out` must end in .png, .svg or .pdf, got '{path}'")
    if not path.parent.exists():
        raise DyncalError(f"the folder '{path.parent}' for `out` does not exist; create it first")
    with _style():
        fig = (
            _reliability_alone(run_path) if kind == "reliability" else _figure_at_operating_point(run_path, kind, asked)
        )
        width_in, height_in = fig.get_size_inches()
        if width_in * height_in * dpi * dpi > MAX_FIGURE_PIXELS:
            most = int((MAX_FIGURE_PIXELS / (width_in * height_in)) ** 0.5)
            raise DyncalError(
                f"`dpi` {dpi} would draw a {width_in * dpi:.0f} x {height_in * dpi:.0f} pixel image; "
                f"use `dpi` {most} or less"
            )
        buf = io.BytesIO()
        creator = dyncal_creator()  # marks the file as dyncal's, so --overwrite may replace it
        metadata: dict[str, dict[str, Any]] = {
            "svg": {"Date": None, "Creator": creator},
            "png": {"Software": creator},
            "pdf": {"CreationDate": None, "Creator": creator},
        }
        fig.savefig(buf, format=fmt, dpi=dpi, metadata=metadata[fmt], bbox_inches="tight")
    write_output(path, buf.getvalue())
    return path


def _figure_at_operating_point(run_path: str | os.PathLike[str], kind: str, asked: ReportOptions) -> Figure:
    """The frontier, latency or exits figure, with the operating point marked."""
    if kind == "latency":
        _require_latency(run_path)
    # the operating point alone: no evidence, verdict or calibration; the frontier
    # only for the curves (or to choose the budget)
    point = choose_operating_point(run_path, asked, frontier=kind != "exits")
    main = str(point.thresholds.get("method") or "") or None
    evidence = latency_evidence(point)
    op = held_out_point(point, evidence, point.legend_label())  # the report's page-1 figures
    compared = _compared_runs(point, asked, kind)
    if kind == "frontier":
        assert point.frontier is not None
        return plot_frontier(
            point.frontier,
            operating_point=op,
            main_method=main,
            title=f"{point.title}: accuracy vs MACs",
            compared=compared,
        )
    if kind == "latency":
        assert point.frontier is not None
        return plot_latency(
            point.frontier,
            operating_point=op,
            main_method=main,
            full_model_ms={k: e.full_model_ms for k, e in evidence.items()},  # the profile's: no verify here
            compared=compared,
        )
    o, k = point.outcome, point.run.k
    return plot_exits(
        o.shares(k),
        o.accuracy_per_exit(k),
        counts=o.counts(k),
        exit_accuracy=point.confidence()[1].mean(axis=0),
        title=point.legend_label().replace("operating point", "exits at the operating point", 1),
    )


def _compared_runs(point: OperatingChoice, asked: ReportOptions, kind: str) -> list[ComparedModel]:
    """The ``compare`` runs as the report's figures draw them (judged against ``point`` like the report)."""
    if not asked.compare:
        return []
    if kind not in ("frontier", "latency"):
        raise DyncalError(f"`compare` draws on the frontier and latency figures, not on `kind` {kind}")
    return [
        ComparedModel(a.name, a.static, a.curve, a.ci if a.static else None)
        for a in compare_alternatives(point, latency_evidence(point), asked.compare)
    ]


def _require_latency(run_path: str | os.PathLike[str]) -> None:
    """Fail early, before solving, when a run has no latency to plot."""
    from dyncal.artifacts.run import load_run

    run = load_run(run_path)
    if run.costs is None or not run.costs.latency:
        raise DyncalError(
            f"run '{run.path}' has no latency profiled, so there is no accuracy-vs-latency "
            "figure; measure it "
            f"with 'dyncal profile {run.path} --device cpu --batch-size 1,32'"
        )


def _reliability_alone(run_path: str | os.PathLike[str]) -> Figure:
    """Reliability diagrams of every exit at temperature 1."""
    from dyncal.artifacts.run import load_run
    from dyncal.calibrate.scores import exit_scores

    run = load_run(run_path)
    conf, pred = exit_scores(run.logits, "maxprob")
    return plot_reliability(reliability_per_exit(conf, pred == np.asarray(run.labels)[:, None]))
