"""Thresholds judged on other data: the core of ``dyncal evaluate RUN_B --thresholds T.json``.

Thresholds solved on run A are applied, unchanged, to a run B of the same model and weights
collected on other data (a perturbation from ``collect --perturb``, a new site, a later month).
The model must be the same (:func:`check_same_model` compares what both runs record: spec,
weights and state hashes, K, C, input shape, MACs); the data are expected to differ and the
result says so plainly (:func:`data_relation`).

On B: accuracy with its 95% bootstrap interval, the last exit's, the drop against it (paired
interval), exit shares, and the expected MACs and ms per ``"<device>/b<batch>"`` with
intervals; the same figures on A's held-out part (all of A when nothing was held out) are
the reference, and the deltas B − A follow. Whether the budget still holds on B, and (for
thresholds solved with ``max_drop`` or when one is given) whether the drop bound does, is
stated as ``holds`` / ``breaks`` / ``uncertain``.

Costs are A's (the model's) unless B was profiled itself, so an unprofiled B can be judged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from dyncal.constraints import check
from dyncal.errors import DyncalError, describe, param
from dyncal.specs import is_named

if TYPE_CHECKING:
    from dyncal.artifacts.run import Run
    from dyncal.artifacts.thresholds import ThresholdsDocument

__all__ = [
    "ModelCheck",
    "check_same_model",
    "data_relation",
    "Figures",
    "Evaluation",
    "evaluate_thresholds",
    "robustness_rows",
    "refuse_other_data",
]

_SEED = 20240612
_N_BOOT = 2000


@dataclass(frozen=True)
class ModelCheck:
    """How sure it is that two runs are of the same model.

    Attributes:
        verified: What both runs record and agree on (``weights_sha256``, ``state_sha256``, ``model``, ...).
        note: For people: how the check was made, and what it could not check.
    """

    verified: tuple[str, ...]
    note: str


def _model_id(run: Run) -> dict[str, Any]:
    prov = run.provenance
    ident: dict[str, Any] = {"model": prov.model, "weights_sha256": prov.weights_sha256}
    if run.costs is not None and run.costs.model:
        ident["state_sha256"] = run.costs.model.get("state_sha256")
    return ident


def check_same_model(a: Run, b: Run) -> ModelCheck:
    """Refuse two runs of different models; say how the sameness was established.

    Hashes both runs record (weights file, model state) must agree; without a common hash
    the model specs must. K and C, the recorded input shape, and MACs recorded by both must
    agree too. Two imported runs that name no model cannot be checked: accepted, and said so.

    Raises:
        DyncalError: Another model (one line naming what differs and what to do).

    Example:
        >>> import numpy as np, tempfile, pathlib
        >>> from dyncal import Provenance, import_arrays
        >>> def run(data):
        ...     prov = Provenance("pkg.m:f", "ab" * 32, data, "", "", "cpu")
        ...     out = pathlib.Path(tempfile.mkdtemp()) / "r"
        ...     return import_arrays(np.zeros((2, 2, 3), np.float32), [0, 1], out, provenance=prov)
        >>> check_same_model(run("clean"), run("noisy")).verified
        ('weights_sha256', 'model')
    """
    redo = f"thresholds carry over only to the same model and weights; solve on run '{b.path}' itself"
    if (a.k, a.c) != (b.k, b.c):
        raise DyncalError(f"run '{b.path}' has K={b.k}, C={b.c} but the thresholds' run has K={a.k}, C={a.c}: {redo}")
    ia, ib = _model_id(a), _model_id(b)
    verified = []
    for key, what in (("weights_sha256", "weights"), ("state_sha256", "model state")):
        va, vb = ia.get(key), ib.get(key)
        if va is not None and vb is not None:
            if va != vb:
                raise DyncalError(
                    f"run '{b.path}' was collected with other {what} ({str(vb)[:12]}) than the thresholds' run "
                    f"'{a.path}' ({str(va)[:12]}): {redo}"
                )
            verified.append(key)
    spec_a, spec_b = ia["model"], ib["model"]
    if spec_a == spec_b and is_named(spec_a):
        verified.append("model")
    elif not verified and (is_named(spec_a) or is_named(spec_b)):
        raise DyncalError(
            f"run '{b.path}' was collected with model {spec_b!r}, the thresholds' run '{a.path}' with {spec_a!r}, "
            f"and no weights hash shows them the same: {redo}"
        )
    shape_a, shape_b = a.provenance.extra.get("input_shape"), b.provenance.extra.get("input_shape")
    if shape_a is not None and shape_b is not None and list(shape_a) != list(shape_b):
        raise DyncalError(f"run '{b.path}' has inputs of shape {shape_b}, the thresholds' run {shape_a}: {redo}")
    macs_a = None if a.costs is None else a.costs.macs
    macs_b = None if b.costs is None else b.costs.macs
    if macs_a is not None and macs_b is not None:
        if not np.allclose(macs_a, macs_b, rtol=1e-6):
            raise DyncalError(f"run '{b.path}' records other MACs per exit than the thresholds' run: {redo}")
        verified.append("macs")
    if not verified:
        note = "neither run records its model (imported): assumed to be the same model, not checked"
    elif verified == ["model"]:
        note = f"same model spec {spec_a!r}; no weights hash recorded, so the weights are assumed the same"
    else:
        note = f"same model: {', '.join(verified)} agree"
    return ModelCheck(tuple(verified), note)


def data_relation(a: Run, b: Run) -> str:
    """``"same run"``, ``"same data"`` (same data spec, another collection) or ``"other data"``.

    Example:
        >>> import numpy as np, tempfile, pathlib
        >>> from dyncal import Provenance, import_arrays
        >>> prov = Provenance("m:f", None, "d", "", "", "cpu")
        >>> r = import_arrays(np.zeros((2, 2, 3), np.float32), [0, 1], pathlib.Path(tempfile.mkdtemp()) / "r",
        ...                   provenance=prov)
        >>> data_relation(r, r)
        'same run'
    """
    if a.fingerprint == b.fingerprint:
        return "same run"
    da, db = a.provenance.data, b.provenance.data
    if da == db and is_named(da):
        return "same data"
    return "other data"


def refuse_other_data(a: Run, b: Run) -> None:
    """Refuse comparing two runs of the same model on different data (``report --compare``): that is ``evaluate``.

    Runs of different models pass (comparing models on the same data is what a comparison is for).

    Raises:
        DyncalError: Same model, other data: one line naming ``dyncal evaluate``.

    Example:
        >>> import numpy as np, tempfile, pathlib
        >>> from dyncal import Provenance, import_arrays
        >>> def run(data, labels):
        ...     prov = Provenance("pkg.m:f", "ab" * 32, data, "", "", "cpu")
        ...     out = pathlib.Path(tempfile.mkdtemp()) / "r"
        ...     return import_arrays(np.zeros((2, 2, 3), np.float32), labels, out, provenance=prov)
        >>> refuse_other_data(run("clean", [0, 1]), run("noisy", [1, 0]))
        Traceback (most recent call last):
        ...
        dyncal.errors.DyncalError: run '...' is the same model as run '...' on other data ('noisy', not 'clean'): \
