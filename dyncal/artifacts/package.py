"""The export package's files: its manifest, its signature, and which files in its folder are its own.

A package is a directory that runs the early exit of a run's model with its solved
thresholds, without the model's code (``dyncal export`` writes one,
:func:`dyncal.analysis.package_runner.load_early_exit` serves it)::

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

Hashes catch damage, not a consistent forgery: whoever can rewrite the package can rewrite
its manifest too. A package exported with a key carries an HMAC-SHA256 of its manifest
under that key (:func:`sign_manifest`, :func:`verify_signature`), which only someone holding
the key can forge. HMAC is symmetric: the verifier holds the same secret as the exporter.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dyncal.archives.files import read_regular_file
from dyncal.artifacts import validate as V
from dyncal.artifacts.atomic import temp_target
from dyncal.artifacts.fields import JsonFields
from dyncal.artifacts.ownership import foreign_entry, is_regular_file, json_object, json_schema
from dyncal.artifacts.rundir import PARTIAL_SUFFIX
from dyncal.artifacts.thresholds import TEMPERATURE_RANGE, decision_fingerprint, read_exit_rule
from dyncal.choices import Score
from dyncal.errors import DyncalError, describe, param
from dyncal.inputs import InputSignature

__all__ = [
    "PACKAGE_SCHEMA",
    "PACKAGE_VERSION",
    "MANIFEST",
    "SIGNATURE",
    "MIN_KEY_BYTES",
    "PackageStage",
    "PackageManifest",
    "read_manifest",
]

PACKAGE_SCHEMA = "dyncal.package"
PACKAGE_VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE = "signature.json"
SIGNATURE_SCHEMA = "dyncal.package-signature"
SIGNATURE_ALGORITHM = "hmac-sha256"
MIN_KEY_BYTES = 32
"""Shortest signing key accepted (after surrounding whitespace is stripped from the key file)."""

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_MANIFEST_LIMIT = 16 * 2**20
_KEY_LIMIT = 64 * 2**10
_MAC_DOMAIN = b"dyncal.package-signature v1\n"
MAX_INPUT_DIM = 1 << 31
"""Largest size of one input dimension a manifest may declare."""


@dataclass(frozen=True)
class PackageStage(JsonFields):
    """One stage file of a package.

    Attributes:
        file: The ``.pt2`` file name inside the package.
        carry_batch_dims: Batch dimension of each value the stage hands to the next one
            (None: a value without one); empty for the last stage.
    """

    file: str
    carry_batch_dims: tuple[int | None, ...]


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
        inputs: For a model of several inputs, their signature (``manifest.json``'s
            ``inputs``; ``input`` then describes the first): the runner takes them as the
            model does and checks each. None for a model of one tensor.
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
    inputs: InputSignature | None = None

    def to_dict(self) -> dict[str, Any]:
        """The ``manifest.json`` document."""
        several = {} if self.inputs is None else {"inputs": self.inputs.to_dict()}
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
            **several,
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
            version = V.required(d, "schema_version", V.integer, minimum=1)
            k = V.required(d, "k", V.integer, minimum=2)
            inp = V.required(d, "input", V.mapping)
            stages = tuple(
                PackageStage(
                    file=V.required(V.mapping(s, f"stages[{i}]"), "file", V.string, f"stages[{i}]."),
                    carry_batch_dims=tuple(
                        V.optional(v, V.integer, f"stages[{i}].carry_batch_dims[{j}]", minimum=0)
                        for j, v in enumerate(V.required(s, "carry_batch_dims", V.sequence, f"stages[{i}]."))
                    ),
                )
                for i, s in enumerate(V.required(d, "stages", V.sequence, length=k))
            )
            manifest = cls(
                k=k,
                c=V.required(d, "c", V.integer, minimum=2),
                **read_exit_rule(d, k),
                decision_fingerprint=V.required(d, "decision_fingerprint", V.string),
                input_shape=V.required(inp, "shape", V.integer_list, "input.", minimum=1, maximum=MAX_INPUT_DIM),
                input_dtype=V.required(inp, "dtype", V.string, "input."),
                stages=stages,
                files={
                    str(name): V.sha256(sha, f"files.{name}") for name, sha in V.required(d, "files", V.mapping).items()
                },
                run_fingerprint=V.required(d, "run_fingerprint", V.sha256),
                run=V.string(d.get("run", ""), "run"),
                model=dict(V.mapping(d.get("model") or {}, "model")),
                solve=dict(V.mapping(d.get("solve") or {}, "solve")),
                check=dict(V.mapping(d.get("check") or {}, "check")),
                created=V.string(d.get("created", ""), "created"),
                versions=V.string_map(d.get("versions") or {}, "versions"),
                schema_version=version,
                inputs=None if d.get("inputs") is None else _signature(d["inputs"]),
            )
        except V.FieldError as e:
            raise DyncalError(f"'{where}' is not a valid package manifest: {e}; re-export the package") from None
        manifest.validate(where)
        return manifest

    def validate(self, where: str = "manifest") -> None:
        """Check that the fields agree with each other.

        Each field's own type and range are checked where it enters: :meth:`from_dict` for a
        manifest read, and ``dyncal export`` (:func:`check_exit_rule`) for one it builds, which
        it reads back through :meth:`from_dict` before the package is published.
        """
        bad = f"'{where}' is not a valid package manifest"
        if decision_fingerprint(self.score, self.temperatures, self.thresholds) != self.decision_fingerprint:
            raise DyncalError(
                f"{bad}: its score, temperatures and thresholds do not match its decision fingerprint "
                f"{self.decision_fingerprint[:12]} (the manifest was edited); re-export the package"
            )
        if self.stages[-1].carry_batch_dims:
            raise DyncalError(f"{bad}: the last stage hands values on ({list(self.stages[-1].carry_batch_dims)})")
        for name in self.files:
            if not _SAFE_NAME.fullmatch(name) or name in (MANIFEST, SIGNATURE):
                raise DyncalError(f"{bad}: file name {name!r} (plain names inside the package only)")
        missing = [s.file for s in self.stages if s.file not in self.files]
        if missing:
            raise DyncalError(f"{bad}: no SHA-256 recorded for {missing[0]!r}")


def check_exit_rule(
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
    if any(t is None or not math.isfinite(t) for t in thresholds[:-1]):
        raise DyncalError(f"{what}: thresholds 1..{k - 1} must be finite numbers, got {list(thresholds)}")


def read_manifest(path: str | os.PathLike[str]) -> PackageManifest:
    """Read and validate the manifest of the package directory ``path``.

    Args:
        path: A package directory written by ``dyncal export``.

    Returns:
        The manifest (files are not checked here;
        :func:`~dyncal.analysis.package_runner.load_early_exit` does).

    Raises:
        DyncalError: No such directory, no manifest, or an invalid one.
    """
    path = Path(path)
    if path.name.endswith(PARTIAL_SUFFIX):
        raise DyncalError(
            f"'{path}' is an unfinished export (interrupted or still being written); run dyncal export again"
        )
    return parse_manifest(manifest_bytes(path), path / MANIFEST)


def manifest_bytes(path: Path) -> bytes:
    """The bytes of ``path/manifest.json`` (a regular file), unparsed."""
    if not path.is_dir():
        raise DyncalError(
            f"no package directory at '{path}'; write one with 'dyncal export RUN --thresholds T --out DIR'"
        )
    file = path / MANIFEST
    if not os.path.lexists(file):
        raise DyncalError(f"'{path}' is not a dyncal package (no {MANIFEST})")
    return read_package_file(file, _MANIFEST_LIMIT)


def parse_manifest(data: bytes, file: Path) -> PackageManifest:
    """The manifest in ``data``, the bytes of ``file``; refused in one line when it is not a valid one."""
    try:
        doc = V.parse_json_document(data, where=str(file), what="a dyncal package manifest")
    except DyncalError as e:
        raise DyncalError(f"{e}; re-export the package") from None
    return PackageManifest.from_dict(doc, where=str(file))


# --------------------------------------------------------------------------- signatures


def read_key(key: str | os.PathLike[str] | bytes, name: str) -> bytes:
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


def key_id(secret: bytes) -> str:
    """A short name of a key that reveals nothing of it (to tell keys apart in messages)."""
    return hmac.new(secret, b"dyncal.package-key-id", hashlib.sha256).hexdigest()[:16]


def sign_manifest(secret: bytes, manifest: bytes) -> dict[str, Any]:
    """``signature.json``: the HMAC-SHA256 of the manifest's exact bytes under ``secret``."""
    return {
        "schema": SIGNATURE_SCHEMA,
        "schema_version": 1,
        "algorithm": SIGNATURE_ALGORITHM,
        "key_id": key_id(secret),
        "manifest_sha256": hashlib.sha256(manifest).hexdigest(),
        "mac": hmac.new(secret, _MAC_DOMAIN + manifest, hashlib.sha256).hexdigest(),
    }


