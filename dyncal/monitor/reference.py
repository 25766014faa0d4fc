"""The calibration run under the shipped thresholds, and the telemetry its logits would make."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from dyncal.errors import DyncalError, param
from dyncal.telemetry import PackageIdentity, TelemetryData

if TYPE_CHECKING:
    from dyncal.artifacts.run import Run
    from dyncal.artifacts.thresholds import ThresholdsDocument

__all__ = ["CalibrationReference", "simulated_telemetry"]


@dataclass(frozen=True)
class CalibrationReference:
    """The calibration run under the shipped thresholds: what production is compared with.

    Attributes:
        scores: ``(N, K)`` scores (the thresholds' score and temperatures).
        predictions: ``(N, K)`` each exit's class.
        labels: ``(N,)`` true classes.
        thresholds: ``K - 1`` thresholds.
        costs: Cost unit (``"macs"``, ``"ms:<device>/b<batch>"``) to ``K`` cumulative costs.
        budget: The thresholds document's ``budget`` (``unit``, ``value``, ``met``, ...).
        identity: The package identity telemetry must carry.
    """

    scores: np.ndarray
    predictions: np.ndarray
    labels: np.ndarray
    thresholds: np.ndarray
    costs: dict[str, tuple[float, ...]] = field(default_factory=dict)
    budget: dict[str, Any] = field(default_factory=dict)
    identity: PackageIdentity | None = None

    @classmethod
    def from_arrays(
        cls,
        logits: np.ndarray,
        labels: np.ndarray,
        thresholds: ThresholdsDocument,
        *,
        costs: Mapping[str, Sequence[float]] | None = None,
    ) -> CalibrationReference:
        """Score ``(N, K, C)`` logits with the document's score and temperatures.

        Raises:
            DyncalError: Logits that do not fit the document's K.
        """
        from dyncal.calibrate.policy import assign_exits
        from dyncal.calibrate.scores import exit_scores

        k = len(thresholds.thresholds)
        if logits.ndim != 3 or logits.shape[1] != k:
            raise DyncalError(f"the calibration logits {tuple(logits.shape)} do not have the thresholds' K={k} exits")
        scores, preds = exit_scores(logits, thresholds.score, thresholds.temperatures)
        t = thresholds.threshold_array
        assign_exits(scores[:1], t)  # checks the count
        return cls(
            scores=scores,
            predictions=preds,
            labels=np.asarray(labels, dtype=np.int64),
            thresholds=t,
            costs={key: tuple(float(v) for v in c) for key, c in (costs or {}).items()},
            budget=dict(thresholds.budget),
            identity=PackageIdentity.from_thresholds(thresholds),
        )

    @classmethod
    def from_run(cls, run: Run, thresholds: ThresholdsDocument) -> CalibrationReference:
        """The reference of a run and the thresholds solved on it (refused for another run).

        Raises:
            DyncalError: Thresholds solved on another run (:func:`check_thresholds_for_run`).
        """
        from dyncal.artifacts.thresholds import check_thresholds_for_run
        from dyncal.calibrate.budget import cost_units

        check_thresholds_for_run(thresholds, run)
        return cls.from_arrays(run.logits, run.labels, thresholds, costs=cost_units(run.costs, run.k))

    @property
    def k(self) -> int:
        """Exits."""
        return int(self.scores.shape[1])

    @property
    def exits(self) -> np.ndarray:
        """``(N,)`` exit of each calibration sample under the thresholds."""
        from dyncal.calibrate.policy import assign_exits

        return assign_exits(self.scores, self.thresholds)

    def summary(self) -> dict[str, Any]:
        """Accuracy, the last exit's, the disagreement rate and exit shares on the calibration run."""
        exits = self.exits
        n = exits.size
        rows = np.arange(n)
        early = self.predictions[rows, exits]
        last = self.predictions[:, -1]
        return {
            "n": int(n),
            "accuracy": float(np.mean(early == self.labels)),
            "last_exit_accuracy": float(np.mean(last == self.labels)),
            "disagreement_rate": float(np.mean(early != last)),
            "exit_shares": (np.bincount(exits, minlength=self.k) / max(n, 1)).tolist(),
        }


def simulated_telemetry(
    logits: np.ndarray,
    thresholds: ThresholdsDocument,
    *,
    shadow: float,
    seed: int = 0,
    latency_ms: Sequence[float] | None = None,
    start_us: int = 0,
    spacing_us: int = 1000,
) -> TelemetryData:
    """The telemetry the shipped runner would write for samples with these per-exit logits.

    Each sample is one request, ``spacing_us`` apart from ``start_us``; its exit, prediction and
    scores follow the exit rule, a ``shadow`` share (drawn with ``seed``) records the last exit's
    class. For benchmarks and tests of the monitor on collected runs (clean or perturbed).

    Args:
        logits: ``(N, K, C)``.
        thresholds: The thresholds document (score, temperatures, thresholds).
        shadow: Shadow share in [0, 1].
        seed: Seed of the shadow draws.
        latency_ms: ``K`` latencies of a request leaving at each exit (default: not measured, NaN).
        start_us: Time of the first request, µs since the epoch.
        spacing_us: Time between requests, µs.

    Example:
        >>> from dyncal.artifacts.thresholds import ThresholdsDocument
        >>> doc = ThresholdsDocument("maxprob", (1.0, 1.0), (0.9, None), "optimal", {}, None, {}, 0.9,
        ...                          None, None, (0.5, 0.5), n_classes=2)
        >>> z = np.array([[[4.0, 0.0], [0.0, 1.0]], [[0.1, 0.0], [0.0, 3.0]]])
        >>> d = simulated_telemetry(z, doc, shadow=1.0)
        >>> d.exits.tolist(), d.predictions.tolist(), d.last_predictions.tolist()
        ([0, 1], [0, 1], [1, 1])
    """
    from dyncal.calibrate.policy import assign_exits
    from dyncal.calibrate.scores import exit_scores

    if not 0.0 <= shadow <= 1.0:
        raise DyncalError(f"{param('shadow')} must be a share in [0, 1], got {shadow!r}")
    scores, preds = exit_scores(logits, thresholds.score, thresholds.temperatures)
    exits = assign_exits(scores, thresholds.threshold_array)
    n = exits.size
    chosen = np.random.default_rng(seed).random(n) < shadow
    lat = None if latency_ms is None else np.asarray(latency_ms, dtype=np.float64)[exits]
    return TelemetryData.from_arrays(
        exits=exits,
        predictions=preds[np.arange(n), exits],
        scores=scores,
        last_predictions=np.where(chosen, preds[:, -1], -1),
        latency_ms=lat,
        time_us=start_us + spacing_us * np.arange(n, dtype=np.int64),
    )