a comparison needs the same data; judge the thresholds on it with: dyncal evaluate ... --thresholds thresholds.json
    """
    try:
        check_same_model(a, b)
    except DyncalError:
        return
    if data_relation(a, b) == "other data":
        raise DyncalError(
            f"run '{b.path}' is the same model as run '{a.path}' on other data ({b.provenance.data!r}, not "
            f"{a.provenance.data!r}): a comparison needs the same data; judge the thresholds on it with: "
            f"dyncal evaluate {b.path} --thresholds thresholds.json"
        )


@dataclass(frozen=True)
class Figures:
    """What thresholds do on one set of samples.

    Attributes:
        run: Path of the run.
        data: Its data spec.
        part: ``"all"`` or ``"held-out"`` (A's part the thresholds were not fitted on).
        n: Samples.
        accuracy: Early-exit accuracy, with ``accuracy_ci`` (95% bootstrap).
        last_exit_accuracy: The last exit's accuracy on the same samples, with ``last_exit_ci``.
        drop: ``last_exit_accuracy - accuracy``, with ``drop_ci`` (paired 95% bootstrap).
        losses: Samples the last exit gets right and the early exit wrong.
        exit_shares: ``K`` shares.
        costs: Per cost unit (``"macs"``, ``"ms:<device>/b<batch>"``): ``mean`` per sample, ``ci``
            (95% bootstrap), ``fraction`` of the last exit's cost.
    """

    run: str
    data: str
    part: str
    n: int
    accuracy: float
    accuracy_ci: tuple[float, float]
    last_exit_accuracy: float
    last_exit_ci: tuple[float, float]
    drop: float
    drop_ci: tuple[float, float]
    losses: int
    exit_shares: tuple[float, ...]
    costs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def expected_macs(self) -> float | None:
        """Mean MACs per sample, or None without MACs."""
        entry = self.costs.get("macs")
        return None if entry is None else float(entry["mean"])

    @property
    def expected_ms(self) -> dict[str, float]:
        """Mean early-exit ms per ``"<device>/b<batch>"``."""
        return {unit[3:]: float(v["mean"]) for unit, v in self.costs.items() if unit.startswith("ms:")}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: the fields in order (tuples as lists), the expected MACs and ms before the costs."""
        plain = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "costs"}
        return {
            **{name: list(v) if isinstance(v, tuple) else v for name, v in plain.items()},
            "expected_macs": self.expected_macs,
            "expected_ms": self.expected_ms,
            "costs": {k: dict(v) for k, v in self.costs.items()},
        }


