"""Early-exit packages: ``dyncal export`` writes one, :func:`load_early_exit` serves it.

A package is a directory that runs the early exit of a run's model with its solved
thresholds, without the model's code::

    DIR/
      manifest.json     schema "dyncal.package", version 1 (see PackageManifest)
      stage_1.pt2       stage 1 as a torch.export archive, batch dimension dynamic
      ...
      stage_K.pt2
      signature.json    only when exported with a key: HMAC-SHA256 of manifest.json

The stages follow the protocol of :mod:`dyncal.analysis.stages` (``stage_1(x) -> (logits_1,
*carry_1)``, ``stage_k(*carry_{k-1}) -> (logits_k, *carry_k)``); the manifest records the
batch dimension of every carried tensor, so rows that leave are cut from what the next
stage receives, and the exit rule: score, temperatures and thresholds with their
:func:`~dyncal.artifacts.thresholds.decision_fingerprint`. It binds the package to the run
(its fingerprint) and the model (spec, weights and state SHA-256) and lists the SHA-256 of
every other file.

Loading is checked: every file's hash must match the manifest, every archive is parsed and
checked before torch reads it (:mod:`dyncal.archives`, through
:func:`dyncal.models.load_exported`), and the thresholds must match the decision
fingerprint. Hashes catch damage, not a consistent forgery: whoever can rewrite the package
can rewrite its manifest too. A package exported with ``sign_key`` carries an HMAC-SHA256
of its manifest under that key; ``load_early_exit(DIR, verify_key=KEY)`` refuses it unless
the signature verifies (and refuses an unsigned package), which only someone holding the
key can forge. HMAC is symmetric: the verifier holds the same secret as the exporter.

The runner is an :class:`~dyncal.analysis.early_exit.EarlyExitRunner` over the loaded
stages, so its decisions are the same code path ``dyncal verify`` measures::

    runner = dyncal.load_early_exit("pkg")               # or device="cuda"
    exits, preds = runner(x)                             # int64 (B,) each, exits from 0
"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import hmac
import io
import json
import logging
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dyncal import archives
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
from dyncal.archives.files import read_regular_file
from dyncal.artifacts import validate as V
from dyncal.artifacts.atomic import atomic_write_bytes, atomic_write_text, temp_target
from dyncal.artifacts.lock import OutputLock
from dyncal.artifacts.outputs import check_out
from dyncal.artifacts.ownership import (
    discard_built_folder,
    foreign_entry,
    is_regular_file,
    json_schema,
    refuse_foreign,
    remove_owned_folder,
)
from dyncal.artifacts.run import Run, load_run
from dyncal.artifacts.run_document import library_versions
from dyncal.artifacts.run_writer import publish_dir
from dyncal.artifacts.thresholds import (
    TEMPERATURE_RANGE,
    ThresholdsDocument,
    check_thresholds_for_run,
    decision_fingerprint,
)
from dyncal.choices import Score
from dyncal.errors import DyncalError, ModelError, ProfileError, describe, param
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
    "MIN_KEY_BYTES",
]

log = logging.getLogger(__name__)

PACKAGE_SCHEMA = "dyncal.package"
PACKAGE_VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE = "signature.json"
SIGNATURE_SCHEMA = "dyncal.package-signature"
SIGNATURE_ALGORITHM = "hmac-sha256"
MIN_KEY_BYTES = 32
"""Shortest signing key accepted (after surrounding whitespace is stripped from the key file)."""
PARTIAL_SUFFIX = ".partial"

_CHECK_BATCHES = (1, 4)  # the written package is proven against the model at these batch sizes
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_SHA = re.compile(r"[0-9a-f]{64}")
_MANIFEST_LIMIT = 16 * 2**20
_KEY_LIMIT = 64 * 2**10
_MAC_DOMAIN = b"dyncal.package-signature v1\n"
MAX_INPUT_DIM = 1 << 31
"""Largest size of one input dimension a manifest may declare."""


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
        if isinstance(version, int) and not isinstance(version, bool) and version > PACKAGE_VERSION:
            raise DyncalError(
                f"'{where}' has package schema version {version!r}; this dyncal reads up to {PACKAGE_VERSION}: "
                "upgrade dyncal"
            )
        try:
            version = V.integer(V.require(d, "schema_version"), "schema_version", minimum=1)
            k = V.integer(V.require(d, "k"), "k", minimum=2)
            inp = V.mapping(V.require(d, "input"), "input")
            raw = V.sequence(V.require(d, "thresholds"), "thresholds", length=k)
            if raw[-1] is not None:
                raise V.FieldError(f"thresholds[{k - 1}]", f"(the last exit's) must be null, got {V.show(raw[-1])}")
            stages = tuple(
                PackageStage(
                    file=V.string(
                        V.require(V.mapping(s, f"stages[{i}]"), "file", f"stages[{i}]."), f"stages[{i}].file"
                    ),
                    carry_batch_dims=tuple(
                        None if v is None else V.integer(v, f"stages[{i}].carry_batch_dims[{j}]", minimum=0)
                        for j, v in enumerate(
                            V.sequence(
                                V.require(s, "carry_batch_dims", f"stages[{i}]."), f"stages[{i}].carry_batch_dims"
                            )
                        )
                    ),
                )
                for i, s in enumerate(V.sequence(V.require(d, "stages"), "stages", length=k))
            )
            manifest = cls(
                k=k,
                c=V.integer(V.require(d, "c"), "c", minimum=2),
                score=V.string(V.require(d, "score"), "score", choices=tuple(Score)),
                temperatures=V.number_list(
                    V.require(d, "temperatures"),
                    "temperatures",
                    length=k,
                    positive=True,
                    minimum=TEMPERATURE_RANGE[0],
                    maximum=TEMPERATURE_RANGE[1],
                ),
                thresholds=(*(V.number(t, f"thresholds[{i}]") for i, t in enumerate(raw[:-1])), None),
                decision_fingerprint=V.string(V.require(d, "decision_fingerprint"), "decision_fingerprint"),
                input_shape=tuple(
                    V.integer(v, f"input.shape[{i}]", minimum=1, maximum=MAX_INPUT_DIM)
                    for i, v in enumerate(V.sequence(V.require(inp, "shape", "input."), "input.shape"))
                ),
                input_dtype=V.string(V.require(inp, "dtype", "input."), "input.dtype"),
                stages=stages,
                files={
                    str(name): V.string(sha, f"files.{name}")
                    for name, sha in V.mapping(V.require(d, "files"), "files").items()
                },
                run_fingerprint=V.string(V.require(d, "run_fingerprint"), "run_fingerprint"),
                run=V.string(d.get("run", ""), "run"),
                model=dict(V.mapping(d.get("model") or {}, "model")),
                solve=dict(V.mapping(d.get("solve") or {}, "solve")),
                check=dict(V.mapping(d.get("check") or {}, "check")),
                created=V.string(d.get("created", ""), "created"),
                versions=V.string_map(d.get("versions") or {}, "versions"),
                schema_version=version,
            )
        except V.FieldError as e:
            raise DyncalError(f"'{where}' is not a valid package manifest: {e}; re-export the package") from None
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
            if not _SAFE_NAME.fullmatch(name) or name in (MANIFEST, SIGNATURE):
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
    if score not in tuple(Score):
        raise DyncalError(f"{what}: score must be one of {', '.join(Score)}, got {score!r}")
    if k < 2:
        raise DyncalError(f"{what}: an early exit needs K >= 2 exits, got K={k}")
    low, high = TEMPERATURE_RANGE
    if len(temperatures) != k or any(not (math.isfinite(t) and low <= t <= high) for t in temperatures):
        raise DyncalError(f"{what}: temperatures must be {k} numbers in [{low:g}, {high:g}], got {list(temperatures)}")
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
    data = _manifest_bytes(path)
    return _parse_manifest(data, path / MANIFEST), data


def _manifest_bytes(path: Path) -> bytes:
    """The bytes of ``path/manifest.json`` (a regular file), unparsed."""
    if not path.is_dir():
        raise DyncalError(
            f"no package directory at '{path}'; write one with 'dyncal export RUN --thresholds T --out DIR'"
        )
    file = path / MANIFEST
    if not os.path.lexists(file):
        raise DyncalError(f"'{path}' is not a dyncal package (no {MANIFEST})")
    return _read_bytes(file, _MANIFEST_LIMIT)


def _parse_manifest(data: bytes, file: Path) -> PackageManifest:
    try:
        doc = V.parse_json_document(data, where=str(file), what="a dyncal package manifest")
    except DyncalError as e:
        raise DyncalError(f"{e}; re-export the package") from None
    return PackageManifest.from_dict(doc, where=str(file))


# --------------------------------------------------------------------------- signatures


def _read_key(key: str | os.PathLike[str] | bytes, name: str) -> bytes:
    """The secret in a key file (surrounding whitespace stripped), or ``key`` itself when given as bytes."""
    if isinstance(key, (bytes, bytearray)):
        secret = bytes(key)
        where = "the key given"
    else:
        where = f"key file '{os.fspath(key)}'"
        secret = read_regular_file(key, what=param(name), limit=_KEY_LIMIT, advice="give the key file itself").strip()
    if len(secret) < MIN_KEY_BYTES:
        raise DyncalError(
            f"{param(name)}: {where} holds {len(secret)} bytes; a signing key needs at least {MIN_KEY_BYTES} "
            "(make one with: python -c 'import secrets; print(secrets.token_hex(32))' > KEYFILE)"
        )
    return secret


def _key_id(secret: bytes) -> str:
    """A short name of a key that reveals nothing of it (to tell keys apart in messages)."""
    return hmac.new(secret, b"dyncal.package-key-id", hashlib.sha256).hexdigest()[:16]


def _signature(secret: bytes, manifest: bytes) -> dict[str, Any]:
    """``signature.json``: the HMAC-SHA256 of the manifest's exact bytes under ``secret``."""
    return {
        "schema": SIGNATURE_SCHEMA,
        "schema_version": 1,
        "algorithm": SIGNATURE_ALGORITHM,
        "key_id": _key_id(secret),
        "manifest_sha256": hashlib.sha256(manifest).hexdigest(),
        "mac": hmac.new(secret, _MAC_DOMAIN + manifest, hashlib.sha256).hexdigest(),
    }


