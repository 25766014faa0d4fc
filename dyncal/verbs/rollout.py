"""The rollout verbs on files: ``dyncal evaluate`` and ``dyncal monitor`` (the numbers are in the library).

* :func:`evaluate_run`: thresholds solved on run A judged on run B (:mod:`dyncal.evaluate`);
* :func:`monitor_telemetry`: production telemetry of a package against the calibration run, and
  the next rollout step (:mod:`dyncal.monitor`, :mod:`dyncal.telemetry`);
* :func:`perturbed_run_path`: where ``collect --perturb`` puts each perturbed run.

Nothing here prints; errors are :class:`~dyncal.errors.DyncalError` lines.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dyncal.errors import DyncalError, param

if TYPE_CHECKING:
    from dyncal.evaluate import Evaluation
    from dyncal.monitor import MonitorOptions, MonitorReport
    from dyncal.perturb import Perturbation
    from dyncal.telemetry import TelemetryRead

__all__ = ["evaluate_run", "MonitorResult", "monitor_telemetry", "perturbed_run_path", "risk_defaults"]


def perturbed_run_path(out: str | os.PathLike[str], perturbation: Perturbation) -> Path:
    """The run ``collect --perturb`` writes for ``perturbation`` beside the clean run ``out``: ``OUT-<slug>``.

    Example:
        >>> from dyncal.perturb import Perturbation
        >>> perturbed_run_path("runs/clean", Perturbation("gaussian_noise", 0.25)).as_posix()
        'runs/clean-gaussian_noise-0.25'
    """
    out = Path(out)
    return out.parent / f"{out.name}-{perturbation.slug}"


def evaluate_run(
    run: str | os.PathLike[str],
    thresholds: str | os.PathLike[str],
    *,
    reference: str | os.PathLike[str] | None = None,
    max_drop: float | None = None,
    delta: float | None = None,
    cost_tolerance: float = 0.05,
) -> Evaluation:
    """``dyncal evaluate RUN_B --thresholds T.json``: open the files and judge (see :mod:`dyncal.evaluate`).

    Raises:
        DyncalError: A run or thresholds file that cannot be read, B being A, another model.
    """
    from dyncal.artifacts.run import load_run
    from dyncal.artifacts.thresholds import read_thresholds
    from dyncal.evaluate import evaluate_thresholds

    doc = read_thresholds(thresholds)
    target = load_run(run)
    ref = None if reference is None else load_run(reference)
    return evaluate_thresholds(
        target, doc, reference=ref, max_drop=max_drop, delta=delta, cost_tolerance=cost_tolerance
    )


def risk_defaults(thresholds: Any, max_drop: float | None, delta: float | None) -> tuple[float, float]:
    """``(max_drop, delta)``: the ones given, else the thresholds' risk control (``solve --max-drop``).

    Raises:
        DyncalError: No ``max_drop`` given and none in the thresholds.
    """
    risk = getattr(thresholds, "risk", None) or {}
    eps = max_drop if max_drop is not None else risk.get("max_drop")
    if eps is None:
        raise DyncalError(
            f"give {param('max_drop')}: the drop against the last exit to certify on production traffic "
            "(the thresholds were not solved with one)"
        )
    dlt = delta if delta is not None else risk.get("delta", 0.05)
    return float(eps), float(dlt)


@dataclass(frozen=True)
class MonitorResult:
    """What ``dyncal monitor`` found: the report and what was read.

    Attributes:
        report: The monitor's report (decision and evidence).
        read: The telemetry read (files, streams, package).
        run: The calibration run's path.
        thresholds: The thresholds file's path.
    """

    report: MonitorReport
    read: TelemetryRead
    run: str
    thresholds: str

    def to_dict(self) -> dict[str, Any]:
        """The ``dyncal monitor --json`` document."""
        return {
            **self.report.to_dict(),
            "run": self.run,
            "thresholds": self.thresholds,
            "telemetry": self.read.to_dict(),
        }


def monitor_telemetry(
    run: str | os.PathLike[str],
    thresholds: str | os.PathLike[str],
    telemetry: str | os.PathLike[str],
    options: MonitorOptions,
    *,
    labels: str | os.PathLike[str] | None = None,
    package: str | os.PathLike[str] | None = None,
) -> MonitorResult:
    """``dyncal monitor RUN --thresholds T --telemetry DIR``: read, check the package, judge.

    The telemetry must come from the package of these thresholds solved on this run (its
    decision and run fingerprints; with ``package``, that package's manifest too).

    Raises:
        DyncalError: Unreadable files, thresholds of another run, telemetry of another package.
    """
    from dyncal.artifacts.package import manifest_bytes
    from dyncal.artifacts.run import load_run
    from dyncal.artifacts.thresholds import read_thresholds
    from dyncal.monitor import CalibrationReference, monitor, read_labels
    from dyncal.telemetry import PackageIdentity, read_telemetry

    doc = read_thresholds(thresholds)
    loaded = load_run(run)
    reference = CalibrationReference.from_run(loaded, doc)
    manifest_sha256 = None if package is None else hashlib.sha256(manifest_bytes(Path(package))).hexdigest()
    expect = PackageIdentity.from_thresholds(doc, manifest_sha256=manifest_sha256)
    read = read_telemetry(telemetry, expect=expect)
    by_id = None if labels is None else read_labels(labels, n_classes=loaded.c)
    report = monitor(reference, read.data, options, labels=by_id, identity=read.identity)
    return MonitorResult(report, read, str(run), str(thresholds))


def perturbed_datasets(
    dataset: Any,
    data_spec: str,
    specs: list[str],
    *,
    seed: int = 0,
    pixel_mean: float | list[float] = 0.0,
    pixel_std: float | list[float] = 1.0,
) -> list[tuple[Perturbation, Any, str]]:
    """One ``(perturbation, data set, data spec)`` per severity of ``collect --perturb`` specs.

    The first item is corrupted with each perturbation now, so a wrong ``pixel_mean`` /
    ``pixel_std`` (or a data set that is not images) is refused before anything is collected.

    Raises:
        DyncalError: A malformed spec, or items the corruptions cannot apply to.
    """
    from dyncal.perturb import PerturbedDataset, parse_perturbations, perturbed_data_spec

    out = []
    for p in parse_perturbations(specs):
        wrapped = PerturbedDataset(dataset, p, seed=seed, pixel_mean=pixel_mean, pixel_std=pixel_std)
        if len(wrapped):
            wrapped[0]  # refuses pixels outside [0, 1] in one line, naming pixel_mean / pixel_std
        out.append((p, wrapped, perturbed_data_spec(data_spec, p, seed)))
    return out
