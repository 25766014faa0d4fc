"""What ``dyncal info`` shows of a run: its size, and per exit accuracy, calibration and costs."""

from __future__ import annotations

from typing import Any

from dyncal.analysis.calibration import exit_stats
from dyncal.artifacts.run import Run
from dyncal.reports.evidence import full_model_ms

__all__ = ["run_info"]


def run_info(run: Run) -> dict[str, Any]:
    """The ``dyncal info --json`` document of a run.

    Args:
        run: An opened run (:func:`dyncal.load_run`).

    Returns:
        ``path``, ``n``, ``k``, ``c``; ``exits``, one dict per exit with its accuracy, mean
        confidence, ECE, cumulative ``macs`` (None when not counted), ``latency_ms`` per
        profiled latency key (the exit path: a batch whose rows all leave at that exit, as
        the profile timed it on the early-exit runner: the figure ``solve``, ``frontier`` and
        the report use) and ``stage_sum_ms`` (the stage medians summed up to that exit,
        without the decisions and bookkeeping); with a cost table also ``full_model_ms`` with
        ``full_model_source`` (the figure the report shows without a verify result, and where
        it comes from), ``decision_ms`` and ``unsupported_ops``; and the run's ``provenance``.

    Example:
        >>> import numpy as np, tempfile, pathlib
        >>> from dyncal.artifacts.run_import import import_arrays
        >>> z = np.array([[[2.0, 0.0], [3.0, 0.0]], [[0.0, 1.0], [0.0, 2.0]]])
        >>> run = import_arrays(z, [0, 0], pathlib.Path(tempfile.mkdtemp()) / "r", macs=[1e6, 4e6])
        >>> doc = run_info(run)
        >>> doc["n"], doc["k"], [(e["exit"], e["accuracy"], e["macs"]) for e in doc["exits"]]
        (2, 2, [(1, 0.5, 1000000.0), (2, 0.5, 4000000.0)])
    """
    costs = run.costs
    latency = [] if costs is None else sorted(costs.latency.items())
    exits = [
        {
            **s.to_dict(),
            "macs": None if costs is None or costs.macs is None else costs.macs[s.exit - 1],
            "latency_ms": {key: prof.early_exit_ms[s.exit - 1] for key, prof in latency},
            "stage_sum_ms": {key: prof.exit_ms[s.exit - 1] for key, prof in latency},
        }
        for s in exit_stats(run.logits, run.labels)
    ]
    doc: dict[str, Any] = {"path": str(run.path), "n": run.n, "k": run.k, "c": run.c, "exits": exits}
    if costs is not None:
        full = {k: full_model_ms(costs, None, k) for k, _ in latency}
        doc["full_model_ms"] = {k: ms for k, (ms, _) in full.items()}
        doc["full_model_source"] = {k: source for k, (_, source) in full.items()}
        doc["decision_ms"] = {k: p.decision_median_ms for k, p in latency}
        doc["unsupported_ops"] = [u.to_dict() for u in costs.unsupported_ops]
    doc["provenance"] = run.provenance.to_dict()
    return doc
