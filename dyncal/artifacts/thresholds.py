"""thresholds.json: read, validated and bound to the run it was solved on.

:class:`ThresholdsDocument` is the document (``dyncal solve`` builds it; the solver's
``ThresholdsDocument`` is the same class); this module alone reads, validates and writes it.
:func:`decision_fingerprint` names the exit decisions a document makes, so that verify
results and reports can refuse evidence made with other thresholds.

The threshold encoding is owned here too: inside dyncal thresholds are ``K - 1`` floats
where ``+inf`` means "nobody leaves here" and ``-inf`` "everybody who reaches this exit
leaves"; :func:`finite_thresholds` writes them as ``K`` finite numbers (the last null) just
outside the score's range (:func:`score_range`), which changes no decision, and
:func:`thresholds_from_json` reads them back.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from dyncal.artifacts import validate as V
from dyncal.artifacts.atomic import atomic_write_text
from dyncal.artifacts.fields import JsonFields
from dyncal.artifacts.validate import FieldError, read_json_document
from dyncal.choices import Score
from dyncal.errors import DyncalError

if TYPE_CHECKING:
    from dyncal.artifacts.run import Run

__all__ = [
    "SCHEMA_VERSION",
    "ThresholdsDocument",
    "decision_fingerprint",
    "read_exit_rule",
    "read_thresholds",
    "check_thresholds_for_run",
    "check_thresholds_figures",
    "TEMPERATURE_RANGE",
    "thresholds_json",
    "json_ready",
    "score_range",
    "finite_thresholds",
    "thresholds_from_json",
]

SCHEMA_VERSION = 1
"""Version of the thresholds.json format."""

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

TEMPERATURE_RANGE = (1e-3, 1e3)
"""Temperatures a document may hold: around what the fitter searches (0.05 to 20); beyond, ``logits / T`` overflows."""


def read_exit_rule(d: Mapping[str, Any], k: int | None = None) -> dict[str, Any]:
    """The exit rule of a thresholds document or a manifest: ``thresholds``, ``score`` and ``temperatures``.

    ``thresholds`` are ``k`` entries (default: as many as listed, at least 2), finite numbers
    with the last exit's null; ``temperatures`` one per exit, in :data:`TEMPERATURE_RANGE`.
    """
    raw = V.required(d, "thresholds", V.sequence, length=k, min_length=2)
    k = len(raw)
    if raw[-1] is not None:
        raise V.FieldError(f"thresholds[{k - 1}]", f"(the last exit's) must be null, got {V.show(raw[-1])}")
    thresholds = (*(V.number(v, f"thresholds[{i}]") for i, v in enumerate(raw[:-1])), None)
    (lo, hi), temperatures = TEMPERATURE_RANGE, V.require(d, "temperatures")
    return {
        "score": V.required(d, "score", V.string, choices=tuple(Score)),
        "temperatures": V.number_list(temperatures, "temperatures", length=k, positive=True, minimum=lo, maximum=hi),
        "thresholds": thresholds,
    }


@dataclass(frozen=True)
class ThresholdsDocument(JsonFields):
    """The ``thresholds.json`` document of ``dyncal solve``.

    Calibration numbers (``calibration_accuracy``, ``expected_macs``, ``expected_ms``,
    ``exit_shares``, ``budget["met"]``) are measured on the fit part, where the budget is
    guaranteed; ``holdout_*`` on the held-out part. Applying ``thresholds`` with the exit
    rule to the fit part's scores reproduces them exactly.

    Attributes:
        score: Score name.
        temperatures: ``K`` temperatures.
        thresholds: ``K`` thresholds, the last None.
        method: Solver used (``risk`` mode: the solver that built the candidates).
        budget: ``asked``, ``unit``, ``value``, ``fraction``, ``met``, ``met_fraction``.
        expected_macs: Mean MACs on the fit part, None when the run has no MACs.
        expected_ms: Mean early-exit ms per ``"<device>/b<batch>"``.
        calibration_accuracy: Accuracy on the fit part.
        holdout_accuracy: Accuracy on the held-out part (None when nothing was held out).
        holdout_ci: 95% bootstrap interval of ``holdout_accuracy`` (None likewise).
        exit_shares: ``K`` shares on the fit part.
        static: One entry per exit used alone: accuracies and costs.
        holdout: Held-out details: ``n``, ``expected_macs``, ``expected_ms``, ``exit_shares``.
        split: ``holdout``, ``seed``, ``n_calibration``, ``n_holdout``, and the classes too
            small to split that were kept whole in the fit part (``n_unsplit_classes``,
            ``unsplit_classes``).
        risk: Risk-control details, or None.
        run: Path of the run.
        run_fingerprint: Fingerprint of the run solved on (:attr:`dyncal.artifacts.run.Run.fingerprint`;
            None only for thresholds solved on bare arrays, which no file holds); verify, report and
            export refuse the document for any other run.
        n_classes: ``C``.
        temperature_at_bound: Per exit, whether its fitted temperature stopped at the
            search bound (0.05 or 20): a warning sign; None when none were fitted.
        schema_version: Version of this document.
        guard: What the guard did (:func:`dyncal.calibrate.solvers.guard_record`); None in risk mode.
    """

    schema_version: int = field(default=SCHEMA_VERSION, kw_only=True)  # first: the document's key order
    score: str
    temperatures: tuple[float, ...]
    thresholds: tuple[float | None, ...]
    method: str
    budget: dict[str, Any]
    expected_macs: float | None
    expected_ms: dict[str, float]
    calibration_accuracy: float
    holdout_accuracy: float | None
    holdout_ci: tuple[float, float] | None
    exit_shares: tuple[float, ...]
    static: tuple[dict[str, Any], ...] = ()
    holdout: dict[str, Any] | None = None
    split: dict[str, Any] = field(default_factory=dict)
    risk: dict[str, Any] | None = None
    run: str = ""
    run_fingerprint: str | None = None
    n_classes: int = 0
    temperature_at_bound: tuple[bool, ...] | None = None
    guard: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The thresholds.json document: its schema, then every field in order (tuples as lists, containers copied)."""
        return {"schema": "dyncal.thresholds", **copy.deepcopy(super().to_dict())}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ThresholdsDocument:
        """Read a thresholds.json document, checking every field's type and shape.

        ``thresholds`` must list K >= 2 entries, finite numbers with the last null;
        ``temperatures`` K positive finite numbers; ``exit_shares`` (and, when present,
        ``temperature_at_bound``) K entries; accuracies fractions in [0, 1]; and
        ``run_fingerprint`` must name the run the thresholds were solved on.

        Raises:
            DyncalError: From a newer schema version.
            FieldError: The first malformed field (a :class:`DyncalError` naming it).
        """
        d = V.mapping(d, "(document)")
        schema = d.get("schema", "dyncal.thresholds")
        if schema != "dyncal.thresholds":
            raise V.FieldError("schema", f'must be "dyncal.thresholds", got {V.show(schema)}')
        version = V.require(d, "schema_version")
        if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
            raise DyncalError(
                f"thresholds document has schema version {version}; this dyncal reads up to {SCHEMA_VERSION}: "
                "upgrade dyncal"
            )
        version = V.integer(version, "schema_version", minimum=1)
        rule = read_exit_rule(d)
        k = len(rule["thresholds"])
        return cls(
            **rule,
            method=V.required(d, "method", V.string),
            budget=_budget_from_dict(d.get("budget") or {}),
            expected_macs=V.optional(d.get("expected_macs"), V.number, "expected_macs", minimum=0),
            expected_ms=_cost_map(d.get("expected_ms") or {}, "expected_ms"),
            calibration_accuracy=V.required(d, "calibration_accuracy", V.number, minimum=0, maximum=1),
            holdout_accuracy=V.optional(d.get("holdout_accuracy"), V.number, "holdout_accuracy", minimum=0, maximum=1),
            holdout_ci=_interval(d.get("holdout_ci"), "holdout_ci"),
            exit_shares=V.required(d, "exit_shares", V.number_list, length=k, minimum=0, maximum=1),
            static=tuple(
                _static_from_dict(s, f"static[{i}]") for i, s in enumerate(V.sequence(d.get("static", []), "static"))
            ),
            holdout=None if d.get("holdout") is None else _holdout_from_dict(d["holdout"], k),
            split=_split_from_dict(d.get("split") or {}),
            risk=V.optional(d.get("risk"), V.mapping, "risk"),
            run=V.string(d.get("run", ""), "run"),
            n_classes=V.integer(d.get("n_classes", 0), "n_classes", minimum=0),
            temperature_at_bound=V.optional(d.get("temperature_at_bound"), _flags, "temperature_at_bound", length=k),
            schema_version=version,
            run_fingerprint=V.required(d, "run_fingerprint", V.string),
            guard=V.optional(d.get("guard"), V.mapping, "guard"),
        )

    @property
    def decision_fingerprint(self) -> str:
        """Identity of the exit decisions (:func:`dyncal.artifacts.thresholds.decision_fingerprint`)."""
        return decision_fingerprint(self.score, self.temperatures, self.thresholds)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the document to ``path`` atomically, as :func:`thresholds_json` spells it."""
        atomic_write_text(path, thresholds_json(self))

    @property
    def threshold_array(self) -> np.ndarray:
        """The ``K - 1`` thresholds as floats."""
        return thresholds_from_json(list(self.thresholds))


def _flags(value: Any, field: str, *, length: int) -> tuple[bool, ...]:
    """A list of ``length`` JSON booleans."""
    items = V.sequence(value, field, length=length)
    for i, v in enumerate(items):
        if not isinstance(v, bool):
            raise V.FieldError(f"{field}[{i}]", f"must be true or false, got {V.show(v)}")
    return tuple(items)


def _interval(value: Any, field: str) -> tuple[float, float] | None:
    """None, or a 95% interval of a fraction: two fractions in order."""
    if value is None:
        return None
    return cast("tuple[float, float]", V.number_list(value, field, length=2, minimum=0, maximum=1, nondecreasing=True))


def _cost_map(value: Any, field: str) -> dict[str, float]:
    return {str(key): V.number(v, f"{field}[{key!r}]", minimum=0) for key, v in V.mapping(value, field).items()}


def _split_from_dict(value: Any) -> dict[str, Any]:
    """The ``split`` object: how the run was split (fractions fractions, counts integers; others kept)."""
    split = dict(V.mapping(value, "split"))
    if "holdout" in split:
        V.number(split["holdout"], "split.holdout", minimum=0, maximum=1)
        if not split["holdout"] < 1:
            raise V.FieldError("split.holdout", f"must be a fraction in [0, 1), got {V.show(split['holdout'])}")
    for key, least in (("seed", 0), ("n_calibration", 1), ("n_holdout", 0), ("n_unsplit_classes", 0)):
        if key in split:
            V.integer(split[key], f"split.{key}", minimum=least)
    if "unsplit_classes" in split:
        V.integer_list(split["unsplit_classes"], "split.unsplit_classes", minimum=0)
    return split


def _holdout_from_dict(value: Any, k: int) -> dict[str, Any]:
    """The ``holdout`` object: the held-out part's size, costs and exit shares."""
    held = dict(V.mapping(value, "holdout"))
    V.required(held, "n", V.integer, "holdout.", minimum=1)
    V.required(held, "exit_shares", V.number_list, "holdout.", length=k, minimum=0, maximum=1)
    V.optional(held.get("expected_macs"), V.number, "holdout.expected_macs", minimum=0)
    _cost_map(held.get("expected_ms") or {}, "holdout.expected_ms")
    return held


