"""Prometheus metrics of a shipped early exit (:class:`TelemetryMetrics`; prometheus-client, the rollout extra)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dyncal.errors import DyncalError
from dyncal.telemetry.schema import EXTRA_HINT

__all__ = ["TelemetryMetrics"]


class TelemetryMetrics:
    """Prometheus metrics of an early exit: requests per exit, latency, shadow disagreements.

    Args:
        k: Exits.
        registry: A ``prometheus_client.CollectorRegistry`` (default: the global one).
        namespace: Metric name prefix (default ``dyncal``).
        buckets: Latency histogram buckets in seconds.

    Metrics: ``<ns>_early_exit_requests_total{exit="1".."K"}`` (exits counted from 1, as people
    read them), ``<ns>_early_exit_latency_seconds`` (histogram), ``<ns>_shadow_requests_total``,
    ``<ns>_shadow_disagreements_total``.

    The telemetry writer updates them at each flush, for the flushed rows at once
    (:meth:`observe_rows`): off the request path, so they lag the requests by up to one flush
    interval.

    Raises:
        DyncalError: prometheus-client is not installed (names the extra).
    """

    def __init__(
        self,
        k: int,
        *,
        registry: Any = None,
        namespace: str = "dyncal",
        buckets: Sequence[float] = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
    ) -> None:
        try:
            import prometheus_client as prom
        except ImportError:
            raise DyncalError(f"Prometheus metrics need prometheus-client, not installed; {EXTRA_HINT}") from None
        kw: dict[str, Any] = {"namespace": namespace}
        if registry is not None:
            kw["registry"] = registry
        self.k = int(k)
        self.requests = prom.Counter("early_exit_requests", "Requests answered, per exit (from 1)", ["exit"], **kw)
        self._per_exit = [self.requests.labels(exit=str(j + 1)) for j in range(self.k)]
        self.latency = prom.Histogram(
            "early_exit_latency_seconds", "Latency of early-exit requests", buckets=tuple(buckets), **kw
        )
        self.shadow = prom.Counter("shadow_requests", "Requests whose plain model was completed too", **kw)
        self.disagreements = prom.Counter(
            "shadow_disagreements", "Shadow requests where the early exit's class differs from the last exit's", **kw
        )

    def observe(self, exits: np.ndarray, latency_ms: np.ndarray, n_shadow: int, n_disagree: int) -> None:
        """Count one batch: exits ``(B,)`` from 0, latencies ``(B,)`` in ms, its shadow requests and disagreements."""
        for j, count in enumerate(np.bincount(exits, minlength=self.k)[: self.k]):
            if count:
                self._per_exit[j].inc(int(count))
        self._observe_latencies(np.asarray(latency_ms, dtype=np.float64) / 1000.0)
        if n_shadow:
            self.shadow.inc(n_shadow)
        if n_disagree:
            self.disagreements.inc(n_disagree)

    def observe_one(self, exit_index: int, latency_ms: float, last_prediction: int, prediction: int) -> None:
        """Count one request: its exit from 0, latency in ms, and the last exit's class if shadowed (else -1)."""
        self._per_exit[exit_index].inc()
        self.latency.observe(latency_ms / 1000.0)
        if last_prediction >= 0:
            self.shadow.inc()
            if last_prediction != prediction:
                self.disagreements.inc()

    def observe_rows(
        self, exits: np.ndarray, latency_ms: np.ndarray, predictions: np.ndarray, last_predictions: np.ndarray
    ) -> None:
        """Count rows at once: exits from 0, latencies in ms, classes answered and the last exit's (-1: not shadowed).

        The same counts as :meth:`observe_one` per row; the histogram takes the rows' bucket
        counts in one increment per bucket.
        """
        shadowed = last_predictions >= 0
        self.observe(exits, latency_ms, int(shadowed.sum()), int((shadowed & (last_predictions != predictions)).sum()))

    def _observe_latencies(self, seconds: np.ndarray) -> None:
        """Histogram observations in bulk: per-bucket counts from the histogram's bounds, one ``inc`` each."""
        hist = self.latency
        bounds, buckets, total = (getattr(hist, a, None) for a in ("_upper_bounds", "_buckets", "_sum"))
        if not seconds.size:
            return
        if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
            for s in seconds:  # a prometheus-client without those internals: one observation at a time
                hist.observe(float(s))
            return
        slot = np.searchsorted(np.asarray(bounds, dtype=np.float64), seconds, side="left")  # first bound >= value
        for i, count in enumerate(np.bincount(slot, minlength=len(bounds))[: len(bounds)]):
            if count:
                buckets[i].inc(int(count))
        total.inc(float(seconds.sum()))