def _discrete_ci(values: np.ndarray, counts: np.ndarray, seed: int) -> tuple[float, float]:
    """95% bootstrap interval of a mean of samples taking ``values`` ``counts`` times (multinomial form)."""
    n = int(counts.sum())  # at least 1: a run has samples, a held-out part is never empty
    draws = np.random.default_rng(seed).multinomial(n, counts / n, size=_N_BOOT) @ values / n
    lo, hi = np.quantile(draws, [0.025, 0.975])
    return float(lo), float(hi)


def _cost_figures(cost: np.ndarray, counts: np.ndarray) -> dict[str, Any]:
    """Mean ``cost`` per sample of exits taken ``counts`` times, its 95% interval, its fraction of the last exit's."""
    mean = float(counts @ cost / counts.sum())
    return {"mean": mean, "ci": list(_discrete_ci(cost, counts, _SEED)), "fraction": mean / float(cost[-1])}


def _figures(
    run: Run,
    rows: np.ndarray | None,
    thresholds: ThresholdsDocument,
    costs: Mapping[str, Sequence[float]],
    part: str,
) -> Figures:
    """Figures of the thresholds on ``rows`` of ``run`` (all rows: None; never empty)."""
    from dyncal.calibrate.policy import assign_exits
    from dyncal.calibrate.scores import exit_scores
    from dyncal.stats import mean_bootstrap_ci

    logits = run.logits if rows is None else run.logits[rows]
    labels = np.asarray(run.labels if rows is None else run.labels[rows], dtype=np.int64)
    scores, preds = exit_scores(logits, thresholds.score, thresholds.temperatures)
    exits = assign_exits(scores, thresholds.threshold_array)
    n, k = scores.shape
    early_ok = preds[np.arange(n), exits] == labels
    last_ok = preds[:, -1] == labels
    counts = np.bincount(exits, minlength=k)
    diff = last_ok.astype(np.int64) - early_ok.astype(np.int64)
    diff_counts = np.array([(diff == v).sum() for v in (-1, 0, 1)])
    return Figures(
        run=str(run.path),
        data=run.provenance.data,
        part=part,
        n=int(n),
        accuracy=float(early_ok.mean()),
        accuracy_ci=mean_bootstrap_ci(early_ok, seed=_SEED),
        last_exit_accuracy=float(last_ok.mean()),
        last_exit_ci=mean_bootstrap_ci(last_ok, seed=_SEED),
        drop=float(diff.mean()),
        drop_ci=_discrete_ci(np.array([-1.0, 0.0, 1.0]), diff_counts, _SEED),
        losses=int((last_ok & ~early_ok).sum()),
        exit_shares=tuple(float(v) for v in counts / n),
        costs={unit: _cost_figures(np.asarray(c, dtype=np.float64), counts) for unit, c in costs.items()},
    )


