"""What ``verify --throughput`` stores: samples per second of the early exit's modes and the plain deployment.

Measured by :func:`dyncal.analysis.throughput.measure_throughput`; kept here, torch-free,
because the report and the CLI read it from ``verify.json``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from dyncal.errors import DyncalError
from dyncal.measurement import row_spreads

__all__ = ["MODES", "ThroughputResult"]

MODES = ("per_batch", "rebatched", "plain")
"""The ways of answering a list of batches that :func:`measure_throughput` times."""

_VERSION = 1


@dataclass(frozen=True)
class ThroughputResult:
    """How fast each mode answered the same batches.

    Attributes:
        runtime: The runtime every mode ran under (``eager``, ``graphs``).
        timer: The clock (``perf_counter``, ``cuda_events``, ...).
        batch_size: Rows of a full batch.
        samples: Rows in the batches.
        seconds: Per mode, the seconds each replicate took for all batches.
        agreement: Share of rows to which every early-exit mode timed gives the expected exit
            and prediction (the simulation's when given, else the per-batch mode's).
        exit_shares: Share of rows leaving at each exit (per-batch early exit), ``K`` floats.
        macs_ratio: Plain deployment's MACs over the early exit's mean MACs (None: not given).
    """

    runtime: str
    timer: str
    batch_size: int
    samples: int
    seconds: Mapping[str, tuple[float, ...]]
    agreement: float
    exit_shares: tuple[float, ...]
    macs_ratio: float | None = None

    def samples_per_s(self, mode: str) -> float:
        """Median samples per second of ``mode``."""
        return self.samples / float(np.median(self.seconds[mode]))

    def spread(self, mode: str) -> float:
        """IQR over median of ``mode``'s replicates."""
        return float(row_spreads(self.seconds[mode]))

    def speedup(self, mode: str) -> float:
        """``mode``'s samples per second over the plain deployment's."""
        return self.samples_per_s(mode) / self.samples_per_s("plain")

    def share_of_macs_ratio(self, mode: str) -> float | None:
        """``mode``'s speed-up as a share of the MACs ratio (1: all the saved MACs became time)."""
        return None if not self.macs_ratio else self.speedup(mode) / self.macs_ratio

    @property
    def recommendation(self) -> str:
        """The mode to deploy.

        ``per_batch`` when it beats the plain deployment, else ``rebatched`` when that does
        (offline or streaming work), else ``plain``.
        """
        return next((m for m in ("per_batch", "rebatched") if m in self.seconds and self.speedup(m) > 1.0), "plain")

    @property
    def advice(self) -> str:
        """The recommendation in one sentence."""
        rec = self.recommendation
        modes = ", ".join(f"{m} {self.speedup(m):.2f}x" for m in MODES if m in self.seconds and m != "plain")
        if rec == "per_batch":
            text = f"early exit pays batch by batch at batch {self.batch_size} ({modes} the plain deployment)"
            if "rebatched" in self.seconds and self.speedup("rebatched") > self.speedup("per_batch"):
                text += "; for offline or streaming work the throughput mode (runner.map) is faster still"
            return text
        if rec == "rebatched":
            return (
                f"per-batch early exit loses at batch {self.batch_size} ({modes}); use the throughput mode "
                "(runner.map) for offline or streaming work, where rows that continue are pooled into full batches"
            )
        return (
            f"early exit does not pay at batch {self.batch_size} under {self.runtime} ({modes}); deploy the plain model"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields, with the derived rates."""
        return {
            "version": _VERSION,
            "runtime": self.runtime,
            "timer": self.timer,
            "batch_size": self.batch_size,
            "samples": self.samples,
            "seconds": {m: list(s) for m, s in self.seconds.items()},
            "samples_per_s": {m: self.samples_per_s(m) for m in self.seconds},
            "spread": {m: self.spread(m) for m in self.seconds},
            "speedup": {m: self.speedup(m) for m in self.seconds},
            "agreement": self.agreement,
            "exit_shares": list(self.exit_shares),
            "macs_ratio": self.macs_ratio,
            "recommendation": self.recommendation,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ThroughputResult:
        """Read :meth:`to_dict`'s output (the derived rates are recomputed)."""
        if d.get("version") != _VERSION:
            raise DyncalError(f"throughput result version {d.get('version')!r} is not {_VERSION}; measure again")
        return cls(
            runtime=str(d["runtime"]),
            timer=str(d["timer"]),
            batch_size=int(d["batch_size"]),
            samples=int(d["samples"]),
            seconds={str(m): tuple(float(v) for v in s) for m, s in d["seconds"].items()},
            agreement=float(d["agreement"]),
            exit_shares=tuple(float(v) for v in d["exit_shares"]),
            macs_ratio=None if d.get("macs_ratio") is None else float(d["macs_ratio"]),
        )