def _verify_signature(path: Path, manifest: bytes, secret: bytes) -> str:
    """Check ``path``'s signature of the manifest bytes under ``secret``; returns the key id."""
    file = path / SIGNATURE
    if not os.path.lexists(file):
        raise DyncalError(
            f"package '{path}' is not signed (no {SIGNATURE}) but `verify_key` was given; export it with "
            "`sign_key`, or load it without `verify_key` if you trust where it came from"
        )
    try:
        doc = json.loads(_read_bytes(file, _KEY_LIMIT).decode("utf-8"))
        fields = (doc["schema"], doc["algorithm"], str(doc["key_id"]), str(doc["mac"]))
    except (ValueError, TypeError, KeyError, RecursionError) as e:
        raise DyncalError(
            f"package '{path}': {SIGNATURE} is not a signature ({describe(e)}); re-export the package"
        ) from e
    schema, algorithm, key_id, mac = fields
    if schema != SIGNATURE_SCHEMA or algorithm != SIGNATURE_ALGORITHM:
        raise DyncalError(
            f"package '{path}': {SIGNATURE} is not a {SIGNATURE_ALGORITHM} package signature; re-export the package"
        )
    expected = _signature(secret, manifest)
    if not hmac.compare_digest(mac, expected["mac"]):
        why = (
            f"it was signed with another key (key id {key_id[:16]}, `verify_key` is {expected['key_id']})"
            if not hmac.compare_digest(key_id, expected["key_id"])
            else "the manifest was changed after it was signed"
        )
        raise DyncalError(f"the signature of package '{path}' does not verify: {why}; do not load it")
    return str(expected["key_id"])


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
        key_id: Id of the key whose signature was verified when loading, or None (no ``verify_key``).
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
        self.key_id: str | None = None
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