def verify_signature(path: Path, manifest: bytes, secret: bytes) -> str:
    """Check ``path``'s signature of the manifest bytes under ``secret``; returns the key id."""
    file = path / SIGNATURE
    if not os.path.lexists(file):
        raise DyncalError(
            f"package '{path}' is not signed (no {SIGNATURE}) but `verify_key` was given; export it with "
            "`sign_key`, or load it without `verify_key` if you trust where it came from"
        )
    try:
        doc = json.loads(read_package_file(file, _KEY_LIMIT).decode("utf-8"))
        fields = (doc["schema"], doc["algorithm"], str(doc["key_id"]), str(doc["mac"]))
    except (ValueError, TypeError, KeyError, RecursionError) as e:
        raise DyncalError(
            f"package '{path}': {SIGNATURE} is not a signature ({describe(e)}); re-export the package"
        ) from e
    schema, algorithm, signed_by, mac = fields
    if schema != SIGNATURE_SCHEMA or algorithm != SIGNATURE_ALGORITHM:
        raise DyncalError(
            f"package '{path}': {SIGNATURE} is not a {SIGNATURE_ALGORITHM} package signature; re-export the package"
        )
    expected = sign_manifest(secret, manifest)
    if not hmac.compare_digest(mac, expected["mac"]):
        why = (
            f"it was signed with another key (key id {signed_by[:16]}, `verify_key` is {expected['key_id']})"
            if not hmac.compare_digest(signed_by, expected["key_id"])
            else "the manifest was changed after it was signed"
        )
        raise DyncalError(f"the signature of package '{path}' does not verify: {why}; do not load it")
    return str(expected["key_id"])