def _static_from_dict(value: Any, field: str) -> dict[str, Any]:
    """One ``static`` entry: an exit used alone, its accuracies and costs."""
    entry = dict(V.mapping(value, field))
    if "exit" in entry:
        V.integer(entry["exit"], f"{field}.exit", minimum=1)
    for key in ("calibration_accuracy", "holdout_accuracy"):
        V.optional(entry.get(key), V.number, f"{field}.{key}", minimum=0, maximum=1)
    _interval(entry.get("holdout_ci"), f"{field}.holdout_ci")
    for key in ("macs", "fraction"):
        V.optional(entry.get(key), V.number, f"{field}.{key}", minimum=0)
    _cost_map(entry.get("ms") or {}, f"{field}.ms")
    return entry


def _budget_from_dict(value: Any) -> dict[str, Any]:
    """The ``budget`` object of a thresholds document: text fields text, numbers finite."""
    budget = dict(V.mapping(value, "budget"))
    for key in ("asked", "unit"):
        V.optional(budget.get(key), V.string, f"budget.{key}")
    for key in ("value", "fraction", "met", "met_fraction"):
        V.optional(budget.get(key), V.number, f"budget.{key}", minimum=0)
    return budget


def read_thresholds(path: str | os.PathLike[str]) -> ThresholdsDocument:
    """Read and validate a thresholds.json written by ``dyncal solve``.

    The file must be a regular file holding a small UTF-8 JSON object of bounded nesting
    (:func:`dyncal.artifacts.validate.read_json_document`), and every field must have its
    type and shape (:meth:`ThresholdsDocument.from_dict`). Whether the thresholds belong to
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
        dyncal.errors.DyncalError: '...t.json' is not a thresholds document: field 'thresholds[0]' must be a \
finite number, got nan
    """
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
        return ThresholdsDocument.from_dict(doc)
    except FieldError as e:
        raise DyncalError(f"'{path}' is not a valid thresholds document: {e}; {redo}") from None
    except DyncalError as e:  # a newer schema version
        raise DyncalError(f"'{path}': {e}") from None


