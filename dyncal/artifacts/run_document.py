"""``run.json``: a run's shape, provenance, fingerprint and cost table; the only reader and writer of that file."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dyncal.artifacts import validate as V
from dyncal.artifacts.atomic import atomic_write_text
from dyncal.artifacts.costs import CostTable, UnmeasuredProfileError
from dyncal.artifacts.rundir import DAMAGED, INDICES_FILE, LABELS_FILE, LOGITS_FILE, MAX_RUN_JSON_BYTES, RUN_JSON
from dyncal.errors import DyncalError, RunError

__all__ = ["SCHEMA_VERSION", "Provenance", "library_versions", "RunDocument"]

SCHEMA_VERSION = 1

_PROVENANCE_KEYS = frozenset(
    {"model", "weights_sha256", "data", "command", "created", "device", "versions", "extra", "other"}
)


@dataclass(frozen=True)
class Provenance:
    """Where a run came from: enough to reproduce or audit it.

    Attributes:
        model: Model spec as given (``pkg.module:factory`` or a ``.pt2`` path), or a
            description for imported runs.
        weights_sha256: SHA-256 of the weights file, or None.
        data: Data spec as given.
        command: The command line that made the run.
        created: ISO-8601 UTC time the run was finished.
        device: Device the logits were computed on (``"cpu"``, ``"cuda:0"``, ...).
        versions: Library versions (``dyncal``, ``torch``, ``numpy``, ...).
        extra: Free-form details (world size, batch size, limit, ...).
        other: Keys a later dyncal added, as they were read (written back unchanged).
    """

    model: str
    weights_sha256: str | None
    data: str
    command: str
    created: str
    device: str
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    other: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        doc = dataclasses.asdict(self)
        other = doc.pop("other")
        return {**doc, **{key: value for key, value in other.items() if key not in doc}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], field: str = "provenance") -> Provenance:
        """Build from :meth:`to_dict` output; missing text fields read as empty.

        Raises:
            FieldError: A field of the wrong type (named ``provenance.<key>``).
        """
        d = V.mapping(d, field)

        def text(key: str) -> str:
            return V.string(d.get(key, ""), f"{field}.{key}")

        return cls(
            model=text("model"),
            weights_sha256=V.optional(d.get("weights_sha256"), V.string, f"{field}.weights_sha256"),
            data=text("data"),
            command=text("command"),
            created=text("created"),
            device=text("device"),
            versions=V.string_map(d.get("versions", {}), f"{field}.versions"),
            extra=dict(V.mapping(d.get("extra", {}), f"{field}.extra")),
            other={key: value for key, value in d.items() if key not in _PROVENANCE_KEYS},
        )

    @classmethod
    def here(
        cls,
        *,
        model: str,
        data: str,
        device: str,
        weights_sha256: str | None = None,
        extra: Mapping[str, Any] | None = None,
        command: str | None = None,
    ) -> Provenance:
        """Provenance stamped with the command line (default: ``sys.argv``), time and versions."""
        if command is None:
            command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else ""
        return cls(
            model=model,
            weights_sha256=weights_sha256,
            data=data,
            command=command,
            created=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
            device=device,
            versions=library_versions(),
            extra=dict(extra or {}),
        )


def library_versions() -> dict[str, str]:
    """Versions of dyncal and the libraries whose behaviour shapes its numbers."""
    from importlib import metadata

    out: dict[str, str] = {"python": sys.version.split()[0]}
    for name in ("dyncal", "torch", "numpy", "scipy", "fvcore"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


_FILES = {"logits": LOGITS_FILE, "labels": LABELS_FILE, "indices": INDICES_FILE}
_KNOWN_KEYS = frozenset(
    {"schema", "schema_version", "complete", "n", "k", "c", "files", "provenance", "costs", "fingerprint"}
)


@dataclass(frozen=True)
class RunDocument:
    """``run.json``: a run's shape, provenance, cost table and fingerprint; the only reader and writer of that file.

    Keys a later dyncal of the same schema version added are kept in ``other`` and written
    back unchanged, so profiling a run never drops them.

    Attributes:
        n: Number of samples (rows).
        k: Number of exits.
        c: Number of classes.
        provenance: Where the run came from.
        fingerprint: SHA-256 of the run's logits, labels and indices
            (:func:`dyncal.artifacts.run_arrays.compute_fingerprint`).
        costs: The cost table, or None until profiled or imported with costs.
        schema_version: Version of the document's format.
        other: Keys this dyncal does not know, as they were read.

    Example:
        >>> doc = RunDocument(n=4, k=2, c=3, provenance=Provenance("m", None, "d", "", "", "cpu"), fingerprint="0" * 64)
        >>> RunDocument.from_dict(doc.to_dict(), "run") == doc
        True
    """

    n: int
    k: int
    c: int
    provenance: Provenance
    fingerprint: str
    costs: CostTable | None = None
    schema_version: int = SCHEMA_VERSION
    other: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready document (keys in the order dyncal has always written them)."""
        doc: dict[str, Any] = {
            "schema": "dyncal.run",
            "schema_version": self.schema_version,
            "complete": True,
            "n": self.n,
            "k": self.k,
            "c": self.c,
            "files": dict(_FILES),
            "provenance": self.provenance.to_dict(),
            "costs": None if self.costs is None else self.costs.to_dict(),
            "fingerprint": self.fingerprint,
        }
        return {**doc, **{key: value for key, value in self.other.items() if key not in doc}}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], path: str | os.PathLike[str]) -> RunDocument:
        """Validate a parsed ``run.json`` of the run at ``path`` (named in messages).

        Raises:
            RunError: One line naming the field that is missing, malformed, from a newer
                schema, or marks the run incomplete, and what to do.
        """
        if doc.get("schema") != "dyncal.run":
            raise RunError(
                f"run '{path}': {RUN_JSON} is not a dyncal run document (field 'schema' is "
                f'{V.show(doc.get("schema"))}, not "dyncal.run"); {DAMAGED}'
            )
        version = doc.get("schema_version")
        if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
            raise RunError(
                f"run '{path}': {RUN_JSON} has schema version {V.show(version)}; this dyncal reads up to "
                f"{SCHEMA_VERSION}: upgrade dyncal"
            )
        try:
            version = V.required(doc, "schema_version", V.integer, minimum=1, maximum=SCHEMA_VERSION)
            if doc.get("complete") is not True:
                raise RunError(
                    f"run '{path}': {RUN_JSON} marks the run incomplete (field 'complete' is "
                    f"{V.show(doc.get('complete'))}); re-run 'dyncal collect ... --overwrite'"
                )
            n = V.required(doc, "n", V.integer, minimum=1)
            k = V.required(doc, "k", V.integer, minimum=1)
            c = V.required(doc, "c", V.integer, minimum=2)
            files = doc.get("files")
            if files is not None and files != _FILES:
                raise V.FieldError("files", f"must be {json.dumps(_FILES)}, got {V.show(files, 80)}")
            fingerprint = V.required(doc, "fingerprint", V.sha256)
            provenance = Provenance.from_dict(doc.get("provenance", {}))
        except V.FieldError as e:
            raise RunError(f"run '{path}': {RUN_JSON} {e}; {DAMAGED}") from None
        costs_doc = doc.get("costs")
        try:
            costs = None if costs_doc is None else CostTable.from_dict(costs_doc, k=k)
        except V.FieldError as e:
            fix = "" if isinstance(e, UnmeasuredProfileError) else "fix it, or "  # only a new profile mends that
            raise RunError(
                f"run '{path}': {RUN_JSON} {e}; {fix}set \"costs\" to null and re-run 'dyncal profile {path}'"
            ) from None
        return cls(
            n=n,
            k=k,
            c=c,
            provenance=provenance,
            costs=costs,
            fingerprint=fingerprint,
            schema_version=version,
            other={key: value for key, value in doc.items() if key not in _KNOWN_KEYS},
        )

    @classmethod
    def load(cls, run_dir: str | os.PathLike[str]) -> RunDocument:
        """Read and validate ``run_dir/run.json`` (a regular file of bounded size and nesting).

        Raises:
            RunError: Unreadable or malformed; see :meth:`from_dict`.
        """
        try:
            doc = V.read_json_document(
                Path(run_dir) / RUN_JSON, what="a dyncal run document", max_bytes=MAX_RUN_JSON_BYTES
            )
        except DyncalError as e:
            raise RunError(f"run '{run_dir}': {e}; {DAMAGED}") from None
        return cls.from_dict(doc, run_dir)

    def save(self, run_dir: str | os.PathLike[str]) -> None:
        """Write ``run_dir/run.json`` atomically.

        Raises:
            RunError: The folder is not writable.
        """
        target = Path(run_dir) / RUN_JSON
        try:
            atomic_write_text(target, json.dumps(self.to_dict(), indent=2))
        except OSError as e:
            raise RunError(f"cannot write '{target}' ({e.strerror or e}); make the run writable") from e
