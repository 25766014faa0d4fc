"""Opening a run: :func:`load_run` validates everything in it once; :func:`store_costs` writes its cost table.

Whoever writes a run (collect, import, profile through :func:`store_costs`) holds
:class:`~dyncal.artifacts.lock.RunLock`, an exclusive ``flock`` on ``.dyncal-lock-RUN``
beside the run, from its start to its last write; a second writer fails at once with one
line instead of interleaving. The directory's layout is :mod:`dyncal.artifacts.rundir`'s.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dyncal.artifacts import validate as V
from dyncal.artifacts.costs import CostTable
from dyncal.artifacts.lock import RunLock
from dyncal.artifacts.run_arrays import read_arrays
from dyncal.artifacts.run_document import Provenance, RunDocument
from dyncal.artifacts.rundir import DAMAGED, INDICES_FILE, LABELS_FILE, LOGITS_FILE, PARTIAL_SUFFIX, RUN_JSON
from dyncal.errors import RunError

__all__ = ["Run", "load_run", "StoredCosts", "store_costs", "MODEL_ID_KEYS", "other_model_latency"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Run:
    """A complete run directory, opened.

    Attributes:
        path: The run directory.
        logits: Per-exit logits, ``(N, K, C)`` float32, in memory, read-only.
        labels: True classes, ``(N,)`` int64.
        indices: Dataset index of every row, ``(N,)`` int64.
        document: The whole ``run.json`` document (provenance, cost table, fingerprint).
    """

    path: Path
    logits: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    document: RunDocument

    @property
    def provenance(self) -> Provenance:
        """Where the run came from."""
        return self.document.provenance

    @property
    def costs(self) -> CostTable | None:
        """The cost table, or None until profiled or imported with costs."""
        return self.document.costs

    @property
    def n(self) -> int:
        """Number of samples."""
        return int(self.logits.shape[0])

    @property
    def k(self) -> int:
        """Number of exits."""
        return int(self.logits.shape[1])

    @property
    def c(self) -> int:
        """Number of classes."""
        return int(self.logits.shape[2])

    @property
    def fingerprint(self) -> str:
        """SHA-256 identity of the run's arrays (logits, labels and indices), as ``run.json`` records it.

        :func:`load_run` checked it against the arrays it read
        (:func:`dyncal.artifacts.run_arrays.compute_fingerprint`).
        """
        return self.document.fingerprint


def _missing_run_message(path: Path) -> str:
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    if partial.exists():
        return (
            f"no complete run at '{path}': '{partial}' is a collect that was interrupted "
            "or is still running; continue it with the same 'dyncal collect ... --resume'"
        )
    return f"no run directory at '{path}'; create one with 'dyncal collect' or 'dyncal import'"


def load_run(path: str | os.PathLike[str]) -> Run:
    """Open a complete run directory, validating everything in it once.

    ``run.json`` must be a dyncal run document of a known schema version whose every field
    has the right type and value (N >= 1, K >= 1, C >= 2; a cost table of K positive,
    finite, cumulative MACs and well-formed latency entries); the arrays must be regular,
    whole ``.npy`` files of the shapes ``run.json`` gives (logits floating point
    ``(N, K, C)``, labels and indices integral ``(N,)``), every label in ``[0, C)``, every
    dataset index non-negative and named once, every logit finite, and together they must
    have the fingerprint ``run.json`` records.

    The arrays are read into memory in one pass that also checks and fingerprints them
    (:func:`dyncal.artifacts.run_arrays.read_arrays`: bounded blocks, nothing memory-mapped,
    checks remembered while the files are unchanged).

    Args:
        path: The run directory written by ``dyncal collect`` or ``dyncal import``.

    Returns:
        The run, with ``logits`` ``(N, K, C)``, ``labels`` and ``indices`` ``(N,)``, read-only.

    Raises:
        RunError: One line naming the file and the field that is missing, incomplete
            (interrupted or still being written), from a newer schema or malformed, and
            what to do.

    Example:
        >>> import numpy as np, tempfile, pathlib
        >>> from dyncal.artifacts.run_import import import_arrays
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "run"
        >>> _ = import_arrays(np.zeros((4, 2, 3), np.float32), np.array([0, 1, 2, 0]), out)
        >>> run = load_run(out)
        >>> run.n, run.k, run.c
        (4, 2, 3)
    """
    path = Path(path)
    if path.name in ("", ".."):  # '.', '..', '/': name the folder, so that RUN.lock beside it has a name too
        path = Path(os.path.abspath(path))
    if path.name.endswith(PARTIAL_SUFFIX):
        raise RunError(
            f"'{path}' is an unfinished run (interrupted or still being written); "
            "re-run 'dyncal collect ... --overwrite'"
        )
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise RunError(_missing_run_message(path)) from None
    except OSError as e:
        raise RunError(f"cannot open run '{path}': {e.strerror or e}") from e
    if not stat.S_ISDIR(st.st_mode):
        raise RunError(f"'{path}' is {V.file_kind(st.st_mode)}, not a run directory")
    if not (path / RUN_JSON).exists():
        raise RunError(
            f"'{path}' is not a complete dyncal run (no {RUN_JSON}): it was interrupted or "
            "is not a run; re-run 'dyncal collect ... --overwrite'"
        )
    document = RunDocument.load(path)
    logits, labels, indices, fingerprint = read_arrays(path, document.n, document.k, document.c)
    if document.fingerprint != fingerprint:
        raise RunError(
            f"run '{path}': {LOGITS_FILE}, {LABELS_FILE} or {INDICES_FILE} changed after the run was written "
            f"(fingerprint {fingerprint[:12]}, {RUN_JSON} records {document.fingerprint[:12]}); {DAMAGED}"
        )
    return Run(path=path, logits=logits, labels=labels, indices=indices, document=document)


@dataclass(frozen=True)
class StoredCosts:
    """What :func:`store_costs` wrote.

    Attributes:
        costs: The cost table as stored (merged with the entries kept).
        replaced: Latency keys (``"cpu/b1"``, ...) timed on another model that were replaced.
        replaced_model: That other model, described (spec and hashes), or None.
    """

    costs: CostTable
    replaced: tuple[str, ...] = ()
    replaced_model: str | None = None


def store_costs(
    run: Run,
    costs: CostTable,
    *,
    model_id: Mapping[str, Any] | None = None,
    allow_other_model: bool = False,
) -> StoredCosts:
    """Store a cost table in an opened run's ``run.json``, atomically and under the run's lock.

    The arrays are not read again: under the lock, ``run.json`` is, so that entries another
    process stored since ``run`` was opened are merged, not lost: latency entries of other
    devices/batch sizes already stored are kept (those that record no model too), and MACs
    when the new table has none.

    Args:
        run: An opened run (:func:`load_run`).
        costs: The new cost table.
        model_id: The model the new table was measured on (``model``, ``weights_sha256``,
            ``state_sha256``; see :data:`MODEL_ID_KEYS`); by default read from the new
            latency entries' settings.
        allow_other_model: Replace stored latency entries timed on another model (their
            settings name a different spec or hash); without it such entries are an error,
            never dropped silently.

    Returns:
        The stored table and the keys it replaced.

    Raises:
        RunError: Another process writes the run or replaced it since it was opened, the
            table does not fit the run, or the run holds latency of another model and
            ``allow_other_model`` is not set.

    Example:
        >>> import numpy as np, tempfile, pathlib
        >>> from dyncal.artifacts.run_import import import_arrays
        >>> run = import_arrays(np.zeros((3, 2, 4), np.float32), [0, 1, 3], pathlib.Path(tempfile.mkdtemp()) / "run")
        >>> store_costs(run, CostTable(macs=(1e6, 2e6))).costs.macs
        (1000000.0, 2000000.0)
    """
    with RunLock(run.path):
        document = RunDocument.load(run.path)
        if document.fingerprint != run.fingerprint:
            raise RunError(
                f"run '{run.path}' was replaced after it was opened (fingerprint {document.fingerprint[:12]}, "
                f"opened {run.fingerprint[:12]}); open it again"
            )
        run = dataclasses.replace(run, document=document)
        replaced: list[str] = []
        replaced_model = None
        if run.costs is not None:
            if model_id is None:
                model_id = next(({k: p.settings.get(k) for k in MODEL_ID_KEYS} for p in costs.latency.values()), None)
            replaced, replaced_model = other_model_latency(run, model_id, allow_other_model=allow_other_model)
            latency = {key: old for key, old in run.costs.latency.items() if key not in replaced}
            if replaced:
                log.info("replacing latency %s of run '%s' timed on %s", ", ".join(replaced), run.path, replaced_model)
            latency.update(costs.latency)
            costs = CostTable(
                macs=costs.macs if costs.macs is not None else run.costs.macs,
                stage_macs=costs.stage_macs if costs.stage_macs is not None else run.costs.stage_macs,
                # fvcore's list belongs to the MACs it was counted with: a fresh count replaces it, empty or not
                unsupported_ops=costs.unsupported_ops if costs.macs is not None else run.costs.unsupported_ops,
                latency=latency,
                source=costs.source,
                model=costs.model if costs.model is not None else run.costs.model,
            )
        if costs.macs is not None and len(costs.macs) != run.k:
            raise RunError(f"cost table has {len(costs.macs)} exits but the run has K={run.k}")
        dataclasses.replace(document, costs=costs).save(run.path)
    return StoredCosts(costs=costs, replaced=tuple(replaced), replaced_model=replaced_model)


MODEL_ID_KEYS = ("model", "weights_sha256", "state_sha256")
"""Keys of :attr:`dyncal.artifacts.costs.LatencyProfile.settings` naming the model that was timed (spec, hashes)."""


def _same_model(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether two model identities agree on every key both record (none recorded: assume so)."""
    return all(old[key] == new[key] for key in MODEL_ID_KEYS if old.get(key) is not None and new.get(key) is not None)