def load_early_exit(
    path: str | os.PathLike[str],
    *,
    device: str = "cpu",
    verify_key: str | os.PathLike[str] | bytes | None = None,
) -> PackageRunner:
    """Load an exported early-exit package; the model's code is not needed.

    With ``verify_key``, the package's signature (``dyncal export --sign-key``) is checked
    against the manifest's bytes before anything else is read: a package that is unsigned,
    signed with another key, or whose manifest changed since is refused. Then every file's
    SHA-256 is checked against the manifest, every archive is parsed and checked before torch
    reads it (:mod:`dyncal.archives`), and the thresholds against the decision fingerprint.
    Without a key the hashes catch damage but not a consistent forgery: anyone who can
    rewrite the package can rewrite its manifest too.

    Args:
        path: A package directory written by ``dyncal export``.
        device: ``cpu``, ``cuda`` or ``cuda:N`` (:meth:`PackageRunner.to` moves it later).
        verify_key: The key file the package was signed with (or the key itself as bytes).

    Returns:
        The runner: ``exits, preds = runner(x)``.

    Raises:
        DyncalError: Not a package, a signature that does not verify, a changed or missing
            file, an archive that is refused, or a manifest that does not hold together.

    Example::

        runner = dyncal.load_early_exit("pkg", verify_key="package.key")
        with torch.inference_mode():
            for x in batches:                     # (B, *runner.manifest.input_shape)
                exits, preds = runner(x)
    """
    path = Path(path)
    if path.name.endswith(PARTIAL_SUFFIX):
        read_manifest(path)  # refuses an unfinished export with its own message
    secret = None if verify_key is None else _read_key(verify_key, "verify_key")
    return _load(path, device, secret)