@dataclass(frozen=True)
class Evaluation:
    """Thresholds of run A judged on run B (:func:`evaluate_thresholds`).

    Attributes:
        target: The figures on B.
        reference: The same figures on A (its held-out part when it has one).
        deltas: B − A: ``accuracy``, ``drop``, ``last_exit_accuracy``, and per cost unit
            ``{"difference", "ratio"}``.
        budget: ``unit``, ``value`` (in that unit), ``asked``, ``limit`` (the value plus the
            tolerance), B's ``mean`` with its 95% ``lower`` and ``upper`` bounds, and ``status``:
            ``holds`` (mean within the limit), ``breaks`` (even the lower bound above it) or
            ``uncertain``; None when the thresholds had no budget or no run has such a cost.
        drop_bound: ``max_drop``, ``delta``, B's drop and losses, the Clopper-Pearson upper
            bound of its loss rate, and ``status``: ``holds`` (that bound within ``max_drop``:
            certified), ``breaks`` (the drop itself above) or ``uncertain``; None without a ``max_drop``.
        model_check: How the model was checked (:class:`ModelCheck`).
        data_relation: ``"other data"`` or ``"same data"`` (:func:`data_relation`).
        notes: Sentences for people: that the data differ, how costs were found, ...
        decision_fingerprint: The thresholds' decision fingerprint.
        thresholds_run_fingerprint: The fingerprint of A.
    """

    target: Figures
    reference: Figures
    deltas: dict[str, Any]
    budget: dict[str, Any] | None
    drop_bound: dict[str, Any] | None
    model_check: ModelCheck
    data_relation: str
    notes: tuple[str, ...]
    decision_fingerprint: str
    thresholds_run_fingerprint: str | None

    def to_dict(self) -> dict[str, Any]:
        """The ``dyncal evaluate --json`` document (NaN as null)."""
        from dyncal.artifacts.thresholds import json_ready

        return dict(
            json_ready(
                {
                    "schema": "dyncal.evaluation",
                    "schema_version": 1,
                    "target": self.target.to_dict(),
                    "reference": self.reference.to_dict(),
                    "deltas": self.deltas,
                    "budget": self.budget,
                    "drop_bound": self.drop_bound,
                    "model_check": {"verified": list(self.model_check.verified), "note": self.model_check.note},
                    "data_relation": self.data_relation,
                    "data_differ": self.data_relation == "other data",
                    "notes": list(self.notes),
                    "decision_fingerprint": self.decision_fingerprint,
                    "thresholds_run_fingerprint": self.thresholds_run_fingerprint,
                }
            )
        )


def _open_reference(thresholds: ThresholdsDocument) -> Run:
    from dyncal.artifacts.run import load_run

    if not thresholds.run:
        raise DyncalError(f"the thresholds do not name the run they were solved on; pass it as {param('reference')}")
    try:
        return load_run(thresholds.run)
    except DyncalError as e:
        raise DyncalError(
            f"the thresholds' run '{thresholds.run}' cannot be opened ({e}); pass it as {param('reference')}"
        ) from None
    except OSError as e:  # pragma: no cover - load_run maps what it expects
        raise DyncalError(f"the thresholds' run '{thresholds.run}' cannot be opened ({describe(e)})") from None