def check_thresholds_for_run(thresholds: ThresholdsDocument, run: Run) -> None:
    """Refuse thresholds that were not solved on ``run``.

    The document must record its run's fingerprint and it must be this run's (one solved on
    bare arrays records none, and is refused: solve on the run). The figures it records must
    be this run's too (:func:`check_thresholds_figures`), so a fingerprint pasted in from
    another run is refused.

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
    check_thresholds_figures(thresholds, run)


def check_thresholds_figures(thresholds: ThresholdsDocument, run: Run, correct: np.ndarray | None = None) -> None:
    """Refuse thresholds whose recorded figures do not summarise ``run``.

    A document from ``dyncal solve`` describes its run: its split (``holdout``, ``seed``)
    gives ``n_calibration`` fit rows and ``n_holdout`` held-out rows that together are the
    run's N; its exit shares are counts of those rows (summing to 1); and ``static`` holds
    every exit's accuracy on each part, which depends on the run and the split alone, not
    on the thresholds. Another run's fingerprint pasted into a document fails here, while
    thresholds edited by hand still pass (the report recomputes what they give, and says so).

    Args:
        thresholds: The document.
        run: The run it is bound to (same K and C; see :func:`check_thresholds_for_run`).
        correct: ``(N, K)`` whether each exit's prediction is right, when the caller has it
            (else computed from the logits).

    Raises:
        DyncalError: A split or figure that does not fit the run (one line, with what to do).
    """
    from dyncal.stats import stratified_split

    redo = f"solve on this run: dyncal solve {run.path} --budget ... --out thresholds.json"
    other = f"they are another run's (its fingerprint pasted in?) or were edited; {redo}"
    split = thresholds.split
    missing = [key for key in ("holdout", "seed", "n_calibration", "n_holdout") if key not in split]
    if missing or len(thresholds.static) != run.k:
        what = f"'split.{missing[0]}'" if missing else f"{run.k} 'static' entries"
        raise DyncalError(
            f"the thresholds do not record {what}, so they cannot be checked against run '{run.path}'; {redo}"
        )
    n_fit, n_held = split["n_calibration"], split["n_holdout"]
    if n_fit + n_held != run.n:
        raise DyncalError(
            f"the thresholds were solved on {n_fit + n_held} samples ({n_fit} calibration + {n_held} held out) "
            f"but run '{run.path}' has N={run.n}: {other}"
        )
    labels = np.asarray(run.labels, dtype=np.int64)

    def quiet(record: logging.LogRecord) -> bool:  # drops every record
        return False

    logging.getLogger("dyncal.stats").addFilter(quiet)  # solve gave that warning already
    try:
        fit_idx, held_idx = stratified_split(labels, float(split["holdout"]), int(split["seed"]))
    except DyncalError as e:
        raise DyncalError(f"the thresholds' split does not fit run '{run.path}' ({e}); {redo}") from None
    finally:
        logging.getLogger("dyncal.stats").removeFilter(quiet)
    if (fit_idx.size, held_idx.size) != (n_fit, n_held):
        raise DyncalError(
            f"the thresholds record {n_fit} calibration and {n_held} held-out samples, but their split "
            f"(holdout {split['holdout']:g}, seed {split['seed']}) gives {fit_idx.size} and {held_idx.size} on "
            f"run '{run.path}': {other}"
        )
    held = thresholds.holdout
    if (held is None) != (n_held == 0) or (thresholds.holdout_accuracy is None) != (n_held == 0):
        raise DyncalError(f"the thresholds' held-out figures do not fit their {n_held} held-out samples: {other}")
    parts = [("calibration", fit_idx, thresholds.exit_shares, thresholds.calibration_accuracy)]
    if held is not None:
        if held.get("n") != n_held:
            raise DyncalError(
                f"the thresholds' 'holdout.n' is {held.get('n')}, their split holds {n_held} out: {other}"
            )
        # its exit shares were checked where the document was read (ThresholdsDocument.from_dict)
        parts.append(("held-out", held_idx, held["exit_shares"], float(thresholds.holdout_accuracy or 0)))
    for name, rows, shares, accuracy in parts:
        counts = [v * rows.size for v in (*shares, accuracy)]
        if abs(sum(shares) - 1) > 1e-9 or any(abs(c - round(c)) > 1e-6 * rows.size for c in counts):
            raise DyncalError(
                f"the thresholds' {name} exit shares {_shares(shares)} and accuracy {accuracy:.6f} are no counts "
                f"of {rows.size} samples summing to all of them: {other}"
            )
    if correct is None:
        correct = _correct(run)
    key = {"calibration": "calibration_accuracy", "held-out": "holdout_accuracy"}
    for name, rows, _, _ in parts:
        got = correct[rows].mean(axis=0)
        recorded = [s.get(key[name]) for s in thresholds.static]
        if any(r is None or abs(float(r) - float(g)) > 1e-9 for r, g in zip(recorded, got, strict=True)):
            shown = ", ".join("null" if r is None else f"{float(r):.4f}" for r in recorded)
            raise DyncalError(
                f"the thresholds' exits do not match run '{run.path}': alone, its exits are right on "
                f"{_shares(got)} of its {rows.size} {name} samples, the file records [{shown}]: {other}"
            )


def _correct(run: Run, chunk_rows: int = 8192) -> np.ndarray:
    """``(N, K)``: whether each exit's top logit is the label (read in blocks of rows)."""
    labels = np.asarray(run.labels)
    out = np.empty((run.n, run.k), dtype=bool)
    for start in range(0, run.n, chunk_rows):
        block = np.asarray(run.logits[start : start + chunk_rows], dtype=np.float32)  # as exit_scores reads them
        out[start : start + block.shape[0]] = block.argmax(axis=-1) == labels[start : start + block.shape[0], None]
    return out


