"""Early-exit packages: ``dyncal export`` writes one, :func:`load_early_exit` serves it.

A package is a directory that runs the early exit of a run's model with its solved
thresholds, without the model's code::

    DIR/
      manifest.json     schema "dyncal.package", version 1 (see PackageManifest)
      stage_1.pt2       stage 1 as a torch.export archive, batch dimension dynamic
      ...
      stage_K.pt2

The stages follow the protocol of :mod:`dyncal.analysis.stages` (``stage_1(x) -> (logits_1,
*carry_1)``, ``stage_k(*carry_{k-1}) -> (logits_k, *carry_k)``); the manifest records the
batch dimension of every carried tensor, so rows that leave are cut from what the next
stage receives, and the exit rule: score, temperatures and thresholds with their
:func:`~dyncal.artifacts.thresholds.decision_fingerprint`. It binds the package to the run
(its fingerprint) and the model (spec, weights and state SHA-256) and lists the SHA-256 of
every other file.

Loading is checked: every file's hash must match the manifest, no archive may hold a
pickled entry (:func:`dyncal.models.load_exported`), and the thresholds must match the
decision fingerprint. The runner is an :class:`~dyncal.analysis.early_exit.EarlyExitRunner` over the
loaded stages, so its decisions are the same code path ``dyncal verify`` measures::

    runner = dyncal.load_early_exit("pkg")               # or device="cuda"
    exits, preds = runner(x)                             # int64 (B,) each, exits from 0
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dyncal.analysis.early_exit import EarlyExitRunner
from dyncal.analysis.partition import quiet_export_logs as _quiet_export_logs
from dyncal.analysis.stages import (
    EXAMPLE_BATCH,
    Stages,
    checked_stages,
    example_input,
    stages_function,
    verify_stages,
)
from dyncal.artifacts.atomic import atomic_write_bytes, atomic_write_text
from dyncal.artifacts.run import check_out, library_versions, load_run, publish_dir
from dyncal.artifacts.thresholds import ThresholdsDocument, check_thresholds_for_run, decision_fingerprint
from dyncal.calibrate.scores import SCORES
from dyncal.errors import DyncalError, ModelError, ProfileError, describe
from dyncal.models import (
    LoadedModel,
    check_exit_outputs,
    check_exported_archive,
    input_signature,
    load_exported,
    load_run_model,
    resolve_device,
    torch_dtype,
)
from dyncal.options import ModelOverrides, options_from

__all__ = [
    "PACKAGE_SCHEMA",
    "PACKAGE_VERSION",
    "PackageStage",
    "PackageManifest",
    "PackageRunner",
    "ExportResult",
    "export_package",
    "ExportOptions",
    "load_early_exit",
    "read_manifest",
]

log = logging.getLogger(__name__)

PACKAGE_SCHEMA = "dyncal.package"
PACKAGE_VERSION = 1
MANIFEST = "manifest.json"
PARTIAL_SUFFIX = ".partial"

_CHECK_BATCHES = (1, 4)  # the written package is proven against the model at these batch sizes
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_SHA = re.compile(r"[0-9a-f]{64}")


# --------------------------------------------------------------------------- the manifest


@dataclass(frozen=True)
class PackageStage:
    """One stage file of a package.

    Attributes:
        file: The ``.pt2`` file name inside the package.
        carry_batch_dims: Batch dimension of each value the stage hands to the next one
            (None: a value without one); empty for the last stage.
    """

    file: str
    carry_batch_dims: tuple[int | None, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"file": self.file, "carry_batch_dims": list(self.carry_batch_dims)}


@dataclass(frozen=True)
class PackageManifest:
    """``manifest.json`` of a package: what it runs and what it is bound to.

    Attributes:
        k: Exits (= stages).
        c: Classes.
        score: ``maxprob``, ``margin`` or ``entropy``.
        temperatures: ``K`` positive temperatures.
        thresholds: ``K`` thresholds, the last None (as in thresholds.json).
        decision_fingerprint: SHA-256 of score, temperatures and thresholds.
        input_shape: Per-sample input shape (the batch dimension left out).
        input_dtype: Input dtype name (``float32``).
        stages: The ``K`` stage files, exit 1 first.
        files: SHA-256 of every file in the package but the manifest.
        run_fingerprint: Fingerprint of the run the thresholds were solved on.
        run: Path of that run when exported (for people).
        model: ``spec``, ``weights_sha256``, ``state_sha256`` and ``stages_source``.
        solve: What solve said of the thresholds (method, budget, accuracies, shares).
        check: How closely the written package reproduced the model's exits.
        created: ISO-8601 UTC time of the export.
        versions: Library versions that wrote it.
        schema_version: Version of this document.
    """

    k: int
    c: int
    score: str
    temperatures: tuple[float, ...]
    thresholds: tuple[float | None, ...]
    decision_fingerprint: str
    input_shape: tuple[int, ...]
    input_dtype: str
    stages: tuple[PackageStage, ...]
    files: dict[str, str]
    run_fingerprint: str
    run: str = ""
    model: dict[str, Any] = field(default_factory=dict)
    solve: dict[str, Any] = field(default_factory=dict)
    check: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    schema_version: int = PACKAGE_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The ``manifest.json`` document."""
        return {
            "schema": PACKAGE_SCHEMA,
            "schema_version": self.schema_version,
            "k": self.k,
            "c": self.c,
            "score": self.score,
            "temperatures": list(self.temperatures),
            "thresholds": list(self.thresholds),
            "decision_fingerprint": self.decision_fingerprint,
            "input": {"shape": list(self.input_shape), "dtype": self.input_dtype},
            "stages": [s.to_dict() for s in self.stages],
            "files": dict(self.files),
            "run_fingerprint": self.run_fingerprint,
            "run": self.run,
            "model": dict(self.model),
            "solve": dict(self.solve),
            "check": dict(self.check),
            "created": self.created,
            "versions": dict(self.versions),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, where: str = "manifest") -> PackageManifest:
        """Build from :meth:`to_dict` output, validating every field the runner relies on.

        Raises:
            DyncalError: Not a package manifest, a newer version, or a malformed or
                inconsistent field (one line naming it).
        """
        if not isinstance(d, Mapping) or d.get("schema") != PACKAGE_SCHEMA:
            raise DyncalError(f"'{where}' is not a dyncal package manifest (schema is not {PACKAGE_SCHEMA!r})")
        version = d.get("schema_version")
        if not isinstance(version, int) or version > PACKAGE_VERSION:
            raise DyncalError(
                f"'{where}' has package schema version {version!r}; this dyncal reads up to {PACKAGE_VERSION}: "
                "upgrade dyncal"
            )
        try:
            inp = d["input"]
            stages = tuple(
                PackageStage(
                    file=str(s["file"]),
                    carry_batch_dims=tuple(None if v is None else int(v) for v in s["carry_batch_dims"]),
                )
                for s in d["stages"]
            )
            manifest = cls(
                k=int(d["k"]),
                c=int(d["c"]),
                score=str(d["score"]),
                temperatures=tuple(float(t) for t in d["temperatures"]),
                thresholds=tuple(None if t is None else float(t) for t in d["thresholds"]),
                decision_fingerprint=str(d["decision_fingerprint"]),
                input_shape=tuple(int(v) for v in inp["shape"]),
                input_dtype=str(inp["dtype"]),
                stages=stages,
                files={str(k): str(v) for k, v in dict(d["files"]).items()},
                run_fingerprint=str(d["run_fingerprint"]),
                run=str(d.get("run", "")),
                model=dict(d.get("model") or {}),
                solve=dict(d.get("solve") or {}),
                check=dict(d.get("check") or {}),
                created=str(d.get("created", "")),
                versions={str(k): str(v) for k, v in dict(d.get("versions") or {}).items()},
                schema_version=version,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise DyncalError(f"'{where}' is not a valid package manifest ({describe(e)}); re-export it") from e
        manifest.validate(where)
        return manifest

    def validate(self, where: str = "manifest") -> None:
        """Check that the fields agree with each other (see :meth:`from_dict`)."""
        bad = f"'{where}' is not a valid package manifest"
        _check_rule(self.score, self.temperatures, self.thresholds, self.k, what=bad)
        if self.c < 1:
            raise DyncalError(f"{bad}: C={self.c}")
        if decision_fingerprint(self.score, self.temperatures, self.thresholds) != self.decision_fingerprint:
            raise DyncalError(
                f"{bad}: its score, temperatures and thresholds do not match its decision fingerprint "
                f"{self.decision_fingerprint[:12]} (the manifest was edited); re-export the package"
            )
        if len(self.stages) != self.k:
            raise DyncalError(f"{bad}: {len(self.stages)} stage files for K={self.k} exits")
        if self.stages[-1].carry_batch_dims:
            raise DyncalError(f"{bad}: the last stage hands values on ({list(self.stages[-1].carry_batch_dims)})")
        if any(d is not None and d < 0 for s in self.stages for d in s.carry_batch_dims):
            raise DyncalError(f"{bad}: a negative batch dimension")
        if any(v < 1 for v in self.input_shape):
            raise DyncalError(f"{bad}: input shape {list(self.input_shape)}")
        for name, sha in self.files.items():
            if not _SAFE_NAME.fullmatch(name) or name == MANIFEST:
                raise DyncalError(f"{bad}: file name {name!r} (plain names inside the package only)")
            if not _SHA.fullmatch(sha):
                raise DyncalError(f"{bad}: {name!r} has no SHA-256 ({sha!r})")
        missing = [s.file for s in self.stages if s.file not in self.files]
        if missing:
            raise DyncalError(f"{bad}: no SHA-256 recorded for {missing[0]!r}")
        if not _SHA.fullmatch(self.run_fingerprint):
            raise DyncalError(f"{bad}: run fingerprint {self.run_fingerprint!r}")


def _check_rule(
    score: str,
    temperatures: Sequence[float],
    thresholds: Sequence[float | None],
    k: int,
    *,
    what: str,
) -> None:
    """Refuse an exit rule the runner could not apply as written (one line)."""
    if score not in SCORES:
        raise DyncalError(f"{what}: score must be one of {', '.join(SCORES)}, got {score!r}")
    if k < 2:
        raise DyncalError(f"{what}: an early exit needs K >= 2 exits, got K={k}")
    if len(temperatures) != k or any(not math.isfinite(t) or t <= 0 for t in temperatures):
        raise DyncalError(f"{what}: temperatures must be {k} positive numbers, got {list(temperatures)}")
    if len(thresholds) != k or thresholds[-1] is not None:
        raise DyncalError(f"{what}: thresholds must be {k} values with the last null, got {list(thresholds)}")
    head = thresholds[:-1]
    if any(t is None or not math.isfinite(t) for t in head):
        raise DyncalError(f"{what}: thresholds 1..{k - 1} must be finite numbers, got {list(thresholds)}")


def read_manifest(path: str | os.PathLike[str]) -> PackageManifest:
    """Read and validate the manifest of the package directory ``path``.

    Args:
        path: A package directory written by ``dyncal export``.

    Returns:
        The manifest (files are not checked here; :func:`load_early_exit` does).

    Raises:
        DyncalError: No such directory, no manifest, or an invalid one.
    """
    path = Path(path)
    if path.name.endswith(PARTIAL_SUFFIX):
        raise DyncalError(
            f"'{path}' is an unfinished export (interrupted or still being written); run dyncal export again"
        )
    return _read_manifest(path)[0]


def _read_manifest(path: Path) -> tuple[PackageManifest, bytes]:
    """The manifest of the package at ``path`` and the bytes it was parsed from (read once)."""
    if not path.is_dir():
        raise DyncalError(
            f"no package directory at '{path}'; write one with 'dyncal export RUN --thresholds T --out DIR'"
        )
    file = path / MANIFEST
    if not file.is_file():
        raise DyncalError(f"'{path}' is not a dyncal package (no {MANIFEST})")
    data = _read_bytes(file)
    try:
        doc = json.loads(data.decode("utf-8"))
    except ValueError as e:
        raise DyncalError(f"cannot read '{file}': {describe(e)}; re-export the package") from e
    return PackageManifest.from_dict(doc, where=str(file)), data


# --------------------------------------------------------------------------- the runner


class _StageProgram(nn.Module):
    """A loaded stage that counts its calls and the rows it computed.

    It runs the exported program's graph directly with the program's weights passed in,
    which skips the per-call input checks and pytree handling of
    :meth:`torch.export.ExportedProgram.module` (they cost more than a small stage's
    compute); the runner checks the input once, and what later stages receive comes from
    the earlier ones. Programs with state other than weights, buffers and constants run
    through ``module()``.
    """

    def __init__(self, program: torch.export.ExportedProgram, batch_dims: Sequence[int | None]) -> None:
        from torch.export.graph_signature import InputKind, OutputKind

        super().__init__()
        self._where = next(((i, d) for i, d in enumerate(batch_dims) if d is not None), None)
        self.calls = 0
        self.rows = 0
        sig = program.graph_signature
        slots: list[torch.Tensor | None] = []
        direct = all(o.kind == OutputKind.USER_OUTPUT for o in sig.output_specs)
        for spec in sig.input_specs:
            if spec.kind == InputKind.USER_INPUT:
                slots.append(None)
            elif spec.kind == InputKind.PARAMETER or (spec.kind == InputKind.BUFFER and spec.persistent):
                slots.append(program.state_dict[str(spec.target)])
            elif spec.kind in (InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
                value = program.constants[str(spec.target)]
                direct &= isinstance(value, torch.Tensor)
                slots.append(value if isinstance(value, torch.Tensor) else None)
            else:
                direct = False
        self._slots = slots
        self.graph: nn.Module = program.graph_module if direct else program.module()
        self._direct = direct

    def forward(self, *args: Any) -> Any:
        self.calls += 1
        if self._where is not None:
            i, d = self._where
            self.rows += int(args[i].shape[d])
        if not self._direct:
            return self.graph(*args)
        it = iter(args)
        return self.graph(*[next(it) if t is None else t for t in self._slots])


class PackageRunner(EarlyExitRunner):
    """The early exit of an exported package (:func:`load_early_exit` makes one).

    A drop-in :class:`~dyncal.analysis.early_exit.EarlyExitRunner`: ``runner(x)`` takes a batch
    ``(B, *input_shape)`` and returns ``(exits, predictions)``, int64 ``(B,)`` each on the
    runner's device, exits from 0. Rows that leave are cut from the batch; later stages
    never run once nobody is left.

    Attributes:
        path: The package directory.
        manifest: Its manifest.
        manifest_sha256: SHA-256 of ``manifest.json`` as loaded (pin it to pin the package).
        device: Where the stages run.
    """

    def __init__(
        self,
        path: Path,
        manifest: PackageManifest,
        programs: Sequence[torch.export.ExportedProgram],
        device: torch.device,
        manifest_sha256: str,
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.manifest_sha256 = manifest_sha256
        self._programs = tuple(programs)
        self._dtype = torch_dtype(manifest.input_dtype, f"package '{path}' input dtype")
        self.device = device
        super().__init__(self._stages_on(device), manifest.thresholds, manifest.temperatures, manifest.score)

    def _stages_on(self, device: torch.device) -> Stages:
        from torch.export.passes import move_to_device_pass

        modules = []
        for i, program in enumerate(self._programs):
            ep = program if device.type == "cpu" else move_to_device_pass(program, device)
            dims = (0,) if i == 0 else self.manifest.stages[i - 1].carry_batch_dims
            modules.append(_StageProgram(ep, dims))
        return Stages(
            modules,
            batch_dims=[s.carry_batch_dims for s in self.manifest.stages],
            source="package",
            dynamic_batch=True,
        )

    def to(self, device: torch.device | str) -> PackageRunner:
        """Run the stages on ``device`` (``cpu``, ``cuda``, ``cuda:N``) from now on; returns ``self``."""
        dev = resolve_device(str(device))
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        self.stages = self._stages_on(dev)
        self.device = dev
        return self

    @property
    def stage_rows(self) -> list[int]:
        """Rows each stage has computed since loading (or :meth:`reset_counts`), ``K`` ints.

        With an early exit, stage ``k`` sees only the rows that stayed past exit ``k - 1``.
        """
        return [m.rows for m in self._counters()]

    @property
    def stage_calls(self) -> list[int]:
        """Calls of each stage since loading (or :meth:`reset_counts`), ``K`` ints."""
        return [m.calls for m in self._counters()]

    def reset_counts(self) -> None:
        """Zero :attr:`stage_rows` and :attr:`stage_calls`."""
        for m in self._counters():
            m.rows = m.calls = 0

    def _counters(self) -> list[_StageProgram]:
        return [m for m in self.stages.modules if isinstance(m, _StageProgram)]

    @torch.inference_mode()
    def full_model(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every exit's logits for the whole batch, no sample leaving: the package's plain model.

        Returns:
            ``K`` tensors ``(B, C)``, exit 1 first (what the model returns).
        """
        self._check_input(x)
        return self.stages.run(x)

    def _check_input(self, x: torch.Tensor) -> None:
        """Refuse a batch that does not fit the package's input signature or device (one line)."""
        m = self.manifest
        if not isinstance(x, torch.Tensor):
            raise DyncalError(f"the package takes a tensor (B, {', '.join(map(str, m.input_shape))}), got {type(x)}")
        if tuple(x.shape[1:]) != m.input_shape or x.ndim != len(m.input_shape) + 1:
            raise DyncalError(
                f"input of shape {tuple(x.shape)} but the package takes (B, {', '.join(map(str, m.input_shape))})"
            )
        if x.dtype != self._dtype:
            got = str(x.dtype).replace("torch.", "")
            raise DyncalError(f"input of dtype {got} but the package takes {m.input_dtype}")
        if x.device != self.device:
            raise DyncalError(f"input on {x.device} but the package runs on {self.device}; move it with x.to(...)")

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Early-exit a batch ``x`` ``(B, *input_shape)`` on the runner's device.

        Returns:
            ``(exits, predictions)``, int64 ``(B,)`` each; exits are 0-based.

        Raises:
            DyncalError: ``x`` does not fit the package's input signature or device.
        """
        self._check_input(x)
        if x.shape[0] == 0:
            empty = torch.empty((0,), dtype=torch.int64, device=x.device)
            return empty, empty.clone()
        return super().__call__(x)


def load_early_exit(path: str | os.PathLike[str], *, device: str = "cpu") -> PackageRunner:
    """Load an exported early-exit package; the model's code is not needed.

    Every file's SHA-256 is checked against the manifest, every archive is checked to
    hold no pickled entry before it is loaded, and the thresholds against the decision
    fingerprint.

    Args:
        path: A package directory written by ``dyncal export``.
        device: ``cpu``, ``cuda`` or ``cuda:N`` (:meth:`PackageRunner.to` moves it later).

    Returns:
        The runner: ``exits, preds = runner(x)``.

    Raises:
        DyncalError: Not a package, a changed or missing file, a pickled entry, or a
            manifest that does not hold together.

    Example::

        runner = dyncal.load_early_exit("pkg")
        with torch.inference_mode():
            for x in batches:                     # (B, *runner.manifest.input_shape)
                exits, preds = runner(x)
    """
    path = Path(path)
    if path.name.endswith(PARTIAL_SUFFIX):
        read_manifest(path)  # refuses an unfinished export with its own message
    return _load(path, device)


def _load(path: Path, device: str) -> PackageRunner:
    manifest, manifest_bytes = _read_manifest(path)
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    stage_files = {s.file for s in manifest.stages}
    for name, sha in sorted(manifest.files.items()):
        if name not in stage_files:  # no other files today; hash anything listed
            data = _read_bytes(path / name)
            if hashlib.sha256(data).hexdigest() != sha:
                raise DyncalError(f"package file '{path / name}' does not match its SHA-256 in the manifest")
    programs = [
        load_exported(path / s.file, what=f"package stage {i + 1}", sha256=manifest.files[s.file])
        for i, s in enumerate(manifest.stages)
    ]
    return PackageRunner(path, manifest, programs, dev, hashlib.sha256(manifest_bytes).hexdigest())


def _read_bytes(file: Path) -> bytes:
    try:
        return file.read_bytes()
    except OSError as e:
        raise DyncalError(f"cannot read package file '{file}': {e.strerror or e}; re-export the package") from e


# --------------------------------------------------------------------------- export


@dataclass(frozen=True)
class ExportResult:
    """What ``dyncal export`` wrote.

    Attributes:
        path: The package directory.
        manifest: Its manifest.
        manifest_sha256: SHA-256 of ``manifest.json``.
        size_bytes: Total size of the package's files.
        seconds: Wall-clock time of the export.
    """

    path: Path
    manifest: PackageManifest
    manifest_sha256: str
    size_bytes: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """The ``dyncal export --json`` document: the manifest plus where and how big."""
        return {
            "path": str(self.path),
            "manifest_sha256": self.manifest_sha256,
            "size_bytes": self.size_bytes,
            "seconds": self.seconds,
            **self.manifest.to_dict(),
        }


def _is_package_dir(path: Path) -> bool:
    """Whether ``path`` holds a manifest dyncal wrote (so ``--overwrite`` may replace it)."""
    try:
        doc = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("schema") == PACKAGE_SCHEMA


def _is_partial_export(path: Path) -> bool:
    """Whether ``path`` holds only what an interrupted export writes."""
    return path.is_dir() and all(
        p.name == MANIFEST or re.fullmatch(r"\.?stage_\d+\.pt2(\.tmp-\d+)?|\.manifest\.json\.tmp-\d+", p.name)
        for p in path.iterdir()
    )


def _check_out(out: Path, partial: Path, overwrite: bool) -> None:
    """Refuse an output that exists (unless ``overwrite`` and it is a package), lies in a run, or has no folder."""
    check_out(out, overwrite=overwrite, what="package", is_ours=_is_package_dir, error=DyncalError)
    if partial.exists():
        if not overwrite:
            raise DyncalError(
                f"'{partial}' exists: an earlier export was interrupted or is still running; "
                "pass `overwrite` to discard it"
            )
        if not _is_partial_export(partial):
            raise DyncalError(f"'{partial}' holds files dyncal export did not write; remove it yourself")


def _export_stages(
    stages: Stages, example: torch.Tensor
) -> list[tuple[torch.export.ExportedProgram, tuple[int | None, ...]]]:
    """Each stage as an exported program with a dynamic batch, and the batch dims of what it hands on."""
    from torch.export import Dim

    out = []
    carry: tuple[Any, ...] = (example,)
    dims: tuple[int | None, ...] = (0,)
    for i, module in enumerate(stages.modules):
        for v in carry:
            if not isinstance(v, torch.Tensor):
                raise ProfileError(
                    f"stage {i} hands stage {i + 1} a {type(v).__name__}, not a tensor; a package carries tensors "
                    "only (declare stages with `stages_spec` that pass tensors)"
                )
        batch = Dim("batch", min=1)
        shapes = tuple(None if d is None else {d: batch} for d in dims)
        try:
            with _quiet_export_logs():
                program = torch.export.export(module, carry, dynamic_shapes=shapes, strict=False)
        except Exception as e:  # noqa: BLE001 - export raises many types
            log.debug("exporting stage %d failed", i + 1, exc_info=True)
            raise ProfileError(
                f"cannot export stage {i + 1} with a dynamic batch dimension ({describe(e)}); the package needs "
                "stages that run at any batch size"
            ) from e
        with torch.no_grad():
            outs = module(*carry)
        carry = tuple(outs[1:])
        if i == stages.k - 1:
            next_dims: tuple[int | None, ...] = ()
        elif stages.batch_dims is not None:
            next_dims = stages.batch_dims[i]
        else:  # hand-declared stages carry batch-major tensors
            next_dims = tuple(0 if isinstance(t, torch.Tensor) and t.ndim > 0 else None for t in carry)
        out.append((program, next_dims))
        dims = next_dims
    return out


def _stages_for(
    loaded: LoadedModel, example: torch.Tensor, probe: torch.Tensor, stages_spec: str | None, model_path: str | None
) -> Stages:
    """The model's stages, proven on ``probe`` and able to let rows leave a batch."""
    stages_fn = stages_function(stages_spec, model_path)
    stages, _ = checked_stages(loaded.module, probe, example=example, stages_fn=stages_fn)
    if not stages.dynamic_batch or not stages.can_drop_rows:
        raise ProfileError(
            f"samples cannot leave this model's batch early ({stages.drop_rows_reason}); an early-exit package "
            "needs stages that do: declare them with `stages_spec` or fix the model"
        )
    return stages


def _prove(model: nn.Module, runner: PackageRunner, shape: Sequence[int], dtype: torch.dtype) -> dict[str, Any]:
    """The loaded package reproduces every exit of the model at batch sizes 1 and 4, rows leaving included."""
    diffs = [0.0] * runner.k
    for b in _CHECK_BATCHES:
        x = example_input(shape, dtype, b, seed=1)
        try:
            check = verify_stages(model, runner.stages, x)
        except ProfileError as e:
            raise ProfileError(f"the exported package does not reproduce the model at batch size {b}: {e}") from e
        if not runner.stages.can_drop_rows:
            raise ProfileError(f"the exported package cannot let rows leave a batch: {runner.stages.drop_rows_reason}")
        diffs = [max(a, d) for a, d in zip(diffs, check.max_abs_diff, strict=True)]
    return {"batch_sizes": list(_CHECK_BATCHES), "max_abs_diff": diffs, "rows_can_leave": True}


def _files_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


@dataclass(frozen=True, kw_only=True)
class ExportOptions(ModelOverrides):
    """Which model ``dyncal export`` packages: :class:`~dyncal.options.ModelOverrides` as it is.

    Example:
        >>> ExportOptions(input_shape=[3, 8, 8]).input_shape
        (3, 8, 8)
    """


def export_package(
    run_path: str | os.PathLike[str],
    thresholds: ThresholdsDocument,
    out: str | os.PathLike[str],
    options: ExportOptions | None = None,
    *,
    overwrite: bool = False,
    **fields: Any,
) -> ExportResult:
    """Write a self-contained early-exit package of a run's model with its thresholds.

    The model (from the run's provenance unless overridden) is split into stages, each
    stage is exported with :func:`torch.export.export` and a dynamic batch dimension, and
    the package is built in ``OUT.partial``, loaded back the way users load it, proven to
    reproduce every exit of the model (batch sizes 1 and 4, rows leaving between stages),
    and only then renamed to ``OUT``.

    Args:
        run_path: A complete run with K >= 2 exits.
        thresholds: Solved on this run (:func:`~dyncal.artifacts.thresholds.read_thresholds`).
        out: The package directory to create.
        overwrite: Replace an existing package at ``out`` (never anything else).
        options: Which model to package (:class:`ExportOptions`; default: the run's).
        **fields: The fields of :class:`ExportOptions` as keywords instead of ``options``.

    Returns:
        Where the package is, its manifest and size.

    Raises:
        DyncalError: Thresholds of another run, a static run, an existing ``out``, weights
            that are not the run's, a model whose stages cannot be exported with a dynamic
            batch or cannot drop rows, or a package that does not reproduce the model.

    Example::

        th = dyncal.artifacts.thresholds.read_thresholds("thresholds.json")
        export_package("run", th, "pkg")          # then dyncal.load_early_exit("pkg")
    """
    opts = options_from(ExportOptions, options, fields, "export")
    t0 = time.perf_counter()
    run = load_run(run_path)
    check_thresholds_for_run(thresholds, run)
    if run.k < 2:
        raise DyncalError(
            f"run '{run.path}' has K=1 exit (a static model): there is no early exit to export; compare it with "
            "an early-exit run in 'dyncal report --compare'"
        )
    _check_rule(thresholds.score, thresholds.temperatures, thresholds.thresholds, run.k, what="the thresholds")
    out = Path(out)
    partial = out.with_name(out.name + PARTIAL_SUFFIX)
    _check_out(out, partial, overwrite)
    shape, dtype_name = input_signature(run, opts.input_shape, opts.input_dtype)
    dtype = torch_dtype(dtype_name)
    # the run's model, checked by hash and by re-running recorded rows: a package ships the model it measured
    loaded = load_run_model(
        run,
        model=opts.model,
        weights=opts.weights,
        model_path=opts.model_path,
        device="cpu",
        other_model_allowed=False,  # a package ships the run's model, bound to its weights
    )
    module = loaded.module
    probe = example_input(shape, dtype, 4)
    try:
        with torch.inference_mode():
            outs = module(probe)
    except Exception as e:  # noqa: BLE001 - the user's model may raise anything
        raise ModelError(
            f"the model '{loaded.spec}' fails on an input of shape {tuple(probe.shape)} and dtype {dtype_name} "
            f"({describe(e)}); check `input_shape` and `input_dtype`"
        ) from e
    k, c = check_exit_outputs(outs, probe.shape[0])
    if (k, c) != (run.k, run.c):
        raise DyncalError(
            f"the model '{loaded.spec}' has K={k} exits and C={c} classes but run '{run.path}' has K={run.k}, "
            f"C={run.c}; export the model the run was collected with"
        )
    stages = _stages_for(loaded, example_input(shape, dtype, EXAMPLE_BATCH), probe, opts.stages, loaded.model_path)
    exported = _export_stages(stages, example_input(shape, dtype, EXAMPLE_BATCH))

    from dyncal.profile import state_sha256

    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir()
    try:
        files: dict[str, str] = {}
        stage_docs = []
        for i, (program, carry_dims) in enumerate(exported):
            name = f"stage_{i + 1}.pt2"
            buf = io.BytesIO()
            torch.export.save(program, buf)
            data = buf.getvalue()
            check_exported_archive(data, name)
            atomic_write_bytes(partial / name, data)
            files[name] = hashlib.sha256(data).hexdigest()
            stage_docs.append(PackageStage(file=name, carry_batch_dims=carry_dims))
        th = thresholds.to_dict()
        manifest = PackageManifest(
            k=run.k,
            c=run.c,
            score=thresholds.score,
            temperatures=tuple(float(t) for t in thresholds.temperatures),
            thresholds=tuple(None if t is None else float(t) for t in thresholds.thresholds),
            decision_fingerprint=thresholds.decision_fingerprint,
            input_shape=shape,
            input_dtype=dtype_name,
            stages=tuple(stage_docs),
            files=files,
            run_fingerprint=run.fingerprint,
            run=str(run.path),
            model={
                "spec": loaded.spec,
                "weights_sha256": loaded.weights_sha256,
                "state_sha256": state_sha256(module),
                "stages_source": stages.source,
            },
            solve={
                key: th.get(key)
                for key in (
                    "method",
                    "budget",
                    "calibration_accuracy",
                    "holdout_accuracy",
                    "holdout_ci",
                    "expected_macs",
                    "expected_ms",
                    "exit_shares",
                )
            },
            created=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
            versions=library_versions(),
        )
        manifest.validate()
        atomic_write_text(partial / MANIFEST, json.dumps(manifest.to_dict(), indent=2, allow_nan=False) + "\n")
        manifest = replace(manifest, check=_prove(module, _load(partial, "cpu"), shape, dtype))
        text = json.dumps(manifest.to_dict(), indent=2, allow_nan=False) + "\n"
        atomic_write_text(partial / MANIFEST, text)
        size = _files_size(partial)
        publish_dir(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return ExportResult(
        path=out,
        manifest=manifest,
        manifest_sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        size_bytes=size,
        seconds=time.perf_counter() - t0,
    )