def _costs(ref: Run, run: Run) -> tuple[dict[str, tuple[float, ...]], str]:
    """The cost units to judge with (B's profile over A's) and a note saying where they come from."""
    from dyncal.calibrate.budget import cost_units

    units_a = cost_units(ref.costs, ref.k)
    units_b = cost_units(run.costs, run.k)
    if units_b:
        note = "costs: run B's own profile" + (
            ", with run A's for units B lacks" if set(units_a) - set(units_b) else ""
        )
    elif units_a:
        note = "costs: run A's profile (same model; run B was not profiled)"
    else:
        note = "costs: neither run has costs, so none are compared"
    return {**units_a, **units_b}, note


def _budget_check(
    budget_doc: Mapping[str, Any], fig_a: Figures, fig_b: Figures, tolerance: float, notes: list[str]
) -> dict[str, Any] | None:
    """Whether the thresholds' budget holds on B (:attr:`Evaluation.budget`); a note when it does not."""
    unit, value = budget_doc.get("unit"), budget_doc.get("value")
    if unit not in fig_b.costs or value is None:
        return None
    b_cost = fig_b.costs[unit]
    limit = float(value) * (1.0 + tolerance)
    lower, upper = b_cost["ci"]
    budget = {
        "unit": unit,
        "asked": budget_doc.get("asked"),
        "value": float(value),
        "limit": limit,
        "reference_mean": fig_a.costs[unit]["mean"],
        "mean": b_cost["mean"],
        "lower": lower,
        "upper": upper,
        "status": "breaks" if lower > limit else ("uncertain" if b_cost["mean"] > limit else "holds"),
    }
    if budget["status"] != "holds":
        notes.append(
            f"the budget {budget_doc.get('asked') or value} does not hold on run B: "
            f"{b_cost['mean']:.4g} {unit} per sample ({b_cost['mean'] / fig_a.costs[unit]['mean']:.2f}x run A's)"
        )
    return budget


def _drop_check(
    thresholds: ThresholdsDocument, fig_b: Figures, max_drop: float | None, delta: float | None, notes: list[str]
) -> dict[str, Any] | None:
    """Whether a drop bound holds on B (:attr:`Evaluation.drop_bound`); a note when it does not."""
    from dyncal.monitor import clopper_pearson

    risk = thresholds.risk or {}
    eps = max_drop if max_drop is not None else risk.get("max_drop")
    dlt = delta if delta is not None else risk.get("delta", 0.05)
    if eps is None:
        return None
    check("max_drop", eps, rule="certified.max_drop")
    check("delta", dlt)
    _, upper = clopper_pearson(fig_b.losses, fig_b.n, float(dlt))
    bound = {
        "max_drop": float(eps),
        "delta": float(dlt),
        "drop": fig_b.drop,
        "losses": fig_b.losses,
        "n": fig_b.n,
        "loss_upper": upper,
        "status": "holds" if upper <= eps else ("breaks" if fig_b.drop > eps else "uncertain"),
    }
    if bound["status"] != "holds":
        notes.append(
            f"the drop bound {float(eps):g} is not certified on run B: drop {fig_b.drop:.4f}, "
            f"loss rate up to {upper:.4f} (confidence {1 - float(dlt):g})"
        )
    return bound


