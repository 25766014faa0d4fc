"""The run's model: which model a verb runs for a run, whether it is the run's, and one probe.

A run is data, but it names the model it was collected with (``provenance.model``, and in
``provenance.extra``: ``weights``, ``model_path``, ``input_shape``, ``input_dtype``). The
verbs that run that model again (profile, verify, export) open it with
:func:`open_run_model`: resolved from the provenance unless overridden
(:class:`ModelOverrides`), compared with the run (the checkpoint's SHA-256 and a few recorded
rows re-run, :func:`check_run_model`), hashed (:func:`state_sha256`) and run once on a probe
batch whose exits must be the run's K and C (:func:`probe_run_model`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from dyncal.analysis.stages import example_input
from dyncal.artifacts.run import Run
from dyncal.artifacts.run_document import Provenance
from dyncal.errors import DyncalError, ModelError, describe
from dyncal.inputs import Inputs, InputSignature, batch_size, call_model, describe_inputs, is_single, to_device
from dyncal.models import LoadedModel, check_exit_outputs, load_model, resolve_device, torch_dtype
from dyncal.options import input_shape_of
from dyncal.specs import is_named

log = logging.getLogger(__name__)

__all__ = [
    "ModelOverrides",
    "ModelSource",
    "ModelCheck",
    "RunModel",
    "open_run_model",
    "probe_run_model",
    "run_model_source",
    "check_run_model",
    "logits_difference",
    "run_inputs",
    "state_sha256",
]


@dataclass(frozen=True, kw_only=True)
class ModelOverrides:
    """Which model a verb that re-runs the run's model uses; ``None`` fields come from the run's provenance.

    The options of ``profile`` and ``export`` extend it.

    Attributes:
        model: Model spec overriding ``provenance.model`` (with ``weights`` and ``model_path``).
        weights: Checkpoint overriding ``provenance.extra["weights"]``.
        model_path: Import folder overriding ``provenance.extra["model_path"]``.
        input_shape: Per-sample input shape overriding ``provenance.extra["input_shape"]``.
        input_dtype: Input dtype name overriding ``provenance.extra["input_dtype"]``.
        stages: ``pkg.module:fn`` declaring stages by hand (``fn(model) -> [nn.Module]``).

    Example:
        >>> ModelOverrides(input_shape=[3, 8, 8]).input_shape
        (3, 8, 8)
    """

    model: str | None = None
    weights: str | None = None
    model_path: str | None = None
    input_shape: tuple[int, ...] | None = None
    input_dtype: str | None = None
    stages: str | None = None

    def __post_init__(self) -> None:
        """Check the input shape."""
        object.__setattr__(self, "input_shape", input_shape_of(self.input_shape))


MAX_SAMPLE_VALUES = 1 << 28
"""Most values one input sample may have (1 GiB of float32): a larger `input_shape` is a typo."""


def run_inputs(run: Run, shape: Sequence[int] | None = None, dtype: str | None = None) -> InputSignature:
    """The inputs a run's model takes: the recorded signature of a multi-input run, else one tensor.

    A single-tensor run's signature is its recorded per-sample shape and dtype name
    (``provenance.extra["input_shape"]``, ``["input_dtype"]``, else ``float32``), which ``shape``
    and ``dtype`` override; a multi-input run records its own (``provenance.extra["inputs"]``).

    Args:
        run: An opened run (:class:`dyncal.artifacts.run.Run`).
        shape: ``--input-shape`` (per sample, without the batch), or None.
        dtype: ``--input-dtype``, or None (the run's, else ``float32``).

    Raises:
        ModelError: No shape recorded or given, a malformed shape or signature, or an unknown dtype.

    Example:
        >>> import numpy as np, tempfile, pathlib
        >>> from dyncal import Provenance, import_arrays
        >>> prov = Provenance.here(model="m:f", data="d", device="cpu", extra={"input_shape": [4]})
        >>> run = import_arrays(np.zeros((2, 2, 3), np.float32), [0, 1],
        ...                     pathlib.Path(tempfile.mkdtemp()) / "r", provenance=prov)
        >>> run_inputs(run).describe()
        'input float32 (B, 4)'
    """
    extra = run.provenance.extra
    recorded = extra.get("inputs")
    if recorded is not None and shape is None:
        try:
            return InputSignature.from_dict(recorded)
        except DyncalError as e:
            raise ModelError(f"run '{run.path}' records malformed inputs: {e}") from None
    raw = shape if shape is not None else extra.get("input_shape")
    if not raw:
        raise ModelError(
            f"run '{run.path}' does not record its input shape; pass `input_shape` with the per-sample shape, "
            "e.g. 3,224,224"
        )
    try:
        shape_t = tuple(int(v) for v in raw)
    except (TypeError, ValueError):
        raise ModelError(f"the input shape {raw!r} is not a list of integers; pass `input_shape`") from None
    if any(v < 1 for v in shape_t):
        raise ModelError(f"`input_shape` must be positive integers per sample, got {list(shape_t)}")
    values = math.prod(shape_t)
    if values > MAX_SAMPLE_VALUES:
        raise ModelError(
            f"`input_shape` {','.join(map(str, shape_t))} has {values:.3g} values per sample, more than the "
            f"{MAX_SAMPLE_VALUES:,} dyncal accepts (a 4K video frame has 25 million); give the per-sample shape "
            "without the batch, e.g. 3,224,224"
        )
    name = str(dtype or extra.get("input_dtype") or "float32").replace("torch.", "")
    torch_dtype(name)
    return InputSignature.single_tensor(shape_t, name)


ROWS_RTOL = 1e-2
"""Tolerance of the re-run rows: ``|new - stored| <= ROWS_RTOL * max(1, max |stored logits of that exit|)``.

Loose enough for float32 on another device or batch size (TF32 convolutions on CUDA), tight
enough that other weights, another model or other inputs show: those move logits by about
their own scale.
"""


@dataclass(frozen=True)
class ModelSource:
    """Which model a verb loads for a run: the one ``run.json`` names, or the user's overrides.

    Attributes:
        spec: ``pkg.module:factory`` or a ``.pt2`` path.
        weights: Checkpoint path, or None.
        model_path: Folder the factory's module is imported from, or None.
        from_run: Whether ``spec`` comes from ``run.json`` (no ``--model`` given): code the
            run names, which the command line should say it imports.
    """

    spec: str
    weights: str | None
    model_path: str | None
    from_run: bool

    def describe(self) -> str:
        """One phrase naming the model, its checkpoint and where its code comes from."""
        parts = [self.spec]
        if self.weights:
            parts.append(f"weights {self.weights}")
        if self.model_path and not self.spec.endswith(".pt2"):
            parts.append(f"code from {self.model_path}")
        return ", ".join(parts)


@dataclass(frozen=True)
class ModelCheck:
    """How a loaded model compares with the one a run was collected with.

    Attributes:
        weights: ``"match"``, ``"differ"``, ``"not recorded"`` (the run records no SHA-256)
            or ``"none given"`` (it does, but the model has no checkpoint file).
        rows_checked: Recorded rows re-run through the model (0: none could be).
        max_abs_diff: Largest logit difference over those rows, or None.
        rows_note: Why no rows were re-run, or None.
        mismatch: What differs from the run's model, or None when nothing does (as far as
            checked).
        allowed: The model was used although it differs (``allow_other_model``).
    """

    weights: str
    rows_checked: int
    max_abs_diff: float | None
    rows_note: str | None
    mismatch: str | None
    allowed: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return asdict(self)


def run_model_source(
    provenance: Provenance,
    run_path: str | os.PathLike[str],
    *,
    model: str | None = None,
    weights: str | os.PathLike[str] | None = None,
    model_path: str | os.PathLike[str] | None = None,
) -> ModelSource:
    """Resolve the model of a run from its provenance (``run.json`` alone), or from the overrides given.

    The recorded checkpoint goes with the recorded spec only: ``model`` naming another
    spec drops it unless ``weights`` is given too. Nothing is imported here.

    Args:
        provenance: The run's provenance (:attr:`Run.provenance`, or ``RunDocument.load(path).provenance``).
        run_path: The run directory, named in errors.
        model: Spec overriding ``provenance.model``.
        weights: Checkpoint overriding ``provenance.extra["weights"]``.
        model_path: Import folder overriding ``provenance.extra["model_path"]``.

    Raises:
        ModelError: The run names no model and none is given, or its checkpoint is missing.

    Example:
        >>> import numpy as np, tempfile, pathlib
        >>> from dyncal.artifacts.run_document import Provenance
        >>> from dyncal.artifacts.run_import import import_arrays
        >>> prov = Provenance.here(model="dyncal.demo:pretrained", data="x", device="cpu")
        >>> run = import_arrays(np.zeros((2, 4, 10), np.float32), [0, 1],
        ...                     pathlib.Path(tempfile.mkdtemp()) / "r", provenance=prov)
        >>> source = run_model_source(run.provenance, run.path)
        >>> source.describe(), source.from_run
        ('dyncal.demo:pretrained', True)
    """
    prov = provenance
    extra = prov.extra
    spec = model or (prov.model if is_named(prov.model) else None)
    if not spec:
        raise ModelError(
            f"run '{run_path}' does not name its model (model: {prov.model!r}); pass "
            "`model` pkg.module:factory (or FILE.pt2)"
        )
    recorded_weights = extra.get("weights") if spec == prov.model else None
    chosen = str(weights) if weights is not None else recorded_weights
    if weights is None and chosen is not None and not os.path.exists(chosen):
        raise ModelError(f"the run's weights '{chosen}' do not exist on this machine; pass `weights` FILE")
    folder = model_path if model_path is not None else extra.get("model_path")
    return ModelSource(
        spec=spec,
        weights=None if chosen is None else str(chosen),
        model_path=None if folder is None else str(folder),
        from_run=model is None,
    )


def logits_difference(new: np.ndarray, stored: np.ndarray) -> tuple[float, bool]:
    """Largest ``|new - stored|`` of ``(B, K, C)`` logits and whether it is within :data:`ROWS_RTOL`.

    Example:
        >>> a = np.ones((2, 2, 3), np.float32)
        >>> logits_difference(a + 1e-4, a)[1], logits_difference(a + 0.5, a)[1]
        (True, False)
    """
    new = np.asarray(new, dtype=np.float64)
    stored = np.asarray(stored, dtype=np.float64)
    if new.shape != stored.shape:
        return float("inf"), False
    diff = np.abs(new - stored)
    scale = np.maximum(1.0, np.abs(stored).max(axis=-1, keepdims=True))
    ok = bool(np.all(diff <= ROWS_RTOL * scale))
    return float(diff.max()) if diff.size else 0.0, ok


def _recheck_rows(
    run: Run,
    module: nn.Module,
    *,
    data: str | None,
    search_path: str | None,
    device: torch.device,
    count: int,
) -> tuple[int, float | None, str | None, str | None]:
    """Re-run up to ``count`` recorded rows: ``(rows, max |diff|, why not checked, mismatch)``."""
    from dyncal.data import dataset_for_run, run_rows

    if count < 1:
        return 0, None, "not asked to re-run rows", None
    try:
        dataset = dataset_for_run(run, data=data, search_path=search_path)
    except DyncalError as e:
        return 0, None, f"the run's data set cannot be opened ({e})", None
    rows = np.unique(np.linspace(0, run.n - 1, min(count, run.n)).round().astype(np.int64))
    try:
        x, labels = run_rows(run, rows, search_path=search_path, dataset=dataset)
    except DyncalError as e:
        return 0, None, str(e), None
    expected = [int(v) for v in run.labels[rows]]
    if labels != expected:
        why = (
            f"the data set's labels at rows {rows[:4].tolist()} are {labels[:4]}, the run's {expected[:4]}: "
            "the data is not the run's"
        )
        return 0, None, None, why
    try:
        with torch.inference_mode():
            outs = call_model(module, to_device(x, device))
        outs = [outs] if isinstance(outs, torch.Tensor) else outs  # a static model: one exit
        k, c = check_exit_outputs(outs, batch_size(x), static_ok=True)
    except Exception as e:  # noqa: BLE001 - the user's model may raise anything
        return 0, None, None, f"the model fails on the run's recorded inputs ({describe(e)})"
    if (k, c) != (run.k, run.c):
        return 0, None, None, f"the model has K={k} exits and C={c} classes, the run K={run.k}, C={run.c}"
    new = torch.stack([o.float() for o in outs], dim=1).cpu().numpy()
    diff, ok = logits_difference(new, np.asarray(run.logits[rows]))
    if ok:
        return len(rows), diff, None, None
    why = (
        f"re-running {len(rows)} recorded rows gives logits up to {diff:.3g} away from the run's "
        "(the model or the data is not the run's)"
    )
    return len(rows), diff, None, why


def check_run_model(
    run: Run,
    loaded: LoadedModel,
    *,
    source: ModelSource | None = None,
    data: str | None = None,
    device: str = "cpu",
    check_rows: int = 8,
) -> ModelCheck:
    """Compare ``loaded`` with the model ``run`` was collected with.

    Evidence, strongest first: the checkpoint's SHA-256 against the run's
    ``weights_sha256``, and up to ``check_rows`` recorded rows (``run.indices`` read back
    from the run's data set) re-run and compared with the stored logits (see
    :data:`ROWS_RTOL`). Hashes that differ, or rows that differ, are a mismatch; a spec
    other than the one the run names, or a checkpoint given where the run had none (or
    the other way round), is one too unless the hash matches or the rows agree.

    Args:
        run: An opened run.
        loaded: The model to compare, on ``device``.
        source: How it was resolved (:func:`run_model_source`); by default from ``loaded``.
        data: Data spec overriding the run's, for the rows.
        device: Where ``loaded`` runs.
        check_rows: Rows to re-run (0: none).

    Returns:
        The comparison; :attr:`ModelCheck.mismatch` says what differs.
    """
    prov = run.provenance
    source = source or ModelSource(loaded.spec, loaded.weights, loaded.model_path, from_run=False)
    run_sha, new_sha = prov.weights_sha256, loaded.weights_sha256
    mismatch = None
    if run_sha and new_sha == run_sha:
        weights = "match"
    elif run_sha and new_sha:
        weights = "differ"
        mismatch = (
            f"the SHA-256 of '{loaded.weights or loaded.spec}' is {new_sha[:12]}…, "
            f"the run's weights had {run_sha[:12]}…"
        )
    else:
        weights = "not recorded" if not run_sha else "none given"
    rows, diff, note, rows_mismatch = _recheck_rows(
        run, loaded.module, data=data, search_path=source.model_path, device=resolve_device(device), count=check_rows
    )
    mismatch = mismatch or rows_mismatch
    # Without a matching hash or rows that agree, anything else that differs from what the
    # run records cannot be shown harmless.
    if mismatch is None and weights != "match" and rows == 0 and is_named(prov.model):
        if source.spec != prov.model:
            mismatch = f"the run was collected with '{prov.model}', not '{source.spec}', and no rows could be re-run"
        elif run_sha and not new_sha:
            mismatch = f"the run was collected with a checkpoint (SHA-256 {run_sha[:12]}…) and none is given"
        elif new_sha and not run_sha:
            mismatch = "the run was collected without a checkpoint and one is given"
        if mismatch is not None:
            mismatch += f" ({note})"
    return ModelCheck(weights=weights, rows_checked=rows, max_abs_diff=diff, rows_note=note, mismatch=mismatch)


def state_sha256(model: nn.Module) -> str:
    """SHA-256 of a model's state (names, dtypes, shapes and values of parameters and buffers).

    Identifies the weights that were timed even when the model comes from a factory
    without a checkpoint file.
    """
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass(frozen=True, kw_only=True)
class RunModel(LoadedModel):
    """The model of a run, loaded, compared with the run and probed (:func:`open_run_model`).

    Attributes:
        source: Where it came from: the run's provenance or the overrides.
        check: How it compares with the run's model (:func:`check_run_model`).
        state_sha256: :func:`state_sha256` of the model as loaded, before anything ran on it.
        input_shape: Per-sample input shape of the probe (empty when not probed).
        input_dtype: Input dtype name of the probe (empty when not probed).
        inputs: The inputs the model takes (:func:`run_inputs`; None when not probed); a
            model of several inputs has an empty ``input_shape`` and ``input_dtype``.
    """

    source: ModelSource
    check: ModelCheck
    state_sha256: str
    input_shape: tuple[int, ...] = ()
    input_dtype: str = ""
    inputs: InputSignature | None = None

    @property
    def single_input(self) -> bool:
        """Whether the model takes one tensor (``input_shape``, ``input_dtype``)."""
        return self.inputs is None or self.inputs.single


def open_run_model(
    run: Run,
    overrides: ModelOverrides,
    *,
    probe: int | None = 1,
    device: str = "cpu",
    data: str | None = None,
    check_rows: int = 8,
    allow_other_model: bool = False,
    other_model_allowed: bool = True,
) -> RunModel:
    """Load the model ``run`` was collected with, check that it is that model, and run it once on a probe batch.

    The model comes from the run's provenance unless overridden (:func:`run_model_source`),
    and is compared with the run by :func:`check_run_model`. A mismatch is refused unless
    ``allow_other_model``; the verb should then record ``check`` in what it writes. The
    probe's outputs must keep the multi-exit contract (one tensor when the run is static)
    with the run's K and C.

    Args:
        run: An opened run.
        overrides: Which model (spec, weights, import folder), its input shape and dtype;
            None fields are the run's.
        probe: The batch size of a probe of random inputs of :func:`run_inputs`
            (:func:`probe_run_model`), or None: no probe.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        data: Data spec overriding the run's, for re-running recorded rows.
        check_rows: Recorded rows to re-run (0: compare the checkpoint's hash only).
        allow_other_model: Use a model that differs from the run's (recorded in ``check``).
        other_model_allowed: Whether the caller may use another model at all; when not
            (an exported package ships the run's model only), the error offers no override.

    Returns:
        The model, where it came from, how it compares with the run's, and the probe's signature.

    Raises:
        ModelError: The run names no model or input shape, the model cannot be loaded, it
            is not the run's model (what differs, and what to do) and ``allow_other_model``
            is False, it fails on the probe, or its exits are not the run's K and C.

    Example:
        >>> import tempfile, pathlib
        >>> from dyncal.data import load_dataset
        >>> from dyncal.models import load_model
        >>> from dyncal.verbs.collect import collect_run
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "run"
        >>> run = collect_run(load_model("dyncal.demo:pretrained"), load_dataset("dyncal.demo:validation"),
        ...                   out, data_spec="dyncal.demo:validation", limit=40)
        >>> opened = open_run_model(run, ModelOverrides())
        >>> opened.source.from_run, opened.check.rows_checked, opened.check.mismatch, opened.input_shape
        (True, 8, None, (1, 8, 8))
    """
    source = run_model_source(
        run.provenance, run.path, model=overrides.model, weights=overrides.weights, model_path=overrides.model_path
    )
    if probe is not None:  # the model is named before the input shape is asked for
        signature = run_inputs(run, overrides.input_shape, overrides.input_dtype)
    if source.from_run:
        log.info("loading the model run '%s' names: %s", run.path, source.describe())
    loaded = load_model(source.spec, weights=source.weights, model_path=source.model_path, device=device)
    check = check_run_model(run, loaded, source=source, data=data, device=device, check_rows=check_rows)
    if check.mismatch is not None:
        if not allow_other_model:
            override = ", or pass `allow_other_model` to use it anyway (recorded)" if other_model_allowed else ""
            raise ModelError(
                f"'{source.spec}' is not the model run '{run.path}' was collected with: {check.mismatch}; "
                f"re-collect the run with this model{override}"
            )
        check = replace(check, allowed=True)
    # hashed before anything runs on it (train-mode BatchNorm)
    opened = RunModel(**vars(loaded), source=source, check=check, state_sha256=state_sha256(loaded.module))
    if probe is None:
        return opened
    if signature.single:
        spec = signature.inputs[0]
        x = example_input(spec.shape, torch_dtype(spec.dtype), probe, device=resolve_device(device))
        return probe_run_model(run, opened, x, spec.dtype)
    from dyncal.data import probe_batch

    x, dtype_name = probe_batch(run, signature, probe, data, opened.model_path, resolve_device(device))
    return replace(probe_run_model(run, opened, x, dtype_name), inputs=signature)


def probe_run_model(run: Run, model: RunModel, x: Inputs, dtype_name: str | None = None) -> RunModel:
    """Run the run's model once on the batch ``x``; refuse a failure, or exits other than the run's K of C classes.

    The outputs must keep the multi-exit contract (one tensor when the run is static).

    Args:
        run: The run.
        model: Its model (:func:`open_run_model`).
        x: A batch on the model's device: a tensor, a tuple or a dict of tensors (:mod:`dyncal.inputs`).
        dtype_name: The input dtype as named (``input_dtype``) when ``x`` holds random inputs of
            the run's signature; None when it holds inputs read from the data set. Only a
            single integer tensor gets the advice to check ``input_dtype``: several inputs
            (token ids and a mask) are integers by design.

    Returns:
        ``model`` with the probe's per-sample input shape and dtype.

    Raises:
        ModelError: The model fails on ``x``, breaks the contract, or has another K or C than the run.
    """
    name = dtype_name or (str(x.dtype).replace("torch.", "") if is_single(x) else describe_inputs(x))
    if dtype_name is None:
        hint = "check that the data set gives the inputs the model expects"
    elif not is_single(x):
        hint = "check that the model takes the inputs the run recorded"
    elif not x.dtype.is_floating_point:
        hint = (
            f"check `input_dtype`: {name} is not a floating dtype (e.g. float32), which most models need; "
            "and `input_shape`"
        )
    else:
        hint = "check `input_shape` (and `input_dtype`)"
    try:
        with torch.inference_mode():
            outs = call_model(model.module, x)
    except Exception as e:  # noqa: BLE001 - the user's model may raise anything
        what = f"of shape {tuple(x.shape)} and dtype {name}" if is_single(x) else f"({describe_inputs(x)})"
        raise ModelError(f"the model '{model.spec}' fails on an input {what} ({describe(e)}); {hint}") from e
    k, c = check_exit_outputs(outs, batch_size(x), static_ok=run.k == 1)
    if (k, c) != (run.k, run.c):
        raise ModelError(
            f"the model '{model.spec}' has K={k} exits and C={c} classes but run '{run.path}' has "
            f"K={run.k}, C={run.c}; use the model the run was collected with (`model`)"
        )
    if not is_single(x):
        return replace(model, inputs=InputSignature.of(x) if model.inputs is None else model.inputs)
    return replace(model, input_shape=tuple(x.shape[1:]), input_dtype=name, inputs=InputSignature.of(x))