def _describe_model(model_id: Mapping[str, Any]) -> str:
    """``spec (weights 1a2b3c4d…, state 5e6f…)`` from a model identity, for messages."""
    hashes = [
        f"{name} {str(model_id[key])[:12]}"
        for key, name in (("weights_sha256", "weights"), ("state_sha256", "state"))
        if model_id.get(key)
    ]
    return f"{model_id.get('model') or '(unnamed model)'}" + (f" ({', '.join(hashes)})" if hashes else "")


def other_model_latency(
    run: Run, model_id: Mapping[str, Any] | None, *, allow_other_model: bool = False
) -> tuple[list[str], str | None]:
    """Latency keys of ``run`` timed on a model other than ``model_id``, and that model described.

    Args:
        run: An opened run.
        model_id: The model about to be profiled (see :data:`MODEL_ID_KEYS`), or None.
        allow_other_model: Return them (to be replaced) instead of refusing.

    Raises:
        RunError: There are some and ``allow_other_model`` is False: one line naming them
            and the flag that replaces them.
    """
    if run.costs is None or model_id is None:
        return [], None
    others = {key: old.settings for key, old in run.costs.latency.items() if not _same_model(old.settings, model_id)}
    keys = list(others)
    described = _describe_model(others[keys[-1]]) if keys else None
    if keys and not allow_other_model:
        raise RunError(
            f"run '{run.path}' holds latency {', '.join(keys)} timed on another model ({described}) than "
            f"this one ({_describe_model(model_id)}); pass `allow_other_model` to replace it, or profile "
            "a copy of the run"
        )
    return keys, described