def evaluate_thresholds(
    run: Run,
    thresholds: ThresholdsDocument,
    *,
    reference: Run | None = None,
    max_drop: float | None = None,
    delta: float | None = None,
    cost_tolerance: float = 0.05,
) -> Evaluation:
    """Apply thresholds solved on run A to run B of the same model on other data.

    Args:
        run: Run B, the data to judge the thresholds on.
        thresholds: The thresholds document (solved on A).
        reference: Run A (default: the run the document names); refused when the thresholds
            were not solved on it.
        max_drop: Drop bound to check on B (default: the document's risk ``max_drop``, if any).
        delta: Its error probability (default: the document's, else 0.05).
        cost_tolerance: Relative slack on the budget (default 0.05, as ``dyncal monitor``): the
            solve meets the budget on its fit part, so fresh samples of the same data land around it.

    Returns:
        The evaluation.

    Raises:
        DyncalError: B is A itself (use the report), another model, thresholds not solved on
            ``reference``, or a bad ``max_drop`` / ``delta``.
    """
    from dyncal.artifacts.thresholds import check_thresholds_for_run
    from dyncal.stats import stratified_split

    if isinstance(cost_tolerance, bool) or not 0.0 <= cost_tolerance < 10.0:
        raise DyncalError(f"{param('cost_tolerance')} must be in [0, 10), got {cost_tolerance!r}")
    ref = reference if reference is not None else _open_reference(thresholds)
    check_thresholds_for_run(thresholds, ref)
    relation = data_relation(ref, run)
    if relation == "same run":
        raise DyncalError(
            f"run '{run.path}' is the run the thresholds were solved on; its held-out accuracy is in the thresholds "
            "document and the report: evaluate them on a run of other data"
        )
    model = check_same_model(ref, run)
    notes = [
        f"the data differ: the thresholds were solved on {ref.provenance.data!r} and are judged on "
        f"{run.provenance.data!r}"
        if relation == "other data"
        else f"same data spec {run.provenance.data!r}, another collection of it",
        model.note,
    ]
    costs, source = _costs(ref, run)
    notes.append(source)
    split = thresholds.split
    held: np.ndarray | None = None
    if int(split.get("n_holdout", 0) or 0) > 0:
        _, held = stratified_split(np.asarray(ref.labels, dtype=np.int64), float(split["holdout"]), int(split["seed"]))
    fig_a = _figures(ref, held, thresholds, costs, "held-out" if held is not None else "all")
    fig_b = _figures(run, None, thresholds, costs, "all")
    deltas: dict[str, Any] = {
        name: getattr(fig_b, name) - getattr(fig_a, name) for name in ("accuracy", "last_exit_accuracy", "drop")
    }
    means = {unit: (fig_b.costs[unit]["mean"], fig_a.costs[unit]["mean"]) for unit in costs}
    deltas["costs"] = {unit: {"difference": b - a, "ratio": b / a} for unit, (b, a) in means.items()}
    budget = _budget_check(thresholds.budget, fig_a, fig_b, cost_tolerance, notes)
    drop_bound = _drop_check(thresholds, fig_b, max_drop, delta, notes)
    return Evaluation(
        target=fig_b,
        reference=fig_a,
        deltas=deltas,
        budget=budget,
        drop_bound=drop_bound,
        model_check=model,
        data_relation=relation,
        notes=tuple(notes),
        decision_fingerprint=thresholds.decision_fingerprint,
        thresholds_run_fingerprint=thresholds.run_fingerprint,
    )


def robustness_rows(evaluations: Sequence[Evaluation], unit: str = "macs") -> list[dict[str, Any]]:
    """One row per evaluated run for a robustness table (the report's page): what broke where.

    Args:
        evaluations: :func:`evaluate_thresholds` results of one thresholds document on several runs
            (``collect --perturb`` collects one per perturbation).
        unit: The cost unit of the ``cost_ratio`` column.

    Returns:
        Rows with ``run``, ``perturbation`` (``"gaussian_noise:0.5"``, or None for unperturbed
        data), ``accuracy``, ``accuracy_ci``, ``drop``, ``drop_ci``, ``cost_ratio`` (B / A),
        ``budget`` and ``drop_bound`` (``holds`` / ``breaks`` / ``uncertain``, None when not judged).
    """
    from dyncal.perturb import perturbation_of

    perturbations = [perturbation_of(ev.target.data)[1] for ev in evaluations]
    return [
        {
            "run": ev.target.run,
            "perturbation": None if p is None else str(p),
            "accuracy": ev.target.accuracy,
            "accuracy_ci": list(ev.target.accuracy_ci),
            "drop": ev.target.drop,
            "drop_ci": list(ev.target.drop_ci),
            "cost_ratio": ev.deltas["costs"].get(unit, {}).get("ratio"),
            "budget": None if ev.budget is None else ev.budget["status"],
            "drop_bound": None if ev.drop_bound is None else ev.drop_bound["status"],
        }
        for ev, p in zip(evaluations, perturbations, strict=True)
    ]
