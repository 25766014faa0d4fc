"""verify.json: what a real early exit measured, bound to the run, thresholds and model it ran.

``dyncal verify`` times the early exit and the plain model **interleaved on the same
batches** (pairs), so that load on the machine hits both alike; the speed-up is measured as
a ratio, and its interval carries both kinds of noise:

* timing noise — replicates of each pair are resampled, the batches kept;
* sampling noise — the batches (which samples were replayed) are resampled.

The "plain model" is the plain deployment (:mod:`dyncal.analysis.plain`): the stages and
the last head only, no intermediate head, no exit decision, run by the same runtime,
threads and device (``settings.baseline`` says so; the keys keep their ``full_model`` names).
The speed-up comes from :func:`dyncal.paired.paired_speedup`, an estimator made for busy
machines (``estimator``, default ``auto``; the one used is recorded in ``estimate``).

Each timing also keeps its per-request view (``requests``,
:class:`dyncal.artifacts.requests.RequestTimings`, in that module's format): the run row
and runtime exit of every timed row and both deployments' raw milliseconds per unit (a
request at batch 1, a batch at batch B), with the distribution summaries derived from them.

Raw replicate times are stored; every summary is derived on read, so the CLI, the report
and a script reading the JSON all see the same numbers. numpy only: a report can read this
on a machine without torch.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from dyncal.artifacts import validate as V
from dyncal.artifacts.fields import JsonFields
from dyncal.artifacts.requests import RequestTimings, ms_matrix, timing_key
from dyncal.errors import DyncalError
from dyncal.measurement import row_medians, row_spreads
from dyncal.paired import ESTIMATORS, PairedEstimate, paired_speedup

__all__ = ["SCHEMA", "SCHEMA_VERSION", "PairedTiming", "VerifyResult", "ModelIdentity"]

SCHEMA = "dyncal.verify"
SCHEMA_VERSION = 1
MAX_VERIFY_BYTES = 256 << 20
"""Largest verify.json accepted (raw replicates of every batch; dyncal writes a few MB)."""
MIN_AGREEMENT = 0.99
"""Below this agreement with the simulation a verify result is no evidence for the thresholds."""


@dataclass(frozen=True)
class PairedTiming:
    """Interleaved timings of the early exit and the plain model at one device and batch size.

    ``early_exit_ms[b][r]`` and ``full_model_ms[b][r]`` are replicate ``r`` of batch ``b``,
    measured back to back on the same batch (a pair).

    Attributes:
        key: ``"<device>/b<batch>"``.
        batch_size: Rows per batch (the last batch may hold fewer).
        early_exit_ms: ``(batches, repeats)`` milliseconds of the real early exit.
        full_model_ms: ``(batches, repeats)`` milliseconds of the plain model (the plain
            deployment), same batches.
        predicted_ms: The cost model's prediction of ``measured_ms`` (None when not profiled).
        solve_expected_ms: The per-sample expectation solve reported for this key, if any.
        estimator: The speed-up estimator asked for (:data:`dyncal.paired.ESTIMATORS`).
        requests: The same timings per request (batch 1) or per batch, with the run rows
            and exits of each (None in documents written before issue 21).

    Example:
        >>> t = PairedTiming("cpu/b1", 1, ((1.0, 1.0), (3.0, 3.0)), ((4.0, 4.0), (4.0, 4.0)), 2.0)
        >>> t.measured_ms, t.full_model_ms_median, t.speedup
        (2.0, 4.0, 2.0)
    """

    key: str
    batch_size: int
    early_exit_ms: tuple[tuple[float, ...], ...]
    full_model_ms: tuple[tuple[float, ...], ...]
    predicted_ms: float | None = None
    solve_expected_ms: float | None = None
    estimator: str = "auto"
    requests: RequestTimings | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        r = self.requests
        if r is not None and (r.key != self.key or r.early_exit_ms.shape != (self.batches, self.repeats)):
            raise DyncalError(f"timing {self.key}: its request timings ({r.key}) are not the same timings")

    @cached_property
    def estimate(self) -> PairedEstimate:
        """The speed-up with its intervals, from :func:`dyncal.paired.paired_speedup` (records the estimator)."""
        return paired_speedup(*self._arrays, estimator=self.estimator)

    @cached_property
    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.early_exit_ms, dtype=float), np.asarray(self.full_model_ms, dtype=float)

    @property
    def batches(self) -> int:
        """Number of batches timed."""
        return len(self.early_exit_ms)

    @property
    def repeats(self) -> int:
        """Replicates per batch."""
        return len(self.early_exit_ms[0]) if self.early_exit_ms else 0

    @property
    def measured_ms(self) -> float:
        """Mean over batches of each batch's median early-exit time."""
        return float(row_medians(self._arrays[0]).mean())

    @property
    def full_model_ms_median(self) -> float:
        """Mean over batches of each batch's median plain-model time."""
        return float(row_medians(self._arrays[1]).mean())

    @property
    def speedup(self) -> float:
        """Plain model over early exit on the same batches, measured as a ratio (:attr:`estimate`).

        With ``estimator="median-ratio"`` (documents written before issue 21), each batch's
        ratio is the median over its pairs of ``full / early exit``, the batches weighted by
        their median early-exit time.
        """
        return self.estimate.value

    @property
    def measured_over_predicted(self) -> float | None:
        """How far the prediction is off (None without one)."""
        return None if not self.predicted_ms else self.measured_ms / self.predicted_ms

    @property
    def timing_spread(self) -> float:
        """Median over batches of the paired ratio's IQR / median: the timing noise in force."""
        ee, full = self._arrays
        return float(np.median(row_spreads(full / ee)))

    @property
    def speedup_ci(self) -> tuple[float, float]:
        """95% interval of :attr:`speedup` with timing and sampling noise (batches and replicates resampled)."""
        return self.estimate.interval

    @property
    def speedup_ci_timing(self) -> tuple[float, float]:
        """95% interval of :attr:`speedup` from timing noise alone (replicates resampled, batches kept)."""
        return self.estimate.interval_timing

    @property
    def speedup_ci_sampling(self) -> tuple[float, float]:
        """95% interval of :attr:`speedup` from sampling noise alone (batches resampled, replicates kept)."""
        return self.estimate.interval_sampling

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: raw replicates plus the derived summaries for readers."""
        return {
            "key": self.key,
            "batch_size": self.batch_size,
            "batches": self.batches,
            "repeats": self.repeats,
            "measured_ms": self.measured_ms,
            "full_model_ms": self.full_model_ms_median,
            "predicted_ms": self.predicted_ms,
            "solve_expected_ms": self.solve_expected_ms,
            "measured_over_predicted": self.measured_over_predicted,
            "speedup": self.speedup,
            "speedup_ci": list(self.speedup_ci),
            "speedup_ci_timing": list(self.speedup_ci_timing),
            "speedup_ci_sampling": list(self.speedup_ci_sampling),
            "timing_spread": self.timing_spread,
            "estimator": self.estimate.estimator,
            "estimator_asked": self.estimator,
            "estimate": self.estimate.to_dict(),
            "early_exit_ms_raw": [list(r) for r in self.early_exit_ms],
            "full_model_ms_raw": [list(r) for r in self.full_model_ms],
            "requests": None if self.requests is None else self.requests.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PairedTiming:
        """Build from :meth:`to_dict` output (validated)."""
        key, batch_size = timing_key(d)
        ee = ms_matrix(d.get("early_exit_ms_raw"), "early_exit_ms_raw")
        full = ms_matrix(d.get("full_model_ms_raw"), "full_model_ms_raw")
        if len(ee) != len(full) or any(len(a) != len(b) for a, b in zip(ee, full, strict=True)):
            raise ValueError(f"timing {key}: early_exit_ms_raw and full_model_ms_raw are not paired")
        # before issue 21: the median of pair ratios
        estimator = V.string(d.get("estimator_asked", "median-ratio"), "estimator_asked", choices=tuple(ESTIMATORS))
        raw = d.get("requests")
        requests = None if raw is None else RequestTimings.from_dict(V.mapping(raw, "requests"), f"{key}.requests.")
        if requests is not None and not (
            np.array_equal(requests.early_exit_ms, ee) and np.array_equal(requests.plain_ms, full)
        ):
            raise ValueError(f"timing {key}: 'requests' holds other milliseconds than the raw timings")
        return cls(
            key=key,
            batch_size=batch_size,
            early_exit_ms=ee,
            full_model_ms=full,
            predicted_ms=V.optional(d.get("predicted_ms"), V.number, "predicted_ms"),
            solve_expected_ms=V.optional(d.get("solve_expected_ms"), V.number, "solve_expected_ms"),
            estimator=str(estimator),
            requests=requests,
        )


@dataclass(frozen=True)
class ModelIdentity(JsonFields):
    """The model a result was measured with.

    Attributes:
        spec: ``pkg.module:factory``, a ``.pt2`` path, or an exported package's path.
        weights_sha256: SHA-256 of its checkpoint (or archive), None when it has none.
        kind: ``"model"`` (the model's own stages) or ``"package"`` (a ``dyncal export``).
    """

    spec: str
    weights_sha256: str | None
    kind: str = "model"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelIdentity:
        """Build from :meth:`to_dict` output (validated)."""
        sha = d.get("weights_sha256")
        if sha is not None and not isinstance(sha, str):
            raise ValueError("model.weights_sha256 must be a string or null")
        return cls(spec=V.required(d, "spec", V.string), weights_sha256=sha, kind=str(d.get("kind", "model")))


@dataclass(frozen=True)
class VerifyResult:
    """What ``dyncal verify`` found, bound to the run, thresholds and model it used.

    Attributes:
        run_fingerprint: :attr:`dyncal.artifacts.run.Run.fingerprint` of the replayed run.
        decision_fingerprint: Of the thresholds applied
            (:func:`dyncal.artifacts.thresholds.decision_fingerprint`).
        model: The model (or package) that ran.
        n: Samples replayed.
        agreement: Share whose runtime exit and prediction equal the simulated ones.
        exit_agreement: Share whose runtime exit equals the simulated one.
        runtime_accuracy: Accuracy of the runtime predictions.
        simulated_accuracy: Accuracy the exit rule gives on the stored logits, same samples.
        runtime_exit_shares: ``K`` shares of samples leaving at each exit at runtime.
        simulated_exit_shares: The same from the stored logits.
        timings: One :class:`PairedTiming` per batch size.
        device: Device name (``"cpu"``, ``"cuda:0"``).
        hardware: CPU model or GPU name.
        threads: CPU threads in force while timing.
        settings: How it was measured (repeats, warm-up, time bound, whether it stopped early).
        created: ISO-8601 UTC time.
        throughput: ``verify --throughput``: per batch size, samples/s of per-batch early exit,
            the throughput mode and the plain deployment over the same rows, with agreement,
            MACs ratio and the mode to deploy (``dyncal.analysis.throughput.ThroughputResult``
            documents, each with its ``key``); empty when not measured.
    """

    run_fingerprint: str
    decision_fingerprint: str
    model: ModelIdentity
    n: int
    agreement: float
    exit_agreement: float
    runtime_accuracy: float
    simulated_accuracy: float
    runtime_exit_shares: tuple[float, ...]
    simulated_exit_shares: tuple[float, ...]
    timings: tuple[PairedTiming, ...]
    device: str
    hardware: str
    threads: int | None
    settings: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat())
    throughput: tuple[dict[str, Any], ...] = ()

    def timing(self, key: str) -> PairedTiming | None:
        """The timing of ``"<device>/b<batch>"``, or None."""
        return next((t for t in self.timings if t.key == key), None)

    def mismatch(
        self, *, run_fingerprint: str, decision_fingerprint: str, weights_sha256: str | None = None
    ) -> str | None:
        """Why this result is not evidence for a run, thresholds and model (None when it is).

        Example:
            >>> r = VerifyResult("r", "d", ModelIdentity("m", None), 1, 1, 1, 1, 1, (1,), (1,), (), "cpu", "x", 1)
            >>> r.mismatch(run_fingerprint="r", decision_fingerprint="other")
            'it was measured with other thresholds'
        """
        if self.run_fingerprint != run_fingerprint:
            return "it was measured on another run"
        if self.decision_fingerprint != decision_fingerprint:
            return "it was measured with other thresholds"
        if weights_sha256 is not None and self.model.weights_sha256 != weights_sha256:
            return "it was measured with other weights" + (
                " (it records none)" if self.model.weights_sha256 is None else ""
            )
        check = self.settings.get("model_check")
        if isinstance(check, Mapping) and check.get("allowed"):
            return f"it was measured with a model that is not the run's (--allow-other-model: {check.get('mismatch')})"
        if self.agreement < MIN_AGREEMENT:
            return (
                f"its early exit took the simulated exit and prediction on only {100 * self.agreement:.2f}% of "
                "samples, so it did not run what the thresholds simulate"
            )
        return None

    def to_dict(self) -> dict[str, Any]:
        """The verify.json document (also ``dyncal verify --json``)."""
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "created": self.created,
            "run_fingerprint": self.run_fingerprint,
            "decision_fingerprint": self.decision_fingerprint,
            "model": self.model.to_dict(),
            "n": self.n,
            "agreement": self.agreement,
            "exit_agreement": self.exit_agreement,
            "runtime_accuracy": self.runtime_accuracy,
            "simulated_accuracy": self.simulated_accuracy,
            "runtime_exit_shares": list(self.runtime_exit_shares),
            "simulated_exit_shares": list(self.simulated_exit_shares),
            "measured_ms": {t.key: t.measured_ms for t in self.timings},
            "predicted_ms": {t.key: t.predicted_ms for t in self.timings},
            "full_model_ms": {t.key: t.full_model_ms_median for t in self.timings},
            "speedup": {t.key: t.speedup for t in self.timings},
            "timings": [t.to_dict() for t in self.timings],
            "device": self.device,
            "hardware": self.hardware,
            "threads": self.threads,
            "settings": dict(self.settings),
            **({"throughput": [dict(t) for t in self.throughput]} if self.throughput else {}),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VerifyResult:
        """Build from :meth:`to_dict` output.

        Raises:
            ValueError: A field is missing or of the wrong type (:meth:`load` words it for users).
        """
        if d.get("schema") != SCHEMA:
            raise ValueError(f"not a verify document (schema {d.get('schema')!r}, expected {SCHEMA!r})")
        version = d.get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise ValueError(f"schema version {version!r}; this dyncal reads up to {SCHEMA_VERSION}")
        timings = [V.mapping(t, f"timings[{i}]") for i, t in enumerate(V.sequence(d.get("timings"), "timings"))]
        model = V.mapping(d.get("model"), "model")
        shares = {
            key: V.number_list(d.get(key), key, min_length=1, minimum=0, maximum=1)
            for key in ("runtime_exit_shares", "simulated_exit_shares")
        }
        if len(set(map(len, shares.values()))) != 1:
            raise ValueError("'runtime_exit_shares' and 'simulated_exit_shares' must have one entry per exit each")
        fraction = functools.partial(V.required, d, check=V.number, minimum=0, maximum=1)
        return cls(
            run_fingerprint=V.required(d, "run_fingerprint", V.string),
            decision_fingerprint=V.required(d, "decision_fingerprint", V.string),
            model=ModelIdentity.from_dict(model),
            n=V.required(d, "n", V.integer, minimum=1),
            agreement=fraction("agreement"),
            exit_agreement=fraction("exit_agreement"),
            runtime_accuracy=fraction("runtime_accuracy"),
            simulated_accuracy=fraction("simulated_accuracy"),
            runtime_exit_shares=shares["runtime_exit_shares"],
            simulated_exit_shares=shares["simulated_exit_shares"],
            timings=_unique(tuple(PairedTiming.from_dict(t) for t in timings)),
            device=V.required(d, "device", V.string),
            hardware=str(d.get("hardware", "")),
            threads=V.optional(d.get("threads"), V.integer, "threads", minimum=1),
            settings=dict(d["settings"]) if isinstance(d.get("settings"), Mapping) else {},
            created=str(d.get("created", "")),
            throughput=_throughput(d.get("throughput", [])),
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write verify.json atomically."""
        from dyncal.artifacts.atomic import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> VerifyResult:
        """Open and validate a verify.json.

        Raises:
            DyncalError: Missing, unreadable or malformed (one line naming the file and field).
        """
        path = Path(path)
        if not path.exists() and not path.is_symlink():
            raise DyncalError(
                f"no verify result at '{path}'; write one with 'dyncal verify RUN --thresholds T --out {path}'"
            )
        doc = V.read_json_document(path, what="a verify result", max_bytes=MAX_VERIFY_BYTES)
        try:
            return cls.from_dict(doc)
        except (V.FieldError, ValueError, TypeError, KeyError, IndexError) as e:
            raise DyncalError(f"'{path}' is not a valid verify result: {e}; run 'dyncal verify ... --out' again") from e


def _throughput(value: Any) -> tuple[dict[str, Any], ...]:
    """The ``throughput`` entries: objects, each with its latency ``key`` (their fields are read by the report)."""
    if not isinstance(value, list) or not all(isinstance(t, Mapping) and isinstance(t.get("key"), str) for t in value):
        raise ValueError("'throughput' must be a list of objects, each with a 'key'")
    return tuple(dict(t) for t in value)


def _unique(timings: tuple[PairedTiming, ...]) -> tuple[PairedTiming, ...]:
    keys = [t.key for t in timings]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ValueError(f"'timings' holds {twice[0]} more than once")
    return timings