def _shares(values: Sequence[float] | np.ndarray) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in values) + "]"


def score_range(score: str, n_classes: int) -> tuple[float, float]:
    """The closed interval every value of ``score`` lies in.

    Args:
        score: ``maxprob``, ``margin`` or ``entropy``.
        n_classes: Number of classes ``C``.

    Returns:
        ``(low, high)``.

    Raises:
        DyncalError: Unknown score.

    Example:
        >>> score_range("maxprob", 10)
        (0.1, 1.0)
    """
    kind = Score.parse(score, "score")
    if kind is Score.MAXPROB:
        return 1.0 / n_classes, 1.0
    if kind is Score.MARGIN:
        return 0.0, 1.0
    return -math.log(n_classes), 0.0


def finite_thresholds(thresholds: Sequence[float] | np.ndarray, score: str, n_classes: int) -> list[float | None]:
    """Thresholds for ``thresholds.json``: ``K`` entries, infinities made finite, last None.

    ``+inf`` ("nobody leaves") becomes the score's maximum plus 1 and ``-inf`` ("everybody
    leaves") its minimum minus 1, so every decision stays the same.

    Example:
        >>> finite_thresholds([float("inf"), 0.7], "maxprob", 10)
        [2.0, 0.7, None]
    """
    low, high = score_range(score, n_classes)
    made_finite = {math.inf: high + 1.0, -math.inf: low - 1.0}
    return [*(made_finite.get(v, v) for v in np.asarray(thresholds, dtype=np.float64).tolist()), None]


