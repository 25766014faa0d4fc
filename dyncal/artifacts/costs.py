"""The cost table of a run: MACs per exit and latency per device and batch size.

Stored under ``"costs"`` in ``run.json`` (:class:`dyncal.artifacts.run_document.RunDocument` writes
it); :class:`LatencyKey` is the one parser of latency keys (``"cpu/b1"``) and cost columns
(``"ms:cpu/b1"``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dyncal.artifacts import validate as V
from dyncal.artifacts.fields import JsonFields
from dyncal.errors import DyncalError, param
from dyncal.measurement import Measurement

__all__ = [
    "LatencyKey",
    "device_name",
    "UnsupportedOp",
    "LatencyProfile",
    "UnmeasuredProfileError",
    "CostTable",
]


@dataclass(frozen=True, order=True)
class LatencyKey:
    """A device and batch size that latency was measured at; written ``"<device>/b<batch>"``.

    JSON documents and tables keep the text form (``str(key)``); code that needs the device
    or the batch size parses it here, never by slicing strings.

    Example:
        >>> key = LatencyKey.parse("cuda:1/b32")
        >>> key.device, key.batch_size, str(key), key.column
        ('cuda:1', 32, 'cuda:1/b32', 'ms:cuda:1/b32')
        >>> LatencyKey.from_column("ms:cpu/b1") == LatencyKey("cpu", 1)
        True
    """

    device: str
    batch_size: int

    PREFIX = "ms:"
    """Prefix of a latency column in cost tables and frontier tables (``"ms:cpu/b1"``)."""

    def __str__(self) -> str:
        return f"{self.device}/b{self.batch_size}"

    @property
    def column(self) -> str:
        """The cost column of this key: ``"ms:<device>/b<batch>"``."""
        return f"{self.PREFIX}{self}"

    @classmethod
    def parse(cls, text: str) -> LatencyKey:
        """Read ``"<device>/b<batch>"``.

        Raises:
            ValueError: Not of that form.
        """
        device, sep, batch = str(text).rpartition("/b")
        if not sep or not device or not batch.isdigit() or int(batch) < 1:
            raise ValueError(f"{text!r} is not a latency key '<device>/b<batch size>' (e.g. 'cpu/b1')")
        return cls(device, int(batch))

    @classmethod
    def from_column(cls, column: str) -> LatencyKey:
        """Read a cost column ``"ms:<device>/b<batch>"``.

        Raises:
            ValueError: Not a latency column.
        """
        if not str(column).startswith(cls.PREFIX):
            raise ValueError(f"{column!r} is not a latency column ('ms:<device>/b<batch size>')")
        return cls.parse(str(column)[len(cls.PREFIX) :])


_DEVICE = re.compile(r"(cpu|cuda)(?::(\d{1,4}))?")


def device_name(device: str) -> str:
    """The one name of a device, as latency keys, profiles and verify results record it.

    ``cpu`` and ``cpu:0`` are ``cpu``; ``cuda`` and ``cuda:0`` are ``cuda`` (the device a
    dyncal process uses first); ``cuda:N`` stays. Whether the device exists here is
    :func:`dyncal.models.resolve_device`'s question.

    Raises:
        DyncalError: Not ``cpu``, ``cuda`` or ``cuda:N``; or ``cpu:N`` with N > 0 (a
            process has one CPU device: threads are set with `threads`).

    Example:
        >>> device_name("cpu:0"), device_name("cuda:0"), device_name("cuda:1")
        ('cpu', 'cuda', 'cuda:1')
    """
    m = _DEVICE.fullmatch(str(device))
    if m is None:
        raise DyncalError(f"{param('device')} must be cpu, cuda or cuda:N; got {str(device)[:40]!r}")
    kind, index = m.group(1), m.group(2)
    if index is None or int(index) == 0:
        return kind
    if kind == "cpu":
        raise DyncalError(
            f"{param('device')} {device}: a process has one CPU device, cpu (threads are set with "
            f"{param('threads')}); use {param('device')} cpu"
        )
    return f"{kind}:{int(index)}"


@dataclass(frozen=True)
class UnsupportedOp(JsonFields):
    """An operator fvcore could not count, in one stage."""

    stage: int
    op: str
    count: int

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], field: str = "unsupported_ops[]") -> UnsupportedOp:
        """Build from :meth:`to_dict` output.

        Raises:
            FieldError: A missing field or one of the wrong type.
        """
        d = V.mapping(d, field)
        return cls(
            stage=V.required(d, "stage", V.integer, f"{field}.", minimum=1),
            op=V.required(d, "op", V.string, f"{field}."),
            count=V.required(d, "count", V.integer, f"{field}.", minimum=0),
        )


def _replicates(value: Any, field: str, min_length: int = 0) -> tuple[tuple[float, ...], ...]:
    """Lists of raw replicate milliseconds (one non-empty list per entry, at least ``min_length`` entries)."""
    return tuple(
        V.number_list(r, f"{field}[{i}]", min_length=1, minimum=0)
        for i, r in enumerate(V.sequence(value, field, min_length=min_length))
    )


class UnmeasuredProfileError(V.FieldError):
    """A profile lacks what ``dyncal profile`` always times (exit paths, full model): only a new profile mends it."""


def _one_per_exit(field: str, k: int, n: int) -> None:
    """Refuse ``n`` entries where there must be one per exit (``k``)."""
    if n != k:
        raise V.FieldError(field, f"must have one entry per exit (K={k}), got {n}")


def _check_measured(
    paths: tuple[tuple[float, ...], ...], full_model: tuple[float, ...], k: int, prefix: str, key: str
) -> None:
    """Refuse a profile without one non-empty list of exit-path replicates per exit (``k``) or a full-model timing.

    Raises:
        UnmeasuredProfileError: No exit paths, a list without replicates, or no full-model replicate.
        FieldError: Not one exit path per exit.
    """
    if not paths or not all(paths):
        raise UnmeasuredProfileError(
            f"{prefix}exit_path_ms", f"is missing or empty: the {key} latency profile has no measured exit paths"
        )
    _one_per_exit(f"{prefix}exit_path_ms", k, len(paths))
    if not full_model:
        raise UnmeasuredProfileError(
            f"{prefix}full_model_ms", f"is missing or empty: the {key} latency profile has no timing of the full model"
        )


@dataclass(frozen=True)
class LatencyProfile:
    """Measured wall-clock of each stage on one device at one batch size.

    Raw replicates are stored; medians and spreads are derived on read.

    Attributes:
        device: Device name as used in keys (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        batch_size: Samples per forward.
        stage_ms: Raw replicate times per stage, ``K`` sequences of milliseconds.
        decision_ms: Raw replicate times of one exit decision (score + host sync).
        full_model_ms: Raw replicate times of the full model (``settings["full_model"]`` says
            which: the plain deployment), non-empty.
        threads: CPU threads used (``torch.get_num_threads``), None if not applicable.
        hardware: CPU model or GPU name.
        settings: Other measurement settings (warm-up, repeats, torch version, ...).
        exit_path_ms: Raw replicate times of the real early exit with every row leaving at
            exit k, ``K`` non-empty sequences (required, by keyword).
        compaction_ms: Raw replicate times of the early exit's batch compaction at exit k
            (rows leaving recorded, carried tensors cut to the rows staying, output
            assembled), ``K - 1`` sequences at ``settings["compaction_rows"]`` rows; empty
            when not measured or the stages cannot drop rows.
        exit_path_rows_ms: Exit paths at fewer rows than ``batch_size`` (the rows a batch
            still holds after samples left), ``{rows: K sequences}``; a stage's time is not
            linear in its rows, so predictions interpolate between these.
    """

    device: str
    batch_size: int
    stage_ms: tuple[tuple[float, ...], ...]
    decision_ms: tuple[float, ...]
    full_model_ms: tuple[float, ...]
    threads: int | None
    hardware: str
    settings: dict[str, Any] = field(default_factory=dict)
    exit_path_ms: tuple[tuple[float, ...], ...] = field(kw_only=True)
    compaction_ms: tuple[tuple[float, ...], ...] = ()
    exit_path_rows_ms: dict[int, tuple[tuple[float, ...], ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Refuse a profile without exit paths or full-model timing (:class:`UnmeasuredProfileError`)."""
        _check_measured(self.exit_path_ms, self.full_model_ms, len(self.stage_ms), "", self.key)

    @property
    def key(self) -> str:
        """The ``"<device>/b<batch>"`` key."""
        return str(LatencyKey(self.device, self.batch_size))

    @property
    def stage_median_ms(self) -> list[float]:
        """Median time of each stage, ``K`` floats."""
        return [Measurement(r).median_ms for r in self.stage_ms]

    @property
    def stage_iqr_ms(self) -> list[float]:
        """Inter-quartile range of each stage's replicates, ``K`` floats."""
        return [Measurement(r).iqr_ms for r in self.stage_ms]

    @property
    def decision_median_ms(self) -> float:
        """Median time of one exit decision (0 when none was timed)."""
        return Measurement(self.decision_ms).median_ms if self.decision_ms else 0.0

    @property
    def full_model_median_ms(self) -> float:
        """Median time of the full model."""
        return Measurement(self.full_model_ms).median_ms

    @property
    def exit_ms(self) -> list[float]:
        """Cumulative compute time to produce exit k: stage medians 1..k, ``K`` floats."""
        return [float(v) for v in np.cumsum(self.stage_median_ms)]

    @property
    def early_exit_ms(self) -> list[float]:
        """Time of a batch whose rows all leave at exit k in a real early exit, ``K`` floats.

        Measured on the runner itself (:attr:`exit_path_ms`): the running maximum of the
        medians, as leaving later never saves time.
        """
        return [float(v) for v in np.maximum.accumulate([Measurement(r).median_ms for r in self.exit_path_ms])]

    @property
    def compaction_median_ms(self) -> list[float]:
        """Median time of one batch compaction at each exit before the last (empty if not measured)."""
        return [Measurement(r).median_ms for r in self.compaction_ms if r]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (raw replicates plus derived medians for readers)."""
        return {
            "device": self.device,
            "batch_size": self.batch_size,
            "stage_ms": [list(r) for r in self.stage_ms],
            "decision_ms": list(self.decision_ms),
            "full_model_ms": list(self.full_model_ms),
            "threads": self.threads,
            "hardware": self.hardware,
            "settings": dict(self.settings),
            "exit_median_ms": self.exit_ms,
            "exit_path_ms": [list(r) for r in self.exit_path_ms],
            "compaction_ms": [list(r) for r in self.compaction_ms],
            "exit_path_rows_ms": {str(n): [list(r) for r in p] for n, p in sorted(self.exit_path_rows_ms.items())},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], field: str = "latency", k: int | None = None) -> LatencyProfile:
        """Build from :meth:`to_dict` output (the derived ``exit_median_ms`` is ignored).

        ``k``, when given, is the number of exits the run has: ``stage_ms`` must have one entry each.

        Raises:
            FieldError: A missing field or one of the wrong type or value: ``stage_ms`` must
                hold one non-empty list of finite non-negative milliseconds per stage, and
                ``exit_path_ms`` one per exit.
            UnmeasuredProfileError: No ``exit_path_ms`` or ``full_model_ms`` (a profile ``dyncal profile``
                did not write).
        """
        d = V.mapping(d, field)
        device = V.required(d, "device", V.string, f"{field}.")
        batch = V.required(d, "batch_size", V.integer, f"{field}.", minimum=1)
        stage_ms = V.required(d, "stage_ms", _replicates, f"{field}.", min_length=1)
        if k is not None:
            _one_per_exit(f"{field}.stage_ms", k, len(stage_ms))
        exit_path_ms = _replicates(d.get("exit_path_ms", []), f"{field}.exit_path_ms")
        full_model_ms = V.number_list(d.get("full_model_ms", []), f"{field}.full_model_ms", minimum=0)
        _check_measured(exit_path_ms, full_model_ms, len(stage_ms), f"{field}.", str(LatencyKey(device, batch)))
        return cls(
            device=device,
            batch_size=batch,
            stage_ms=stage_ms,
            decision_ms=V.number_list(d.get("decision_ms", []), f"{field}.decision_ms", minimum=0),
            full_model_ms=full_model_ms,
            threads=V.optional(d.get("threads"), V.integer, f"{field}.threads", minimum=1),
            hardware=V.string(d.get("hardware", ""), f"{field}.hardware"),
            settings=dict(V.mapping(d.get("settings", {}), f"{field}.settings")),
            exit_path_ms=exit_path_ms,
            compaction_ms=_replicates(d.get("compaction_ms", []), f"{field}.compaction_ms"),
            exit_path_rows_ms={
                V.integer(int(n) if str(n).isdigit() else n, f"{field}.exit_path_rows_ms", minimum=1): _replicates(
                    p, f"{field}.exit_path_rows_ms.{n}"
                )
                for n, p in V.mapping(d.get("exit_path_rows_ms", {}), f"{field}.exit_path_rows_ms").items()
            },
        )


@dataclass(frozen=True)
class CostTable:
    """What each exit costs.

    Attributes:
        macs: Cumulative multiply-accumulates (fvcore's count) to produce exit k, heads of
            earlier exits included; ``K`` floats, or None when unknown.
        stage_macs: MACs of each stage alone, ``K`` floats, or None.
        unsupported_ops: Operators fvcore could not count, per stage.
        latency: Measured latency per ``"<device>/b<batch>"`` key.
        source: ``"profile"`` (measured by dyncal) or ``"import"`` (given by the user).
        model: The model the latest profile measured (``model``, ``weights_sha256``,
            ``state_sha256``) and how it compared with the run's (``check``; ``allowed``
            true when ``--allow-other-model`` let another model be used), or None.
    """

    macs: tuple[float, ...] | None = None
    stage_macs: tuple[float, ...] | None = None
    unsupported_ops: tuple[UnsupportedOp, ...] = ()
    latency: dict[str, LatencyProfile] = field(default_factory=dict)
    source: str = "profile"
    model: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        doc = {
            "macs": None if self.macs is None else list(self.macs),
            "stage_macs": None if self.stage_macs is None else list(self.stage_macs),
            "unsupported_ops": [u.to_dict() for u in self.unsupported_ops],
            "latency": {k: v.to_dict() for k, v in self.latency.items()},
            "source": self.source,
        }
        if self.model is not None:
            doc["model"] = dict(self.model)
        return doc

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], field: str = "costs", *, k: int) -> CostTable:
        """Build from :meth:`to_dict` output, checking every field.

        ``macs`` must be positive, finite and cumulative (non-decreasing); ``stage_macs``
        finite and non-negative; every latency entry well formed and filed under its own
        ``"<device>/b<batch>"`` key; all of them one entry per exit (``k``, the run's K >= 1).

        Raises:
            FieldError: The first malformed field, named ``costs.<key>...``
                (:class:`UnmeasuredProfileError` for a latency entry without exit paths or full-model timing).
        """
        d = V.mapping(d, field)
        table = cls(
            macs=V.optional(d.get("macs"), V.number_list, f"{field}.macs", length=k, positive=True, nondecreasing=True),
            stage_macs=V.optional(d.get("stage_macs"), V.number_list, f"{field}.stage_macs", length=k, minimum=0),
            unsupported_ops=tuple(
                UnsupportedOp.from_dict(u, f"{field}.unsupported_ops[{i}]")
                for i, u in enumerate(V.sequence(d.get("unsupported_ops", []), f"{field}.unsupported_ops"))
            ),
            latency={
                key: LatencyProfile.from_dict(v, f"{field}.latency[{key!r}]", k=k)
                for key, v in V.mapping(d.get("latency", {}), f"{field}.latency").items()
            },
            source=V.string(d.get("source", "profile"), f"{field}.source"),
            model=dict(d["model"]) if isinstance(d.get("model"), Mapping) else None,
        )
        for key, prof in table.latency.items():
            if key != prof.key:
                raise V.FieldError(
                    f"{field}.latency[{key!r}]",
                    f"holds device {prof.device!r} at batch {prof.batch_size} ({prof.key!r})",
                )
        for op in table.unsupported_ops:
            if op.stage > k:
                raise V.FieldError(f"{field}.unsupported_ops", f"names stage {op.stage} of a run with K={k}")
        return table