def _load(path: Path, device: str, secret: bytes | None = None) -> PackageRunner:
    manifest_bytes = _manifest_bytes(path)
    key_id = None if secret is None else _verify_signature(path, manifest_bytes, secret)
    manifest = _parse_manifest(manifest_bytes, path / MANIFEST)
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    stage_files = {s.file for s in manifest.stages}
    for name, sha in sorted(manifest.files.items()):
        if name not in stage_files:  # no other files today; hash anything listed
            data = _read_bytes(path / name, archives.ARCHIVE_LIMIT_BYTES)
            if hashlib.sha256(data).hexdigest() != sha:
                raise DyncalError(f"package file '{path / name}' does not match its SHA-256 in the manifest")
    programs = [
        load_exported(
            path / s.file, what=f"package stage {i + 1}", sha256=manifest.files[s.file], advice="re-export the package"
        )
        for i, s in enumerate(manifest.stages)
    ]
    runner = PackageRunner(path, manifest, programs, dev, hashlib.sha256(manifest_bytes).hexdigest())
    runner.key_id = key_id
    return runner


def _read_bytes(file: Path, limit: int) -> bytes:
    """A package file's bytes: a regular file of at most ``limit`` bytes (pipes and devices refused unread)."""
    return read_regular_file(file, what="package file", limit=limit, advice="re-export the package")


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
        key_id: Id of the key that signed it (``sign_key``), or None when unsigned.
    """

    path: Path
    manifest: PackageManifest
    manifest_sha256: str
    size_bytes: int
    seconds: float
    key_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The ``dyncal export --json`` document: the manifest plus where, how big and how signed."""
        signature = None if self.key_id is None else {"algorithm": SIGNATURE_ALGORITHM, "key_id": self.key_id}
        return {
            "path": str(self.path),
            "manifest_sha256": self.manifest_sha256,
            "size_bytes": self.size_bytes,
            "seconds": self.seconds,
            "signature": signature,
            **self.manifest.to_dict(),
        }


_STAGE_FILE = re.compile(r"stage_\d+\.pt2")


def _is_package_dir(path: Path) -> bool:
    """Whether ``path`` holds a manifest dyncal wrote (so ``--overwrite`` may replace it)."""
    return json_schema(path / MANIFEST) == PACKAGE_SCHEMA


def _is_signature(entry: Path) -> bool:
    """Whether ``entry`` is the package's signature (``--sign-key``), which the manifest cannot list."""
    return entry.name == SIGNATURE and json_schema(entry) == SIGNATURE_SCHEMA


def _listed_files(path: Path) -> frozenset[str]:
    """The plain file names the manifest of the package ``path`` lists (none if it has no readable manifest)."""
    if json_schema(path / MANIFEST) != PACKAGE_SCHEMA:
        return frozenset()
    try:
        files = json.loads((path / MANIFEST).read_bytes()).get("files")
    except (OSError, ValueError, RecursionError):
        return frozenset()
    if not isinstance(files, dict):
        return frozenset()
    names = (name for name in files if isinstance(name, str) and name != MANIFEST)
    return frozenset(name for name in names if _SAFE_NAME.fullmatch(name))


def _foreign_in_package(path: Path) -> Path | None:
    """The first entry of a package dyncal did not write there: not its manifest, a file it lists, or a signature."""
    listed = _listed_files(path)

    def check(entry: Path) -> Path | None:
        if entry.name == MANIFEST and json_schema(entry) == PACKAGE_SCHEMA:
            return None
        if entry.name in listed and is_regular_file(entry):
            return None
        return None if _is_signature(entry) else entry

    return foreign_entry(path, check)