def thresholds_from_json(values: Sequence[float | None]) -> np.ndarray:
    """The ``K - 1`` float thresholds of a ``thresholds.json`` list (last entry dropped).

    Example:
        >>> thresholds_from_json([0.9, 0.8, None]).tolist()
        [0.9, 0.8]
    """
    vals = list(values)
    if not vals or vals[-1] is not None:
        raise DyncalError(f"thresholds must list K values with the last null, got {vals}")
    if any(v is None for v in vals[:-1]):
        raise DyncalError(f"only the last threshold may be null, got {vals}")
    return np.asarray(vals[:-1], dtype=np.float64)


def json_ready(x: Any) -> Any:
    """``x`` with every NaN and infinity made null (JSON has neither); dicts, lists and tuples are walked."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_ready(v) for v in x]
    return x


def thresholds_json(thresholds: ThresholdsDocument) -> str:
    """The text of thresholds.json: the one way ``dyncal solve``, the demo and scripts write it.

    Example:
        >>> doc = ThresholdsDocument(
        ...     "maxprob", (1.0, 1.0), (0.5, None), "optimal", {}, None, {}, 0.9, None, None, (1, 0)
        ... )
        >>> json.loads(thresholds_json(doc))["thresholds"]
        [0.5, None]
    """
    return json.dumps(json_ready(thresholds.to_dict()), indent=2, allow_nan=False) + "\n"
