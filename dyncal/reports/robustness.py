"""The report's robustness page data: the operating point's thresholds judged on perturbed runs.

``report --robustness RUN...`` names runs of the same model on other data (``collect --perturb``
writes one per corruption and severity, ``OUT-NAME-SEVERITY``); each is judged with
:func:`dyncal.evaluate.evaluate_thresholds` against the report's run, and
:func:`dyncal.evaluate.robustness_rows` makes one row per run for the page
(:mod:`dyncal.reports.pages.robustness`). The budget is checked when the operating point has
one, the drop bound when ``max_drop`` is a criterion (or the thresholds were solved with one).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dyncal.errors import DyncalError

if TYPE_CHECKING:
    from dyncal.reports.choice import OperatingChoice

__all__ = ["MAX_ROBUSTNESS_RUNS", "robustness_table"]

MAX_ROBUSTNESS_RUNS = 16
"""Runs the robustness page has room for."""


def robustness_table(
    choice: OperatingChoice,
    paths: Sequence[str | os.PathLike[str]],
    max_drop: float | None = None,
) -> tuple[dict[str, Any], ...]:
    """One row per run: the operating point's thresholds on it (:func:`dyncal.evaluate.robustness_rows`).

    Rows add ``path`` and ``notes`` (the evaluation's sentences past the first two).

    Raises:
        DyncalError: Too many runs, a run that cannot be read, another model, or the report's run itself.
    """
    from dyncal.artifacts.run import load_run
    from dyncal.artifacts.thresholds import ThresholdsDocument
    from dyncal.evaluate import evaluate_thresholds, robustness_rows

    if len(paths) > MAX_ROBUSTNESS_RUNS:
        raise DyncalError(
            f"`robustness` takes at most {MAX_ROBUSTNESS_RUNS} runs (one page), got {len(paths)}; make separate reports"
        )
    doc = ThresholdsDocument.from_dict(choice.thresholds)
    unit = "macs" if choice.run.costs is not None and choice.run.costs.macs is not None else None
    evaluations = [evaluate_thresholds(load_run(p), doc, reference=choice.run, max_drop=max_drop) for p in paths]
    if unit is None:  # no MACs: the first cost the evaluations report
        unit = next(iter(evaluations[0].deltas["costs"]), "macs") if evaluations else "macs"
    rows = robustness_rows(evaluations, unit=unit)
    return tuple(
        {**row, "path": str(path), "cost_unit": unit, "notes": list(ev.notes[3:])}
        for path, row, ev in zip(paths, rows, evaluations, strict=True)
    )
