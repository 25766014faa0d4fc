"""thresholds.json: read, validated and bound to the run it was solved on.

The document itself is :class:`dyncal.calibrate.solvers.ThresholdsResult`; this module is
where it is opened. :func:`decision_fingerprint` names the exit decisions a document makes,
so that verify results and reports can refuse evidence made with other thresholds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dyncal.artifacts.validate import FieldError, read_json_document
from dyncal.errors import DyncalError

if TYPE_CHECKING:
    from dyncal.calibrate.solvers import ThresholdsResult
    from dyncal.run import Run

__all__ = ["decision_fingerprint", "read_thresholds", "check_thresholds_for_run", "thresholds_json", "json_ready"]

log = logging.getLogger(__name__)


def decision_fingerprint(score: str, temperatures: Sequence[float], thresholds: Sequence[float | None]) -> str:
    """SHA-256 of what decides every sample's exit: the score, temperatures and thresholds.

    Two thresholds documents with the same fingerprint send every sample to the same exit;
    a verify result or a report records it to refuse evidence made with other thresholds.

    Example:
        >>> a = decision_fingerprint("maxprob", [1.0, 1.0], [0.9, None])
        >>> a == decision_fingerprint("maxprob", [1.0, 1.0], [0.9, None])
        True
        >>> a == decision_fingerprint("maxprob", [1.0, 1.0], [0.8, None])
        False
    """
    doc = {
        "score": str(score),
        "temperatures": [float(t) for t in temperatures],
        "thresholds": [None if t is None else float(t) for t in thresholds],
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode("utf-8")).hexdigest()


MAX_THRESHOLDS_BYTES = 16 << 20
"""Largest thresholds.json accepted (dyncal writes a few kB)."""


def read_thresholds(path: str | os.PathLike[str]) -> ThresholdsResult:
    """Read and validate a thresholds.json written by ``dyncal solve``.

    The file must be a regular file holding a small UTF-8 JSON object of bounded nesting
    (:func:`dyncal.artifacts.validate.read_json_document`), and every field must have its
    type and shape (:meth:`ThresholdsResult.from_dict`). Whether the thresholds belong to
    a run is :func:`check_thresholds_for_run`'s question.

    Raises:
        DyncalError: One line naming the file, the malformed field and what to do.

    Example:
        >>> import json, tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "t.json"
        >>> _ = p.write_text(json.dumps({"schema_version": 1, "thresholds": [float("nan"), None]}))
        >>> read_thresholds(p)
        Traceback (most recent call last):
        ...
        dyncal.errors.DyncalError: '...t.json' is not a valid thresholds document: field 'thresholds[0]' must be a \
finite number, got nan; write a new one with 'dyncal solve RUN --budget ... --out ...t.json'
    """
    from dyncal.calibrate.solvers import ThresholdsResult

    path = Path(path)
    redo = f"write a new one with 'dyncal solve RUN --budget ... --out {path}'"
    if not path.exists() and not path.is_symlink():
        raise DyncalError(f"no such file '{path}'; {redo}")
    doc = read_json_document(path, what="a thresholds document", max_bytes=MAX_THRESHOLDS_BYTES)
    if "thresholds" not in doc:
        schema = doc.get("schema")
        what = f" (it is a {schema} document)" if isinstance(schema, str) and schema.startswith("dyncal.") else ""
        raise DyncalError(
            f"'{path}' is not a thresholds document{what or ' (no thresholds key)'}; give the thresholds.json "
            "'dyncal solve RUN --budget ... --out thresholds.json' wrote"
        )
    try:
        return ThresholdsResult.from_dict(doc)
    except FieldError as e:
        raise DyncalError(f"'{path}' is not a valid thresholds document: {e}; {redo}") from None
    except DyncalError as e:  # a newer schema version
        raise DyncalError(f"'{path}': {e}") from None


def check_thresholds_for_run(thresholds: ThresholdsResult, run: Run) -> None:
    """Refuse thresholds that were not solved on ``run``.

    The document must record its run's fingerprint and it must be this run's (one without
    it, written before thresholds were bound to runs, is refused: solve again).

    Raises:
        DyncalError: Thresholds from another run, or for another K or C.
    """
    k = len(thresholds.thresholds)
    if k != run.k or len(thresholds.temperatures) != run.k:
        raise DyncalError(
            f"the thresholds are for K={k} exits but run '{run.path}' has K={run.k}; solve on this run: "
            f"dyncal solve {run.path} --budget ... --out thresholds.json"
        )
    if thresholds.n_classes and thresholds.n_classes != run.c:
        raise DyncalError(
            f"the thresholds were solved on C={thresholds.n_classes} classes but run '{run.path}' has C={run.c}; "
            "solve on this run"
        )
    if thresholds.run_fingerprint is None:
        raise DyncalError(
            f"the thresholds do not record the run they were solved on (no 'run_fingerprint'), so they cannot be "
            f"checked against run '{run.path}'; solve again: dyncal solve {run.path} --budget ... --out thresholds.json"
        )
    if thresholds.run_fingerprint != run.fingerprint:
        raise DyncalError(
            f"the thresholds were solved on another run (fingerprint {thresholds.run_fingerprint[:12]}, "
            f"run '{run.path}' is {run.fingerprint[:12]}); solve on this run: dyncal solve {run.path} --budget ..."
        )


def json_ready(x: Any) -> Any:
    """``x`` with every NaN and infinity made null (JSON has neither); dicts, lists and tuples are walked."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_ready(v) for v in x]
    return x


def thresholds_json(thresholds: ThresholdsResult) -> str:
    """The text of thresholds.json: the one way ``dyncal solve``, the demo and scripts write it.

    Example:
        >>> from dyncal.calibrate.solvers import ThresholdsResult
        >>> doc = ThresholdsResult("maxprob", (1.0, 1.0), (0.5, None), "optimal", {}, None, {}, 0.9, None, None, (1, 0))
        >>> json.loads(thresholds_json(doc))["thresholds"]
        [0.5, None]
    """
    return json.dumps(json_ready(thresholds.to_dict()), indent=2, allow_nan=False) + "\n"