def _partial_export_entry(entry: Path) -> Path | None:
    """None if ``entry`` is one an export writes in ``OUT.partial`` (stages, manifest, their temporary files)."""
    name = entry.name
    if name == MANIFEST and json_schema(entry) == PACKAGE_SCHEMA:
        return None
    if _STAGE_FILE.fullmatch(name) and is_regular_file(entry):
        return None
    target = temp_target(name)
    if (
        target is not None
        and (target in (MANIFEST, SIGNATURE) or _STAGE_FILE.fullmatch(target))
        and is_regular_file(entry)
    ):
        return None
    return None if _is_signature(entry) else entry


def _check_out(out: Path, partial: Path, overwrite: bool) -> None:
    """Refuse an output that exists (unless ``overwrite`` and all a package's), lies in a run, or has no folder."""
    check_out(
        out,
        overwrite=overwrite,
        what="package",
        is_ours=_is_package_dir,
        foreign=_foreign_in_package,
        error=DyncalError,
    )
    if os.path.lexists(partial):
        refuse_foreign(partial, _partial_export_entry, action="remove", error=DyncalError)
        if not overwrite:
            raise DyncalError(
                f"'{partial}' exists: an earlier export was interrupted or is still running; "
                "pass `overwrite` to discard it"
            )


def _write_error(out: Path, e: OSError) -> DyncalError:
    """One line for a package that could not be written (a full disk, a file too large, no permission)."""
    full = e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    advice = "free some space or choose another `out`" if full else "choose another `out`"
    return DyncalError(f"cannot write the package '{out}' ({e.strerror or e}); nothing was published: {advice}")


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
    """Which model ``dyncal export`` packages (:class:`~dyncal.options.ModelOverrides`), and how it is signed.

    Attributes:
        sign_key: A key file (at least :data:`MIN_KEY_BYTES` bytes, e.g. 64 hex digits) to
            sign the package with: ``signature.json`` holds an HMAC-SHA256 of the manifest,
            checked by ``load_early_exit(DIR, verify_key=...)``. None: unsigned.

    Example:
        >>> ExportOptions(input_shape=[3, 8, 8]).input_shape
        (3, 8, 8)
    """

    sign_key: str | None = None


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
        options: Which model to package and the key to sign it with (:class:`ExportOptions`;
            default: the run's model, unsigned).
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
    partial = out.parent / (out.name + PARTIAL_SUFFIX)  # `out` itself is checked by _check_out
    _check_out(out, partial, overwrite)  # before the lock file is made: never inside a run
    secret = None if opts.sign_key is None else _read_key(opts.sign_key, "sign_key")
    with OutputLock(out, error=DyncalError):
        _check_out(out, partial, overwrite)  # again, now that no other export can change it
        return _write_package(run, thresholds, opts, out, partial, t0, secret)


def _write_package(
    run: Run,
    thresholds: ThresholdsDocument,
    opts: ExportOptions,
    out: Path,
    partial: Path,
    t0: float,
    secret: bytes | None,
) -> ExportResult:
    """Export the model's stages, build the package in ``partial``, prove it and publish it as ``out``."""
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

    try:
        if os.path.lexists(partial):  # an interrupted export's, checked under the lock
            remove_owned_folder(partial, _partial_export_entry, action="remove", error=DyncalError)
        partial.mkdir()
    except OSError as e:
        raise _write_error(out, e) from e
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
        if secret is not None:  # signed inside the partial folder: published with the package or not at all
            atomic_write_text(
                partial / SIGNATURE, json.dumps(_signature(secret, text.encode("utf-8")), indent=2) + "\n"
            )
        size = _files_size(partial)
        publish_dir(partial, out, foreign=_foreign_in_package, error=DyncalError)
    except BaseException as e:
        discard_built_folder(partial, _partial_export_entry)
        if isinstance(e, OSError):
            raise _write_error(out, e) from e
        raise
    return ExportResult(
        path=out,
        manifest=manifest,
        manifest_sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        size_bytes=size,
        seconds=time.perf_counter() - t0,
        key_id=None if secret is None else _key_id(secret),
    )