def read_package_file(file: Path, limit: int) -> bytes:
    """A package file's bytes: a regular file of at most ``limit`` bytes (pipes and devices refused unread)."""
    return read_regular_file(file, what="package file", limit=limit, advice="re-export the package")


# --------------------------------------------------------------------------- the package folder

_STAGE_FILE = re.compile(r"stage_\d+\.pt2")
_OWN_JSON = {MANIFEST: PACKAGE_SCHEMA, SIGNATURE: SIGNATURE_SCHEMA}  # its JSON files, recognised by their schema


def is_package_dir(path: Path) -> bool:
    """Whether ``path`` holds a manifest dyncal wrote (so ``--overwrite`` may replace it)."""
    return json_schema(path / MANIFEST) == PACKAGE_SCHEMA


def _is_own_json(entry: Path) -> bool:
    """Whether ``entry`` is the package's manifest, or its signature (``--sign-key``) that the manifest cannot list."""
    return entry.name in _OWN_JSON and json_schema(entry) == _OWN_JSON[entry.name]


def _listed_files(path: Path) -> frozenset[str]:
    """The plain file names the manifest of the package ``path`` lists (none if it has no readable manifest)."""
    manifest = json_object(path / MANIFEST) or {}
    files = manifest.get("files") if manifest.get("schema") == PACKAGE_SCHEMA else None
    if not isinstance(files, dict):
        return frozenset()
    names = (name for name in files if isinstance(name, str) and name != MANIFEST)
    return frozenset(name for name in names if _SAFE_NAME.fullmatch(name))


def foreign_in_package(path: Path) -> Path | None:
    """The first entry of a package dyncal did not write there: not its manifest, a file it lists, or a signature."""
    listed = _listed_files(path)

    def check(entry: Path) -> Path | None:
        return None if _is_own_json(entry) or (entry.name in listed and is_regular_file(entry)) else entry

    return foreign_entry(path, check)


def partial_export_entry(entry: Path) -> Path | None:
    """None if ``entry`` is one an export writes in ``OUT.partial`` (stages, manifest, their temporary files)."""
    target = temp_target(entry.name)
    written = _STAGE_FILE.fullmatch(entry.name) or target in _OWN_JSON or _STAGE_FILE.fullmatch(target or "")
    return None if _is_own_json(entry) or (written and is_regular_file(entry)) else entry


def _signature(raw: Any) -> InputSignature:
    """The manifest's ``inputs``; a malformed one is a :class:`~dyncal.artifacts.validate.FieldError` on ``inputs``."""
    try:
        return InputSignature.from_dict(raw)
    except DyncalError as e:
        raise V.FieldError("inputs", str(e)) from None
